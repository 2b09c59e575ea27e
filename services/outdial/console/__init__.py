"""The web console (issue 14): campaign managers, supervisors, compliance officers and agents in a browser."""

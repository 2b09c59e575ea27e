"""The law as code: pure functions with no I/O, each citing its source."""

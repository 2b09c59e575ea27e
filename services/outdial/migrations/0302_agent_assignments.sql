-- Agent <-> campaign assignments (security issue 12): Login accepts only the campaigns an agent is assigned
-- to. Managers and admins assign (AgentService.AssignAgents / UnassignAgents). Owner: the agent service,
-- which reads both tables at every Login and writes them on every (un)assignment.

CREATE TABLE IF NOT EXISTS agent_assignments (
    campaign_id text        NOT NULL,
    agent_id    text        NOT NULL,
    -- The token that made it ("role:subject"), never a name from the request.
    assigned_by text        NOT NULL,
    assigned_at timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, agent_id)
);
CREATE INDEX IF NOT EXISTS agent_assignments_agent ON agent_assignments (agent_id);

-- Who assigned (or unassigned) whom, when: one row per change, appended in the same transaction as the
-- change; never updated or deleted (the runtime role needs INSERT and SELECT only).
CREATE TABLE IF NOT EXISTS agent_assignment_log (
    id          bigserial   PRIMARY KEY,
    campaign_id text        NOT NULL,
    agent_id    text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('assign', 'unassign')),
    actor       text        NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_assignment_log_campaign ON agent_assignment_log (campaign_id, id);
CREATE INDEX IF NOT EXISTS agent_assignment_log_agent ON agent_assignment_log (agent_id, id);

"""Who may do what in the database: one table, applied after every migration run.

Roles (PostgreSQL roles are cluster-wide; their privileges on tables are per database):

- the **migration role**: whoever runs ``outdial db migrate`` (the Kubernetes migration Job). It owns every
  table, sequence and function it creates, and it is the only role that applies DDL. Nothing else logs in
  as it.
- one **login role per service** (``outdial_campaign``, ``outdial_pacing``, ``outdial_dnc``,
  ``outdial_agent``) with exactly the privileges below, found by reading each service's SQL. None is a
  member of any role, so ``SET ROLE`` leads nowhere; none owns anything, so none can ALTER, DISABLE TRIGGER,
  or GRANT.
- ``outdial_auditor``: reads the DNC audit log and its head, for ``outdial dnc verify --database-url``, and
  dial_attempts and call_records, for ``outdial evidence export``.

``core/db.py`` (``apply_grants``) creates the roles when missing (idempotent, race-safe), revokes whatever
they hold in this database and grants what this table says. Adding a table is adding its lines here; a
table nobody is granted stays the migration role's alone (``idempotency_keys``: no service uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ROLE_PREFIX = "outdial_"

#: Login roles: the four services, the web console and the auditor.
RUNTIME: tuple[str, ...] = ("campaign", "pacing", "dnc", "agent", "console", "auditor")


def role_name(who: str) -> str:
    """``dnc`` -> ``outdial_dnc``."""
    if who not in RUNTIME:
        raise ValueError(f"no database role for {who!r} (one of {', '.join(RUNTIME)})")
    return ROLE_PREFIX + who


@dataclass(frozen=True)
class Grant:
    who: str  # a name of RUNTIME
    kind: Literal["table", "sequence", "function"]
    name: str
    privileges: str


def _t(who: str, name: str, privileges: str) -> Grant:
    return Grant(who, "table", name, privileges)


def _s(who: str, name: str) -> Grant:
    return Grant(who, "sequence", name, "USAGE")


GRANTS: tuple[Grant, ...] = (
    # Every runtime role: is the schema current? (a service refuses to start when it is behind)
    *(_t(w, "schema_migrations", "SELECT") for w in RUNTIME),
    # campaign: campaigns, uploads (COPY into leads, lead_numbers, lead_rejects; leads without a number are
    # deleted before commit), callbacks, call records from call events, dial_attempts read to rebuild them.
    _t("campaign", "campaigns", "SELECT, INSERT, UPDATE"),
    _t("campaign", "lead_lists", "SELECT, INSERT, UPDATE"),
    _t("campaign", "leads", "SELECT, INSERT, UPDATE, DELETE"),
    _t("campaign", "lead_numbers", "SELECT, INSERT"),
    _t("campaign", "lead_rejects", "SELECT, INSERT"),
    _t("campaign", "callbacks", "SELECT, INSERT"),
    # Call detail records are append-only (0410): heads and entries INSERT and SELECT, never UPDATE or DELETE
    # (the tables' triggers refuse those to everyone but the retention function); call_records is the view.
    _t("campaign", "call_record_heads", "SELECT, INSERT"),
    _t("campaign", "call_record_entries", "SELECT, INSERT"),
    _s("campaign", "call_record_entries_seq_seq"),
    _t("campaign", "call_records", "SELECT"),
    _t("campaign", "campaign_events_applied", "SELECT, INSERT"),
    _t("campaign", "dial_attempts", "SELECT"),
    _t("campaign", "dial_attempt_events", "SELECT"),
    _s("campaign", "leads_id_seq"),
    # campaign: the append-only record of every start/resume and the seller identity then in force.
    _t("campaign", "campaign_starts", "SELECT, INSERT"),
    _s("campaign", "campaign_starts_id_seq"),
    # campaign: every version of a campaign's settings (0117; rows never change).
    _t("campaign", "campaign_versions", "SELECT, INSERT"),
    # campaign: the retention job (0118) removes old call records only through retention_prune (SECURITY
    # DEFINER, keeping the rules' minimum per jurisdiction, and appending its run to retention_runs).
    Grant("campaign", "function", "retention_prune", "EXECUTE"),
    _t("campaign", "retention_policy", "SELECT"),
    _t("campaign", "retention_runs", "SELECT"),
    # pacing: its settings and every dial attempt.
    _t("pacing", "pacing_settings", "SELECT, INSERT, UPDATE"),
    _t("pacing", "pacing_settings_versions", "SELECT, INSERT"),
    # pacing: dial attempts are append-only (0409): the gate row and each step's event INSERT and SELECT only;
    # dial_open (which calls are dialled and not ended, the "never two at once" locks) is coordination.
    _t("pacing", "dial_attempt_gates", "SELECT, INSERT"),
    _t("pacing", "dial_attempt_events", "SELECT, INSERT"),
    _s("pacing", "dial_attempt_events_seq_seq"),
    _t("pacing", "dial_attempts", "SELECT"),
    _t("pacing", "dial_open", "SELECT, INSERT, UPDATE, DELETE"),
    # pacing: which numbers make one person (the dial-time gate caps calls per person, core/persons.py).
    _t("pacing", "lead_numbers", "SELECT"),
    # dnc: lists and entries (removal stamps rows, never DELETE), consent, registry imports, the index's
    # dirty flag; the audit log read-only, appended only through dnc_audit_append (SECURITY DEFINER).
    _t("dnc", "dnc_lists", "SELECT, INSERT, UPDATE"),
    _t("dnc", "dnc_entries", "SELECT, INSERT, UPDATE"),
    _t("dnc", "dnc_consent", "SELECT, INSERT, UPDATE"),
    _t("dnc", "dnc_registry_imports", "SELECT, INSERT"),
    _t("dnc", "dnc_index_state", "SELECT, UPDATE"),
    _t("dnc", "dnc_audit", "SELECT"),
    _t("dnc", "dnc_audit_head", "SELECT"),
    Grant("dnc", "function", "dnc_audit_append", "EXECUTE"),
    _s("dnc", "dnc_entries_id_seq"),
    _s("dnc", "dnc_consent_id_seq"),
    _s("dnc", "dnc_registry_imports_id_seq"),
    # dnc: Reassigned Numbers Database query results and their imports (0210; rows never change).
    _t("dnc", "dnc_rnd_imports", "SELECT, INSERT"),
    _t("dnc", "dnc_rnd_results", "SELECT, INSERT"),
    _s("dnc", "dnc_rnd_imports_id_seq"),
    _s("dnc", "dnc_rnd_results_id_seq"),
    # agent: the state timeline and dispositions.
    _t("agent", "agent_state_events", "SELECT, INSERT"),
    # agent dispositions are call records (0305): INSERT and SELECT; UPDATE of the follow-up columns only; a
    # differing retry is a new revision row.
    _t(
        "agent",
        "agent_dispositions",
        "SELECT, INSERT, UPDATE (dnc_status, callback_status, attempts, last_error)",
    ),
    _t("agent", "agent_disposition_revisions", "SELECT, INSERT"),
    _s("agent", "agent_disposition_revisions_id_seq"),
    _s("agent", "agent_state_events_id_seq"),
    _s("agent", "agent_dispositions_id_seq"),
    # agent: which agent PostgreSQL says is on a call (a login after Redis lost the agent's state puts them
    # back on it, never to ready while the call is up): read only.
    _t("agent", "dial_open", "SELECT"),
    _t("agent", "dial_attempts", "SELECT"),
    # agent: who may log in to which campaign (read at every Login), and the append-only log of changes.
    _t("agent", "agent_assignments", "SELECT, INSERT, DELETE"),
    _t("agent", "agent_assignment_log", "SELECT, INSERT"),
    _s("agent", "agent_assignment_log_id_seq"),
    # Every service: the token revocation list (core/revocation.py reads it; `outdial token revoke` writes it
    # with the migration role's login). Granted to PUBLIC by 0002 as well; here so each role's grants say so.
    *(_t(w, "token_revocations", "SELECT") for w in ("campaign", "pacing", "dnc", "agent")),
    # console: its own users and sessions (sign-out and disabling stamp rows), the append-only user log.
    # Everything else it shows comes over gRPC with the signed-in user's token, never from the tables.
    _t("console", "console_users", "SELECT, INSERT, UPDATE"),
    _t("console", "console_sessions", "SELECT, INSERT, UPDATE"),
    _t("console", "console_user_log", "SELECT, INSERT"),
    _s("console", "console_user_log_id_seq"),
    # auditor: the audit log and its head, and (for `outdial evidence export`) the dial attempts and call
    # records it is compared with: the views (0409, 0410) and the append-only tables they read, so that the
    # export and an auditor's own queries read the same rows; nothing else.
    _t("auditor", "dnc_audit", "SELECT"),
    _t("auditor", "dnc_audit_head", "SELECT"),
    _t("auditor", "dial_attempts", "SELECT"),
    _t("auditor", "dial_attempt_gates", "SELECT"),
    _t("auditor", "dial_attempt_events", "SELECT"),
    _t("auditor", "call_records", "SELECT"),
    _t("auditor", "call_record_heads", "SELECT"),
    _t("auditor", "call_record_entries", "SELECT"),
)

#: Database-level TEMPORARY: uploads and registry imports stage rows in temporary tables.
TEMPORARY: frozenset[str] = frozenset({"campaign", "dnc"})

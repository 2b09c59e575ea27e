"""Who may do what in the database: one table, applied after every migration run.

Roles (PostgreSQL roles are cluster-wide; their privileges on tables are per database):

- the **migration role**: whoever runs ``outdial db migrate`` (the Kubernetes migration Job). It owns every
  table, sequence and function it creates, and it is the only role that applies DDL. Nothing else logs in
  as it.
- one **login role per service** (``outdial_campaign``, ``outdial_pacing``, ``outdial_dnc``,
  ``outdial_agent``) with exactly the privileges below, found by reading each service's SQL. None is a
  member of any role, so ``SET ROLE`` leads nowhere; none owns anything, so none can ALTER, DISABLE TRIGGER,
  or GRANT.
- ``outdial_auditor``: reads the DNC audit log and its head, for ``outdial dnc verify --database-url``.

``core/db.py`` (``apply_grants``) creates the roles when missing (idempotent, race-safe), revokes whatever
they hold in this database and grants what this table says. Adding a table is adding its lines here; a
table nobody is granted stays the migration role's alone (``idempotency_keys``: no service uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ROLE_PREFIX = "outdial_"

#: Login roles: the four services and the auditor.
RUNTIME: tuple[str, ...] = ("campaign", "pacing", "dnc", "agent", "auditor")


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
    _t("campaign", "call_records", "SELECT, INSERT, UPDATE"),
    _t("campaign", "campaign_events_applied", "SELECT, INSERT"),
    _t("campaign", "dial_attempts", "SELECT"),
    _s("campaign", "leads_id_seq"),
    # campaign: the append-only record of every start/resume and the seller identity then in force.
    _t("campaign", "campaign_starts", "SELECT, INSERT"),
    _s("campaign", "campaign_starts_id_seq"),
    # pacing: its settings and every dial attempt.
    _t("pacing", "pacing_settings", "SELECT, INSERT, UPDATE"),
    _t("pacing", "dial_attempts", "SELECT, INSERT, UPDATE"),
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
    # agent: the state timeline and dispositions (their follow-up status is updated).
    _t("agent", "agent_state_events", "SELECT, INSERT"),
    _t("agent", "agent_dispositions", "SELECT, INSERT, UPDATE"),
    _s("agent", "agent_state_events_id_seq"),
    _s("agent", "agent_dispositions_id_seq"),
    # agent: who may log in to which campaign (read at every Login), and the append-only log of changes.
    _t("agent", "agent_assignments", "SELECT, INSERT, DELETE"),
    _t("agent", "agent_assignment_log", "SELECT, INSERT"),
    _s("agent", "agent_assignment_log_id_seq"),
    # Every service: the token revocation list (core/revocation.py reads it; `outdial token revoke` writes it
    # with the migration role's login). Granted to PUBLIC by 0002 as well; here so each role's grants say so.
    *(_t(w, "token_revocations", "SELECT") for w in ("campaign", "pacing", "dnc", "agent")),
    # auditor: the audit log and its head, nothing else.
    _t("auditor", "dnc_audit", "SELECT"),
    _t("auditor", "dnc_audit_head", "SELECT"),
)

#: Database-level TEMPORARY: uploads and registry imports stage rows in temporary tables.
TEMPORARY: frozenset[str] = frozenset({"campaign", "dnc"})

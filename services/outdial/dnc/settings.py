"""Settings of the dnc service (environment variables ``OUTDIAL_DNC_*``), built once in ``setup``.

Database role: the service's sessions run as ``db_role`` (default ``outdial_app``, the role created by
migration 0200 and granted exactly the DNC privileges by 0201: read and append the audit log, never change
or erase it). The login user of ``OUTDIAL_DATABASE_URL`` stays the one that applies migrations (it needs
DDL rights), so it must be able to become the role: a superuser can; any other login user needs
``GRANT outdial_app TO <login user>;`` (migration 0201 does it when the login user may grant it, else an
administrator must). Until then the service cannot open a session and reports NOT_SERVING, with an error
in its log. ``OUTDIAL_DNC_DB_ROLE=""`` runs as the login user itself (not recommended: the audit log is
then protected by the trigger alone).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_DNC_", extra="ignore")

    #: Block numbers of a jurisdiction whose national registry was never imported ("registry.missing").
    require_registry: bool = True
    #: Legal maximum age of a registry copy (US 47 CFR 64.1200(c)(2)(i)(D); CRTC).
    registry_max_age_days: int = 31
    #: CheckNumbers answers "compliance.unavailable" when PostgreSQL/Redis do not answer within this.
    check_timeout_seconds: float = 3.0
    #: Numbers in one CheckNumbers, AddNumbers or RemoveNumbers request (INVALID_ARGUMENT above it).
    max_batch: int = Field(default=10_000, gt=0)
    #: ImportRegistry: the longest line of a registry file (a line is one number, or a number and a flag)
    #: and the largest file (the US national registry is about 3 GB). A longer line or a larger file is
    #: refused and nothing of it is kept.
    import_max_line_bytes: int = Field(default=1024, ge=16)
    import_max_bytes: int = Field(default=16 * 1024**3, gt=0)
    #: Read call events (opt-outs, "do not call" dispositions) with the consumer group "dnc".
    consume_events: bool = True
    #: How often the index keeper checks that a live index exists and is in step with PostgreSQL.
    keeper_interval_seconds: float = 2.0
    #: How often expired entries are taken off their lists and out of the index (audited "expire").
    expiry_sweep_interval_seconds: float = 60.0
    #: PostgreSQL role the service's sessions run as (see the module docstring); "" = the login user.
    db_role: str = "outdial_app"

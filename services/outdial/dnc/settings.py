"""Settings of the dnc service (environment variables ``OUTDIAL_DNC_*``), built once in ``setup``."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class DncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_DNC_", extra="ignore")

    #: Block numbers of a jurisdiction whose national registry was never imported ("registry.missing").
    require_registry: bool = True
    #: Legal maximum age of a registry copy (US 47 CFR 64.1200(c)(2)(i)(D); CRTC).
    registry_max_age_days: int = 31
    #: CheckNumbers answers "compliance.unavailable" when PostgreSQL/Redis do not answer within this.
    check_timeout_seconds: float = 3.0
    max_batch: int = 10_000
    #: Read call events (opt-outs, "do not call" dispositions) with the consumer group "dnc".
    consume_events: bool = True
    #: How often the index keeper checks that a live index exists and is in step with PostgreSQL.
    keeper_interval_seconds: float = 2.0

"""Settings of the dnc service (environment variables ``OUTDIAL_DNC_*``), built once in ``setup``.

Database: the service logs in as its own role ``outdial_dnc`` (``OUTDIAL_DNC_DATABASE_URL``; privileges in
``outdial/migrations/grants.py``): it reads and changes the lists, and appends to the audit log only through
``dnc_audit_append``; it can neither change nor erase the log.

Audit anchoring: every ``checkpoint_every_records`` records or ``checkpoint_every_seconds`` the service signs
a checkpoint of the chain's head with the Ed25519 key in ``audit_key_file`` (never in the database) and
writes it to ``checkpoint_url`` (``file:///dir``). Both are required outside development; under
``OUTDIAL_DEV=1`` a development key and a directory per database under the temporary directory are used.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_DNC_", extra="ignore")

    #: Block numbers of a jurisdiction whose national registry was never imported ("registry.missing").
    require_registry: bool = True
    #: Maximum age of a national registry copy. Unset: each jurisdiction's ``registry_freshness`` row of the
    #: rules table (US 47 CFR 64.1200(c)(2)(i)(D); CRTC; UK PECR). Set: it can only tighten the law's figure
    #: (the stricter of the two applies), never loosen it.
    registry_max_age_days: int | None = Field(default=None, gt=0)
    #: CheckNumbers answers "compliance.unavailable" when PostgreSQL/Redis do not answer within this.
    check_timeout_seconds: float = 3.0
    #: Numbers in one CheckNumbers, AddNumbers or RemoveNumbers request (INVALID_ARGUMENT above it).
    max_batch: int = Field(default=10_000, gt=0)
    #: ImportRegistry: the longest line of a registry file (a line is one number, or a number and a flag)
    #: and the largest file (the US national registry is about 3 GB). A longer line or a larger file is
    #: refused and nothing of it is kept.
    import_max_line_bytes: int = Field(default=1024, ge=16)
    import_max_bytes: int = Field(default=16 * 1024**3, gt=0)
    #: Reassigned Numbers Database (47 CFR 64.1200(m) safe harbor): block a number that relies on consent when
    #: no RND answer covers that consent ("rnd.unchecked"). Off by default: the RND is a safe harbor, not a
    #: duty; a consent the RND shows to predate a permanent disconnect is refused either way ("rnd.reassigned").
    rnd_required: bool = False
    #: ImportRndResults: the largest results file (a row is about 40 bytes).
    rnd_import_max_bytes: int = Field(default=256 * 1024**2, gt=0)
    #: Read call events (opt-outs, "do not call" dispositions) with the consumer group "dnc".
    consume_events: bool = True
    #: How often the index keeper checks that a live index exists and is in step with PostgreSQL.
    keeper_interval_seconds: float = 2.0
    #: How often expired entries are taken off their lists and out of the index (audited "expire").
    expiry_sweep_interval_seconds: float = 60.0
    #: Where signed audit checkpoints go (outside PostgreSQL): file:///directory.
    checkpoint_url: str = ""
    #: PEM file of the Ed25519 private key that signs checkpoints (a Secret mounted read-only).
    audit_key_file: Path | None = None
    #: Sign a checkpoint after this many audit records ...
    checkpoint_every_records: int = Field(default=1000, ge=1)
    #: ... or this many seconds after the last one, when records were appended since.
    checkpoint_every_seconds: float = Field(default=60.0, gt=0)

"""Settings of the agent service (``OUTDIAL_AGENT_*``), built once in ``setup``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outdial.rules.law import CONNECT_LIMIT_MS

# The legal limit: a live-answered person must reach an agent within 2 s (rules.law.CONNECT_LIMIT_S).
MAX_OFFER_DEADLINE_MS = CONNECT_LIMIT_MS


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_AGENT_", extra="ignore")

    # Default OfferCall deadline; configurable lower, never higher than the legal 2 s.
    offer_deadline_ms: int = Field(default=MAX_OFFER_DEADLINE_MS, gt=0, le=MAX_OFFER_DEADLINE_MS)
    # Presence: the console's heartbeat key lives this long; the stream refreshes it while open.
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)
    # What Login tells the console (Heartbeat RPC period when it has no stream open).
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    # Wrap-up ends by itself after this long without a disposition.
    wrap_timeout_s: float = Field(default=120.0, gt=0)
    # How often the presence sweeper looks at logged-in agents.
    sweep_interval_s: float = Field(default=1.0, gt=0)
    # A reservation whose OfferCall replica died is released this long after its deadline.
    stuck_offer_slack_ms: int = Field(default=3000, ge=0)
    # ReserveAgent holds (agent reserved before dialing): default and longest time to live.
    hold_default_ms: int = Field(default=60_000, gt=0)
    hold_max_ms: int = Field(default=180_000, gt=0)
    # A preview with no timeout (the agent decides) holds its agent at most this long.
    preview_hold_max_ms: int = Field(default=3_600_000, gt=0)
    # Most ready agents the assignment script examines for one call (skills filtering).
    max_candidates: int = Field(default=512, gt=0)
    # Background retry of DNC opt-outs / callbacks that could not be delivered at once.
    followup_retry_s: float = Field(default=2.0, gt=0)
    # Dispositions a campaign accepts when its config lists none.
    default_dispositions: list[str] = Field(
        default_factory=lambda: [
            "sale",
            "callback",
            "not_interested",
            "wrong_number",
            "do_not_call",
            "no_answer",
            "other",
        ]
    )

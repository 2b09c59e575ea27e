"""Settings of the pacing service (environment, prefix ``OUTDIAL_``), built once in ``setup``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outdial.rules.law import CONNECT_LIMIT_MS, OFFER_DEADLINE_MS


class PacingServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_", extra="ignore")

    # Campaign leases: time to live, and how often the holder renews (a third of the lease by default).
    pacing_lease_ms: int = Field(default=3000, ge=300)
    pacing_renew_ms: int | None = None
    # Dialer tick (also woken by call events).
    pacing_tick_ms: int = Field(default=200, ge=20)
    # How long the agent service has to take a live-answered call: by default the legal 2 s less the time
    # to start the abandonment message within them (rules.law.OFFER_DEADLINE_MS); never above the 2 s.
    pacing_offer_deadline_ms: int = Field(default=OFFER_DEADLINE_MS, ge=100, le=CONNECT_LIMIT_MS)
    # On SIGTERM: how long calls in flight may finish before they are handed back.
    pacing_drain_s: float = Field(default=5.0, ge=0)
    # Lead claim TTL: a safety net only (claims are deleted when the call ends).
    pacing_claim_ttl_s: int = Field(default=3600, ge=60)
    # Telephony: "sim" (the simulated carrier) or "sip" (the gateway at OUTDIAL_GATEWAY_ADDR).
    telephony: str = "sim"
    # A STIR/SHAKEN Identity header value the operator supplies, passed through on every call (SIP only).
    sip_identity: str = ""
    sim_seed: int = 1
    sim_time_scale: float = Field(default=1.0, gt=0)
    sim_p_live: float = 0.25
    sim_p_machine: float = 0.15
    sim_p_busy: float = 0.05
    sim_p_failed: float = 0.03
    sim_answer_delay_mean_s: float = 15.0
    sim_answer_delay_shape: float = 4.0
    sim_talk_mean_s: float = 120.0
    sim_message_s: float = 8.0
    sim_p_opt_out: float = 0.1
    sim_confirmation_s: float = 2.0

    @property
    def renew_ms(self) -> int:
        return self.pacing_renew_ms or max(100, self.pacing_lease_ms // 3)

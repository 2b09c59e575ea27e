"""The console's own settings (``OUTDIAL_CONSOLE_*``); the services' addresses, TLS and keys come from the
shared :class:`outdial.core.config.Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # PostgreSQL for users and sessions, as the outdial_console role in production (unset: OUTDIAL_DATABASE_URL).
    database_url: str | None = None
    # Cookies carry Secure unless this is false (plain-HTTP development on loopback only: `make run` sets it).
    secure_cookies: bool = True
    # A session lasts this long from sign-in (capped by the 24 h lifetime of people's tokens).
    session_hours: float = Field(default=8.0, gt=0, le=24)
    # Lifetime of the gRPC token minted for a signed-in user; renewed at half its life.
    token_minutes: float = Field(default=15.0, gt=0, le=60)
    # Largest lead file accepted by the upload page.
    upload_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Pause codes an agent picks from (recorded as the pause reason in the agent's state timeline).
    pause_codes: list[str] = Field(default=["break", "lunch", "training", "meeting", "coaching", "technical"])
    # Where the vendored JavaScript lives (npm's node_modules, installed from package-lock.json by `npm ci`).
    # Unset: the node_modules folder of the checkout.
    vendor_dir: Path | None = None

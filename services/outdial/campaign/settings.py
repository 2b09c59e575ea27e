"""Settings of the campaign service (``OUTDIAL_CAMPAIGN_*``), built once in ``setup``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CampaignSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_CAMPAIGN_", extra="ignore")

    # Largest lead file accepted by UploadLeads (bytes), and the longest physical line.
    upload_max_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    upload_max_line_bytes: int = Field(default=1024 * 1024, gt=0)
    # Columns of a lead file: a lead's custom fields travel in OfferCall/PreviewLead, whose maps hold at
    # most OUTDIAL_LIMIT_LIST_ITEMS (1000) items, so keep this at or below that.
    upload_max_columns: int = Field(default=1000, gt=0)
    # Rows parsed and COPY'd per batch during an upload (memory bound).
    upload_batch_rows: int = Field(default=5000, gt=0)
    # Timeout of each bulk statement of an upload (COPY batches, the final dedupe insert).
    upload_statement_timeout_s: float = Field(default=3600.0, gt=0)
    # Hopper feeder: pass interval, leads kept ready per campaign, leads examined per pass.
    feeder_interval_s: float = Field(default=2.0, gt=0)
    hopper_target: int = Field(default=200, gt=0)
    feeder_batch: int = Field(default=1000, gt=0)
    # A lead enters the hopper only if its window is still open this long after now.
    window_margin_s: float = Field(default=300.0, ge=0)
    # Deadline of the DNC batch check.
    dnc_timeout_s: float = Field(default=5.0, gt=0)
    # How long a DNC-blocked lead is left alone before being looked at again.
    dnc_recheck_s: float = Field(default=3600.0, gt=0)
    # Event consumer: XREADGROUP block time and batch size.
    events_block_ms: int = Field(default=1000, gt=0)
    events_batch: int = Field(default=200, gt=0)
    consumer_group: str = "campaign"
    # Call detail records rebuilt from PostgreSQL for calls ended this long ago whose events were lost
    # (Redis lost its data), checked this often.
    reconcile_after_s: float = Field(default=30.0, gt=0)
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    # Retention of call records (campaign/retention.py): years to keep them (unset: the rules table's minimum;
    # below it: refused at start), how often the job runs, calls removed per batch and batches per run.
    retention_years: int | None = Field(default=None, gt=0)
    retention_interval_s: float = Field(default=86400.0, gt=0)
    retention_batch: int = Field(default=10000, gt=0)
    retention_max_batches: int = Field(default=100, gt=0)

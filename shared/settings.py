"""Connection settings come from the environment (LEADSLA_*); everything else is the YAML config."""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services import SERVICE_PORTS  # noqa: F401 - re-exported for the CLI and tests
from shared.config import TOUCH_SKEW


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADSLA_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_partitions: int = Field(default=6, ge=1)
    # Copies of each topic a service creates: 1 for one broker (dev, compose), 3 on a production cluster.
    kafka_replication_factor: int = Field(default=1, ge=1)
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    log_level: str = "INFO"
    # How often a running service looks for a newly applied configuration version.
    config_poll_seconds: float = Field(default=2.0, gt=0)
    # How often the SLA clock looks for due timers when nothing wakes it earlier.
    timer_poll_seconds: float = Field(default=1.0, gt=0)
    # The SLA clock judges a deadline once it has consumed its inputs up to it (its watermark);
    # a breach that leaves this many seconds or more after its deadline has root cause system_delay.
    sla_delay_tolerance_seconds: float = Field(default=60.0, ge=0)
    # ... and judges a deadline its watermark has not confirmed after this many seconds anyway.
    sla_confirm_wait_seconds: float = Field(default=300.0, ge=0)
    # A touch is dated by intake's acceptance; the sender's occurred_at counts up to this much earlier.
    sla_touch_skew_seconds: float = Field(default=TOUCH_SKEW.total_seconds(), ge=0)
    # Intake beats this often while it can accept (its process up, the database answering) ...
    intake_beat_seconds: float = Field(default=0.5, gt=0)
    # ... and a silence this long means it could not (an outage; so do 3 s without the SLA clock
    # reading its inputs). No deadline after an outage began is judged while it lasts and for this
    # grace after it, while senders retry what it refused: a touch made in time then meets the SLA,
    # and breaches due in the outage carry root cause system_delay.
    intake_outage_gap_seconds: float = Field(default=2.0, gt=0)
    sla_outage_grace_seconds: float = Field(default=30.0, ge=0)
    # How long a producer's transaction may take from stamping an event to committing it.
    sla_commit_allowance_seconds: float = Field(default=1.0, ge=0)
    # How often the SLA clock re-reads its input partitions' ends and its consumer's offsets.
    sla_watermark_interval_seconds: float = Field(default=0.2, gt=0)
    # The event store keeps everything unless an operator sets a retention (published events
    # older than this many days are then deleted; replay can only rebuild from what is kept).
    event_retention_days: float | None = Field(default=None, gt=0)
    # Processed event ids: keep these longer than the broker keeps records, or a very late
    # redelivery would be handled twice.
    processed_retention_days: float = Field(default=14, gt=0)
    # A stored event still unpublished after this long means the relay is stuck: /readyz fails.
    outbox_stuck_seconds: float = Field(default=60, gt=0)
    # How long the broker waits for a silent consumer before giving its partitions to others. The
    # embedded broker also delays every rejoin by about twice this, so `leadsla dev` runs it at
    # 2 s; 6 s is Apache Kafka's minimum (group.min.session.timeout.ms).
    kafka_session_timeout_ms: int = Field(default=6000, ge=500)
    # How long a starting service waits for the broker to come up (compose starts them together).
    kafka_startup_wait_seconds: float = Field(default=60.0, ge=0)
    # Requests a key may make to router, sla_clock, notifier and reporting (each process counts its
    # own): a runaway script or a dashboard polling in a loop gets 429 with Retry-After, not the
    # database's attention. Intake limits each source by its configuration (intake.rate_limit).
    api_rate_limit_per_second: float = Field(default=50.0, gt=0)
    api_rate_limit_burst: int = Field(default=200, ge=1)
    # What a client is told to wait (Retry-After) while the database is unreachable.
    retry_after_seconds: int = Field(default=5, ge=1)
    # A running service's statements that get no answer within this long fail as "database
    # unavailable" (a 503, a consumer's retry): a frozen or unreachable server whose connections
    # stay open answers nothing and would otherwise hold a request for ever. Every statement of a
    # running service takes milliseconds; the long ones (migrations, replay) run without it.
    database_statement_timeout_seconds: float = Field(default=5.0, gt=0)
    # A consumer's statement that keeps timing out while the database answers is blocked (a lock
    # another session holds) or the database is busy: waited out this long before the record
    # counts as failing on its own (dead-lettered), so a held lock never dead-letters good records.
    consumer_busy_patience_seconds: float = Field(default=300.0, gt=0)


class DatabaseUrlError(ValueError):
    """LEADSLA_DATABASE_URL is not a URL the project can use."""


def database_url_for_asyncpg(url: str) -> str:
    """Accept plain postgres URLs (as operators write them) and point SQLAlchemy at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise DatabaseUrlError(f"LEADSLA_DATABASE_URL must be a postgresql:// URL, got scheme of {url.split(':', 1)[0]!r}")

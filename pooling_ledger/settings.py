"""One settings object, read from environment variables (see README, "Configuration")."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumers.inbound import MESSAGE_SIZE_MAX_BYTES
from storage import DB_RETRY_MAX_S

EVENTS_TOPIC = "pooling.events.v1"
LEDGER_TOPIC = "pooling.ledger.v1"
REJECTIONS_TOPIC = "pooling.rejections.v1"


class Settings(BaseSettings):
    """Configuration. Unset service URLs mean: start the embedded server."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    database_admin_url: str | None = Field(default=None, alias="DATABASE_ADMIN_URL")
    writer_role: str = Field(default="pooling_ledger", pattern=r"^[a-z_][a-z0-9_]*$", alias="POOLING_WRITER_ROLE")
    writer_password: str | None = Field(default=None, alias="POOLING_WRITER_PASSWORD")
    kafka_bootstrap_servers: str | None = Field(default=None, alias="KAFKA_BOOTSTRAP_SERVERS")
    data_dir: Path = Field(default=Path("var"), alias="POOLING_DATA_DIR")
    events_topic: str = Field(default=EVENTS_TOPIC, alias="POOLING_EVENTS_TOPIC")
    ledger_topic: str = Field(default=LEDGER_TOPIC, alias="POOLING_LEDGER_TOPIC")
    rejections_topic: str = Field(default=REJECTIONS_TOPIC, alias="POOLING_REJECTIONS_TOPIC")
    topic_partitions: int = Field(default=4, ge=1, le=256, alias="POOLING_TOPIC_PARTITIONS")
    consumer_group: str = Field(default="pooling-ledger", alias="POOLING_CONSUMER_GROUP")
    consumer_mode: Literal["all", "group"] = Field(default="all", alias="POOLING_CONSUMER_MODE")
    batch_size_max: int = Field(default=2000, ge=1, le=50_000, alias="POOLING_BATCH_SIZE_MAX")
    poll_timeout_ms: int = Field(default=500, ge=1, le=60_000, alias="POOLING_POLL_TIMEOUT_MS")
    #: seconds PostgreSQL may stay unreachable (retried with back-off) before a command gives up
    db_retry_max_s: float = Field(default=DB_RETRY_MAX_S, ge=0, le=86_400, alias="POOLING_DB_RETRY_MAX_S")
    #: bytes; larger messages are rejected `message_too_large` without being parsed
    message_size_max: int = Field(
        default=MESSAGE_SIZE_MAX_BYTES, ge=1024, le=64 * 1024 * 1024, alias="POOLING_MESSAGE_SIZE_MAX"
    )
    policy_file: Path | None = Field(default=None, alias="POOLING_POLICY_FILE")
    api_token: str | None = Field(default=None, alias="POOLING_API_TOKEN")
    api_host: str = Field(default="127.0.0.1", alias="POOLING_API_HOST")
    api_port: int = Field(default=8000, ge=0, le=65535, alias="POOLING_API_PORT")
    reader_role: str = Field(default="pooling_reader", pattern=r"^[a-z_][a-z0-9_]*$", alias="POOLING_READER_ROLE")
    reader_password: str | None = Field(default=None, alias="POOLING_READER_PASSWORD")
    log_format: Literal["console", "json"] = Field(default="console", alias="POOLING_LOG_FORMAT")
    log_level: str = Field(default="info", alias="POOLING_LOG_LEVEL")

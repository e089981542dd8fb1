"""One configuration object for the service: CLI flags, ``SECAGG_*`` env vars, a TOML file.

Precedence (highest first): values passed explicitly (CLI flags), environment
variables, the TOML file named by ``SECAGG_CONFIG`` (or ``--config``), defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server needs to run; nothing else reads configuration."""

    model_config = SettingsConfigDict(env_prefix="SECAGG_", extra="forbid")

    database_url: str = Field(
        default="sqlite:///secagg.db",
        description="SQLAlchemy URL; SQLite needs no set-up, e.g. postgresql+psycopg://...",
    )
    host: str = Field(
        default="127.0.0.1",
        description="address to listen on (0.0.0.0 for every interface)",
    )
    port: int = Field(default=8443, ge=0, le=65535, description="TCP port to listen on")
    tls_cert: Path | None = Field(
        default=None,
        description="TLS certificate chain (PEM); with tls_key, the server speaks HTTPS",
    )
    tls_key: Path | None = Field(default=None, description="TLS private key (PEM)")
    admin_token: str | None = Field(
        default=None,
        description="Bearer token for admin endpoints; if unset one is generated at start "
        "and written to admin_token_file",
    )
    admin_token_file: Path = Field(
        default=Path("secagg-admin-token"),
        description="where the generated admin token is kept (created once with mode 600 "
        "and reused on restart; a file group or others can read is refused)",
    )
    # -- transport limits (README "Service limits") --------------------------------
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="largest request body (protocol messages, admin uploads), counted as "
        "it streams (chunked too); beyond it the request gets 413 and nothing more is read",
    )
    max_public_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest body of a request whose sender is not known before its body "
        "is read (enrolment, and admin requests without the admin credential)",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="a connection whose request head (line and headers) is not complete "
        "this long after it opened, or after the next request began, is closed",
    )
    body_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="a request body must arrive within this (64 MiB in 120 s is 0.5 MiB/s); "
        "a slower one gets 408 and its connection is closed",
    )
    keepalive_timeout_s: int = Field(
        default=5, ge=1, le=300, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        default=4096,
        ge=2,
        description="open connections the server accepts in all; more are refused with 503",
    )
    max_connections_per_ip: int = Field(
        default=512,
        ge=1,
        description="open connections one peer address may hold (keep it well below "
        "max_connections so one host cannot take every slot)",
    )
    nonce_purge_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="how often request nonces older than the signature window are deleted",
    )
    request_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        description="how far a signed request's timestamp may be from the server's clock",
    )
    long_poll_s: float = Field(
        default=20.0,
        gt=0,
        le=300,
        description="longest a long-poll (check-in, message fetch) is held open",
    )
    checkin_ttl_s: float = Field(
        default=60.0, gt=0, description="a check-in counts as available for this long"
    )
    body_spool_bytes: int = Field(
        default=1024 * 1024,
        ge=0,
        description="a request body larger than this (a masked input) is written to an "
        "unlinked temporary file in TMPDIR as it arrives and read back through a memory "
        "map, instead of being held in memory",
    )
    model_cache_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="bound of the in-memory cache of encoded model files that downloads "
        "are streamed from (least recently used versions are dropped first; a version "
        "larger than the bound is served from the database each time; 0 disables it)",
    )
    heartbeat_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often a selected client sends a heartbeat (told in its assignment)",
    )
    liveness_timeout_s: float = Field(
        default=4.0,
        gt=0,
        le=600,
        description="a participant silent this long is gone: the stage stops waiting for it "
        "(at least two heartbeats; specs/service-v1.md §4)",
    )
    heartbeat_hold_s: float = Field(
        default=10.0,
        ge=0,
        le=60,
        description="a heartbeat is held open this long: while it is, its client is alive "
        "however busy; its connection closing marks the client gone at once",
    )
    # -- database: timeouts, pool, retries (secagg/db.py DatabaseOptions) ----------
    db_lock_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="PostgreSQL lock_timeout: a statement waiting this long for a lock fails "
        "(the request gets 503 database_unavailable) instead of holding a worker",
    )
    db_statement_timeout_s: float = Field(
        default=30.0, gt=0, le=86400, description="PostgreSQL statement_timeout"
    )
    db_idle_in_transaction_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="PostgreSQL idle_in_transaction_session_timeout: a transaction left open "
        "this long is ended by the database, releasing its locks",
    )
    db_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="longest wait for a new PostgreSQL connection"
    )
    db_busy_timeout_s: float = Field(
        default=5.0, gt=0, le=3600, description="SQLite: longest wait for the write lock"
    )
    db_pool_size: int = Field(default=10, ge=1, le=1000, description="pooled connections")
    db_max_overflow: int = Field(
        default=10, ge=0, le=1000, description="connections opened beyond the pool under load"
    )
    db_pool_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="longest wait for a free pooled connection (then 503 database_unavailable)",
    )
    db_retry_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="attempts of a retried transaction (authentication) on transient failures",
    )
    db_retry_budget_s: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="no retry of a transaction starts this long after its first attempt "
        "(a lock or statement timeout is answered with 503, not repeated)",
    )
    db_retry_after_s: int = Field(
        default=2,
        ge=1,
        le=3600,
        description="Retry-After of a 503 database_unavailable answer",
    )
    db_application_name: str | None = Field(
        default=None,
        max_length=50,
        description="PostgreSQL application_name of the server's connections (default "
        "secagg-<pid>); the writer lock's connection adds '/writer'",
    )
    # -- single writer (secagg/writer_lock.py) --------------------------------------
    standby: bool = Field(
        default=False,
        description="if another server holds the database's writer lock, wait and take over "
        "when it is released, instead of refusing to start",
    )
    standby_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often a standby tries the writer lock"
    )
    writer_lock_check_s: float = Field(
        default=2.0,
        gt=0,
        le=5,
        description="how often the PostgreSQL writer lock's connection is checked; if it is "
        "gone, or silent for 15 s, the server exits (it may no longer be the only writer)",
    )
    log_level: str = Field(
        default="info", description="debug, info, warning or error (also uvicorn's)"
    )
    log_json: bool = Field(default=True, description="one JSON object per log line")

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Settings from defaults < TOML file < environment < ``overrides`` (non-None)."""
        path = config_file or (
            Path(os.environ["SECAGG_CONFIG"]) if "SECAGG_CONFIG" in os.environ else None
        )
        file_values: dict[str, Any] = {}
        if path is not None:
            with path.open("rb") as fh:
                file_values = tomllib.load(fh)
        env_values = cls().model_dump(exclude_unset=True)
        merged = {
            **file_values,
            **env_values,
            **{k: v for k, v in overrides.items() if v is not None},
        }
        return cls(**merged)

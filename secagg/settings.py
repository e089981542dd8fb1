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
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    admin_token: str | None = Field(
        default=None,
        description="Bearer token for admin endpoints; if unset one is generated at start "
        "and written to admin_token_file",
    )
    admin_token_file: Path = Path("secagg-admin-token")
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
    request_clock_skew_s: float = Field(default=300.0, gt=0)
    long_poll_s: float = Field(default=20.0, gt=0, le=300)
    checkin_ttl_s: float = Field(
        default=60.0, gt=0, description="a check-in counts as available for this long"
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
    log_level: str = "info"
    log_json: bool = True

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

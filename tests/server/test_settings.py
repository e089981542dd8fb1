"""Settings precedence: defaults < TOML file < environment < explicit values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from secagg.settings import Settings


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "secagg.toml"
    toml.write_text('port = 9001\nhost = "0.0.0.0"\nlong_poll_s = 5.0\n')
    assert Settings.load(toml).port == 9001
    monkeypatch.setenv("SECAGG_PORT", "9002")
    s = Settings.load(toml)
    assert (s.port, s.host, s.long_poll_s) == (9002, "0.0.0.0", 5.0)
    assert Settings.load(toml, port=9003, host=None).port == 9003
    monkeypatch.setenv("SECAGG_CONFIG", str(toml))
    assert Settings.load().long_poll_s == 5.0


def test_unknown_or_invalid_settings_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    with pytest.raises(ValidationError):
        Settings.load(bad)
    with pytest.raises(ValidationError):
        Settings(port=70000)


_SIZES = {"64 MiB": 64 << 20, "64 KiB": 64 << 10, "1 MiB": 1 << 20, "256 MiB": 256 << 20}


def test_readme_documents_every_service_limit_with_its_default() -> None:
    """The README's "Service limits" table is the live defaults, and covers every limit."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Service limits", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        name, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        documented[name.strip("`")] = _SIZES.get(default, default)
    limits = {
        "max_body_bytes",
        "max_public_body_bytes",
        "header_timeout_s",
        "body_timeout_s",
        "keepalive_timeout_s",
        "max_connections",
        "max_connections_per_ip",
        "nonce_purge_interval_s",
        "request_clock_skew_s",
        "body_spool_bytes",
        "model_cache_bytes",
    }
    assert set(documented) == limits
    defaults = Settings()
    for name, default in documented.items():
        assert float(default) == float(getattr(defaults, name)), name

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

"""The admin credential: one bearer token, stable across restarts.

``Settings.admin_token`` wins when set. Otherwise the token lives in
``Settings.admin_token_file``: read if the file exists, else generated once
(from the OS CSPRNG) and written there with mode 600. A file that group or
others can read is refused rather than used: the token grants every admin
power, so a leaked copy must be noticed, not trusted.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "AdminTokenError",
    "load_or_create_admin_token",
    "read_admin_token_file",
    "resolve_admin_token",
]

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 1000


class AdminTokenError(Exception):
    """The admin token file cannot be used; the message says why and what to do."""


def read_admin_token_file(path: Path) -> str:
    """The token in ``path``, refusing a file group or others can access."""
    return _read(path)


def _read(path: Path) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        raise AdminTokenError(f"cannot read the admin token file {path}: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise AdminTokenError(f"admin token file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise AdminTokenError(
            f"admin token file {path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):03o}); run `chmod 600 {path}` if the token "
            "has not leaked, or delete the file to have a new token generated"
        )
    if info.st_size > MAX_TOKEN_CHARS:
        raise AdminTokenError(f"admin token file {path} is too large to hold a token")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise AdminTokenError(f"admin token file {path} is empty; delete it to generate one")
    return token


def load_or_create_admin_token(path: Path) -> str:
    """The token in ``path``, or a new one written there (mode 600) if it does not exist.

    Raises:
        AdminTokenError: the file exists but is group/world accessible, empty,
            not a regular file, or cannot be read or written.
    """
    if path.exists():
        return _read(path)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: two servers starting together cannot both write a token;
        # the loser reads the winner's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    except OSError as exc:
        raise AdminTokenError(f"cannot create the admin token file {path}: {exc}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def resolve_admin_token(admin_token: str | None, admin_token_file: Path) -> str:
    """``admin_token`` if set, else the token of ``admin_token_file`` (created once)."""
    if admin_token:
        return admin_token
    return load_or_create_admin_token(admin_token_file)

"""A client's long-term identity: an Ed25519 key, stored in a file only its owner can read."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from protocol.crypto import SystemRandom, ed25519_public_key


class IdentityError(Exception):
    """The identity file is missing, malformed or readable by others."""


@dataclass(frozen=True)
class Identity:
    """Ed25519 identity of one client; ``client_id`` is set once enrolled."""

    secret: bytes
    client_id: int | None = None
    server_url: str | None = None
    # Where it was loaded from (``load``); the contribution ledger lives beside it.
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def public_key(self) -> bytes:
        return ed25519_public_key(self.secret)

    @classmethod
    def generate(cls) -> Identity:
        return cls(SystemRandom().random_bytes(32))

    def with_enrolment(self, client_id: int, server_url: str) -> Identity:
        return Identity(self.secret, client_id, server_url, self.path)

    def save(self, path: str | Path) -> None:
        """Write atomically with mode 0600 (owner read/write only)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(
            {
                "format": "secagg-identity-v1",
                "secret_key": self.secret.hex(),
                "public_key": self.public_key.hex(),
                "client_id": self.client_id,
                "server_url": self.server_url,
            },
            indent=2,
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as exc:
            raise IdentityError(f"no identity file at {path}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
                "run: chmod 600 " + str(path)
            )
        try:
            raw = json.loads(path.read_text())
            identity = cls(
                bytes.fromhex(raw["secret_key"]), raw.get("client_id"), raw.get("server_url"), path
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{path} is not a secagg identity file: {exc}") from exc
        if len(identity.secret) != 32:
            raise IdentityError(f"{path}: the secret key must be 32 bytes")
        if raw.get("public_key") and raw["public_key"] != identity.public_key.hex():
            raise IdentityError(f"{path}: public key does not match the secret key")
        return identity

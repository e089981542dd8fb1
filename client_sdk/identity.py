"""A client's long-term identity: an Ed25519 key, stored in a file only its owner can read."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from protocol.crypto import SystemRandom, ed25519_is_valid_public, ed25519_public_key


class IdentityError(Exception):
    """The identity file is missing, malformed or readable by others."""


def parse_authority_key(value: str) -> bytes:
    """A task authority's public key from hex, or from a file holding the hex.

    Raises:
        IdentityError: not 32 bytes of hex, or not a valid Ed25519 public key.
    """
    text = value.strip()
    path = Path(text)
    if len(text) != 64 and path.is_file():
        text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise IdentityError(f"the authority key is not hex: {exc}") from exc
    if len(key) != 32 or not ed25519_is_valid_public(key):
        raise IdentityError("the authority key is not a valid 32-byte Ed25519 public key")
    return key


@dataclass(frozen=True)
class Identity:
    """Ed25519 identity of one client; ``client_id`` is set once enrolled.

    ``authority_key`` is the task authority's public key pinned at enrolment
    (``specs/authority-v1.md``): with it the client refuses every active-mode
    session whose participants the authority did not certify.
    """

    secret: bytes
    client_id: int | None = None
    server_url: str | None = None
    authority_key: bytes | None = None
    # Where it was loaded from (``load``); the contribution ledger lives beside it.
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def public_key(self) -> bytes:
        return ed25519_public_key(self.secret)

    @classmethod
    def generate(cls) -> Identity:
        return cls(SystemRandom().random_bytes(32))

    def with_enrolment(self, client_id: int, server_url: str) -> Identity:
        return Identity(self.secret, client_id, server_url, self.authority_key, self.path)

    def with_authority(self, authority_key: bytes | None) -> Identity:
        """The same identity pinning ``authority_key`` (None: no authority)."""
        return Identity(self.secret, self.client_id, self.server_url, authority_key, self.path)

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
                "authority_key": self.authority_key.hex() if self.authority_key else None,
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
            pinned = raw.get("authority_key")
            identity = cls(
                bytes.fromhex(raw["secret_key"]),
                raw.get("client_id"),
                raw.get("server_url"),
                parse_authority_key(pinned) if pinned is not None else None,
                path,
            )
        except (ValueError, KeyError, TypeError, IdentityError) as exc:
            raise IdentityError(f"{path} is not a secagg identity file: {exc}") from exc
        if len(identity.secret) != 32:
            raise IdentityError(f"{path}: the secret key must be 32 bytes")
        if raw.get("public_key") and raw["public_key"] != identity.public_key.hex():
            raise IdentityError(f"{path}: public key does not match the secret key")
        return identity

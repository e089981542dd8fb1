"""The offline task-authority tool behind ``secagg authority`` (``specs/authority-v1.md`` §6).

It keeps its state in one directory and never talks to a server:

* ``authority.key``: the Ed25519 secret (JSON, mode 0600, created exclusively);
* ``authority.pub``: the public key in hex, to hand to clients at enrolment;
* ``certificates/<client id>-<scope hash>.cert``: every certificate issued (hex);
* ``serial``: the serial of the last roster exported.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from protocol.authority import (
    IdentityCertificate,
    Roster,
    issue_certificate,
    sign_roster,
)
from protocol.crypto import SystemRandom, ed25519_public_key, sha256

KEY_FILE = "authority.key"
PUBLIC_FILE = "authority.pub"
CERTIFICATE_DIR = "certificates"
SERIAL_FILE = "serial"
KEY_FORMAT = "secagg-authority-key-v1"
DAY = 86_400
# Certificates and rosters are valid from a little before they are issued, so that a
# client whose clock is slightly behind the authority's does not refuse them.
CLOCK_SKEW_S = 300


class AuthorityToolError(Exception):
    """The authority directory or an argument is unusable; the message says why."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_authority(directory: Path) -> bytes:
    """Create a new authority in ``directory``; return its public key.

    Raises:
        AuthorityToolError: ``directory`` already holds an authority key.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = directory / KEY_FILE
    if key_path.exists():
        raise AuthorityToolError(f"{key_path} exists: refusing to replace an authority key")
    secret = SystemRandom().random_bytes(32)
    public = ed25519_public_key(secret)
    record = {"format": KEY_FORMAT, "secret_key": secret.hex(), "public_key": public.hex()}
    _write_private(key_path, json.dumps(record, indent=2).encode())
    (directory / PUBLIC_FILE).write_text(public.hex() + "\n")
    (directory / CERTIFICATE_DIR).mkdir(exist_ok=True)
    return public


def load_secret(directory: Path) -> bytes:
    """The authority secret, refusing a key file that others can read."""
    path = directory / KEY_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise AuthorityToolError(
            f"no authority in {directory} (run: secagg authority init)"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthorityToolError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    try:
        raw = json.loads(path.read_text())
        secret = bytes.fromhex(raw["secret_key"])
        public = bytes.fromhex(raw["public_key"])
        if raw.get("format") != KEY_FORMAT or len(secret) != 32:
            raise ValueError("wrong format")
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthorityToolError(f"{path} is not a secagg authority key: {exc}") from exc
    if ed25519_public_key(secret) != public:
        raise AuthorityToolError(f"{path}: the public key does not match the secret")
    return secret


def parse_identity_key(value: str) -> bytes:
    """A client's Ed25519 public key: hex, a file of hex, or a client identity file."""
    text = value.strip()
    path = Path(text)
    if len(text) != 64 and path.is_file():
        content = path.read_text().strip()
        if content.startswith("{"):
            try:
                content = str(json.loads(content)["public_key"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AuthorityToolError(f"{path} has no public_key: {exc}") from exc
        text = content
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise AuthorityToolError(f"the identity key is not hex: {exc}") from exc
    if len(key) != 32:
        raise AuthorityToolError("an identity key is 32 bytes (64 hex digits)")
    return key


def _certificate_path(directory: Path, client_id: int, scope: str) -> Path:
    return directory / CERTIFICATE_DIR / f"{client_id:010d}-{sha256(scope.encode())[:8].hex()}.cert"


def certify(
    directory: Path, client_id: int, identity_key: bytes, scope: str, *, days: float, now: int
) -> IdentityCertificate:
    """Certify ``identity_key`` as client ``client_id``'s in ``scope``; record the certificate.

    Raises:
        CertificationError: an argument breaks the certificate format (bad key, scope, id).
    """
    secret = load_secret(directory)
    cert = issue_certificate(
        secret, client_id, identity_key, scope, now - CLOCK_SKEW_S, now + int(days * DAY)
    )
    path = _certificate_path(directory, client_id, scope)
    path.parent.mkdir(exist_ok=True)
    path.write_text(cert.encode().hex() + "\n")
    return cert


def export_roster(directory: Path, scope: str, *, days: float, now: int) -> Roster:
    """Sign a roster of the recorded certificates of ``scope`` valid at ``now``.

    Raises:
        AuthorityToolError: no certificate of ``scope`` is valid now.
        CertificationError: the certificates break a roster rule (e.g. two
            clients certified with the same key).
    """
    secret = load_secret(directory)
    public = ed25519_public_key(secret)
    entries: dict[int, bytes] = {}
    for path in sorted((directory / CERTIFICATE_DIR).glob("*.cert")):
        cert = IdentityCertificate.decode(bytes.fromhex(path.read_text().strip()))
        if cert.scope != scope or not cert.not_before <= now < cert.not_after:
            continue
        cert.verify(public, now=now, scope=scope)  # our own records, checked all the same
        entries[cert.client_id] = cert.identity_key
    if not entries:
        raise AuthorityToolError(f"no certificate of scope {scope!r} is valid now")
    serial_path = directory / SERIAL_FILE
    serial = int(serial_path.read_text()) + 1 if serial_path.exists() else 1
    roster = sign_roster(
        secret, scope, serial, now - CLOCK_SKEW_S, now + int(days * DAY), entries.items()
    )
    serial_path.write_text(f"{serial}\n")
    return roster

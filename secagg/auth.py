"""Client authentication (signed requests, replay refusal), enrolment, admin credential."""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.orm import Session

from protocol.config import MAX_CLIENT_ID
from protocol.crypto import ed25519_is_valid_public
from secagg import db as dbm
from secagg_http.signing import (
    HEADER_CLIENT,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NONCE_HEX_CHARS,
    verify_request,
)


class AuthError(Exception):
    """Authentication failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class SignedRequest:
    client_id: int
    timestamp: int
    nonce: str
    signature: bytes


# Header integers are plain decimal digits (int() would also take "+5", " 5",
# "5_000" and other scripts' digits) and range-checked before use, so no
# out-of-range value reaches the database or float arithmetic.
_DECIMAL = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"[0-9a-f]*")
# Seconds since the epoch up to the year ~36800: far beyond any clock, far
# below anything float arithmetic or the database could choke on.
MAX_TIMESTAMP = 1 << 40


def _header_int(raw: str, name: str, low: int, high: int) -> int:
    if not _DECIMAL.fullmatch(raw) or not low <= int(raw) <= high:
        raise AuthError(
            401, "bad_auth_header", f"{name} must be a decimal integer in [{low}, {high}]"
        )
    return int(raw)


def parse_headers(headers: dict[str, str]) -> SignedRequest:
    """The four authentication headers, validated for form (not yet for truth)."""
    try:
        raw = {
            h: headers[h] for h in (HEADER_CLIENT, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
        }
    except KeyError as exc:
        raise AuthError(401, "unauthenticated", f"missing header {exc.args[0]}") from exc
    client_id = _header_int(raw[HEADER_CLIENT], HEADER_CLIENT, 1, MAX_CLIENT_ID)
    timestamp = _header_int(raw[HEADER_TIMESTAMP], HEADER_TIMESTAMP, 0, MAX_TIMESTAMP)
    nonce = raw[HEADER_NONCE]
    if len(nonce) != NONCE_HEX_CHARS or not _HEX.fullmatch(nonce):
        raise AuthError(401, "bad_auth_header", f"nonce must be {NONCE_HEX_CHARS} lowercase hex")
    text = raw[HEADER_SIGNATURE]
    if len(text) != 128 or not _HEX.fullmatch(text.lower()):
        raise AuthError(401, "bad_auth_header", "signature must be 64 bytes (hex)")
    return SignedRequest(client_id, timestamp, nonce, bytes.fromhex(text))


@dataclass(frozen=True)
class PendingRequest:
    """A request whose headers passed every check that needs no body."""

    request: SignedRequest
    public_key: bytes


def check_headers(
    db: dbm.Database,
    headers: dict[str, str],
    *,
    clock_skew_s: float,
    now: float | None = None,
) -> PendingRequest:
    """Everything about a signed request that its headers alone decide, before any body is read.

    The header form (client id and timestamp in range, nonce and signature
    format), the timestamp window, and that the client is enrolled and active.

    Raises:
        AuthError: 401 for a missing or malformed header, a stale timestamp, or
            an unknown or revoked client.
        secagg.db.DatabaseUnavailable: the database failed transiently on
            every attempt (``Database.run``).
    """
    req = parse_headers(headers)
    current = time.time() if now is None else now
    if abs(current - req.timestamp) > clock_skew_s:
        raise AuthError(
            401,
            "stale_request",
            f"request time {req.timestamp} is more than {clock_skew_s:.0f} s from server time",
        )

    def lookup(s: Session) -> PendingRequest:
        client = s.get(dbm.Client, req.client_id)
        if client is None or client.status is not dbm.ClientStatus.ACTIVE:
            raise AuthError(401, "unknown_client", f"client {req.client_id} is not enrolled")
        return PendingRequest(req, client.public_key)

    # A read: retrying it after any transient failure is safe.
    return db.run(lookup, idempotent=True, what="authentication lookup")


def verify_body(
    db: dbm.Database,
    pending: PendingRequest,
    method: str,
    path: str,
    body: bytes | memoryview,
    body_sha256: bytes | None = None,
) -> int:
    """Verify the signature (which covers the body's hash) and remember the nonce.

    ``body_sha256``: the body's SHA-256 when it was computed as the body arrived.

    Raises:
        AuthError: 401 for an invalid signature, a replayed nonce, or a client
            revoked since :func:`check_headers`.
        secagg.db.DatabaseUnavailable: the database failed transiently (see
            ``accept`` below for when the nonce write is retried).
    """
    req = pending.request
    if not verify_request(
        pending.public_key,
        req.signature,
        req.client_id,
        method,
        path,
        req.timestamp,
        req.nonce,
        body,
        body_sha256=body_sha256,
    ):
        raise AuthError(401, "bad_signature", "request signature does not verify")

    def accept(s: Session) -> int:
        client = s.get(dbm.Client, req.client_id)
        if client is None or client.status is not dbm.ClientStatus.ACTIVE:
            raise AuthError(401, "unknown_client", f"client {req.client_id} is not enrolled")
        if not dbm.record_nonce(s, req.client_id, req.nonce, dbm.utcnow()):
            raise AuthError(401, "replayed_request", "this request nonce was already used")
        client.last_seen_at = dbm.utcnow()
        return req.client_id

    # Not idempotent: a commit cut by a dropped connection may have recorded the
    # nonce, and a retry would then refuse the client's own request as a replay.
    # So it is retried only when a statement failed before the commit (the
    # database rolled it back); a cut commit is a 503, and the client re-sends
    # the request signed with a fresh nonce. Either way a nonce is accepted at
    # most once: the insert is atomic (record_nonce) and only a commit makes it so.
    return db.run(accept, idempotent=False, what="request nonce")


def authenticate(
    db: dbm.Database,
    headers: dict[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    clock_skew_s: float,
    now: float | None = None,
) -> int:
    """Verify a signed request and remember its nonce; return the client id.

    :func:`check_headers` then :func:`verify_body`; a server reading the body
    from the network calls the two apart, so it reads no body for a request
    whose headers already fail.

    Raises:
        AuthError: 401 for a missing/malformed/invalid signature, an unknown or
            revoked client, a stale timestamp or a replayed nonce.
    """
    pending = check_headers(db, headers, clock_skew_s=clock_skew_s, now=now)
    return verify_body(db, pending, method, path, body)


def purge_stale_nonces(db: dbm.Database, clock_skew_s: float, now: float | None = None) -> int:
    """Forget nonces that can no longer be replayed; return how many.

    A request is refused unless its timestamp is within ``clock_skew_s`` of
    the server's time, and a nonce is recorded when its request is accepted,
    so a nonce seen more than ``2 * clock_skew_s`` ago belongs to a request
    whose timestamp is outside the window now: replaying it fails as stale.
    """
    current = time.time() if now is None else now
    cutoff = datetime.fromtimestamp(current - 2 * clock_skew_s, UTC)
    return dbm.purge_nonces(db, cutoff)


def create_enrolment_token(
    db: dbm.Database, label: str = "", ttl_s: float = 86400.0
) -> tuple[str, dbm.EnrolmentToken]:
    """A fresh one-time token; only its hash is stored."""
    token = "sa1_" + secrets.token_urlsafe(24)
    with db.session() as s:
        now = dbm.utcnow()
        row = dbm.EnrolmentToken(
            token_hash=dbm.hash_token(token),
            label=label,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
        s.add(row)
    return token, row


def enrol(db: dbm.Database, token: str, public_key: bytes, name: str) -> int:
    """Consume a token and register ``public_key``; return the new client id.

    The token is claimed with one conditional UPDATE (atomic on every
    backend, SQLite included), and the new id is the next free one; two
    enrolments racing for the same id make one retry.

    Raises:
        AuthError: 403 for an unknown, used or expired token; 409 if the key
            is already enrolled; 400 for a malformed key.
    """
    if len(public_key) != 32:
        raise AuthError(400, "bad_public_key", "public key must be 32 bytes (Ed25519)")
    if not ed25519_is_valid_public(public_key):
        # secagg-v1.md §6.6: such a key verifies nothing under the strict rules,
        # so an identity enrolled with it could never sign a request or a round.
        raise AuthError(
            400,
            "bad_public_key",
            "public key is a non-canonical or small-order Ed25519 encoding",
        )
    token_hash = dbm.hash_token(token)
    for _ in range(50):
        try:
            with db.session() as s:
                now = dbm.utcnow()
                claimed = s.execute(
                    update(dbm.EnrolmentToken)
                    .where(
                        dbm.EnrolmentToken.token_hash == token_hash,
                        dbm.EnrolmentToken.used_at.is_(None),
                        dbm.EnrolmentToken.expires_at > now,
                    )
                    .values(used_at=now)
                )
                if cast(CursorResult[Any], claimed).rowcount != 1:
                    row = s.scalars(
                        select(dbm.EnrolmentToken).where(
                            dbm.EnrolmentToken.token_hash == token_hash
                        )
                    ).first()
                    if row is None:
                        raise AuthError(403, "unknown_token", "enrolment token is not valid")
                    if row.used_at is not None:
                        raise AuthError(403, "token_used", "enrolment token was already used")
                    raise AuthError(403, "token_expired", "enrolment token has expired")
                if (
                    s.scalars(
                        select(dbm.Client.id).where(dbm.Client.public_key == public_key)
                    ).first()
                    is not None
                ):
                    raise AuthError(409, "key_enrolled", "this public key is already enrolled")
                next_id = (s.scalar(select(func.max(dbm.Client.id))) or 0) + 1
                s.add(
                    dbm.Client(
                        id=next_id,
                        name=name[:200] or f"client-{next_id}",
                        public_key=public_key,
                        status=dbm.ClientStatus.ACTIVE,
                    )
                )
                s.flush()
                s.execute(
                    update(dbm.EnrolmentToken)
                    .where(dbm.EnrolmentToken.token_hash == token_hash)
                    .values(client_id=next_id)
                )
            return next_id
        except DbIntegrityError:
            continue  # another enrolment took this id (or key): the claim rolled back; retry
    raise AuthError(409, "enrolment_conflict", "could not allocate a client id; try again")


def check_admin(authorization: str | None, admin_token: str) -> None:
    """Constant-time check of ``Authorization: Bearer <admin token>``."""
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthError(401, "admin_required", "admin endpoints need 'Authorization: Bearer ...'")
    if not hmac.compare_digest(authorization[7:].encode(), admin_token.encode()):
        raise AuthError(403, "bad_admin_token", "admin credential is not valid")

"""Identity certificates and rosters signed by a task authority (``specs/authority-v1.md``).

The task authority is an Ed25519 key kept away from the aggregation server
(the project administrator's offline key). It certifies which identity key
belongs to which client id, for a *scope* (a task or a cohort). Clients pin
the authority's public key at enrolment; in an active-mode session every
client checks, before it sends anything, that the roster the server relays
is signed by the pinned authority, is for the expected scope, is valid now,
and names every participant of the session with exactly the identity key
the session configuration carries. So a server can neither invent a
participant nor substitute a client's identity key (and hence, through the
signed round-0 adverts, its X25519 keys).

Formats are canonical CBOR arrays (``protocol._cbor``); signatures are
strict Ed25519 (secagg-v1.md §6.6) over
``"secagg-v1" 0x00 purpose 0x00 || CBOR(body)``. Decoders refuse anything
but the canonical encoding of a well-formed value and raise
:class:`CertificationError` naming the fault. Time is an input (``now``,
Unix seconds): this module reads no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from protocol import _cbor
from protocol.config import Mode, SessionConfig
from protocol.crypto import (
    PROTOCOL_LABEL,
    ed25519_is_valid_public,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    sha256,
)
from protocol.errors import DecodeError, SecAggError

CERTIFICATE_FORMAT = "secagg-identity-certificate-v1"
ROSTER_FORMAT = "secagg-roster-v1"
LABEL_CERTIFICATE = b"identity-certificate"
LABEL_ROSTER = b"roster"
MAX_SCOPE_LENGTH = 128
MAX_ROSTER_ENTRIES = 1 << 17
MAX_TIME = (1 << 64) - 1
MAX_SERIAL = (1 << 64) - 1
MAX_CLIENT_ID = (1 << 32) - 1
# Every field at its largest encoding: header fields, then 44 bytes per entry.
MAX_CERTIFICATE_SIZE = 512
MAX_ROSTER_SIZE = 512 + 44 * MAX_ROSTER_ENTRIES
_KEY = 32
_SIG = 64
# Field names of the CBOR arrays, in order (authority-v1.md §4).
CERTIFICATE_FIELDS = (
    "format",
    "authority-key",
    "client-id",
    "identity-key",
    "scope",
    "not-before",
    "not-after",
    "signature",
)
ROSTER_FIELDS = (
    "format",
    "authority-key",
    "scope",
    "serial",
    "not-before",
    "not-after",
    "entries",
    "signature",
)


class CertificationFault(StrEnum):
    """What made a certificate or roster unacceptable (authority-v1.md §5)."""

    MALFORMED = "malformed"
    UNSORTED = "unsorted"
    DUPLICATE_ID = "duplicate_id"
    DUPLICATE_KEY = "duplicate_key"
    WRONG_AUTHORITY = "wrong_authority"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SCOPE = "wrong_scope"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    STALE_SERIAL = "stale_serial"
    NOT_ACTIVE = "not_active"
    MISSING_ROSTER = "missing_roster"
    PARTICIPANT_MISSING = "participant_missing"
    KEY_MISMATCH = "key_mismatch"
    OWN_KEY_MISMATCH = "own_key_mismatch"


class CertificationError(SecAggError):
    """A certificate or roster failed a check; ``fault`` names which."""

    def __init__(self, fault: CertificationFault, detail: str) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault
        self.detail = detail


def _fail(fault: CertificationFault, detail: str) -> CertificationError:
    return CertificationError(fault, detail)


@dataclass(frozen=True)
class PinnedAuthority:
    """What a client trusts and expects: the pinned key, the scope, the current time.

    Attributes:
        public_key: the authority's raw Ed25519 public key, pinned at enrolment.
        scope: the scope the roster must be for (e.g. ``task_scope(task_id)``).
        now: the current time in Unix seconds (the protocol reads no clock).
        min_serial: the highest roster serial this client already accepted for
            this authority and scope (0: none); an older roster, which may still
            certify a key the authority has since replaced, is refused.
    """

    public_key: bytes
    scope: str
    now: int
    min_serial: int = 0

    def __post_init__(self) -> None:
        if not ed25519_is_valid_public(self.public_key):
            raise ValueError("the pinned authority key is not a valid Ed25519 public key")
        _check_scope(self.scope)
        _check_uint(self.now, MAX_TIME, "now")
        _check_uint(self.min_serial, MAX_SERIAL, "min_serial")


def task_scope(task_id: int) -> str:
    """The scope string of the roster of one task: ``"task/<id>"``."""
    return f"task/{task_id}"


def authority_key_id(public_key: bytes) -> str:
    """A short printable name of an authority key: the first 8 bytes of SHA-256, in hex."""
    return sha256(public_key)[:8].hex()


def signing_input(purpose: bytes, body: bytes) -> bytes:
    """``"secagg-v1" 0x00 purpose 0x00 || body``: what the authority signs."""
    return PROTOCOL_LABEL + b"\x00" + purpose + b"\x00" + body


# -- field validation -----------------------------------------------------------


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_uint(value: Any, bound: int, what: str) -> None:
    if not _is_uint(value) or value > bound:
        raise _fail(CertificationFault.MALFORMED, f"{what} must be an integer in [0, {bound}]")


def _check_scope(scope: Any) -> None:
    # Printable ASCII without spaces: no look-alike scopes, no normalisation issues.
    if (
        not isinstance(scope, str)
        or not 1 <= len(scope) <= MAX_SCOPE_LENGTH
        or any(not 0x21 <= ord(c) <= 0x7E for c in scope)
    ):
        raise _fail(
            CertificationFault.MALFORMED,
            f"scope must be 1..{MAX_SCOPE_LENGTH} printable ASCII characters without spaces",
        )


def _check_key(key: Any, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != _KEY or not ed25519_is_valid_public(key):
        raise _fail(
            CertificationFault.MALFORMED,
            f"{what} must be a canonical Ed25519 public key not of small order",
        )


def _check_client_id(client_id: Any) -> None:
    if not _is_uint(client_id) or not 1 <= client_id <= MAX_CLIENT_ID:
        raise _fail(CertificationFault.MALFORMED, f"client ids lie in [1, {MAX_CLIENT_ID}]")


def _check_window(not_before: Any, not_after: Any) -> None:
    _check_uint(not_before, MAX_TIME, "not-before")
    _check_uint(not_after, MAX_TIME, "not-after")
    if not_before >= not_after:
        raise _fail(CertificationFault.MALFORMED, "not-before must precede not-after")


def _check_signature_field(signature: Any) -> None:
    if not isinstance(signature, bytes) or len(signature) not in (0, _SIG):
        raise _fail(CertificationFault.MALFORMED, "a signature is 64 bytes")


def _check_time(not_before: int, not_after: int, now: int) -> None:
    if now < not_before:
        raise _fail(CertificationFault.NOT_YET_VALID, f"valid from {not_before}, now is {now}")
    if now >= not_after:
        raise _fail(CertificationFault.EXPIRED, f"valid until {not_after}, now is {now}")


def _load(data: Any, limit: int, what: str, fields: int) -> list[Any]:
    if not isinstance(data, bytes):
        raise _fail(CertificationFault.MALFORMED, f"a {what} is bytes")
    if len(data) > limit:
        raise _fail(CertificationFault.MALFORMED, f"a {what} is at most {limit} bytes")
    try:
        value = _cbor.loads(data)
    except DecodeError as exc:
        raise _fail(CertificationFault.MALFORMED, f"{what}: {exc.detail}") from exc
    if not isinstance(value, list) or len(value) != fields:
        raise _fail(CertificationFault.MALFORMED, f"a {what} is an array of {fields} items")
    return value


# -- identity certificate ---------------------------------------------------------


@dataclass(frozen=True)
class IdentityCertificate:
    """The authority's statement "client ``client_id`` holds ``identity_key`` in ``scope``".

    ``signature`` is empty only for a certificate being built; :meth:`encode`
    requires it.
    """

    authority_key: bytes
    client_id: int
    identity_key: bytes
    scope: str
    not_before: int
    not_after: int
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_key(self.authority_key, "authority key")
        _check_client_id(self.client_id)
        _check_key(self.identity_key, "identity key")
        _check_scope(self.scope)
        _check_window(self.not_before, self.not_after)
        _check_signature_field(self.signature)

    def _fields(self) -> list[Any]:
        return [
            CERTIFICATE_FORMAT,
            self.authority_key,
            self.client_id,
            self.identity_key,
            self.scope,
            self.not_before,
            self.not_after,
        ]

    def body(self) -> bytes:
        """Canonical CBOR of the signed fields (every field but the signature)."""
        return _cbor.dumps(self._fields())

    def encode(self) -> bytes:
        if len(self.signature) != _SIG:
            raise _fail(CertificationFault.MALFORMED, "the certificate is not signed")
        return _cbor.dumps([*self._fields(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> IdentityCertificate:
        """Parse a canonical encoding; raises :class:`CertificationError` (``malformed``)."""
        value = _load(data, MAX_CERTIFICATE_SIZE, "certificate", len(CERTIFICATE_FIELDS))
        fmt, authority, client_id, identity, scope, not_before, not_after, signature = value
        if fmt != CERTIFICATE_FORMAT:
            raise _fail(CertificationFault.MALFORMED, f"unknown certificate format {fmt!r}")
        if not isinstance(signature, bytes) or len(signature) != _SIG:
            raise _fail(CertificationFault.MALFORMED, "a signature is 64 bytes")
        return cls(authority, client_id, identity, scope, not_before, not_after, signature)

    def verify(self, authority_key: bytes, *, now: int, scope: str | None = None) -> None:
        """Steps 2-5 of authority-v1.md §5.1; raises :class:`CertificationError`."""
        if self.authority_key != authority_key:
            raise _fail(CertificationFault.WRONG_AUTHORITY, "issued by another authority")
        if not ed25519_verify(
            authority_key, self.signature, signing_input(LABEL_CERTIFICATE, self.body())
        ):
            raise _fail(CertificationFault.BAD_SIGNATURE, "certificate signature does not verify")
        if scope is not None and self.scope != scope:
            raise _fail(CertificationFault.WRONG_SCOPE, f"for {self.scope!r}, not {scope!r}")
        _check_time(self.not_before, self.not_after, now)


def issue_certificate(
    authority_secret: bytes,
    client_id: int,
    identity_key: bytes,
    scope: str,
    not_before: int,
    not_after: int,
) -> IdentityCertificate:
    """Certify ``identity_key`` as client ``client_id``'s for ``scope`` (authority side)."""
    unsigned = IdentityCertificate(
        ed25519_public_key(authority_secret), client_id, identity_key, scope, not_before, not_after
    )
    signature = ed25519_sign(authority_secret, signing_input(LABEL_CERTIFICATE, unsigned.body()))
    return IdentityCertificate(
        unsigned.authority_key, client_id, identity_key, scope, not_before, not_after, signature
    )


# -- roster -----------------------------------------------------------------------


RosterEntry = tuple[int, bytes]


def check_entries(entries: Sequence[Any]) -> None:
    """Entries: ``[client id, identity key]`` pairs, ids strictly ascending, keys distinct."""
    if not 1 <= len(entries) <= MAX_ROSTER_ENTRIES:
        raise _fail(CertificationFault.MALFORMED, f"a roster has 1..{MAX_ROSTER_ENTRIES} entries")
    previous = 0
    keys: set[bytes] = set()
    for entry in entries:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise _fail(CertificationFault.MALFORMED, "a roster entry is [client-id, key]")
        client_id, key = entry
        _check_client_id(client_id)
        _check_key(key, f"identity key of client {client_id}")
        if client_id == previous:
            raise _fail(CertificationFault.DUPLICATE_ID, f"client {client_id} appears twice")
        if client_id < previous:
            raise _fail(CertificationFault.UNSORTED, "entries are not in ascending id order")
        if key in keys:
            raise _fail(CertificationFault.DUPLICATE_KEY, f"client {client_id} shares a key")
        keys.add(key)
        previous = client_id


@dataclass(frozen=True)
class Roster:
    """The authority's signed list of (client id, identity key) for one scope.

    ``serial`` increases with each roster the authority issues, so an
    operator can tell which roster a server relays.
    """

    authority_key: bytes
    scope: str
    serial: int
    not_before: int
    not_after: int
    entries: tuple[RosterEntry, ...]
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.entries, list | tuple):
            raise _fail(CertificationFault.MALFORMED, "roster entries are an array")
        check_entries(self.entries)
        object.__setattr__(self, "entries", tuple((i, k) for i, k in self.entries))
        _check_key(self.authority_key, "authority key")
        _check_scope(self.scope)
        _check_uint(self.serial, MAX_SERIAL, "serial")
        _check_window(self.not_before, self.not_after)
        _check_signature_field(self.signature)

    def _fields(self) -> list[Any]:
        return [
            ROSTER_FORMAT,
            self.authority_key,
            self.scope,
            self.serial,
            self.not_before,
            self.not_after,
            [[i, k] for i, k in self.entries],
        ]

    def body(self) -> bytes:
        """Canonical CBOR of the signed fields (every field but the signature)."""
        return _cbor.dumps(self._fields())

    def encode(self) -> bytes:
        if len(self.signature) != _SIG:
            raise _fail(CertificationFault.MALFORMED, "the roster is not signed")
        return _cbor.dumps([*self._fields(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Roster:
        """Parse a canonical encoding (authority-v1.md §5.2 step 1)."""
        value = _load(data, MAX_ROSTER_SIZE, "roster", len(ROSTER_FIELDS))
        fmt, authority, scope, serial, not_before, not_after, entries, signature = value
        if fmt != ROSTER_FORMAT:
            raise _fail(CertificationFault.MALFORMED, f"unknown roster format {fmt!r}")
        if not isinstance(entries, list):
            raise _fail(CertificationFault.MALFORMED, "roster entries are an array")
        if not isinstance(signature, bytes) or len(signature) != _SIG:
            raise _fail(CertificationFault.MALFORMED, "a signature is 64 bytes")
        return cls(authority, scope, serial, not_before, not_after, tuple(entries), signature)

    def key_of(self, client_id: int) -> bytes | None:
        """The certified identity key of ``client_id``, or None if it is not on the roster."""
        return dict(self.entries).get(client_id)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(i for i, _ in self.entries)


def sign_roster(
    authority_secret: bytes,
    scope: str,
    serial: int,
    not_before: int,
    not_after: int,
    entries: Iterable[RosterEntry],
) -> Roster:
    """Sign a roster of ``entries`` (sorted here by client id) for ``scope`` (authority side)."""
    ordered = tuple(sorted((int(i), k) for i, k in entries))
    unsigned = Roster(
        ed25519_public_key(authority_secret), scope, serial, not_before, not_after, ordered
    )
    signature = ed25519_sign(authority_secret, signing_input(LABEL_ROSTER, unsigned.body()))
    return Roster(unsigned.authority_key, scope, serial, not_before, not_after, ordered, signature)


def verify_roster(roster: bytes | Roster, authority: PinnedAuthority) -> Roster:
    """Steps 1-5 of authority-v1.md §5.2: decode, authority, signature, scope, freshness.

    Raises:
        CertificationError: the roster fails one of the steps (``fault`` names it).
    """
    # §5.2 step 1
    parsed = Roster.decode(roster) if isinstance(roster, bytes) else roster
    # §5.2 step 2
    if parsed.authority_key != authority.public_key:
        raise _fail(
            CertificationFault.WRONG_AUTHORITY,
            f"signed by authority {authority_key_id(parsed.authority_key)}, "
            f"pinned {authority_key_id(authority.public_key)}",
        )
    # §5.2 step 3
    if not ed25519_verify(
        authority.public_key, parsed.signature, signing_input(LABEL_ROSTER, parsed.body())
    ):
        raise _fail(CertificationFault.BAD_SIGNATURE, "roster signature does not verify")
    # §5.2 step 4
    if parsed.scope != authority.scope:
        raise _fail(
            CertificationFault.WRONG_SCOPE, f"roster for {parsed.scope!r}, not {authority.scope!r}"
        )
    # §5.2 step 5
    _check_time(parsed.not_before, parsed.not_after, authority.now)
    if parsed.serial < authority.min_serial:
        raise _fail(
            CertificationFault.STALE_SERIAL,
            f"roster serial {parsed.serial} is older than {authority.min_serial}, already seen",
        )
    return parsed


def check_session_roster(
    roster: Roster, config: SessionConfig, client_id: int, own_identity_key: bytes
) -> None:
    """Steps 6-7 of authority-v1.md §5.2: the roster certifies the session's identities.

    Args:
        roster: a roster that passed :func:`verify_roster`.
        config: the active-mode session configuration the server proposes.
        client_id: the checking client.
        own_identity_key: the checking client's Ed25519 public key.

    Raises:
        CertificationError: ``own_key_mismatch``, ``participant_missing`` or
            ``key_mismatch``.
    """
    certified = dict(roster.entries)
    # §5.2 step 6
    if certified.get(client_id) != own_identity_key:
        raise _fail(
            CertificationFault.OWN_KEY_MISMATCH,
            f"the roster does not certify client {client_id}'s own identity key",
        )
    if config.mode is not Mode.ACTIVE:
        return
    # §5.2 step 7
    for participant, key in zip(config.participants, config.identity_keys, strict=True):
        expected = certified.get(participant)
        if expected is None:
            raise _fail(
                CertificationFault.PARTICIPANT_MISSING,
                f"participant {participant} is not on the roster",
            )
        if expected != key:
            raise _fail(
                CertificationFault.KEY_MISMATCH,
                f"participant {participant}'s identity key is not the certified one",
            )

"""Wire messages: one frozen dataclass per message, one canonical encoding.

Every message is a deterministic-CBOR array whose first element is the
message type (an unsigned integer) and whose second is the 32-byte session
id. Constructors validate field types and sizes; ``decode_message`` accepts
exactly the bytes ``encode()`` produces and raises :class:`DecodeError` for
anything else. The same bytes are what gets signed and what test vectors
record. ``specs/messages-v1.md`` gives every layout byte-exactly.

Round by round (C = client to server, a :class:`ClientMessage`; S = server to
client, a :class:`ServerMessage`):

* R0  C ``AdvertiseKeys``        two X25519 public keys (+ Ed25519 signature in active mode)
* R0→1 S ``KeyDirectory``        the advertised keys of the recipient's neighbours and its own
* R1  C ``ShareKeys``            self-mask seed commitment, one AEAD share ciphertext per neighbour
* R1→2 S ``ShareBundle``         the ciphertexts addressed to the recipient
* R2  C ``MaskedInput``          the masked vector, bit-packed to b bits per element
* R2→3 S ``ConsistencyRequest``  (active) the survivor set to sign
* R3  C ``ConsistencySignature`` (active) signature on the survivor set
* R→4 S ``UnmaskRequest``        survivors, dropped, (active) survivor-set signatures
* R4  C ``UnmaskResponse``       self-mask shares of survivors, mask-key shares of the dropped
* any S ``Abort``                the round is over; reason code
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from protocol import _cbor
from protocol.errors import AbortReason, DecodeError, RemoteProtocolError
from protocol.shamir import SHARE_SIZE

MAX_ID = (1 << 32) - 1
KEY_SIZE = 32
SIGNATURE_SIZE = 64
SESSION_ID_SIZE = 32
COMMITMENT_SIZE = 32
# A share ciphertext: sender(4) || recipient(4) || two shares || Poly1305 tag.
SHARE_PLAINTEXT_SIZE = 8 + 2 * SHARE_SIZE
SHARE_CIPHERTEXT_SIZE = SHARE_PLAINTEXT_SIZE + 16


class MessageType(IntEnum):
    ADVERTISE_KEYS = 0
    KEY_DIRECTORY = 1
    SHARE_KEYS = 2
    SHARE_BUNDLE = 3
    MASKED_INPUT = 4
    CONSISTENCY_REQUEST = 5
    CONSISTENCY_SIGNATURE = 6
    UNMASK_REQUEST = 7
    UNMASK_RESPONSE = 8
    ABORT = 9


# -- field validators (raise DecodeError: a bad field is a malformed message) --


def _bytes(value: object, size: int | None, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError(f"{name} must be a byte string")
    if size is not None and len(value) != size:
        raise DecodeError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def _id(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
        raise DecodeError(f"{name} must be a client id in [1, {MAX_ID}]")
    return value


def _ids(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise DecodeError(f"{name} must be an array of client ids")
    ids = tuple(_id(v, name) for v in value)
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise DecodeError(f"{name} must be strictly increasing")
    return ids


def _pairs(value: object, size: int | None, name: str) -> tuple[tuple[int, bytes], ...]:
    """An array of [id, bytes] pairs, strictly increasing by id.

    Hot on the server (one pair per neighbour per message): the checks are
    inlined, and the helpers only run to name what is wrong.
    """
    if not isinstance(value, list | tuple):
        raise DecodeError(f"{name} must be an array of [id, bytes] pairs")
    out: list[tuple[int, bytes]] = []
    previous = 0
    for item in value:
        if type(item) not in (list, tuple) or len(item) != 2:
            raise DecodeError(f"{name} entries must be [id, bytes] pairs")
        ident, data = item
        if type(ident) is not int or not previous < ident <= MAX_ID:
            _id(ident, f"{name} id")
            raise DecodeError(f"{name} must be strictly increasing by id")
        if type(data) is not bytes or (size is not None and len(data) != size):
            _bytes(data, size, f"{name} value")
        out.append((ident, data))
        previous = ident
    return tuple(out)


def _signature(value: object, name: str) -> bytes:
    sig = _bytes(value, None, name)
    if len(sig) not in (0, SIGNATURE_SIZE):
        raise DecodeError(f"{name} must be empty or {SIGNATURE_SIZE} bytes")
    return sig


@dataclass(frozen=True)
class Message:
    """Base: every message names its session."""

    TYPE: ClassVar[MessageType]
    session_id: bytes

    def __post_init__(self) -> None:
        _bytes(self.session_id, SESSION_ID_SIZE, "session_id")

    def body(self) -> list[object]:
        raise NotImplementedError

    def encode(self) -> bytes:
        """Canonical CBOR: ``[type, session_id, *body]``."""
        return _cbor.dumps([int(self.TYPE), self.session_id, *self.body()])


# Which way a message goes is a fact of its class, so that a handler's signature
# says which direction it reads and mypy checks it. The bases add no field and
# no behaviour: the wire format is the one of ``Message``.


class ClientMessage(Message):
    """A client-to-server message: every one names its ``sender``."""

    if TYPE_CHECKING:
        # Declared for the type checker only: a real property here would shadow
        # the dataclass field ``sender`` of the subclasses.
        @property
        def sender(self) -> int: ...


class ServerMessage(Message):
    """A server-to-client message: ``Abort`` or one addressed to a ``recipient``."""


@dataclass(frozen=True)
class AdvertisedKeys:
    """One client's round-0 contribution, as relayed inside a KeyDirectory."""

    sender: int
    cipher_public_key: bytes
    mask_public_key: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _id(self.sender, "sender")
        _bytes(self.cipher_public_key, KEY_SIZE, "cipher_public_key")
        _bytes(self.mask_public_key, KEY_SIZE, "mask_public_key")
        _signature(self.signature, "signature")

    def to_list(self) -> list[object]:
        return [self.sender, self.cipher_public_key, self.mask_public_key, self.signature]

    @classmethod
    def from_list(cls, value: object) -> AdvertisedKeys:
        if not isinstance(value, list | tuple) or len(value) != 4:
            raise DecodeError("advertised keys must be [sender, c_pk, s_pk, signature]")
        return cls(value[0], value[1], value[2], value[3])


@dataclass(frozen=True)
class AdvertiseKeys(ClientMessage):
    TYPE = MessageType.ADVERTISE_KEYS
    keys: AdvertisedKeys

    @property
    def sender(self) -> int:
        return self.keys.sender

    def body(self) -> list[object]:
        return self.keys.to_list()

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> AdvertiseKeys:
        return cls(session_id, AdvertisedKeys.from_list(fields))


@dataclass(frozen=True)
class KeyDirectory(ServerMessage):
    TYPE = MessageType.KEY_DIRECTORY
    recipient: int
    entries: tuple[AdvertisedKeys, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.recipient, "recipient")
        if not isinstance(self.entries, list | tuple) or not all(
            isinstance(e, AdvertisedKeys) for e in self.entries
        ):
            raise DecodeError("key directory entries must be AdvertisedKeys")
        object.__setattr__(self, "entries", tuple(self.entries))
        ids = [e.sender for e in self.entries]
        if any(a >= b for a, b in itertools.pairwise(ids)):
            raise DecodeError("key directory entries must be strictly increasing by sender")

    def body(self) -> list[object]:
        return [self.recipient, [e.to_list() for e in self.entries]]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> KeyDirectory:
        recipient, entries = fields
        if not isinstance(entries, list):
            raise DecodeError("key directory entries must be an array")
        return cls(session_id, recipient, tuple(AdvertisedKeys.from_list(e) for e in entries))


@dataclass(frozen=True)
class ShareKeys(ClientMessage):
    TYPE = MessageType.SHARE_KEYS
    sender: int
    self_mask_commitment: bytes  # SHA-256 commitment to the self-mask seed
    ciphertexts: tuple[tuple[int, bytes], ...]  # (recipient, ciphertext)

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.sender, "sender")
        _bytes(self.self_mask_commitment, COMMITMENT_SIZE, "self_mask_commitment")
        object.__setattr__(
            self, "ciphertexts", _pairs(self.ciphertexts, SHARE_CIPHERTEXT_SIZE, "ciphertexts")
        )

    def body(self) -> list[object]:
        return [self.sender, self.self_mask_commitment, [list(p) for p in self.ciphertexts]]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> ShareKeys:
        sender, commitment, cts = fields
        return cls(session_id, sender, commitment, cts)


@dataclass(frozen=True)
class ShareBundle(ServerMessage):
    TYPE = MessageType.SHARE_BUNDLE
    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...]  # (sender, ciphertext)

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.recipient, "recipient")
        object.__setattr__(
            self, "ciphertexts", _pairs(self.ciphertexts, SHARE_CIPHERTEXT_SIZE, "ciphertexts")
        )

    def body(self) -> list[object]:
        return [self.recipient, [list(p) for p in self.ciphertexts]]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> ShareBundle:
        recipient, cts = fields
        return cls(session_id, recipient, cts)


@dataclass(frozen=True)
class MaskedInput(ClientMessage):
    TYPE = MessageType.MASKED_INPUT
    sender: int
    # Bit-packed, b bits per element; the length is checked against the config.
    # A decoded message holds a read-only view of the received bytes (no copy).
    masked: bytes | memoryview

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.sender, "sender")
        if isinstance(self.masked, memoryview):
            if self.masked.format != "B" or not self.masked.c_contiguous:
                raise DecodeError("masked must be a contiguous byte buffer")
        else:
            _bytes(self.masked, None, "masked")

    def body(self) -> list[object]:
        return [self.sender, self.masked]

    def encode(self) -> bytes:
        # Same bytes as the generic path, without copying the vector twice.
        return _cbor.dumps_subset([int(self.TYPE), self.session_id, *self.body()])

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> MaskedInput:
        sender, masked = fields
        return cls(session_id, sender, masked)


@dataclass(frozen=True)
class ConsistencyRequest(ServerMessage):
    TYPE = MessageType.CONSISTENCY_REQUEST
    recipient: int
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.recipient, "recipient")
        object.__setattr__(self, "survivors", _ids(self.survivors, "survivors"))

    def body(self) -> list[object]:
        return [self.recipient, list(self.survivors)]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> ConsistencyRequest:
        recipient, survivors = fields
        return cls(session_id, recipient, survivors)


@dataclass(frozen=True)
class ConsistencySignature(ClientMessage):
    TYPE = MessageType.CONSISTENCY_SIGNATURE
    sender: int
    signature: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.sender, "sender")
        _bytes(self.signature, SIGNATURE_SIZE, "signature")

    def body(self) -> list[object]:
        return [self.sender, self.signature]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> ConsistencySignature:
        sender, signature = fields
        return cls(session_id, sender, signature)


@dataclass(frozen=True)
class UnmaskRequest(ServerMessage):
    TYPE = MessageType.UNMASK_REQUEST
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()  # (signer, signature) - active mode

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.recipient, "recipient")
        object.__setattr__(self, "survivors", _ids(self.survivors, "survivors"))
        object.__setattr__(self, "dropped", _ids(self.dropped, "dropped"))
        object.__setattr__(
            self, "signatures", _pairs(self.signatures, SIGNATURE_SIZE, "signatures")
        )

    def body(self) -> list[object]:
        return [
            self.recipient,
            list(self.survivors),
            list(self.dropped),
            [list(p) for p in self.signatures],
        ]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> UnmaskRequest:
        recipient, survivors, dropped, signatures = fields
        return cls(session_id, recipient, survivors, dropped, signatures)


@dataclass(frozen=True)
class UnmaskResponse(ClientMessage):
    TYPE = MessageType.UNMASK_RESPONSE
    sender: int
    self_mask_shares: tuple[tuple[int, bytes], ...]  # (survivor, share of its self-mask seed)
    mask_key_shares: tuple[tuple[int, bytes], ...]  # (dropped, share of its mask secret key)

    def __post_init__(self) -> None:
        super().__post_init__()
        _id(self.sender, "sender")
        object.__setattr__(
            self, "self_mask_shares", _pairs(self.self_mask_shares, SHARE_SIZE, "self_mask_shares")
        )
        object.__setattr__(
            self, "mask_key_shares", _pairs(self.mask_key_shares, SHARE_SIZE, "mask_key_shares")
        )

    def body(self) -> list[object]:
        return [
            self.sender,
            [list(p) for p in self.self_mask_shares],
            [list(p) for p in self.mask_key_shares],
        ]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> UnmaskResponse:
        sender, self_shares, key_shares = fields
        return cls(session_id, sender, self_shares, key_shares)


@dataclass(frozen=True)
class Abort(ServerMessage):
    TYPE = MessageType.ABORT
    reason: AbortReason

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reason, AbortReason):
            raise DecodeError("abort reason must be an AbortReason")

    def body(self) -> list[object]:
        return [self.reason.value]

    @classmethod
    def from_fields(cls, session_id: bytes, fields: list[Any]) -> Abort:
        (reason,) = fields
        if not isinstance(reason, str):
            raise DecodeError("abort reason must be a text string")
        try:
            return cls(session_id, AbortReason(reason))
        except ValueError as exc:
            raise DecodeError(f"unknown abort reason {reason!r}") from exc


ServerRequest = KeyDirectory | ShareBundle | ConsistencyRequest | UnmaskRequest
"""The server messages addressed to one ``recipient`` (every one but ``Abort``)."""


# -- server broadcasts --------------------------------------------------------
#
# The server sends one message per client per round, and most of each message
# is shared (a survivor list, relayed keys, ciphertexts). These encoders
# splice pre-encoded parts and produce exactly the bytes that constructing
# each message and calling ``encode()`` would (deterministic CBOR arrays are
# the concatenation of their items); tests check the equality. They save the
# server O(n^2) validation and encoding work on survivor lists.


def _prefix(msg_type: MessageType, session_id: bytes, body_fields: int) -> bytes:
    return (
        _cbor.array_head(2 + body_fields)
        + _cbor.uint(int(msg_type))
        + _cbor.bytes_head(len(session_id))
        + session_id
    )


def _pair(ident: int, value: bytes) -> bytes:
    return _cbor.array_head(2) + _cbor.uint(ident) + _cbor.bytes_head(len(value)) + value


def encode_key_directories(
    session_id: bytes,
    adverts: Mapping[int, AdvertisedKeys],
    members: Mapping[int, Sequence[int]],
) -> dict[int, bytes]:
    """``KeyDirectory`` per recipient: ``members[u]`` lists the senders, ascending."""
    _bytes(session_id, SESSION_ID_SIZE, "session_id")
    encoded = {v: _cbor.dumps(a.to_list()) for v, a in adverts.items()}
    prefix = _prefix(MessageType.KEY_DIRECTORY, session_id, 2)
    out: dict[int, bytes] = {}
    for u, senders in members.items():
        _check_increasing(senders, "key directory entries")
        out[u] = b"".join(
            [prefix, _cbor.uint(_id(u, "recipient")), _cbor.array_head(len(senders))]
            + [encoded[v] for v in senders]
        )
    return out


def encode_share_bundles(
    session_id: bytes,
    ciphertexts: Mapping[int, Mapping[int, bytes]],
    members: Mapping[int, Sequence[int]],
) -> dict[int, bytes]:
    """``ShareBundle`` per recipient v: ``ciphertexts[u][v]`` for u in ``members[v]``."""
    _bytes(session_id, SESSION_ID_SIZE, "session_id")
    prefix = _prefix(MessageType.SHARE_BUNDLE, session_id, 2)
    out: dict[int, bytes] = {}
    for v, senders in members.items():
        _check_increasing(senders, "share bundle senders")
        out[v] = b"".join(
            [prefix, _cbor.uint(_id(v, "recipient")), _cbor.array_head(len(senders))]
            + [
                _pair(u, _bytes(ciphertexts[u][v], SHARE_CIPHERTEXT_SIZE, "ciphertext"))
                for u in senders
            ]
        )
    return out


def encode_consistency_requests(
    session_id: bytes, recipients: Iterable[int], survivors: Sequence[int]
) -> dict[int, bytes]:
    """``ConsistencyRequest`` per recipient, all with the same survivor set."""
    tail = _cbor.dumps(list(_ids(survivors, "survivors")))
    prefix = _prefix(MessageType.CONSISTENCY_REQUEST, session_id, 2)
    return {u: prefix + _cbor.uint(_id(u, "recipient")) + tail for u in recipients}


def encode_unmask_requests(
    session_id: bytes,
    recipients: Iterable[int],
    survivors: Sequence[int],
    dropped: Sequence[int],
    signatures: Mapping[int, Sequence[tuple[int, bytes]]] | None = None,
) -> dict[int, bytes]:
    """``UnmaskRequest`` per recipient u, with ``signatures[u]`` (active mode) or none."""
    _bytes(session_id, SESSION_ID_SIZE, "session_id")
    middle = _cbor.dumps(list(_ids(survivors, "survivors"))) + _cbor.dumps(
        list(_ids(dropped, "dropped"))
    )
    prefix = _prefix(MessageType.UNMASK_REQUEST, session_id, 4)
    out: dict[int, bytes] = {}
    for u in recipients:
        sigs = _pairs(signatures[u] if signatures else (), SIGNATURE_SIZE, "signatures")
        out[u] = b"".join(
            [prefix, _cbor.uint(_id(u, "recipient")), middle, _cbor.array_head(len(sigs))]
            + [_pair(v, sig) for v, sig in sigs]
        )
    return out


def _check_increasing(ids: Sequence[int], name: str) -> None:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise DecodeError(f"{name} must be strictly increasing")


_BODY_LENGTHS: dict[MessageType, tuple[type[Message], int]] = {
    MessageType.ADVERTISE_KEYS: (AdvertiseKeys, 4),
    MessageType.KEY_DIRECTORY: (KeyDirectory, 2),
    MessageType.SHARE_KEYS: (ShareKeys, 3),
    MessageType.SHARE_BUNDLE: (ShareBundle, 2),
    MessageType.MASKED_INPUT: (MaskedInput, 2),
    MessageType.CONSISTENCY_REQUEST: (ConsistencyRequest, 2),
    MessageType.CONSISTENCY_SIGNATURE: (ConsistencySignature, 2),
    MessageType.UNMASK_REQUEST: (UnmaskRequest, 4),
    MessageType.UNMASK_RESPONSE: (UnmaskResponse, 3),
    MessageType.ABORT: (Abort, 1),
}

M = TypeVar("M", bound=Message)


# The head of every MaskedInput: an array of 4 items whose first is type 4.
_MASKED_INPUT_PREFIX = bytes((0x84, int(MessageType.MASKED_INPUT)))


def decode_message(data: bytes | memoryview) -> Message:
    """Decode canonical bytes into a message; :class:`DecodeError` for anything else.

    ``data`` may also be a read-only byte ``memoryview`` (e.g. of a spooled
    request body); a masked input's vector is then a view of it, not a copy.
    """
    if isinstance(data, bytes | memoryview) and data[:2] == _MASKED_INPUT_PREFIX:
        # [4, session_id, sender, masked]: five items, one large byte string (no copy).
        value = _cbor.loads_subset(data, views=True, max_items=5)
    else:
        value = _cbor.loads(data)
    if not isinstance(value, list) or len(value) < 2:
        raise DecodeError("a message is an array [type, session_id, ...]")
    tag, session_id = value[0], value[1]
    if (
        not isinstance(tag, int)
        or isinstance(tag, bool)
        or tag not in MessageType._value2member_map_
    ):
        raise DecodeError(f"unknown message type {tag!r}")
    cls, length = _BODY_LENGTHS[MessageType(tag)]
    if len(value) - 2 != length:
        raise DecodeError(f"{cls.__name__} has {length} body fields, got {len(value) - 2}")
    fields = value[2:]
    session = _bytes(session_id, SESSION_ID_SIZE, "session_id")
    return cls.from_fields(session, fields)  # type: ignore[attr-defined, no-any-return]


def decode_as(data: bytes, cls: type[M]) -> M:
    """Decode and require a specific message type."""
    msg = decode_message(data)
    if not isinstance(msg, cls):
        raise DecodeError(f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg


def decode_client_message(data: bytes) -> ClientMessage:
    """Decode a message a server receives; refuse a server-to-client one.

    A session applies the direction check at its place in the receive
    pipeline (specs/secagg-v1.md §12.1 server step 5); this helper is for code
    that decodes outside a session and wants the same answer.

    Raises:
        DecodeError: not a canonical message (``malformed_message``).
        RemoteProtocolError: a server-to-client message (``wrong_round``: no
            collecting state of the server accepts it, §12.1 server step 5).
    """
    msg = decode_message(data)
    if not isinstance(msg, ClientMessage):
        raise RemoteProtocolError(
            AbortReason.WRONG_ROUND, f"{msg.TYPE.name} is a server-to-client message"
        )
    return msg


def decode_server_message(data: bytes) -> ServerMessage:
    """Decode a message a client receives; refuse a client-to-server one.

    Raises:
        DecodeError: not a canonical message (``malformed_message``).
        RemoteProtocolError: a client-to-server message (``wrong_recipient``:
            it has no recipient, specs/secagg-v1.md §12.1 step 6).
    """
    msg = decode_message(data)
    if not isinstance(msg, ServerMessage):
        raise RemoteProtocolError(
            AbortReason.WRONG_RECIPIENT, f"{msg.TYPE.name} is a client-to-server message"
        )
    return msg

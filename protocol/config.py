"""Session configuration: every parameter of one secure aggregation session.

All parameters are fixed before round 0 and bound into every key
derivation through the session id, ``SHA-256("secagg-v1" 0x00 "session" 0x00
|| canonical-CBOR(config))``. A client that is handed a configuration other
than its own computes a different session id and refuses every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from protocol import _cbor
from protocol._keys import LABEL_GRAPH, LABEL_SESSION
from protocol.crypto import CIPHERSUITE, PROTOCOL_LABEL, derive_key, sha256
from protocol.errors import ConfigError, DecodeError
from protocol.graph import Graph, complete_graph, harary_graph

PROTOCOL_VERSION = "secagg-v1"
MAX_CLIENT_ID = (1 << 32) - 1
MAX_VECTOR_LENGTH = 1 << 28
# A MaskedInput frames its vector with at most 64 bytes (type, session id, sender).
MAX_PACKED_SIZE = (1 << 30) - 64


class Mode(StrEnum):
    """Adversary model the session defends against."""

    SEMI_HONEST = "semi-honest"
    ACTIVE = "active"


class GraphKind(StrEnum):
    """Who masks with whom."""

    COMPLETE = "complete"
    HARARY = "harary"


@dataclass(frozen=True)
class SessionConfig:
    """The public parameters of one session, identical for every party.

    Attributes:
        participants: client ids (1 .. 2^32-1) invited to the session, sorted.
            A client's id is also its Shamir x-coordinate.
        threshold: t, the number of shares that reconstruct a secret.
        vector_length: number of elements of the aggregated integer vector.
        bit_width: b; arithmetic is modulo 2^b (1 <= b <= 64).
        mode: semi-honest or active (signed keys and consistency check).
        graph: complete (SecAgg) or harary (SecAgg+).
        degree: neighbours per client; n-1 for the complete graph.
        nonce: 32 bytes chosen by the orchestrator to make the session unique.
        identity_keys: active mode only: each participant's Ed25519 public key,
            in the order of ``participants``.
        context: opaque application bytes bound into the session (e.g. the
            hash of the task and of its encoding parameters).
    """

    participants: tuple[int, ...]
    threshold: int
    vector_length: int
    bit_width: int
    nonce: bytes
    mode: Mode = Mode.SEMI_HONEST
    graph: GraphKind = GraphKind.COMPLETE
    degree: int = 0
    identity_keys: tuple[bytes, ...] = ()
    context: bytes = b""
    _positions: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = tuple(self.participants)
        object.__setattr__(self, "participants", parts)
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
            object.__setattr__(self, "graph", GraphKind(self.graph))
        except ValueError as exc:
            raise ConfigError(f"unknown mode or graph: {exc}") from exc
        n = len(parts)
        # §5.3 step 1
        if n < 2:
            raise ConfigError(f"a session needs at least 2 participants, got {n}")
        if any(not isinstance(p, int) or isinstance(p, bool) for p in parts):
            raise ConfigError("participant ids must be integers")
        if list(parts) != sorted(set(parts)):
            raise ConfigError("participant ids must be distinct and sorted ascending")
        if parts[0] < 1 or parts[-1] > MAX_CLIENT_ID:
            raise ConfigError(f"participant ids must lie in [1, {MAX_CLIENT_ID}]")
        # §5.3 step 2
        for name in ("threshold", "vector_length", "bit_width", "degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        # §5.3 step 3
        if self.graph is GraphKind.COMPLETE:
            if self.degree not in (0, n - 1):
                raise ConfigError(f"the complete graph on {n} clients has degree {n - 1}")
            object.__setattr__(self, "degree", n - 1)
        elif not 1 <= self.degree <= n - 1:
            raise ConfigError(f"degree must lie in [1, {n - 1}], got {self.degree}")
        elif self.degree % 2 == 1 and n % 2 == 1:
            raise ConfigError(
                f"a Harary graph of odd degree {self.degree} needs an even number of "
                f"participants, got {n}"
            )
        k = self.degree
        # §5.3 step 4
        if not 1 <= self.threshold <= k:
            raise ConfigError(f"threshold must lie in [1, degree={k}], got {self.threshold}")
        if self.mode is Mode.ACTIVE and 2 * self.threshold <= k:
            # Against an active server, two disjoint sets of t share holders
            # must not exist in one neighbourhood, or the server could tell
            # each a different survivor set and collect both secrets.
            raise ConfigError(
                f"active mode needs threshold > degree/2 = {k / 2}, got {self.threshold}"
            )
        # §5.3 step 5
        if not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            raise ConfigError(
                f"vector_length must lie in [1, {MAX_VECTOR_LENGTH}], got {self.vector_length}"
            )
        if not 1 <= self.bit_width <= 64:
            raise ConfigError(f"bit_width must lie in [1, 64], got {self.bit_width}")
        if self.packed_size > MAX_PACKED_SIZE:
            raise ConfigError(
                f"a masked vector of {self.vector_length} x {self.bit_width} bits is "
                f"{self.packed_size} bytes; the limit is {MAX_PACKED_SIZE} "
                f"(messages are at most {_cbor.MAX_MESSAGE_SIZE} bytes)"
            )
        # §5.3 step 6
        if not isinstance(self.nonce, bytes) or len(self.nonce) != 32:
            raise ConfigError("nonce must be 32 bytes")
        if not isinstance(self.context, bytes) or len(self.context) > 1024:
            raise ConfigError("context must be at most 1024 bytes")
        # §5.3 step 7
        keys = tuple(self.identity_keys)
        object.__setattr__(self, "identity_keys", keys)
        if self.mode is Mode.ACTIVE:
            if len(keys) != n or any(not isinstance(x, bytes) or len(x) != 32 for x in keys):
                raise ConfigError("active mode needs one 32-byte identity key per participant")
            if len(set(keys)) != n:
                raise ConfigError("identity keys must be distinct")
        elif keys:
            raise ConfigError("identity keys are only used in active mode")
        object.__setattr__(self, "_positions", {p: i for i, p in enumerate(parts)})

    # -- canonical form ---------------------------------------------------

    def to_cbor_value(self) -> list[object]:
        """The configuration as the CBOR array hashed into the session id."""
        return [
            PROTOCOL_VERSION,
            CIPHERSUITE,
            self.nonce,
            list(self.participants),
            self.threshold,
            self.vector_length,
            self.bit_width,
            self.mode.value,
            self.graph.value,
            self.degree,
            list(self.identity_keys),
            self.context,
        ]

    def encode(self) -> bytes:
        """Canonical CBOR bytes of the configuration."""
        return _cbor.dumps(self.to_cbor_value())

    @classmethod
    def decode(cls, data: bytes) -> SessionConfig:
        """Parse :meth:`encode` output; anything else raises :class:`DecodeError`.

        A client that receives its configuration over the network must still
        compare it with its own policy (threshold, graph, bit width) before
        taking part: decoding only proves the bytes are well formed.
        """
        value = _cbor.loads(data)
        if not isinstance(value, list) or len(value) != 12:
            raise DecodeError("a session configuration is an array of 12 fields")
        (version, suite, nonce, parts, t, length, bits, mode, graph, degree, keys, ctx) = value
        if version != PROTOCOL_VERSION or suite != CIPHERSUITE:
            raise DecodeError(f"unsupported protocol {version!r} / ciphersuite {suite!r}")
        if not isinstance(parts, list) or not isinstance(keys, list):
            raise DecodeError("participants and identity keys must be arrays")
        ints = [t, length, bits, degree, *parts]
        if any(not isinstance(x, int) or isinstance(x, bool) for x in ints):
            raise DecodeError("integer fields must be integers")
        if not isinstance(mode, str) or mode not in {m.value for m in Mode}:
            raise DecodeError(f"unknown mode {mode!r}")
        if not isinstance(graph, str) or graph not in {g.value for g in GraphKind}:
            raise DecodeError(f"unknown graph {graph!r}")
        try:
            config = cls(
                participants=tuple(parts),
                threshold=t,
                vector_length=length,
                bit_width=bits,
                nonce=nonce,
                mode=Mode(mode),
                graph=GraphKind(graph),
                degree=degree,
                identity_keys=tuple(keys),
                context=ctx,
            )
        except ConfigError as exc:
            raise DecodeError(f"invalid session configuration: {exc}") from exc
        if config.encode() != data:  # e.g. degree 0 for a complete graph
            raise DecodeError("not the canonical encoding of a session configuration")
        return config

    @cached_property
    def session_id(self) -> bytes:
        """``SHA-256("secagg-v1" 0x00 "session" 0x00 || encode())``."""
        return sha256(PROTOCOL_LABEL + b"\x00" + LABEL_SESSION + b"\x00" + self.encode())

    @cached_property
    def neighbour_graph(self) -> Graph:
        """The session's graph, recomputable by every party from public data."""
        if self.graph is GraphKind.COMPLETE:
            return complete_graph(self.participants)
        seed = derive_key(self.session_id, purpose=LABEL_GRAPH, session_id=self.session_id)
        return harary_graph(self.participants, self.degree, seed)

    # -- helpers ------------------------------------------------------------

    @property
    def num_participants(self) -> int:
        return len(self.participants)

    def is_participant(self, client: int) -> bool:
        return client in self._positions

    def identity_key(self, client: int) -> bytes:
        """The Ed25519 public key of ``client`` (active mode)."""
        return self.identity_keys[self._positions[client]]

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bit_width) - 1

    @property
    def packed_size(self) -> int:
        """Bytes of one masked vector on the wire: ceil(vector_length * b / 8)."""
        return (self.vector_length * self.bit_width + 7) // 8

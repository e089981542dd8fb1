"""secagg protocol core: Bonawitz-style secure aggregation, sans-I/O.

The public surface of the library. ``specs/secagg-v1.md`` is the normative
description; this package implements it with no sockets, threads, clocks
or files, deterministically given an injected randomness source.
"""

from protocol._state import Round
from protocol.client import ClientSession
from protocol.config import GraphKind, Mode, SessionConfig
from protocol.crypto import CIPHERSUITE, RandomSource, SystemRandom
from protocol.encoding import FixedPointEncoding, from_modular, to_modular
from protocol.errors import (
    AbortReason,
    BlameReason,
    ClientStatus,
    ConfigError,
    CryptoError,
    DecodeError,
    LocalProtocolError,
    ParameterError,
    ReconstructionFailed,
    RemoteProtocolError,
    RoundAborted,
    SecAggError,
)
from protocol.messages import Message, MessageType, decode_message
from protocol.params import AdversaryClass, GraphParameters, derive_parameters
from protocol.policy import PolicyError, SessionPolicy
from protocol.server import AggregateResult, ClientRecord, ServerSession

__all__ = [
    "CIPHERSUITE",
    "AbortReason",
    "AdversaryClass",
    "AggregateResult",
    "BlameReason",
    "ClientRecord",
    "ClientSession",
    "ClientStatus",
    "ConfigError",
    "CryptoError",
    "DecodeError",
    "FixedPointEncoding",
    "GraphKind",
    "GraphParameters",
    "LocalProtocolError",
    "Message",
    "MessageType",
    "Mode",
    "ParameterError",
    "PolicyError",
    "RandomSource",
    "ReconstructionFailed",
    "RemoteProtocolError",
    "Round",
    "RoundAborted",
    "SecAggError",
    "ServerSession",
    "SessionConfig",
    "SessionPolicy",
    "SystemRandom",
    "decode_message",
    "derive_parameters",
    "from_modular",
    "to_modular",
]

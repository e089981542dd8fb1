"""The protocol's state machines as data.

Rules this file keeps (after h11's ``_state.py``):

1. Everything that decides which message a party may accept, and which
   state follows, lives in the tables below. ``client.py`` and
   ``server.py`` consult them and never encode transitions of their own:
   their handler tables (``_HANDLERS``, ``_RECEIVERS``, ``_ADVANCERS``)
   say only what a party does once a table has let a message or an
   ``advance()`` through, and cover exactly these tables' keys
   (``tests/protocol/test_round_tables.py``).
2. Anything not in a table fails closed: a message that is not expected in
   the current state is refused with ``WRONG_ROUND`` (or, for a second
   unmasking request, ``SECOND_UNMASK_REQUEST``) and the client aborts.
3. States are named by round. Orthogonal facts (the mode, whether the
   client has sent its keys) are data on the session, not more states.
4. ``COMPLETED`` and ``ABORTED`` are terminal: nothing leaves them.
5. An ``Abort`` from the server moves a client from any non-terminal state
   to ``ABORTED`` (:func:`client_after_abort`); a ``COMPLETED`` client
   ignores it. An ``ABORTED`` client refuses every message, ``Abort``
   included, and stays ``ABORTED``.
"""

from __future__ import annotations

from enum import StrEnum

from protocol.config import Mode
from protocol.messages import MessageType


class Round(StrEnum):
    """Where a party is. A client is in round i after sending its round-i message
    (and until the server's answer moves it on); the server is in round i while it
    collects round-i messages."""

    R0_ADVERTISE_KEYS = "R0_ADVERTISE_KEYS"
    R1_SHARE_KEYS = "R1_SHARE_KEYS"
    R2_MASKED_INPUT_COLLECTION = "R2_MASKED_INPUT_COLLECTION"
    R3_CONSISTENCY_CHECK = "R3_CONSISTENCY_CHECK"
    R4_UNMASKING = "R4_UNMASKING"
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"


TERMINAL = frozenset({Round.COMPLETED, Round.ABORTED})

# Client: (state, incoming server message) -> next state, per mode.
_CLIENT_COMMON: dict[tuple[Round, MessageType], Round] = {
    (Round.R0_ADVERTISE_KEYS, MessageType.KEY_DIRECTORY): Round.R1_SHARE_KEYS,
    (Round.R1_SHARE_KEYS, MessageType.SHARE_BUNDLE): Round.R2_MASKED_INPUT_COLLECTION,
}
CLIENT_TRANSITIONS: dict[Mode, dict[tuple[Round, MessageType], Round]] = {
    Mode.SEMI_HONEST: {
        **_CLIENT_COMMON,
        (Round.R2_MASKED_INPUT_COLLECTION, MessageType.UNMASK_REQUEST): Round.COMPLETED,
    },
    Mode.ACTIVE: {
        **_CLIENT_COMMON,
        (
            Round.R2_MASKED_INPUT_COLLECTION,
            MessageType.CONSISTENCY_REQUEST,
        ): Round.R3_CONSISTENCY_CHECK,
        (Round.R3_CONSISTENCY_CHECK, MessageType.UNMASK_REQUEST): Round.COMPLETED,
    },
}

# Server: which client message each collecting state accepts ...
SERVER_ACCEPTS: dict[Round, MessageType] = {
    Round.R0_ADVERTISE_KEYS: MessageType.ADVERTISE_KEYS,
    Round.R1_SHARE_KEYS: MessageType.SHARE_KEYS,
    Round.R2_MASKED_INPUT_COLLECTION: MessageType.MASKED_INPUT,
    Round.R3_CONSISTENCY_CHECK: MessageType.CONSISTENCY_SIGNATURE,
    Round.R4_UNMASKING: MessageType.UNMASK_RESPONSE,
}

# ... and which state ``advance()`` moves it to, per mode.
SERVER_ADVANCE: dict[Mode, dict[Round, Round]] = {
    Mode.SEMI_HONEST: {
        Round.R0_ADVERTISE_KEYS: Round.R1_SHARE_KEYS,
        Round.R1_SHARE_KEYS: Round.R2_MASKED_INPUT_COLLECTION,
        Round.R2_MASKED_INPUT_COLLECTION: Round.R4_UNMASKING,
        Round.R4_UNMASKING: Round.COMPLETED,
    },
    Mode.ACTIVE: {
        Round.R0_ADVERTISE_KEYS: Round.R1_SHARE_KEYS,
        Round.R1_SHARE_KEYS: Round.R2_MASKED_INPUT_COLLECTION,
        Round.R2_MASKED_INPUT_COLLECTION: Round.R3_CONSISTENCY_CHECK,
        Round.R3_CONSISTENCY_CHECK: Round.R4_UNMASKING,
        Round.R4_UNMASKING: Round.COMPLETED,
    },
}


def client_after_abort(state: Round) -> Round:
    """Rule 5: the client state after the server's ``Abort`` message."""
    return state if state in TERMINAL else Round.ABORTED

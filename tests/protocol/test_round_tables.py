"""The per-round tables of both sessions, ``can_advance``, and message direction.

* The handler tables cover exactly the states and messages of the transition
  tables in ``_state.py``, and each handler takes the message class its key
  names (the tables type it ``Any``; this is the check).
* ``ServerSession.can_advance()`` is True exactly when ``advance()`` would
  not abort, for every round, under random dropouts and a lying share holder,
  and asking it changes nothing.
* A message travelling the wrong way is refused with the reason of §12.1,
  and the attacker who sends it gains nothing.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol import client as client_module
from protocol import server as server_module
from protocol._state import CLIENT_TRANSITIONS, SERVER_ACCEPTS, SERVER_ADVANCE, TERMINAL, Round
from protocol.client import SECRET_FIELDS
from protocol.config import GraphKind, Mode, SessionConfig
from protocol.errors import AbortReason, RemoteProtocolError
from protocol.messages import (
    _BODY_LENGTHS,
    Abort,
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    Message,
    MessageType,
    ServerMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_client_message,
    decode_message,
    decode_server_message,
)
from protocol.server import ServerSession
from protocol.shamir import FIELD_PRIME, decode_share, encode_share
from protocol.simulate import make_config
from tests.protocol.harness import Harness

# -- the tables ---------------------------------------------------------------------


def _message_param(fn: typing.Callable[..., object]) -> type[Message]:
    hints = typing.get_type_hints(fn)
    hints.pop("return", None)
    (cls,) = hints.values()
    assert isinstance(cls, type) and issubclass(cls, Message), fn
    return cls


def test_client_handlers_cover_exactly_the_client_transitions() -> None:
    accepted = {mtype for table in CLIENT_TRANSITIONS.values() for _, mtype in table}
    assert set(client_module._HANDLERS) == accepted
    for mtype, handler in client_module._HANDLERS.items():
        cls = _message_param(handler)
        assert cls.TYPE is mtype and issubclass(cls, ServerMessage), handler


def test_server_tables_cover_exactly_the_collecting_states() -> None:
    collecting = {state for table in SERVER_ADVANCE.values() for state in table}
    assert set(server_module._RECEIVERS) == set(SERVER_ACCEPTS) == collecting
    assert set(server_module._ADVANCERS) == collecting
    for state, receiver in server_module._RECEIVERS.items():
        cls = _message_param(receiver)
        assert cls.TYPE is SERVER_ACCEPTS[state] and issubclass(cls, ClientMessage), receiver


def test_every_message_has_one_direction() -> None:
    client_to_server = {
        MessageType.ADVERTISE_KEYS,
        MessageType.SHARE_KEYS,
        MessageType.MASKED_INPUT,
        MessageType.CONSISTENCY_SIGNATURE,
        MessageType.UNMASK_RESPONSE,
    }
    for mtype, (cls, _) in _BODY_LENGTHS.items():
        assert issubclass(cls, ClientMessage) != issubclass(cls, ServerMessage), cls
        assert issubclass(cls, ClientMessage) == (mtype in client_to_server), cls
    # The server accepts only client messages; clients only server messages.
    assert set(SERVER_ACCEPTS.values()) == client_to_server
    for table in CLIENT_TRANSITIONS.values():
        assert not {mtype for _, mtype in table} & client_to_server


# -- can_advance ----------------------------------------------------------------------


@st.composite
def configs(draw: st.DrawFn) -> SessionConfig:
    mode = draw(st.sampled_from([Mode.SEMI_HONEST, Mode.ACTIVE]))
    n = draw(st.integers(3, 7))
    graph = draw(st.sampled_from([GraphKind.COMPLETE, GraphKind.HARARY]))
    if graph is GraphKind.COMPLETE:
        k = n - 1
    else:
        k = draw(st.sampled_from([k for k in range(2, n) if k % 2 == 0 or n % 2 == 0]))
    lowest = k // 2 + 1 if mode is Mode.ACTIVE else 1
    t = draw(st.integers(lowest, k))
    return make_config(
        n, 4, bit_width=16, threshold=t, graph=graph, degree=k, mode=mode, seed=b"can-advance"
    )


def _corrupt_one_share(data: bytes) -> bytes:
    """A lying holder: one revealed share moved off the dealt polynomial (still < p)."""
    msg = decode_message(data)
    assert isinstance(msg, UnmaskResponse)
    field = "self_mask_shares" if msg.self_mask_shares else "mask_key_shares"
    (owner, share), *rest = getattr(msg, field)
    lie = encode_share((decode_share(share) + 1) % FIELD_PRIME)
    return dataclasses.replace(msg, **{field: ((owner, lie), *rest)}).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), data=st.data())
def test_can_advance_is_true_exactly_when_advance_does_not_abort(
    config: SessionConfig, data: st.DataObject
) -> None:
    h = Harness(config, seed=b"can-advance")
    server = h.server
    # A twin fed the same messages that is never asked: asking must change nothing.
    twin = ServerSession(config)
    liar = data.draw(st.sampled_from([None, *config.participants]), label="lying holder")
    rounds_checked = 0
    while server.round not in TERMINAL:
        pending = sorted(server.pending())
        # Often everyone or all but one or two (so later rounds are reached),
        # sometimes any subset (so every round also sees too few senders).
        everyone = set(pending)
        senders = data.draw(
            st.one_of(
                st.just(everyone),
                st.sets(st.sampled_from(pending), max_size=2).map(everyone.difference),
                st.sets(st.sampled_from(pending)),
            )
            if pending
            else st.just(everyone),
            label=f"{server.round} senders",
        )
        for u in sorted(senders):
            reply = h.replies[u]
            if server.round is Round.R4_UNMASKING and u == liar:
                reply = _corrupt_one_share(reply)
            server.receive(reply)
            twin.receive(reply)
        h.replies = {}
        state = server.round
        predicted = server.can_advance()
        assert server.can_advance() is predicted  # asking twice: same answer
        out = server.advance()
        assert out == twin.advance()
        assert (server.round, server.abort_reason, server.client_status, server.blame) == (
            twin.round,
            twin.abort_reason,
            twin.client_status,
            twin.blame,
        )
        rounds_checked += 1
        assert predicted is (server.round is not Round.ABORTED), (state, sorted(senders))
        event(f"{state.value}: {'advanced' if predicted else 'aborted'}")
        if server.round is Round.ABORTED:
            assert server.can_advance() is False
            break
        assert server.round is SERVER_ADVANCE[config.mode][state]
        h.deliver(out)
    assert rounds_checked >= 1
    if server.round is Round.COMPLETED:
        assert server.can_advance() is False
        result = server.result
        want = sum(h.inputs[u] for u in result.survivors) % (1 << config.bit_width)
        assert np.array_equal(result.aggregate, want.astype(result.aggregate.dtype))
        assert np.array_equal(result.aggregate, twin.result.aggregate)


def test_can_advance_sees_a_lying_share_holder_before_any_mask_is_removed() -> None:
    """The R4 check reconstructs and checks every secret: a lie among the first t
    holders makes can_advance False, and advance then aborts without a sum."""
    config = make_config(6, 4, bit_width=16, threshold=3, seed=b"lying-holder")
    h = Harness(config, seed=b"lying-holder")
    out = h.run_to(Round.R4_UNMASKING)
    h.deliver(out)
    h.replies[1] = _corrupt_one_share(h.replies[1])
    h.to_server()
    assert h.server.ready()
    assert h.server.can_advance() is False
    h.server.advance()
    assert h.server.abort_reason is AbortReason.RECONSTRUCTION_FAILED
    assert h.server.blamed == (1,)
    with pytest.raises(Exception, match="no result"):
        h.server.result  # noqa: B018 - the attacker (a lying holder) gets no sum


# -- message direction ------------------------------------------------------------------


def _one_of_each(config: SessionConfig) -> dict[MessageType, bytes]:
    """A valid encoding of each message type, from an honest active run."""
    h = Harness(config, seed=b"directions")
    seen: dict[MessageType, bytes] = {}

    def note(datas: typing.Iterable[bytes]) -> None:
        for data in datas:
            seen.setdefault(decode_message(data).TYPE, data)

    while h.server.round not in TERMINAL:
        note(h.replies.values())
        out = h.advance()
        note(out.values())
        h.deliver(out)
    seen[MessageType.ABORT] = Abort(config.session_id, AbortReason.CANCELLED).encode()
    assert set(seen) == set(MessageType)
    return seen


def test_decode_helpers_refuse_the_wrong_direction() -> None:
    config = make_config(4, 4, mode=Mode.ACTIVE, threshold=3, seed=b"directions")
    for mtype, data in _one_of_each(config).items():
        cls = _BODY_LENGTHS[mtype][0]
        if issubclass(cls, ClientMessage):
            assert isinstance(decode_client_message(data), cls)
            with pytest.raises(RemoteProtocolError) as caught:
                decode_server_message(data)
            assert caught.value.reason is AbortReason.WRONG_RECIPIENT
        else:
            assert isinstance(decode_server_message(data), cls)
            with pytest.raises(RemoteProtocolError) as caught:
                decode_client_message(data)
            assert caught.value.reason is AbortReason.WRONG_ROUND
    with pytest.raises(RemoteProtocolError) as caught:
        decode_client_message(b"\xff")
    assert caught.value.reason is AbortReason.MALFORMED_MESSAGE


def test_a_server_replaying_client_messages_to_a_client_learns_nothing() -> None:
    """A malicious server sends a client its own (or another client's) round-0 and
    round-1 messages instead of the server messages: the client aborts with
    wrong_recipient (§12.1 step 6), answers nothing and keeps no secret."""
    config = make_config(4, 4, threshold=3, seed=b"reflect")
    for forged in ("own advert", "peer share keys"):
        h = Harness(config, seed=b"reflect")
        out = h.advance()  # KeyDirectory for everyone, not delivered
        h.deliver({u: d for u, d in out.items() if u != 1})
        if forged == "own advert":
            data = AdvertiseKeys(config.session_id, h.clients[1]._own_keys).encode()  # type: ignore[arg-type]
        else:
            data = h.replies[2]
            assert isinstance(decode_message(data), ShareKeys)
        victim = h.clients[1]
        with pytest.raises(RemoteProtocolError) as caught:
            victim.receive(data)
        assert caught.value.reason is AbortReason.WRONG_RECIPIENT
        assert victim.round is Round.ABORTED
        assert 1 not in h.replies  # no ShareKeys: no share of its secrets left the client
        for name in SECRET_FIELDS:
            assert not getattr(victim, name), name
        # The honest server message now gets no answer either.
        with pytest.raises(RemoteProtocolError):
            victim.receive(out[1])


def test_a_client_forging_server_messages_to_the_server_changes_nothing() -> None:
    """A malicious client sends the server an UnmaskRequest or ConsistencyRequest (as
    if it could steer the round): refused with wrong_round (§12.1 server step 5), the
    session is unchanged and the honest round ends with the right sum."""
    config = make_config(4, 4, bit_width=16, threshold=3, seed=b"forged")
    h = Harness(config, seed=b"forged")
    sid = config.session_id
    forged = [
        UnmaskRequest(sid, 1, (1, 2, 3, 4), ()).encode(),
        ConsistencyRequest(sid, 1, (1, 2, 3, 4)).encode(),
        Abort(sid, AbortReason.CANCELLED).encode(),
    ]
    while h.server.round not in TERMINAL:
        for data in forged:
            pending = h.server.pending()
            with pytest.raises(RemoteProtocolError) as caught:
                h.server.receive(data)
            assert caught.value.reason is AbortReason.WRONG_ROUND
            assert h.server.pending() == pending
        out = h.advance()
        h.deliver(out)
    assert h.server.round is Round.COMPLETED
    want = sum(h.inputs[u] for u in config.participants) % (1 << 16)
    assert np.array_equal(h.server.result.aggregate, want.astype(np.uint32))
    assert h.server.result.survivors == config.participants


def test_a_message_decoded_by_the_driver_is_received_like_its_bytes() -> None:
    """``receive`` of a pre-decoded message (the service decodes off its event loop)
    runs the same checks and yields the same exact sum as ``receive`` of the bytes."""
    config = make_config(6, 32, bit_width=20)
    h = Harness(config)
    twin = ServerSession(config)
    while h.server.round not in (Round.COMPLETED, Round.ABORTED):
        for u, data in sorted(h.replies.items()):
            twin.receive(decode_client_message(data), authenticated_sender=u)
            if u == 2:  # a forged sender is refused before the session is touched
                with pytest.raises(RemoteProtocolError) as info:
                    twin.receive(decode_client_message(data), authenticated_sender=3)
                assert info.value.reason is AbortReason.WRONG_SENDER
        out = h.advance()
        assert twin.advance() == out
        h.deliver(out)
    assert twin.round is Round.COMPLETED
    assert (twin.result.aggregate == h.server.result.aggregate).all()

"""Every protocol invariant, each violated by a malicious server (or client) stand-in.

Each test names the invariant, breaks it, and checks the typed error, the
abort reason, and that the honest party revealed nothing it should not.
"""

from __future__ import annotations

import dataclasses

import pytest

from protocol import (
    AbortReason,
    ClientSession,
    GraphKind,
    LocalProtocolError,
    Mode,
    RemoteProtocolError,
    Round,
    decode_message,
)
from protocol.messages import (
    AdvertisedKeys,
    AdvertiseKeys,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.policy import SessionPolicy
from protocol.testing import make_config
from tests.protocol.harness import Harness, tamper


def _h(n: int = 6, mode: Mode = Mode.SEMI_HONEST, **kw: object) -> Harness:
    return Harness(make_config(n, 8, bit_width=16, mode=mode, **kw))  # type: ignore[arg-type]


def _expect_abort(h: Harness, u: int, data: bytes, reason: AbortReason) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        h.clients[u].receive(data)
    assert info.value.reason is reason
    assert h.clients[u].round is Round.ABORTED
    assert h.clients[u].abort_reason is reason
    # An aborted client answers nothing ever again.
    with pytest.raises(RemoteProtocolError):
        h.clients[u].receive(data)


# -- round 0 -> 1: the key directory -------------------------------------------


def test_own_keys_must_be_echoed() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    d = decode_message(out[1])
    assert isinstance(d, KeyDirectory)
    entries = list(d.entries)
    entries[0] = dataclasses.replace(entries[0], mask_public_key=b"\x09" * 32)
    _expect_abort(h, 1, tamper(out[1], entries=tuple(entries)), AbortReason.OWN_KEYS_NOT_ECHOED)
    # Missing altogether.
    d2 = decode_message(out[2])
    assert isinstance(d2, KeyDirectory)
    without_own = tuple(e for e in d2.entries if e.sender != 2)
    _expect_abort(h, 2, tamper(out[2], entries=without_own), AbortReason.OWN_KEYS_NOT_ECHOED)


def test_public_keys_must_be_unique() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    d = decode_message(out[1])
    assert isinstance(d, KeyDirectory)
    entries = list(d.entries)
    entries[3] = dataclasses.replace(entries[3], mask_public_key=entries[2].mask_public_key)
    _expect_abort(h, 1, tamper(out[1], entries=tuple(entries)), AbortReason.DUPLICATE_KEYS)


def test_server_rejects_a_reused_public_key() -> None:
    h = _h()
    first = decode_message(h.replies[1])
    assert isinstance(first, AdvertiseKeys)
    h.server.receive(h.replies[1])
    copy = AdvertiseKeys(h.config.session_id, dataclasses.replace(first.keys, sender=2))
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(copy.encode())
    assert info.value.reason is AbortReason.DUPLICATE_KEYS


def test_keys_of_non_neighbours_are_refused_in_sparse_graphs() -> None:
    config = make_config(10, 8, bit_width=16, graph=GraphKind.HARARY, degree=4, threshold=3)
    h = Harness(config)
    out = h.run_to(Round.R1_SHARE_KEYS)
    nbrs = config.neighbour_graph.neighbours(1)
    stranger = next(u for u in config.participants if u != 1 and u not in nbrs)
    other = decode_message(out[stranger])
    assert isinstance(other, KeyDirectory)
    theirs = next(e for e in other.entries if e.sender == stranger)
    mine = decode_message(out[1])
    assert isinstance(mine, KeyDirectory)
    entries = tuple(sorted([*mine.entries, theirs], key=lambda e: e.sender))
    _expect_abort(h, 1, tamper(out[1], entries=entries), AbortReason.NOT_A_NEIGHBOUR)


def test_too_few_neighbours_after_round_zero() -> None:
    h = _h(n=6, threshold=4)
    out = h.run_to(Round.R1_SHARE_KEYS)
    d = decode_message(out[1])
    assert isinstance(d, KeyDirectory)
    _expect_abort(h, 1, tamper(out[1], entries=d.entries[:4]), AbortReason.BELOW_THRESHOLD)


def test_active_mode_refuses_unsigned_or_re_signed_keys() -> None:
    h = _h(mode=Mode.ACTIVE)
    out = h.run_to(Round.R1_SHARE_KEYS)
    d = decode_message(out[1])
    assert isinstance(d, KeyDirectory)
    entries = list(d.entries)
    # The server substitutes its own key for client 3's, keeping the signature.
    entries[2] = dataclasses.replace(entries[2], cipher_public_key=b"\x05" * 32)
    _expect_abort(h, 1, tamper(out[1], entries=tuple(entries)), AbortReason.BAD_SIGNATURE)


def test_server_verifies_advertised_signatures_in_active_mode() -> None:
    h = _h(mode=Mode.ACTIVE)
    msg = decode_message(h.replies[4])
    assert isinstance(msg, AdvertiseKeys)
    forged = AdvertiseKeys(msg.session_id, dataclasses.replace(msg.keys, signature=b"\x00" * 64))
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(forged.encode())
    assert info.value.reason is AbortReason.BAD_SIGNATURE
    h.server.receive(h.replies[4])  # the genuine one is still accepted


# -- session binding, addressing, replay ---------------------------------------


def test_message_from_another_session_is_refused() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    _expect_abort(h, 1, tamper(out[1], session_id=b"\x07" * 32), AbortReason.WRONG_SESSION)


def test_server_chosen_threshold_differing_from_clients_config_is_refused() -> None:
    # The client agreed to t=4; a server running the "same" session with t=2
    # has a different session id, so its very first message is refused.
    honest = make_config(6, 8, bit_width=16, threshold=4)
    lying = make_config(6, 8, bit_width=16, threshold=2)
    h_client = Harness(honest)
    h_server = Harness(lying)
    out = h_server.run_to(Round.R1_SHARE_KEYS)
    _expect_abort(h_client, 1, out[1], AbortReason.WRONG_SESSION)


def test_message_for_another_client_is_refused() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    _expect_abort(h, 1, out[2], AbortReason.WRONG_RECIPIENT)


def test_replayed_server_message_is_refused() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    h.deliver(out)
    _expect_abort(h, 1, out[1], AbortReason.WRONG_ROUND)


def test_server_refuses_replays_wrong_round_and_strangers() -> None:
    h = _h()
    h.server.receive(h.replies[1])
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(h.replies[1])
    assert info.value.reason is AbortReason.REPLAYED_MESSAGE
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(MaskedInput(h.config.session_id, 2, b"\x00").encode())
    assert info.value.reason is AbortReason.WRONG_ROUND
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(tamper(h.replies[2], session_id=bytes(32)))
    assert info.value.reason is AbortReason.WRONG_SESSION
    stray = AdvertiseKeys(h.config.session_id, AdvertisedKeys(99, b"\x01" * 32, b"\x02" * 32))
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(stray.encode())
    assert info.value.reason is AbortReason.WRONG_SENDER


def test_server_refuses_clients_that_dropped_earlier() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS, skip={3})
    assert 3 not in out
    h.deliver(out)
    # Client 3 never got a directory; a share message claiming to be from it is refused.
    forged = ShareKeys(h.config.session_id, 3, bytes(32), ())
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(forged.encode())
    assert info.value.reason is AbortReason.WRONG_SENDER


# -- round 1 -> 2: shares --------------------------------------------------------


def test_share_ciphertexts_are_bound_to_sender_and_recipient() -> None:
    h = _h()
    out = h.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    b = decode_message(out[1])
    assert isinstance(b, ShareBundle)
    cts = list(b.ciphertexts)
    # Swap who a ciphertext claims to come from.
    (s0, c0), (s1, c1) = cts[0], cts[1]
    cts[0], cts[1] = (s0, c1), (s1, c0)
    _expect_abort(h, 1, tamper(out[1], ciphertexts=tuple(cts)), AbortReason.SHARE_DECRYPTION_FAILED)
    # A ciphertext addressed to client 3, given to client 2 as if for it.
    b3 = decode_message(out[3])
    assert isinstance(b3, ShareBundle)
    from_1_to_3 = dict(b3.ciphertexts)[1]
    b2 = decode_message(out[2])
    assert isinstance(b2, ShareBundle)
    cts2 = tuple((s, from_1_to_3 if s == 1 else c) for s, c in b2.ciphertexts)
    _expect_abort(h, 2, tamper(out[2], ciphertexts=cts2), AbortReason.SHARE_DECRYPTION_FAILED)


def test_server_refuses_shares_not_addressed_to_exactly_the_live_neighbours() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    h.deliver(out)
    msg = decode_message(h.replies[1])
    assert isinstance(msg, ShareKeys)
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(tamper(h.replies[1], ciphertexts=msg.ciphertexts[1:]))
    assert info.value.reason is AbortReason.WRONG_RECIPIENT


def test_server_refuses_masked_vector_of_wrong_length() -> None:
    h = _h()
    out = h.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    h.deliver(out)
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(tamper(h.replies[1], masked=b"\x00" * 3))
    assert info.value.reason is AbortReason.WRONG_VECTOR_LENGTH
    h.server.receive(h.replies[1])  # the genuine message still counts


# -- round 4: unmasking ------------------------------------------------------------


def _unmask_stage(mode: Mode = Mode.SEMI_HONEST) -> tuple[Harness, dict[int, bytes]]:
    h = _h(n=7, mode=mode, threshold=4)
    skip = {6}
    out = h.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    h.deliver(out)
    # Client 6 drops before sending its masked input.
    h.to_server(skip={6})
    out = h.server.advance()
    if mode is Mode.ACTIVE:
        h.deliver(out, skip)
        out = h.advance()
    assert h.server.round is Round.R4_UNMASKING
    return h, out


def test_survivors_and_dropped_must_be_disjoint() -> None:
    h, out = _unmask_stage()
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    assert req.dropped == (6,)
    both = tuple(sorted({*req.dropped, 2}))
    _expect_abort(h, 1, tamper(out[1], dropped=both), AbortReason.SURVIVORS_DROPPED_OVERLAP)


def test_second_different_unmask_request_is_refused_and_nothing_more_is_revealed() -> None:
    h, out = _unmask_stage()
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    first = decode_message(h.clients[1].receive(out[1]) or b"")
    assert isinstance(first, UnmaskResponse)
    assert [v for v, _ in first.mask_key_shares] == [6]
    assert 2 in [v for v, _ in first.self_mask_shares]
    # The server now claims client 2 dropped, to get its mask key as well.
    lie = tamper(out[1], survivors=tuple(s for s in req.survivors if s != 2), dropped=(2, 6))
    with pytest.raises(RemoteProtocolError) as info:
        h.clients[1].receive(lie)
    assert info.value.reason is AbortReason.SECOND_UNMASK_REQUEST
    assert h.clients[1].round is Round.COMPLETED
    # Even the very same request is not answered twice.
    with pytest.raises(RemoteProtocolError) as info:
        h.clients[1].receive(out[1])
    assert info.value.reason is AbortReason.SECOND_UNMASK_REQUEST


def test_neighbour_that_sent_shares_must_be_classified() -> None:
    h, out = _unmask_stage()
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    _expect_abort(h, 1, tamper(out[1], dropped=()), AbortReason.INCONSISTENT_SURVIVORS)


def test_client_must_be_among_the_survivors() -> None:
    h, out = _unmask_stage()
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    _expect_abort(
        h,
        1,
        tamper(out[1], survivors=req.survivors[1:], dropped=(1, 6)),
        AbortReason.INCONSISTENT_SURVIVORS,
    )


def test_survivor_set_below_threshold_is_refused() -> None:
    h, out = _unmask_stage()
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    # Claim that 2..5 dropped: then only 1 and 7 "survive", fewer than t=4.
    _expect_abort(
        h, 1, tamper(out[1], survivors=(1, 7), dropped=(2, 3, 4, 5, 6)), AbortReason.BELOW_THRESHOLD
    )


def test_server_refuses_shares_other_than_those_requested() -> None:
    h, out = _unmask_stage()
    h.deliver(out)
    resp = decode_message(h.replies[1])
    assert isinstance(resp, UnmaskResponse)
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(tamper(h.replies[1], mask_key_shares=()))
    assert info.value.reason is AbortReason.INCONSISTENT_SURVIVORS


def test_wrong_shares_make_reconstruction_fail_not_a_wrong_sum() -> None:
    h, out = _unmask_stage()
    h.deliver(out)
    # Every responder lies about its share of client 6's mask key.
    for u, data in list(h.replies.items()):
        resp = decode_message(data)
        assert isinstance(resp, UnmaskResponse)
        bad = tuple((v, bytes(33)) for v, _ in resp.mask_key_shares)
        h.replies[u] = tamper(data, mask_key_shares=bad)
    h.to_server()
    aborts = h.server.advance()
    assert h.server.round is Round.ABORTED
    assert h.server.abort_reason is AbortReason.RECONSTRUCTION_FAILED
    assert set(aborts) == {1, 2, 3, 4, 5, 7}
    with pytest.raises(LocalProtocolError):
        _ = h.server.result


# -- active mode: the consistency check ------------------------------------------


def test_active_unmask_request_must_match_the_signed_survivor_set() -> None:
    h = _h(n=7, mode=Mode.ACTIVE, threshold=4)
    out = h.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    h.deliver(out)
    h.to_server(skip={6})
    out = h.server.advance()
    assert h.server.round is Round.R3_CONSISTENCY_CHECK
    h.deliver(out)
    out = h.advance()
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    _expect_abort(
        h,
        1,
        tamper(out[1], survivors=req.survivors[:-1], dropped=(6, 7)),
        AbortReason.INCONSISTENT_SURVIVORS,
    )


def test_active_needs_threshold_many_valid_signatures() -> None:
    h, out = _unmask_stage(Mode.ACTIVE)
    req = decode_message(out[1])
    assert isinstance(req, UnmaskRequest)
    assert len(req.signatures) >= 4
    _expect_abort(h, 1, tamper(out[1], signatures=req.signatures[:3]), AbortReason.BELOW_THRESHOLD)
    req2 = decode_message(out[2])
    assert isinstance(req2, UnmaskRequest)
    forged = tuple((s, bytes(64)) if s == 3 else (s, g) for s, g in req2.signatures)
    _expect_abort(h, 2, tamper(out[2], signatures=forged), AbortReason.BAD_SIGNATURE)


def test_server_verifies_consistency_signatures() -> None:
    h = _h(n=7, mode=Mode.ACTIVE, threshold=4)
    out = h.run_to(Round.R3_CONSISTENCY_CHECK)
    h.deliver(out)
    sig = decode_message(h.replies[1])
    assert isinstance(sig, ConsistencySignature)
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(tamper(h.replies[1], signature=bytes(64)))
    assert info.value.reason is AbortReason.BAD_SIGNATURE


# -- local misuse ---------------------------------------------------------------------


def test_local_misuse_is_a_local_error() -> None:
    config = make_config(4, 8, bit_width=16)
    import numpy as np

    c = ClientSession(config, 1, np.zeros(8, np.int64), policy=SessionPolicy.protocol_only())
    with pytest.raises(LocalProtocolError):
        c.receive(b"")
    c.start()
    with pytest.raises(LocalProtocolError):
        c.start()
    h = _h()
    with pytest.raises(LocalProtocolError):
        _ = h.server.result


def test_malformed_bytes_abort_the_client_with_a_typed_error() -> None:
    h = _h()
    h.run_to(Round.R1_SHARE_KEYS)
    _expect_abort(h, 1, b"\xff\x00garbage", AbortReason.MALFORMED_MESSAGE)


def test_completed_client_stays_completed_after_an_abort() -> None:
    from protocol.messages import Abort

    h = _h(n=4)
    out = h.run_to(Round.R4_UNMASKING)
    h.deliver(out)
    assert h.clients[1].round is Round.COMPLETED
    assert h.clients[1].receive(Abort(h.config.session_id, AbortReason.CANCELLED).encode()) is None
    assert h.clients[1].round is Round.COMPLETED
    assert h.clients[1].abort_reason is None


def test_server_refuses_small_order_public_keys() -> None:
    h = _h()
    msg = decode_message(h.replies[2])
    assert isinstance(msg, AdvertiseKeys)
    # The all-zero point (order 4 in X25519's encoding) would make every
    # neighbour's key agreement fail later; it is refused on arrival.
    bad = AdvertiseKeys(msg.session_id, dataclasses.replace(msg.keys, mask_public_key=bytes(32)))
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(bad.encode())
    assert info.value.reason is AbortReason.INVALID_PUBLIC_KEY
    h.server.receive(h.replies[2])


def test_client_refuses_a_small_order_key_in_the_directory() -> None:
    h = _h()
    out = h.run_to(Round.R1_SHARE_KEYS)
    d = decode_message(out[1])
    assert isinstance(d, KeyDirectory)
    entries = list(d.entries)
    entries[2] = dataclasses.replace(entries[2], cipher_public_key=bytes(32))
    _expect_abort(h, 1, tamper(out[1], entries=tuple(entries)), AbortReason.INVALID_PUBLIC_KEY)


def test_a_wrong_self_mask_share_aborts_instead_of_corrupting_the_sum() -> None:
    h, out = _unmask_stage()
    h.deliver(out)
    # Every responder lies about its share of client 2's self-mask seed: the
    # reconstructed seed misses its round-1 commitment.
    for u, data in list(h.replies.items()):
        resp = decode_message(data)
        assert isinstance(resp, UnmaskResponse)
        bad = tuple(
            (v, (int.from_bytes(s, "little") ^ 1).to_bytes(33, "little") if v == 2 else s)
            for v, s in resp.self_mask_shares
        )
        h.replies[u] = tamper(data, self_mask_shares=bad)
    h.to_server()
    h.server.advance()
    assert h.server.round is Round.ABORTED
    assert h.server.abort_reason is AbortReason.RECONSTRUCTION_FAILED
    assert "self-mask seed of 2" in h.server.abort_detail


def test_server_refuses_a_message_in_another_clients_name() -> None:
    h = _h()
    with pytest.raises(RemoteProtocolError) as info:
        h.server.receive(h.replies[2], authenticated_sender=1)
    assert info.value.reason is AbortReason.WRONG_SENDER
    h.server.receive(h.replies[2], authenticated_sender=2)

"""Blame at unmasking (specs/secagg-v1.md §13.1) and per-client status (§16.1).

The attackers here are clients: an owner that commits to a seed it did not
share (or shares a key it did not advertise), and holders that reveal a
share other than the one they received. Each test asserts whom the server
blames -- never an honest client -- and that nothing was unmasked.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Round
from protocol.config import GraphKind, Mode, SessionConfig
from protocol.crypto import DeterministicRandom
from protocol.errors import AbortReason, BlameReason, ClientStatus, DecodeError
from protocol.messages import ShareKeys, UnmaskResponse, decode_message
from protocol.shamir import (
    FIELD_PRIME,
    decode_share,
    encode_share,
    interpolate_at,
    judge_shares,
    lagrange_at_zero,
    max_blamable_holders,
    split_secrets,
)
from protocol.simulate import make_config
from tests.protocol.harness import Harness, tamper

# -- the rule on its own ------------------------------------------------------------


def _commit(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _dealt(m: int, t: int, seed: bytes) -> tuple[bytes, dict[int, int]]:
    secret = DeterministicRandom(seed + b"/secret").random_bytes(32)
    holders = list(range(1, m + 1))
    (row,) = split_secrets([secret], holders, t, DeterministicRandom(seed))
    return secret, dict(zip(holders, row, strict=True))


def test_interpolate_at_matches_the_shares_and_the_secret() -> None:
    secret, shares = _dealt(9, 4, b"interp")
    xs = [2, 5, 6, 9]
    ys = [shares[x] for x in xs]
    values = interpolate_at(xs, ys, [0, 1, 3, 4, 7, 8, 2])
    assert values[0] == int.from_bytes(secret, "little")
    assert values[1:6] == [shares[x] for x in (1, 3, 4, 7, 8)]
    assert values[6] == shares[2]
    assert (
        values[0]
        == sum(lam * y for lam, y in zip(lagrange_at_zero(xs), ys, strict=True)) % FIELD_PRIME
    )


@settings(max_examples=150, deadline=None)
@given(
    t=st.integers(1, 6),
    extra=st.integers(0, 6),
    owner_lies=st.booleans(),
    data=st.data(),
)
def test_judge_never_blames_an_honest_client(
    t: int, extra: int, owner_lies: bool, data: st.DataObject
) -> None:
    m = t + extra
    secret, shares = _dealt(m, t, data.draw(st.binary(min_size=4, max_size=4)))
    limit = max_blamable_holders(m, t)
    liars = data.draw(st.sets(st.sampled_from(sorted(shares)), max_size=limit))
    presented = dict(shares)
    for h in liars:
        # Any other field element: the liar may pick it knowing its true share.
        presented[h] = (shares[h] + data.draw(st.integers(1, FIELD_PRIME - 1))) % FIELD_PRIME
    committed = os.urandom(32) if owner_lies else _commit(secret)
    verdict = judge_shares(presented, t, lambda s: _commit(s) == committed)
    # Soundness: the owner only if it lied, holders only among the liars.
    assert verdict.owner_at_fault <= owner_lies
    assert set(verdict.bad_holders) <= liars
    if m == t:
        assert not verdict.decided
    elif owner_lies and not liars:
        assert verdict.owner_at_fault and verdict.bad_holders == ()
    elif not owner_lies and len(liars) == 1 and m >= t + 2:
        # A single liar is always found: some cyclic window of t avoids it.
        assert set(verdict.bad_holders) == liars and not verdict.owner_at_fault


def test_colluding_liars_that_fool_a_window_frame_nobody() -> None:
    """Two liars pick offsets that cancel in window 1, so a wrong polynomial passes the
    commitment; the count rule must then refuse to blame the honest holders off it."""
    t, m = 4, 8
    secret, shares = _dealt(m, t, b"collude")
    xs = sorted(shares)
    window = xs[1 : 1 + t]  # holders 2..5
    liar_a, liar_b = window[0], window[1]
    lam = dict(zip(window, lagrange_at_zero(window), strict=True))
    delta_a = 12345
    # lam_a * delta_a + lam_b * delta_b = 0 (mod p).
    delta_b = (-lam[liar_a] * delta_a * pow(lam[liar_b], -1, FIELD_PRIME)) % FIELD_PRIME
    presented = dict(shares)
    presented[liar_a] = (shares[liar_a] + delta_a) % FIELD_PRIME
    presented[liar_b] = (shares[liar_b] + delta_b) % FIELD_PRIME
    (fooled,) = interpolate_at(window, [presented[x] for x in window], [0])
    assert fooled == int.from_bytes(secret, "little")  # the window is fooled
    verdict = judge_shares(presented, t, lambda s: s == secret)
    assert set(verdict.bad_holders) <= {liar_a, liar_b}
    assert not verdict.owner_at_fault


# -- whole sessions -----------------------------------------------------------------


CONFIGS = {
    "complete": lambda: make_config(7, 5),
    "harary": lambda: make_config(12, 5, graph=GraphKind.HARARY, degree=6, threshold=4),
    "complete-active": lambda: make_config(7, 5, mode=Mode.ACTIVE),
    "harary-active": lambda: make_config(
        12, 5, graph=GraphKind.HARARY, degree=6, threshold=4, mode=Mode.ACTIVE
    ),
}


def _at_unmasking(
    config: SessionConfig, *, lying_owner: int | None = None, drop_in_r2: set[int] | None = None
) -> Harness:
    """Honest run up to the clients' UnmaskResponses (in ``h.replies``, undelivered)."""
    h = Harness(config)
    out = h.run_to(Round.R1_SHARE_KEYS)
    h.deliver(out)
    if lying_owner is not None:
        msg = decode_message(h.replies[lying_owner])
        assert isinstance(msg, ShareKeys)
        h.replies[lying_owner] = tamper(h.replies[lying_owner], self_mask_commitment=os.urandom(32))
    out = h.advance()  # R1 -> R2: share bundles
    h.deliver(out)
    skip = drop_in_r2 or set()
    out = h.run_to(Round.R4_UNMASKING, skip=skip)
    h.deliver(out, skip=skip)
    return h


def _lie(h: Harness, holder: int, owner: int, *, kind: str = "self") -> None:
    data = h.replies[holder]
    resp = decode_message(data)
    assert isinstance(resp, UnmaskResponse)
    field = "self_mask_shares" if kind == "self" else "mask_key_shares"
    pairs = getattr(resp, field)
    lied = tuple(
        # Far from the true share: a change of the low bits of an X25519
        # scalar can vanish in clamping (and then changes nothing).
        (v, encode_share((decode_share(s) + (1 << 200)) % FIELD_PRIME) if v == owner else s)
        for v, s in pairs
    )
    assert lied != pairs, f"{holder} holds no {kind} share of {owner}"
    h.replies[holder] = tamper(data, **{field: lied})


def _assert_aborted_revealing_nothing(h: Harness) -> None:
    assert h.server.round is Round.ABORTED
    assert h.server.abort_reason is AbortReason.RECONSTRUCTION_FAILED
    assert h.server._acc is None  # the masked sum is gone, nothing was unmasked
    with pytest.raises(Exception, match="no result"):
        _ = h.server.result


@pytest.mark.parametrize("graph", sorted(CONFIGS))
def test_owner_with_a_random_commitment_is_blamed(graph: str) -> None:
    config = CONFIGS[graph]()
    liar = 3
    h = _at_unmasking(config, lying_owner=liar)
    aborts = h.advance()
    _assert_aborted_revealing_nothing(h)
    assert h.server.blamed == (liar,)
    assert h.server.blame == {liar: BlameReason.WRONG_SELF_MASK_COMMITMENT}
    status = h.server.client_status
    assert status[liar].status is ClientStatus.BLAMED
    assert status[liar].label == "blamed_wrong_self_mask_commitment"
    assert {u for u, r in status.items() if r.status is ClientStatus.ABORTED} == set(
        config.participants
    ) - {liar}
    assert set(aborts) == set(config.participants)


@pytest.mark.parametrize("graph", sorted(CONFIGS))
def test_holder_revealing_a_wrong_self_mask_share_is_blamed_not_the_owner(graph: str) -> None:
    config = CONFIGS[graph]()
    h = _at_unmasking(config)
    owner = max(config.participants)
    holder = min(config.neighbour_graph.neighbours(owner))  # among the first t holders
    _lie(h, holder, owner)
    h.advance()
    _assert_aborted_revealing_nothing(h)
    assert h.server.blame == {holder: BlameReason.SHARE_OFF_POLYNOMIAL}
    assert owner not in h.server.blamed


@pytest.mark.parametrize("graph", sorted(CONFIGS))
def test_holder_lying_about_every_share_is_the_only_one_blamed(graph: str) -> None:
    config = CONFIGS[graph]()
    h = _at_unmasking(config)
    holder = 2
    resp = decode_message(h.replies[holder])
    assert isinstance(resp, UnmaskResponse)
    for owner, _ in resp.self_mask_shares:
        _lie(h, holder, owner)
    h.advance()
    _assert_aborted_revealing_nothing(h)
    assert h.server.blamed == (holder,)


@pytest.mark.parametrize("graph", sorted(CONFIGS))
def test_holder_revealing_a_wrong_mask_key_share_is_blamed_not_the_dropped_owner(
    graph: str,
) -> None:
    config = CONFIGS[graph]()
    dropped = max(config.participants)
    h = _at_unmasking(config, drop_in_r2={dropped})
    holder = min(config.neighbour_graph.neighbours(dropped))
    _lie(h, holder, dropped, kind="key")
    h.advance()
    _assert_aborted_revealing_nothing(h)
    assert h.server.blame == {holder: BlameReason.SHARE_OFF_POLYNOMIAL}
    assert h.server.client_status[dropped].status is ClientStatus.DROPPED_IN_R2


def test_exactly_t_holders_blame_nobody() -> None:
    """With t shares a lying owner and a lying holder look the same: nobody is blamed."""
    config = make_config(7, 5, threshold=3)
    liar = 2
    h = _at_unmasking(config, lying_owner=liar)
    # Only 1..4 answer the unmasking: the liar's seed has exactly 3 = t holders.
    h.advance(skip={5, 6, 7})
    _assert_aborted_revealing_nothing(h)
    assert h.server.blamed == ()
    assert "nobody blamed" in h.server.abort_detail
    assert "indistinguishable" in h.server.blame_detail
    status = h.server.client_status
    assert {status[u].status for u in (5, 6, 7)} == {ClientStatus.DROPPED_IN_R4}
    assert {status[u].status for u in (1, 2, 3, 4)} == {ClientStatus.ABORTED}


def test_exactly_t_holders_for_a_lying_holder_blame_nobody() -> None:
    config = make_config(7, 5, threshold=3)
    h = _at_unmasking(config)
    _lie(h, 1, 2)
    h.advance(skip={5, 6, 7})
    _assert_aborted_revealing_nothing(h)
    assert h.server.blamed == ()


# -- per-client status ----------------------------------------------------------------


def test_client_status_records_drops_refusals_and_completion() -> None:
    config = make_config(10, 5)
    h = Harness(config)
    out = h.advance(skip={10})  # 10 never advertises
    h.deliver(out)
    # 9 sends garbage in R1 (refused), then nothing.
    with pytest.raises(DecodeError):
        h.server.receive(b"\x00garbage", authenticated_sender=9)
    out = h.advance(skip={9})
    h.deliver(out)
    out = h.advance(skip={8})  # 8 drops in R2
    h.deliver(out)
    h.advance(skip={7})  # 7 does not answer the unmasking
    assert h.server.round is Round.COMPLETED
    status = h.server.result.client_status
    assert status[10].status is ClientStatus.DROPPED_IN_R0
    assert status[9].status is ClientStatus.REFUSED_IN_R1
    assert status[9].reason is AbortReason.MALFORMED_MESSAGE
    assert status[9].label == "refused_malformed_message"
    assert status[8].status is ClientStatus.DROPPED_IN_R2
    assert status[7].status is ClientStatus.DROPPED_IN_R4
    assert {status[u].status for u in range(1, 7)} == {ClientStatus.COMPLETED}
    assert h.server.result.survivors == tuple(range(1, 8))


def test_a_refused_client_that_retries_validly_is_not_refused() -> None:
    config = make_config(5, 3)
    h = Harness(config)
    with pytest.raises(DecodeError):
        h.server.receive(b"\x00garbage", authenticated_sender=3)
    out = h.advance()
    assert h.server.round is Round.R1_SHARE_KEYS
    assert 3 in out
    assert h.server.client_status[3].status is ClientStatus.ACTIVE


def test_refusal_of_an_unexpected_sender_is_not_recorded() -> None:
    config = make_config(5, 3)
    h = Harness(config)
    h.to_server()
    with pytest.raises(DecodeError):
        h.server.receive(b"\x00garbage", authenticated_sender=2)  # 2 already sent
    h.server.advance()
    assert h.server.client_status[2].status is ClientStatus.ACTIVE


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 9),
    data=st.data(),
)
def test_a_lying_client_gets_itself_blamed_or_changes_nothing(n: int, data: st.DataObject) -> None:
    """Any n, t, liar and lie (owner or holder): the session either completes with the
    exact sum or aborts blaming only the liar -- exactly it when the evidence suffices."""
    k = n - 1
    t = data.draw(st.integers(k // 2 + 1, k), label="t")
    config = make_config(n, 3, threshold=t)
    liar = data.draw(st.sampled_from(config.participants), label="liar")
    owner_lies = data.draw(st.booleans(), label="owner_lies")
    h = _at_unmasking(config, lying_owner=liar if owner_lies else None)
    if not owner_lies:
        resp = decode_message(h.replies[liar])
        assert isinstance(resp, UnmaskResponse)
        for owner, _ in resp.self_mask_shares:
            _lie(h, liar, owner)
    h.advance()
    m = n - 1  # every other client holds a share of each seed, and all respond
    if h.server.round is Round.COMPLETED:
        # The lie touched no share the server used: the sum is exact.
        assert not owner_lies
        want = sum(h.inputs.values())
        assert (h.server.result.aggregate.astype("int64") == want).all()
        return
    _assert_aborted_revealing_nothing(h)
    assert set(h.server.blamed) <= {liar}
    if owner_lies and m > t:
        assert h.server.blame == {liar: BlameReason.WRONG_SELF_MASK_COMMITMENT}
    elif not owner_lies and m >= t + 2:
        assert h.server.blame == {liar: BlameReason.SHARE_OFF_POLYNOMIAL}
    elif m == t:
        assert h.server.blamed == ()

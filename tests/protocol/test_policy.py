"""Client policy (spec §4.7): the rules, and the attacks they stop.

The attacker tests drive real ``ClientSession``s. A malicious server (the
test) runs rounds 0-2 honestly through the harness, then plays the
split-survivor-set attack of the consistency round with colluding clients
whose whole state it reads, and counts what it could RECONSTRUCT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from protocol import (
    AbortReason,
    ClientSession,
    GraphKind,
    Mode,
    RemoteProtocolError,
    Round,
    SessionConfig,
    _cbor,
    decode_message,
)
from protocol._keys import consistency_payload, pairwise_mask_key, self_mask_key
from protocol.crypto import MaskExpander, X25519Secret, ed25519_sign
from protocol.encoding import unpack_bits, word_dtype
from protocol.errors import ConfigError
from protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from protocol.params import AdversaryClass, derive_parameters
from protocol.policy import (
    SEMI_HONEST_WARNING,
    UNCERTIFIED_WARNING,
    PolicyError,
    SessionPolicy,
    assumed_colluders,
    check_parameters,
    check_session,
    colluder_bound,
    smallest_threshold,
)
from protocol.shamir import decode_share, reconstruct_secrets
from protocol.simulate import identity_secret
from protocol.testing import make_config
from tests.protocol.harness import Harness

# The default rules 1-4 of §4.7. Rule 5 (certified identities) needs a pinned
# task authority; it is exercised in test_authority.py and tests/adversarial.
STRICT = SessionPolicy(require_certified_identities=False)
TARGET = 1


def _active(n: int, t: int, **kw: object) -> SessionConfig:
    return make_config(n, 8, bit_width=32, threshold=t, mode=Mode.ACTIVE, **kw)  # type: ignore[arg-type]


# -- the rules -------------------------------------------------------------------------


def test_defaults_are_the_strict_policy() -> None:
    assert (
        SessionPolicy(
            allow_semi_honest=False,
            min_participants=5,
            assumed_corrupt_rate=0.05,
            min_assumed_colluders=1,
            min_threshold=2,
            security_bits=40,
            require_certified_identities=True,
        )
        == SessionPolicy()
    )
    assert SessionPolicy().warnings == ()
    assert STRICT.warnings == (UNCERTIFIED_WARNING,)
    assert SessionPolicy(allow_semi_honest=True).warnings == (SEMI_HONEST_WARNING,)
    assert "substitut" in SEMI_HONEST_WARNING and "recover" in SEMI_HONEST_WARNING


@pytest.mark.parametrize(
    "kw",
    [
        {"min_participants": 1},
        {"min_assumed_colluders": -1},
        {"min_threshold": 0},
        {"assumed_corrupt_rate": 1.0},
        {"assumed_corrupt_rate": float("nan")},
        {"security_bits": 0},
        {"allow_semi_honest": 1},
    ],
)
def test_invalid_policy_is_a_config_error(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SessionPolicy(**kw)  # type: ignore[arg-type]


def test_client_refuses_semi_honest_by_default_before_producing_anything() -> None:
    config = make_config(6, 8, threshold=3, mode=Mode.SEMI_HONEST)
    with pytest.raises(PolicyError) as info:
        ClientSession(config, 1, np.zeros(8, np.int64))
    assert info.value.rule == "semi_honest_refused"
    assert isinstance(info.value, ConfigError)
    opted_in = SessionPolicy(allow_semi_honest=True)
    assert ClientSession(config, 1, np.zeros(8, np.int64), policy=opted_in).start()


@pytest.mark.parametrize("n", range(5, 60))
def test_complete_graph_rule_for_every_n(n: int) -> None:
    k = n - 1
    c_max = max(1, math.ceil(0.05 * n))
    config = _active(n, k // 2 + 1)
    assert assumed_colluders(config, STRICT) == c_max
    t_active = smallest_threshold(n, Mode.ACTIVE, GraphKind.COMPLETE, k, STRICT)
    assert 2 * t_active - k > c_max >= 2 * (t_active - 1) - k
    for t in range(k // 2 + 1, k + 1):
        ok = 2 * t - k > c_max
        if ok:
            check_session(_active(n, t), STRICT)
        else:
            with pytest.raises(PolicyError, match="collusion_bound"):
                check_session(_active(n, t), STRICT)
    semi = SessionPolicy(allow_semi_honest=True)
    for t in range(1, k + 1):
        refused = t <= c_max or t < 2
        if refused:
            with pytest.raises(PolicyError):
                check_parameters(n, Mode.SEMI_HONEST, GraphKind.COMPLETE, k, t, semi)
        else:
            check_parameters(n, Mode.SEMI_HONEST, GraphKind.COMPLETE, k, t, semi)


@pytest.mark.parametrize("n", [100, 150, 400, 1000, 5000])
@pytest.mark.parametrize("mode", [Mode.ACTIVE, Mode.SEMI_HONEST])
def test_harary_rule_accepts_the_parameter_finder_and_refuses_one_less(n: int, mode: Mode) -> None:
    """fcp's parameters at gamma = 0.05 pass; the next lower threshold does not."""
    adversary = AdversaryClass.SEMI_MALICIOUS if mode is Mode.ACTIVE else AdversaryClass.SEMI_HONEST
    p = derive_parameters(n, 0.1, 0.05, adversary)
    policy = SessionPolicy(allow_semi_honest=True)
    check_parameters(n, mode, GraphKind.HARARY, p.degree, p.threshold, policy)
    c_max = colluder_bound(n, GraphKind.HARARY, p.degree, policy)
    assert c_max >= 1
    lower = p.threshold - 1
    if (mode is Mode.ACTIVE and 2 * lower - p.degree <= c_max) or (
        mode is Mode.SEMI_HONEST and lower <= c_max
    ):
        with pytest.raises(PolicyError):
            check_parameters(n, mode, GraphKind.HARARY, p.degree, lower, policy)


def test_threshold_one_is_refused_even_with_no_assumed_colluders() -> None:
    policy = SessionPolicy(
        allow_semi_honest=True, assumed_corrupt_rate=0.0, min_assumed_colluders=0
    )
    with pytest.raises(PolicyError) as info:
        check_parameters(6, Mode.SEMI_HONEST, GraphKind.COMPLETE, 5, 1, policy)
    assert info.value.rule == "min_threshold"


def test_protocol_only_accepts_what_the_configuration_accepts() -> None:
    lax = SessionPolicy.protocol_only()
    check_session(make_config(2, 4, threshold=1), lax)
    check_session(_active(3, 2), lax)


# -- Sybil cohorts and the survivor floor ------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_sybil_cohort_below_the_floor_is_refused_at_construction(n: int) -> None:
    """Two Sybils + one honest client (or similar): the sum would be the honest input."""
    config = _active(n, n - 1)
    with pytest.raises(PolicyError) as info:
        ClientSession(config, 1, np.zeros(8, np.int64), identity_key=identity_secret(1))
    assert info.value.rule == "min_participants"


@pytest.mark.parametrize("mode", [Mode.ACTIVE, Mode.SEMI_HONEST])
def test_survivor_set_shrunk_below_the_floor_is_refused_before_shares_leave(mode: Mode) -> None:
    """n = 5 is accepted; then one client drops (or is declared dropped): 4 survivors < 5."""
    policy = SessionPolicy(allow_semi_honest=True, require_certified_identities=False)
    t = smallest_threshold(5, mode, GraphKind.COMPLETE, 4, policy)
    h = Harness(make_config(5, 8, bit_width=32, threshold=t, mode=mode), policy=policy)
    out = h.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    h.deliver(out)
    h.to_server(skip={5})  # 5 "drops" (or the server pretends it did)
    out = h.server.advance()
    if mode is Mode.ACTIVE:
        h.deliver(out, skip={5})
        out = h.advance(skip={5})
    assert h.server.round is Round.R4_UNMASKING
    assert sorted(out) == [1, 2, 3, 4]
    for u, data in out.items():
        req = decode_message(data)
        assert isinstance(req, UnmaskRequest) and len(req.survivors) == 4
        with pytest.raises(RemoteProtocolError) as info:  # no reply: no share leaves
            h.clients[u].receive(data)
        assert info.value.reason is AbortReason.BELOW_THRESHOLD
        assert "min_participants" in info.value.detail
        assert h.clients[u].round is Round.ABORTED
    # The same session with a floor of 4 unmasks: the refusal is the policy's doing.
    lax = SessionPolicy(
        allow_semi_honest=True, min_participants=4, require_certified_identities=False
    )
    h2 = Harness(make_config(5, 8, bit_width=32, threshold=t, mode=mode), policy=lax)
    out = h2.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    h2.deliver(out)
    h2.to_server(skip={5})
    out = h2.server.advance()
    if mode is Mode.ACTIVE:
        h2.deliver(out, skip={5})
        out = h2.advance(skip={5})
    for u, data in out.items():
        assert isinstance(decode_message(h2.clients[u].receive(data) or b""), UnmaskResponse)


# -- the split-survivor-set attack (active mode) -------------------------------------------


@dataclass
class Haul:
    """What the malicious server holds about the target after the attack."""

    masked: np.ndarray
    mask_public_keys: dict[int, bytes]
    self_mask_shares: dict[int, bytes] = field(default_factory=dict)  # holder -> share of b_T
    mask_key_shares: dict[int, bytes] = field(default_factory=dict)  # holder -> share of s_sk_T
    refusals: dict[int, AbortReason] = field(default_factory=dict)


def _split_survivor_attack(
    config: SessionConfig, colluders: set[int], policy: SessionPolicy
) -> Haul:
    """Tell half the honest clients that the target survived and half that it dropped.

    Colluders (corrupt clients: the server has their identity keys and state)
    sign both survivor sets and hand over both of their shares of the target.
    """
    h = Harness(config, policy=policy)
    parts = config.participants
    sid = config.session_id
    mask_pks = {}
    for u, data in h.replies.items():
        advert = decode_message(data)
        assert isinstance(advert, AdvertiseKeys)
        mask_pks[u] = advert.keys.mask_public_key
    out = h.run_to(Round.R2_MASKED_INPUT_COLLECTION)
    h.deliver(out)
    masked_msg = decode_message(h.replies[TARGET])
    assert isinstance(masked_msg, MaskedInput)
    y = unpack_bits(masked_msg.masked, config.bit_width, config.vector_length)
    haul = Haul(masked=y.copy(), mask_public_keys=mask_pks)

    honest = [u for u in parts if u != TARGET and u not in colluders]
    group_a, group_b = honest[: len(honest) // 2], honest[len(honest) // 2 :]
    s_a = tuple(parts)  # the target survived: group A reveals shares of b_T
    s_b = tuple(u for u in parts if u != TARGET)  # the target dropped: group B reveals s_sk_T

    def sign_as_colluder(c: int, survivors: tuple[int, ...]) -> bytes:
        payload = consistency_payload(sid, _cbor.dumps(list(survivors)))
        return ed25519_sign(identity_secret(c), payload)

    sigs: dict[tuple[int, ...], dict[int, bytes]] = {s_a: {}, s_b: {}}
    for survivors, group in ((s_a, [*group_a, TARGET]), (s_b, group_b)):
        for u in group:
            reply = h.clients[u].receive(ConsistencyRequest(sid, u, survivors).encode())
            sig = decode_message(reply or b"")
            assert isinstance(sig, ConsistencySignature)
            sigs[survivors][u] = sig.signature
        for c in colluders:
            sigs[survivors][c] = sign_as_colluder(c, survivors)

    for survivors, dropped, group in ((s_a, (), group_a), (s_b, (TARGET,), group_b)):
        signatures = tuple(sorted(sigs[survivors].items()))
        for u in group:
            req = UnmaskRequest(sid, u, survivors, dropped, signatures).encode()
            try:
                reply = h.clients[u].receive(req)
            except RemoteProtocolError as exc:
                haul.refusals[u] = exc.reason
                continue
            resp = decode_message(reply or b"")
            assert isinstance(resp, UnmaskResponse)
            for v, share in resp.self_mask_shares:
                if v == TARGET:
                    haul.self_mask_shares[u] = share
            for v, share in resp.mask_key_shares:
                if v == TARGET:
                    haul.mask_key_shares[u] = share
    for c in colluders:  # corrupt holders give both shares
        haul.self_mask_shares[c] = h.clients[c]._held_self_mask_shares[TARGET]
        haul.mask_key_shares[c] = h.clients[c]._held_mask_key_shares[TARGET]
    return haul


def _recover_target_input(config: SessionConfig, haul: Haul) -> np.ndarray:
    """x_T = y_T - PRG(b_T) - sum_v PRG(s_Tv)  (target 1 is below every peer)."""
    t = config.threshold

    def secret(shares: dict[int, bytes]) -> bytes:
        holders = sorted(shares)[:t]
        return reconstruct_secrets(holders, [[decode_share(shares[v]) for v in holders]])[0]

    seed, mask_sk = secret(haul.self_mask_shares), secret(haul.mask_key_shares)
    sid = config.session_id
    minus = [self_mask_key(seed, sid, TARGET)]
    sk = X25519Secret(mask_sk)
    for v in config.participants:
        if v != TARGET:
            minus.append(pairwise_mask_key(sk, haul.mask_public_keys[v], sid, TARGET, v))
    x = haul.masked.copy()
    MaskExpander(word_dtype(config.bit_width)).apply(x, add=[], subtract=minus)
    return x


def _target_input(config: SessionConfig) -> np.ndarray:
    # Harness inputs: arange(L) * u.
    return (np.arange(config.vector_length, dtype=np.uint64) * TARGET).astype(
        word_dtype(config.bit_width)
    )


def test_finding_split_survivor_attack_recovers_the_input_without_the_policy() -> None:
    """The finding on main: n = 10, t = k//2 + 1 = 5, ONE colluder -> exact input."""
    config = _active(10, 5)
    haul = _split_survivor_attack(config, {10}, SessionPolicy.protocol_only())
    assert len(haul.self_mask_shares) >= 5 and len(haul.mask_key_shares) >= 5
    assert np.array_equal(_recover_target_input(config, haul), _target_input(config))


def test_default_client_refuses_the_finding_session_at_construction() -> None:
    config = _active(10, 5)
    for u in config.participants:  # every honest client, the target included
        with pytest.raises(PolicyError) as info:
            ClientSession(config, u, np.zeros(8, np.int64), identity_key=identity_secret(u))
        assert info.value.rule == "collusion_bound"
        assert "2*5 - 9 = 1 <= 1" in str(info.value)


@pytest.mark.parametrize("n", [6, 10, 11, 20, 21, 40])
def test_split_survivor_attack_fails_with_the_assumed_number_of_colluders(n: int) -> None:
    """The threshold the orchestrator now picks, and c_max colluders: no secret pair."""
    k = n - 1
    t = smallest_threshold(n, Mode.ACTIVE, GraphKind.COMPLETE, k, STRICT)
    config = _active(n, t)
    c_max = assumed_colluders(config, STRICT)
    colluders = set(range(n - c_max + 1, n + 1))
    haul = _split_survivor_attack(config, colluders, STRICT)
    got = (len(haul.self_mask_shares), len(haul.mask_key_shares))
    # At most k + c_max shares in all, fewer than the 2t needed for both secrets.
    assert sum(got) <= k + c_max < 2 * t
    assert min(got) < t, f"server holds {got} shares of b_T and s_sk_T with t = {t}"


@pytest.mark.parametrize("bound", [1, 2, 3])
def test_more_colluders_than_the_bound_need_a_session_the_client_refuses(bound: int) -> None:
    """A server with c > c_max colluders needs 2t - k <= c; every such session with
    2t - k <= c_max is refused at construction (nothing produced), and the attack
    succeeds on it when the clients run without the policy."""
    n, k = 12, 11
    policy = SessionPolicy(min_assumed_colluders=bound)
    colluders = bound + 1
    t = (k + bound) // 2  # the largest t with 2t - k <= bound: breakable by bound + 1 colluders
    config = _active(n, t)
    assert 2 * t - k <= bound
    with pytest.raises(PolicyError) as info:
        ClientSession(
            config, TARGET, np.zeros(8, np.int64), identity_key=identity_secret(1), policy=policy
        )
    assert info.value.rule == "collusion_bound"
    haul = _split_survivor_attack(
        config, set(range(n - colluders + 1, n + 1)), SessionPolicy.protocol_only()
    )
    assert np.array_equal(_recover_target_input(config, haul), _target_input(config))

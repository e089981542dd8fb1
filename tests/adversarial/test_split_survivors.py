"""Split survivor sets in the consistency round (spec §4.2, condition A2).

The attack recovers a target's exact input precisely when the colluders
among its neighbours number at least ``2t - k``; below that every honest
client that would complete the split refuses, and the oracle rebuilds at
most one of the target's two secrets.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocol import ClientSession, Mode, PolicyError, SessionPolicy
from protocol.policy import assumed_colluders
from protocol.simulate import identity_secret
from protocol.testing import make_config
from tests.adversarial.oracle import as_modular
from tests.adversarial.split import best_split, split_survivor_attack


@pytest.mark.parametrize(
    ("n", "t", "c"),
    [
        (10, 5, 1),  # the orchestrator's old default t = k//2 + 1 with ONE colluder
        (10, 6, 2),  # 2t - k = 3 > c: protected
        (10, 6, 3),  # c = 2t - k: recovered (the bound is tight)
        (10, 7, 4),  # 2t - k = 5 > c
        (10, 7, 5),
        (7, 4, 1),  # 2t - k = 2 > c
        (7, 4, 2),
        (13, 8, 2),  # 2t - k = 4 > c
        (13, 8, 4),
    ],
)
def test_split_survivors_recovers_input_iff_colluders_reach_2t_minus_k(
    n: int, t: int, c: int
) -> None:
    config = make_config(n, 16, bit_width=16, mode=Mode.ACTIVE, threshold=t)
    k = n - 1
    # A default client assumes c_max colluders among its neighbours (§4.7) and
    # refuses, before producing anything, every session its bound cannot protect.
    # (Certification, rule 5, is not the subject here: see test_key_substitution.)
    policy = SessionPolicy(require_certified_identities=False)
    c_max = assumed_colluders(config, policy)
    x0 = np.zeros(16, np.int64)
    if 2 * t - k <= c_max:
        with pytest.raises(PolicyError) as info:
            ClientSession(config, 1, x0, identity_key=identity_secret(1), policy=policy)
        assert info.value.rule == "collusion_bound"
    else:
        ClientSession(config, 1, x0, identity_key=identity_secret(1), policy=policy)
    target = 1
    colluders = set(range(n - c + 1, n + 1))
    outcome = split_survivor_attack(
        config, target, colluders, best_split(config, target, colluders)
    )
    # No honest holder ever revealed both kinds of share of the target.
    assert all(len(kinds) <= 1 for kinds in outcome.revealed_by.values())
    truth = as_modular(np.arange(16, dtype=np.int64) * target, config.bit_width)  # harness input
    got = outcome.reconstruction.input
    if c >= 2 * t - k:
        assert got is not None and (got == truth).all()
    else:
        assert got is None
        # Exactly one of the two secrets can be rebuilt: the split bought nothing.
        assert (outcome.reconstruction.self_mask_seed is None) or (
            outcome.reconstruction.mask_secret is None
        )
        assert outcome.refused, "some honest client must have refused the split"

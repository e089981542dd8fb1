"""Key substitution with zero colluders, in both modes.

Without a trust anchor the attack rebuilds the target's exact input; these
tests pin that (so the oracle and the attack are real) and, with the
client's checks, that the target refuses before any share leaves it.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocol import Mode, PolicyError, SessionPolicy
from protocol.testing import make_config
from tests.adversarial.oracle import as_modular
from tests.adversarial.substitution import substitution_attack, target_session

X = np.arange(32, dtype=np.int64) * 977 - 5000


@pytest.mark.parametrize("mode", [Mode.SEMI_HONEST, Mode.ACTIVE])
def test_without_a_trust_anchor_substitution_recovers_the_input(mode: Mode) -> None:
    """What a client gives up by opting into semi-honest mode, or by joining an
    active session without a pinned task authority (spec §4.6)."""
    config = make_config(8, 32, bit_width=24, mode=mode, threshold=6)
    if mode is Mode.SEMI_HONEST:
        policy = SessionPolicy(allow_semi_honest=True)
    else:
        policy = SessionPolicy(require_certified_identities=False)
    got = substitution_attack(target_session(config, 3, X, policy=policy)).input
    assert got is not None and (got == as_modular(X, 24)).all()


def test_a_default_client_refuses_the_semi_honest_session_before_producing_anything() -> None:
    config = make_config(8, 32, bit_width=24, mode=Mode.SEMI_HONEST, threshold=6)
    with pytest.raises(PolicyError) as info:
        target_session(config, 3, X)
    assert info.value.rule == "semi_honest_refused"


def test_a_default_client_refuses_an_active_session_nobody_certified() -> None:
    """Without a pinned task authority the identity keys in the configuration are
    the server's word: a default client refuses before producing anything."""
    config = make_config(8, 32, bit_width=24, mode=Mode.ACTIVE, threshold=6)
    with pytest.raises(PolicyError) as info:
        target_session(config, 3, X)
    assert info.value.rule == "uncertified_identities"

"""Key substitution with zero colluders, in both modes.

Without a trust anchor the attack rebuilds the target's exact input; these
tests pin that (so the oracle and the attack are real) and, with the
client's checks, that the target refuses before any share leaves it.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocol import Mode, make_config
from tests.adversarial.oracle import as_modular
from tests.adversarial.substitution import substitution_attack, target_session


@pytest.mark.parametrize("mode", [Mode.SEMI_HONEST, Mode.ACTIVE])
def test_without_a_trust_anchor_substitution_recovers_the_input(mode: Mode) -> None:
    config = make_config(8, 32, bit_width=24, mode=mode, threshold=6)
    x = np.arange(32, dtype=np.int64) * 977 - 5000
    got = substitution_attack(target_session(config, 3, x)).input
    assert got is not None and (got == as_modular(x, 24)).all()

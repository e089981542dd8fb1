"""Attacks on the real SDK ``Client`` by a malicious server behind a fake transport.

Each test asserts on what left the client (nothing, where the policy must
refuse) and on what the server could rebuild from it.
"""

from __future__ import annotations

import numpy as np

from client_sdk.client import Client, ClientPolicy
from client_sdk.identity import Identity
from protocol import Mode, from_modular, make_config
from protocol.encoding import EvalSums
from tests.adversarial.fake_server import ENCODING, FakeServer, attach, round_context
from tests.adversarial.oracle import reconstruct
from tests.adversarial.substitution import SubstitutingServer

LENGTH = 16
TARGET = 3


def _client(policy: ClientPolicy | None, server: FakeServer, update: np.ndarray) -> Client:
    identity = Identity.generate().with_enrolment(TARGET, "https://malicious.invalid")
    weights = [np.zeros(LENGTH, np.float32)]

    def train(model: object) -> int:
        model.set_weights(update)  # type: ignore[attr-defined]
        return 250

    client = Client(
        "https://malicious.invalid",
        identity,
        weights,
        train,
        lambda _m: EvalSums(7, 10, 3.5),
        task_id=1,
        policy=policy,
    )
    attach(client, server)
    return client


def test_semi_honest_opt_in_gives_the_update_to_a_substituting_server() -> None:
    """What opting into semi-honest mode gives up, shown end to end through the SDK."""
    n = 8
    length = ENCODING.vector_length(LENGTH)
    bits = ENCODING.required_bit_width(n)
    config = make_config(n, length, bit_width=bits, threshold=6, context=round_context())
    attacker = SubstitutingServer(config, TARGET)
    server = FakeServer(config, np.zeros(LENGTH, np.float32), attacker.on_message)
    update = np.linspace(-0.5, 0.5, LENGTH).astype(np.float32)
    policy = ClientPolicy(allowed_modes=frozenset({Mode.SEMI_HONEST}))
    _client(policy, server, update).run(rounds=1)
    got = reconstruct(attacker.view).input
    assert got is not None
    mean, weight, metrics = ENCODING.decode(from_modular(got, bits))
    assert weight == 250
    assert metrics == EvalSums(7, 10, 3.5)
    # The update itself, to within one quantisation step.
    assert np.max(np.abs(mean - update)) <= 1 / ENCODING.update.scale

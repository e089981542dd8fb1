"""Attacks on the real SDK ``Client`` by a malicious server behind a fake transport.

Each test asserts on what left the client (nothing, where the policy must
refuse) and on what the server could rebuild from it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from client_sdk.client import Client, ClientPolicy, PolicyViolation
from client_sdk.identity import Identity
from protocol import Mode, from_modular
from protocol.authority import sign_roster, task_scope
from protocol.crypto import DeterministicRandom, ed25519_public_key
from protocol.encoding import EvalSums
from protocol.simulate import identity_secret
from protocol.testing import make_config
from tests.adversarial.fake_server import ENCODING, FakeServer, attach, round_context
from tests.adversarial.oracle import reconstruct
from tests.adversarial.substitution import SubstitutingServer, forge_config

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
    policy = ClientPolicy(allow_semi_honest=True)
    _client(policy, server, update).run(rounds=1)
    got = reconstruct(attacker.view).input
    assert got is not None
    mean, weight, metrics = ENCODING.decode(from_modular(got, bits))
    assert weight == 250
    assert metrics == EvalSums(7, 10, 3.5)
    # The update itself, to within one quantisation step.
    assert np.max(np.abs(mean - update)) <= 1 / ENCODING.update.scale


AUTHORITY = DeterministicRandom(b"task-authority").random_bytes(32)
ROGUE = DeterministicRandom(b"rogue-authority").random_bytes(32)


def _roster(secret: bytes, real_keys: dict[int, bytes]) -> str:
    now = int(time.time())
    roster = sign_roster(secret, task_scope(1), 1, now - 60, now + 3600, real_keys.items())
    return roster.encode().hex()


@pytest.mark.parametrize(
    ("attack", "mode"),
    [
        ("substituted_identities", Mode.ACTIVE),  # genuine roster, forged config keys
        ("rogue_roster", Mode.ACTIVE),  # forged config keys, roster signed by the server
        ("no_roster", Mode.ACTIVE),
        ("downgrade", Mode.SEMI_HONEST),  # unsigned round-0 keys, no roster needed
    ],
)
def test_pinned_sdk_client_sends_nothing_to_a_substituting_server(attack: str, mode: Mode) -> None:
    n = 8
    length = ENCODING.vector_length(LENGTH)
    bits = ENCODING.required_bit_width(n)
    honest = make_config(n, length, bit_width=bits, threshold=6, mode=mode, context=round_context())
    identity = Identity.generate().with_enrolment(TARGET, "https://malicious.invalid")
    identity = identity.with_authority(ed25519_public_key(AUTHORITY))
    # The authority certified the real participants (their simulation identities).
    real_keys = {v: ed25519_public_key(identity_secret(v)) for v in honest.participants}
    real_keys[TARGET] = identity.public_key
    config = forge_config(honest, TARGET, identity.public_key) if mode is Mode.ACTIVE else honest
    attacker = SubstitutingServer(config, TARGET)
    extra: dict[str, object] = {}
    if attack == "substituted_identities":
        extra = {"roster": _roster(AUTHORITY, real_keys)}
    elif attack == "rogue_roster":  # the server certifies its own forged keys
        forged = dict(zip(config.participants, config.identity_keys, strict=True))
        extra = {"roster": _roster(ROGUE, forged)}
    elif attack == "no_roster":
        extra = {"roster": None}
    server = FakeServer(config, np.zeros(LENGTH, np.float32), attacker.on_message, extra)
    trained: list[int] = []

    def train(model: object) -> int:
        trained.append(1)
        return 250

    client = Client(
        "https://malicious.invalid", identity, [np.zeros(LENGTH, np.float32)], train, task_id=1
    )
    attach(client, server)
    with pytest.raises(PolicyViolation):
        client.run(rounds=1)
    assert server.posted == [], "a protocol message left the client"
    # Keys are advertised after training (specs/service-v1.md §3): what the
    # assignment shows (mode, roster) is refused before training; forged keys
    # in a genuinely certified session only once it is formed, after training.
    if attack == "substituted_identities":
        assert trained == [1]
    else:
        assert trained == [], "the client trained for a round it refuses"
    assert reconstruct(attacker.view).input is None

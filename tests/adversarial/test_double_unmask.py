"""Every double-unmask sequence: a holder reveals at most one secret of each peer.

A malicious server holding valid signatures of EVERY client on BOTH survivor
sets (stronger than any real adversary, which cannot forge honest
signatures) sends each honest holder every sequence of up to three
consistency/unmasking requests. Whatever the sequence, a holder answers at
most one unmasking request and never reveals both the self-mask share and
the mask-key share of the target; the oracle, given all responses plus the
shares of ``2t - k - 1`` colluders, rebuilds nothing.
"""

from __future__ import annotations

import itertools

import pytest

from protocol import Mode, RemoteProtocolError, SessionConfig
from protocol.messages import ConsistencyRequest, UnmaskRequest
from protocol.testing import make_config
from tests.adversarial.oracle import reconstruct
from tests.adversarial.split import HonestRun, _signature

N, T, TARGET = 7, 5, 1  # k = 6, 2t - k = 4: up to 3 colluders allowed
COLLUDERS = {5, 6, 7}


def _config(mode: Mode) -> SessionConfig:
    return make_config(N, 8, bit_width=16, mode=mode, threshold=T)


def _message(kind: str, config: SessionConfig, v: int) -> bytes:
    """``CR1``/``CR2``: consistency request for S1 (target survived) / S2 (target dropped);
    ``UR1``/``UR2``: the unmasking request for that set, signed by everyone in it."""
    s1 = tuple(config.participants)
    survivors = s1 if kind.endswith("1") else tuple(u for u in s1 if u != TARGET)
    if kind.startswith("CR"):
        return ConsistencyRequest(config.session_id, v, survivors).encode()
    dropped = () if survivors == s1 else (TARGET,)
    signatures: tuple[tuple[int, bytes], ...] = ()
    if config.mode is Mode.ACTIVE:
        signatures = tuple((s, _signature(config, s, survivors)) for s in survivors)
    return UnmaskRequest(config.session_id, v, survivors, dropped, signatures).encode()


SEQUENCES = {
    Mode.ACTIVE: [
        seq
        for length in (1, 2, 3)
        for seq in itertools.product(("CR1", "CR2", "UR1", "UR2"), repeat=length)
    ],
    Mode.SEMI_HONEST: [
        seq for length in (1, 2, 3) for seq in itertools.product(("UR1", "UR2"), repeat=length)
    ],
}


@pytest.mark.parametrize(
    ("mode", "sequence"),
    [(m, s) for m in (Mode.ACTIVE, Mode.SEMI_HONEST) for s in SEQUENCES[m]],
    ids=lambda x: "-".join(x) if isinstance(x, tuple) else str(x),
)
def test_no_sequence_reveals_both_secrets(mode: Mode, sequence: tuple[str, ...]) -> None:
    config = _config(mode)
    run = HonestRun.to_consistency_round(config)
    view = run.view_of(TARGET)
    h = run.harness
    run.hand_over(view, COLLUDERS)
    for v in sorted(set(config.participants) - COLLUDERS - {TARGET}):
        answered = 0
        kinds: set[str] = set()
        for kind in sequence:
            data = _message(kind, config, v)
            try:
                reply = h.clients[v].receive(data)
            except RemoteProtocolError:
                continue
            if reply is None or not kind.startswith("UR"):
                continue
            answered += 1
            before = (set(view.self_mask_shares), set(view.mask_key_shares))
            view.add_unmask_response(reply)
            if v in view.self_mask_shares and v not in before[0]:
                kinds.add("self")
            if v in view.mask_key_shares and v not in before[1]:
                kinds.add("key")
        assert answered <= 1, f"holder {v} answered {answered} unmasking requests"
        assert len(kinds) <= 1, f"holder {v} revealed both secrets of the target"
    assert reconstruct(view).input is None


def test_control_a_client_that_answers_twice_gives_the_input_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The assertions above can fail: a holder without the one-shot rule (Flower's
    ``_unmask``) leaks both secrets and the oracle rebuilds the exact input."""
    import numpy as np

    from protocol import ClientSession, Round
    from tests.adversarial.oracle import as_modular

    monkeypatch.setattr(ClientSession, "_forget_secrets", lambda self: None)
    config = _config(Mode.SEMI_HONEST)
    run = HonestRun.to_consistency_round(config)
    view = run.view_of(TARGET)
    h = run.harness
    for v in sorted(set(config.participants) - {TARGET}):
        for kind in ("UR1", "UR2"):
            h.clients[v].round = Round.R2_MASKED_INPUT_COLLECTION  # forget having answered
            reply = h.clients[v].receive(_message(kind, config, v))
            assert reply is not None
            view.add_unmask_response(reply)
    got = reconstruct(view).input
    truth = as_modular(np.arange(8, dtype=np.int64) * TARGET, 16)
    assert got is not None and (got == truth).all()

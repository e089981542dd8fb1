"""A malicious server that tells two halves of a session two different survivor sets.

It runs a real active-mode session honestly up to the consistency round, then
shows group A the survivor set ``S1`` (the target survived: A reveals shares
of the target's self-mask seed) and group B ``S2 = S1 \\ {target}`` (the
target dropped: B reveals shares of its mask secret key). Colluding clients
sign both sets and hand over both shares they hold. Every response is fed to
the reconstruction oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import RemoteProtocolError, SessionConfig, _cbor, decode_message
from protocol._keys import consistency_payload
from protocol.crypto import ed25519_sign
from protocol.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    ShareKeys,
    UnmaskRequest,
)
from protocol.simulate import identity_secret
from tests.adversarial.oracle import AttackerView, Reconstruction, reconstruct
from tests.protocol.harness import Harness


@dataclass
class HonestRun:
    """A session run honestly up to the consistency round, with what clients sent."""

    harness: Harness
    sent: list[dict[int, bytes]] = field(default_factory=list)  # per round: client -> bytes
    server_out: list[dict[int, bytes]] = field(default_factory=list)

    @classmethod
    def to_consistency_round(cls, config: SessionConfig) -> HonestRun:
        run = cls(Harness(config))
        h = run.harness
        for _ in range(3):  # R0 adverts, R1 ShareKeys, R2 masked inputs
            run.sent.append(dict(h.replies))
            out = h.advance()
            run.server_out.append(out)
            if len(run.server_out) < 3:
                h.deliver(out)
        return run

    def view_of(self, target: int) -> AttackerView:
        """The server's own material about ``target`` after round 2."""
        cfg = self.harness.config
        share_keys = decode_message(self.sent[1][target])
        assert isinstance(share_keys, ShareKeys)
        directory = decode_message(self.server_out[0][target])
        assert isinstance(directory, KeyDirectory)
        entries = {e.sender: e for e in directory.entries}
        peers = {v for v, _ in share_keys.ciphertexts}
        return AttackerView(
            config=cfg,
            target=target,
            commitment=share_keys.self_mask_commitment,
            mask_public_key=entries[target].mask_public_key,
            masked=bytes(decode_message(self.sent[2][target]).masked),  # type: ignore[attr-defined]
            peer_mask_keys={v: entries[v].mask_public_key for v in peers},
        )

    def hand_over(self, view: AttackerView, colluders: set[int]) -> None:
        """Colluders give the server both shares of the target they got in round 1."""
        for c in sorted(colluders):
            session = self.harness.clients[c]
            if view.target in session._held_self_mask_shares:
                view.add_colluder_state(
                    c,
                    session._held_self_mask_shares[view.target],
                    session._held_mask_key_shares[view.target],
                )


def _signature(config: SessionConfig, signer: int, survivors: tuple[int, ...]) -> bytes:
    payload = consistency_payload(config.session_id, _cbor.dumps(list(survivors)))
    return ed25519_sign(identity_secret(signer), payload)


@dataclass(frozen=True)
class SplitOutcome:
    reconstruction: Reconstruction
    refused: dict[int, str]  # honest client -> abort reason of its refusal
    revealed_by: dict[int, set[str]]  # honest holder -> {"self", "key"} it revealed of the target


def split_survivor_attack(
    config: SessionConfig, target: int, colluders: set[int], group_a: set[int]
) -> SplitOutcome:
    """Run the attack; ``group_a`` (honest, not the target) sees the target survive."""
    run = HonestRun.to_consistency_round(config)
    h = run.harness
    view = run.view_of(target)
    everyone = set(config.participants)
    honest = everyone - colluders
    group_b = honest - group_a - {target}
    s1 = tuple(sorted(everyone))
    s2 = tuple(sorted(everyone - {target}))
    sid = config.session_id
    run.hand_over(view, colluders)
    refused: dict[int, str] = {}
    sigs: dict[tuple[int, ...], dict[int, bytes]] = {s1: {}, s2: {}}
    for c in colluders:
        sigs[s1][c] = _signature(config, c, s1)
        sigs[s2][c] = _signature(config, c, s2)
    shown: dict[int, tuple[int, ...]] = {v: s1 for v in group_a | {target}}
    shown.update({v: s2 for v in group_b})
    for v, survivors in sorted(shown.items()):
        try:
            reply = h.clients[v].receive(ConsistencyRequest(sid, v, survivors).encode())
        except RemoteProtocolError as exc:
            refused[v] = exc.reason.value
            continue
        assert reply is not None
        msg = decode_message(reply)
        assert isinstance(msg, ConsistencySignature)
        sigs[survivors][v] = msg.signature
    revealed_by: dict[int, set[str]] = {}
    for v, survivors in sorted(shown.items()):
        if v in refused:
            continue
        closed = config.neighbour_graph.neighbours(v) | {v}
        signatures = tuple(
            (s, sig) for s, sig in sorted(sigs[survivors].items()) if s in closed and s in survivors
        )
        dropped = () if survivors == s1 else (target,)
        request = UnmaskRequest(sid, v, survivors, dropped, signatures).encode()
        try:
            reply = h.clients[v].receive(request)
        except RemoteProtocolError as exc:
            refused[v] = exc.reason.value
            continue
        assert reply is not None
        before = (set(view.self_mask_shares), set(view.mask_key_shares))
        view.add_unmask_response(reply)
        kinds = set()
        if v in view.self_mask_shares and v not in before[0]:
            kinds.add("self")
        if v in view.mask_key_shares and v not in before[1]:
            kinds.add("key")
        revealed_by[v] = kinds
    return SplitOutcome(reconstruct(view), refused, revealed_by)


def best_split(config: SessionConfig, target: int, colluders: set[int]) -> set[int]:
    """Group A for the strongest attack: just enough holders to reveal ``t`` self shares."""
    holders = sorted(config.neighbour_graph.neighbours(target) - colluders)
    colluding_holders = len(config.neighbour_graph.neighbours(target) & colluders)
    need = max(0, config.threshold - colluding_holders)
    return set(holders[:need])

"""The task authority (specs/authority-v1.md) and strict key validation (secagg-v1.md §6.5-6.6).

The attacker tests play a malicious server that wants one client's exact
input with no colluding client: it puts identity keys it holds into an
active-mode configuration (substituting real clients' keys, or inventing
participants), runs the "other clients" itself with zero inputs, and reads
the target's input off the aggregate. Each test shows the attack succeeding
against a client without a pinned authority, and the target refusing, with
nothing sent, when it checks the roster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import ClientSession, Round, ServerSession
from protocol.authority import (
    MAX_ROSTER_ENTRIES,
    CertificationError,
    CertificationFault,
    IdentityCertificate,
    PinnedAuthority,
    Roster,
    issue_certificate,
    sign_roster,
    task_scope,
    verify_roster,
)
from protocol.authority_vectors import (
    SUBDIRECTORY,
    authority_secret,
    check_authority_vector,
    generate_authority_vectors,
)
from protocol.config import Mode, SessionConfig
from protocol.crypto import (
    DeterministicRandom,
    Ed25519Rejection,
    ed25519_check,
    ed25519_public_key,
    ed25519_verify,
)
from protocol.crypto.ed25519_cases import ed25519_cases
from protocol.encoding import from_modular
from protocol.errors import ConfigError
from protocol.policy import SessionPolicy
from protocol.simulate import identity_secret

# These tests are about the authority check / erasure, not the policy (§4.7).
PROTOCOL_ONLY = SessionPolicy.protocol_only()

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "specs" / "vectors" / SUBDIRECTORY
NOW = 1_900_000_000
SCOPE = task_scope(1)
AUTHORITY = authority_secret("root")
AUTHORITY_PK = ed25519_public_key(AUTHORITY)
PINNED = PinnedAuthority(AUTHORITY_PK, SCOPE, NOW)
N, LENGTH, BITS = 4, 6, 24
TARGET = 1
TARGET_INPUT = np.array([5, -3, 1000, 0, 77, -65536], dtype=np.int64)


def _server_identity(u: int) -> bytes:
    """Identity secrets the malicious server generated itself."""
    return DeterministicRandom(b"malicious-server/" + u.to_bytes(4, "big")).random_bytes(32)


def _config(participants: tuple[int, ...], keys: dict[int, bytes]) -> SessionConfig:
    return SessionConfig(
        participants=participants,
        threshold=len(participants) // 2 + 1,
        vector_length=LENGTH,
        bit_width=BITS,
        nonce=bytes(32),
        mode=Mode.ACTIVE,
        identity_keys=tuple(ed25519_public_key(keys[u]) for u in participants),
    )


def _honest_roster(ids: range | tuple[int, ...] = range(1, N + 1), **kw: Any) -> bytes:
    """The roster the authority signed for task 1: the real clients' identity keys."""
    window = {"not_before": NOW - 60, "not_after": NOW + 3600} | kw
    scope = window.pop("scope", SCOPE)
    secret = window.pop("secret", AUTHORITY)
    return sign_roster(
        secret,
        scope,
        1,
        window["not_before"],
        window["not_after"],
        [(u, ed25519_public_key(identity_secret(u))) for u in ids],
    ).encode()


def _attack(
    config: SessionConfig,
    server_keys: dict[int, bytes],
    *,
    roster: bytes | None,
    authority: PinnedAuthority | None,
    identity: bool = True,
) -> tuple[list[bytes], np.ndarray | None]:
    """Run the target against the malicious server; return (what the target sent, what
    the server reconstructed as the target's input, None if it got nothing)."""
    sent: list[bytes] = []
    try:
        target = ClientSession(
            config,
            TARGET,
            TARGET_INPUT,
            rng=DeterministicRandom(b"target"),
            identity_key=identity_secret(TARGET) if identity else None,
            roster=roster,
            authority=authority,
            policy=PROTOCOL_ONLY,
        )
    except CertificationError:
        return sent, None
    # The server runs every other participant itself, with identity keys it holds
    # and zero inputs, so the aggregate is the target's input.
    sybils = {
        u: ClientSession(
            config,
            u,
            np.zeros(LENGTH, dtype=np.int64),
            rng=DeterministicRandom(b"sybil" + u.to_bytes(4, "big")),
            identity_key=server_keys[u] or None,
            policy=PROTOCOL_ONLY,
        )
        for u in config.participants
        if u != TARGET
    }
    clients: dict[int, ClientSession] = {TARGET: target, **sybils}
    server = ServerSession(config)
    replies = {u: c.start() for u, c in clients.items()}
    while server.round not in (Round.COMPLETED, Round.ABORTED):
        sent.extend(data for u, data in replies.items() if u == TARGET)
        for data in replies.values():
            server.receive(data)
        out = server.advance()
        replies = {}
        for u, data in out.items():
            reply = clients[u].receive(data)
            if reply is not None:
                replies[u] = reply
    if server.round is not Round.COMPLETED:
        return sent, None
    return sent, from_modular(server.result.aggregate, BITS)


def _substituted() -> tuple[SessionConfig, dict[int, bytes]]:
    """Real participants 1..N; the server swapped in its own keys for 2..N."""
    keys = {u: _server_identity(u) for u in range(2, N + 1)}
    return _config(tuple(range(1, N + 1)), {TARGET: identity_secret(TARGET), **keys}), keys


def _invented() -> tuple[SessionConfig, dict[int, bytes]]:
    """The target plus participants 900.. that no authority ever certified."""
    keys = {u: _server_identity(u) for u in (900, 901, 902)}
    return _config((TARGET, 900, 901, 902), {TARGET: identity_secret(TARGET), **keys}), keys


# -- the attacks, with and without the check --------------------------------------------


@pytest.mark.parametrize("scenario", [_substituted, _invented], ids=["substituted", "invented"])
def test_without_a_pinned_authority_the_server_recovers_the_input(scenario: Any) -> None:
    config, keys = scenario()
    sent, recovered = _attack(config, keys, roster=None, authority=None)
    assert recovered is not None
    assert recovered.tolist() == TARGET_INPUT.tolist()  # exact input, zero colluders
    assert sent  # the target sent its adverts, shares and masked input


@pytest.mark.parametrize(
    ("scenario", "roster", "fault"),
    [
        (_substituted, _honest_roster(), CertificationFault.KEY_MISMATCH),
        (_invented, _honest_roster(), CertificationFault.PARTICIPANT_MISSING),
        # The server signs a roster of its own keys: another authority.
        (
            _substituted,
            sign_roster(
                _server_identity(7),
                SCOPE,
                1,
                NOW - 60,
                NOW + 3600,
                [(1, ed25519_public_key(identity_secret(1)))]
                + [(u, ed25519_public_key(_server_identity(u))) for u in range(2, N + 1)],
            ).encode(),
            CertificationFault.WRONG_AUTHORITY,
        ),
        # An old genuine roster of another task that certified server-held keys.
        (
            _substituted,
            sign_roster(
                AUTHORITY,
                task_scope(2),
                1,
                NOW - 60,
                NOW + 3600,
                [(1, ed25519_public_key(identity_secret(1)))]
                + [(u, ed25519_public_key(_server_identity(u))) for u in range(2, N + 1)],
            ).encode(),
            CertificationFault.WRONG_SCOPE,
        ),
        (_substituted, None, CertificationFault.MISSING_ROSTER),
    ],
    ids=["substituted-keys", "invented-participants", "other-authority", "other-scope", "none"],
)
def test_a_pinned_client_refuses_before_sending_anything(
    scenario: Any, roster: bytes | None, fault: CertificationFault
) -> None:
    config, keys = scenario()
    with pytest.raises(CertificationError) as info:
        ClientSession(
            config,
            TARGET,
            TARGET_INPUT,
            identity_key=identity_secret(TARGET),
            roster=roster,
            authority=PINNED,
            policy=PROTOCOL_ONLY,
        )
    assert info.value.fault is fault
    sent, recovered = _attack(config, keys, roster=roster, authority=PINNED)
    # Nothing left the target: no advert, no share ciphertext, no masked input,
    # so the server holds nothing it could open and reconstructs nothing.
    assert sent == []
    assert recovered is None


def _downgraded() -> tuple[SessionConfig, dict[int, bytes]]:
    """A semi-honest session: no identity keys, unsigned round-0 keys, invented peers."""
    config = SessionConfig(
        participants=(TARGET, 900, 901, 902),
        threshold=3,
        vector_length=LENGTH,
        bit_width=BITS,
        nonce=bytes(32),
    )
    return config, {u: b"" for u in config.participants}


def test_a_pinned_client_refuses_a_downgrade_to_semi_honest() -> None:
    config, keys = _downgraded()
    sent, recovered = _attack(config, keys, roster=None, authority=None, identity=False)
    # Without the rule the server simply proposes a semi-honest session.
    assert recovered is not None and recovered.tolist() == TARGET_INPUT.tolist()
    assert sent
    with pytest.raises(CertificationError) as info:
        ClientSession(
            config,
            TARGET,
            TARGET_INPUT,
            roster=_honest_roster(),
            authority=PINNED,
            policy=PROTOCOL_ONLY,
        )
    assert info.value.fault is CertificationFault.NOT_ACTIVE
    sent, recovered = _attack(config, keys, roster=_honest_roster(), authority=PINNED)
    assert (sent, recovered) == ([], None)


def test_a_forged_signature_under_the_pinned_key_is_refused() -> None:
    config, keys = _substituted()
    forged = Roster.decode(
        sign_roster(
            _server_identity(7),
            SCOPE,
            1,
            NOW - 60,
            NOW + 3600,
            [(u, config.identity_key(u)) for u in config.participants],
        ).encode()
    )
    relabelled = Roster(
        AUTHORITY_PK, SCOPE, 1, NOW - 60, NOW + 3600, forged.entries, forged.signature
    ).encode()
    sent, recovered = _attack(config, keys, roster=relabelled, authority=PINNED)
    assert (sent, recovered) == ([], None)
    with pytest.raises(CertificationError) as info:
        verify_roster(relabelled, PINNED)
    assert info.value.fault is CertificationFault.BAD_SIGNATURE


def test_an_expired_roster_is_refused() -> None:
    config, keys = _substituted()
    old = _honest_roster(not_before=NOW - 7200, not_after=NOW - 3600)
    with pytest.raises(CertificationError) as info:
        verify_roster(old, PINNED)
    assert info.value.fault is CertificationFault.EXPIRED
    assert _attack(config, keys, roster=old, authority=PINNED) == ([], None)


def test_an_honest_certified_session_completes_exactly() -> None:
    config = _config(tuple(range(1, N + 1)), {u: identity_secret(u) for u in range(1, N + 1)})
    roster = _honest_roster()
    inputs = {u: TARGET_INPUT * u for u in config.participants}
    clients = {
        u: ClientSession(
            config,
            u,
            inputs[u],
            rng=DeterministicRandom(b"honest" + bytes([u])),
            identity_key=identity_secret(u),
            roster=roster,
            authority=PINNED,
            policy=PROTOCOL_ONLY,
        )
        for u in config.participants
    }
    server = ServerSession(config)
    replies = {u: c.start() for u, c in clients.items()}
    while server.round not in (Round.COMPLETED, Round.ABORTED):
        for data in replies.values():
            server.receive(data)
        out = server.advance()
        replies = {u: r for u, d in out.items() if (r := clients[u].receive(d)) is not None}
    assert server.round is Round.COMPLETED
    assert from_modular(server.result.aggregate, BITS).tolist() == (TARGET_INPUT * 10).tolist()


def test_a_larger_roster_certifies_a_subset_of_participants() -> None:
    """A cohort roster may list more clients than a session selects."""
    config = _config((1, 2, 3), {u: identity_secret(u) for u in (1, 2, 3)})
    ClientSession(
        config,
        1,
        np.zeros(LENGTH, dtype=np.int64),
        identity_key=identity_secret(1),
        roster=_honest_roster(range(1, 9)),
        authority=PINNED,
        policy=PROTOCOL_ONLY,
    )


def test_a_roster_without_a_pinned_authority_is_a_local_error() -> None:
    config = _config((1, 2, 3), {u: identity_secret(u) for u in (1, 2, 3)})
    with pytest.raises(ConfigError):
        ClientSession(
            config,
            1,
            np.zeros(LENGTH, dtype=np.int64),
            identity_key=identity_secret(1),
            roster=_honest_roster(),
            policy=PROTOCOL_ONLY,
        )


# -- formats ----------------------------------------------------------------------------------


def test_roster_and_certificate_round_trip() -> None:
    roster = Roster.decode(_honest_roster())
    assert roster.ids == (1, 2, 3, 4)
    assert roster.key_of(3) == ed25519_public_key(identity_secret(3))
    assert roster.key_of(5) is None
    assert Roster.decode(roster.encode()) == roster
    cert = issue_certificate(AUTHORITY, 3, roster.key_of(3) or b"", SCOPE, NOW - 1, NOW + 1)
    again = IdentityCertificate.decode(cert.encode())
    assert again == cert
    again.verify(AUTHORITY_PK, now=NOW, scope=SCOPE)
    with pytest.raises(CertificationError) as info:
        again.verify(AUTHORITY_PK, now=NOW + 1, scope=SCOPE)
    assert info.value.fault is CertificationFault.EXPIRED


def test_decoders_give_typed_errors_on_any_corruption() -> None:
    rng = np.random.default_rng(11)  # test data only
    for good in (
        _honest_roster(),
        issue_certificate(
            AUTHORITY, 2, ed25519_public_key(identity_secret(2)), SCOPE, 0, NOW
        ).encode(),
    ):
        for i in range(300):
            data = bytearray(good)
            if i % 3 == 0:
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            elif i % 3 == 1:
                data = data[: int(rng.integers(len(data)))]
            else:
                data += bytes(rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8))
            for parse in (Roster.decode, IdentityCertificate.decode):
                try:
                    parsed = parse(bytes(data))
                except CertificationError as exc:
                    assert exc.fault in set(CertificationFault)
                else:
                    # A surviving bit flip lands in a signed field or the signature:
                    # the signature check then fails.
                    assert bytes(data) != good
                    with pytest.raises(CertificationError):
                        if isinstance(parsed, Roster):
                            verify_roster(parsed, PINNED)
                        else:
                            parsed.verify(AUTHORITY_PK, now=1, scope=SCOPE)


def test_size_bounds_are_enforced_before_parsing() -> None:
    with pytest.raises(CertificationError) as info:
        Roster.decode(b"\x88" + bytes(44 * MAX_ROSTER_ENTRIES + 600))
    assert info.value.fault is CertificationFault.MALFORMED
    with pytest.raises(CertificationError):
        IdentityCertificate.decode(bytes(600))


@pytest.mark.parametrize("scope", ["", "task 1", "tâsk/1", "x" * 129, 7])
def test_scopes_are_printable_ascii(scope: Any) -> None:
    with pytest.raises(CertificationError):
        sign_roster(AUTHORITY, scope, 1, 0, 1, [(1, ed25519_public_key(identity_secret(1)))])


# -- strict Ed25519 ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ed25519_cases(), ids=lambda c: c.name)
def test_strict_ed25519_refuses_each_form(case: Any) -> None:
    assert ed25519_check(case.public, case.signature, case.message) is case.rejection
    assert ed25519_verify(case.public, case.signature, case.message) is (case.rejection is None)


def test_openssl_alone_accepts_signatures_that_strict_verification_refuses() -> None:
    """Why the pre-checks are explicit: the small-order forgeries verify in OpenSSL."""
    lenient = []
    for case in ed25519_cases():
        try:
            Ed25519PublicKey.from_public_bytes(case.public).verify(case.signature, case.message)
        except Exception:  # any refusal counts
            continue
        lenient.append(case.name)
    assert "public_key_small_order" in lenient and "r_small_order" in lenient
    for name in lenient:
        (case,) = [c for c in ed25519_cases() if c.name == name]
        assert (case.rejection is None) == (name == "valid")
    # The identity-key forgery signs ANY message: strict verification refuses it.
    (weak,) = [c for c in ed25519_cases() if c.name == "public_key_small_order"]
    assert ed25519_check(weak.public, weak.signature, weak.message) is (
        Ed25519Rejection.PUBLIC_KEY_SMALL_ORDER
    )


# -- vectors -------------------------------------------------------------------------------------


def _on_disk() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(VECTORS.glob("*.json"))}


def test_authority_vectors_are_committed_and_current() -> None:
    from protocol.authority_vectors import _dumps

    generated = generate_authority_vectors()
    on_disk = {p.name: p.read_bytes() for p in sorted(VECTORS.glob("*.json"))}
    assert set(on_disk) == set(generated)
    for name, vector in generated.items():
        assert on_disk[name] == _dumps(vector), name


@pytest.mark.parametrize("name", sorted(p.name for p in VECTORS.glob("*.json")))
def test_authority_vector_replays(name: str) -> None:
    check_authority_vector(_on_disk()[name])


def test_a_wrong_expectation_in_a_vector_fails() -> None:
    vector = _on_disk()["rosters.json"]
    vector["cases"][0]["fault"] = "expired"
    with pytest.raises(AssertionError):
        check_authority_vector(vector)
    vector = _on_disk()["ed25519_strict.json"]
    vector["cases"][-1]["rejection"] = None
    with pytest.raises(AssertionError):
        check_authority_vector(vector)


def test_roster_vectors_cover_every_fault() -> None:
    faults = {c["fault"] for c in _on_disk()["rosters.json"]["cases"]}
    faults |= {c["fault"] for c in _on_disk()["certificates.json"]["cases"]}
    # Not expressible as a roster case: no roster at all, or a semi-honest session.
    want = set(CertificationFault) - {
        CertificationFault.MISSING_ROSTER,
        CertificationFault.NOT_ACTIVE,
    }
    assert {f for f in faults if f} == {f.value for f in want}


_KEY = ed25519_public_key(b"k" * 32)


@pytest.mark.parametrize(
    "entries",
    [
        [1, 2],
        [[1]],
        [["a", _KEY]],
        [[True, _KEY]],
        [[1, _KEY, 3]],
        [],
        [[0, _KEY]],
        [[1, b"x"]],
        [[2**40, _KEY]],
        5,
        [[1, (1).to_bytes(32, "little")]],
    ],
)
def test_hostile_roster_entries_are_malformed_not_a_crash(entries: Any) -> None:
    from protocol import _cbor

    fields = ["secagg-roster-v1", AUTHORITY_PK, SCOPE, 1, 0, 5, entries, bytes(64)]
    with pytest.raises(CertificationError) as info:
        Roster.decode(_cbor.dumps(fields))
    assert info.value.fault is CertificationFault.MALFORMED

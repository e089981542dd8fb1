"""Test vectors of key validation and of the task authority, in ``specs/vectors/authority/``.

Four kinds of file (``"format"`` names which; see ``specs/authority-v1.md`` §7):

* ``ed25519_strict.json``: one signature per rule of secagg-v1.md §6.6,
  each with the :class:`~protocol.crypto.Ed25519Rejection` it must get;
* ``x25519_keys.json``: X25519 public keys and whether §6.5 accepts them;
* ``certificates.json`` and ``rosters.json``: encodings signed by a
  deterministic authority, the pinned key, scope and time to check them
  with, and the expected :class:`~protocol.authority.CertificationFault`
  (``null``: accepted); the roster cases also carry the active-mode session
  configuration they must certify;
* ``bad_non_canonical_key*.json``: transcript vectors in the format of
  ``protocol/testvectors.py`` (server and client refuse an X25519 key with
  bit 255 set).

``secagg vectors write|check DIR`` writes and checks them in ``DIR/authority``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from protocol import _cbor
from protocol.authority import (
    LABEL_CERTIFICATE,
    LABEL_ROSTER,
    ROSTER_FORMAT,
    CertificationError,
    IdentityCertificate,
    PinnedAuthority,
    check_session_roster,
    issue_certificate,
    sign_roster,
    signing_input,
    verify_roster,
)
from protocol.config import SessionConfig
from protocol.crypto import (
    FIELD_PRIME,
    DeterministicRandom,
    ed25519_check,
    ed25519_public_key,
    ed25519_sign,
    x25519_is_canonical_public,
    x25519_is_valid_public,
)
from protocol.crypto.ed25519_cases import ed25519_cases
from protocol.errors import AbortReason
from protocol.messages import AdvertisedKeys, AdvertiseKeys, KeyDirectory
from protocol.simulate import identity_secret, make_config
from protocol.testvectors import (
    _R1,
    _Bad,
    _decode,
    _negative,
    _Recorder,
    _tamper,
    check_vector,
    dumps_vector,
)

SUBDIRECTORY: Final = "authority"
FORMAT_PREFIX: Final = "secagg-v1-authority-"
Vector = dict[str, Any]

_NOW: Final = 1_800_000_000
_SCOPE: Final = "task/1"


def authority_secret(label: str) -> bytes:
    """The deterministic Ed25519 secret of a test authority (vectors only)."""
    return DeterministicRandom(b"secagg-v1/test-authority/" + label.encode()).random_bytes(32)


def _vector(kind: str, description: str, cases: list[dict[str, Any]]) -> Vector:
    return {
        "format": FORMAT_PREFIX + kind,
        "version": 1,
        "description": description,
        "cases": cases,
    }


# -- signatures and keys ------------------------------------------------------------


def _ed25519() -> Vector:
    cases = [
        {
            "name": c.name,
            "description": c.description,
            "public_key": c.public.hex(),
            "signature": c.signature.hex(),
            "message": c.message.hex(),
            "rejection": c.rejection.value if c.rejection else None,
        }
        for c in ed25519_cases()
    ]
    return _vector("ed25519", "Strict Ed25519 verification, secagg-v1.md §6.6.", cases)


def _x25519() -> Vector:
    p = FIELD_PRIME
    good = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    raw: list[tuple[str, bytes, str | None]] = [
        ("rfc7748_bob", good, None),
        ("bit_255_set", good[:31] + bytes([good[31] | 0x80]), "not_canonical"),
        ("u_is_p", p.to_bytes(32, "little"), "not_canonical"),
        ("u_is_p_plus_9", (p + 9).to_bytes(32, "little"), "not_canonical"),
        ("all_ones", b"\xff" * 32, "not_canonical"),
        ("zero", bytes(32), "small_order"),
        ("one", (1).to_bytes(32, "little"), "small_order"),
        ("p_minus_1", (p - 1).to_bytes(32, "little"), "small_order"),
        ("p_minus_2", (p - 2).to_bytes(32, "little"), None),
        ("nine", (9).to_bytes(32, "little"), None),
    ]
    cases = []
    for name, key, why in raw:
        assert x25519_is_valid_public(key) == (why is None), name
        cases.append({"name": name, "public_key": key.hex(), "rejection": why})
    return _vector("x25519", "X25519 public-key validation, secagg-v1.md §6.5.", cases)


# -- transcript vectors: a non-canonical X25519 key --------------------------------


def _alias(key: bytes) -> bytes:
    """The same X25519 key with bit 255 set: X25519 computes the same function of it."""
    return key[:31] + bytes([key[31] | 0x80])


def _non_canonical_server(r: _Recorder) -> None:
    r.start_all()
    r.send(1)
    keys: AdvertisedKeys = _decode(r.pending[2], AdvertiseKeys).keys
    bad = dataclasses.replace(keys, mask_public_key=_alias(keys.mask_public_key))
    r.offend_server(2, AdvertiseKeys(r.sid, bad).encode(), AbortReason.INVALID_PUBLIC_KEY)


def _non_canonical_client(r: _Recorder) -> None:
    out = r.run_to(_R1)
    directory: KeyDirectory = _decode(out[1], KeyDirectory)
    entries = list(directory.entries)
    entries[3] = dataclasses.replace(entries[3], mask_public_key=_alias(entries[2].mask_public_key))
    r.offend_client(1, _tamper(out[1], entries=tuple(entries)), AbortReason.INVALID_PUBLIC_KEY)


_TRANSCRIPTS: Final = (
    _Bad(
        "non_canonical_key_server",
        "Client 2's round-0 message advertises its mask key with bit 255 set (the same "
        "X25519 function, a second encoding): the server refuses it.",
        _non_canonical_server,
    ),
    _Bad(
        "non_canonical_key",
        "The key directory sent to client 1 gives client 4, as mask key, client 3's mask key "
        "with bit 255 set: byte-wise distinct, the same key to X25519. Client 1 aborts before "
        "the duplicate check could be fooled.",
        _non_canonical_client,
    ),
)


# -- certificates and rosters -------------------------------------------------------


def _signed(secret: bytes, label: bytes, fields: list[Any]) -> bytes:
    """Sign arbitrary fields as the authority would: lets a vector sign a bad body."""
    signature = ed25519_sign(secret, signing_input(label, _cbor.dumps(fields)))
    return _cbor.dumps([*fields, signature])


def _flip(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _certificates() -> Vector:
    root, other = authority_secret("root"), authority_secret("other")
    pinned = ed25519_public_key(root)
    identity = ed25519_public_key(identity_secret(7))
    good = issue_certificate(root, 7, identity, _SCOPE, _NOW - 10, _NOW + 3600).encode()
    fields = IdentityCertificate.decode(good)
    raw: list[tuple[str, str, bytes, str | None]] = [
        ("valid", "A certificate for client 7 in task/1.", good, None),
        ("bad_signature", "The last signature bit flipped.", _flip(good), "bad_signature"),
        (
            "wrong_authority",
            "Issued by another authority.",
            issue_certificate(other, 7, identity, _SCOPE, _NOW - 10, _NOW + 3600).encode(),
            "wrong_authority",
        ),
        (
            "wrong_scope",
            "Issued for task/2.",
            issue_certificate(root, 7, identity, "task/2", _NOW - 10, _NOW + 3600).encode(),
            "wrong_scope",
        ),
        (
            "expired",
            "Valid until one second before now.",
            issue_certificate(root, 7, identity, _SCOPE, _NOW - 100, _NOW).encode(),
            "expired",
        ),
        (
            "not_canonical",
            "The client id written with a two-byte head (0x19 0x0007).",
            good.replace(b"\x07\x58\x20", b"\x19\x00\x07\x58\x20", 1),
            "malformed",
        ),
        (
            "small_order_identity_key",
            "A signed certificate of the identity point as identity key.",
            _signed(
                root,
                LABEL_CERTIFICATE,
                [*fields._fields()[:3], (1).to_bytes(32, "little"), *fields._fields()[4:]],
            ),
            "malformed",
        ),
    ]
    cases = [
        {
            "name": name,
            "description": text,
            "certificate": data.hex(),
            "authority_key": pinned.hex(),
            "scope": _SCOPE,
            "now": _NOW,
            "fault": fault,
        }
        for name, text, data, fault in raw
    ]
    return _vector("certificates", "Identity certificates, authority-v1.md §4.1 and §5.1.", cases)


def _roster_fields(secret: bytes, entries: list[list[Any]], *, scope: str = _SCOPE) -> list[Any]:
    return [ROSTER_FORMAT, ed25519_public_key(secret), scope, 3, _NOW - 10, _NOW + 3600, entries]


def _rosters() -> Vector:
    root, other = authority_secret("root"), authority_secret("other")
    pinned = ed25519_public_key(root)
    config = make_config(4, 3, mode="active", seed=b"secagg-v1/authority-vector")
    certified = list(zip(config.participants, config.identity_keys, strict=True))
    stranger = ed25519_public_key(identity_secret(99))
    entries = [[i, k] for i, k in certified]

    def roster(secret: bytes = root, rows: list[list[Any]] | None = None, **kw: Any) -> bytes:
        return _signed(secret, LABEL_ROSTER, _roster_fields(secret, rows or entries, **kw))

    good = sign_roster(root, _SCOPE, 3, _NOW - 10, _NOW + 3600, certified).encode()
    assert good == roster()
    raw: list[tuple[str, str, bytes, int, str | None]] = [
        ("valid", "Certifies the 4 participants with their configured keys.", good, _NOW, None),
        ("bad_signature", "The last signature bit flipped.", _flip(good), _NOW, "bad_signature"),
        ("wrong_authority", "Signed by another authority.", roster(other), _NOW, "wrong_authority"),
        (
            "wrong_scope",
            "A roster for task/2 (an old roster of another task).",
            roster(scope="task/2"),
            _NOW,
            "wrong_scope",
        ),
        ("expired", "Checked at its not-after time.", good, _NOW + 3600, "expired"),
        ("not_yet_valid", "Checked before its not-before time.", good, _NOW - 11, "not_yet_valid"),
        (
            "stale_serial",
            "Serial 3, checked by a client that already accepted serial 4.",
            good,
            _NOW,
            "stale_serial",
        ),
        (
            "duplicate_ids",
            "Client 2 listed twice (with two keys).",
            roster(rows=[*entries[:2], [2, stranger], *entries[2:]]),
            _NOW,
            "duplicate_id",
        ),
        (
            "duplicate_keys",
            "Clients 3 and 4 share client 3's key.",
            roster(rows=[*entries[:3], [4, entries[2][1]]]),
            _NOW,
            "duplicate_key",
        ),
        (
            "unsorted",
            "Entries 3 and 4 swapped.",
            roster(rows=[*entries[:2], entries[3], entries[2]]),
            _NOW,
            "unsorted",
        ),
        (
            "participant_missing",
            "Participant 4 is not on the roster (an invented participant).",
            roster(rows=entries[:3]),
            _NOW,
            "participant_missing",
        ),
        (
            "key_mismatch",
            "The roster certifies another key for participant 3 (a substituted key "
            "in the configuration).",
            roster(rows=[*entries[:2], [3, stranger], entries[3]]),
            _NOW,
            "key_mismatch",
        ),
        (
            "own_key_mismatch",
            "The roster certifies another key for the checking client 1.",
            roster(rows=[[1, stranger], *entries[1:]]),
            _NOW,
            "own_key_mismatch",
        ),
        (
            "not_canonical",
            "The serial written with a one-byte head (0x18 0x03).",
            good.replace(b"\x66task/1\x03", b"\x66task/1\x18\x03", 1),
            _NOW,
            "malformed",
        ),
    ]
    cases = [
        {
            "name": name,
            "description": text,
            "roster": data.hex(),
            "authority_key": pinned.hex(),
            "scope": _SCOPE,
            "now": now,
            "min_serial": 4 if name == "stale_serial" else 0,
            "config": config.encode().hex(),
            "client_id": 1,
            "own_identity_key": config.identity_key(1).hex(),
            "fault": fault,
        }
        for name, text, data, now, fault in raw
    ]
    return _vector("rosters", "Signed rosters, authority-v1.md §4.2 and §5.2.", cases)


# -- generation and checking ---------------------------------------------------------


def generate_authority_vectors() -> dict[str, Vector]:
    """Every vector of this module, keyed by file name (relative to ``authority/``)."""
    out: dict[str, Vector] = {
        "ed25519_strict.json": _ed25519(),
        "x25519_keys.json": _x25519(),
        "certificates.json": _certificates(),
        "rosters.json": _rosters(),
    }
    for spec in _TRANSCRIPTS:
        vector = _negative(spec)
        out[f"{vector['name']}.json"] = vector
    return out


def _check_cases(vector: Mapping[str, Any], run: Callable[[Mapping[str, Any]], str | None]) -> None:
    for case in vector["cases"]:
        got = run(case)
        if got != case.get("fault", case.get("rejection")):
            raise AssertionError(f"case {case['name']}: got {got!r}")


def _check_certificate(case: Mapping[str, Any]) -> str | None:
    try:
        cert = IdentityCertificate.decode(bytes.fromhex(case["certificate"]))
        cert.verify(bytes.fromhex(case["authority_key"]), now=case["now"], scope=case["scope"])
    except CertificationError as exc:
        return exc.fault.value
    return None


def _check_roster(case: Mapping[str, Any]) -> str | None:
    try:
        pinned = PinnedAuthority(
            bytes.fromhex(case["authority_key"]), case["scope"], case["now"], case["min_serial"]
        )
        roster = verify_roster(bytes.fromhex(case["roster"]), pinned)
        config = SessionConfig.decode(bytes.fromhex(case["config"]))
        check_session_roster(
            roster, config, case["client_id"], bytes.fromhex(case["own_identity_key"])
        )
    except CertificationError as exc:
        return exc.fault.value
    return None


def _check_ed25519(case: Mapping[str, Any]) -> str | None:
    got = ed25519_check(
        bytes.fromhex(case["public_key"]),
        bytes.fromhex(case["signature"]),
        bytes.fromhex(case["message"]),
    )
    return got.value if got else None


def _check_x25519(case: Mapping[str, Any]) -> str | None:
    key = bytes.fromhex(case["public_key"])
    if x25519_is_valid_public(key):
        return None
    return "small_order" if x25519_is_canonical_public(key) else "not_canonical"


_CHECKERS: Final[dict[str, Callable[[Mapping[str, Any]], str | None]]] = {
    FORMAT_PREFIX + "ed25519": _check_ed25519,
    FORMAT_PREFIX + "x25519": _check_x25519,
    FORMAT_PREFIX + "certificates": _check_certificate,
    FORMAT_PREFIX + "rosters": _check_roster,
}


def check_authority_vector(vector: Mapping[str, Any]) -> None:
    """Replay one vector of this module; raises on the first disagreement."""
    checker = _CHECKERS.get(str(vector.get("format")))
    if checker is None:
        check_vector(vector)  # a transcript vector
    else:
        _check_cases(vector, checker)


def _dumps(vector: Vector) -> bytes:
    return dumps_vector(vector).encode()


def write_authority_vectors(directory: Path) -> int:
    """Write every vector into ``directory/authority``; returns how many."""
    target = directory / SUBDIRECTORY
    target.mkdir(parents=True, exist_ok=True)
    vectors = generate_authority_vectors()
    for name, vector in sorted(vectors.items()):
        (target / name).write_bytes(_dumps(vector))
    return len(vectors)


def check_authority_vectors(directory: Path, *, replay_only: bool = False) -> list[str]:
    """Problems found in ``directory/authority`` (empty: every file matches and replays)."""
    target = directory / SUBDIRECTORY
    on_disk = {p.name: p.read_bytes() for p in sorted(target.glob("*.json"))}
    problems: list[str] = []
    if not replay_only:
        generated = {n: _dumps(v) for n, v in generate_authority_vectors().items()}
        problems += [f"missing: authority/{n}" for n in sorted(generated.keys() - on_disk.keys())]
        problems += [f"extra: authority/{n}" for n in sorted(on_disk.keys() - generated.keys())]
        problems += [
            f"differs: authority/{n}"
            for n in sorted(generated.keys() & on_disk.keys())
            if generated[n] != on_disk[n]
        ]
    for name, data in on_disk.items():
        try:
            check_authority_vector(json.loads(data))
        except Exception as exc:  # report every file, whatever is wrong with it
            problems.append(f"replay failed: authority/{name}: {exc}")
    return problems

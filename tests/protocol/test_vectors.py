"""The committed transcript test vectors (specs/vectors): replayed, regenerated, and
shown able to fail."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from protocol import AbortReason
from protocol.messages import KeyDirectory, ShareBundle, decode_message
from protocol.testvectors import (
    DECODING_FORMAT,
    FORMAT,
    INVARIANT_REASONS,
    PARAMETER_FORMAT,
    VectorMismatch,
    check_vector,
    dumps_vector,
    generate_all,
    replay_vector,
)
from secagg.cli import main as cli_main

VECTOR_DIR = Path(__file__).resolve().parents[2] / "specs" / "vectors"
FILES = sorted(VECTOR_DIR.glob("*.json"))

# The invariants the brief lists; each must have at least one bad_ vector.
REQUIRED_REASONS = {
    AbortReason.OWN_KEYS_NOT_ECHOED,
    AbortReason.DUPLICATE_KEYS,
    AbortReason.INVALID_PUBLIC_KEY,
    AbortReason.NOT_A_NEIGHBOUR,
    AbortReason.BAD_SIGNATURE,
    AbortReason.WRONG_SESSION,
    AbortReason.WRONG_RECIPIENT,
    AbortReason.WRONG_ROUND,  # replayed / out-of-round server message
    AbortReason.SHARE_DECRYPTION_FAILED,
    AbortReason.SURVIVORS_DROPPED_OVERLAP,
    AbortReason.SECOND_UNMASK_REQUEST,
    AbortReason.INCONSISTENT_SURVIVORS,  # unmask survivors differ from the signed set
    AbortReason.BELOW_THRESHOLD,  # too few signatures, below-threshold directory
    AbortReason.REPLAYED_MESSAGE,
    AbortReason.WRONG_VECTOR_LENGTH,
    AbortReason.WRONG_SENDER,
    AbortReason.MALFORMED_MESSAGE,
}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def generated() -> dict[str, dict[str, Any]]:
    return generate_all()


@pytest.fixture(scope="module")
def on_disk() -> dict[str, dict[str, Any]]:
    return {p.name: _load(p) for p in FILES}


def test_vectors_are_committed() -> None:
    assert len(FILES) >= 20, f"run `make vectors`: {VECTOR_DIR} holds {len(FILES)} vectors"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_replay(path: Path) -> None:
    vector = _load(path)
    assert vector["name"] + ".json" == path.name
    if path.name == "decoding.json":
        assert vector["format"] == DECODING_FORMAT
    elif path.name == "parameters.json":
        assert vector["format"] == PARAMETER_FORMAT
    else:
        assert vector["format"] == FORMAT
        assert vector["success"] is not path.name.startswith("bad_")
    check_vector(vector)


def test_regeneration_equals_the_committed_files(generated: dict[str, dict[str, Any]]) -> None:
    assert sorted(generated) == [p.name for p in FILES], "run `make vectors`"
    for path in FILES:
        assert path.read_bytes() == dumps_vector(generated[path.name]).encode(), (
            f"{path.name} drifted from the generator; run `make vectors` and review the diff"
        )


def test_every_invariant_has_a_bad_vector(on_disk: dict[str, dict[str, Any]]) -> None:
    assert INVARIANT_REASONS == REQUIRED_REASONS
    covered: dict[AbortReason, list[str]] = {}
    for name, vector in on_disk.items():
        if name.startswith("bad_"):
            covered.setdefault(AbortReason(vector["abort_reason"]), []).append(name)
    missing = REQUIRED_REASONS - covered.keys()
    assert not missing, f"no bad_ vector for {sorted(r.value for r in missing)}"
    # Both parties are exercised.
    parties = {v["party"].split()[0] for n, v in on_disk.items() if n.startswith("bad_")}
    assert parties == {"client", "server"}


def _transcripts(on_disk: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: v for n, v in on_disk.items() if v["format"] == FORMAT}


def test_positive_vectors_cover_the_configurations(on_disk: dict[str, dict[str, Any]]) -> None:
    good = [v for n, v in _transcripts(on_disk).items() if not n.startswith("bad_")]
    drop_rounds = {r for v in good for r in v["dropouts"].values()}
    assert {"R1_SHARE_KEYS", "R2_MASKED_INPUT_COLLECTION", "R3_CONSISTENCY_CHECK"} <= drop_rounds
    assert "R4_UNMASKING" in drop_rounds
    assert any(not v["dropouts"] for v in good)
    assert any(v["config"]["graph"] == "harary" and v["dropouts"] for v in good)
    assert any(v["config"]["mode"] == "active" for v in good)
    assert any(v["config"]["bit_width"] % 8 for v in good)
    assert any("encoding" in v for v in good)
    for v in good:
        assert 4 <= v["config"]["vector_length"] <= 16
        assert 4 <= len(v["config"]["participants"]) <= 10


def _pruned(vector: dict[str, Any]) -> set[int]:
    """Participants that neither dropped nor ended in the result: the server pruned them."""
    if "result" not in vector:
        return set()
    res = vector["result"]
    return (
        set(vector["config"]["participants"])
        - {int(u) for u in vector["dropouts"]}
        - set(res["survivors"])
        - set(res["dropped"])
    )


def test_the_gaps_an_implementer_found_are_covered(on_disk: dict[str, dict[str, Any]]) -> None:
    good = {n: v for n, v in _transcripts(on_disk).items() if not n.startswith("bad_")}
    # Pruning removes someone, after round 0 and after round 1.
    pruning = [v for v in good.values() if _pruned(v)]
    assert pruning
    ends = {s["state"] for v in pruning for u, s in v["final_states"].items()}
    assert {"R0_ADVERTISE_KEYS", "R1_SHARE_KEYS"} <= ends
    # Transcripts with Abort messages: one reaching waiting clients, one ignored by
    # completed clients; reconstruction_failed is covered.
    aborts = [v for v in good.values() if "server_abort" in v]
    assert {v["server_abort"]["abort_reason"] for v in aborts} >= {
        "below_threshold",
        "reconstruction_failed",
    }
    for v in aborts:
        assert any(step["type"] == "ABORT" for step in v["transcript"])
    states = {s["state"] for v in aborts for s in v["final_states"].values()}
    assert {"ABORTED", "COMPLETED"} <= states
    # b > 32, and ids needing every CBOR head size.
    assert {33, 64} <= {v["config"]["bit_width"] for v in good.values()}
    ids = {u for v in good.values() for u in v["config"]["participants"]}
    assert any(24 <= u < 256 for u in ids) and any(256 <= u < 65536 for u in ids)
    assert any(u >= 65536 for u in ids) and (1 << 32) - 1 in ids
    # Odd-degree Harary, active Harary, several active positives.
    harary = [v["config"] for v in good.values() if v["config"]["graph"] == "harary"]
    assert any(c["degree"] % 2 for c in harary)
    assert any(c["mode"] == "active" for c in harary)
    assert sum(v["config"]["mode"] == "active" for v in good.values()) >= 3
    # Check order: several bad_ vectors break two invariants at once, on both sides.
    twice = [v for v in on_disk.values() if v.get("also_violates")]
    assert len(twice) >= 8
    assert {v["party"].split()[0] for v in twice} == {"client", "server"}
    for v in twice:
        assert v["abort_reason"] not in v["also_violates"]
    # The encoding vector carries the context the service binds.
    (enc,) = [v for v in good.values() if "encoding" in v]
    assert enc["config"]["context"] == enc["encoding"]["context"] != ""


def _flip(vector: dict[str, Any], step: int, byte: int) -> dict[str, Any]:
    bad = copy.deepcopy(vector)
    data = bytearray.fromhex(bad["transcript"][step]["message"])
    data[byte % len(data)] ^= 0x01
    bad["transcript"][step]["message"] = data.hex()
    return bad


@pytest.mark.parametrize(
    ("name", "step", "byte"),
    [
        ("complete_semi_honest.json", 0, 40),  # a client's AdvertiseKeys
        ("complete_semi_honest.json", 5, -1),  # the server's KeyDirectory
        ("complete_drop_r2.json", 20, 100),  # a ShareBundle
        ("active_dropouts.json", 60, 50),
        ("harary_dropouts.json", 40, -5),
        ("bad_second_unmask_request.json", 6, 60),  # in a bad_ vector's valid prefix
    ],
)
def test_a_corrupted_vector_fails(
    on_disk: dict[str, dict[str, Any]], name: str, step: int, byte: int
) -> None:
    vector = on_disk[name]
    check_vector(vector)
    with pytest.raises(VectorMismatch, match=rf"^step {step} "):
        check_vector(_flip(vector, step, byte))


def test_every_message_of_a_vector_is_checked(on_disk: dict[str, dict[str, Any]]) -> None:
    vector = on_disk["complete_drop_r4.json"]
    for i in range(len(vector["transcript"])):
        with pytest.raises(VectorMismatch, match=rf"^step {i} "):
            check_vector(_flip(vector, i, 37))


def test_other_tampering_fails(on_disk: dict[str, dict[str, Any]]) -> None:
    good = on_disk["complete_drop_r1.json"]
    truncated = copy.deepcopy(good)
    del truncated["transcript"][-1]
    with pytest.raises(VectorMismatch, match="missing"):
        check_vector(truncated)
    wrong_sum = copy.deepcopy(good)
    wrong_sum["result"]["aggregate"][0] += 1
    with pytest.raises(VectorMismatch, match="aggregate"):
        check_vector(wrong_sum)
    wrong_input = copy.deepcopy(good)
    wrong_input["clients"][0]["input"][0] += 1
    with pytest.raises(VectorMismatch):
        check_vector(wrong_input)
    bad = on_disk["bad_own_keys_not_echoed.json"]
    wrong_reason = copy.deepcopy(bad)
    wrong_reason["abort_reason"] = wrong_reason["transcript"][-1]["abort_reason"] = "wrong_round"
    with pytest.raises(VectorMismatch, match="own_keys_not_echoed"):
        check_vector(wrong_reason)
    accepted = copy.deepcopy(bad)
    accepted["transcript"][-1] = copy.deepcopy(accepted["transcript"][-2])
    accepted["transcript"][-1].update(
        step=len(accepted["transcript"]) - 1,
        success=False,
        party="server",
        abort_reason="replayed_message",
        state_after="R1_SHARE_KEYS",
    )
    with pytest.raises(VectorMismatch):
        check_vector(accepted)


def test_generation_is_deterministic_and_never_uses_os_randomness(
    monkeypatch: pytest.MonkeyPatch, generated: dict[str, dict[str, Any]]
) -> None:
    def no_urandom(n: int) -> bytes:
        raise AssertionError("test-vector generation must not use os.urandom")

    monkeypatch.setattr(os, "urandom", no_urandom)
    again = generate_all()
    assert {k: dumps_vector(v) for k, v in again.items()} == {
        k: dumps_vector(v) for k, v in generated.items()
    }
    for vector in list(again.values())[:3]:
        check_vector(vector)


def test_cli_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["vectors", "write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [p.name for p in FILES]
    assert cli_main(["vectors", "check", str(tmp_path)]) == 0
    # A hand-edited file is both a difference and a failed replay.
    path = tmp_path / "complete_semi_honest.json"
    path.write_text(dumps_vector(_flip(_load(path), 3, 10)), encoding="utf-8")
    (tmp_path / "bad_wrong_sender.json").unlink()
    capsys.readouterr()
    assert cli_main(["vectors", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "differs: complete_semi_honest.json" in err
    assert "replay failed: complete_semi_honest.json: step 3 " in err
    assert "missing: bad_wrong_sender.json" in err
    assert cli_main(["vectors", "check", "--replay-only", str(tmp_path)]) == 1


def test_decoding_vector_agrees_with_the_decoder(on_disk: dict[str, dict[str, Any]]) -> None:
    vector = on_disk["decoding.json"]
    valid = [c for c in vector["cases"] if c["valid"]]
    assert len(valid) >= 4 and len(vector["cases"]) - len(valid) >= 30
    for case in valid:
        data = bytes.fromhex(case["input"])
        assert decode_message(data).encode() == data
    # A case whose expectation is flipped, in either direction, is caught.
    for index in (0, len(vector["cases"]) - 1):
        bad = copy.deepcopy(vector)
        case = bad["cases"][index]
        if case["valid"]:
            case.update(valid=False, result="malformed_message")
        else:
            case.update(valid=True, result="MaskedInput")
        with pytest.raises(VectorMismatch, match=rf"^case {index} "):
            check_vector(bad)


def test_parameter_vector_rows_are_recomputed(on_disk: dict[str, dict[str, Any]]) -> None:
    vector = on_disk["parameters.json"]
    outcomes = [r["expected"] for r in vector["rows"]]
    assert any(o["graph"] == "harary" for o in outcomes)
    assert any(o["graph"] == "complete" and o.get("config_accepts") for o in outcomes)
    assert any(o["graph"] == "complete" and o.get("config_accepts") is False for o in outcomes)
    assert any(o.get("refused") for o in outcomes)
    bad = copy.deepcopy(vector)
    row = next(r for r in bad["rows"] if r["expected"]["graph"] == "harary")
    row["expected"]["threshold"] += 1
    with pytest.raises(VectorMismatch, match="threshold"):
        check_vector(bad)


def test_abort_vectors_fail_when_altered(on_disk: dict[str, dict[str, Any]]) -> None:
    vector = on_disk["abort_below_threshold.json"]
    other_reason = copy.deepcopy(vector)
    other_reason["server_abort"]["abort_reason"] = "cancelled"
    with pytest.raises(VectorMismatch, match="ABORTED"):
        check_vector(other_reason)
    state = copy.deepcopy(vector)
    state["final_states"]["1"] = {"state": "COMPLETED", "abort_reason": None}
    with pytest.raises(VectorMismatch, match="client 1 ends in ABORTED"):
        check_vector(state)
    # Without its deviating mark, the lying client's message is caught as a mismatch.
    lying = copy.deepcopy(on_disk["abort_reconstruction_failed.json"])
    (step,) = [s for s in lying["transcript"] if s.get("deviating")]
    del step["deviating"]
    with pytest.raises(VectorMismatch, match=rf"^step {step['step']} "):
        check_vector(lying)


def test_a_pruned_client_hears_nothing(on_disk: dict[str, dict[str, Any]]) -> None:
    vector = on_disk["harary_pruning.json"]
    pruned = _pruned(vector)
    assert len(pruned) == 2
    to = [s for s in vector["transcript"] if s["direction"] == "to_client"]
    for u in pruned:
        heard = [s["type"] for s in to if s["client"] == u]
        if vector["final_states"][str(u)]["state"] == "R0_ADVERTISE_KEYS":
            # Pruned after round 0: nothing reaches it, and no directory names it.
            assert heard == []
            for s in to:
                msg = decode_message(bytes.fromhex(s["message"]))
                if isinstance(msg, KeyDirectory):
                    assert u not in {e.sender for e in msg.entries}
        else:
            # Pruned after round 1: its ciphertexts are never forwarded.
            assert heard == ["KEY_DIRECTORY"]
            for s in to:
                msg = decode_message(bytes.fromhex(s["message"]))
                if isinstance(msg, ShareBundle):
                    assert u not in {v for v, _ in msg.ciphertexts}
    sessions = replay_vector(vector)
    assert sessions.server.result.survivors == tuple(vector["result"]["survivors"])


def test_the_checker_stands_without_the_generator() -> None:
    """Another implementation's CI imports only the replay checker."""
    code = (
        "import sys, json, pathlib\n"
        "from protocol.testing.vectors import check_vector\n"
        "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.json')):\n"
        "    check_vector(json.loads(p.read_text()))\n"
        "assert 'protocol.testvectors' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(VECTOR_DIR)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr

"""Code that the spec quotes is checked to match.

``specs/secagg-v1.md`` and ``specs/messages-v1.md`` mark the blocks they quote
from the code with an HTML comment on its own line:

* ``<!-- quote: NAME -->`` before a markdown table or a fenced block: a check
  below parses it and compares it with the live values of ``protocol``;
* ``<!-- quote-code: PATH -->`` before a fenced ``python`` block: the block
  must occur verbatim (up to a uniform indentation) in ``PATH``.

Each check is a function of the markdown text that raises ``AssertionError``
on a mismatch. ``test_mutation_is_detected`` feeds each check a copy of the
spec with one quoted detail altered and requires the check to fail, so no
check can pass vacuously. The executable checks at the end recompute
definitions of the spec (PRG, graph placement, Shamir sampling, share layout,
masking equation, self-mask commitment, small-order keys) with independent
code -- ``hashlib``/``hmac`` HKDF and the ``cryptography`` primitives -- and
compare with the reference implementation; one checks the order of the
server's round-0 checks.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import importlib
import json
import operator
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from protocol import _keys
from protocol._state import (
    CLIENT_TRANSITIONS,
    SERVER_ACCEPTS,
    SERVER_ADVANCE,
    Round,
    client_after_abort,
)
from protocol.client import ClientSession
from protocol.config import PROTOCOL_VERSION, GraphKind, Mode, SessionConfig
from protocol.crypto import (
    CIPHERSUITE,
    ED25519_GROUP_ORDER,
    ED25519_SMALL_ORDER_Y,
    FIELD_PRIME,
    X25519_SMALL_ORDER,
    DeterministicRandom,
    Ed25519Rejection,
    ed25519_sign,
    prg_fill,
    x25519_is_valid_public,
)
from protocol.encoding import pack_bits, to_modular
from protocol.errors import (
    AbortReason,
    BlameReason,
    ClientStatus,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.messages import (
    _BODY_LENGTHS,
    MAX_ID,
    Abort,
    AdvertisedKeys,
    AdvertiseKeys,
    ConsistencyRequest,
    MaskedInput,
    MessageType,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from protocol.policy import SessionPolicy
from protocol.server import ServerSession
from protocol.simulate import SimulationResult, identity_secret, make_config, simulate

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
SECAGG = "secagg-v1.md"
MESSAGES = "messages-v1.md"

# ---------------------------------------------------------------------------
# Markdown extraction.
# ---------------------------------------------------------------------------

_QUOTE = re.compile(r"^<!-- quote: ([a-z0-9-]+) -->$", re.MULTILINE)
_CODE_QUOTE = re.compile(r"^<!-- quote-code: (\S+) -->$", re.MULTILINE)


@cache
def spec(name: str) -> str:
    return (SPECS / name).read_text(encoding="utf-8")


def _block_after(text: str, end: int, what: str) -> tuple[str, list[str]]:
    """The table or fenced block that follows position ``end`` (blank lines skipped)."""
    lines = text[end:].split("\n")[1:]
    while lines and not lines[0].strip():
        lines.pop(0)
    assert lines, f"{what}: nothing follows the marker"
    if lines[0].startswith("```"):
        body: list[str] = []
        for line in lines[1:]:
            if line.startswith("```"):
                assert body, f"{what}: empty fenced block"
                return "fence", body
            body.append(line)
        raise AssertionError(f"{what}: unterminated fenced block")
    if lines[0].startswith("|"):
        rows = []
        for line in lines:
            if not line.startswith("|"):
                break
            rows.append(line)
        return "table", rows
    raise AssertionError(f"{what}: marker not followed by a table or a fenced block")


def _marker(text: str, name: str) -> re.Match[str]:
    found = [m for m in _QUOTE.finditer(text) if m.group(1) == name]
    assert len(found) == 1, f"quote marker {name!r} must occur exactly once, found {len(found)}"
    return found[0]


def fence(text: str, name: str) -> list[str]:
    kind, body = _block_after(text, _marker(text, name).end(), name)
    assert kind == "fence", f"{name}: expected a fenced block"
    return body


def _cells(line: str) -> list[str]:
    inner = line.strip()
    assert inner.startswith("|") and inner.endswith("|"), f"not a table row: {line!r}"
    parts = re.split(r"(?<!\\)\|", inner[1:-1])
    return [p.strip().replace("\\|", "|") for p in parts]


def table(text: str, name: str) -> list[dict[str, str]]:
    kind, rows = _block_after(text, _marker(text, name).end(), name)
    assert kind == "table", f"{name}: expected a table"
    header = _cells(rows[0])
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[1].strip()), f"{name}: bad separator row"
    out = []
    for row in rows[2:]:
        cells = _cells(row)
        assert len(cells) == len(header), f"{name}: row has {len(cells)} cells: {row!r}"
        out.append(dict(zip(header, cells, strict=True)))
    assert out, f"{name}: empty table"
    return out


def ticks(cell: str) -> str:
    """A cell without its surrounding backticks."""
    cell = cell.strip()
    if cell.startswith("`") and cell.endswith("`") and len(cell) >= 2:
        return cell[1:-1]
    return cell


_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
}


def literal(expr: str) -> Any:
    """Evaluate an int/str/bytes literal or integer arithmetic on literals, nothing else."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | str | bytes):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise AssertionError(f"not a literal expression: {expr!r}")

    return ev(ast.parse(expr, mode="eval").body)


def resolve(path: str) -> Any:
    """``package.module.ATTR`` -> the live value."""
    module, _, attr = path.strip().rpartition(".")
    return getattr(importlib.import_module(module), attr)


def class_name(mtype: MessageType) -> str:
    return _BODY_LENGTHS[mtype][0].__name__


# ---------------------------------------------------------------------------
# Independent implementations of the spec's definitions (§6.2, §7).
# ---------------------------------------------------------------------------


def hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 with an absent salt (HashLen zero bytes)."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def kdf(ikm: bytes, label: bytes, sid: bytes, ctx: bytes, length: int) -> bytes:
    return hkdf(ikm, b"secagg-v1\x00" + label + b"\x00" + sid + ctx, length)


def keystream(key: bytes, first_block: int, blocks: int) -> bytes:
    """AES-128 of the big-endian counter blocks first_block, first_block + 1, ..."""
    # ECB over explicit counter blocks is CTR mode written out (§7.2).
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counters = b"".join((first_block + j).to_bytes(16, "big") for j in range(blocks))
    return enc.update(counters) + enc.finalize()


def prg_words(key: bytes, width: int, start: int, count: int) -> list[int]:
    """PRG_w(K)[start : start + count] of §7.2."""
    size = width // 8
    first, skip = divmod(start * size, 16)
    nblocks = -(-(skip + count * size) // 16)
    stream = keystream(key, first, nblocks)[skip:]
    return [int.from_bytes(stream[i * size : (i + 1) * size], "little") for i in range(count)]


class SpecRandom:
    """DeterministicRandom of §7.3, written from the spec."""

    def __init__(self, seed: bytes) -> None:
        self._key = hkdf(seed, b"secagg-v1\x00deterministic-random", 16)
        self._pos = 0

    def random_bytes(self, n: int) -> bytes:
        first, skip = divmod(self._pos, 16)
        data = keystream(self._key, first, -(-(skip + n) // 16))[skip : skip + n]
        self._pos += n
        return data


def x25519(secret: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def x25519_public(secret: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def u32(i: int) -> bytes:
    return i.to_bytes(4, "big")


# ---------------------------------------------------------------------------
# Fixtures shared by the checks.
# ---------------------------------------------------------------------------

SID = bytes(range(100, 132))


def sample_config() -> SessionConfig:
    """A configuration in which every field is distinguishable."""
    return SessionConfig(
        participants=(3, 5, 8, 13),
        threshold=2,
        vector_length=7,
        bit_width=9,
        nonce=bytes(range(32)),
        mode=Mode.ACTIVE,
        graph=GraphKind.HARARY,
        degree=3,
        identity_keys=tuple(bytes([i]) * 32 for i in range(1, 5)),
        context=b"ctx",
    )


EXAMPLE_SEED = b"spec-example"
EXAMPLE_INPUT = np.array([1, -2, 3, -4, 5], dtype=np.int64)


@cache
def example() -> tuple[SessionConfig, SimulationResult]:
    """The worked example of messages-v1.md §8."""
    from protocol import Round

    cfg = make_config(4, 5, bit_width=7, seed=EXAMPLE_SEED)
    inputs = {u: EXAMPLE_INPUT * u for u in cfg.participants}
    sim = simulate(
        cfg,
        inputs,
        dropouts={4: Round.R2_MASKED_INPUT_COLLECTION},
        seed=EXAMPLE_SEED,
        record=True,
    )
    return cfg, sim


def example_messages(client: int) -> dict[str, bytes]:
    _, sim = example()
    return {
        type(decode_message(e.data)).__name__: e.data for e in sim.transcript if e.client == client
    }


# ---------------------------------------------------------------------------
# Checks of secagg-v1.md.
# ---------------------------------------------------------------------------


def check_constants(text: str) -> None:
    rows = table(text, "constants")
    for row in rows:
        want = literal(ticks(row["Value"]))
        paths = [ticks(p) for p in row["Code"].split(",")]
        for path in paths:
            got = resolve(path)
            assert type(got) is type(want) and got == want, (
                f"{row['Constant']}: spec says {want!r}, {path} is {got!r}"
            )


def check_decoding_limits(text: str) -> None:
    """messages-v1.md §1.1: the decoder limits, as the live constants."""
    rows = table(text, "decoding-limits")
    for row in rows:
        want = literal(ticks(row["Value"]))
        got = resolve(ticks(row["Code"]))
        assert type(got) is type(want) and got == want, (
            f"{row['Limit']}: spec says {want!r}, {row['Code']} is {got!r}"
        )
    assert {ticks(r["Code"]) for r in rows} >= {"protocol._cbor.MAX_DEPTH"}


def check_config_fields(text: str) -> None:
    rows = table(text, "config-fields")
    cfg = sample_config()
    value = cfg.to_cbor_value()
    assert [int(r["Index"]) for r in rows] == list(range(len(value))), "indices 0.. in order"
    special = {"protocol_version": PROTOCOL_VERSION, "ciphersuite": CIPHERSUITE}
    types = {"tstr": str, "uint": int, "bstr": bytes, "[": list}
    for row, item in zip(rows, value, strict=True):
        name = ticks(row["Field"])
        want = special[name] if name in special else getattr(cfg, name)
        if isinstance(want, Mode | GraphKind):
            want = want.value
        if isinstance(want, tuple):
            want = list(want)
        assert item == want, f"config field {row['Index']} is not {name}"
        kind = next(t for prefix, t in types.items() if row["CBOR type"].startswith(prefix))
        assert isinstance(item, kind) and not isinstance(item, bool), f"{name}: CBOR type"
    assert cbor2.loads(cfg.encode()) == value


def _context(expr: str, env: dict[str, bytes]) -> bytes:
    expr = ticks(expr)
    if expr in ("(empty)", "—"):
        return b""
    out = b""
    for term in expr.split("‖"):
        term = term.strip()
        assert term in env, f"unknown context term {term!r}"
        out += env[term]
    return out


def check_key_schedule(text: str) -> None:
    rows = table(text, "key-schedule")
    labels = [ticks(r["Label"]).encode() for r in rows]
    assert len(labels) == len(set(labels)), "a label is listed twice"
    assert labels == list(_keys.LABELS), "the table must list _keys.LABELS, in order"

    cfg = sample_config()
    sid = cfg.session_id
    rng = np.random.default_rng(7)  # test data only, never a key of the protocol
    shared, seed = rng.bytes(32), rng.bytes(32)
    sk_u, sk_v = rng.bytes(32), rng.bytes(32)
    u, v = 13, 5
    c_pk, s_pk = x25519_public(sk_u), x25519_public(sk_v)
    survivors = [3, 5, 13]
    env = {
        "sid": sid,
        "u32(sender)": u32(u),
        "u32(recipient)": u32(v),
        "u32(min(u,v))": u32(min(u, v)),
        "u32(max(u,v))": u32(max(u, v)),
        "u32(u)": u32(u),
        "b_u": seed,
        "c_pk_u": c_pk,
        "s_pk_u": s_pk,
        "CBOR(survivors)": cbor2.dumps(survivors),
        "CBOR(config)": cfg.encode(),
    }
    seen = set()
    got: object
    want: object
    for row in rows:
        label = ticks(row["Label"])
        seen.add(label)
        ctx = _context(row["Context"], env)
        if row["Kind"] == "KDF":
            length = int(row["Length"])
            if label == "share-encryption":
                got = _keys.share_encryption_key(shared, sid, u, v)
                want = kdf(shared, label.encode(), sid, ctx, length)
            elif label == "pairwise-mask":
                got = _keys.pairwise_mask_key(sk_u, x25519_public(sk_v), sid, u, v)
                want = kdf(x25519(sk_u, x25519_public(sk_v)), label.encode(), sid, ctx, length)
                assert got == _keys.pairwise_mask_key(sk_v, x25519_public(sk_u), sid, v, u)
            elif label == "self-mask":
                got = _keys.self_mask_key(seed, sid, u)
                want = kdf(seed, label.encode(), sid, ctx, length)
            elif label == "graph":
                graph_seed = kdf(sid, label.encode(), sid, ctx, length)
                got = cfg.neighbour_graph.ring
                want = spec_ring(cfg.participants, graph_seed)
            elif label == "dp-rotation":
                got = _keys.dp_rotation_key(sid)
                want = kdf(sid, label.encode(), sid, ctx, length)
            else:
                raise AssertionError(f"no code known for KDF label {label!r}")
            assert got == want, f"key schedule row {label!r} does not match the code"
        elif row["Kind"] == "Ed25519 payload":
            prefix = b"secagg-v1\x00" + label.encode() + b"\x00"
            if label == "advertise-keys":
                got = _keys.advertise_payload(sid, u, c_pk, s_pk)
            elif label == "consistency":
                got = _keys.consistency_payload(sid, cbor2.dumps(survivors))
            else:
                raise AssertionError(f"no code known for signature label {label!r}")
            assert got == prefix + ctx, f"signed payload {label!r} does not match the code"
        elif row["Kind"] == "SHA-256 input":
            want = hashlib.sha256(b"secagg-v1\x00" + label.encode() + b"\x00" + ctx).digest()
            if label == "session":
                got = cfg.session_id
            elif label == "self-mask-commitment":
                got = _keys.self_mask_commitment(seed, sid, u)
            else:
                raise AssertionError(f"no code known for hash label {label!r}")
            assert got == want, f"hash input {label!r} does not match the code"
            assert len(want) == int(row["Length"]), f"{label}: length"
        elif row["Kind"] == "HKDF, no sid":
            assert label == "deterministic-random"
            key = hkdf(seed, b"secagg-v1\x00" + label.encode(), int(row["Length"]))
            assert DeterministicRandom(seed).random_bytes(100) == keystream(key, 0, 7)[:100]
        else:
            raise AssertionError(f"unknown kind {row['Kind']!r}")
    assert seen >= {"session", "deterministic-random", "graph", "self-mask-commitment"}


def check_abort_reasons(text: str) -> None:
    rows = table(text, "abort-reasons")
    got = [(ticks(r["Name"]), ticks(r["Value"])) for r in rows]
    assert got == [(r.name, r.value) for r in AbortReason], "abort reasons differ from the code"


def check_ed25519_rules(text: str) -> None:
    rows = table(text, "ed25519-rules")
    assert [r["#"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)], "rule numbers"
    got = [ticks(r["Rejection"]) for r in rows]
    assert got == [r.value for r in Ed25519Rejection], "Ed25519 rules differ from the code"


def check_blame_reasons(text: str) -> None:
    rows = table(text, "blame-reasons")
    got = [(ticks(r["Name"]), ticks(r["Value"])) for r in rows]
    assert got == [(r.name, r.value) for r in BlameReason], "blame reasons differ from the code"


def check_client_statuses(text: str) -> None:
    rows = table(text, "client-statuses")
    got = [(ticks(r["Name"]), ticks(r["Value"])) for r in rows]
    assert got == [(r.name, r.value) for r in ClientStatus], "client statuses differ from the code"


def _class_to_type() -> dict[str, MessageType]:
    return {class_name(t): t for t in MessageType}


def check_client_transitions(text: str) -> None:
    rows = table(text, "client-transitions")
    types = _class_to_type()
    got = [
        (r["Mode"], ticks(r["State"]), types[ticks(r["Receives"])], ticks(r["Next state"]))
        for r in rows
    ]
    want = [
        (mode.value, state.value, mtype, nxt.value)
        for mode, tab in CLIENT_TRANSITIONS.items()
        for (state, mtype), nxt in tab.items()
    ]
    assert len(got) == len(set(got)), "duplicate row"
    assert set(got) == set(want), "client transition table differs from _state.py"


def check_server_transitions(text: str) -> None:
    rows = table(text, "server-transitions")
    got = [
        (r["Mode"], ticks(r["State"]), ticks(r["Accepts"]), ticks(r["`advance()` moves to"]))
        for r in rows
    ]
    want = [
        (mode.value, state.value, class_name(SERVER_ACCEPTS[state]), nxt.value)
        for mode, tab in SERVER_ADVANCE.items()
        for state, nxt in tab.items()
    ]
    assert len(got) == len(set(got)), "duplicate row"
    assert set(got) == set(want), "server transition table differs from _state.py"


_EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\w+)\s*:\s*(.+?)\s*$")


def _edges(text: str, name: str) -> list[tuple[str, str, str]]:
    edges = []
    for line in fence(text, name):
        m = _EDGE.match(line)
        if m:
            edges.append((m.group(1), m.group(2), m.group(3)))
    assert edges, f"{name}: no edges"
    return edges


def check_client_diagram(text: str) -> None:
    types = _class_to_type()
    got, aborts = set(), set()
    for src, dst, label in _edges(text, "client-diagram"):
        if src == "[*]":
            continue
        trigger = label.split(" / ")[0].strip()
        if trigger.startswith("Abort"):  # "Abort or failed check", "Abort (ignored)"
            aborts.add((src, dst))
        elif dst != "ABORTED":
            got.add((src, types[trigger], dst))
    want = {
        (state.value, mtype, nxt.value)
        for tab in CLIENT_TRANSITIONS.values()
        for (state, mtype), nxt in tab.items()
    }
    assert got == want, "client diagram differs from _state.py"
    # Rule 5: the server's Abort, from every state a client can be in but ABORTED
    # (which refuses every message, wrong_round).
    states = {Round.R0_ADVERTISE_KEYS} | {
        s for tab in CLIENT_TRANSITIONS.values() for (a, _), b in tab.items() for s in (a, b)
    }
    want_aborts = {(s.value, client_after_abort(s).value) for s in states if s is not Round.ABORTED}
    assert aborts == want_aborts, "client diagram's Abort edges differ from client_after_abort"


def check_server_diagram(text: str) -> None:
    got = {
        (src, dst)
        for src, dst, _ in _edges(text, "server-diagram")
        if src != "[*]" and dst != "ABORTED"
    }
    want = {(s.value, n.value) for tab in SERVER_ADVANCE.values() for s, n in tab.items()}
    assert got == want, "server diagram differs from _state.py"


def spec_ring(participants: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    """§9.3 ring placement, from the spec."""
    rng = SpecRandom(seed)
    a = sorted(participants)
    for i in range(len(a) - 1, 0, -1):
        limit = 2**64 - (2**64 % (i + 1))
        while True:
            r = int.from_bytes(rng.random_bytes(8), "little")
            if r < limit:
                break
        j = r % (i + 1)
        a[i], a[j] = a[j], a[i]
    return tuple(a)


# ---------------------------------------------------------------------------
# Checks of messages-v1.md.
# ---------------------------------------------------------------------------


def check_message_types(text: str) -> None:
    rows = table(text, "message-types")
    got = [(int(r["Type"]), ticks(r["Message"]), int(r["Body fields"])) for r in rows]
    want = [(int(t), class_name(t), _BODY_LENGTHS[t][1]) for t in MessageType]
    assert got == want, "message type table differs from messages.py"


def _split_top(inner: str) -> list[str]:
    """Split the inside of a CDDL array at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _cddl_rules(lines: list[str]) -> dict[str, str]:
    rules = {}
    for line in lines:
        code = line.split(";", 1)[0].strip()
        m = re.match(r"^([a-z0-9-]+)\s*=\s*(.+)$", code)
        if m:
            rules[m.group(1)] = m.group(2).strip()
    return rules


def check_cddl_messages(text: str) -> None:
    rules = _cddl_rules(fence(text, "cddl-messages"))
    types = _class_to_type()
    arrays = 0
    for name, body in rules.items():
        m = re.match(r"^\[(\d+),\s*(.*)\]$", body)
        if not m:
            continue
        arrays += 1
        cls = "".join(part.capitalize() for part in name.split("-"))
        assert cls in types, f"CDDL rule {name} names no message class"
        mtype = types[cls]
        assert int(m.group(1)) == int(mtype), f"{name}: type number"
        fields = _split_top(body[1:-1])
        assert len(fields) == 2 + _BODY_LENGTHS[mtype][1], f"{name}: {len(fields)} elements"
        assert fields[1] == "session-id", f"{name}: second element must be session-id"
    assert arrays == len(MessageType), "one CDDL rule per message type"
    choices = [c.strip() for c in rules["message"].split("/")]
    assert choices == [
        re.sub(r"(?<!^)(?=[A-Z])", "-", class_name(t)).lower() for t in MessageType
    ], "message choice"
    reasons = [literal(c.strip()) for c in rules["abort-reason"].split("/")]
    assert reasons == [r.value for r in AbortReason], "abort-reason choice"
    sizes = {
        "session-id": resolve("protocol.messages.SESSION_ID_SIZE"),
        "x25519-pk": resolve("protocol.messages.KEY_SIZE"),
        "ed25519-sig": resolve("protocol.messages.SIGNATURE_SIZE"),
        "share": resolve("protocol.shamir.SHARE_SIZE"),
        "share-ct": resolve("protocol.messages.SHARE_CIPHERTEXT_SIZE"),
        "commitment": resolve("protocol.messages.COMMITMENT_SIZE"),
    }
    for name, size in sizes.items():
        assert rules[name] == f"bstr .size {size}", f"{name}: size"
    assert rules["client-id"] == f"1..{MAX_ID}", "client-id range"


def check_cddl_config(text: str) -> None:
    lines = fence(text, "cddl-config")
    members = [
        re.match(r"^\s*([a-z-]+):\s*(.+?),?$", line)
        for line in lines
        if re.match(r"^\s+[a-z-]+:", line)
    ]
    assert all(members), "unparsable config member"
    names = [m.group(1).replace("-", "_") for m in members if m]
    values = {m.group(1): m.group(2) for m in members if m}
    fields = [ticks(r["Field"]) for r in table(spec(SECAGG), "config-fields")]
    assert names == fields, "CDDL config members differ from secagg-v1.md §5.1"
    assert len(names) == len(sample_config().to_cbor_value())
    assert literal(values["protocol-version"]) == PROTOCOL_VERSION
    assert literal(values["ciphersuite"]) == CIPHERSUITE
    assert values["vector-length"] == f"1..{resolve('protocol.config.MAX_VECTOR_LENGTH')}"
    assert values["bit-width"] == f"1..{resolve('protocol.encoding.MAX_BIT_WIDTH')}"
    assert [literal(c) for c in values["mode"].split(" / ")] == [m.value for m in Mode]
    assert [literal(c) for c in values["graph"].split(" / ")] == [g.value for g in GraphKind]


def check_share_plaintext(text: str) -> None:
    rows = table(text, "share-plaintext")
    offset = 0
    for row in rows:
        assert int(row["Offset"]) == offset, f"offset of {row['Field']}"
        offset += int(row["Size"])
    assert offset == resolve("protocol.messages.SHARE_PLAINTEXT_SIZE")
    shares = [r for r in rows if "share" in r["Field"]]
    assert [int(r["Size"]) for r in shares] == [resolve("protocol.shamir.SHARE_SIZE")] * 2
    # The layout against a real plaintext of the worked example: 1 -> 2.
    plain = open_share(1, 2)
    fields = {r["Field"]: plain[int(r["Offset"]) : int(r["Offset"]) + int(r["Size"])] for r in rows}
    assert list(fields)[:2] == ["sender id", "recipient id"], "share plaintext field order"
    assert fields["sender id"] == u32(1) and fields["recipient id"] == u32(2)


def check_packing_example(text: str) -> None:
    for row in table(text, "packing-example"):
        b = int(row["Bit width"])
        values = [int(v) for v in row["Elements (mod 2^b)"].split(",")]
        assert values == [int(v) for v in to_modular(EXAMPLE_INPUT, b)]
        packed = pack_bits(np.array(values, dtype=np.uint32), b)
        assert packed.hex() == ticks(row["Packed (hex)"]), f"packing example b={b}"


def _transcript_block(text: str) -> dict[str, bytes]:
    out: dict[str, str] = {}
    key = None
    for line in fence(text, "example-transcript"):
        if not line.strip():
            continue
        if line[0].isspace():
            assert key is not None, "continuation line without a key"
            out[key] += line.strip()
        else:
            key, hexdata = line.split(None, 1)
            out[key] = hexdata.strip()
    return {k: bytes.fromhex(v) for k, v in out.items()}


def _expected_transcript() -> dict[str, bytes]:
    cfg, _ = example()
    want = {"config": cfg.encode(), "session_id": cfg.session_id}
    want.update(example_messages(1))
    want["Abort"] = Abort(cfg.session_id, AbortReason.BELOW_THRESHOLD).encode()
    return want


def check_example_transcript(text: str) -> None:
    got = _transcript_block(text)
    want = _expected_transcript()
    assert list(got) == list(want), f"example keys {list(got)} != {list(want)}"
    for key in want:
        assert got[key] == want[key], f"worked example: {key} differs from the code's bytes"
    for name, size in re.findall(r"^`(\w+)` \((\d+) bytes\)", text, re.MULTILINE):
        assert len(want[name]) == int(size), f"annotated size of {name}"
    _, sim = example()
    assert sim.aggregate.tolist() == (EXAMPLE_INPUT * 6).tolist()


def check_message_sizes(text: str) -> None:
    sid, key1, key2, sig = bytes(32), bytes([1]) * 32, bytes([2]) * 32, bytes(64)
    semi, active = AdvertisedKeys(1, key1, key2), AdvertisedKeys(1, key1, key2, sig)
    empty_masked = len(MaskedInput(sid, 1, b"").encode()) - 1  # minus the 1-byte head
    empty_shares = len(ShareKeys(sid, 1, bytes(32), ()).encode()) - 1  # minus the array head
    sizes = {
        "`AdvertiseKeys`, semi-honest": len(AdvertiseKeys(sid, semi).encode()),
        "`AdvertiseKeys`, active": len(AdvertiseKeys(sid, active).encode()),
        "`KeyDirectory` entry, semi-honest": len(cbor2.dumps(semi.to_list())),
        "`KeyDirectory` entry, active": len(cbor2.dumps(active.to_list())),
        "`ShareKeys` without the ciphertext array": empty_shares,
        "`ShareKeys` or `ShareBundle` entry": len(cbor2.dumps([1, bytes(90)])),
        "`UnmaskRequest` signature entry": len(cbor2.dumps([1, sig])),
        "`UnmaskResponse` share entry": len(cbor2.dumps([1, bytes(33)])),
        "`MaskedInput` without the byte-string head and payload": empty_masked,
    }
    rows = table(text, "message-sizes")
    assert [r["Item"] for r in rows] == list(sizes), "message-sizes rows"
    for row in rows:
        assert int(row["Bytes"]) == sizes[row["Item"]], f"size of {row['Item']}"
    # The framing formulas, against real messages.
    bytes_of = {row["Item"]: int(row["Bytes"]) for row in rows}
    masked = example_messages(1)["MaskedInput"]
    assert len(masked) == bytes_of["`MaskedInput` without the byte-string head and payload"] + 1 + 5
    share_keys = example_messages(1)["ShareKeys"]
    entry = bytes_of["`ShareKeys` or `ShareBundle` entry"]
    assert len(share_keys) == bytes_of["`ShareKeys` without the ciphertext array"] + 1 + 3 * entry


# ---------------------------------------------------------------------------
# Verbatim code quotes.
# ---------------------------------------------------------------------------


def code_quotes(text: str) -> list[tuple[str, list[str]]]:
    out = []
    for m in _CODE_QUOTE.finditer(text):
        kind, body = _block_after(text, m.end(), m.group(1))
        assert kind == "fence", f"quote-code {m.group(1)}: expected a fenced block"
        out.append((m.group(1), body))
    assert out, "no quote-code blocks"
    return out


def occurs_verbatim(block: list[str], source: list[str]) -> bool:
    """True if ``block`` occurs as consecutive lines of ``source`` under one common indent."""
    first = block[0]
    for i, line in enumerate(source):
        if not line.endswith(first) or i + len(block) > len(source):
            continue
        indent = line[: len(line) - len(first)]
        if indent.strip():
            continue
        if all(
            src == (indent + quoted if quoted else "") or (not quoted and not src.strip())
            for quoted, src in zip(block, source[i : i + len(block)], strict=True)
        ):
            return True
    return False


def check_code_quotes(text: str) -> None:
    for path, block in code_quotes(text):
        source = (ROOT / path).read_text(encoding="utf-8").splitlines()
        assert occurs_verbatim(block, source), f"quoted code not found in {path}:\n" + "\n".join(
            block
        )


# ---------------------------------------------------------------------------
# §12.1, §12.11, §12.12: terminal clients, Abort, check order (executable).
# ---------------------------------------------------------------------------

_CLIENT_INPUT = np.arange(4, dtype=np.int64)


def _clients_until(mode: Mode, target: Round | None) -> tuple[SessionConfig, ClientSession]:
    """Client 1 of an honest 5-client session, stopped once it is in ``target``
    (``None``: created, not started)."""
    config = make_config(5, 4, mode=mode, threshold=3, seed=b"spec-terminal")
    clients = {
        u: ClientSession(
            config,
            u,
            _CLIENT_INPUT,
            rng=DeterministicRandom(b"spec-terminal/%d" % u),
            identity_key=identity_secret(u) if mode is Mode.ACTIVE else None,
            policy=SessionPolicy.protocol_only(),  # the tables are protocol behaviour
        )
        for u in config.participants
    }
    if target is None:
        return config, clients[1]
    server = ServerSession(config)
    for c in clients.values():
        server.receive(c.start())
    while clients[1].round is not target:
        for u, data in server.advance().items():
            reply = clients[u].receive(data)
            if reply is not None:
                server.receive(reply)
    return config, clients[1]


def _outcome(client: ClientSession, data: bytes) -> tuple[str, ...]:
    """What a client does with ``data``: the backticked words a spec cell must name."""
    try:
        reply = client.receive(data)
    except RemoteProtocolError as exc:
        return (client.round.value, exc.reason.value)
    assert reply is None
    return (client.round.value,) + ((client.abort_reason.value,) if client.abort_reason else ())


_OTHER_SID = b"\x07" * 32


def _completed_cases(sid: bytes) -> dict[str, list[bytes]]:
    return {
        "bytes that do not decode (step 3)": [b"\xff\x00garbage"],
        "any message with another `sid` (step 4), `Abort` included": [
            Abort(_OTHER_SID, AbortReason.CANCELLED).encode(),
            UnmaskRequest(_OTHER_SID, 1, (1, 2, 3), ()).encode(),
        ],
        "`Abort` with its `sid` (step 5)": [Abort(sid, AbortReason.CANCELLED).encode()],
        "a message whose `recipient` is not `u`, or a client-to-server message (step 6)": [
            UnmaskRequest(sid, 2, (1, 2, 3), ()).encode(),
            ShareKeys(sid, 1, bytes(32), ()).encode(),
        ],
        "`UnmaskRequest` to `u` (step 7)": [UnmaskRequest(sid, 1, (1, 2, 3), ()).encode()],
        "`KeyDirectory`, `ShareBundle` or `ConsistencyRequest` to `u` (step 7)": [
            ShareBundle(sid, 1, ()).encode(),
            ConsistencyRequest(sid, 1, (1, 2, 3)).encode(),
        ],
    }


def _backticked(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def check_completed_client(text: str) -> None:
    rows = table(text, "completed-client")
    sid = _clients_until(Mode.SEMI_HONEST, None)[0].session_id
    cases = _completed_cases(sid)
    assert [r["Received"] for r in rows] == list(cases), "completed-client: rows changed"
    for row in rows:
        for data in cases[row["Received"]]:
            _, client = _clients_until(Mode.SEMI_HONEST, Round.COMPLETED)
            got = _outcome(client, data)
            named = _backticked(row["Outcome"])
            assert got[0] == "COMPLETED", f"{row['Received']}: the client ends in {got[0]}"
            if len(got) == 1:
                assert row["Outcome"].startswith("ignored") and not named, row
            else:
                assert row["Outcome"].startswith("refused") and named == {got[1]}, (row, got)


def check_client_abort(text: str) -> None:
    rows = {r["Client state"]: r["Outcome"] for r in table(text, "client-abort")}
    running = "`R0_ADVERTISE_KEYS` … `R3_CONSISTENCY_CHECK`"
    assert list(rows) == [
        "before `start()`",
        f"{running}, `sid' = sid`",
        f"{running}, `sid' ≠ sid`",
        "`COMPLETED`",
        "`ABORTED`",
    ], "client-abort: rows changed"
    config, fresh = _clients_until(Mode.ACTIVE, None)
    sid, reason = config.session_id, AbortReason.BELOW_THRESHOLD
    with pytest.raises(LocalProtocolError):
        fresh.receive(Abort(sid, reason).encode())
    assert rows["before `start()`"].startswith("local error")
    running_rounds = [
        Round.R0_ADVERTISE_KEYS,
        Round.R1_SHARE_KEYS,
        Round.R2_MASKED_INPUT_COLLECTION,
        Round.R3_CONSISTENCY_CHECK,
    ]
    for rnd in running_rounds:
        _, client = _clients_until(Mode.ACTIVE, rnd)
        assert _outcome(client, Abort(sid, reason).encode()) == ("ABORTED", reason.value)
        assert _backticked(rows[f"{running}, `sid' = sid`"]) == {"ABORTED", "R"}
        _, client = _clients_until(Mode.ACTIVE, rnd)
        got = _outcome(client, Abort(_OTHER_SID, reason).encode())
        assert got == ("ABORTED", "wrong_session")
        assert _backticked(rows[f"{running}, `sid' ≠ sid`"]) == set(got)
    _, client = _clients_until(Mode.ACTIVE, Round.COMPLETED)
    assert _outcome(client, Abort(sid, reason).encode()) == ("COMPLETED",)
    got = _outcome(client, Abort(_OTHER_SID, reason).encode())
    assert got == ("COMPLETED", "wrong_session")
    assert _backticked(rows["`COMPLETED`"]) == {"sid' = sid", *got}
    assert "ignored" in rows["`COMPLETED`"]
    _, client = _clients_until(Mode.ACTIVE, Round.R1_SHARE_KEYS)
    client.receive(Abort(sid, reason).encode())
    for data in (Abort(sid, AbortReason.CANCELLED).encode(), b"\xff"):
        with pytest.raises(RemoteProtocolError) as caught:
            client.receive(data)
        assert (client.round, client.abort_reason) == (Round.ABORTED, reason)
        assert _backticked(rows["`ABORTED`"]) == {caught.value.reason.value, "ABORTED"}


def check_order(text: str) -> None:
    rows = table(text, "check-order")
    vectors = {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in (SPECS / "vectors").glob("bad_*.json")
    }
    listed = set()
    for row in rows:
        name = "bad_" + ticks(row["Vector (`bad_…`)"]) + ".json"
        assert name in vectors, f"check-order: no vector {name}"
        listed.add(name)
        v = vectors[name]
        assert v["party"].split()[0] == row["Party"], f"{name}: party {v['party']}"
        reported = re.match(r"`([a-z_]+)`", row["Reported"])
        assert reported and reported.group(1) == v["abort_reason"], (name, v["abort_reason"])
        assert v.get("also_violates"), f"{name} names no second violation"
    pinned = {n for n, v in vectors.items() if v.get("also_violates")}
    assert listed == pinned, f"check-order: table {sorted(listed)} vs vectors {sorted(pinned)}"


# ---------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------

CHECKS: dict[str, tuple[str, Callable[[str], None]]] = {
    "constants": (SECAGG, check_constants),
    "config-fields": (SECAGG, check_config_fields),
    "key-schedule": (SECAGG, check_key_schedule),
    "abort-reasons": (SECAGG, check_abort_reasons),
    "ed25519-rules": (SECAGG, check_ed25519_rules),
    "blame-reasons": (SECAGG, check_blame_reasons),
    "client-statuses": (SECAGG, check_client_statuses),
    "client-transitions": (SECAGG, check_client_transitions),
    "server-transitions": (SECAGG, check_server_transitions),
    "client-diagram": (SECAGG, check_client_diagram),
    "server-diagram": (SECAGG, check_server_diagram),
    "message-types": (MESSAGES, check_message_types),
    "cddl-messages": (MESSAGES, check_cddl_messages),
    "cddl-config": (MESSAGES, check_cddl_config),
    "share-plaintext": (MESSAGES, check_share_plaintext),
    "packing-example": (MESSAGES, check_packing_example),
    "example-transcript": (MESSAGES, check_example_transcript),
    "message-sizes": (MESSAGES, check_message_sizes),
    "completed-client": (SECAGG, check_completed_client),
    "client-abort": (SECAGG, check_client_abort),
    "check-order": (SECAGG, check_order),
    "decoding-limits": (MESSAGES, check_decoding_limits),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_quote_matches_code(name: str) -> None:
    path, check = CHECKS[name]
    check(spec(path))


@pytest.mark.parametrize("path", [SECAGG, MESSAGES])
def test_quoted_code_occurs_in_source(path: str) -> None:
    check_code_quotes(spec(path))


def test_every_quote_marker_is_checked() -> None:
    """A marker without a check would be decoration; a check without a marker, dead."""
    for path in (SECAGG, MESSAGES):
        names = _QUOTE.findall(spec(path))
        assert len(names) == len(set(names)), f"{path}: a quote marker is repeated"
        checked = {n for n, (p, _) in CHECKS.items() if p == path}
        assert set(names) == checked, f"{path}: markers {sorted(names)} vs checks {sorted(checked)}"


# (check name or "code", file, old text, new text): each alteration must be caught.
MUTATIONS: list[tuple[str, str, str, str]] = [
    ("ed25519-rules", SECAGG, "| `public_key_small_order` |", "| `r_small_order` |"),
    ("ed25519-rules", SECAGG, "| 2 | `S` (little-endian)", "| 3 | `S` (little-endian)"),
    ("code", SECAGG, "public[31] < 0x80 and", "public[31] <= 0x80 and"),
    (
        "decoding-limits",
        MESSAGES,
        "| Deepest array nesting | `8` |",
        "| Deepest array nesting | `9` |",
    ),
    (
        "decoding-limits",
        MESSAGES,
        "| Scan steps, bytes per step | `64` |",
        "| Scan steps, bytes per step | `32` |",
    ),
    ("constants", SECAGG, "`2**256 + 297`", "`2**256 + 299`"),
    ("constants", SECAGG, '`b"secagg-v1"`', '`"secagg-v1"`'),
    ("config-fields", SECAGG, "| 4 | `threshold` |", "| 4 | `degree` |"),
    ("config-fields", SECAGG, "| 6 | `bit_width` | uint |", "| 6 | `bit_width` | tstr |"),
    (
        "key-schedule",
        SECAGG,
        "| 16 | AES-128 key of the pairwise",
        "| 32 | AES-128 key of the pairwise",
    ),
    (
        "key-schedule",
        SECAGG,
        "`u32(sender) ‖ u32(recipient)` | 32",
        "`u32(recipient) ‖ u32(sender)` | 32",
    ),
    ("key-schedule", SECAGG, "| `graph` | KDF |", "| `graphs` | KDF |"),
    (
        "key-schedule",
        SECAGG,
        "| `sid ‖ u32(u) ‖ b_u` | 32 |",
        "| `sid ‖ b_u ‖ u32(u)` | 32 |",
    ),
    (
        "key-schedule",
        SECAGG,
        "| `session` | SHA-256 input |",
        "| `sessions` | SHA-256 input |",
    ),
    (
        "key-schedule",
        SECAGG,
        "`sid ‖ u32(u) ‖ c_pk_u ‖ s_pk_u`",
        "`sid ‖ c_pk_u ‖ s_pk_u ‖ u32(u)`",
    ),
    (
        "abort-reasons",
        SECAGG,
        "| `WRONG_SENDER` | `wrong_sender` |",
        "| `WRONG_SENDER` | `bad_sender` |",
    ),
    (
        "client-transitions",
        SECAGG,
        "`ConsistencyRequest` | `R3_CONSISTENCY_CHECK` |",
        "`ConsistencyRequest` | `COMPLETED` |",
    ),
    (
        "server-transitions",
        SECAGG,
        "| semi-honest | `R2_MASKED_INPUT_COLLECTION` | `MaskedInput` | `R4_UNMASKING` |",
        "| semi-honest | `R2_MASKED_INPUT_COLLECTION` | `MaskedInput` | `R3_CONSISTENCY_CHECK` |",
    ),
    (
        "client-diagram",
        SECAGG,
        "R1_SHARE_KEYS --> R2_MASKED_INPUT_COLLECTION: ShareBundle",
        "R1_SHARE_KEYS --> R2_MASKED_INPUT_COLLECTION: KeyDirectory",
    ),
    (
        "client-diagram",
        SECAGG,
        "    R3_CONSISTENCY_CHECK --> ABORTED: Abort or failed check\n",
        "",
    ),
    (
        "client-diagram",
        SECAGG,
        "COMPLETED --> COMPLETED: Abort (ignored)",
        "COMPLETED --> ABORTED: Abort",
    ),
    (
        "server-diagram",
        SECAGG,
        "    R3_CONSISTENCY_CHECK --> R4_UNMASKING: advance()",
        "    R3_CONSISTENCY_CHECK --> COMPLETED: advance()",
    ),
    (
        "code",
        SECAGG,
        "(plus if self.client_id < v else minus)",
        "(minus if self.client_id < v else plus)",
    ),
    (
        "code",
        SECAGG,
        "(minus if v < d else plus).append(key)",
        "(plus if v < d else minus).append(key)",
    ),
    ("code", SECAGG, 'b"fixed-point\\x00"', 'b"fixed-point\\x01"'),
    ("code", SECAGG, "    + u32(owner)\n    + seed\n", "    + seed\n    + u32(owner)\n"),
    (
        "code",
        SECAGG,
        "return seed is not None and self_mask_commitment(seed, sid, u) == commitment",
        "return seed is None or self_mask_commitment(seed, sid, u) == commitment",
    ),
    (
        "code",
        SECAGG,
        "if bad_seeds or bad_keys:\n    raise self._blame",
        "if bad_seeds:\n    raise self._blame",
    ),
    (
        "blame-reasons",
        SECAGG,
        "| `SHARE_OFF_POLYNOMIAL` | `share_off_polynomial` |",
        "| `SHARE_OFF_POLYNOMIAL` | `bad_share` |",
    ),
    (
        "client-statuses",
        SECAGG,
        "| `DROPPED_IN_R2` | `dropped_in_R2` |\n",
        "",
    ),
    (
        "code",
        SECAGG,
        "return state if state in TERMINAL else Round.ABORTED",
        "return Round.ABORTED",
    ),
    ("code", MESSAGES, "    + u32(sender)\n    + cipher_pk", "    + cipher_pk\n    + u32(sender)"),
    (
        "message-types",
        MESSAGES,
        "| 8 | `UnmaskResponse` | client → server | R4 | 3 |",
        "| 8 | `UnmaskResponse` | client → server | R4 | 4 |",
    ),
    ("cddl-messages", MESSAGES, "unmask-response = [8,", "unmask-response = [9,"),
    ("cddl-messages", MESSAGES, ' / "invalid_public_key"', ""),
    (
        "cddl-messages",
        MESSAGES,
        "self-mask-commitment: commitment, ciphertexts",
        "ciphertexts",
    ),
    ("cddl-messages", MESSAGES, "commitment  = bstr .size 32", "commitment  = bstr .size 64"),
    ("cddl-messages", MESSAGES, "share       = bstr .size 33", "share       = bstr .size 32"),
    (
        "cddl-config",
        MESSAGES,
        "  threshold: uint,\n  vector-length",
        "  vector-length: uint,\n  threshold",
    ),
    ("share-plaintext", MESSAGES, "| 8 | 33 |", "| 8 | 32 |"),
    ("share-plaintext", MESSAGES, "| 0 | 4 | sender id |", "| 0 | 4 | recipient id |"),
    ("packing-example", MESSAGES, "`01ff805f00`", "`01ff805f01`"),
    ("example-transcript", MESSAGES, "ae6eb1290145669bfe0106", "ae6eb1290145669bfe0107"),
    ("example-transcript", MESSAGES, "`MaskedInput` (43 bytes)", "`MaskedInput` (44 bytes)"),
    ("example-transcript", MESSAGES, "`ShareKeys` (354 bytes)", "`ShareKeys` (320 bytes)"),
    (
        "message-sizes",
        MESSAGES,
        "| `AdvertiseKeys`, active | 171 |",
        "| `AdvertiseKeys`, active | 170 |",
    ),
    (
        "message-sizes",
        MESSAGES,
        "| `ShareKeys` without the ciphertext array | 71 |",
        "| `ShareKeys` without the ciphertext array | 39 |",
    ),
    (
        "abort-reasons",
        SECAGG,
        "| `INVALID_PUBLIC_KEY` | `invalid_public_key` |",
        "| `CONFIG_MISMATCH` | `config_mismatch` |",
    ),
    (
        "constants",
        SECAGG,
        "| `2**30 - 64` | `protocol.config.MAX_PACKED_SIZE` |",
        "| `2**30 - 46` | `protocol.config.MAX_PACKED_SIZE` |",
    ),
    (
        "completed-client",
        SECAGG,
        "| `UnmaskRequest` to `u` (step 7) | refused, `second_unmask_request` |",
        "| `UnmaskRequest` to `u` (step 7) | refused, `wrong_round` |",
    ),
    (
        "completed-client",
        SECAGG,
        "| `Abort` with its `sid` (step 5) | ignored: no error, no reply |",
        "| `Abort` with its `sid` (step 5) | refused, `wrong_round` |",
    ),
    (
        "client-abort",
        SECAGG,
        "| `ABORTED` | refused (`wrong_round`), stays",
        "| `ABORTED` | refused (`wrong_session`), stays",
    ),
    (
        "client-abort",
        SECAGG,
        "`sid' ≠ sid` | `ABORTED` with reason `wrong_session` (refused) |",
        "`sid' ≠ sid` | `ABORTED` with reason `wrong_recipient` (refused) |",
    ),
    (
        "check-order",
        SECAGG,
        "| server | replay, length | `replayed_message`",
        "| server | replay, length | `wrong_vector_length`",
    ),
    (
        "check-order",
        SECAGG,
        "| `order_recipient_before_round` | client |",
        "| `order_recipient_before_round` | server |",
    ),
    (
        "code",
        SECAGG,
        "t1 = math.ceil((t1 + k - _SEMI_MALICIOUS_SHIFT) / 2)",
        "t1 = math.ceil((t1 + k - _SEMI_MALICIOUS_SHIFT) / 3)",
    ),
    ("code", SECAGG, "_SMALL = 1e-14", "_SMALL = 1e-15"),
    ("code", SECAGG, 'b"secagg-task\\x00"', 'b"secagg-task\\x01"'),
    ("code", SECAGG, '">Qdd", self.max_eval_examples', '">Qdf", self.max_eval_examples'),
    # §4.7 client policy and §10.2 orchestrator thresholds.
    (
        "code",
        SECAGG,
        "if mode is Mode.ACTIVE and 2 * t - k <= c_max:",
        "if mode is Mode.ACTIVE and 2 * t - k < c_max:",
    ),
    ("code", SECAGG, "if mode is Mode.SEMI_HONEST and t <= c_max:", "if t <= c_max:"),
    (
        "code",
        SECAGG,
        "if num_survivors < policy.min_participants:",
        "if num_survivors <= policy.min_participants:",
    ),
    ("code", SECAGG, "if t > k - dropped:", "if t >= k - dropped:"),
]


@pytest.mark.parametrize(("name", "path", "old", "new"), MUTATIONS)
def test_mutation_is_detected(name: str, path: str, old: str, new: str) -> None:
    text = spec(path)
    assert old in text, f"mutation target {old!r} is no longer in {path}: update MUTATIONS"
    mutated = text.replace(old, new, 1)
    check = check_code_quotes if name == "code" else CHECKS[name][1]
    with pytest.raises(AssertionError):
        check(mutated)


def test_every_check_has_a_mutation() -> None:
    mutated = {name for name, *_ in MUTATIONS}
    assert mutated >= set(CHECKS) | {"code"}


# ---------------------------------------------------------------------------
# Executable spec: the definitions recomputed with independent code.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "width"), [(np.uint32, 32), (np.uint64, 64)])
@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_prg_is_section_7_2(dtype: type[np.unsignedinteger], width: int, start: int) -> None:
    key = bytes(range(16))
    out = np.zeros(11, dtype=dtype)
    prg_fill(key, out, start=start)  # type: ignore[arg-type]
    assert out.tolist() == prg_words(key, width, start, 11)


@pytest.mark.parametrize(("n", "k"), [(8, 3), (9, 4), (6, 5), (7, 2)])
def test_harary_graph_is_section_9(n: int, k: int) -> None:
    cfg = SessionConfig(
        participants=tuple(range(10, 10 + 3 * n, 3)),
        threshold=1,
        vector_length=1,
        bit_width=8,
        nonce=bytes([n, k]) * 16,
        graph=GraphKind.HARARY,
        degree=k,
    )
    seed = kdf(cfg.session_id, b"graph", cfg.session_id, b"", 32)
    ring = spec_ring(cfg.participants, seed)
    graph = cfg.neighbour_graph
    assert graph.ring == ring
    h = k // 2
    for q, client in enumerate(ring):
        steps = {s for d in range(1, h + 1) for s in (d, -d)}
        if k % 2:
            steps.add(n // 2)
        assert graph.neighbours(client) == {ring[(q + s) % n] for s in steps}


def _client_stream(u: int) -> SpecRandom:
    """The randomness of client ``u`` in the worked example (secagg-v1.md §18)."""
    return SpecRandom(EXAMPLE_SEED + b"/client/" + u32(u))


def _entries(u: int) -> dict[int, AdvertisedKeys]:
    directory = decode_message(example_messages(u)["KeyDirectory"])
    return {e.sender: e for e in directory.entries}  # type: ignore[attr-defined]


def open_share(sender: int, recipient: int) -> bytes:
    """Decrypt the example's share ciphertext sender -> recipient as §12.5 prescribes."""
    cfg, _ = example()
    sid = cfg.session_id
    c_sk = _client_stream(sender).random_bytes(32)
    c_pk = _entries(sender)[recipient].cipher_public_key
    share_keys = decode_message(example_messages(sender)["ShareKeys"])
    assert isinstance(share_keys, ShareKeys)
    ct = dict(share_keys.ciphertexts)[recipient]
    key = kdf(x25519(c_sk, c_pk), b"share-encryption", sid, u32(sender) + u32(recipient), 32)
    return ChaCha20Poly1305(key).decrypt(bytes(12), ct, sid + u32(sender) + u32(recipient))


def test_shamir_sampling_and_share_layout_are_section_8() -> None:
    p = 2**256 + 297
    stream = _client_stream(1)
    stream.random_bytes(32)  # c_sk
    s_sk, seed = stream.random_bytes(32), stream.random_bytes(32)
    coeffs = []
    for _ in range(2):  # one coefficient (t - 1 = 1) per secret: s_sk, then b
        while True:
            c = int.from_bytes(stream.random_bytes(33), "little") & (2**257 - 1)
            if c < p:
                coeffs.append(c)
                break
    for v in (2, 3, 4):
        plain = open_share(1, v)
        key_share = int.from_bytes(plain[8:41], "little")
        seed_share = int.from_bytes(plain[41:74], "little")
        assert key_share == (int.from_bytes(s_sk, "little") + coeffs[0] * v) % p
        assert seed_share == (int.from_bytes(seed, "little") + coeffs[1] * v) % p
    # Lagrange at zero from holders 2 and 3.
    y2, y3 = (int.from_bytes(open_share(1, v)[8:41], "little") for v in (2, 3))
    lam2 = 3 * pow(3 - 2, -1, p) % p
    lam3 = 2 * pow(2 - 3, -1, p) % p
    assert ((lam2 * y2 + lam3 * y3) % p).to_bytes(32, "little") == s_sk
    assert x25519_public(s_sk) == _entries(1)[1].mask_public_key


def test_masked_input_is_section_12_7() -> None:
    cfg, _ = example()
    sid, b, u = cfg.session_id, cfg.bit_width, 1
    stream = _client_stream(u)
    stream.random_bytes(32)  # c_sk
    s_sk, seed = stream.random_bytes(32), stream.random_bytes(32)
    bundle = decode_message(example_messages(u)["ShareBundle"])
    assert isinstance(bundle, ShareBundle)
    peers = [v for v, _ in bundle.ciphertexts]
    y = [int(x) % 2**b for x in EXAMPLE_INPUT]
    masks = [(+1, kdf(seed, b"self-mask", sid, u32(u), 16))]
    for v in peers:
        shared = x25519(s_sk, _entries(u)[v].mask_public_key)
        key = kdf(shared, b"pairwise-mask", sid, u32(min(u, v)) + u32(max(u, v)), 16)
        masks.append((+1 if u < v else -1, key))
    for sign, key in masks:
        words = prg_words(key, 32, 0, len(y))
        y = [(yi + sign * wi) % 2**b for yi, wi in zip(y, words, strict=True)]
    masked = decode_message(example_messages(u)["MaskedInput"])
    assert isinstance(masked, MaskedInput)
    assert masked.masked == pack_bits(np.array(y, dtype=np.uint32), b)


def test_unmask_response_is_section_12_9() -> None:
    """Client 1 reveals b_v for survivors 2, 3 and s_sk_4 for the dropped 4, from its bundle."""
    cfg, _ = example()
    sid = cfg.session_id
    c_sk = _client_stream(1).random_bytes(32)
    bundle = decode_message(example_messages(1)["ShareBundle"])
    request = decode_message(example_messages(1)["UnmaskRequest"])
    response = decode_message(example_messages(1)["UnmaskResponse"])
    assert isinstance(bundle, ShareBundle) and isinstance(request, UnmaskRequest)
    assert isinstance(response, UnmaskResponse)
    held = {}
    for v, ct in bundle.ciphertexts:
        shared = x25519(c_sk, _entries(1)[v].cipher_public_key)
        key = kdf(shared, b"share-encryption", sid, u32(v) + u32(1), 32)
        held[v] = ChaCha20Poly1305(key).decrypt(bytes(12), ct, sid + u32(v) + u32(1))
    assert request.survivors == (1, 2, 3) and request.dropped == (4,)
    assert response.self_mask_shares == ((2, held[2][41:74]), (3, held[3][41:74]))
    assert response.mask_key_shares == ((4, held[4][8:41]),)


def test_self_mask_commitment_is_section_6_4() -> None:
    """Client 1's ShareKeys carries SHA-256(label, sid, u32(1), b_1), b_1 drawn as §18 says."""
    cfg, _ = example()
    stream = _client_stream(1)
    stream.random_bytes(64)  # c_sk, s_sk
    seed = stream.random_bytes(32)
    share_keys = decode_message(example_messages(1)["ShareKeys"])
    assert isinstance(share_keys, ShareKeys)
    prefix = b"secagg-v1\x00self-mask-commitment\x00"
    want = hashlib.sha256(prefix + cfg.session_id + u32(1) + seed).digest()
    assert share_keys.self_mask_commitment == want


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    return text[start : text.index("\n### ", start + 1)]


def _small_order_keys() -> set[bytes]:
    """The 5 canonical small-order encodings of secagg-v1.md §6.5, from the values it names."""
    p = 2**255 - 19
    section = _section(spec(SECAGG), "### 6.5 ")
    order8 = [
        int.from_bytes(bytes.fromhex(h), "little") for h in re.findall(r"`([0-9a-f]{64})`", section)
    ]
    assert len(order8) == 2, "§6.5 names the two points of order 8"
    keys = {v.to_bytes(32, "little") for v in [0, 1, p - 1, *order8]}
    assert len(keys) == 5
    return keys


def _canonical(key: bytes) -> bool:
    """§6.5 rule 1, recomputed: bit 255 clear and u < 2^255 - 19."""
    return int.from_bytes(key, "little") < 2**255 - 19


def _agrees(secret: bytes, public: bytes) -> bool:
    try:
        x25519(secret, public)
    except ValueError:  # OpenSSL refuses the all-zero shared secret
        return False
    return True


def test_small_order_keys_are_section_6_5() -> None:
    keys = _small_order_keys()
    assert keys == X25519_SMALL_ORDER
    p = 2**255 - 19
    rng = np.random.default_rng(65)  # test data only
    scalars = [rng.bytes(32) for _ in range(3)] + [bytes(range(1, 33))]
    for key in keys:
        assert not x25519_is_valid_public(key), key.hex()
        assert not any(_agrees(k, key) for k in scalars), key.hex()
        # Its non-canonical spellings (u + p where < 2^255, bit 255 set) fail rule 1
        # although X25519 computes the same function of them.
        u = int.from_bytes(key, "little")
        spellings = [u + p] if u + p < 2**255 else []
        for w in [*spellings, *(v + 2**255 for v in [u, *spellings])]:
            alias = w.to_bytes(32, "little")
            assert not x25519_is_valid_public(alias), alias.hex()
        # Every other canonical value next to a refused one is an ordinary key.
        for delta in (-1, 1):
            near = ((u + delta) % 2**256).to_bytes(32, "little")
            if near not in keys and _canonical(near):
                assert x25519_is_valid_public(near) and _agrees(scalars[0], near), near.hex()
    for _ in range(200):
        key = rng.bytes(32)
        assert x25519_is_valid_public(key) == (key not in keys and _canonical(key))
        # A canonical key with bit 255 set is the same key to X25519, and refused.
        low = key[:31] + bytes([key[31] & 0x7F])
        if _canonical(low) and low not in keys:
            high = low[:31] + bytes([low[31] | 0x80])
            assert x25519(scalars[0], high) == x25519(scalars[0], low)
            assert not x25519_is_valid_public(high)


def _edwards_point(encoding_y: int) -> tuple[int, int]:
    """Decompress (x, y) with sign 0 on edwards25519 (RFC 8032 §5.1.3), independent code."""
    p = 2**255 - 19
    d = -121665 * pow(121666, -1, p) % p
    y = encoding_y
    u, v = (y * y - 1) % p, (d * y * y + 1) % p
    x = u * pow(v, 3, p) * pow(u * pow(v, 7, p), (p - 5) // 8, p) % p
    if v * x * x % p != u:
        x = x * pow(2, (p - 1) // 4, p) % p
    assert v * x * x % p == u, "not on the curve"
    return (x if x % 2 == 0 else p - x), y


def _edwards_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    p = 2**255 - 19
    d = -121665 * pow(121666, -1, p) % p
    (x1, y1), (x2, y2) = a, b
    t = d * x1 * x2 * y1 * y2 % p
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, -1, p) % p,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, p) % p,
    )


def test_ed25519_constants_are_section_6_6() -> None:
    """L, p and the small-order y-coordinates of §6.6, recomputed on the curve."""
    section = _section(spec(SECAGG), "### 6.6 ")
    (y8_hex,) = re.findall(r"`([0-9a-f]{64})`", section)
    y8 = int.from_bytes(bytes.fromhex(y8_hex), "little")
    p = 2**255 - 19
    assert p == FIELD_PRIME
    assert "`L = 2^252 + 27742317777372353535851937790883648493`" in section
    assert ED25519_GROUP_ORDER == 2**252 + 27742317777372353535851937790883648493
    assert {0, 1, p - 1, y8, p - y8} == ED25519_SMALL_ORDER_Y
    # y8 is a point of order exactly 8: doubling it three times gives the identity.
    point = _edwards_point(y8)
    for _ in range(2):
        point = _edwards_add(point, point)
    assert point != (0, 1)
    assert _edwards_add(point, point) == (0, 1)


def test_server_advert_checks_are_section_12_4_in_order() -> None:
    """Signature, then small order, then equal keys, then a key already in use."""
    cfg = make_config(3, 2, mode="active", seed=b"spec-12.4")
    sid = cfg.session_id
    key_a, key_b, key_c = (x25519_public(bytes([i]) * 32) for i in (1, 2, 3))
    zero = bytes(32)  # small order (§6.5)

    def advert(sender: int, c_pk: bytes, s_pk: bytes, *, signed: bool = True) -> bytes:
        payload = _keys.advertise_payload(sid, sender, c_pk, s_pk)
        sig = ed25519_sign(identity_secret(sender), payload) if signed else bytes(64)
        return AdvertiseKeys(sid, AdvertisedKeys(sender, c_pk, s_pk, sig)).encode()

    def refusal(server: ServerSession, data: bytes) -> AbortReason | None:
        try:
            server.receive(data)
        except RemoteProtocolError as exc:
            return exc.reason
        return None

    server = ServerSession(cfg)
    assert refusal(server, advert(1, zero, zero, signed=False)) is AbortReason.BAD_SIGNATURE
    assert refusal(server, advert(1, zero, zero)) is AbortReason.INVALID_PUBLIC_KEY
    assert refusal(server, advert(1, key_a, zero)) is AbortReason.INVALID_PUBLIC_KEY
    assert refusal(server, advert(1, key_a, key_a)) is AbortReason.DUPLICATE_KEYS
    assert refusal(server, advert(1, key_a, key_b)) is None
    assert refusal(server, advert(2, key_c, zero)) is AbortReason.INVALID_PUBLIC_KEY
    assert refusal(server, advert(2, key_c, key_a)) is AbortReason.DUPLICATE_KEYS


_SID_HEX = "5820" + "00" * 32
# messages-v1.md §1. Two messages, because the reference decodes them with different
# codecs: MaskedInput [4, sid, sender, masked] (the subset decoder) and
# ConsistencyRequest [5, sid, recipient, survivors] (cbor2 + re-encoding). "{h}" is the
# array head and type, "{s}" the session id; each variant must be refused.
_TEMPLATES = {
    "MaskedInput": ("8404", "014101", "01", "4101"),
    "ConsistencyRequest": ("8405", "018101", "01", "8101"),
}
_VARIANTS = {
    "valid": "{h}{s}{id}{tail}",
    "non-shortest integer head": "{h}{s}1801{tail}",
    "non-shortest length head": "{h}{s}{id}{tail_long}",
    "indefinite-length outer array": "9f{t}{s}{id}{tail}ff",
    "trailing bytes": "{h}{s}{id}{tail}00",
    "float (half precision)": "{h}{s}f93c00{tail}",
    "float (NaN)": "{h}{s}f97e00{tail}",
    "map": "{h}{s}a10101{tail}",
    "tag (unknown)": "{h}{s}d9ffff01{tail}",
    "tag (bignum)": "{h}{s}c24101{tail}",
    "simple value true": "{h}{s}f5{tail}",
    "simple value null": "{h}{s}f6{tail}",
    "simple value undefined": "{h}{s}f7{tail}",
    "negative integer": "{h}{s}20{tail}",
    "text string session id": "{h}7820" + "41" * 32 + "{id}{tail}",
    "unknown message type": "840a{s}{id}{tail}",
    "extra body field": "85{t}{s}{id}{tail}00",
    "id out of range": "{h}{s}1b0000000100000000{tail}",
}


def _variant(message: str, case: str) -> bytes:
    head, _, ident, tail = _TEMPLATES[message]
    tail_long = {"4101": "580101", "8101": "980101"}[tail]
    text = _VARIANTS[case].format(
        h=head, t=head[2:], s=_SID_HEX, id=ident, tail=tail, tail_long=tail_long
    )
    return bytes.fromhex(text)


@pytest.mark.parametrize("message", sorted(_TEMPLATES))
@pytest.mark.parametrize("case", sorted(_VARIANTS))
def test_decoder_accepts_exactly_the_cbor_subset(message: str, case: str) -> None:
    from protocol.errors import DecodeError

    data = _variant(message, case)
    if case == "valid":
        decoded = decode_message(data)
        assert type(decoded).__name__ == message and decoded.encode() == data
    else:
        with pytest.raises(DecodeError):
            decode_message(data)


# ---------------------------------------------------------------------------
# §13.1 blame, written from the spec with naive Lagrange interpolation.
# ---------------------------------------------------------------------------

_P = (1 << 256) + 297


def _naive_eval(points: list[tuple[int, int]], x: int) -> int:
    total = 0
    for j, (xj, yj) in enumerate(points):
        term = yj
        for m, (xm, _) in enumerate(points):
            if m != j:
                term = term * (x - xm) % _P * pow(xj - xm, -1, _P) % _P
        total = (total + term) % _P
    return total


def _spec_blame(
    shares: dict[int, int], t: int, check: Callable[[bytes], bool]
) -> tuple[bool, tuple[int, ...]]:
    """(owner blamed, holders blamed) by rules 1-3 of §13.1."""
    xs = sorted(shares)
    m = len(xs)

    def passes(v: int) -> bool:
        return v < 1 << 256 and check(v.to_bytes(32, "little"))

    if m == t:
        return False, ()
    g0 = [(x, shares[x]) for x in xs[:t]]
    if all(_naive_eval(g0, x) == shares[x] for x in xs) and not passes(_naive_eval(g0, 0)):
        return True, ()
    for i in range(m):
        window = [(xs[(i + j) % m], shares[xs[(i + j) % m]]) for j in range(t)]
        if passes(_naive_eval(window, 0)):
            bad = tuple(x for x in xs if _naive_eval(window, x) != shares[x])
            return (False, bad) if len(bad) <= (m - t) // 2 else (False, ())
    return False, ()


@pytest.mark.parametrize("case", range(60))
def test_blame_is_section_13_1(case: int) -> None:
    from protocol.shamir import judge_shares, split_secrets

    rng = DeterministicRandom(b"blame-%d" % case)

    def draw(n: int) -> int:
        return int.from_bytes(rng.random_bytes(4), "little") % n

    t = 1 + draw(5)
    m = t + draw(6)
    xs = sorted({1 + draw(1000) for _ in range(3 * m)})[:m]
    if len(xs) < m:
        pytest.skip("not enough distinct holders drawn")
    secret = rng.random_bytes(32)
    (row,) = split_secrets([secret], xs, t, rng)
    shares = dict(zip(xs, row, strict=True))
    for x in xs:  # any number of liars, beyond the bound too
        if draw(4) == 0:
            shares[x] = (shares[x] + 1 + draw(1 << 30)) % _P
    owner_lies = draw(2) == 0
    committed = hashlib.sha256(b"other" if owner_lies else secret).digest()

    def check(s: bytes) -> bool:
        return hashlib.sha256(s).digest() == committed

    verdict = judge_shares(shares, t, check)
    assert (verdict.owner_at_fault, verdict.bad_holders) == _spec_blame(shares, t, check)

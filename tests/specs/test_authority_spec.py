"""``specs/authority-v1.md`` against the code: quoted tables, CDDL, code and step anchors.

Same conventions as ``test_spec_quotes.py``: each check is a function of the
markdown text, and each has a mutation the check must catch.
"""

from __future__ import annotations

import re

import pytest

from protocol import authority
from protocol.authority import (
    CERTIFICATE_FIELDS,
    ROSTER_FIELDS,
    CertificationFault,
    issue_certificate,
    sign_roster,
)
from protocol.authority_vectors import authority_secret
from protocol.crypto import ed25519_public_key
from protocol.simulate import identity_secret
from tests.specs.test_spec_quotes import (
    ROOT,
    _marker,
    check_code_quotes,
    fence,
    spec,
    table,
    ticks,
)

AUTHORITY = "authority-v1.md"


def check_constants(text: str) -> None:
    rows = table(text, "authority-constants")
    assert len(rows) == 8, "constants table rows"
    for row in rows:
        name = ticks(row["Code"]).rsplit(".", 1)[1]
        value = eval(ticks(row["Value"]), {})  # literals and arithmetic of the table only
        assert getattr(authority, name) == value, f"{name} differs from the spec"


def _cddl_fields(lines: list[str], rule: str) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{rule} = ["))
    names = []
    for line in lines[start + 1 :]:
        if line.startswith("]"):
            return names
        m = re.match(r"\s+([a-z-]+):", line)
        assert m, f"{rule}: unexpected line {line!r}"
        names.append(m.group(1))
    raise AssertionError(f"{rule}: unterminated")


def check_cddl(text: str) -> None:
    lines = fence(text, "cddl-authority")
    assert tuple(_cddl_fields(lines, "certificate")) == CERTIFICATE_FIELDS
    assert tuple(_cddl_fields(lines, "roster")) == ROSTER_FIELDS
    body = "\n".join(lines)
    assert f'format: "{authority.CERTIFICATE_FORMAT}"' in body
    assert f'format: "{authority.ROSTER_FORMAT}"' in body
    assert 'signing_input("identity-certificate", body)' in body
    assert 'signing_input("roster", body)' in body


def check_faults(text: str) -> None:
    rows = table(text, "certification-faults")
    got = [(ticks(r["Fault"]), ticks(r["Value"])) for r in rows]
    assert got == [(f.name, f.value) for f in CertificationFault], "faults differ from the code"


def check_step_anchors(text: str) -> None:
    """Every numbered step of §5.2 has its anchor comment in protocol/authority.py."""
    section = text[text.index("### 5.2 ") : text.index("## 6. ")]
    steps = [int(n) for n in re.findall(r"^(\d+)\. ", section, re.MULTILINE)]
    assert steps == list(range(1, len(steps) + 1)), "steps are numbered 1..n"
    source = (ROOT / "protocol" / "authority.py").read_text()
    for n in steps:
        assert f"# §5.2 step {n}\n" in source, f"no anchor for §5.2 step {n}"
    assert len(steps) == 7


CHECKS = {
    "authority-constants": check_constants,
    "cddl-authority": check_cddl,
    "certification-faults": check_faults,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_quote_matches_code(name: str) -> None:
    _marker(spec(AUTHORITY), name)
    CHECKS[name](spec(AUTHORITY))


def test_quoted_code_and_anchors() -> None:
    check_code_quotes(spec(AUTHORITY))
    check_step_anchors(spec(AUTHORITY))


def test_every_quote_marker_is_checked() -> None:
    names = re.findall(r"^<!-- quote: ([a-z0-9-]+) -->$", spec(AUTHORITY), re.MULTILINE)
    assert sorted(names) == sorted(CHECKS)


MUTATIONS = [
    ("authority-constants", "| `2**17` |", "| `2**16` |"),
    ("authority-constants", '| `b"roster"` |', '| `b"rosters"` |'),
    ("cddl-authority", "  serial: uint,", "  counter: uint,"),
    ("cddl-authority", "  client-id: uint .size 4,         ; 1", "  scope: tstr,  ; 1"),
    ("certification-faults", "| `EXPIRED` | `expired` |", "| `EXPIRED` | `too_old` |"),
    ("code", "if expected != key:", "if expected == key:"),
    ("anchors", "6. The roster's key for `u`", "6. The roster's key for `u`\n8. x"),
]


@pytest.mark.parametrize(("name", "old", "new"), MUTATIONS)
def test_mutation_is_detected(name: str, old: str, new: str) -> None:
    text = spec(AUTHORITY)
    assert old in text, f"mutation target {old!r} is not in {AUTHORITY}"
    mutated = text.replace(old, new, 1)
    check = {"code": check_code_quotes, "anchors": check_step_anchors}.get(name) or CHECKS[name]
    with pytest.raises(AssertionError):
        check(mutated)


def test_encodings_follow_the_cddl_order() -> None:
    """A certificate and a roster decode (as plain CBOR) to the fields of §4 in order."""
    import cbor2

    secret = authority_secret("root")
    key = ed25519_public_key(identity_secret(5))
    cert = cbor2.loads(issue_certificate(secret, 5, key, "task/9", 10, 20).encode())
    assert cert[:7] == [
        authority.CERTIFICATE_FORMAT,
        ed25519_public_key(secret),
        5,
        key,
        "task/9",
        10,
        20,
    ]
    roster = cbor2.loads(sign_roster(secret, "task/9", 4, 10, 20, [(5, key)]).encode())
    assert roster[:7] == [
        authority.ROSTER_FORMAT,
        ed25519_public_key(secret),
        "task/9",
        4,
        10,
        20,
        [[5, key]],
    ]

"""Every numbered step of §5.3, §6.6 and §12-§13 is cited by the code, and every
citation exists.

``specs/secagg-v1.md`` §12 and §13 list, as numbered steps, what each party
checks and does (§5.3 the configuration checks, §6.6 the Ed25519 rules, as a
numbered table); the reference code cites the step it implements with a
comment opening with the step, such as ``# §12.6 step 3`` (a client list, or the only list of a
section), ``# §12.4 server step 1`` (the server, per message),
``# §12.6 advance step 2`` (the server's ``advance()``) or ``# §13.1 rule 2``
(the blame rules, and ``# §6.6 rule 4`` for a row of the Ed25519 table).
:func:`check_anchors` parses the steps from the spec text
and the citations from the code and fails on a step nobody cites or a citation
of a step that does not exist; the mutation tests below show it does both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "secagg-v1.md"
# Where the steps are implemented: the two sessions, the blame rules of §13.1
# in ``judge_shares``, the configuration checks of §5.3 and the Ed25519 rules of
# §6.6.
CODE = (
    "protocol/client.py",
    "protocol/server.py",
    "protocol/shamir.py",
    "protocol/config.py",
    "protocol/crypto/_primitives.py",
)
# Sections whose numbered lists are steps to cite (all of §12 and §13, besides).
_LISTED = ("5.3",)
_TABLED = ("6.6",)  # a table whose first column "#" numbers the rules

Step = tuple[str, str, str, int]  # (section, list label, "step" | "rule", number)

_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ")
_ITEM = re.compile(r"^(\d+)\. ")
_ROW = re.compile(r"^\| (\d+) \|")
# A citation: "§12.6 step 3", "§12.4 server step 1", "§12.6 advance step 2", "§13.1 rule 2".
_CITATION = re.compile(r"§(5\.3|6\.6|1[23](?:\.\d+)?) (?:(server|advance) )?(step|rule) (\d+)\b")


def _label(lead_in: str) -> str:
    """Which list a paragraph introduces: the server's per-message checks, its
    ``advance()``, or (client, or a section's only list) none."""
    if lead_in.startswith("Server `advance()`"):
        return "advance"
    if lead_in.startswith("Server"):
        return "server"
    return ""


def spec_steps(text: str) -> set[Step]:
    """The numbered steps of §5.3, §6.6, §12 and §13, each list numbered 1, 2, ..."""
    steps: set[Step] = set()
    section: str | None = None
    label = ""
    previous_blank = True
    expected_next = 1
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(line)
        if heading:
            number = heading.group(1)
            cited = number.split(".")[0] in ("12", "13") or number in _LISTED + _TABLED
            section = number if cited else None
            label, expected_next = "", 1
        elif section in _TABLED:
            row = _ROW.match(line)
            if row:
                n = int(row.group(1))
                assert n == expected_next, f"§{section} table: rule {n} after {expected_next - 1}?"
                expected_next = n + 1
                steps.add((section, "", "rule", n))
        elif section is not None and line and not line[0].isspace():
            item = _ITEM.match(line)
            if item:
                n = int(item.group(1))
                if n == 1:
                    expected_next = 1
                assert n == expected_next, f"§{section} {label} list: step {n} after {n - 1}?"
                expected_next = n + 1
                kind = "rule" if section == "13.1" else "step"
                step = (section, label, kind, n)
                assert step not in steps, f"two lists of §{section} share the label {label!r}"
                steps.add(step)
            elif previous_blank:
                label = _label(line)
        previous_blank = not line.strip()
    return steps


def citations(text: str) -> list[Step]:
    return [
        (m.group(1), m.group(2) or "", m.group(3), int(m.group(4)))
        for m in _CITATION.finditer(text)
    ]


def name(step: Step) -> str:
    section, label, kind, n = step
    return f"§{section} {label + ' ' if label else ''}{kind} {n}"


def check_anchors(spec: str, sources: Mapping[str, str]) -> None:
    """Raise AssertionError unless the code cites exactly the spec's steps."""
    steps = spec_steps(spec)
    assert len(steps) > 90, f"only {len(steps)} steps parsed"
    anchored: dict[Step, list[str]] = {}  # a comment that opens with the step
    cited: dict[Step, list[str]] = {}  # any mention in a comment
    for path, source in sources.items():
        for lineno, line in enumerate(source.splitlines(), 1):
            if "#" not in line:
                continue
            comment = line[line.index("#") :]
            for step in citations(comment):
                cited.setdefault(step, []).append(f"{path}:{lineno}")
            opening = _CITATION.match(comment.lstrip("# "))
            if opening:
                anchored.setdefault(citations(opening.group(0))[0], []).append(f"{path}:{lineno}")
    unknown = {name(s): where for s, where in cited.items() if s not in steps}
    assert not unknown, f"the code cites steps the spec does not have: {unknown}"
    uncited = sorted(name(s) for s in steps - anchored.keys())
    assert not uncited, f"spec steps no comment in {list(sources)} cites: {uncited}"
    # The spec's own cross-references (e.g. the check-order table) name real steps too.
    dangling = sorted({name(s) for s in citations(spec) if s not in steps})
    assert not dangling, f"the spec cites steps it does not have: {dangling}"


@cache
def _spec() -> str:
    return SPEC.read_text(encoding="utf-8")


@cache
def _sources() -> dict[str, str]:
    return {path: (ROOT / path).read_text(encoding="utf-8") for path in CODE}


def test_every_step_is_cited_and_every_citation_exists() -> None:
    check_anchors(_spec(), _sources())


def test_steps_are_parsed_by_list() -> None:
    steps = spec_steps(_spec())
    # A few known steps, one per kind of list.
    for step in [
        ("12.1", "", "step", 8),
        ("12.1", "server", "step", 8),
        ("12.3", "", "step", 3),
        ("12.4", "server", "step", 4),
        ("12.5", "", "step", 11),
        ("12.6", "advance", "step", 3),
        ("12.10", "", "step", 7),
        ("13", "", "step", 5),
        ("13.1", "", "rule", 3),
        ("5.3", "", "step", 7),
        ("6.6", "", "rule", 7),
    ]:
        assert step in steps, name(step)
    assert ("12.1", "", "step", 9) not in steps
    assert ("12.10", "", "step", 8) not in steps
    assert ("6.6", "", "rule", 8) not in steps


@pytest.mark.parametrize(
    ("path", "anchor"),
    [
        ("protocol/client.py", "# §12.6 step 2\n"),
        ("protocol/client.py", "# §12.10 step 5\n"),
        ("protocol/server.py", "# §12.4 server step 3\n"),
        ("protocol/server.py", "# §12.3 step 2\n"),
        ("protocol/server.py", "# §13 step 2\n"),
        ("protocol/shamir.py", "# §13.1 rule 2\n"),
        ("protocol/config.py", "# §5.3 step 4\n"),
        ("protocol/crypto/_primitives.py", "# §6.6 rule 4\n"),
    ],
)
def test_removing_an_anchor_is_detected(path: str, anchor: str) -> None:
    sources = dict(_sources())
    assert sources[path].count(anchor) == 1, f"{anchor!r} not once in {path}"
    sources[path] = sources[path].replace(anchor, "\n")
    with pytest.raises(AssertionError, match=r"no comment .* cites"):
        check_anchors(_spec(), sources)


def test_an_anchor_to_a_missing_step_is_detected() -> None:
    sources = dict(_sources())
    sources["protocol/client.py"] += "\n# §12.10 step 8\n"
    with pytest.raises(AssertionError, match="cites steps the spec does not have"):
        check_anchors(_spec(), sources)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        # A step added to the spec that no code implements.
        (
            "7. `|S ∩ N(u)| ≥ t`, else `below_threshold`.\n",
            "7. `|S ∩ N(u)| ≥ t`, else `below_threshold`.\n8. A new check.\n",
            r"no comment .* cites",
        ),
        # Steps renumbered: the list no longer counts 1, 2, ...
        ("2. Number of senders `≥ t`", "3. Number of senders `≥ t`", "step 3 after 2"),
        ("| 5 | `R` canonical", "| 6 | `R` canonical", "rule 6 after 4"),
        # A list relabelled: the server's per-message steps of §12.4 become uncited.
        (
            "Server, per message (after §12.1; `ServerSession._receive_r0`):",
            "Checks, per message (after §12.1; `ServerSession._receive_r0`):",
            "two lists of §12.4 share the label",
        ),
    ],
)
def test_changing_the_steps_is_detected(old: str, new: str, match: str) -> None:
    spec = _spec()
    assert spec.count(old) == 1, old
    with pytest.raises(AssertionError, match=match):
        check_anchors(spec.replace(old, new), _sources())

"""specs/dp-v1.md against the code: the parameter table, the context layout, the vectors."""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from pathlib import Path

import pytest

from protocol.dp import DPParams, Mechanism, conditional_rounding_bound
from protocol.dp_vectors import check_dp_vectors

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "specs" / "dp-v1.md").read_text()


def section(number: int) -> str:
    start = SPEC.index(f"## {number}. ")
    end = SPEC.index("\n## ", start + 1)
    return SPEC[start:end]


def test_the_parameter_table_lists_the_fields_in_order() -> None:
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", section(3), flags=re.M)
    assert rows == [f.name for f in dataclasses.fields(DPParams)]


def test_the_context_layout_is_the_one_the_spec_states() -> None:
    p = DPParams(Mechanism.DDGAUSS, 10, 0.5, 30.0, 0.25, 77, 3, 18, 4.0, 1e-6)
    # Rebuilt from §3's layout, independently of DPParams.context().
    want = (
        b"dp-v1\x00ddgauss\x00"
        + b"".join(v.to_bytes(8, "big") for v in (10, 77, 3, 18))
        + b"".join(struct.pack(">d", v) for v in (0.5, 30.0, 0.25, 4.0, 1e-6))
    )
    assert p.context() == want
    assert "dim || local_variance || min_honest || bits" in section(3)
    assert "l2_clip || scale || beta || epsilon_budget || delta" in section(3)


@pytest.mark.parametrize(("c", "d", "beta"), [(100.0, 1024, math.exp(-0.5)), (3.0, 8, 0.0)])
def test_the_rounding_bound_is_the_formula_of_section_3(c: float, d: int, beta: float) -> None:
    first = c + math.sqrt(d)
    if beta == 0:
        want = first
    else:
        second = math.sqrt(
            c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)
        )
        want = min(first, second)
    assert conditional_rounding_bound(c, d, beta) == pytest.approx(want, rel=1e-15)


def test_the_dp_vectors_replay() -> None:
    assert check_dp_vectors(ROOT / "specs" / "vectors") == []


def test_the_parameters_admit_only_variances_the_samplers_support() -> None:
    from protocol.dp import MAX_LOCAL_VARIANCE
    from protocol.dp.samplers import MAX_VARIANCE

    assert MAX_LOCAL_VARIANCE == MAX_VARIANCE
    assert "| `local_variance` | int, 1..2^36 |" in section(3)

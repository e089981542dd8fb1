"""Session configuration: validation, canonical encoding, session id binding."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ConfigError, DecodeError, GraphKind, Mode, SessionConfig
from protocol.testing import make_config


def _config(**kw: object) -> SessionConfig:
    base: dict[str, object] = dict(
        participants=(1, 2, 3, 4, 5),
        threshold=3,
        vector_length=10,
        bit_width=16,
        nonce=b"\x01" * 32,
    )
    base.update(kw)
    return SessionConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"participants": (1,)}, "at least 2"),
        ({"participants": (2, 1, 3)}, "sorted"),
        ({"participants": (1, 1, 3)}, "distinct"),
        ({"participants": (0, 1, 3)}, r"\[1, 4294967295\]"),
        ({"threshold": 0}, "threshold must lie in"),
        ({"threshold": 5}, "threshold must lie in"),
        ({"bit_width": 65}, "bit_width"),
        ({"vector_length": 0}, "vector_length"),
        ({"nonce": b"short"}, "nonce"),
        ({"graph": GraphKind.HARARY, "degree": 5}, "degree"),
        ({"graph": GraphKind.COMPLETE, "degree": 3}, "complete graph"),
        ({"mode": Mode.ACTIVE, "threshold": 2}, "threshold > degree/2"),
        ({"mode": Mode.ACTIVE, "threshold": 3}, "identity key"),
        ({"identity_keys": (b"\x00" * 32,) * 5}, "only used in active mode"),
    ],
)
def test_invalid_configurations_name_the_limit(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**kw)


def test_every_parameter_is_bound_into_the_session_id() -> None:
    base = _config()
    variants = [
        _config(threshold=4),
        _config(vector_length=11),
        _config(bit_width=17),
        _config(nonce=b"\x02" * 32),
        _config(participants=(1, 2, 3, 4, 6)),
        _config(graph=GraphKind.HARARY, degree=2, threshold=2),
        _config(context=b"task-7"),
        make_config(5, 10, bit_width=16, threshold=3, mode=Mode.ACTIVE),
    ]
    ids = {base.session_id, *(v.session_id for v in variants)}
    assert len(ids) == len(variants) + 1


def test_config_round_trips_through_its_canonical_encoding() -> None:
    for config in (
        _config(),
        make_config(6, 3, bit_width=40, mode=Mode.ACTIVE),
        make_config(10, 3, graph=GraphKind.HARARY, degree=4, threshold=3),
    ):
        again = SessionConfig.decode(config.encode())
        assert again == config
        assert again.session_id == config.session_id


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v[:-1],
        lambda v: ["secagg-v2", *v[1:]],
        lambda v: [*v[:4], 9, *v[5:]],  # threshold above the degree
        lambda v: [*v[:7], "malicious", *v[8:]],
        lambda v: [*v[:9], 0, *v[10:]] if v[8] == "harary" else [*v[:9], 1, *v[10:]],
        lambda v: [*v[:3], [3, 2, 1], *v[4:]],
        lambda v: [*v[:4], True, *v[5:]],
    ],
)
def test_invalid_encodings_are_refused(mutate: object) -> None:
    value = cbor2.loads(_config().encode())
    bad = cbor2.dumps(mutate(value), canonical=True)  # type: ignore[operator]
    with pytest.raises(DecodeError):
        SessionConfig.decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_config_decoder(data: bytes) -> None:
    try:
        config = SessionConfig.decode(data)
    except DecodeError:
        return
    assert config.encode() == data


def test_neighbour_graph_is_derived_from_public_data_only() -> None:
    a = make_config(12, 4, graph=GraphKind.HARARY, degree=4, threshold=3, seed=b"x")
    b = SessionConfig.decode(a.encode())
    for u in a.participants:
        assert a.neighbour_graph.neighbours(u) == b.neighbour_graph.neighbours(u)
    c = make_config(12, 4, graph=GraphKind.HARARY, degree=4, threshold=3, seed=b"y")
    assert any(
        a.neighbour_graph.neighbours(u) != c.neighbour_graph.neighbours(u) for u in a.participants
    )


def test_odd_degree_with_odd_participants_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="odd degree 3 needs an even number"):
        _config(graph=GraphKind.HARARY, degree=3, threshold=2)


@pytest.mark.parametrize("field", ["threshold", "vector_length", "bit_width", "degree"])
def test_integer_fields_must_be_integers(field: str) -> None:
    value: object = True if field != "vector_length" else 10.0
    with pytest.raises(ConfigError, match=f"{field} must be an integer"):
        _config(**{field: value})


def test_masked_vector_must_fit_in_one_message() -> None:
    with pytest.raises(ConfigError, match="the limit is"):
        _config(vector_length=2**28, bit_width=64)
    _config(vector_length=2**27, bit_width=32)  # 512 MiB: allowed

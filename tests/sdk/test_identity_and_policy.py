"""Identity files and the client's session policy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from client_sdk.client import Client, ClientPolicy, PolicyViolation, ServerUnreachable, enrol
from client_sdk.identity import Identity, IdentityError
from client_sdk.models import FunctionModel
from protocol import Mode, SessionConfig
from protocol.encoding import FixedPointEncoding, RoundEncoding, session_context
from protocol.testing import make_config


def test_identity_file_round_trip_and_permissions(tmp_path: Path) -> None:
    ident = Identity.generate().with_enrolment(7, "https://s")
    path = tmp_path / "id" / "client.key"
    ident.save(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = Identity.load(path)
    assert again == ident and again.public_key == ident.public_key
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)
    path.chmod(0o600)
    path.write_text("{}")
    with pytest.raises(IdentityError, match="not a secagg identity"):
        Identity.load(path)
    with pytest.raises(IdentityError, match="no identity file"):
        Identity.load(tmp_path / "missing")


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(ServerUnreachable, match="cannot reach"):
        enrol("http://127.0.0.1:9", "token")


def _client(policy: ClientPolicy | None = None, task_id: int = 1) -> Client:
    ident = Identity.generate().with_enrolment(1, "http://127.0.0.1:9")
    w = np.zeros(4, np.float32)
    return Client(
        "http://127.0.0.1:9",
        ident,
        FunctionModel(lambda: w, lambda v: None),
        lambda m: 1,
        task_id=task_id,
        policy=policy,
    )


ENC = RoundEncoding(FixedPointEncoding(1.0, 1024.0, 100))


def _config(**kw: object) -> SessionConfig:
    args: dict[str, object] = {
        "num_clients": 5,
        "vector_length": ENC.vector_length(4),
        "bit_width": ENC.required_bit_width(10),
        "context": session_context(1, 3, ENC.context()),
        "mode": Mode.ACTIVE,
    }
    args.update(kw)
    return make_config(**args)  # type: ignore[arg-type]


def test_policy_accepts_a_proper_session() -> None:
    _client()._check_policy(_config(), ENC, 3, 4)


@pytest.mark.parametrize(
    ("config", "number", "length", "policy", "match"),
    [
        (lambda: _config(mode=Mode.SEMI_HONEST, threshold=1), 3, 4, None, "semi_honest"),
        (
            lambda: _config(mode=Mode.SEMI_HONEST),
            3,
            4,
            ClientPolicy(allow_semi_honest=True, min_assumed_colluders=3),
            "collusion_bound",
        ),
        (
            lambda: _config(num_clients=4, vector_length=ENC.vector_length(4)),
            3,
            4,
            None,
            "min_participants",
        ),
        (lambda: _config(num_clients=10, threshold=5), 3, 4, None, "collusion_bound"),
        (lambda: _config(), 4, 4, None, "another task, round or encoding"),
        (lambda: _config(), 3, 5, None, "task model has 5 weights"),
        (lambda: _config(bit_width=20), 3, 4, None, "wrap"),
    ],
)
def test_policy_refuses_sessions_it_did_not_agree_to(
    config: object, number: int, length: int, policy: ClientPolicy | None, match: str
) -> None:
    client = _client(policy)
    with pytest.raises(PolicyViolation, match=match):
        client._check_policy(config(), ENC, number, length)  # type: ignore[operator]


def test_client_refuses_an_unenrolled_identity() -> None:
    from client_sdk.client import ClientError

    with pytest.raises(ClientError, match="not enrolled"):
        Client(
            "http://x",
            Identity.generate(),
            FunctionModel(lambda: np.zeros(2, np.float32), lambda v: None),
            lambda m: 1,
            task_id=1,
        )
    _ = os

"""Request signing: what the server verifies, and that every bound field matters."""

from __future__ import annotations

import pytest

from protocol.crypto import ed25519_public_key
from protocol.encoding import session_context
from secagg_http.signing import HEADER_SIGNATURE, request_payload, sign_request, verify_request

SECRET = bytes(range(32))
PUBLIC = ed25519_public_key(SECRET)
BASE = dict(
    client_id=7,
    method="POST",
    path="/v1/rounds/3/messages",
    timestamp=1700000000,
    nonce="ab" * 16,
    body=b"\x84\x04",
)


def _sig(**kw: object) -> bytes:
    args = {**BASE, **kw}
    headers = sign_request(
        SECRET,
        args["client_id"],
        args["method"],
        args["path"],  # type: ignore[arg-type]
        args["timestamp"],
        args["nonce"],
        args["body"],
    )  # type: ignore[arg-type]
    return bytes.fromhex(headers[HEADER_SIGNATURE])


def test_signed_request_verifies() -> None:
    assert verify_request(PUBLIC, _sig(), **BASE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": 8},
        {"method": "GET"},
        {"path": "/v1/rounds/4/messages"},
        {"timestamp": 1700000001},
        {"nonce": "cd" * 16},
        {"body": b"\x84\x05"},
    ],
)
def test_every_field_is_bound(change: dict[str, object]) -> None:
    assert not verify_request(PUBLIC, _sig(), **{**BASE, **change})  # type: ignore[arg-type]


def test_payload_layout() -> None:
    payload = request_payload("post", "/p?q=1", 5, "00" * 16, 9, b"")
    assert payload.split(b"\n")[:6] == [
        b"secagg-v1 request",
        b"POST",
        b"/p?q=1",
        b"5",
        b"00" * 16,
        b"9",
    ]


def test_session_context_binds_task_round_and_encoding() -> None:
    a = session_context(1, 2, b"enc")
    assert a != session_context(2, 2, b"enc")
    assert a != session_context(1, 3, b"enc")
    assert a != session_context(1, 2, b"enc2")


def test_the_worked_example_of_the_service_spec_reproduces() -> None:
    """specs/service-v1.md §10: payload and signature, from the values it names."""
    from pathlib import Path

    from protocol.crypto import ed25519_public_key
    from secagg_http.signing import request_payload, sign_request

    spec = (Path(__file__).parents[2] / "specs" / "service-v1.md").read_text()
    section = spec[spec.index("## 10. Request signing") :]
    secret = bytes(range(32))
    args = ("POST", "/v1/rounds/5/messages", 1767225600, "0123456789abcdef0123456789abcdef")
    payload = request_payload(*args, 7, b"\xa0")
    headers = sign_request(secret, 7, *args, b"\xa0")
    assert ed25519_public_key(secret).hex() in section
    assert payload.decode().replace("\n", "\\n") in section
    assert f"x-secagg-signature: {headers['x-secagg-signature']}" in section

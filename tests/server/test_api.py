"""Hostile and unauthenticated input over real HTTP: typed 4xx JSON errors, nothing changed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from client_sdk.client import Client, ClientPolicy, RequestRefused, enrol
from client_sdk.identity import Identity
from client_sdk.models import FunctionModel
from protocol import SessionConfig
from protocol.encoding import EvalSums
from protocol.messages import MaskedInput
from secagg_http.signing import CBOR_MEDIA_TYPE, sign_request
from tests.server.helpers import admin, new_token, running_server, wait_rounds_finished


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with running_server(tmp_path_factory.mktemp("api"), max_body_bytes=200_000) as url:
        yield url


def _task(url: str, name: str, **kw: object) -> int:
    body = {
        "name": name,
        "vector_length": 8,
        "rounds": 1,
        "clients_per_round": 3,
        "graph": "complete",
        "deadlines": {"R0": 5, "R1": 2, "R2": 2, "R3": 2, "R4": 2},
        # Three clients that lowered their floor to 3 (ClientPolicy(min_participants=3)).
        "min_participants": 3,
        "dropout_rate": 0.0,
    }
    body.update(kw)
    with admin(url) as c:
        r = c.post("/v1/admin/tasks", json=body)
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def _signed(
    url: str,
    ident: Identity,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    content_type: str | None = None,
) -> httpx.Response:
    assert ident.client_id is not None
    headers = sign_request(
        ident.secret,
        ident.client_id,
        method,
        path,
        int(time.time()) if timestamp is None else timestamp,
        nonce or os.urandom(16).hex(),
        body,
    )
    if content_type:
        headers["content-type"] = content_type
    return httpx.request(method, url + path, content=body, headers=headers, timeout=30)


def _err(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == code


def test_enrolment_tokens_are_one_time_and_checked(server: str) -> None:
    token = new_token(server)
    ident = enrol(server, token, name="a")
    assert ident.client_id is not None and ident.client_id >= 1
    with pytest.raises(RequestRefused) as info:
        enrol(server, token, name="again")
    assert (info.value.status, info.value.code) == (403, "token_used")
    with pytest.raises(RequestRefused) as info:
        enrol(server, "sa1_not-a-token", name="x")
    assert (info.value.status, info.value.code) == (403, "unknown_token")
    with admin(server) as c:
        expired = c.post("/v1/admin/tokens", json={"ttl_s": 1}).json()["token"]
    time.sleep(1.1)
    with pytest.raises(RequestRefused) as info:
        enrol(server, expired)
    assert info.value.code == "token_expired"
    # The same key cannot be enrolled twice.
    with pytest.raises(RequestRefused) as info:
        enrol(server, new_token(server), ident)
    assert (info.value.status, info.value.code) == (409, "key_enrolled")
    r = httpx.post(server + "/v1/enrol", json={"token": "x", "public_key": "zz"})
    _err(r, 422, "invalid_request")
    # Keys the strict Ed25519 rules (secagg-v1.md §6.6) can never verify under:
    # the identity point, a point of order 8, and a non-canonical y >= p. The
    # token is not used up by the refusal.
    token = new_token(server)
    for key in (
        (1).to_bytes(32, "little"),
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        ((1 << 255) - 19 + 2).to_bytes(32, "little"),
    ):
        r = httpx.post(server + "/v1/enrol", json={"token": token, "public_key": key.hex()})
        _err(r, 400, "bad_public_key")
    assert enrol(server, token).client_id is not None


def test_requests_must_be_signed_fresh_and_never_replayed(server: str) -> None:
    ident = enrol(server, new_token(server))
    # Any authenticated request: a round that does not exist is 410 once the
    # sender is authenticated, and 401 before.
    path = "/v1/rounds/999999/messages/0"
    _err(httpx.get(server + path), 401, "unauthenticated")
    ok = _signed(server, ident, "GET", path)
    assert ok.status_code == 410 and ok.json()["error"] == "round_over"
    # Replay: the very same headers again.
    nonce = os.urandom(16).hex()
    stamp = int(time.time())
    assert _signed(server, ident, "GET", path, timestamp=stamp, nonce=nonce).status_code == 410
    _err(_signed(server, ident, "GET", path, timestamp=stamp, nonce=nonce), 401, "replayed_request")
    _err(
        _signed(server, ident, "GET", path, timestamp=int(time.time()) - 3600), 401, "stale_request"
    )
    # A signature by another key.
    other = Identity.generate().with_enrolment(ident.client_id or 0, server)
    _err(_signed(server, other, "GET", path), 401, "bad_signature")
    # Signed for another path.
    headers = sign_request(
        ident.secret,
        ident.client_id or 0,
        "GET",
        "/elsewhere",
        int(time.time()),
        os.urandom(16).hex(),
        b"",
    )
    _err(httpx.get(server + path, headers=headers), 401, "bad_signature")
    stranger = Identity.generate().with_enrolment(99999, server)
    _err(_signed(server, stranger, "GET", path), 401, "unknown_client")


def test_admin_endpoints_need_the_admin_credential(server: str) -> None:
    _err(httpx.get(server + "/v1/admin/tasks"), 401, "admin_required")
    _err(
        httpx.get(server + "/v1/admin/tasks", headers={"authorization": "Bearer nope"}),
        403,
        "bad_admin_token",
    )


def test_bad_requests_get_typed_errors(server: str) -> None:
    ident = enrol(server, new_token(server))
    with admin(server) as c:
        _err(c.post("/v1/admin/tasks", json={"name": "x"}), 422, "invalid_request")
        _err(
            c.post(
                "/v1/admin/tasks",
                json={
                    "name": "w",
                    "vector_length": 4,
                    "rounds": 1,
                    "clients_per_round": 3,
                    "initial_weights": "!!notbase64",
                },
            ),
            400,
            "bad_weights",
        )
        _task(server, "dup")
        _err(
            c.post(
                "/v1/admin/tasks",
                json={"name": "dup", "vector_length": 4, "rounds": 1, "clients_per_round": 5},
            ),
            409,
            "task_exists",
        )
        _err(c.get("/v1/admin/tasks/424242"), 404, "unknown_task")
    _err(_signed(server, ident, "POST", "/v1/tasks/424242/checkin"), 404, "unknown_task")
    _err(_signed(server, ident, "GET", "/v1/rounds/424242/messages/0"), 410, "round_over")
    _err(
        _signed(
            server, ident, "POST", "/v1/rounds/424242/messages", b"\x00", content_type="text/plain"
        ),
        415,
        "unsupported_media_type",
    )
    big = b"\x00" * 300_000
    _err(
        httpx.post(
            server + "/v1/rounds/1/messages", content=big, headers={"content-type": CBOR_MEDIA_TYPE}
        ),
        413,
        "body_too_large",
    )


def test_hostile_participant_is_refused_and_the_round_still_completes(server: str) -> None:
    # Five honest clients with the default policy, and Mallory, who drops in R0.
    task = _task(
        server,
        "hostile",
        clients_per_round=6,
        min_clients=6,
        min_participants=5,
        dropout_rate=0.1,
    )
    honest: list[Client] = []
    for i in range(5):
        ident = enrol(server, new_token(server), name=f"h{i}")
        w = np.zeros(8, np.float32)
        store = {"w": w}
        model = FunctionModel(
            lambda s=store: s["w"].copy(),
            lambda v, s=store: s.__setitem__("w", np.asarray(v, np.float32)),
        )
        honest.append(
            Client(
                server,
                ident,
                model,
                lambda m: 1,
                lambda m: EvalSums(0, 0, 0.0),
                task_id=task,
                # Not about certified identities: no task authority (opt-out).
                policy=ClientPolicy(require_certified_identities=False),
            )
        )
    bad = enrol(server, new_token(server), name="mallory")
    results: dict[int, str] = {}
    threads = [
        threading.Thread(target=lambda c=c, i=i: results.__setitem__(i, c.run(rounds=1)[0].state))
        for i, c in enumerate(honest)
    ]
    for t in threads:
        t.start()
    assignment = None
    while assignment is None:
        r = _signed(server, bad, "POST", f"/v1/tasks/{task}/checkin")
        if r.status_code == 200:
            assignment = r.json()
    rid = assignment["round_id"]
    assert "config" not in assignment  # keys are advertised after training
    msgs = f"/v1/rounds/{rid}/messages"
    _err(
        _signed(server, bad, "POST", msgs, b"\xff\x00garbage", content_type=CBOR_MEDIA_TYPE),
        409,
        "session_not_formed",
    )
    assert _signed(server, bad, "POST", f"/v1/rounds/{rid}/ready").status_code == 202
    formed = None
    while formed is None:
        r = _signed(server, bad, "GET", f"/v1/rounds/{rid}/session")
        assert r.status_code in (200, 204), r.text
        formed = r.json() if r.status_code == 200 else None
    assert bad.client_id in SessionConfig.decode(bytes.fromhex(formed["config"])).participants
    _err(
        _signed(server, bad, "POST", msgs, b"\xff\x00garbage", content_type=CBOR_MEDIA_TYPE),
        400,
        "malformed_message",
    )
    other = next(u for u in range(1, 100) if u != bad.client_id)
    forged = MaskedInput(bytes(32), other, b"").encode()
    _err(
        _signed(server, bad, "POST", msgs, forged, content_type=CBOR_MEDIA_TYPE),
        409,
        "wrong_sender",
    )
    # Mallory then goes silent (no heartbeat): gone, a dropout in round 0.
    for t in threads:
        t.join(timeout=60)
    assert results == dict.fromkeys(range(5), "completed")
    detail = wait_rounds_finished(server, task, 1)
    assert detail["rounds_detail"][0]["status"] == "completed"
    assert detail["rounds_detail"][0]["stage_stats"]["R0"]["dropouts"] == 1


def test_metrics_endpoint(server: str) -> None:
    r = httpx.get(server + "/metrics")
    assert r.status_code == 200
    assert "secagg_rounds_total" in r.text and "secagg_stage_seconds" in r.text
    _ = Path


def test_registry_promote_rollback_and_tags_over_the_api(server: str) -> None:
    task = _task(server, "registry")
    with admin(server) as c:
        _err(c.post(f"/v1/admin/tasks/{task}/rollback"), 409, "registry_error")
        r = c.post(f"/v1/admin/tasks/{task}/versions/1/tags/production")
        assert r.status_code == 200 and r.json()["tags"] == ["production"]
        _err(c.post(f"/v1/admin/tasks/{task}/versions/9/promote"), 404, "not_found")
        detail = c.get(f"/v1/admin/tasks/{task}").json()
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["versions"][0]["is_current"]
    with admin(server) as c:
        r = c.get(f"/v1/admin/tasks/{task}/versions/current/weights")
        assert r.status_code == 200 and r.headers["x-secagg-version"] == "1"
        import hashlib
        import io

        weights = np.load(io.BytesIO(r.content))
        assert weights.shape == (8,)
        assert hashlib.sha256(r.content).hexdigest() == r.headers["x-secagg-sha256"]
        digest = hashlib.sha256(weights.astype("<f4").tobytes()).hexdigest()
        assert digest == r.headers["x-secagg-weights-sha256"]
        _err(c.get(f"/v1/admin/tasks/{task}/versions/7/weights"), 404, "not_found")
        _err(c.get(f"/v1/admin/tasks/{task}/versions/x/weights"), 404, "not_found")
        _err(c.get(f"/v1/admin/tasks/{task}/versions/-x/weights"), 400, "bad_ref")


def test_token_lifetimes_below_a_second_are_refused(server: str) -> None:
    with admin(server) as c:
        _err(c.post("/v1/admin/tokens", json={"ttl_s": 0.001}), 422, "invalid_request")

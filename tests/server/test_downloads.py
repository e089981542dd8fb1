"""Model downloads: references (current, number, tag), the encoded-file cache, the headers."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from client_sdk.client import Client, ClientError
from client_sdk.identity import Identity
from client_sdk.models import FunctionModel
from secagg.db import Database
from secagg.downloads import DownloadRefused, parse_ref
from secagg.registry import (
    EncodedModel,
    EncodedModelCache,
    ModelRegistry,
    RegistryError,
    VersionNotFound,
    npy_header,
)
from tests.model_file import npy_response
from tests.server.helpers import admin, running_server

LENGTH = 8


def npy(weights: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, weights, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture
def registry(db: Database) -> ModelRegistry:
    return ModelRegistry(db)


@pytest.fixture
def task_id(make_task: Callable[..., int]) -> int:
    return make_task(vector_length=LENGTH)


# ---------------------------------------------------------------- the encoded file


@pytest.mark.parametrize("length", [0, 1, 7, 1000, 123457])
def test_encoded_file_is_what_np_save_writes(length: int) -> None:
    weights = np.random.default_rng(length).standard_normal(length).astype("<f4")
    model = EncodedModel.build(3, 9, weights.tobytes())
    assert model.to_bytes() == npy(weights)
    assert b"".join(bytes(c) for c in model.chunks(1000)) == npy(weights)
    assert model.size == len(npy(weights)) == len(npy_header(length)) + 4 * length
    assert model.body_sha256 == hashlib.sha256(npy(weights)).hexdigest()
    assert model.weights_sha256 == hashlib.sha256(weights.tobytes()).hexdigest()
    view = model.weights()
    assert np.array_equal(view, weights) and not view.flags.writeable


def test_resolve_current_number_and_tag(registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, np.full(LENGTH, 1, np.float32))
    registry.add_version(task_id, np.full(LENGTH, 2, np.float32), parent_version=1)
    registry.tag(task_id, 1, "baseline")
    assert registry.resolve(task_id, None).version == 2
    assert registry.resolve(task_id, "current").version == 2
    assert registry.resolve(task_id, 1).version == 1
    assert registry.resolve(task_id, "baseline").version == 1
    with pytest.raises(VersionNotFound, match="no version tagged 'prod'"):
        registry.resolve(task_id, "prod")
    with pytest.raises(VersionNotFound, match="task 999 does not exist"):
        registry.resolve(999, "prod")


def test_a_tag_names_one_version_and_moves(registry: ModelRegistry, task_id: int) -> None:
    registry.create_initial(task_id, np.full(LENGTH, 1, np.float32))
    registry.add_version(task_id, np.full(LENGTH, 2, np.float32), parent_version=1)
    registry.tag(task_id, 2, "prod")
    registry.tag(task_id, 1, "prod")  # e.g. after finding version 2 bad
    assert registry.get(task_id, 1).tags == ("prod",)
    assert registry.get(task_id, 2).tags == ()
    assert registry.resolve(task_id, "prod").version == 1


@pytest.mark.parametrize("tag", ["current", "12", "007"])
def test_tags_that_would_read_as_references_are_refused(
    registry: ModelRegistry, task_id: int, tag: str
) -> None:
    registry.create_initial(task_id, np.full(LENGTH, 1, np.float32))
    with pytest.raises(RegistryError, match="may not be 'current' nor all digits"):
        registry.tag(task_id, 1, tag)
    assert registry.get(task_id, 1).tags == ()


def test_encoded_is_checked_and_cached_once(registry: ModelRegistry, task_id: int) -> None:
    weights = np.arange(LENGTH, dtype=np.float32)
    info = registry.create_initial(task_id, weights)
    first = registry.encoded(task_id, 1)
    assert first.to_bytes() == npy(weights) and first.weights_sha256 == info.sha256
    assert registry.encoded(task_id, 1) is first  # served from the cache
    assert registry.cache.keys() == [(task_id, 1)]
    assert registry.download(task_id) == npy(weights)
    assert np.array_equal(registry.weights_view(task_id, 1), weights)


def _entry(version: int, length: int) -> EncodedModel:
    return EncodedModel.build(1, version, np.zeros(length, "<f4").tobytes())


def test_cache_is_lru_bounded_by_bytes() -> None:
    one = _entry(1, 100).size
    cache = EncodedModelCache(max_bytes=2 * one)
    for v in (1, 2):
        cache.get_or_load((1, v), lambda v=v: _entry(v, 100))
    cache.get_or_load((1, 1), lambda: pytest.fail("version 1 is cached"))  # now most recent
    cache.get_or_load((1, 3), lambda: _entry(3, 100))  # evicts version 2, the least recent
    assert cache.keys() == [(1, 1), (1, 3)] and cache.bytes_used == 2 * one
    big = cache.get_or_load((1, 4), lambda: _entry(4, 1000))  # larger than the bound
    assert big.version == 4 and cache.keys() == [(1, 1), (1, 3)]
    assert EncodedModelCache(0).get_or_load((1, 1), lambda: _entry(1, 1)).version == 1
    with pytest.raises(ValueError, match=">= 0 bytes"):
        EncodedModelCache(-1)


def test_cache_loads_each_version_once_under_concurrency() -> None:
    cache = EncodedModelCache()
    loads: list[int] = []
    gate = threading.Event()

    def load() -> EncodedModel:
        loads.append(1)
        gate.wait(5)
        return _entry(1, 10)

    results: list[EncodedModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_load((1, 1), load)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(loads) == 1 and len(results) == 8 and all(r is results[0] for r in results)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("current", None),
        ("1", 1),
        ("2147483647", 2147483647),
        ("prod", "prod"),
        ("v1.2-rc_3", "v1.2-rc_3"),
    ],
)
def test_parse_ref(text: str, parsed: object) -> None:
    assert parse_ref(text) == parsed


@pytest.mark.parametrize(
    "text", ["0", "2147483648", "99999999999", "-1", "٣", "", ".x", "a/b", "x" * 65]
)
def test_parse_ref_refuses_what_names_nothing(text: str) -> None:
    with pytest.raises(DownloadRefused) as caught:
        parse_ref(text)
    assert caught.value.status == 400 and caught.value.code == "bad_ref"


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("downloads"), model_cache_bytes=1 << 20) as url:
        yield url


def _task_with(url: str, name: str, weights: np.ndarray) -> int:
    with admin(url) as c:
        r = c.post(
            "/v1/admin/tasks",
            json={
                "name": name,
                "vector_length": len(weights),
                "initial_weights": base64.b64encode(npy(weights)).decode(),
                "rounds": 1,
                "clients_per_round": 5,
                "graph": "complete",
                "dropout_rate": 0.0,
            },
        )
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def _check(r: httpx.Response, version: int, weights: np.ndarray) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["x-secagg-version"] == str(version)
    assert r.headers["content-length"] == str(len(r.content))
    # The body hash covers the bytes sent; the weights hash the raw float32 values.
    assert r.headers["x-secagg-sha256"] == hashlib.sha256(r.content).hexdigest()
    assert r.headers["x-secagg-weights-sha256"] == hashlib.sha256(weights.tobytes()).hexdigest()
    assert r.content == npy(weights)


def test_download_by_current_number_and_tag(server: str) -> None:
    # Larger than one 1 MiB piece, so the body is streamed in several.
    weights = np.random.default_rng(0).standard_normal(300_000).astype("<f4")
    task = _task_with(server, "dl-refs", weights)
    with admin(server) as c:
        _check(c.get(f"/v1/admin/tasks/{task}/versions/current/weights"), 1, weights)
        _check(c.get(f"/v1/admin/tasks/{task}/versions/1/weights"), 1, weights)
        assert c.post(f"/v1/admin/tasks/{task}/versions/1/tags/audited").status_code == 200
        r = c.get(f"/v1/admin/tasks/{task}/versions/audited/weights")
        _check(r, 1, weights)
        listed = c.get(f"/v1/admin/tasks/{task}").json()["versions"][0]
        assert listed["sha256"] == r.headers["x-secagg-weights-sha256"]


@pytest.mark.parametrize(
    ("ref", "status", "code"),
    [
        ("nope", 404, "not_found"),
        ("7", 404, "not_found"),
        ("0", 400, "bad_ref"),
        ("-1", 400, "bad_ref"),
        ("2147483648", 400, "bad_ref"),
        ("%E2%80%8B", 400, "bad_ref"),
    ],
)
def test_download_refusals_are_typed(server: str, ref: str, status: int, code: str) -> None:
    task = _task_with(server, f"dl-bad-{status}-{ref}", np.zeros(4, "<f4"))
    with admin(server) as c:
        r = c.get(f"/v1/admin/tasks/{task}/versions/{ref}/weights")
    assert r.status_code == status, r.text
    assert r.json()["error"] == code


def test_download_of_an_unknown_task_is_404(server: str) -> None:
    with admin(server) as c:
        r = c.get("/v1/admin/tasks/424242/versions/current/weights")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_tag_spelled_like_a_reference_is_refused_over_http(server: str) -> None:
    task = _task_with(server, "dl-tag-refs", np.zeros(4, "<f4"))
    with admin(server) as c:
        r = c.post(f"/v1/admin/tasks/{task}/versions/1/tags/current")
    assert r.status_code == 409 and "may not be 'current'" in r.json()["detail"]


# ---------------------------------------------------------------- the SDK checks


def _sdk_client(tmp_path: Path, answer: Callable[[httpx.Request], httpx.Response]) -> Client:
    w = {"w": np.zeros(4, np.float32)}
    ident = Identity.generate().with_enrolment(1, "http://fake")
    client = Client(
        "http://fake",
        ident,
        FunctionModel(lambda: w["w"].copy(), lambda v: w.__setitem__("w", np.asarray(v))),
        lambda m: 1,
        task_id=1,
    )
    client._http = httpx.Client(base_url="http://fake", transport=httpx.MockTransport(answer))
    return client


def test_sdk_accepts_a_genuine_download(tmp_path: Path) -> None:
    weights = np.array([1.5, -2, 3, 0.25], "<f4")
    client = _sdk_client(tmp_path, lambda req: npy_response(weights, 3))
    assert np.array_equal(client._download(3), weights.astype(np.float64))


def _tampered(weights: np.ndarray, **changes: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(_: httpx.Request) -> httpx.Response:
        genuine = npy_response(weights, 3)
        headers = {**genuine.headers, **changes}
        return httpx.Response(200, content=genuine.content, headers=headers)

    return answer


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x-secagg-sha256": "0" * 64}, "body does not hash"),
        ({"x-secagg-weights-sha256": "0" * 64}, "weights do not hash"),
        ({"x-secagg-version": "2"}, "sent version '2'"),
    ],
)
def test_sdk_refuses_a_download_that_fails_a_check(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    client = _sdk_client(tmp_path, _tampered(np.ones(4, "<f4"), **changes))
    with pytest.raises(ClientError, match=message):
        client._download(3)
    assert client._cache is None  # nothing unverified is kept


def test_sdk_refuses_a_consistent_file_of_the_wrong_dtype(tmp_path: Path) -> None:
    weights = np.ones(4, "<f8")
    body = npy(weights)

    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=body,
            headers={
                "x-secagg-version": "3",
                "x-secagg-sha256": hashlib.sha256(body).hexdigest(),
                "x-secagg-weights-sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
            },
        )

    with pytest.raises(ClientError, match="not a 1-D little-endian float32"):
        _sdk_client(tmp_path, answer)._download(3)


def test_weights_are_read_in_pieces(
    registry: ModelRegistry, make_task: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import secagg.registry as reg

    monkeypatch.setattr(reg, "_READ_CHUNK", 12)  # 3 float32 values per piece, a partial last
    task = make_task(vector_length=10)
    weights = np.arange(10, dtype=np.float32) / 7
    registry.create_initial(task, weights)
    assert np.array_equal(registry.weights(task, 1), weights)
    assert registry.encoded(task, 1).to_bytes() == npy(weights)


def test_storing_a_version_drops_the_tasks_older_cached_versions(
    registry: ModelRegistry, make_task: Callable[..., int]
) -> None:
    one, two = make_task(vector_length=LENGTH), make_task(vector_length=LENGTH)
    registry.create_initial(one, np.zeros(LENGTH, np.float32))
    registry.create_initial(two, np.zeros(LENGTH, np.float32))
    registry.encoded(one, 1)
    registry.encoded(two, 1)
    registry.add_version(one, np.ones(LENGTH, np.float32), parent_version=1)
    assert registry.cache.keys() == [(two, 1)]
    assert registry.encoded(one, 1).to_bytes() == npy(np.zeros(LENGTH, np.float32))  # reloaded
    assert registry.encoded(one, 2).to_bytes() == npy(np.ones(LENGTH, np.float32))


def test_a_committed_version_is_remembered_from_its_weights(
    registry: ModelRegistry, task_id: int
) -> None:
    registry.create_initial(task_id, np.zeros(LENGTH, np.float32))
    new = np.arange(LENGTH, dtype=np.float32)
    info = registry.add_version(task_id, new, parent_version=1)
    assert not registry.remember(info, new + 1)  # not what was stored: not cached
    assert registry.cache.keys() == []
    assert registry.remember(info, new)
    cached = registry.encoded(task_id, 2)
    assert np.shares_memory(cached.weights(), new)  # kept, not copied
    registry.cache.discard_task(task_id)
    assert registry.encoded(task_id, 2) == cached  # the database holds the same file

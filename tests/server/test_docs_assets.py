"""/docs and /redoc load every asset from this server: no CDN, so they work air-gapped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from secagg.app import create_app
from secagg.docs_assets import ASSETS, STATIC_PATH
from secagg.settings import Settings

# Every URL an HTML page makes a browser fetch: src=, href=, spec-url= and the
# Swagger UI configuration's url: '...'.
_REFERENCES = re.compile(
    r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']"""
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    db = tmp_path_factory.mktemp("docs") / "d.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", admin_token="a"))
    with TestClient(app) as c:
        yield c  # type: ignore[misc]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_reference_no_external_host(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    references = [a or b for a, b in _REFERENCES.findall(r.text)]
    assert "/openapi.json" in references
    assert any(ref.startswith(STATIC_PATH + "/") and ref.endswith(".js") for ref in references)
    for ref in references:
        # Absolute paths on this server only: no scheme, no protocol-relative //host.
        assert ref.startswith("/") and not ref.startswith("//"), ref
    assert "cdn." not in r.text and "fonts.googleapis" not in r.text
    assert '"validatorUrl": null' in r.text or page == "/redoc"
    # Every asset the page names is served, with the right type.
    for ref in references:
        got = client.get(ref)
        assert got.status_code == 200, ref
        if ref.endswith(".js"):
            assert "javascript" in got.headers["content-type"] and len(got.content) > 100_000
        if ref.endswith(".css"):
            assert got.headers["content-type"].startswith("text/css")


def test_every_bundled_asset_is_served(client: TestClient) -> None:
    for name in ASSETS:
        assert client.get(f"{STATIC_PATH}/{name}").status_code == 200, name
    assert client.get(f"{STATIC_PATH}/../app.py").status_code == 404


def test_docs_routes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert not {"/docs", "/redoc"} & paths and not any(p.startswith("/static") for p in paths)


def test_assets_come_from_the_installed_package() -> None:
    from secagg.docs_assets import asset_directory

    directory = asset_directory()
    assert isinstance(directory, Path)
    assert all((directory / name).stat().st_size > 1000 for name in ASSETS)

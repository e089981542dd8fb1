"""The operator's commands: dev-cert, serve; the OpenAPI document.

The admin commands over HTTP (token create, status, task, model pull) are in
``test_admin_tools.py``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from secagg.app import create_app
from secagg.cli import main
from secagg.settings import Settings


def test_dev_cert_writes_a_private_key_only_the_owner_reads(tmp_path: Path) -> None:
    assert main(["dev-cert", "--out-dir", str(tmp_path), "--host", "example.test"]) == 0
    assert (tmp_path / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert oct((tmp_path / "key.pem").stat().st_mode & 0o777) == "0o600"


def test_serve_refuses_half_a_tls_configuration(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    assert (
        main(["serve", "--tls-cert", str(cert), "--database-url", f"sqlite:///{tmp_path / 'y.db'}"])
        == 2
    )


def test_openapi_document_lists_every_route(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'o.db'}", admin_token="a"))
    with TestClient(app) as c:
        doc = c.get("/openapi.json").json()
    paths = set(doc["paths"])
    for p in (
        "/v1/enrol",
        "/v1/admin/tokens",
        "/v1/admin/tasks",
        "/v1/tasks/{task_id}/checkin",
        "/v1/rounds/{round_id}/messages",
        "/v1/rounds/{round_id}/messages/{seq}",
        "/v1/tasks/{task_id}/models/{version}",
        "/metrics",
        "/healthz",
    ):
        assert p in paths, p

"""Admin tooling over HTTP: the stable admin token, the admin client, the CLI commands."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from secagg.admin_client import (
    AdminClient,
    AdminRefused,
    IntegrityError,
    ServerUnreachable,
    TlsTrustError,
)
from secagg.admin_token import AdminTokenError, load_or_create_admin_token
from secagg.app import create_app
from secagg.cli import main
from secagg.model_files import read_model_file
from secagg.settings import Settings
from tests.server.helpers import ADMIN, running_server

# -- the admin token ------------------------------------------------------------------


def test_the_admin_token_is_created_once_mode_600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "admin-token"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}", admin_token_file=path)
    first = create_app(settings).state.coordinator.admin_token
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert path.read_text().strip() == first and len(first) >= 40
    # A restart reads the same token back.
    assert create_app(settings).state.coordinator.admin_token == first
    # The setting still overrides the file (and leaves it alone).
    override = settings.model_copy(update={"admin_token": "explicit"})
    assert create_app(override).state.coordinator.admin_token == "explicit"
    assert path.read_text().strip() == first


def test_a_group_or_world_readable_token_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "admin-token"
    path.write_text("leaked\n")
    path.chmod(0o644)
    with pytest.raises(AdminTokenError, match=r"mode 644.*chmod 600"):
        load_or_create_admin_token(path)
    assert path.read_text() == "leaked\n"  # not replaced
    db_url = f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.delenv("SECAGG_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("SECAGG_ADMIN_TOKEN_FILE", str(path))
    assert main(["serve", "--database-url", db_url, "--port", "0"]) == 1
    assert "chmod 600" in capsys.readouterr().err
    path.chmod(0o600)
    assert load_or_create_admin_token(path) == "leaked"
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    with pytest.raises(AdminTokenError, match="empty"):
        load_or_create_admin_token(empty)


# -- the admin client -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("admin-tools")) as url:
        yield url


def _task_toml(path: Path, name: str, extra: str = "") -> Path:
    path.write_text(
        f'name = "{name}"\n'
        "rounds = 2\n"
        "clients_per_round = 5\n"
        'graph = "complete"\n'
        "dropout_rate = 0.0\n"
        f"{extra}"
        "[strategy]\n"
        'name = "fedavg"\n'
        "server_lr = 1.0\n"
    )
    return path


def test_admin_client_errors_are_typed(server: str, tmp_path: Path) -> None:
    with AdminClient(server, "wrong") as bad, pytest.raises(AdminRefused) as info:
        bad.tasks()
    assert info.value.status == 403 and info.value.code == "bad_admin_token"
    with (
        AdminClient("http://127.0.0.1:9", ADMIN, timeout=5) as nowhere,
        pytest.raises(ServerUnreachable, match="cannot reach"),
    ):
        nowhere.tasks()

    # Something that speaks TLS with an untrusted certificate: a trust error, not "unreachable".
    def tls_fail(request: httpx.Request) -> httpx.Response:
        import ssl

        raise httpx.ConnectError("handshake", request=request) from ssl.SSLCertVerificationError(
            "certificate verify failed: self-signed certificate"
        )

    with (
        AdminClient(
            "https://agg.test", ADMIN, transport=httpx.MockTransport(tls_fail)
        ) as untrusted,
        pytest.raises(TlsTrustError, match="--ca"),
    ):
        untrusted.tasks()


def test_a_download_that_does_not_match_its_hash_is_refused() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(4, dtype=np.float32))
    body = buffer.getvalue()

    def serve(announced: str, weights_hash: str | None) -> AdminClient:
        headers = {"x-secagg-version": "3", "x-secagg-sha256": announced}
        if weights_hash is not None:
            headers["x-secagg-weights-sha256"] = weights_hash
        return AdminClient(
            "http://agg.test",
            ADMIN,
            transport=httpx.MockTransport(
                lambda _: httpx.Response(200, content=body, headers=headers)
            ),
        )

    body_hash = hashlib.sha256(body).hexdigest()
    raw_hash = hashlib.sha256(np.arange(4, dtype="<f4").tobytes()).hexdigest()
    assert serve(body_hash, raw_hash).pull_model(1).version == 3
    assert serve(raw_hash, None).pull_model(1).weights.tolist() == [0, 1, 2, 3]
    for announced, weights_hash in ((raw_hash, raw_hash), ("0" * 64, None), (body_hash, "0" * 64)):
        with pytest.raises(IntegrityError, match="does not match"):
            serve(announced, weights_hash).pull_model(1)


# -- the CLI --------------------------------------------------------------------------


def test_admin_commands_need_a_server_and_never_touch_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SECAGG_SERVER", raising=False)
    for args in (["token", "create"], ["status"], ["task", "cancel", "1"]):
        assert main([*args, "--token", "x"]) == 2
        assert "--server" in capsys.readouterr().err
    assert not (tmp_path / "secagg.db").exists()
    assert main(["status", "--server", "http://127.0.0.1:9"]) == 2
    assert "admin token" in capsys.readouterr().err


def test_token_create_and_status_over_http(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o600)
    auth = ["--server", server, "--token-file", str(token_file)]
    assert main(["token", "create", "--label", "site-a", *auth]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("sa1_")
    enrolled = httpx.post(
        f"{server}/v1/enrol", json={"token": token, "public_key": "ab" * 32}, timeout=30
    )
    assert enrolled.status_code == 200, enrolled.text  # a real token of that server
    token_file.chmod(0o640)
    assert main(["token", "create", *auth]) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert main(["status", "--server", server, "--token", "wrong"]) == 1
    assert "bad_admin_token" in capsys.readouterr().err


def _state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    model.to(torch.float64)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_task_create_from_toml_and_pt_then_pull_every_format(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file

    state = _state_dict()
    pt = tmp_path / "model.pt"
    torch.save(state, pt)
    auth = ["--server", server, "--token", ADMIN]
    toml = _task_toml(tmp_path / "task.toml", "from-pt")
    assert main(["task", "create", str(toml), "--init", str(pt), *auth]) == 0
    task_id = int(capsys.readouterr().out.strip())
    with AdminClient(server, ADMIN) as admin:
        detail = admin.task(task_id)
    layout = detail["model_layout"]
    # The SDK's order: parameters sorted by name, then floating buffers; no integer buffer.
    assert [e["name"] for e in layout] == [
        "0.bias", "0.weight", "1.bias", "1.weight", "2.bias", "2.weight",
        "1.running_mean", "1.running_var",
    ]  # fmt: skip
    assert layout[1] == {"name": "0.weight", "shape": [4, 3], "dtype": "torch.float64"}
    assert detail["vector_length"] == sum(state[e["name"]].numel() for e in layout)

    out = tmp_path / "pulled.pt"
    assert (
        main(["model", "pull", "--task", str(task_id), "--format", "pt", "-o", str(out), *auth])
        == 0
    )
    assert "version 1" in capsys.readouterr().out
    pulled = torch.load(out, weights_only=True)
    assert set(pulled) == {e["name"] for e in layout}
    for name, tensor in pulled.items():
        assert tensor.dtype == torch.float64
        assert torch.equal(tensor, state[name].to(torch.float32).to(torch.float64)), name
    # Loads into the module it came from (the integer counter buffer is not aggregated).
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    missing = module.to(torch.float64).load_state_dict(pulled, strict=False)
    assert set(missing.missing_keys) <= {"1.num_batches_tracked"}
    assert missing.unexpected_keys == []
    assert torch.equal(module[2].weight, pulled["2.weight"])

    st = tmp_path / "pulled.safetensors"
    npy = tmp_path / "pulled.npy"
    for fmt, path in (("safetensors", st), ("npy", npy)):
        args = ["model", "pull", "--task", str(task_id), "--version", "1", "--format", fmt]
        assert main([*args, "-o", str(path), *auth]) == 0
    inferred = tmp_path / "inferred.safetensors"  # no --format: from the suffix
    assert main(["model", "pull", "--task", str(task_id), "-o", str(inferred), *auth]) == 0
    assert inferred.read_bytes() == st.read_bytes()
    capsys.readouterr()
    unknown = ["model", "pull", "--task", str(task_id), "-o", str(tmp_path / "x.bin")]
    assert main([*unknown, *auth]) == 2
    assert "--format" in capsys.readouterr().err
    flat, _ = read_model_file(pt)
    assert np.array_equal(np.load(npy), flat)
    named = load_file(str(st))
    assert np.array_equal(named["0.weight"], state["0.weight"].to(torch.float32).numpy())
    assert read_model_file(st)[0].tolist() == flat.tolist()
    capsys.readouterr()
    assert (
        main(["model", "pull", "--task", str(task_id), "--version", "9", "-o", str(npy), *auth])
        == 1
    )
    assert "not_found" in capsys.readouterr().err


def test_task_create_refusals_reach_the_operator(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth = ["--server", server, "--token", ADMIN]
    typo = _task_toml(tmp_path / "typo.toml", "typo", "vector_length = 4\nmin_client = 5\n")
    assert main(["task", "create", str(typo), *auth]) == 1
    err = capsys.readouterr().err
    assert "422 invalid_request" in err and "min_client" in err and "'min_clients'" in err
    npy = tmp_path / "w.npy"
    np.save(npy, np.ones(6, np.float32))
    mismatch = _task_toml(tmp_path / "m.toml", "mismatch", "vector_length = 4\n")
    assert main(["task", "create", str(mismatch), "--init", str(npy), *auth]) == 1
    assert "vector_length = 4" in capsys.readouterr().err
    ok = _task_toml(tmp_path / "ok.toml", "from-npy")
    assert main(["task", "create", str(ok), "--init", str(npy), *auth]) == 0
    task_id = int(capsys.readouterr().out.strip())
    for action, status in (("pause", "paused"), ("resume", "active"), ("cancel", "cancelled")):
        assert main(["task", action, str(task_id), *auth]) == 0
        assert capsys.readouterr().out.strip() == f"task {task_id} 'from-npy': {status}"
    assert main(["task", "archive", str(task_id), *auth]) == 0
    capsys.readouterr()
    assert main(["status", *auth]) == 0
    assert "from-npy" not in capsys.readouterr().out
    assert main(["status", "--all", *auth]) == 0
    assert "archived" in capsys.readouterr().out
    with AdminClient(server, ADMIN) as admin:
        assert admin.pull_model(task_id).weights.tolist() == [1.0] * 6


def test_format_pt_without_torch_is_a_clear_error(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    out = tmp_path / "x.pt"
    args = ["model", "pull", "--task", "1", "--format", "pt", "-o", str(out)]
    assert main([*args, "--server", server, "--token", ADMIN]) == 1
    assert "needs the 'torch' package" in capsys.readouterr().err
    assert not out.exists()


def test_task_status_commands_over_http(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`secagg task pause|resume|cancel|archive N`: each reaches the server and says the status."""
    auth = ["--server", server, "--token", ADMIN]
    toml = _task_toml(tmp_path / "task.toml", "status-commands", "vector_length = 8\n")
    assert main(["task", "create", str(toml), *auth]) == 0
    task_id = capsys.readouterr().out.strip()
    steps = [("pause", "paused"), ("resume", "active"), ("cancel", "cancelled")]
    steps.append(("archive", "archived"))
    for action, status in steps:
        assert main(["task", action, task_id, *auth]) == 0, action
        assert capsys.readouterr().out.strip().endswith(status), action
        with AdminClient(server, ADMIN) as admin:
            assert admin.task(int(task_id))["status"] == status
    assert main(["task", "pause", task_id, *auth]) == 1  # an archived task cannot be paused
    assert "bad_task_status" in capsys.readouterr().err

"""docs/quickstart-consortium.md, followed literally: its blocks are the script.

``bash`` blocks run in order in one shell; the ``bash background`` block (the
server, "in a second terminal") is started in its own process group and left
running; ``python file=NAME`` and ``toml file=NAME`` blocks are written to
NAME; ``shell`` blocks are not run. Only the port is changed (a free one).
Then the pulled ``final.pt`` must equal the registry's current version.

Also: docs/reference.md is what ``python -m secagg.reference`` generates.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from client_sdk.models import TorchModel
from secagg import reference
from secagg.admin_client import AdminClient
from secagg.model_files import unflatten

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart-consortium.md"
FENCE = re.compile(r"^```([a-z]+)([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
DOC_PORT = "8443"

# Waits for the server started by a background block (a person would look at
# its terminal): the admin token file and /healthz over TLS, bounded.
WAIT_READY = """
__wait_ready() {
  for _ in $(seq 1 600); do
    if [ -s "$SECAGG_ADMIN_TOKEN_FILE" ] && python -c "import httpx, os; \
httpx.get(os.environ['SECAGG_SERVER'] + '/healthz', verify=os.environ['SECAGG_CA'], \
timeout=2).raise_for_status()" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "server did not come up" >&2; return 1
}
"""


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, info after it, body) of every fenced block, in order."""
    return [(m[1], m[2].strip(), m[3]) for m in FENCE.finditer(text)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_script(text: str, workdir: Path, port: int) -> str:
    """Write the file blocks into ``workdir``; return the shell script of the rest."""
    parts = ["set -euo pipefail", "set -m  # background blocks get their own process group"]
    parts.append(WAIT_READY)
    for lang, info, body in blocks(text):
        body = body.replace(DOC_PORT, str(port))
        if info.startswith("file="):
            (workdir / info.removeprefix("file=")).write_text(body)
        elif lang == "bash" and info == "background":
            parts.append(f"( {body.strip()} ) > background.log 2>&1 &")
            parts.append("echo $! >> background.pids")
            # Another terminal's process: not a job of this shell (`wait` ignores it).
            parts.append("disown $!")
            parts.append("__wait_ready")
        elif lang == "bash" and not info:
            parts.append(body)
        elif lang not in ("shell", "text"):
            raise AssertionError(f"quickstart block {lang} {info!r} has no meaning here")
    return "\n".join(parts) + "\n"


def test_the_quickstart_blocks_are_all_understood(tmp_path: Path) -> None:
    text = QUICKSTART.read_text()
    found = blocks(text)
    files = sorted(i.removeprefix("file=") for _, i, _ in found if i.startswith("file="))
    assert files == ["client.py", "model.py", "task.toml"]
    assert sum(1 for lang, info, _ in found if (lang, info) == ("bash", "background")) == 1
    script = build_script(text, tmp_path, 1234)
    for command in (
        "secagg authority init",
        "secagg serve",
        "secagg task create task.toml --init model.pt",
        "secagg token create",
        "secagg client enrol",
        "secagg task upload-roster",
        "python client.py",
        "secagg model pull",
    ):
        assert command in script, command
    assert DOC_PORT not in script and "1234" in script


def _stop_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_newcomer_goes_from_serve_to_a_pulled_pt_model(tmp_path: Path) -> None:
    workdir = tmp_path / "consortium"
    workdir.mkdir()
    port = _free_port()
    script = build_script(QUICKSTART.read_text(), workdir, port)
    (workdir / "quickstart.sh").write_text(script)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECAGG_") and k != "PYTHONPATH"}
    # The installed package, as after `pip install`; client.py imports the SDK from it.
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT)
    assert shutil.which("secagg", path=env["PATH"]), "secagg is not installed in the venv"
    run = subprocess.Popen(
        ["bash", "quickstart.sh"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        try:
            output, _ = run.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            _stop_group(run.pid)
            output, _ = run.communicate()
            raise AssertionError(f"the quickstart did not finish in 600 s:\n{output}") from None
        log = (
            (workdir / "background.log").read_text()
            if (workdir / "background.log").exists()
            else ""
        )
        assert run.returncode == 0, f"quickstart failed:\n{output}\n--- server ---\n{log[-5000:]}"
        assert "task 1 created" in output
        for site in range(1, 6):
            assert f"site {site}: ['completed', 'completed']" in output, output

        token = (workdir / "secagg-admin-token").read_text().strip()
        assert oct((workdir / "secagg-admin-token").stat().st_mode & 0o777) == "0o600"
        with AdminClient(
            f"https://127.0.0.1:{port}", token, verify=str(workdir / "tls" / "cert.pem")
        ) as admin:
            detail = admin.task(1)
            current = admin.pull_model(1, "current")
        assert detail["status"] == "completed" and detail["completed_rounds"] == 2
        assert [v["version"] for v in detail["versions"]] == [1, 2, 3]
        assert current.version == 3
        # The task's layout is the one the SDK flattens the model in.
        sys.path.insert(0, str(workdir))
        try:
            import model as quickstart_model  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(workdir))
            sys.modules.pop("model", None)
        sdk_layout = TorchModel(quickstart_model.make_model()).layout
        assert [e["name"] for e in detail["model_layout"]] == [s.name for s in sdk_layout]
        # final.pt, as a newcomer pulled it, is exactly the registry's current version.
        final = torch.load(workdir / "final.pt", weights_only=True)
        expected = unflatten(current.weights, detail["model_layout"])
        assert set(final) == set(expected)
        for name, tensor in final.items():
            assert np.array_equal(tensor.numpy(), expected[name]), name
        # And training moved it away from the initial model.
        initial = torch.load(workdir / "model.pt", weights_only=True)
        assert any(not torch.equal(initial[k], final[k]) for k in final)
    finally:
        pids = workdir / "background.pids"
        if pids.exists():
            for pid in pids.read_text().split():
                _stop_group(int(pid))
        if run.poll() is None:
            _stop_group(run.pid)


def test_the_reference_is_up_to_date() -> None:
    path = ROOT / "docs" / "reference.md"
    assert reference.main(["--check", str(path)]) == 0, (
        "docs/reference.md is out of date: run python -m secagg.reference > docs/reference.md"
    )
    text = path.read_text()
    from secagg.settings import Settings
    from secagg.task_spec import TaskCreate

    for name in [*Settings.model_fields, *TaskCreate.model_fields]:
        assert f"| `{name}` |" in text, name
    assert "(undocumented)" not in text, "every setting and task field needs a description"


def test_the_reference_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "reference.md"
    stale.write_text(reference.render().replace("training_window_s", "training_window"))
    assert reference.main(["--check", str(stale)]) == 1
    stale.write_text(reference.render())
    assert reference.main(["--check", str(stale)]) == 0

"""The Client docstring's example runs as written, up to the network.

It once passed the FlatModel wrapper to code expecting the torch module and
crashed; here its train and eval functions are called the way the client
calls them (with ``client.model``, the wrapper), on a real torch module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import client_sdk.client
from client_sdk.identity import Identity
from protocol.crypto.x509 import self_signed_certificate
from protocol.encoding import EvalSums

torch = pytest.importorskip("torch")


def _example() -> str:
    doc = client_sdk.client.__doc__
    assert doc is not None
    block = re.search(r"loop::\n\n(.*?)\n\n(?=\S)", doc, re.S)
    assert block is not None, "the docstring's example block moved"
    lines = [line[4:] for line in block.group(1).splitlines()]
    assert lines[-1].startswith("outcomes = client.run()")
    return "\n".join(lines[:-1])  # everything but the network


def test_the_docstring_example_trains_and_evaluates_the_torch_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Identity.generate().with_enrolment(5, "https://server:8443").save(tmp_path / "client.key")
    (tmp_path / "ca.pem").write_bytes(self_signed_certificate(["server"])[0])
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    calls: dict[str, object] = {}

    class MyNet(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

    def train_one_epoch(module: object, loader: object) -> int:
        assert isinstance(module, MyNet), f"train got a {type(module).__name__}"
        with torch.no_grad():
            module.fc.weight.add_(1.0)
        calls["train"] = loader
        return 17

    def run_eval(module: object, loader: object) -> tuple[int, int, float]:
        assert isinstance(module, MyNet), f"eval got a {type(module).__name__}"
        calls["eval"] = loader
        return 3, 4, 1.5

    namespace: dict[str, object] = {
        "MyNet": MyNet,
        "train_one_epoch": train_one_epoch,
        "run_eval": run_eval,
        "loader": "train-data",
        "test_loader": "test-data",
    }
    exec(compile(_example(), "client_sdk.client docstring", "exec"), namespace)
    client = namespace["client"]
    assert isinstance(client, client_sdk.client.Client)
    assert os.path.samefile(str(client.identity.path), tmp_path / "client.key")
    before = client.model.get_weights()
    # As the client calls them: with its FlatModel view of the module.
    assert client.eval_fn is not None
    assert client.eval_fn(client.model) == EvalSums(3, 4, 1.5)
    assert client.train_fn(client.model) == 17
    after = client.model.get_weights()
    assert calls == {"train": "train-data", "eval": "test-data"}
    # The trained module is what the client reads back: fc.weight (6 values) moved by 1.
    assert np.count_nonzero(after - before) == 6
    assert client._transport.retry.give_up_after_s == 1800

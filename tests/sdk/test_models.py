"""Tests of client_sdk.models: the FlatModel protocol and its adapters."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from client_sdk.models import (
    FlatModel,
    FunctionModel,
    NumpyModel,
    TorchModel,
    as_flat_model,
    as_weight_vector,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).to(dtype)


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).relu().mean(dim=(2, 3))
        out: torch.Tensor = self.head(h)
        return out


def _random_vector(n: int, seed: int = 1) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


# --------------------------------------------------------------------------
# TorchModel.
# --------------------------------------------------------------------------


def test_torch_round_trip_is_exact() -> None:
    model = TorchModel(_mlp())
    assert model.num_weights == 5 * 7 + 7 + 7 * 3 + 3
    w = model.get_weights()
    assert w.dtype == np.float32 and w.shape == (model.num_weights,)
    v = _random_vector(model.num_weights)
    model.set_weights(v)
    assert (model.get_weights() == v).all()
    model.set_weights(w)
    assert (model.get_weights() == w).all()


def test_torch_layout_matches_parameters() -> None:
    module = _mlp()
    model = TorchModel(module)
    w = model.get_weights()
    params = dict(module.named_parameters())
    for spec in model.layout:
        expected = params[spec.name].detach().numpy().reshape(-1)
        assert (w[spec.offset : spec.stop] == expected).all()
    assert [s.name for s in model.layout] == sorted(params)


def test_get_weights_returns_an_owned_copy() -> None:
    module = _mlp()
    model = TorchModel(module)
    before = model.get_weights()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    after = model.get_weights()
    assert not np.shares_memory(before, after)
    np.testing.assert_allclose(after, before + 1.0, rtol=0, atol=1e-6)


def test_weights_view_is_the_read_only_preallocated_buffer() -> None:
    module = _mlp()
    model = TorchModel(module)
    first = model.weights_view()
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1.0
    snapshot = first.copy()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)
    second = model.weights_view()
    assert np.shares_memory(first, second)
    assert (second == snapshot * 2).all()
    assert (second == model.get_weights()).all()
    # Loading the adapter's own view back is allowed and a no-op.
    model.set_weights(second)
    assert (model.get_weights() == snapshot * 2).all()


def test_set_weights_keeps_parameter_objects_and_optimizer_works() -> None:
    module = _mlp()
    model = TorchModel(module)
    params_before = [id(p) for p in module.parameters()]
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    v = _random_vector(model.num_weights)
    model.set_weights(v)
    assert [id(p) for p in module.parameters()] == params_before
    assert all(p.requires_grad for p in module.parameters())

    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    loss = module(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.get_weights()
    assert not (after == v).all()  # the optimizer moved the very parameters we set
    # ... and exactly by -lr * grad for plain first-step SGD with momentum.
    grads = np.concatenate(
        [
            dict(module.named_parameters())[s.name].grad.numpy().reshape(-1)  # type: ignore[union-attr]
            for s in model.layout
        ]
    )
    np.testing.assert_allclose(after, v - 0.1 * grads, rtol=0, atol=1e-6)


def test_batchnorm_buffers_included_counters_excluded() -> None:
    module = _ConvBN()
    model = TorchModel(module)
    kinds = {s.name: s.kind for s in model.layout}
    assert kinds["bn.running_mean"] == "buffer"
    assert kinds["bn.running_var"] == "buffer"
    assert "bn.num_batches_tracked" not in kinds
    n_params = sum(p.numel() for p in module.parameters())
    assert model.num_weights == n_params + 4 + 4
    # parameters first (sorted), then buffers (sorted)
    names = [s.name for s in model.layout]
    param_names = sorted(n for n, _ in module.named_parameters())
    assert names == [*param_names, "bn.running_mean", "bn.running_var"]

    # A training forward pass changes the running stats; the flat view sees it.
    w0 = model.get_weights()
    module.train()
    module(torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0)))
    w1 = model.get_weights()
    rm = next(s for s in model.layout if s.name == "bn.running_mean")
    assert not (w1[rm.offset : rm.stop] == w0[rm.offset : rm.stop]).all()

    # Setting writes the buffers in place; the counter is left alone.
    buffers = dict(module.named_buffers())
    tracked = int(buffers["bn.num_batches_tracked"])
    assert tracked == 1
    v = np.abs(_random_vector(model.num_weights)) + 0.5  # keep running_var positive
    model.set_weights(v)
    after = dict(module.named_buffers())
    assert after["bn.running_var"] is buffers["bn.running_var"]
    rv = next(s for s in model.layout if s.name == "bn.running_var")
    assert (after["bn.running_var"].numpy() == v[rv.offset : rv.stop]).all()
    assert int(after["bn.num_batches_tracked"]) == tracked
    assert (model.get_weights() == v).all()


def test_order_is_deterministic_and_independent_of_registration_order() -> None:
    class AB(nn.Module):
        def __init__(self, first: str) -> None:
            super().__init__()
            torch.manual_seed(0)
            a, b = nn.Linear(3, 2), nn.Linear(2, 4)
            for name in (first, "b" if first == "a" else "a"):
                self.add_module(name, a if name == "a" else b)

    m1, m2 = TorchModel(AB("a")), TorchModel(AB("b"))
    assert [s.name for s in m1.layout] == ["a.bias", "a.weight", "b.bias", "b.weight"]
    assert m1.layout == m2.layout
    assert (m1.get_weights() == m2.get_weights()).all()
    # Two wraps of equal modules in fresh processes agree too (same seed, same layout).
    assert TorchModel(_mlp(3)).layout == TorchModel(_mlp(3)).layout
    assert (TorchModel(_mlp(3)).get_weights() == TorchModel(_mlp(3)).get_weights()).all()


def test_shared_parameters_appear_once() -> None:
    lin = nn.Linear(3, 3)
    module = nn.Sequential(lin, nn.ReLU(), lin)
    model = TorchModel(module)
    assert model.num_weights == 12


def test_float64_module() -> None:
    module = _mlp(dtype=torch.float64)
    model = TorchModel(module)
    w = model.get_weights()
    assert w.dtype == np.float32
    expected = torch.nn.utils.parameters_to_vector(
        [dict(module.named_parameters())[s.name] for s in model.layout]
    )
    assert (w == expected.detach().numpy().astype(np.float32)).all()
    v = _random_vector(model.num_weights)
    model.set_weights(v)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert (model.get_weights() == v).all()  # float32 -> float64 -> float32 is exact
    # A float64 input vector is accepted and cast.
    v64 = v.astype(np.float64) + 1e-12
    model.set_weights(v64)
    assert (model.get_weights() == v64.astype(np.float32)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_module(dtype: torch.dtype) -> None:
    module = _mlp(dtype=dtype)
    model = TorchModel(module)
    w = model.get_weights()
    assert w.dtype == np.float32
    model.set_weights(w)  # values representable in the low precision round-trip exactly
    assert (model.get_weights() == w).all()
    assert all(p.dtype == dtype for p in module.parameters())


def test_non_float_parameter_rejected() -> None:
    module = nn.Module()
    module.register_parameter(
        "count", nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    )
    with pytest.raises(TypeError, match="count"):
        TorchModel(module)


def test_lazy_module_rejected_until_initialised() -> None:
    module = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises(ValueError, match="forward pass"):
        TorchModel(module)
    module(torch.zeros(2, 3))
    assert TorchModel(module).num_weights == 3 * 4 + 4


def test_structure_change_detected() -> None:
    module = _mlp()
    model = TorchModel(module)
    module[2] = nn.Linear(7, 4)
    with pytest.raises(RuntimeError, match="structure changed"):
        model.get_weights()


def test_torch_model_needs_a_module() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        TorchModel([np.zeros(3)])  # type: ignore[arg-type]


def test_models_module_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from client_sdk.models import TorchModel, as_flat_model, NumpyModel\n"
        "assert isinstance(as_flat_model([np.zeros(2)]), NumpyModel)\n"
        "try:\n"
        "    TorchModel(object())\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "secagg[torch]" in out.stdout


# --------------------------------------------------------------------------
# Validation (shared by all adapters).
# --------------------------------------------------------------------------


def _all_adapters() -> list[FlatModel]:
    arrays: list[np.ndarray] = [np.zeros((2, 3), dtype=np.float32), np.zeros(4, dtype=np.float64)]
    store = np.zeros(10, dtype=np.float32)

    def _set(v: npt.NDArray[np.float32]) -> None:
        store[:] = v

    return [
        TorchModel(nn.Linear(3, 2, bias=True).requires_grad_(True)),  # 8 weights
        NumpyModel(arrays),
        FunctionModel(lambda: store.copy(), _set),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_wrong_length_names_expected_length(index: int) -> None:
    model = _all_adapters()[index]
    n = model.num_weights
    before = model.get_weights()
    for bad in (np.zeros(n + 1, np.float32), np.zeros(n - 1, np.float32)):
        with pytest.raises(ValueError, match=f"length {n}"):
            model.set_weights(bad)
    with pytest.raises(ValueError, match=f"length {n}"):
        model.set_weights(np.zeros((1, n), np.float32))
    assert (model.get_weights() == before).all()


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_names_first_bad_index(index: int, bad_value: float) -> None:
    model = _all_adapters()[index]
    before = model.get_weights()
    v = np.ones(model.num_weights, np.float32)
    v[5] = bad_value
    v[6] = np.nan
    with pytest.raises(ValueError, match="index 5"):
        model.set_weights(v)
    assert (model.get_weights() == before).all()  # nothing was written


def test_float64_overflow_is_non_finite() -> None:
    with pytest.raises(ValueError, match=r"index 2: .*overflows float32"):
        as_weight_vector(np.array([0.0, 1.0, 1e300]), 3)


def test_non_numeric_vector_rejected() -> None:
    with pytest.raises(TypeError, match="real numbers"):
        as_weight_vector(np.array(["a", "b"]), 2)
    with pytest.raises(TypeError, match="real numbers"):
        as_weight_vector(np.zeros(2, dtype=np.complex64), 2)


def test_as_weight_vector_does_not_copy_float32() -> None:
    v = np.zeros(4, np.float32)
    assert as_weight_vector(v, 4) is v
    assert as_weight_vector([1, 2, 3], 3).dtype == np.float32


def test_torch_set_weights_accepts_non_contiguous_and_read_only() -> None:
    model = TorchModel(_mlp())
    n = model.num_weights
    big = _random_vector(2 * n)
    strided = big[::2]
    model.set_weights(strided)
    assert (model.get_weights() == strided).all()
    ro = _random_vector(n, seed=5)
    ro.flags.writeable = False
    model.set_weights(ro)
    assert (model.get_weights() == ro).all()


# --------------------------------------------------------------------------
# NumpyModel.
# --------------------------------------------------------------------------


def test_numpy_views_updated_in_place() -> None:
    base = np.zeros((4, 6), dtype=np.float64)
    view = base[:, ::2]  # non-contiguous view
    half = np.ones(3, dtype=np.float16)
    w32 = np.arange(5, dtype=np.float32)
    model = NumpyModel([view, half, w32])
    assert model.num_weights == 12 + 3 + 5
    assert (model.get_weights() == np.concatenate([np.zeros(12), np.ones(3), w32])).all()
    v = np.arange(20, dtype=np.float32) + 0.5
    model.set_weights(v)
    assert model.arrays[0] is view and model.arrays[1] is half and model.arrays[2] is w32
    assert (base[:, ::2].reshape(-1) == v[:12]).all()
    assert (base[:, 1::2] == 0).all()  # the elements between the view's are untouched
    assert (half == v[12:15].astype(np.float16)).all()
    assert (w32 == v[15:]).all()
    assert (model.get_weights() == v).all()


def test_numpy_dict_sorted_by_key() -> None:
    d1 = {"b": np.full(2, 2.0), "a": np.full(3, 1.0)}
    d2 = {"a": np.full(3, 1.0), "b": np.full(2, 2.0)}
    m1, m2 = NumpyModel(d1), NumpyModel(d2)
    assert [s.name for s in m1.layout] == ["a", "b"]
    assert (m1.get_weights() == np.array([1, 1, 1, 2, 2], np.float32)).all()
    assert (m1.get_weights() == m2.get_weights()).all()
    m1.set_weights(np.arange(5, dtype=np.float32))
    assert (d1["a"] == [0, 1, 2]).all() and (d1["b"] == [3, 4]).all()


def test_numpy_get_weights_is_a_copy() -> None:
    arr = np.zeros(3, np.float32)
    model = NumpyModel([arr])
    w = model.get_weights()
    w[:] = 7
    assert (arr == 0).all()


def test_numpy_model_rejects_bad_arrays() -> None:
    with pytest.raises(TypeError, match="floating point"):
        NumpyModel([np.zeros(3, dtype=np.int32)])
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        NumpyModel([ro])
    with pytest.raises(TypeError, match="not a numpy array"):
        NumpyModel([[1.0, 2.0]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list or dict"):
        NumpyModel(np.zeros(3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# FunctionModel.
# --------------------------------------------------------------------------


def test_function_model_round_trip() -> None:
    state = {"w": np.arange(6, dtype=np.float64)}

    def get() -> npt.NDArray[np.float64]:
        return state["w"]

    def set_(v: npt.NDArray[np.float32]) -> None:
        assert v.dtype == np.float32 and v.ndim == 1
        state["w"] = v.astype(np.float64)

    model = FunctionModel(get, set_)
    assert model.num_weights == 6
    w = model.get_weights()
    assert w.dtype == np.float32 and not np.shares_memory(w, state["w"])
    v = _random_vector(6)
    model.set_weights(v)
    assert (model.get_weights() == v).all()


def test_function_model_checks_get_result() -> None:
    calls = {"n": 0}

    def get() -> npt.NDArray[np.float32]:
        calls["n"] += 1
        return np.zeros(4 if calls["n"] == 1 else 5, np.float32)

    model = FunctionModel(get, lambda v: None)
    with pytest.raises(ValueError, match="length 4"):
        model.get_weights()
    lazy = FunctionModel(get, lambda v: None, num_weights=5)
    assert lazy.get_weights().shape == (5,)
    with pytest.raises(TypeError, match="callables"):
        FunctionModel(None, lambda v: None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# as_flat_model and the protocol.
# --------------------------------------------------------------------------


def test_adapters_satisfy_the_protocol() -> None:
    for model in _all_adapters():
        assert isinstance(model, FlatModel)


def test_as_flat_model_dispatch() -> None:
    module = _mlp()
    wrapped = as_flat_model(module)
    assert isinstance(wrapped, TorchModel) and wrapped.module is module
    assert as_flat_model(wrapped) is wrapped
    assert isinstance(as_flat_model([np.zeros(2)]), NumpyModel)
    assert isinstance(as_flat_model((np.zeros(2),)), NumpyModel)
    assert isinstance(as_flat_model({"w": np.zeros(2)}), NumpyModel)

    class Custom:
        num_weights = 2

        def get_weights(self) -> npt.NDArray[np.float32]:
            return np.zeros(2, np.float32)

        def set_weights(self, vec: npt.NDArray[Any]) -> None:
            pass

    custom = Custom()
    assert as_flat_model(custom) is custom


@pytest.mark.parametrize("obj", [42, "weights", np.zeros(3), [1.0, 2.0], None])
def test_as_flat_model_rejects_with_accepted_kinds(obj: object) -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*numpy.*FunctionModel"):
        as_flat_model(obj)

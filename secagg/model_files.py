"""Model files in and out of the flat float32 vector the service aggregates.

In (``secagg task create --init FILE``): a PyTorch state_dict (``.pt``/``.pth``),
a ``.safetensors`` file, or a ``.npy`` array. Out (``secagg model pull
--format``): ``pt``, ``safetensors`` or ``npy``.

Layout order. The vector must be laid out exactly as clients flatten their
model, or every client would train a scrambled model. The SDK's
``TorchModel`` puts every parameter sorted by name, then every floating
buffer sorted by name, and skips integer buffers (``num_batches_tracked``).
A state_dict does not say which tensors are buffers, so the normalisation
buffers it holds by their standard names (``running_mean``, ``running_var``)
are taken as buffers and the rest as parameters; non-floating tensors are
left out. The resulting layout (names, shapes, dtypes) is stored with the
task, and a client can compare it with its own ``TorchModel.layout``.

torch and safetensors are optional: a format that needs a missing package
is refused with :class:`ModelFileError` naming the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "BUFFER_SUFFIXES",
    "ModelFileError",
    "flatten_named",
    "read_model_file",
    "require_format",
    "unflatten",
    "write_model_file",
]

BUFFER_SUFFIXES = ("running_mean", "running_var")
"""Last name components taken as floating buffers (placed after the parameters)."""

Format = Literal["pt", "safetensors", "npy"]
Layout = list[dict[str, Any]]


class ModelFileError(Exception):
    """A model file cannot be read or written; the message says why."""


def _optional(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise ModelFileError(
            f"{why} needs the {package!r} package, which is not installed (pip install {package})"
        ) from exc


def _is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES


def flatten_named(
    tensors: Mapping[str, npt.NDArray[Any]], dtypes: Mapping[str, str] | None = None
) -> tuple[npt.NDArray[np.float32], Layout]:
    """Named floating arrays -> (flat float32 vector, layout) in the SDK's order.

    Args:
        tensors: name -> array; non-floating arrays are skipped.
        dtypes: name -> dtype to record (default: the array's dtype name).

    Raises:
        ModelFileError: no floating tensor, or a non-finite value.
    """
    floating = {n: a for n, a in tensors.items() if np.issubdtype(np.asarray(a).dtype, np.floating)}
    if not floating:
        raise ModelFileError("the model holds no floating-point tensor")
    params = sorted(n for n in floating if not _is_buffer(n))
    buffers = sorted(n for n in floating if _is_buffer(n))
    order = params + buffers
    parts = [np.asarray(floating[n], dtype=np.float32).reshape(-1) for n in order]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if not np.isfinite(flat).all():
        raise ModelFileError("the model holds non-finite values (inf or nan)")
    layout = [
        {
            "name": n,
            "shape": [int(d) for d in np.asarray(floating[n]).shape],
            "dtype": (dtypes or {}).get(n, str(np.asarray(floating[n]).dtype)),
        }
        for n in order
    ]
    return flat, layout


def unflatten(
    weights: npt.NDArray[np.float32], layout: Sequence[Mapping[str, Any]] | None
) -> dict[str, npt.NDArray[np.float32]]:
    """The flat vector as named float32 arrays (one array ``weights`` without a layout).

    Raises:
        ModelFileError: the layout does not add up to the vector's length.
    """
    if not layout:
        return {"weights": weights}
    out: dict[str, npt.NDArray[np.float32]] = {}
    offset = 0
    for entry in layout:
        shape = tuple(int(d) for d in entry["shape"])
        n = int(np.prod(shape, dtype=np.int64))
        if offset + n > len(weights):
            break
        out[str(entry["name"])] = weights[offset : offset + n].reshape(shape)
        offset += n
    if offset != len(weights) or len(out) != len(layout):
        raise ModelFileError(f"the task's layout does not match its model ({len(weights)} weights)")
    return out


def _read_torch(path: Path) -> tuple[npt.NDArray[np.float32], Layout | None]:
    torch = _optional("torch", "a .pt model")
    try:
        # weights_only: a state_dict is tensors; never unpickle arbitrary objects.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"cannot read {path} as a PyTorch state_dict: {exc}") from exc
    if isinstance(obj, torch.Tensor):
        obj = {"weights": obj}
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelFileError(
            f"{path} is not a state_dict (save one with torch.save(model.state_dict(), path))"
        )
    arrays: dict[str, npt.NDArray[Any]] = {}
    dtypes: dict[str, str] = {}
    for name, t in obj.items():
        if t.is_floating_point():
            arrays[name] = t.detach().to(torch.float32).numpy()
            dtypes[name] = str(t.dtype)
    return flatten_named(arrays, dtypes)


def _read_safetensors(path: Path) -> tuple[npt.NDArray[np.float32], Layout | None]:
    st = _optional("safetensors.numpy", "a .safetensors model")
    try:
        arrays = st.load_file(str(path))
    except Exception as exc:
        raise ModelFileError(f"cannot read {path} as safetensors: {exc}") from exc
    return flatten_named(arrays)


def _read_npy(path: Path) -> tuple[npt.NDArray[np.float32], Layout | None]:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelFileError(f"cannot read {path} as .npy: {exc}") from exc
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise ModelFileError(f"{path} does not hold a floating-point array")
    if array.ndim == 1:
        flat, _ = flatten_named({"weights": array})
        return flat, None
    return flatten_named({"weights": array})


def read_model_file(path: Path) -> tuple[npt.NDArray[np.float32], Layout | None]:
    """A model file -> (flat float32 vector, layout or None for a plain vector).

    Raises:
        ModelFileError: unknown extension, unreadable file, missing optional package.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError(f"no such file: {path}")
    if suffix in (".pt", ".pth"):
        return _read_torch(path)
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".npy":
        return _read_npy(path)
    raise ModelFileError(f"{path}: use a .pt/.pth state_dict, a .safetensors or a .npy file")


def _torch_dtype(torch: Any, name: str) -> Any:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    return torch.float32


def require_format(fmt: str) -> None:
    """Refuse now (before any download) a format whose package is missing.

    Raises:
        ModelFileError: unknown format, or torch / safetensors not installed.
    """
    if fmt == "pt":
        _optional("torch", "--format pt")
    elif fmt == "safetensors":
        _optional("safetensors.numpy", "--format safetensors")
    elif fmt != "npy":
        raise ModelFileError(f"unknown format {fmt!r}; use pt, safetensors or npy")


def write_model_file(
    path: Path,
    weights: npt.NDArray[np.float32],
    layout: Sequence[Mapping[str, Any]] | None,
    fmt: Format,
) -> None:
    """Write a pulled model: ``npy`` (the flat vector), or named tensors (``pt``,
    ``safetensors``) rebuilt from the layout (``pt`` restores each tensor's dtype).

    Raises:
        ModelFileError: the format's package is missing, or the layout does not fit.
    """
    if fmt == "npy":
        with path.open("wb") as fh:
            np.save(fh, weights.astype(np.float32), allow_pickle=False)
        return
    named = unflatten(weights.astype(np.float32), layout)
    if fmt == "safetensors":
        st = _optional("safetensors.numpy", "--format safetensors")
        st.save_file({k: np.ascontiguousarray(v) for k, v in named.items()}, str(path))
        return
    if fmt == "pt":
        torch = _optional("torch", "--format pt")
        dtypes = {str(e["name"]): str(e.get("dtype", "float32")) for e in layout or ()}
        state = {
            k: torch.from_numpy(np.array(v)).to(_torch_dtype(torch, dtypes.get(k, "float32")))
            for k, v in named.items()
        }
        torch.save(state, path)
        return
    raise ModelFileError(f"unknown format {fmt!r}; use pt, safetensors or npy")

"""Flat weight vectors: the SDK's one view of a model.

Secure aggregation sums vectors, so the SDK sees any model as a single 1-D
``float32`` vector through the :class:`FlatModel` protocol. Three adapters
cover what people train:

* :class:`TorchModel` for any PyTorch ``nn.Module`` (parameters and floating
  point buffers such as BatchNorm running statistics),
* :class:`NumpyModel` for a list or dict of numpy arrays, updated in place,
* :class:`FunctionModel` for anything else, through a ``get``/``set`` pair.

:func:`as_flat_model` picks the right adapter. Every adapter validates what
``set_weights`` receives *before* touching the model (a vector of the wrong
length or with a NaN/inf never leaves a model half-written), and every
``get_weights`` returns a fresh array the caller owns.

PyTorch is imported lazily: this module imports without torch, and only
:class:`TorchModel` needs it (``pip install 'secagg[torch]'``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

__all__ = [
    "FlatModel",
    "FunctionModel",
    "NumpyModel",
    "TorchModel",
    "WeightSlice",
    "as_flat_model",
    "as_weight_vector",
]

Float32Vector = npt.NDArray[np.float32]


@runtime_checkable
class FlatModel(Protocol):
    """A model seen as one flat ``float32`` weight vector.

    Implementations must keep the layout fixed: ``get_weights`` always
    returns ``num_weights`` values in the same order, and ``set_weights``
    accepts exactly that layout.
    """

    @property
    def num_weights(self) -> int:
        """Length of the flat weight vector."""
        ...

    def get_weights(self) -> Float32Vector:
        """Return the current weights as a 1-D ``float32`` array of length ``num_weights``."""
        ...

    def set_weights(self, vec: npt.NDArray[Any]) -> None:
        """Overwrite the model's weights with ``vec`` (1-D, length ``num_weights``)."""
        ...


# --------------------------------------------------------------------------
# Validation shared by every adapter.
# --------------------------------------------------------------------------


def as_weight_vector(vec: object, num_weights: int) -> Float32Vector:
    """Validate a weight vector and return it as a 1-D ``float32`` array.

    The result is ``vec`` itself when it already is a 1-D ``float32`` array
    (no copy), otherwise a converted copy.

    Args:
        vec: A 1-D array-like of real numbers.
        num_weights: The length the model expects.

    Returns:
        ``vec`` as a 1-D ``float32`` numpy array of length ``num_weights``.

    Raises:
        TypeError: ``vec`` is not numeric (e.g. strings, objects, complex).
        ValueError: ``vec`` is not 1-D, has a length other than
            ``num_weights``, or contains a value that is not finite in
            ``float32`` (NaN, ±inf, or a float64 beyond the float32 range);
            the message names the first bad index.
    """
    arr = np.asarray(vec)
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"weight vector must hold real numbers, got dtype {arr.dtype} "
            f"(expected a 1-D float32 array of length {num_weights})"
        )
    if arr.ndim != 1 or arr.shape[0] != num_weights:
        raise ValueError(
            f"weight vector must be 1-D of length {num_weights}, got shape {arr.shape}"
        )
    if arr.dtype == np.float32:
        out: Float32Vector = arr
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        original = arr[bad]
        if np.isfinite(original):
            detail = f"{original!r} overflows float32"
        else:
            detail = f"{original!r} is not finite"
        raise ValueError(
            f"weight vector of length {num_weights} has a non-finite value at index {bad}: {detail}"
        )
    return out


@dataclass(frozen=True, slots=True)
class WeightSlice:
    """Where one named tensor or array lives in the flat vector.

    Attributes:
        name: Parameter/buffer name (``TorchModel``), dict key or list index
            (``NumpyModel``).
        kind: ``"parameter"``, ``"buffer"`` or ``"array"``.
        shape: Shape of the tensor or array.
        dtype: Its dtype as a string (e.g. ``"torch.float64"``, ``"float32"``).
        offset: Index of its first element in the flat vector.
        numel: Number of elements.
    """

    name: str
    kind: Literal["parameter", "buffer", "array"]
    shape: tuple[int, ...]
    dtype: str
    offset: int
    numel: int

    @property
    def stop(self) -> int:
        """One past the index of its last element in the flat vector."""
        return self.offset + self.numel


# --------------------------------------------------------------------------
# PyTorch.
# --------------------------------------------------------------------------


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "TorchModel needs PyTorch, which is not installed; install the SDK's "
            "'torch' extra: pip install 'secagg[torch]'"
        ) from exc
    return torch


def _is_torch_module(obj: object) -> bool:
    # Without torch imported no object can be an nn.Module: don't import it.
    torch_mod = sys.modules.get("torch")
    if torch_mod is None:
        return False
    return isinstance(obj, torch_mod.nn.Module)


class TorchModel:
    """Flat view of a PyTorch ``nn.Module``: parameters and floating buffers.

    Layout: every parameter sorted by name (``named_parameters()``, shared
    parameters once), then every floating-point buffer sorted by name
    (``named_buffers()``; e.g. BatchNorm ``running_mean``/``running_var``).
    Integer and boolean buffers such as ``num_batches_tracked`` are excluded:
    they are counters, not weights, and averaging them is meaningless.
    Sorting by name makes the layout independent of the order in which
    submodules were registered, so every client agrees on it.
    :attr:`layout` describes the result.

    Copies go straight between the tensors and numpy memory through
    ``torch.from_numpy`` views, under ``torch.no_grad()``:

    * :meth:`get_weights` allocates one ``float32`` array and copies every
      tensor into its slice (one copy; the caller owns the result).
    * :meth:`weights_view` copies into the adapter's one preallocated buffer
      and returns it read-only with no allocation; it is overwritten by the
      next call, so use it only to consume the weights immediately.
    * :meth:`set_weights` copies each slice of the given vector back *in
      place* (``Tensor.copy_``): the ``Parameter`` objects stay the same, so
      an optimizer built on them keeps working, and the input vector is read
      without being copied when it already is ``float32``.

    Non-``float32`` tensors (``float64``, ``float16``, ``bfloat16``) are cast
    on the way out and back; tensors on another device are copied across.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        """Wrap ``module``; its parameters and buffers are resolved on every call.

        Args:
            module: Any ``torch.nn.Module``. Its structure (names, shapes and
                dtypes of parameters and floating buffers) must not change
                afterwards; the values of course may.

        Raises:
            ImportError: PyTorch is not installed (names the ``torch`` extra).
            TypeError: ``module`` is not an ``nn.Module``, or has a
                non-floating (e.g. integer or complex) parameter.
            ValueError: ``module`` has uninitialised (lazy) parameters or
                buffers: run one forward pass before wrapping it.
        """
        torch_mod = _import_torch()
        if not isinstance(module, torch_mod.nn.Module):
            raise TypeError(f"TorchModel wraps a torch.nn.Module, got {type(module).__name__}")
        self._torch = torch_mod
        self._module: torch.nn.Module = module
        layout: list[WeightSlice] = []
        offset = 0
        for kind, name, tensor in self._named_tensors():
            if torch_mod.nn.parameter.is_lazy(tensor):
                raise ValueError(
                    f"{kind} {name!r} is uninitialised (lazy module): run one forward "
                    "pass before wrapping the module"
                )
            numel = int(tensor.numel())
            layout.append(
                WeightSlice(
                    name=name,
                    kind=kind,
                    shape=tuple(int(d) for d in tensor.shape),
                    dtype=str(tensor.dtype),
                    offset=offset,
                    numel=numel,
                )
            )
            offset += numel
        self._layout = tuple(layout)
        self._num_weights = offset
        self._buffer: Float32Vector = np.zeros(offset, dtype=np.float32)
        self._buffer_t = torch_mod.from_numpy(self._buffer)

    def _named_tensors(
        self,
    ) -> Iterator[tuple[Literal["parameter", "buffer"], str, torch.Tensor]]:
        torch_mod = self._torch
        for name, param in sorted(self._module.named_parameters(), key=lambda kv: kv[0]):
            if not (torch_mod.nn.parameter.is_lazy(param) or torch_mod.is_floating_point(param)):
                raise TypeError(
                    f"parameter {name!r} has dtype {param.dtype}; only floating point "
                    "parameters can be aggregated"
                )
            yield "parameter", name, param
        for name, buf in sorted(self._module.named_buffers(), key=lambda kv: kv[0]):
            if torch_mod.nn.parameter.is_lazy(buf) or torch_mod.is_floating_point(buf):
                yield "buffer", name, buf

    def _tensors(self) -> list[torch.Tensor]:
        """The module's current tensors in layout order, checked against the layout."""
        tensors: list[torch.Tensor] = []
        entries = list(self._named_tensors())
        if len(entries) != len(self._layout):
            raise RuntimeError(
                f"module structure changed since it was wrapped: {len(self._layout)} "
                f"tensors in the layout, {len(entries)} now; wrap it again"
            )
        for (kind, name, tensor), spec in zip(entries, self._layout, strict=True):
            shape = tuple(int(d) for d in tensor.shape)
            if kind != spec.kind or name != spec.name or shape != spec.shape:
                raise RuntimeError(
                    f"module structure changed since it was wrapped: expected {spec.kind} "
                    f"{spec.name!r} of shape {spec.shape}, found {kind} {name!r} of shape "
                    f"{shape}; wrap it again"
                )
            tensors.append(tensor)
        return tensors

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped module."""
        return self._module

    @property
    def num_weights(self) -> int:
        """Number of elements across all parameters and floating buffers."""
        return self._num_weights

    @property
    def layout(self) -> tuple[WeightSlice, ...]:
        """Name, kind, shape, dtype and position of every tensor in the flat vector."""
        return self._layout

    def _gather_into(self, out_t: torch.Tensor) -> None:
        with self._torch.no_grad():
            for spec, tensor in zip(self._layout, self._tensors(), strict=True):
                out_t[spec.offset : spec.stop].copy_(tensor.detach().reshape(-1))

    def get_weights(self) -> Float32Vector:
        """Return a fresh copy of the weights.

        Returns:
            A new 1-D ``float32`` array of length :attr:`num_weights` in
            :attr:`layout` order; the caller owns it.

        Raises:
            RuntimeError: The module's structure changed since wrapping.
        """
        out = np.empty(self._num_weights, dtype=np.float32)
        self._gather_into(self._torch.from_numpy(out))
        return out

    def weights_view(self) -> Float32Vector:
        """Return the weights in the adapter's preallocated buffer, without allocating.

        Returns:
            A read-only 1-D ``float32`` view of the adapter's buffer. It is
            valid only until the next call of :meth:`weights_view`, which
            overwrites it; ``.copy()`` it to keep it.

        Raises:
            RuntimeError: The module's structure changed since wrapping.
        """
        self._gather_into(self._buffer_t)
        view = self._buffer.view()
        view.flags.writeable = False
        return view

    def set_weights(self, vec: npt.NDArray[Any]) -> None:
        """Copy ``vec`` into the module's parameters and buffers in place.

        The vector is validated completely before anything is written, so a
        bad vector leaves the module unchanged.

        Args:
            vec: 1-D array of length :attr:`num_weights` in :attr:`layout`
                order; ``float32`` is read without a copy, other real dtypes
                are converted.

        Raises:
            TypeError: ``vec`` is not numeric.
            ValueError: Wrong shape or length (names the expected length), or a
                non-finite value (names the first bad index).
            RuntimeError: The module's structure changed since wrapping.
        """
        arr = as_weight_vector(vec, self._num_weights)
        tensors = self._tensors()
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            # from_numpy needs a writeable array; slices of a contiguous copy are views.
            arr = np.array(arr, dtype=np.float32, order="C", copy=True)
        src = self._torch.from_numpy(arr)
        with self._torch.no_grad():
            for spec, tensor in zip(self._layout, tensors, strict=True):
                tensor.copy_(src[spec.offset : spec.stop].view(tensor.shape))

    def __repr__(self) -> str:
        return (
            f"TorchModel({type(self._module).__name__}, num_weights={self._num_weights}, "
            f"tensors={len(self._layout)})"
        )


# --------------------------------------------------------------------------
# numpy.
# --------------------------------------------------------------------------


class NumpyModel:
    """Flat view of a list or dict of numpy arrays, updated in place.

    The adapter keeps references to the arrays themselves (no copies), so
    :meth:`set_weights` writes through to whatever else holds them, e.g.
    the attributes of a hand-written model. Layout: list order, or dict
    keys sorted (so two clients building the dict in different orders
    agree). Arrays may be ``float16``/``float32``/``float64`` and
    non-contiguous views; values are cast to ``float32`` on the way out and
    back to each array's dtype on the way in.
    """

    def __init__(self, arrays: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> None:
        """Wrap ``arrays``.

        Args:
            arrays: A list or tuple of arrays, or a dict from names to arrays.

        Raises:
            TypeError: ``arrays`` is neither, an element is not a numpy
                array, is not floating point, or a dict key is not a string.
            ValueError: An array is read-only (it could not be updated in place).
        """
        named: list[tuple[str, np.ndarray]]
        if isinstance(arrays, Mapping):
            for key in arrays:
                if not isinstance(key, str):
                    raise TypeError(f"NumpyModel dict keys must be str, got {key!r}")
            named = sorted(arrays.items(), key=lambda kv: kv[0])
        elif isinstance(arrays, list | tuple):
            named = [(str(i), a) for i, a in enumerate(arrays)]
        else:
            raise TypeError(
                f"NumpyModel takes a list or dict of numpy arrays, got {type(arrays).__name__}"
            )
        layout: list[WeightSlice] = []
        offset = 0
        for name, arr in named:
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"array {name!r} is a {type(arr).__name__}, not a numpy array")
            if arr.dtype.kind != "f":
                raise TypeError(
                    f"array {name!r} has dtype {arr.dtype}; only floating point arrays "
                    "can be aggregated"
                )
            if not arr.flags.writeable:
                raise ValueError(f"array {name!r} is read-only and could not be updated in place")
            layout.append(
                WeightSlice(
                    name=name,
                    kind="array",
                    shape=tuple(int(d) for d in arr.shape),
                    dtype=str(arr.dtype),
                    offset=offset,
                    numel=int(arr.size),
                )
            )
            offset += int(arr.size)
        self._arrays = [arr for _, arr in named]
        self._layout = tuple(layout)
        self._num_weights = offset

    @property
    def arrays(self) -> list[np.ndarray]:
        """The wrapped arrays (the same objects), in layout order."""
        return list(self._arrays)

    @property
    def num_weights(self) -> int:
        """Total number of elements of the arrays."""
        return self._num_weights

    @property
    def layout(self) -> tuple[WeightSlice, ...]:
        """Name, shape, dtype and position of every array in the flat vector."""
        return self._layout

    def get_weights(self) -> Float32Vector:
        """Return a fresh ``float32`` copy of all arrays, concatenated.

        Returns:
            A new 1-D ``float32`` array of length :attr:`num_weights`.
        """
        out = np.empty(self._num_weights, dtype=np.float32)
        with np.errstate(over="ignore"):
            for spec, arr in zip(self._layout, self._arrays, strict=True):
                np.copyto(out[spec.offset : spec.stop].reshape(spec.shape), arr, casting="unsafe")
        return out

    def set_weights(self, vec: npt.NDArray[Any]) -> None:
        """Write ``vec`` into the arrays in place (validated before any write).

        Args:
            vec: 1-D array of length :attr:`num_weights` in layout order.

        Raises:
            TypeError: ``vec`` is not numeric.
            ValueError: Wrong shape or length (names the expected length), or a
                non-finite value (names the first bad index).
        """
        src = as_weight_vector(vec, self._num_weights)
        for spec, arr in zip(self._layout, self._arrays, strict=True):
            np.copyto(arr, src[spec.offset : spec.stop].reshape(spec.shape), casting="unsafe")

    def __repr__(self) -> str:
        return f"NumpyModel(num_weights={self._num_weights}, arrays={len(self._arrays)})"


# --------------------------------------------------------------------------
# Functions.
# --------------------------------------------------------------------------


class FunctionModel:
    """Flat view of anything, through a pair of functions.

    ``get`` must return the whole weight vector (any 1-D real array of a
    fixed length); ``set`` receives a validated 1-D ``float32`` array of that
    length. The array passed to ``set`` may be the caller's own: copy it if
    you keep it.
    """

    def __init__(
        self,
        get: Callable[[], npt.NDArray[Any]],
        set: Callable[[Float32Vector], None],
        *,
        num_weights: int | None = None,
    ) -> None:
        """Wrap a ``get``/``set`` pair.

        Args:
            get: Returns the current weights as a 1-D real array.
            set: Takes a 1-D ``float32`` array and loads it into the model.
            num_weights: The vector length; when omitted, ``get`` is called
                once to learn it.

        Raises:
            TypeError: ``get`` or ``set`` is not callable.
            ValueError: ``num_weights`` is negative, or ``get()`` does not
                return a 1-D array.
        """
        if not callable(get) or not callable(set):
            raise TypeError("FunctionModel needs two callables: get() and set(vec)")
        self._get = get
        self._set = set
        if num_weights is None:
            first = np.asarray(get())
            if first.ndim != 1:
                raise ValueError(f"get() must return a 1-D array, got shape {first.shape}")
            num_weights = int(first.shape[0])
        if num_weights < 0:
            raise ValueError(f"num_weights must be >= 0, got {num_weights}")
        self._num_weights = num_weights

    @property
    def num_weights(self) -> int:
        """Length of the weight vector."""
        return self._num_weights

    def get_weights(self) -> Float32Vector:
        """Call ``get`` and return its result as a fresh ``float32`` array.

        Returns:
            A new 1-D ``float32`` array of length :attr:`num_weights`.

        Raises:
            ValueError: ``get()`` returned an array of the wrong shape/length.
            TypeError: ``get()`` returned something non-numeric.
        """
        arr = np.asarray(self._get())
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"get() returned dtype {arr.dtype}, expected real numbers")
        if arr.ndim != 1 or arr.shape[0] != self._num_weights:
            raise ValueError(
                f"get() must return a 1-D array of length {self._num_weights}, "
                f"got shape {arr.shape}"
            )
        with np.errstate(over="ignore"):
            return np.array(arr, dtype=np.float32, copy=True)

    def set_weights(self, vec: npt.NDArray[Any]) -> None:
        """Validate ``vec`` and pass it to ``set`` as 1-D ``float32``.

        Args:
            vec: 1-D array of length :attr:`num_weights`.

        Raises:
            TypeError: ``vec`` is not numeric.
            ValueError: Wrong shape or length (names the expected length), or a
                non-finite value (names the first bad index).
        """
        self._set(as_weight_vector(vec, self._num_weights))

    def __repr__(self) -> str:
        return f"FunctionModel(num_weights={self._num_weights})"


# --------------------------------------------------------------------------
# Dispatch.
# --------------------------------------------------------------------------


def as_flat_model(obj: object) -> FlatModel:
    """Return ``obj`` as a :class:`FlatModel`, wrapping it if needed.

    Args:
        obj: An object that already implements :class:`FlatModel`
            (returned unchanged), a ``torch.nn.Module`` (wrapped in
            :class:`TorchModel`), or a list/tuple/dict of numpy arrays
            (wrapped in :class:`NumpyModel`).

    Returns:
        A :class:`FlatModel`.

    Raises:
        TypeError: ``obj`` is none of the accepted kinds (the message lists
            them), or a list/dict holds something other than float arrays.
    """
    if isinstance(obj, FlatModel):
        return obj
    if _is_torch_module(obj):
        return TorchModel(cast("torch.nn.Module", obj))
    if isinstance(obj, Mapping) or (
        isinstance(obj, list | tuple) and all(isinstance(a, np.ndarray) for a in obj)
    ):
        return NumpyModel(obj)
    raise TypeError(
        f"cannot use a {type(obj).__name__} as a model: pass a FlatModel (an object with "
        "get_weights(), set_weights(vec) and num_weights), a torch.nn.Module, a list or "
        "dict of numpy float arrays, or FunctionModel(get, set) for anything else"
    )

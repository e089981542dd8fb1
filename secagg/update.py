"""The next global model from a round's aggregate, segment by segment.

The aggregate is a vector of ``b``-bit words: the clients' weighted,
quantised updates, then the total weight and the evaluation sums
(``protocol.encoding.RoundEncoding``). Decoding it whole would hold an int64
lift and a float64 mean of the model at once, and a float64 strategy step on
top: four to six copies of the model's size. :func:`next_model` decodes and
applies the strategy one segment at a time with the same arithmetic and the
same checks, so its working memory is the new float32 model plus a segment
(plus a stateful strategy's own state vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.dp import DPEncoding
from protocol.encoding import METRIC_SLOTS, EvalSums, RoundEncoding, WordArray, from_modular
from protocol.errors import ConfigError
from secagg.strategies import Strategy

SEGMENT_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class ModelUpdate:
    """What a completed round produced.

    Attributes:
        weights: the next global model (float32, new array).
        total_weight: the survivors' total weight (training examples); in a
            DP round, the count of survivors (every one weighs 1).
        metrics: the survivors' summed evaluation metrics (of the base
            model); None in a DP round, which collects none.
        state: the strategy's state after the round.
    """

    weights: npt.NDArray[np.float32]
    total_weight: int
    metrics: EvalSums | None
    state: bytes | None


def next_model(
    encoding: RoundEncoding,
    aggregate: WordArray,
    bit_width: int,
    base: npt.NDArray[np.float32],
    strategy: Strategy,
    state: bytes | None,
    *,
    segment: int = SEGMENT_ELEMENTS,
    in_place: bool = False,
) -> ModelUpdate:
    """Decode ``aggregate`` and apply ``strategy`` to ``base`` (read only), in segments.

    The result equals ``strategy.apply(base, encoding.decode(from_modular(
    aggregate, bit_width))[0], state)`` element for element.

    With ``in_place``, the new weights are written over ``aggregate``'s own
    buffer (its first ``4 * len(base)`` bytes), which saves a model's worth of
    memory: the aggregate is consumed and must not be read afterwards. This is
    safe because segments go upwards and each is read whole before its float32
    results (4 bytes each, never wider than a word) are written below it.

    Raises:
        ConfigError: the aggregate does not decode (``RoundEncoding.decode``'s
            checks: zero or negative total weight, inconsistent metrics, a
            value out of range), or its length is not the model's plus the
            weight and metric slots.
    """
    length = int(base.shape[0])
    slots = 1 + METRIC_SLOTS
    if aggregate.ndim != 1 or aggregate.shape[0] != length + slots:
        raise ConfigError(
            f"aggregate of {aggregate.shape} does not hold {length} weights and {slots} slots"
        )
    if segment < 1:
        raise ConfigError(f"segment must be >= 1, got {segment}")
    # The weight and metric slots first: their checks do not depend on the body.
    _, weight, metrics = encoding.decode(from_modular(aggregate[length:], bit_width))
    weight_slot = np.array([weight], np.int64)

    def mean_of(start: int, stop: int) -> npt.NDArray[np.float64]:
        body = from_modular(aggregate[start:stop], bit_width)
        # The fixed-point decoding with its range check, on this segment.
        return encoding.update.decode(np.concatenate([body, weight_slot]))[0]

    out, new_state = _apply(base, aggregate, strategy, state, segment, in_place, mean_of)
    return ModelUpdate(out, weight, metrics, new_state)


def next_model_dp(
    encoding: DPEncoding,
    aggregate: WordArray,
    bit_width: int,
    session_id: bytes,
    base: npt.NDArray[np.float32],
    strategy: Strategy,
    state: bytes | None,
    *,
    segment: int = SEGMENT_ELEMENTS,
    in_place: bool = False,
) -> ModelUpdate:
    """A DP round's next model: decode the noisy mean update, then ``strategy``, in segments.

    The inverse rotation mixes every coordinate, so the decoding
    (``DPEncoding.decode``: centred lift, ``/ gamma``, inverse rotation,
    ``/ count``) runs on the whole vector; the strategy step then goes
    segment by segment as in :func:`next_model`. With ``in_place`` the new
    float32 weights are written over ``aggregate``'s buffer (it holds
    ``d + 1`` words of at least 4 bytes, and is read whole first).

    Raises:
        ConfigError: the aggregate is not ``d + 1`` words, its count slot is
            below 1 (``DPEncoding.decode``), or ``base`` is not ``d`` long.
    """
    length = int(base.shape[0])
    if length != encoding.params.dim:
        raise ConfigError(
            f"the model has {length} weights, the DP parameters {encoding.params.dim}"
        )
    if aggregate.ndim != 1 or aggregate.shape[0] != encoding.vector_length:
        raise ConfigError(
            f"aggregate of {aggregate.shape} is not the {encoding.vector_length} words "
            "of a DP round"
        )
    if segment < 1:
        raise ConfigError(f"segment must be >= 1, got {segment}")
    mean, count = encoding.decode(from_modular(aggregate, bit_width), session_id)
    out, new_state = _apply(
        base, aggregate, strategy, state, segment, in_place, lambda a, b: mean[a:b]
    )
    return ModelUpdate(out, count, None, new_state)


def _apply(
    base: npt.NDArray[np.float32],
    aggregate: WordArray,
    strategy: Strategy,
    state: bytes | None,
    segment: int,
    in_place: bool,
    mean_of: Callable[[int, int], npt.NDArray[np.float64]],
) -> tuple[npt.NDArray[np.float32], bytes | None]:
    """``strategy`` over ``base`` segment by segment, the mean update of ``[start, stop)``
    from ``mean_of``; the new weights go over ``aggregate``'s buffer with ``in_place``."""
    length = int(base.shape[0])
    if in_place:
        if not (aggregate.flags.c_contiguous and aggregate.flags.writeable):
            raise ConfigError("in_place needs a writable, contiguous aggregate")
        out: npt.NDArray[np.float32] = aggregate.view(np.float32)[:length]
    else:
        out = np.empty(length, np.float32)
    arrays = strategy.start(state, length)
    for start in range(0, length, segment):
        stop = min(length, start + segment)
        out[start:stop] = strategy.step(
            base[start:stop], mean_of(start, stop), [a[start:stop] for a in arrays]
        )
    return out, strategy.finish(arrays)

"""The demo's machine learning: non-IID digits, a small MLP, FedAvg baselines.

Everything here is deterministic given its ``seed`` arguments, so the
secure run and the plaintext baseline can train *the same computation*
and differ only by what secure aggregation changes (quantisation and
dropouts):

* :func:`load_digits_split` — scikit-learn's 8x8 digits (1797 images, ships
  with the package, no download), a stratified held-out test set, and a
  Dirichlet(alpha) label split of the rest across clients.
* :func:`make_model` — the initial global model for a seed.
* :func:`train_local` / :func:`evaluate` — what a client does in a round;
  :class:`EvalResult` holds *sums* (correct, loss, count) so evaluation can
  itself be securely aggregated.
* :func:`select_clients` / :func:`local_seed` — per-round client selection
  and per-client training seeds; a secure run that uses them reproduces
  :func:`fedavg_plaintext` up to quantisation.
* :func:`fedavg_plaintext` / :func:`train_centralised` — the two baseline
  curves, and :func:`plot_accuracy` to draw all three.

Randomness here (``numpy.random.Generator``, ``torch.Generator``) is for
data partitioning, shuffling and initialisation only, never cryptography.

Round indices are 0-based throughout: round ``r`` produces
``accuracies[r]``, which a plot shows at x = ``r + 1``. Client ids are the
0-based positions in :attr:`DigitsSplit.clients`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from client_sdk.models import TorchModel

__all__ = [
    "DEMO",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "ClientData",
    "DemoSettings",
    "DigitsSplit",
    "EvalResult",
    "accuracy",
    "evaluate",
    "fedavg_plaintext",
    "load_digits_split",
    "local_seed",
    "make_model",
    "plot_accuracy",
    "select_clients",
    "torch_threads",
    "train_centralised",
    "train_local",
]

NUM_CLASSES = 10
NUM_FEATURES = 64
_PIXEL_MAX = 16.0  # digits pixels are integers in [0, 16]

# Domain tags so the seeds of different uses never coincide.
_TAG_SPLIT = 0x5B1
_TAG_SELECT = 0x5E1
_TAG_LOCAL = 0x10C
_TAG_CENTRAL = 0xCE7

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DemoSettings:
    """Hyperparameters of the demo, shared by the secure and the plaintext run.

    Chosen by measurement (seeds 0-5, 10 clients, alpha 0.5, all clients
    every round): plaintext FedAvg reaches 0.94-0.96 test accuracy after 20
    rounds and 0.91-0.95 after 10; centralised training reaches about 0.97.
    The largest per-coordinate client delta observed was 0.52, so the clip
    range ``delta_clip = 2.0`` never binds; with it, unbiased stochastic
    rounding of every delta at scale ``2**12`` or finer left the final
    accuracy unchanged (at ``2**8``: at most one test example, 0.22 points).

    Attributes:
        num_clients: Clients the data is split across.
        alpha: Dirichlet concentration of the label split.
        rounds: FedAvg rounds.
        clients_per_round: Clients selected per round.
        local_epochs: Local passes over each client's data per round.
        lr: Client SGD learning rate.
        batch_size: Local minibatch size.
        hidden: Hidden width of the MLP.
        server_lr: Server learning rate.
        seed: Experiment seed (split, initial model, selection, shuffling).
        delta_clip: A per-coordinate clip range for the update that does not bind.
    """

    num_clients: int = 10
    alpha: float = 0.5
    rounds: int = 20
    clients_per_round: int = 10
    local_epochs: int = 2
    lr: float = 0.2
    batch_size: int = 16
    hidden: int = 64
    server_lr: float = 1.0
    seed: int = 0
    delta_clip: float = 2.0


DEMO = DemoSettings()
"""The demo's default settings."""


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


def _read_only(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class ClientData:
    """One client's local training data.

    Attributes:
        x: Features, ``float32`` in ``[0, 1]``, shape ``(n, 64)`` (read-only).
        y: Labels, ``int64`` in ``0..9``, shape ``(n,)`` (read-only).
        indices: Row of each example in ``sklearn.datasets.load_digits()``.
    """

    x: FloatArray
    y: IntArray
    indices: IntArray

    @property
    def num_examples(self) -> int:
        """Number of local examples (the client's FedAvg weight)."""
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DigitsSplit:
    """Digits split across clients plus a held-out test set.

    Attributes:
        clients: Each client's training data, indexed by client id.
        x_test: Held-out test features, ``float32`` ``(m, 64)`` (read-only).
        y_test: Held-out test labels, ``int64`` ``(m,)`` (read-only).
        test_indices: Row of each test example in ``load_digits()``.
        class_counts: ``int64`` ``(num_clients, 10)``: examples of each class
            per client.
        alpha: Dirichlet concentration used for the split.
        seed: Seed the split was drawn from.
    """

    clients: tuple[ClientData, ...]
    x_test: FloatArray
    y_test: IntArray
    test_indices: IntArray
    class_counts: IntArray
    alpha: float
    seed: int

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.clients)

    @property
    def num_train(self) -> int:
        """Training examples across all clients."""
        return sum(c.num_examples for c in self.clients)

    def pooled(self) -> tuple[FloatArray, IntArray]:
        """All clients' training data concatenated (for centralised training).

        Returns:
            ``(x, y)`` in client order.
        """
        x = np.concatenate([c.x for c in self.clients])
        y = np.concatenate([c.y for c in self.clients])
        return x, y

    def test_shard(self, shard: int, num_shards: int) -> tuple[FloatArray, IntArray]:
        """One of ``num_shards`` disjoint, round-robin parts of the test set.

        Giving each client a shard lets the test metrics be securely
        aggregated: the sum of :func:`evaluate` over all shards equals the
        evaluation on the whole test set (exactly for ``correct`` and
        ``count``).

        Args:
            shard: Which shard, ``0 <= shard < num_shards``.
            num_shards: How many shards the test set is cut into.

        Returns:
            ``(x, y)`` of the shard.

        Raises:
            ValueError: ``shard`` is out of range or ``num_shards < 1``.
        """
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"need 0 <= shard < num_shards, got {shard} of {num_shards}")
        return self.x_test[shard::num_shards], self.y_test[shard::num_shards]


def _load_digits() -> tuple[FloatArray, IntArray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the digits demo needs scikit-learn; install the 'demo' extra: "
            "pip install 'secagg[demo,torch]'"
        ) from exc
    bunch: Any = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(_PIXEL_MAX)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def load_digits_split(
    num_clients: int,
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.25,
    *,
    min_client_samples: int = 10,
) -> DigitsSplit:
    """Load scikit-learn's digits and split them non-IID across clients.

    1. A stratified ``test_fraction`` of each class is held out as the test set.
    2. For each class, the client shares are drawn from
       ``Dirichlet(alpha * ones(num_clients))`` and the class's (shuffled)
       examples are cut accordingly. Small ``alpha`` gives each client few
       classes; large ``alpha`` approaches an IID split.
    3. Deterministic fix-up: while some client has fewer than
       ``min_client_samples`` examples, the client with the fewest (lowest id
       on ties) receives one example of the most abundant class of the
       client with the most.

    Every example is in exactly one client's data or in the test set. The
    result depends only on the arguments (numpy ``Generator`` seeded from
    ``seed``).

    Args:
        num_clients: Number of clients, at least 1.
        alpha: Dirichlet concentration, > 0.
        seed: Seed of the test split and the Dirichlet draws (>= 0).
        test_fraction: Fraction of each class held out, in ``(0, 1)``.
        min_client_samples: Fewest training examples any client ends up with.

    Returns:
        The :class:`DigitsSplit`.

    Raises:
        ValueError: An argument is out of range, or there are too few
            training examples to give every client ``min_client_samples``.
        ImportError: scikit-learn is not installed.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if min_client_samples < 0:
        raise ValueError(f"min_client_samples must be >= 0, got {min_client_samples}")

    x, y = _load_digits()
    rng = np.random.default_rng([_TAG_SPLIT, seed])

    test_parts: list[IntArray] = []
    train_by_class: list[IntArray] = []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c)).astype(np.int64)
        n_test = round(len(idx) * test_fraction)
        test_parts.append(idx[:n_test])
        train_by_class.append(idx[n_test:])
    test_idx = np.sort(np.concatenate(test_parts))
    num_train = sum(len(t) for t in train_by_class)
    if num_train < num_clients * min_client_samples:
        raise ValueError(
            f"{num_train} training examples cannot give {num_clients} clients "
            f"{min_client_samples} each"
        )

    # per_client[k][c]: client k's examples of class c
    per_client: list[list[list[int]]] = [
        [[] for _ in range(NUM_CLASSES)] for _ in range(num_clients)
    ]
    for c, idx in enumerate(train_by_class):
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for k, part in enumerate(np.split(idx, cuts)):
            per_client[k][c] = part.tolist()

    def size(k: int) -> int:
        return sum(len(cls) for cls in per_client[k])

    while True:
        sizes = [size(k) for k in range(num_clients)]
        receiver = min(range(num_clients), key=lambda k: (sizes[k], k))
        if sizes[receiver] >= min_client_samples:
            break
        donor = max(range(num_clients), key=lambda k: (sizes[k], -k))
        cls = max(range(NUM_CLASSES), key=lambda c: (len(per_client[donor][c]), -c))
        per_client[receiver][cls].append(per_client[donor][cls].pop())

    clients: list[ClientData] = []
    counts = np.zeros((num_clients, NUM_CLASSES), dtype=np.int64)
    for k in range(num_clients):
        idx = np.sort(np.array([i for cls in per_client[k] for i in cls], dtype=np.int64))
        counts[k] = [len(cls) for cls in per_client[k]]
        clients.append(
            ClientData(
                x=_read_only(x[idx]),
                y=_read_only(y[idx]),
                indices=_read_only(idx),
            )
        )
    return DigitsSplit(
        clients=tuple(clients),
        x_test=_read_only(x[test_idx]),
        y_test=_read_only(y[test_idx]),
        test_indices=_read_only(test_idx),
        class_counts=_read_only(counts),
        alpha=float(alpha),
        seed=seed,
    )


# --------------------------------------------------------------------------
# Model, training, evaluation.
# --------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)``, restoring the old value after.

    The demo's models are tiny: one thread is fastest, and many client
    processes on few cores must not oversubscribe them.

    Args:
        n: Number of intra-op threads inside the block.

    Yields:
        Nothing.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_model(seed: int, hidden: int = 64) -> nn.Module:
    """The demo's MLP, ``64 -> hidden -> ReLU -> 10``, initialised from ``seed``.

    The global RNG state is left as it was.

    Args:
        seed: Seed of the initial weights; equal seeds give equal weights.
        hidden: Width of the hidden layer.

    Returns:
        A ``float32`` ``nn.Sequential`` (4810 weights for ``hidden=64``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden, dtype=torch.float32),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES, dtype=torch.float32),
        )


def _tensors(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (n, features) matching y (n,), got {x.shape} and {y.shape}")
    # torch.tensor copies, so read-only inputs are fine.
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def train_local(
    model: nn.Module,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.1,
    seed: int,
) -> int:
    """Train ``model`` in place with plain minibatch SGD on cross-entropy.

    Deterministic given ``seed`` and the starting weights: the minibatch
    order comes from a ``torch.Generator`` seeded with ``seed`` (the global
    RNG is not used). A fresh optimizer without state is used, as a FedAvg
    client starts each round from the global model.

    Args:
        model: The model to train (left in training mode).
        x: Features ``(n, 64)``.
        y: Integer labels ``(n,)``.
        epochs: Passes over the data.
        batch_size: Minibatch size (the last batch may be smaller).
        lr: SGD learning rate.
        seed: Seed of the shuffling.

    Returns:
        ``n``, the number of local examples (the FedAvg weight), whatever
        ``epochs`` is.

    Raises:
        ValueError: ``epochs < 0``, ``batch_size < 1``, ``lr < 0`` or
            mismatched ``x``/``y``.
    """
    if epochs < 0 or batch_size < 1 or lr < 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr >= 0; got {epochs}, {batch_size}, {lr}"
        )
    xt, yt = _tensors(x, y)
    n = int(yt.shape[0])
    if n == 0:
        return 0
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xt[batch]), yt[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return n


@dataclass(frozen=True)
class EvalResult:
    """Evaluation as sums, so that results of many clients add up.

    Attributes:
        correct: Number of correct top-1 predictions.
        loss_sum: Sum of per-example cross-entropy losses.
        count: Number of examples.
    """

    correct: int
    loss_sum: float
    count: int

    @property
    def accuracy(self) -> float:
        """``correct / count`` (0.0 for no examples)."""
        return self.correct / self.count if self.count else 0.0

    @property
    def mean_loss(self) -> float:
        """``loss_sum / count`` (0.0 for no examples)."""
        return self.loss_sum / self.count if self.count else 0.0

    def __add__(self, other: EvalResult) -> EvalResult:
        return EvalResult(
            self.correct + other.correct, self.loss_sum + other.loss_sum, self.count + other.count
        )

    def to_vector(self) -> npt.NDArray[np.float64]:
        """``[correct, loss_sum, count]`` as ``float64``, ready to be aggregated.

        Returns:
            A length-3 ``float64`` array.
        """
        return np.array([self.correct, self.loss_sum, self.count], dtype=np.float64)

    @classmethod
    def from_vector(cls, vec: npt.ArrayLike) -> EvalResult:
        """Inverse of :meth:`to_vector`, for a (possibly summed) vector.

        The counts are rounded to the nearest integer, so small errors from a
        fixed-point aggregation do not matter.

        Args:
            vec: ``[correct, loss_sum, count]``.

        Returns:
            The :class:`EvalResult`.

        Raises:
            ValueError: ``vec`` does not have exactly 3 elements.
        """
        v = np.asarray(vec, dtype=np.float64).reshape(-1)
        if v.shape != (3,):
            raise ValueError(f"expected [correct, loss_sum, count], got shape {v.shape}")
        return cls(correct=round(v[0]), loss_sum=float(v[1]), count=round(v[2]))


def evaluate(model: nn.Module, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> EvalResult:
    """Count correct predictions and sum the cross-entropy on ``(x, y)``.

    The model is put in eval mode for the evaluation and its previous mode
    is restored afterwards.

    Args:
        model: The model to evaluate.
        x: Features ``(n, 64)``.
        y: Integer labels ``(n,)``.

    Returns:
        The sums as an :class:`EvalResult`.

    Raises:
        ValueError: ``x`` and ``y`` do not match.
    """
    xt, yt = _tensors(x, y)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(xt)
            loss_sum = float(F.cross_entropy(logits, yt, reduction="sum")) if len(yt) else 0.0
            correct = int((logits.argmax(dim=1) == yt).sum())
    finally:
        model.train(was_training)
    return EvalResult(correct=correct, loss_sum=loss_sum, count=int(yt.shape[0]))


def accuracy(model: nn.Module, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``.

    Args:
        model: The model to evaluate.
        x: Features ``(n, 64)``.
        y: Integer labels ``(n,)``.

    Returns:
        The fraction of correct predictions (0.0 for no examples).
    """
    return evaluate(model, x, y).accuracy


# --------------------------------------------------------------------------
# Federated and centralised baselines.
# --------------------------------------------------------------------------


def select_clients(
    num_clients: int, clients_per_round: int, seed: int, round_index: int
) -> list[int]:
    """The clients taking part in a round: uniform without replacement.

    Args:
        num_clients: Population size (client ids ``0..num_clients-1``).
        clients_per_round: How many to pick, ``1..num_clients``.
        seed: Experiment seed (>= 0).
        round_index: 0-based round (>= 0).

    Returns:
        Sorted client ids; all of them when ``clients_per_round == num_clients``.

    Raises:
        ValueError: ``clients_per_round`` is out of range.
    """
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(f"clients_per_round must be in 1..{num_clients}, got {clients_per_round}")
    if clients_per_round == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([_TAG_SELECT, seed, round_index])
    return sorted(int(k) for k in rng.choice(num_clients, size=clients_per_round, replace=False))


def local_seed(seed: int, round_index: int, client_id: int) -> int:
    """The shuffling seed of ``client_id``'s local training in a round.

    Args:
        seed: Experiment seed (>= 0).
        round_index: 0-based round (>= 0).
        client_id: 0-based client id (>= 0).

    Returns:
        A 63-bit seed for :func:`train_local`.
    """
    state = np.random.SeedSequence([_TAG_LOCAL, seed, round_index, client_id]).generate_state(
        1, dtype=np.uint64
    )
    return int(state[0]) >> 1


def fedavg_plaintext(
    split: DigitsSplit,
    rounds: int,
    clients_per_round: int,
    *,
    local_epochs: int,
    lr: float,
    seed: int,
    server_lr: float = 1.0,
    dropouts: Mapping[int, Collection[int]] | None = None,
    batch_size: int = 32,
    hidden: int = 64,
) -> list[float]:
    """Plaintext FedAvg: the reference the secure run must match.

    Round ``r``: the global model starts as ``make_model(seed, hidden)``;
    the clients ``select_clients(num_clients, clients_per_round, seed, r)``
    minus ``dropouts[r]`` each load the global weights (as ``float32``), run
    ``train_local(..., epochs=local_epochs, lr=lr, seed=local_seed(seed, r,
    k))`` and report ``delta_k = local_k - global`` with weight ``n_k`` (the
    number of local examples). The server applies ``global += server_lr *
    sum(n_k * delta_k) / sum(n_k)`` — the arithmetic the secure server does
    on the aggregate, here in ``float64`` and without quantisation or
    clipping. A round without any update leaves the model unchanged.

    Args:
        split: The data split.
        rounds: Number of rounds (>= 0).
        clients_per_round: Clients selected per round.
        local_epochs: Local passes over each client's data per round.
        lr: Client SGD learning rate.
        seed: Experiment seed: initial model, selection and local shuffling.
        server_lr: Server learning rate applied to the mean delta.
        dropouts: 0-based round -> client ids whose update does *not* reach
            the aggregate that round (with secure aggregation: clients that
            dropped out before their masked input was collected).
        batch_size: Local minibatch size.
        hidden: Hidden width of the MLP.

    Returns:
        Test accuracy of the global model after each round (``rounds`` values).

    Raises:
        ValueError: ``rounds < 0`` or ``clients_per_round`` out of range.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    dropouts = dropouts or {}
    history: list[float] = []
    with torch_threads(1):
        model = make_model(seed, hidden)
        flat = TorchModel(model)
        global_w = flat.get_weights().astype(np.float64)
        for r in range(rounds):
            selected = select_clients(split.num_clients, clients_per_round, seed, r)
            dropped = set(dropouts.get(r, ()))
            start = global_w.astype(np.float32)
            weighted_sum = np.zeros_like(global_w)
            total = 0
            for k in selected:
                if k in dropped:
                    continue
                client = split.clients[k]
                flat.set_weights(start)
                n = train_local(
                    model,
                    client.x,
                    client.y,
                    epochs=local_epochs,
                    batch_size=batch_size,
                    lr=lr,
                    seed=local_seed(seed, r, k),
                )
                weighted_sum += n * (flat.get_weights().astype(np.float64) - start)
                total += n
            if total > 0:
                global_w = global_w + server_lr * (weighted_sum / total)
            flat.set_weights(global_w)
            history.append(accuracy(model, split.x_test, split.y_test))
    return history


def train_centralised(
    split: DigitsSplit,
    epochs: int,
    *,
    lr: float,
    seed: int,
    batch_size: int = 32,
    hidden: int = 64,
    eval_every: int = 1,
) -> list[float]:
    """Centralised baseline: SGD on all clients' data pooled.

    One epoch is one pass over all training data, as is one FedAvg round in
    which every client runs one local epoch. To put the curves on one
    x-axis, evaluate once per ``local_epochs`` epochs:
    ``train_centralised(split, rounds * local_epochs, eval_every=local_epochs)``
    returns one value per round. Starts from the same ``make_model(seed)``
    as :func:`fedavg_plaintext`.

    Args:
        split: The data split (only the pooled training data and test set are used).
        epochs: Number of epochs (>= 0).
        lr: SGD learning rate.
        seed: Initial model and shuffling seed.
        batch_size: Minibatch size.
        hidden: Hidden width of the MLP.
        eval_every: Evaluate after every ``eval_every`` epochs (>= 1).

    Returns:
        Test accuracy after epochs ``eval_every``, ``2 * eval_every``, ...
        (``epochs // eval_every`` values).

    Raises:
        ValueError: ``epochs < 0`` or ``eval_every < 1``.
    """
    if epochs < 0 or eval_every < 1:
        raise ValueError(f"need epochs >= 0 and eval_every >= 1, got {epochs}, {eval_every}")
    x, y = split.pooled()
    history: list[float] = []
    with torch_threads(1):
        model = make_model(seed, hidden)
        for epoch in range(epochs):
            state = np.random.SeedSequence([_TAG_CENTRAL, seed, epoch]).generate_state(
                1, dtype=np.uint64
            )
            epoch_seed = int(state[0]) >> 1
            train_local(model, x, y, epochs=1, batch_size=batch_size, lr=lr, seed=epoch_seed)
            if (epoch + 1) % eval_every == 0:
                history.append(accuracy(model, split.x_test, split.y_test))
    return history


# --------------------------------------------------------------------------
# Plot.
# --------------------------------------------------------------------------


def plot_accuracy(
    path: str | Path,
    curves: Mapping[str, list[float]],
    title: str,
    *,
    xlabel: str = "round",
    chance: float | None = 1.0 / NUM_CLASSES,
    ylim: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Draw accuracy-per-round curves to a PNG (matplotlib Agg, no display).

    Each curve's value ``i`` is drawn at x = ``i + 1`` (round or epoch) and
    its label shows the final value. Curves get distinct markers and line
    styles, so identical curves (secure vs plaintext FedAvg) stay visible
    on top of each other.

    Args:
        path: Where to write the PNG; missing parent directories are created.
        curves: Label -> accuracy per round, in ``[0, 1]``.
        title: Plot title.
        xlabel: Label of the x-axis.
        chance: Draw a dashed line at this accuracy (``None`` for none).
        ylim: Range of the y-axis.

    Returns:
        The path written.

    Raises:
        ValueError: ``curves`` is empty.
        ImportError: matplotlib is not installed.
    """
    if not curves:
        raise ValueError("plot_accuracy needs at least one curve")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "plotting needs matplotlib; install the 'demo' extra: pip install 'secagg[demo]'"
        ) from exc

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Figure + FigureCanvasAgg directly: no pyplot, no global backend switch.
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = ("o", "x", "s", "^", "d", "v")
    styles = ("-", "--", "-.", ":")
    longest = 0
    for i, (label, values) in enumerate(curves.items()):
        xs = list(range(1, len(values) + 1))
        longest = max(longest, len(values))
        final = f" (final {100 * values[-1]:.1f}%)" if values else ""
        ax.plot(
            xs,
            values,
            marker=markers[i % len(markers)],
            linestyle=styles[i % len(styles)],
            markersize=4,
            linewidth=1.5,
            label=f"{label}{final}",
        )
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(*ylim)
    ax.set_xlim(0.5, max(longest, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out

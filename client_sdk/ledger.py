"""The contribution ledger: which (server, task, base version) this client sent a masked input for.

Two sums over the same contribution let a server subtract them (spec §4.7,
differencing): if one round aborts after the server received a client's
masked input, and a second round on the same base model is run with that
client and otherwise the same cohort minus one client, the difference of
the two sums is that one client's update. A client that contributes at
most once per base version denies the server the second sum.

It also keeps, per task authority and roster scope, the highest roster
serial the client accepted, so that a restarted client still refuses an
older roster (a server replaying one from before a key was replaced;
``specs/authority-v1.md``).

And it is the client's own privacy ledger (``specs/dp-v1.md`` §11): for
every DP round whose masked input it sent, the round's parameters as the
client accepted them. The client prices each round itself from those
parameters (Rényi DP, composed over its own rounds of the task) and
refuses a round that would take it over its budget: the server's
accounting is not trusted for the client's privacy.

The ledger is recorded *before* the masked input is sent (a crash between
the two costs a round, never a second contribution) and persisted
atomically (write to a temporary file, fsync, rename) with mode 0600
beside the identity file: ``<identity>.ledger``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from protocol.dp import DPParams
from protocol.dp.accounting import composed_epsilon
from protocol.errors import ConfigError

__all__ = ["ContributionLedger", "LedgerError", "ledger_path_for"]

_FORMAT = "secagg-ledger-v1"


class LedgerError(Exception):
    """The ledger file is unreadable or malformed; the message names the file."""


def ledger_path_for(identity_path: str | Path) -> Path:
    """``<identity>.ledger``: the ledger lives beside the identity file."""
    p = Path(identity_path)
    return p.with_name(p.name + ".ledger")


Entry = tuple[str, int, int]
Spend = tuple[str, int, int, str]
"""A DP round the client took part in: (server, task id, round id, canonical DPParams JSON)."""


class ContributionLedger:
    """A persistent set of ``(server, task id, base version)`` contributions.

    Args:
        path: the ledger file, or None for a ledger kept in memory only
            (it then protects the client only for the life of the process).

    Raises:
        LedgerError: the file exists but is not a ledger.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: set[Entry] = set()
        self._roster_serials: dict[str, int] = {}
        self._spends: set[Spend] = set()
        if self.path is not None and self.path.exists():
            self._entries, self._roster_serials, self._spends = self._load(self.path)

    @staticmethod
    def _load(path: Path) -> tuple[set[Entry], dict[str, int], set[Spend]]:
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != _FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}")
            entries: set[Entry] = set()
            for server, task, base in raw["entries"]:
                if not (isinstance(server, str) and type(task) is int and type(base) is int):
                    raise ValueError(f"bad entry {[server, task, base]!r}")
                entries.add((server, task, base))
            serials = raw.get("roster_serials", {})  # absent in older ledgers
            if not isinstance(serials, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in serials.items()
            ):
                raise ValueError("bad roster_serials")
            spends: set[Spend] = set()
            for item in raw.get("privacy", []):  # absent in older ledgers
                server, task, round_id, params = item
                if not (
                    isinstance(server, str)
                    and type(task) is int
                    and type(round_id) is int
                    and isinstance(params, str)
                ):
                    raise ValueError(f"bad privacy entry {item!r}")
                DPParams.from_json(json.loads(params))  # refuse what cannot be priced
                spends.add((server, task, round_id, params))
            return entries, dict(serials), spends
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise LedgerError(f"{path} is not a secagg contribution ledger: {exc}") from exc

    @staticmethod
    def _key(server: str, task_id: int, base_version: int) -> Entry:
        return (server.rstrip("/"), int(task_id), int(base_version))

    def contains(self, server: str, task_id: int, base_version: int) -> bool:
        """True if a masked input was recorded for this (server, task, base version)."""
        with self._lock:
            return self._key(server, task_id, base_version) in self._entries

    def record(self, server: str, task_id: int, base_version: int) -> None:
        """Add an entry and persist it (atomically) before returning."""
        with self._lock:
            self._entries.add(self._key(server, task_id, base_version))
            if self.path is not None:
                self._save(self.path)

    @staticmethod
    def _roster_key(authority_key: bytes, scope: str) -> str:
        return f"{authority_key.hex()}/{scope}"

    def roster_floor(self, authority_key: bytes, scope: str) -> int:
        """The highest roster serial accepted for this authority and scope (0: none)."""
        with self._lock:
            return self._roster_serials.get(self._roster_key(authority_key, scope), 0)

    def raise_roster_floor(self, authority_key: bytes, scope: str, serial: int) -> None:
        """Remember ``serial`` as accepted (persisted before returning); never lowers it."""
        key = self._roster_key(authority_key, scope)
        with self._lock:
            if serial <= self._roster_serials.get(key, 0):
                return
            self._roster_serials[key] = int(serial)
            if self.path is not None:
                self._save(self.path)

    def record_spend(self, server: str, task_id: int, round_id: int, params: DPParams) -> None:
        """Add a DP round this client is about to send a masked input for; persisted first."""
        canonical = json.dumps(params.to_json(), sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._spends.add((server.rstrip("/"), int(task_id), int(round_id), canonical))
            if self.path is not None:
                self._save(self.path)

    def spends(self, server: str, task_id: int) -> list[DPParams]:
        """The parameters of every DP round of this (server, task) the client took part in."""
        key = (server.rstrip("/"), int(task_id))
        with self._lock:
            chosen = sorted(s for s in self._spends if (s[0], s[1]) == key)
        return [DPParams.from_json(json.loads(s[3])) for s in chosen]

    def epsilon_spent(
        self,
        server: str,
        task_id: int,
        delta: float,
        extra: DPParams | None = None,
        epsilon_cap: float | None = None,
    ) -> float:
        """The client's own epsilon at ``delta`` over its DP rounds of the task (+ ``extra``).

        Each round's Rényi-DP curve is computed from the parameters the client
        accepted; curves add up under composition; the sum is converted to
        (epsilon, delta) (``protocol.dp.accounting.composed_epsilon``). 0.0 if none.
        """
        rounds = self.spends(server, task_id) + ([extra] if extra is not None else [])
        return composed_epsilon(rounds, delta, epsilon_cap)

    def entries(self) -> frozenset[Entry]:
        with self._lock:
            return frozenset(self._entries)

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(
            {
                "format": _FORMAT,
                "entries": sorted(list(e) for e in self._entries),
                "roster_serials": dict(sorted(self._roster_serials.items())),
                "privacy": sorted(list(e) for e in self._spends),
            },
            indent=1,
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # also if a stale .tmp had other bits
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

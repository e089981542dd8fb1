"""Client policy: which session configurations a client accepts (``specs/secagg-v1.md`` §4.7).

A configuration that :class:`~protocol.config.SessionConfig` accepts is
well formed; it is not necessarily safe for *this* client. Whoever builds
the configuration (the orchestrator, possibly the adversary) chooses the
mode, the participants, the graph and the threshold. The rules below are
what a client checks before it produces anything, with the same code the
orchestrator runs when it derives its parameters and when a task is
created, so an honest server never offers a session a default client
refuses.

Rules (each raises :class:`PolicyError` naming it):

* ``semi_honest_refused``: semi-honest sessions relay unsigned keys, so a
  server that substitutes keys recovers inputs (§4.1); refused unless
  ``allow_semi_honest``.
* ``min_participants``: ``n >= min_participants`` distinct participants,
  and the same floor on the survivor set of the unmasking request
  (:func:`check_survivors`, checked before any share leaves).
* ``min_threshold``: ``t >= min_threshold`` (2 by default: ``t = 1`` hands
  every secret to any single neighbour).
* ``collusion_bound``: with ``c_max = assumed_colluders(...)``, active mode
  needs ``2t - k > c_max`` (condition (A2) of §4.2) and semi-honest mode
  needs ``t > c_max`` (condition (S1) of §4.1).
* ``uncertified_identities`` (applied by ``ClientSession``, which holds the
  pinned authority): an active session is refused unless a task authority
  is pinned to certify every participant's identity key (§4.6); refused
  unless ``require_certified_identities`` is turned off.

Pure functions, no I/O: the SDK logs :data:`SEMI_HONEST_WARNING` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.config import GraphKind, Mode, SessionConfig
from protocol.errors import ConfigError, ParameterError
from protocol.params import DEFAULT_SECURITY_BITS, MAX_BITS, corrupt_neighbour_bound

__all__ = [
    "DEFAULT_MIN_PARTICIPANTS",
    "SEMI_HONEST_WARNING",
    "UNCERTIFIED_WARNING",
    "PolicyError",
    "SessionPolicy",
    "assumed_colluders",
    "check_parameters",
    "check_session",
    "check_survivors",
    "colluder_bound",
    "smallest_threshold",
]

DEFAULT_MIN_PARTICIPANTS = 5
"""Default floor on distinct participants (and survivors) whose inputs enter a sum."""

UNCERTIFIED_WARNING = (
    "active sessions accepted without a pinned task authority by explicit opt-in: the "
    "identity keys in the configuration then come from the server, which can substitute "
    "its own for every peer and recover this client's input"
)
"""What a client gives up when it joins active sessions without certified identities."""

SEMI_HONEST_WARNING = (
    "semi-honest mode accepted by explicit opt-in: public keys are not signed, so a "
    "server that substitutes keys can recover this client's input; use it only with a "
    "server trusted to follow the protocol"
)
"""What a client gives up when it opts into semi-honest sessions (logged by the SDK)."""


class PolicyError(ConfigError):
    """The configuration is well formed but this client's policy refuses it.

    Attributes:
        rule: the name of the violated rule (see the module docstring).
    """

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"policy {rule}: {detail}")
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True)
class SessionPolicy:
    """What a client accepts; the defaults are the safe ones (§4.7).

    Attributes:
        allow_semi_honest: accept semi-honest sessions (the server can then
            substitute keys and recover inputs). Off by default.
        min_participants: minimum number of distinct participants whose
            inputs enter the sum, checked on the configuration (``n``) and on
            the survivor set of the unmasking request. A deployment decision:
            with ``c`` corrupt survivors the sum contains at least
            ``min_participants - c`` honest inputs.
        assumed_corrupt_rate: ``gamma``, the largest fraction of participants
            assumed to collude with the server (the task default is 0.05).
        min_assumed_colluders: the client assumes at least this many
            colluders, whatever ``gamma * n`` gives.
        min_threshold: smallest Shamir threshold accepted (``t = 1`` refused).
        security_bits: ``sigma`` of the Harary-graph colluder bound (§10).
        require_certified_identities: refuse an active session unless a pinned
            task authority certifies every participant (``ClientSession``'s
            ``authority``/``roster``, §4.6). On by default.
    """

    allow_semi_honest: bool = False
    min_participants: int = DEFAULT_MIN_PARTICIPANTS
    assumed_corrupt_rate: float = 0.05
    min_assumed_colluders: int = 1
    min_threshold: int = 2
    security_bits: int = DEFAULT_SECURITY_BITS
    require_certified_identities: bool = True

    def __post_init__(self) -> None:
        for name, low in (("min_participants", 2), ("min_assumed_colluders", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        t = self.min_threshold
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigError(f"min_threshold must be an integer >= 1, got {t!r}")
        bits = self.security_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ConfigError(f"security_bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
        rate = self.assumed_corrupt_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise ConfigError(f"assumed_corrupt_rate must be in [0, 1), got {rate!r}")
        for flag in ("allow_semi_honest", "require_certified_identities"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be a bool")

    @classmethod
    def protocol_only(cls) -> SessionPolicy:
        """For conformance testing only: accept whatever ``SessionConfig`` accepts.

        Test vectors, the reference simulator and protocol-level tests run
        sessions (2 clients, ``t = 1``, semi-honest) that no deployed client
        should join; they pass this policy explicitly. Never use it in a client.
        """
        return cls(
            allow_semi_honest=True,
            min_participants=2,
            assumed_corrupt_rate=0.0,
            min_assumed_colluders=0,
            min_threshold=1,
            require_certified_identities=False,
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """What this policy gives up compared with the defaults (for the SDK to log)."""
        out = (SEMI_HONEST_WARNING,) if self.allow_semi_honest else ()
        return out + (() if self.require_certified_identities else (UNCERTIFIED_WARNING,))


def colluder_bound(
    num_participants: int, graph: GraphKind, degree: int, policy: SessionPolicy
) -> int:
    """``c_max``: how many of one client's neighbours the client assumes corrupt.

    Complete graph (``k = n - 1``): ``max(min_assumed_colluders, ceil(gamma * n))``.
    Harary graph: ``max(min_assumed_colluders, t1)`` with ``t1`` the
    hypergeometric bound of §10 (``protocol.params.corrupt_neighbour_bound``,
    ``sigma = security_bits``) before its semi-malicious adjustment. Both are
    capped at ``k``, the number of neighbours.

    Raises:
        ParameterError: ``n`` or ``degree`` out of range.
    """
    n, k = num_participants, degree
    if graph is GraphKind.COMPLETE:
        # round(): 0.07 * 100 is 7.000000000000001 in doubles; gamma * n is a count.
        assumed = math.ceil(round(policy.assumed_corrupt_rate * n, 9))
    else:
        assumed = corrupt_neighbour_bound(
            n, k, policy.assumed_corrupt_rate, security_bits=policy.security_bits
        )
    return min(max(policy.min_assumed_colluders, assumed), k)


def assumed_colluders(config: SessionConfig, policy: SessionPolicy) -> int:
    """``c_max`` for an offered configuration (see :func:`colluder_bound`)."""
    return colluder_bound(config.num_participants, config.graph, config.degree, policy)


def smallest_threshold(
    num_participants: int, mode: Mode, graph: GraphKind, degree: int, policy: SessionPolicy
) -> int:
    """The smallest ``t`` that :func:`check_parameters` accepts (may exceed ``degree``).

    Active: ``t = floor((k + c_max) / 2) + 1`` (smallest with ``2t - k > c_max``);
    semi-honest: ``t = c_max + 1``; never below ``min_threshold``.
    """
    c_max = colluder_bound(num_participants, graph, degree, policy)
    t = (degree + c_max) // 2 + 1 if mode is Mode.ACTIVE else c_max + 1
    return max(t, policy.min_threshold)


def check_parameters(
    num_participants: int,
    mode: Mode,
    graph: GraphKind,
    degree: int,
    threshold: int,
    policy: SessionPolicy,
) -> None:
    """Apply the policy to session parameters (before a configuration exists).

    Raises:
        PolicyError: a rule refuses them; ``rule`` names it.
    """
    n, k, t = num_participants, degree, threshold
    if mode is Mode.SEMI_HONEST and not policy.allow_semi_honest:
        raise PolicyError(
            "semi_honest_refused",
            "semi-honest sessions relay unsigned keys (a server that substitutes keys "
            "recovers inputs); use mode active, or opt in with allow_semi_honest",
        )
    if n < policy.min_participants:
        raise PolicyError(
            "min_participants",
            f"{n} participants < min_participants {policy.min_participants}",
        )
    if t < policy.min_threshold:
        raise PolicyError("min_threshold", f"threshold {t} < min_threshold {policy.min_threshold}")
    try:
        c_max = colluder_bound(n, graph, k, policy)
    except ParameterError as exc:
        raise PolicyError("collusion_bound", f"cannot bound the colluders: {exc}") from exc
    # §4.7 collusion bound
    if mode is Mode.ACTIVE and 2 * t - k <= c_max:
        raise PolicyError(
            "collusion_bound",
            f"active mode needs 2t - k > c_max: 2*{t} - {k} = {2 * t - k} <= {c_max} "
            f"assumed colluders ({graph.value} graph, n={n}, "
            f"corrupt rate {policy.assumed_corrupt_rate})",
        )
    if mode is Mode.SEMI_HONEST and t <= c_max:
        raise PolicyError(
            "collusion_bound",
            f"semi-honest mode needs t > c_max: {t} <= {c_max} assumed colluders "
            f"({graph.value} graph, n={n}, corrupt rate {policy.assumed_corrupt_rate})",
        )


def check_session(config: SessionConfig, policy: SessionPolicy) -> None:
    """Apply the policy to an offered configuration (``ClientSession`` does, at construction).

    Raises:
        PolicyError: a rule refuses it; ``rule`` names it.
    """
    check_parameters(
        config.num_participants, config.mode, config.graph, config.degree, config.threshold, policy
    )


def check_survivors(num_survivors: int, policy: SessionPolicy) -> None:
    """The survivor floor: ``|survivors| >= min_participants`` in the unmasking request.

    Raises:
        PolicyError: rule ``min_participants``.
    """
    if num_survivors < policy.min_participants:
        raise PolicyError(
            "min_participants",
            f"{num_survivors} survivors < min_participants {policy.min_participants}",
        )

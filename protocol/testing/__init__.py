"""Test support, apart from the production surface of :mod:`protocol`.

* ``protocol.testing.vectors``: the vector replay checker; ``check_vector``
  checks one vector file (``specs/vectors/*.json``) against this
  implementation, and other implementations can import it on its own.
* :func:`make_config` (configurations whose identity keys come from a
  public seed), :func:`simulate` (the in-memory reference driver) and
  :class:`DeterministicRandom` (randomness from a seed): for tests, vectors,
  benchmarks and experiments only. A deployment draws its randomness from
  :class:`protocol.SystemRandom` and its identity keys from enrolment.
"""

from protocol.crypto import DeterministicRandom
from protocol.simulate import SimulationResult, identity_secret, make_config, simulate

__all__ = ["DeterministicRandom", "SimulationResult", "identity_secret", "make_config", "simulate"]

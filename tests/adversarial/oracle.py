"""What a malicious server (plus colluding clients) can reconstruct of one client's input.

The attacker's tests do not stop at "an exception was raised": they hand
everything the adversary collected to :func:`reconstruct`, which tries to
rebuild the target's two secrets (self-mask seed ``b_u`` and mask secret key
``s_sk_u``) from any ``t`` shares it holds, checks each against the public
value it must match (the commitment ``com_u``, the advertised ``s_pk_u``),
and, when it has both and the target's masked vector, removes every mask and
returns the target's exact input. A test asserts ``input is None`` where the
protocol must protect the target, and ``== x_u`` where it demonstrates that
the bound it checks is tight (so the oracle itself can fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import numpy.typing as npt

from protocol import SessionConfig
from protocol._keys import pairwise_mask_key, self_mask_commitment, self_mask_key
from protocol.crypto import MaskExpander, X25519Secret
from protocol.encoding import to_modular, unpack_bits, word_dtype
from protocol.errors import CryptoError, RemoteProtocolError
from protocol.messages import UnmaskResponse, decode_message
from protocol.shamir import decode_share, reconstruct_secrets


@dataclass
class AttackerView:
    """Everything the adversary holds about one target client ``target``.

    Attributes:
        config: the session configuration.
        target: the client under attack.
        self_mask_shares: holder -> share of the target's self-mask seed.
        mask_key_shares: holder -> share of the target's mask secret key.
        commitment: the target's ``self_mask_commitment`` (from its ShareKeys).
        mask_public_key: the target's advertised mask public key.
        masked: the target's masked vector (packed bytes), if it sent one.
        peer_mask_keys: for each peer the target masked with, the mask public
            key the target was shown (the server may have substituted it).
    """

    config: SessionConfig
    target: int
    self_mask_shares: dict[int, int] = field(default_factory=dict)
    mask_key_shares: dict[int, int] = field(default_factory=dict)
    commitment: bytes = b""
    mask_public_key: bytes = b""
    masked: bytes | None = None
    peer_mask_keys: dict[int, bytes] = field(default_factory=dict)
    # Secrets the adversary learnt directly (e.g. its own substituted keys).
    known_peer_secrets: dict[int, X25519Secret] = field(default_factory=dict)

    def add_unmask_response(self, data: bytes) -> None:
        """Collect the target's shares from one ``UnmaskResponse`` a holder sent."""
        msg = decode_message(data)
        assert isinstance(msg, UnmaskResponse)
        for owner, share in msg.self_mask_shares:
            if owner == self.target:
                self.self_mask_shares[msg.sender] = decode_share(share)
        for owner, share in msg.mask_key_shares:
            if owner == self.target:
                self.mask_key_shares[msg.sender] = decode_share(share)

    def add_colluder_state(self, holder: int, self_share: bytes, key_share: bytes) -> None:
        """A colluding holder hands over both shares it holds of the target."""
        self.self_mask_shares[holder] = decode_share(self_share)
        self.mask_key_shares[holder] = decode_share(key_share)


@dataclass(frozen=True)
class Reconstruction:
    """What the adversary could rebuild; ``None`` where it could not."""

    self_mask_seed: bytes | None
    mask_secret: bytes | None
    input: npt.NDArray[np.uint64] | None


def _interpolate(shares: dict[int, int], t: int, check: object) -> bytes | None:
    """A secret from some ``t`` of ``shares`` that passes ``check`` (a few subsets tried)."""
    holders = sorted(shares)
    if len(holders) < t:
        return None
    # Honest shares all lie on one polynomial; a few sliding windows suffice to
    # step over a lying holder in the tests that include one.
    for start in islice(range(len(holders) - t + 1), 8):
        subset = holders[start : start + t]
        try:
            (secret,) = reconstruct_secrets(subset, [[shares[h] for h in subset]])
        except RemoteProtocolError:
            continue
        if check(secret):  # type: ignore[operator]
            return secret
    return None


def reconstruct(view: AttackerView) -> Reconstruction:
    """Try to rebuild the target's secrets and, with both, its exact input (mod 2^b)."""
    cfg, u = view.config, view.target
    sid = cfg.session_id
    t = cfg.threshold
    seed = _interpolate(
        view.self_mask_shares,
        t,
        lambda s: self_mask_commitment(s, sid, u) == view.commitment,
    )
    mask_secret = _interpolate(
        view.mask_key_shares,
        t,
        lambda s: X25519Secret(s).public == view.mask_public_key,
    )
    if seed is None or mask_secret is None or view.masked is None:
        return Reconstruction(seed, mask_secret, None)
    y = unpack_bits(view.masked, cfg.bit_width, cfg.vector_length).copy()
    plus: list[bytes] = []
    minus = [self_mask_key(seed, sid, u)]
    secret = X25519Secret(mask_secret)
    for v, public in sorted(view.peer_mask_keys.items()):
        try:
            key = pairwise_mask_key(secret, public, sid, u, v)
        except CryptoError:
            return Reconstruction(seed, mask_secret, None)
        # y_u holds +PRG(s_uv) for v > u and -PRG(s_uv) for v < u: undo it.
        (minus if u < v else plus).append(key)
    MaskExpander(word_dtype(cfg.bit_width)).apply(y, add=plus, subtract=minus)
    if cfg.bit_width < 8 * y.itemsize:
        np.bitwise_and(y, y.dtype.type(cfg.modulus_mask), out=y)
    return Reconstruction(seed, mask_secret, y.astype(np.uint64))


def as_modular(x: npt.NDArray[np.integer], bit_width: int) -> npt.NDArray[np.uint64]:
    """A plaintext input as the oracle returns it, for ``==`` comparison."""
    return to_modular(np.asarray(x), bit_width).astype(np.uint64)

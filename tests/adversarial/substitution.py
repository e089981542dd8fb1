"""A malicious server that substitutes its own keys for the target's peers.

Semi-honest mode: the server relays unsigned X25519 keys, so it shows the
target its own keys for every peer. Active mode: the server writes its own
Ed25519 identity keys for the peers into the session configuration, then
signs the substituted X25519 keys with them. Either way the target encrypts
every share of both its secrets to the server, and masks its input with
pairwise keys the server can compute: the oracle rebuilds the exact input
unless the target refuses before sending its shares.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from protocol import ClientSession, Mode, SessionConfig, decode_message
from protocol._keys import advertise_payload, share_aad, share_encryption_key, u32
from protocol.crypto import (
    DeterministicRandom,
    aead_open,
    aead_seal,
    ed25519_public_key,
    ed25519_sign,
    x25519_generate,
)
from protocol.messages import (
    AdvertisedKeys,
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    ShareBundle,
    ShareKeys,
)
from protocol.shamir import SHARE_SIZE, decode_share, encode_share
from tests.adversarial.oracle import AttackerView, Reconstruction, reconstruct

SERVER_RNG_SEED = b"malicious-server"


def server_identity(v: int) -> bytes:
    """The Ed25519 secret the malicious server uses to impersonate peer ``v``."""
    return DeterministicRandom(SERVER_RNG_SEED + b"/id/" + u32(v)).random_bytes(32)


def forge_config(config: SessionConfig, target: int, target_public: bytes) -> SessionConfig:
    """Active mode: the same session, with the server's identity keys for every peer."""
    keys = tuple(
        target_public if v == target else ed25519_public_key(server_identity(v))
        for v in config.participants
    )
    return dataclasses.replace(config, identity_keys=keys)


def substitution_attack(session: ClientSession) -> Reconstruction:
    """Play the whole server side against one target ``session`` (already constructed).

    Returns what the server could rebuild of the target's input.
    """
    config, u = session.config, session.client_id
    sid = config.session_id
    rng = DeterministicRandom(SERVER_RNG_SEED)
    advert = decode_message(session.start())
    assert isinstance(advert, AdvertiseKeys)
    peers = sorted(config.neighbour_graph.neighbours(u))
    fake_cipher = {v: x25519_generate(rng) for v in peers}
    fake_mask = {v: x25519_generate(rng) for v in peers}
    entries = [advert.keys]
    for v in peers:
        signature = b""
        if config.mode is Mode.ACTIVE:
            payload = advertise_payload(sid, v, fake_cipher[v].public, fake_mask[v].public)
            signature = ed25519_sign(server_identity(v), payload)
        entries.append(AdvertisedKeys(v, fake_cipher[v].public, fake_mask[v].public, signature))
    entries.sort(key=lambda e: e.sender)
    reply = session.receive(KeyDirectory(sid, u, tuple(entries)).encode())
    share_keys = decode_message(reply or b"")
    assert isinstance(share_keys, ShareKeys)
    view = AttackerView(
        config=config,
        target=u,
        commitment=share_keys.self_mask_commitment,
        mask_public_key=advert.keys.mask_public_key,
        peer_mask_keys={v: fake_mask[v].public for v in peers},
    )
    # Every share ciphertext of the target opens under the server's substituted keys.
    for v, ciphertext in share_keys.ciphertexts:
        key = share_encryption_key(fake_cipher[v].agree(advert.keys.cipher_public_key), sid, u, v)
        plaintext = aead_open(key, ciphertext, share_aad(sid, u, v))
        view.mask_key_shares[v] = decode_share(plaintext[8 : 8 + SHARE_SIZE])
        view.self_mask_shares[v] = decode_share(plaintext[8 + SHARE_SIZE :])
    # Round 1 -> 2: the server forges well-formed shares "from" each peer.
    bundle = []
    for v in peers:
        key = share_encryption_key(fake_cipher[v].agree(advert.keys.cipher_public_key), sid, v, u)
        junk = encode_share(1) + encode_share(1)
        bundle.append((v, aead_seal(key, u32(v) + u32(u) + junk, share_aad(sid, v, u))))
    masked = decode_message(session.receive(ShareBundle(sid, u, tuple(bundle)).encode()) or b"")
    assert isinstance(masked, MaskedInput)
    view.masked = bytes(masked.masked)
    return reconstruct(view)


def target_session(
    config: SessionConfig, target: int, x: np.ndarray, **kwargs: object
) -> ClientSession:
    """The honest target, with a fixed identity key in active mode."""
    identity = DeterministicRandom(b"target-identity").random_bytes(32)
    if config.mode is Mode.ACTIVE:
        config = forge_config(config, target, ed25519_public_key(identity))
    return ClientSession(
        config,
        target,
        x,
        rng=DeterministicRandom(b"target"),
        identity_key=identity if config.mode is Mode.ACTIVE else None,
        **kwargs,  # type: ignore[arg-type]
    )

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


class SubstitutingServer:
    """The server side of the attack against one target, message by message.

    Feed it what the target sends (:meth:`on_message`); it answers with the
    next forged server message, or ``None`` once it holds the masked input.
    Usable in-process (:func:`substitution_attack`) or behind a fake HTTP
    server that the real SDK talks to.
    """

    def __init__(self, config: SessionConfig, target: int) -> None:
        self.config, self.target = config, target
        self.sid = config.session_id
        rng = DeterministicRandom(SERVER_RNG_SEED)
        self.peers = sorted(config.neighbour_graph.neighbours(target))
        self.fake_cipher = {v: x25519_generate(rng) for v in self.peers}
        self.fake_mask = {v: x25519_generate(rng) for v in self.peers}
        self.view = AttackerView(config=config, target=target)
        self.target_cipher_public = b""

    def on_message(self, data: bytes) -> bytes | None:
        msg = decode_message(data)
        if isinstance(msg, AdvertiseKeys):
            return self._directory(msg)
        if isinstance(msg, ShareKeys):
            return self._bundle(msg)
        if isinstance(msg, MaskedInput):
            self.view.masked = bytes(msg.masked)
        return None

    def _directory(self, advert: AdvertiseKeys) -> bytes:
        u, sid = self.target, self.sid
        self.target_cipher_public = advert.keys.cipher_public_key
        self.view.mask_public_key = advert.keys.mask_public_key
        self.view.peer_mask_keys = {v: self.fake_mask[v].public for v in self.peers}
        entries = [advert.keys]
        for v in self.peers:
            cpk, mpk = self.fake_cipher[v].public, self.fake_mask[v].public
            signature = b""
            if self.config.mode is Mode.ACTIVE:
                signature = ed25519_sign(server_identity(v), advertise_payload(sid, v, cpk, mpk))
            entries.append(AdvertisedKeys(v, cpk, mpk, signature))
        entries.sort(key=lambda e: e.sender)
        return KeyDirectory(sid, u, tuple(entries)).encode()

    def _bundle(self, share_keys: ShareKeys) -> bytes:
        u, sid = self.target, self.sid
        self.view.commitment = share_keys.self_mask_commitment
        # Every share ciphertext of the target opens under the substituted keys.
        for v, ciphertext in share_keys.ciphertexts:
            shared = self.fake_cipher[v].agree(self.target_cipher_public)
            key = share_encryption_key(shared, sid, u, v)
            plaintext = aead_open(key, ciphertext, share_aad(sid, u, v))
            self.view.mask_key_shares[v] = decode_share(plaintext[8 : 8 + SHARE_SIZE])
            self.view.self_mask_shares[v] = decode_share(plaintext[8 + SHARE_SIZE :])
        # Round 1 -> 2: well-formed shares "from" each peer, forged by the server.
        bundle = []
        for v in self.peers:
            shared = self.fake_cipher[v].agree(self.target_cipher_public)
            key = share_encryption_key(shared, sid, v, u)
            junk = encode_share(1) + encode_share(1)
            bundle.append((v, aead_seal(key, u32(v) + u32(u) + junk, share_aad(sid, v, u))))
        return ShareBundle(sid, u, tuple(bundle)).encode()


def substitution_attack(session: ClientSession) -> Reconstruction:
    """Run the attack in-process against an already constructed target session."""
    server = SubstitutingServer(session.config, session.client_id)
    reply: bytes | None = session.start()
    while reply is not None:
        answer = server.on_message(reply)
        reply = session.receive(answer) if answer is not None else None
    return reconstruct(server.view)


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

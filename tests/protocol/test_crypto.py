"""The crypto facade: known answers, seekability, domain separation."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.crypto import (
    CIPHERSUITE,
    DeterministicRandom,
    MaskExpander,
    X25519Secret,
    aead_open,
    aead_seal,
    derive_key,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
    prg_fill,
    x25519_agree,
    x25519_public_key,
)
from protocol.errors import CryptoError

SID = bytes(range(32))


def test_ciphersuite_identifier() -> None:
    assert CIPHERSUITE == "SECAGG-V1-X25519-HKDF256-CHACHAPOLY-AES128CTR-ED25519"


def test_rfc7748_x25519_known_answer() -> None:
    # RFC 7748 section 6.1 (Alice and Bob).
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert x25519_public_key(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert x25519_agree(alice, bob_pub).hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_low_order_public_key_is_refused() -> None:
    secret = X25519Secret(bytes(range(1, 33)))
    with pytest.raises(CryptoError):
        secret.agree(bytes(32))  # the all-zero point has order 4


def test_aes_ctr_keystream_first_block_is_aes_of_zero_counter() -> None:
    # With the counter block starting at zero, the first 16 keystream bytes
    # are AES_k(0^128); known answer for k = 00 01 .. 0f.
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    out = np.zeros(4, np.uint32)
    prg_fill(key, out)
    # AES-128(000102..0f, 00..00) = c6a13b37878f5b826f4f8162a1c8d879
    assert out.view(np.uint8).tobytes().hex() == "c6a13b37878f5b826f4f8162a1c8d879"


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("start", [0, 1, 3, 4, 5, 17, 1000])
def test_prg_is_seekable(dtype: type, start: int) -> None:
    key = bytes(range(16))
    whole = np.zeros(1100, dtype)
    prg_fill(key, whole)
    part = np.zeros(50, dtype)
    prg_fill(key, part, start=start)
    assert np.array_equal(part, whole[start : start + 50])


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 1000, 5000])
def test_chunked_masks_equal_whole_vector_keystreams(dtype: type, length: int) -> None:
    keys = [bytes([i]) * 16 for i in range(5)]
    acc = np.arange(length, dtype=dtype)
    # A tiny chunk forces many chunks, including a partial last one.
    MaskExpander(dtype, chunk_bytes=256).apply(acc, add=keys[:3], subtract=keys[3:])
    expected = np.arange(length, dtype=dtype)
    for i, key in enumerate(keys):
        stream = np.zeros(length, dtype)
        prg_fill(key, stream)
        expected = expected + stream if i < 3 else expected - stream
    assert np.array_equal(acc, expected)


def test_mask_expander_refuses_a_foreign_accumulator() -> None:
    with pytest.raises(CryptoError):
        MaskExpander(np.uint32).add(bytes(16), np.zeros(4, np.uint64))


def test_mask_expander_adds_and_subtracts_exactly() -> None:
    key = bytes(range(16))
    exp = MaskExpander(np.uint32)
    acc = np.arange(1000, dtype=np.uint32)
    exp.add(key, acc)
    whole = np.zeros(1000, np.uint32)
    prg_fill(key, whole)
    assert np.array_equal(acc, np.arange(1000, dtype=np.uint32) + whole)
    exp.subtract(key, acc)
    assert np.array_equal(acc, np.arange(1000, dtype=np.uint32))


def test_derive_key_separates_purposes_sessions_and_context() -> None:
    ikm = b"\x01" * 32
    base = derive_key(ikm, purpose=b"a", session_id=SID)
    assert derive_key(ikm, purpose=b"b", session_id=SID) != base
    assert derive_key(ikm, purpose=b"a", session_id=bytes(32)) != base
    assert derive_key(ikm, purpose=b"a", session_id=SID, context=b"x") != base
    assert len(derive_key(ikm, purpose=b"a", session_id=SID, length=16)) == 16
    with pytest.raises(CryptoError):
        derive_key(ikm, purpose=b"a", session_id=b"short")


def test_aead_round_trip_and_tamper_detection() -> None:
    key = bytes(32)
    ct = aead_seal(key, b"share", b"aad")
    assert aead_open(key, ct, b"aad") == b"share"
    with pytest.raises(CryptoError):
        aead_open(key, ct, b"other aad")
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(CryptoError):
        aead_open(key, tampered, b"aad")


def test_ed25519_rfc8032_test_1() -> None:
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = ed25519_public_key(secret)
    assert public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    sig = ed25519_sign(secret, b"")
    assert sig.hex().startswith("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155")
    assert ed25519_verify(public, sig, b"")
    assert not ed25519_verify(public, sig, b"x")
    assert not ed25519_verify(public, sig[:63], b"")


def test_deterministic_random_is_reproducible_and_seed_dependent() -> None:
    a = DeterministicRandom(b"seed")
    b = DeterministicRandom(b"seed")
    assert a.random_bytes(10) + a.random_bytes(7) == b.random_bytes(17)
    assert DeterministicRandom(b"other").random_bytes(17) != DeterministicRandom(
        b"seed"
    ).random_bytes(17)


def test_small_order_public_keys_are_detected() -> None:
    from protocol.crypto import x25519_is_valid_public

    # Small-order points of Curve25519 (RFC 7748 section 6.1 and libsodium's list).
    small_order = [
        bytes(32),
        (1).to_bytes(32, "little"),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ]
    for key in small_order:
        assert not x25519_is_valid_public(key)
    assert not x25519_is_valid_public(b"\x09" * 31)
    assert x25519_is_valid_public(X25519Secret(bytes(range(32))).public)

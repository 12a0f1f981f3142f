"""Key agreement, share encryption and the masks' pseudorandom generator.

* Keys: ECDH on NIST P-384 (Flower's SecAgg+ curve). A private key travels (as Shamir shares)
  as its 48-byte big-endian private value, a public key as its 49-byte compressed point.
* Agreement: ``KA(sk_u, pk_v)`` is Flower's ``generate_shared_key`` (ECDH, then HKDF-SHA256 to
  32 bytes, urlsafe base64 for Fernet); the same 32 bytes seed a pairwise mask.
* Encryption of shares: Fernet (AES-128-CBC with HMAC-SHA256, authenticated), Flower's
  ``encrypt`` / ``decrypt``.
* Masks: ChaCha20 keyed by a 32-byte seed, a cryptographically secure PRG, read as
  little-endian ``uint32`` words and reduced modulo ``2**bits``. Flower's ``pseudo_rand_gen``
  is not used: it truncates the seed to 32 bits into NumPy's ``RandomState``, so a mask would
  have at most 2^32 possible values and could be searched.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)

CURVE = ec.SECP384R1()
"""The curve of every key pair."""
PRIVATE_BYTES = 48
"""Length of a serialized private value."""
PUBLIC_BYTES = 49
"""Length of a serialized public key (a compressed point: one encoding per key)."""
SEED_BYTES = 32
"""Length of a mask seed (a ChaCha20 key)."""
_NONCE = bytes(16)
"""ChaCha20's counter and nonce: zero, since every seed is fresh and used for one mask."""

__all__ = ["CURVE", "KeyPair", "agreed_key", "decrypt", "encrypt", "mask", "pairwise_seed",
           "public_key"]


@dataclass(frozen=True)
class KeyPair:
    """An ECDH key pair, serialized."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's randomness."""
        key = ec.generate_private_key(CURVE)
        return cls(key.private_numbers().private_value.to_bytes(PRIVATE_BYTES, "big"),
                   public_bytes(key.public_key()))


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The compressed point of ``key``."""
    return key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def private_key(private: bytes) -> ec.EllipticCurvePrivateKey:
    """The private key of a serialized private value.

    Raises:
        ValueError: if ``private`` is not a valid P-384 private value.
    """
    if len(private) != PRIVATE_BYTES:
        raise ValueError(f"a private key is {PRIVATE_BYTES} bytes, got {len(private)}")
    return ec.derive_private_key(int.from_bytes(private, "big"), CURVE)


def public_key(public: bytes) -> ec.EllipticCurvePublicKey:
    """The P-384 public key of a compressed point.

    Raises:
        ValueError: if ``public`` is not the 49-byte compressed encoding of a point of the
            curve.
    """
    if not isinstance(public, bytes) or len(public) != PUBLIC_BYTES:
        raise ValueError(f"a public key is a {PUBLIC_BYTES}-byte compressed point, got "
                         f"{len(public) if isinstance(public, bytes) else type(public).__name__}")
    return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, public)


def agreed_key(private: bytes, public: bytes) -> bytes:
    """``KA(sk, pk)``: the Fernet key two parties agree on (same both ways).

    Raises:
        ValueError: if either key is not a valid P-384 key.
    """
    return generate_shared_key(private_key(private), public_key(public))


def pairwise_seed(private: bytes, public: bytes) -> bytes:
    """The 32-byte seed of the pairwise mask of ``private``'s owner and ``public``'s."""
    return base64.urlsafe_b64decode(agreed_key(private, public))


def mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``PRG(seed)``: ``length`` words uniform in ``[0, 2**bits)`` (``uint64``).

    Raises:
        ValueError: if ``seed`` is not 32 bytes or ``bits`` is not in [1, 32].
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    if not 1 <= bits <= 32:
        raise ValueError(f"mask words have 1 to 32 bits, got {bits}")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor().update(
        bytes(4 * length))
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint64)
    return words & np.uint64((1 << bits) - 1)

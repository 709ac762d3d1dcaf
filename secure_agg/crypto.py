"""Key agreement, share encryption, commitments and signatures for SecAgg / SecAgg+.

Thin wrappers over ``cryptography`` (Bonawitz et al., CCS 2017, Sec. 3 primitives):

* ``KA``: X25519; the agreed 32-byte secret is always passed through HKDF-SHA256
  (:func:`secure_agg.prg.derive_key`) together with its purpose, the round and the
  two ids, never used directly.
* ``AE``: AES-256-GCM with a random 96-bit nonce; the associated data binds the
  round id, the sender and the receiver, so a share replayed from another round
  or redirected to another client fails to decrypt.
* ``SIG``: Ed25519 (optional, for the actively-malicious setting).
* ``MAC``: HMAC-SHA256 of each message under a key derived (HKDF-SHA256) from the
  32-byte channel key a client shares with the server, bound to the round, the
  client and the direction (:func:`channel_mac_key`): the authenticated channel
  every message travels on by default.

All failures of verification collapse to :class:`~secure_agg.errors.MessageRejectedError`.

Examples
--------
>>> from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
>>> a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
>>> k1 = pair_key(a, public_bytes(b), purpose=b"enc", round_id=1, u=1, v=2)
>>> k2 = pair_key(b, public_bytes(a), purpose=b"enc", round_id=1, u=2, v=1)
>>> ct = encrypt(k1, b"hello", ad=share_ad(1, 1, 2))
>>> decrypt(k2, ct, ad=share_ad(1, 1, 2))
b'hello'
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secure_agg.errors import MessageRejectedError
from secure_agg.prg import derive_key

__all__ = [
    "CHANNEL_KEY_BYTES",
    "MAC_BYTES",
    "b_commitment",
    "channel_mac_key",
    "check_public_key",
    "consistency_payload",
    "decrypt",
    "encrypt",
    "key_signature_payload",
    "mac",
    "pair_key",
    "public_bytes",
    "share_ad",
    "sign",
    "verify",
    "verify_mac",
]

_DOMAIN = b"flsec-secagg-v1/"
_NONCE = 12
CHANNEL_KEY_BYTES = 32
MAC_BYTES = 32


def public_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    """Raw 32-byte public key of a private key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pair_key(
    private: X25519PrivateKey, peer_public: bytes, *, purpose: bytes, round_id: int, u: int, v: int
) -> bytes:
    """``HKDF(X25519(private, peer_public), purpose, round, {u, v})``: 32-byte key of a pair.

    Raises
    ------
    MessageRejectedError
        If ``peer_public`` is not a valid X25519 key (e.g. a low-order point).
    """
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:
        raise MessageRejectedError(
            f"invalid X25519 public key of client {v if u != v else u}: {e}"
        ) from None
    return derive_key(shared, purpose=purpose, round_id=round_id, a=u, b=v)


def check_public_key(peer_public: bytes, *, what: str) -> None:
    """Refuse an X25519 public key that cannot agree a key (a low-order point).

    Raises
    ------
    MessageRejectedError
        Naming ``what``, for a key of the wrong length or of small order.

    Examples
    --------
    >>> check_public_key(bytes(32), what="s_pk of client 3")
    Traceback (most recent call last):
    ...
    secure_agg.errors.MessageRejectedError: invalid X25519 public key (s_pk of client 3)
    """
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise MessageRejectedError(f"invalid X25519 public key ({what})") from None


def share_ad(round_id: int, sender: int, receiver: int) -> bytes:
    """Associated data of an encrypted share: the round and the (ordered) sender and receiver."""
    return _DOMAIN + b"share" + struct.pack("<QII", round_id, sender, receiver)


def encrypt(key: bytes, plaintext: bytes, *, ad: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag`` with a fresh random nonce."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, data: bytes, *, ad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; any failure raises :class:`MessageRejectedError`."""
    if len(data) < _NONCE + 16:
        raise MessageRejectedError(f"ciphertext of {len(data)} bytes is too short")
    try:
        return AESGCM(key).decrypt(data[:_NONCE], data[_NONCE:], ad)
    except InvalidTag:
        raise MessageRejectedError("share ciphertext failed authentication") from None


def b_commitment(round_id: int, u: int, b: bytes) -> bytes:
    """``SHA-256(domain || round || u || b_u)``: binds the server's reconstruction of ``b_u``."""
    return hashlib.sha256(_DOMAIN + b"commit" + struct.pack("<QI", round_id, u) + b).digest()


def key_signature_payload(round_id: int, u: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """What ``sigma_u`` signs in round 0: ``round || u || c_u^PK || s_u^PK``."""
    return _DOMAIN + b"keys" + struct.pack("<QI", round_id, u) + c_pk + s_pk


def consistency_payload(round_id: int, survivors: Iterable[int]) -> bytes:
    """What ``sigma'_u`` signs in round 3: ``round || sorted(U3)``."""
    ids = sorted(int(v) for v in survivors)
    return _DOMAIN + b"U3" + struct.pack(f"<QI{len(ids)}I", round_id, len(ids), *ids)


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Ed25519 signature (64 bytes)."""
    return key.sign(payload)


def verify(key: Ed25519PublicKey, signature: bytes, payload: bytes, *, what: str) -> None:
    """Verify an Ed25519 signature; raises :class:`MessageRejectedError` naming ``what``."""
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise MessageRejectedError(f"invalid signature on {what}") from None


def channel_mac_key(channel_key: bytes, *, round_id: int, client_id: int, upstream: bool) -> bytes:
    """The HMAC key of one direction of client ``client_id``'s channel in one round.

    ``HKDF-SHA256(channel_key, info = domain || "channel" || round || client || direction)``:
    a tag from another round, another client's channel or the other direction never
    verifies.

    Raises
    ------
    MessageRejectedError
        If ``channel_key`` is not :data:`CHANNEL_KEY_BYTES` bytes.
    """
    if not isinstance(channel_key, bytes) or len(channel_key) != CHANNEL_KEY_BYTES:
        raise MessageRejectedError(f"channel key must be {CHANNEL_KEY_BYTES} bytes")
    purpose = b"channel-up" if upstream else b"channel-down"
    return derive_key(channel_key, purpose=purpose, round_id=round_id, a=client_id, b=client_id)


def mac(key: bytes, *parts: bytes | memoryview) -> bytes:
    """HMAC-SHA256 tag (32 bytes) of the concatenation of ``parts`` (no copy is made)."""
    h = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        h.update(part)
    return h.finalize()


def verify_mac(key: bytes, tag: bytes, *parts: bytes | memoryview, what: str) -> None:
    """Check an HMAC-SHA256 tag in constant time; raises :class:`MessageRejectedError` naming ``what``.

    Examples
    --------
    >>> k = bytes(32)
    >>> verify_mac(k, mac(k, b"m"), b"m", what="m")
    >>> verify_mac(k, mac(k, b"m"), b"n", what="message n")
    Traceback (most recent call last):
    ...
    secure_agg.errors.MessageRejectedError: invalid MAC on message n
    """
    h = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        h.update(part)
    try:
        h.verify(tag)
    except InvalidSignature:
        raise MessageRejectedError(f"invalid MAC on {what}") from None

"""The client role of SecAgg / SecAgg+ as an explicit state machine.

Implements the user side of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017 (Fig. 4), over the communication
graph of Bell et al., CCS 2020 (the neighbours the server sends; the complete graph
gives SecAgg):

* Round 0 ``AdvertiseKeys``: fresh X25519 pairs ``(c^PK, c^SK)`` (share encryption)
  and ``(s^PK, s^SK)`` (pairwise masks) from the OS CSPRNG, and the digest of the
  model the client received (:func:`model_digest`), signed with the keys in the
  active setting.
* Round 1 ``ShareKeys``: fresh self-mask seed ``b_u``; ``t``-out-of-``(k + 1)``
  Shamir shares of ``s_u^SK`` and ``b_u`` for the neighbours and itself; each
  neighbour's pair encrypted with AES-GCM under ``KA(c_u^SK, c_v^PK)``.
* Round 2 ``MaskedInput``: ``y_u = x_u + PRG(b_u) + sum_{v in U2} Delta_{u,v} PRG(s_{u,v})``
  with ``Delta = +1`` if ``u > v`` else ``-1`` (double masking).
* Round 3 ``ConsistencyCheck`` (active setting): sign the survivor list ``U3``.
* Round 4 ``Unmasking``: shares of ``b_v`` for neighbours that survived and of
  ``s_v^SK`` for those that dropped -- never both kinds for one client: the state
  machine answers one unmasking request per round, from one survivor list.

Every message is authenticated: client messages carry an Ed25519 signature
(active setting) or an HMAC-SHA256 tag under the client's channel key, server
messages an HMAC-SHA256 tag (unless ``params.authenticated`` is off). The masked
input names the peers it was masked with (``MaskedInput.masked_with``), so the
server can never unmask it with another set of pairs. Before revealing any share
the client refuses a threshold at or below half its share holders
(:meth:`~secure_agg.params.SecAggParams.check_threshold`).

A message that is malformed, from another round, out of order or fails
authentication makes the client abort (:class:`~secure_agg.errors.ProtocolAbortError`);
the server then treats it as dropped.

Model binding (defense against a server that sends clients different models, e.g.
LOKI, Zhao et al. IEEE S&P 2024, :mod:`attacks.reconstruction.loki`). A client given
``model_digest`` (``SHA-256(domain || round || SHA-256(serialised parameters))`` of
the model it received, :func:`model_digest`) advertises it in round 0 and, before
it shares any secret, refuses the round (:class:`ModelMismatchError`) if any
neighbour advertised another digest (or none). What that guarantees depends on how
the advertisements are authenticated:

* active setting (``params.active``, Ed25519 signatures and a PKI of verification
  keys): the digest is inside the signed advertisement
  (:func:`advertise_payload`), so the server cannot change a neighbour's digest.
  A server that gives two neighbours different models makes both abort: every
  client whose input enters the sum holds the same model as all its neighbours.
  Under SecAgg (complete graph) that is the whole cohort; under SecAgg+ the server
  also chooses the graph, so it can still give different models to groups with no
  edge between them (each group has ``>= t`` clients, since a client needs
  ``t - 1`` neighbours), and it learns each group's sum -- never one client's
  update unless ``t = 1``, which the parameters refuse. It can still send every
  client the *same* malicious model (an imprint module, Fowl et al. ICLR 2022):
  the check does not inspect the model, it only makes everyone's the same.
* authenticated channels only (the default, ``active=False``): the advertisements
  carry the server's MAC, not the clients' signatures; the server holds every
  channel key and can rewrite the digests it relays. The check then stops a
  network attacker and an honest server's mistakes (a client with a stale
  model), not a malicious server.
* ``authenticated=False``: only the transport protects the digests.

A digest is bound to the round id, so a digest replayed from another round (even
of the same model) does not match.
Threat model: honest-but-curious server (``active=False``): the server follows
the protocol; the MACs stop a network attacker (tampering, injection,
redirection, replay from another round). The server holds the channel keys, so
it can forge client messages in this mode. Malicious server (``active=True``):
client messages are signed, the consistency check stops equivocation about
``U3``, and the threshold bound keeps the server from collecting both secrets of
a client; it can still abort the round or leave clients out.

Examples
--------
>>> import numpy as np
>>> from secure_agg.params import SecAggParams
>>> c = SecAggClient(1, np.zeros(4, np.uint32), params=SecAggParams(round_id=0, t=2, d=4),
...                  channel_key=bytes(32))
>>> from secure_agg.messages import decode_message
>>> type(decode_message(c.advertise_keys())).__name__, c.state.name
('AdvertiseKeys', 'KEYS_ADVERTISED')
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Iterable, Mapping
from enum import Enum, auto
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

import secure_agg.crypto as crypto
from secure_agg.errors import (
    MessageRejectedError,
    ProtocolAbortError,
    SecAggConfigError,
    SecAggError,
)
from secure_agg.messages import (
    DIGEST_BYTES,
    SERVER_ID,
    AdvertiseKeys,
    ConsistencySignature,
    KeyBroadcast,
    MaskedInput,
    Message,
    ShareKeys,
    ShareKind,
    ShareRelay,
    SignatureBroadcast,
    SurvivorList,
    UnmaskShares,
    decode_message,
    signed_part,
    with_auth,
)
from secure_agg.params import SecAggParams
from secure_agg.prg import MaskAccumulator, derive_key
from secure_agg.shamir import PRIME, SHARE_BYTES, secret_to_limbs, share_limbs

__all__ = [
    "PAIR_MASK_PURPOSE",
    "SELF_MASK_PURPOSE",
    "ClientState",
    "ModelMismatchError",
    "SecAggClient",
    "advertise_payload",
    "bind_model",
    "model_digest",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

SELF_MASK_PURPOSE = b"self-mask"
PAIR_MASK_PURPOSE = b"pair-mask"
SHARE_KEY_PURPOSE = b"share-enc"
_MODEL_DOMAIN = b"flsec-secagg-v1/model"


class ModelMismatchError(ProtocolAbortError):
    """A neighbour advertised a model digest other than this client's: the server sent different models."""


def model_fingerprint(arrays: Iterable[object]) -> bytes:
    """``SHA-256`` of a model's parameters, serialised unambiguously (round-independent).

    Each array is written as its dtype string, its shape and its little-endian
    C-order bytes, so two models have the same fingerprint exactly when they have
    the same arrays in the same order, with the same shapes, dtypes and bits.

    Parameters
    ----------
    arrays : iterable of array-likes
        The parameters in a fixed order (a Flower ``ArrayRecord``'s arrays, a
        model's ``parameters()`` as NumPy arrays, ...).

    Raises
    ------
    SecAggConfigError
        If ``arrays`` is empty or holds an object array.

    Examples
    --------
    >>> import numpy as np
    >>> a = [np.zeros((2, 3), np.float32), np.ones(3, np.float32)]
    >>> model_fingerprint(a) == model_fingerprint([x.copy() for x in a])
    True
    >>> model_fingerprint(a) == model_fingerprint([a[0].reshape(3, 2), a[1]])
    False
    """
    h = hashlib.sha256(_MODEL_DOMAIN + b"/params")
    count = 0
    for a in arrays:
        arr = np.asarray(a)
        if arr.dtype.hasobject:
            raise SecAggConfigError(f"model array {count} has dtype object; cannot fingerprint it")
        le = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
        dt = le.dtype.str.encode()
        h.update(struct.pack("<IB", count, len(dt)) + dt + struct.pack(f"<I{arr.ndim}Q", arr.ndim, *arr.shape))
        h.update(le.tobytes())
        count += 1
    if count == 0:
        raise SecAggConfigError("cannot fingerprint a model without parameters")
    h.update(struct.pack("<I", count))
    return h.digest()


def bind_model(fingerprint: bytes, *, round_id: int) -> bytes:
    """The model digest of round ``round_id``: ``SHA-256(domain || round || fingerprint)``.

    Raises
    ------
    SecAggConfigError
        If ``fingerprint`` is not 32 bytes or ``round_id`` is not in ``[0, 2^64)``.
    """
    if not isinstance(fingerprint, bytes) or len(fingerprint) != DIGEST_BYTES:
        raise SecAggConfigError(f"a model fingerprint has {DIGEST_BYTES} bytes, got {fingerprint!r:.40}")
    if isinstance(round_id, bool) or not isinstance(round_id, int | np.integer) or not 0 <= round_id < 2**64:
        raise SecAggConfigError(f"round_id must be an int in [0, 2^64), got {round_id!r}")
    return hashlib.sha256(_MODEL_DOMAIN + struct.pack("<Q", int(round_id)) + fingerprint).digest()


def model_digest(arrays: Iterable[object], *, round_id: int) -> bytes:
    """The digest a client advertises for the model it received in round ``round_id``.

    ``bind_model(model_fingerprint(arrays), round_id=round_id)``: bound to the round,
    so a digest replayed from another round never matches.

    Examples
    --------
    >>> import numpy as np
    >>> m = [np.arange(4, dtype=np.float32)]
    >>> len(model_digest(m, round_id=1)), model_digest(m, round_id=1) == model_digest(m, round_id=2)
    (32, False)
    """
    return bind_model(model_fingerprint(arrays), round_id=round_id)


def advertise_payload(round_id: int, u: int, c_pk: bytes, s_pk: bytes, model_digest: bytes) -> bytes:
    """What ``sigma_u`` signs in round 0: ``round || u || c_u^PK || s_u^PK || "model" || digest``."""
    return crypto.key_signature_payload(round_id, u, c_pk, s_pk) + b"model" + model_digest


class ClientState(Enum):
    """Where the client is in the round."""

    READY = auto()
    KEYS_ADVERTISED = auto()
    SHARES_SENT = auto()
    INPUT_SENT = auto()
    CONSISTENCY_SENT = auto()
    DONE = auto()
    ABORTED = auto()


_EXPECTED: dict[ClientState, type[Message]] = {
    ClientState.KEYS_ADVERTISED: KeyBroadcast,
    ClientState.SHARES_SENT: ShareRelay,
    ClientState.INPUT_SENT: SurvivorList,
    ClientState.CONSISTENCY_SENT: SignatureBroadcast,
}


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


class SecAggClient:
    """Client ``u`` of one SecAgg(+) round.

    Parameters
    ----------
    client_id : int
        ``u`` in ``[1, 2^31 - 2]`` (also its Shamir evaluation point).
    x : numpy.ndarray
        ``(d,)`` ring words of dtype ``params.dtype`` (from
        :class:`~secure_agg.quantize.FixedPointEncoder`).
    params : SecAggParams
        Public round parameters.
    signing_key : Ed25519PrivateKey, optional
        ``d_u^SK``; required when ``params.active``.
    verify_keys : Mapping[int, Ed25519PublicKey], optional
        The PKI: verification keys of the other clients; required when ``params.active``.
    channel_key : bytes, optional
        32 bytes this client shares with the server (from the enrolment or the
        TLS session); required when ``params.authenticated`` (the default).
    model_digest : bytes, optional
        :func:`model_digest` of the model this client received this round (32
        bytes). The client advertises it and aborts with :class:`ModelMismatchError`
        if a neighbour advertises another (see the module docstring for what that
        guarantees in each mode). ``None``: the round binds no model, and the client
        accepts only neighbours that advertise none.
    """

    def __init__(
        self,
        client_id: int,
        x: np.ndarray,
        *,
        params: SecAggParams,
        signing_key: Ed25519PrivateKey | None = None,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
        channel_key: bytes | None = None,
        model_digest: bytes | None = None,
    ) -> None:
        if isinstance(client_id, np.integer):
            client_id = int(client_id)
        if not isinstance(client_id, int) or not 1 <= client_id < 2**31 - 1:
            raise SecAggConfigError(f"client_id must be an int in [1, 2^31 - 2], got {client_id!r}")
        x = np.asarray(x)
        if x.shape != (params.d,) or x.dtype != params.dtype:
            raise SecAggConfigError(
                f"client {client_id}: input must have shape ({params.d},) and dtype "
                f"{params.dtype}, got {x.shape} {x.dtype}"
            )
        if params.ring_bits < 8 * x.dtype.itemsize and x.size and int(x.max()) >> params.ring_bits:
            raise SecAggConfigError(
                f"client {client_id}: input has words outside Z_2^{params.ring_bits}"
            )
        if params.active and (signing_key is None or verify_keys is None):
            raise SecAggConfigError("the active setting needs signing_key and verify_keys")
        if params.authenticated and (
            not isinstance(channel_key, bytes) or len(channel_key) != crypto.CHANNEL_KEY_BYTES
        ):
            raise SecAggConfigError(
                f"client {client_id}: authenticated channels need a {crypto.CHANNEL_KEY_BYTES}-byte "
                f"channel_key shared with the server (or params.authenticated=False when the "
                f"transport authenticates every message)"
            )
        if model_digest is not None and (
            not isinstance(model_digest, bytes) or len(model_digest) != DIGEST_BYTES
        ):
            raise SecAggConfigError(
                f"client {client_id}: model_digest must be {DIGEST_BYTES} bytes (secure_agg.client."
                f"model_digest), got {model_digest!r:.60}"
            )
        self.u = client_id
        self.params = params
        self.model_digest = model_digest or b""
        self._x = x
        self._signing_key = signing_key
        self._verify_keys = dict(verify_keys or {})
        self.state = ClientState.READY
        self.abort_reason: str | None = None
        self.revealed: dict[int, ShareKind] = {}
        self._c_sk: X25519PrivateKey | None = None
        self._s_sk: X25519PrivateKey | None = None
        self._b: bytes | None = None
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._own_shares: tuple[bytes, bytes] | None = None
        self._received: dict[int, tuple[bytes, bytes]] = {}
        self._u3: tuple[int, ...] = ()
        self._mac_up = self._mac_down = b""
        if params.authenticated:
            assert channel_key is not None
            kw = {"round_id": params.round_id, "client_id": client_id}
            self._mac_up = crypto.channel_mac_key(channel_key, upstream=True, **kw)
            self._mac_down = crypto.channel_mac_key(channel_key, upstream=False, **kw)

    # ------------------------------------------------------------------ helpers
    def _abort(self, reason: str, error: type[ProtocolAbortError] = ProtocolAbortError) -> NoReturn:
        self.state = ClientState.ABORTED
        self.abort_reason = reason
        self._c_sk = self._s_sk = None
        self._b = None
        self._own_shares = None
        self._received = {}
        logger.info("client %d aborts: %s", self.u, reason)
        raise error(f"client {self.u}: {reason}")

    def _out(self, msg_cls: type[Message], **fields: object) -> bytes:
        unsigned = msg_cls(
            round_id=self.params.round_id, sender=self.u, receiver=SERVER_ID, **fields
        ).to_bytes()
        if self.params.active:
            assert self._signing_key is not None
            return with_auth(unsigned, crypto.sign(self._signing_key, unsigned))
        if self.params.authenticated:
            return with_auth(unsigned, crypto.mac(self._mac_up, unsigned))
        return unsigned

    # ------------------------------------------------------------------ round 0
    def advertise_keys(self) -> bytes:
        """Round 0: generate the two key pairs and return the encoded ``AdvertiseKeys``."""
        if self.state is not ClientState.READY:
            self._abort(f"advertise_keys called in state {self.state.name}")
        self._c_sk = X25519PrivateKey.generate()
        self._s_sk = X25519PrivateKey.generate()
        c_pk, s_pk = crypto.public_bytes(self._c_sk), crypto.public_bytes(self._s_sk)
        sig = b""
        if self.params.active:
            assert self._signing_key is not None
            payload = advertise_payload(self.params.round_id, self.u, c_pk, s_pk, self.model_digest)
            sig = crypto.sign(self._signing_key, payload)
        self._keys[self.u] = (c_pk, s_pk)
        self.state = ClientState.KEYS_ADVERTISED
        return self._out(
            AdvertiseKeys, c_pk=c_pk, s_pk=s_pk, signature=sig, model_digest=self.model_digest
        )

    # ------------------------------------------------------------------ dispatcher
    def handle(self, data: bytes) -> bytes:
        """Process one encoded server message and return the encoded answer.

        Raises
        ------
        ProtocolAbortError
            On a malformed, replayed, misaddressed, out-of-order or unauthentic
            message, or when too few neighbours remain; the client is then aborted.
        """
        if self.state in (ClientState.DONE, ClientState.ABORTED):
            raise ProtocolAbortError(
                f"client {self.u}: refusing a message after the round ended ({self.state.name})"
            )
        try:
            msg = decode_message(data)
        except SecAggError as e:
            self._abort(f"undecodable message: {e}")
        p = self.params
        if p.authenticated:
            try:
                crypto.verify_mac(
                    self._mac_down, msg.auth, *signed_part(data, len(msg.auth)),
                    what=type(msg).__name__,
                )
            except MessageRejectedError as e:
                self._abort(f"{e} (tampered, forged, misaddressed or from another round)")
        if msg.round_id != p.round_id:
            self._abort(f"message for round {msg.round_id}, this is round {p.round_id} (replay?)")
        if msg.sender != SERVER_ID or msg.receiver != self.u:
            self._abort(f"message from {msg.sender} to {msg.receiver} is not from the server to me")
        expected = _EXPECTED.get(self.state)
        if expected is None or not isinstance(msg, expected):
            want = expected.__name__ if expected else "nothing"
            self._abort(
                f"out-of-order {type(msg).__name__} in state {self.state.name} (expected {want})"
            )
        try:
            if isinstance(msg, KeyBroadcast):
                return self._on_keys(msg)
            if isinstance(msg, ShareRelay):
                return self._on_shares(msg)
            if isinstance(msg, SurvivorList):
                return self._on_survivors(msg)
            assert isinstance(msg, SignatureBroadcast)
            return self._on_signatures(msg)
        except (MessageRejectedError, SecAggError) as e:
            if self.state is ClientState.ABORTED:
                raise
            self._abort(str(e))

    # ------------------------------------------------------------------ round 1
    def _on_keys(self, msg: KeyBroadcast) -> bytes:
        p = self.params
        if any(e.client_id == self.u for e in msg.entries):
            self._abort("key broadcast lists my own id")
        try:
            p.check_threshold(holders=len(msg.entries) + 1)
        except SecAggConfigError as e:
            self._abort(f"refusing to share with {len(msg.entries)} neighbours: {e}")
        seen = set(self._keys[self.u])
        for e in msg.entries:
            if e.c_pk in seen or e.s_pk in seen or e.c_pk == e.s_pk:
                self._abort(f"public keys of client {e.client_id} repeat another key")
            seen.update((e.c_pk, e.s_pk))
            if p.active:
                vk = self._verify_keys.get(e.client_id)
                if vk is None:
                    self._abort(f"no verification key for client {e.client_id}")
                payload = advertise_payload(p.round_id, e.client_id, e.c_pk, e.s_pk, e.model_digest)
                crypto.verify(vk, e.signature, payload, what=f"keys of client {e.client_id}")
            if e.model_digest != self.model_digest:
                self._abort(
                    f"model mismatch: client {e.client_id} advertised model digest "
                    f"{e.model_digest.hex()[:16] or 'none'}, mine is {self.model_digest.hex()[:16] or 'none'} "
                    f"(the server sent us different models, or a digest of another round)",
                    ModelMismatchError,
                )
            self._keys[e.client_id] = (e.c_pk, e.s_pk)
        assert self._c_sk is not None and self._s_sk is not None
        self._b = os.urandom(32)
        holders = sorted(self._keys)
        secrets = np.stack([secret_to_limbs(_raw_private(self._s_sk)), secret_to_limbs(self._b)])
        shares = share_limbs(secrets, t=p.t, xs=holders)  # (holders, 2, limbs)
        cts = []
        for i, v in enumerate(holders):
            sk_share = shares[i, 0].astype("<u4").tobytes()
            b_share = shares[i, 1].astype("<u4").tobytes()
            if v == self.u:
                self._own_shares = (sk_share, b_share)
                continue
            key = crypto.pair_key(
                self._c_sk,
                self._keys[v][0],
                purpose=SHARE_KEY_PURPOSE,
                round_id=p.round_id,
                u=self.u,
                v=v,
            )
            pt = self.u.to_bytes(4, "little") + v.to_bytes(4, "little") + sk_share + b_share
            cts.append((v, crypto.encrypt(key, pt, ad=crypto.share_ad(p.round_id, self.u, v))))
        self.state = ClientState.SHARES_SENT
        commit = crypto.b_commitment(p.round_id, self.u, self._b)
        return self._out(ShareKeys, b_commitment=commit, ciphertexts=tuple(cts))

    # ------------------------------------------------------------------ round 2
    def _on_shares(self, msg: ShareRelay) -> bytes:
        p = self.params
        assert self._c_sk is not None and self._s_sk is not None and self._b is not None
        for v, ct in msg.ciphertexts:
            if v == self.u or v not in self._keys:
                self._abort(f"share relayed from client {v}, which is not a neighbour")
            key = crypto.pair_key(
                self._c_sk,
                self._keys[v][0],
                purpose=SHARE_KEY_PURPOSE,
                round_id=p.round_id,
                u=self.u,
                v=v,
            )
            try:
                pt = crypto.decrypt(key, ct, ad=crypto.share_ad(p.round_id, v, self.u))
            except MessageRejectedError as e:
                self._abort(f"share from client {v}: {e}")
            if len(pt) != 8 + 2 * SHARE_BYTES:
                self._abort(f"share from client {v} has {len(pt)} bytes")
            src, dst = int.from_bytes(pt[:4], "little"), int.from_bytes(pt[4:8], "little")
            if (src, dst) != (v, self.u):
                self._abort(f"share from client {v} is labelled {src}->{dst}")
            limbs = np.frombuffer(pt[8:], dtype="<u4")
            if (limbs >= PRIME).any():
                self._abort(f"share from client {v} has an element outside GF(2^31 - 1)")
            self._received[v] = (pt[8 : 8 + SHARE_BYTES], pt[8 + SHARE_BYTES :])
        if len(self._received) + 1 < p.t:
            self._abort(f"only {len(self._received)} neighbours sent shares; threshold t={p.t}")
        acc = MaskAccumulator(p.d, p.dtype, initial=self._x)
        acc.add(
            derive_key(self._b, purpose=SELF_MASK_PURPOSE, round_id=p.round_id, a=self.u, b=self.u)
        )
        for v in sorted(self._received):
            key = crypto.pair_key(
                self._s_sk,
                self._keys[v][1],
                purpose=PAIR_MASK_PURPOSE,
                round_id=p.round_id,
                u=self.u,
                v=v,
            )
            if self.u > v:
                acc.add(key)
            else:
                acc.subtract(key)
        y = p.reduce(acc.value)
        self.state = ClientState.INPUT_SENT
        masked_with = tuple(sorted(self._received))
        return self._out(MaskedInput, ring_bits=p.ring_bits, y=y, masked_with=masked_with)

    # ------------------------------------------------------------------ round 3 / 4
    def _on_survivors(self, msg: SurvivorList) -> bytes:
        p = self.params
        u3 = set(msg.survivors)
        if self.u not in u3:
            self._abort("the survivor list omits me although I sent my masked input")
        for v in u3 & set(self._keys):
            if v != self.u and v not in self._received:
                self._abort(f"survivor list names client {v}, which never sent me shares")
        alive = (u3 & set(self._received)) | {self.u}
        if len(alive) < p.t:
            self._abort(f"only {len(alive)} of my share holders survived; threshold t={p.t}")
        self._u3 = tuple(sorted(u3))
        if p.active:
            assert self._signing_key is not None
            sig = crypto.sign(self._signing_key, crypto.consistency_payload(p.round_id, self._u3))
            self.state = ClientState.CONSISTENCY_SENT
            return self._out(ConsistencySignature, signature=sig)
        return self._unmask()

    def _on_signatures(self, msg: SignatureBroadcast) -> bytes:
        p = self.params
        u3 = set(self._u3)
        payload = crypto.consistency_payload(p.round_id, self._u3)
        for v, sig in msg.signatures:
            if v == self.u or v not in u3 or v not in self._received:
                self._abort(f"consistency signature from client {v}, not a surviving neighbour")
            vk = self._verify_keys.get(v)
            if vk is None:
                self._abort(f"no verification key for client {v}")
            crypto.verify(vk, sig, payload, what=f"survivor list signed by client {v}")
        if len(msg.signatures) + 1 < p.t:
            self._abort(
                f"only {len(msg.signatures)} neighbours confirmed the survivor list; t={p.t}"
            )
        return self._unmask()

    def _unmask(self) -> bytes:
        assert self._own_shares is not None
        u3 = set(self._u3)
        out: list[tuple[int, ShareKind, bytes]] = [
            (self.u, ShareKind.SELF_MASK, self._own_shares[1])
        ]
        for v in sorted(self._received):
            sk_share, b_share = self._received[v]
            if v in u3:
                out.append((v, ShareKind.SELF_MASK, b_share))
            else:
                out.append((v, ShareKind.MASK_KEY, sk_share))
        kinds = {o: k for o, k, _ in out}
        assert len(kinds) == len(out)  # one kind per owner: never both secrets of a client
        self.revealed = kinds
        self.state = ClientState.DONE
        self._c_sk = self._s_sk = None
        self._b = None
        return self._out(UnmaskShares, shares=tuple(out))

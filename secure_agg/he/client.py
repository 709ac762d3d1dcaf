"""The client role of HE aggregation.

A client holds the context it got from the key holder. :meth:`HEClient.encrypt_input`
encodes its clipped update and example count (:func:`~secure_agg.he.packing.encode_update`),
packs the ``d + 1`` values into ``ceil((d + 1) / slots)`` ciphertexts and returns the
:class:`~secure_agg.he.messages.EncryptedInput` (signed with Ed25519 when the
deployment authenticates clients). :meth:`HEClient.handle` takes the server's
:class:`~secure_agg.he.messages.EncryptedAggregate`; a client holding the secret key
decrypts it into the weighted mean of the contributors, checked against the honest
bounds (:func:`~secure_agg.he.packing.decode_mean`).

Examples
--------
>>> import numpy as np
>>> from secure_agg.he.keys import KeyHolder
>>> from secure_agg.he.params import select_params
>>> p = select_params(d=3, n=2, clip=1.0, weight_bound=2, precision_bits=8)
>>> c = HEClient(1, np.zeros(3), weight=1, params=p, context=KeyHolder(p).client_context(), round_id=0)
>>> len(c.encrypt_input()) > 1000
True
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.errors import MessageRejectedError, ProtocolAbortError
from secure_agg.he.keys import decrypt_chunks, encrypt_chunks, key_id, load_client_context
from secure_agg.he.messages import BROADCAST_ID, EncryptedAggregate, EncryptedInput
from secure_agg.he.packing import decode_mean, decode_sum, encode_update, pack
from secure_agg.he.params import HEParams
from secure_agg.messages import SERVER_ID

__all__ = ["HEClient", "HEClientResult", "open_aggregate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HEClientResult:
    """A decrypted aggregate: weighted mean, total weight, contributors, decoded sum."""

    mean: np.ndarray
    weight_sum: float
    contributors: tuple[int, ...]
    decoded_sum: np.ndarray


class HEClient:
    """Client role (see the module docstring).

    Parameters
    ----------
    client_id : int
        This client's id (1 .. 2^32 - 3).
    x : numpy.ndarray
        ``(d,)`` float update.
    weight : float
        Integer example count ``w``.
    params : HEParams
        Agreed parameters.
    context : bytes
        The serialised context from :meth:`KeyHolder.client_context` (or a public
        context with the public key, for an encrypt-only client).
    round_id : int
        Round bound into the message.
    signing_key : Ed25519PrivateKey, optional
        Signs the input (the server verifies it against the client's public key).
    public_context : bytes, optional
        The server's public context; its hash is the ``key_id`` the messages carry.
        Derived from ``context`` when omitted.
    server_key : Ed25519PublicKey, optional
        The server's verification key: the aggregate must carry its signature
        (stops a network attacker from altering it or replaying an older one).
    """

    def __init__(
        self,
        client_id: int,
        x: np.ndarray,
        *,
        weight: float,
        params: HEParams,
        context: bytes,
        round_id: int,
        signing_key: Ed25519PrivateKey | None = None,
        public_context: bytes | None = None,
        server_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.client_id = int(client_id)
        self.server_key = server_key
        self.params = params
        self.round_id = int(round_id)
        self.signing_key = signing_key
        self._values = encode_update(params, x, weight=weight)
        self._ctx = load_client_context(context)
        if public_context is None:
            public_context = self._ctx.serialize(save_public_key=True, save_secret_key=False,
                                                 save_galois_keys=False, save_relin_keys=False)
        self.key_id = key_id(public_context)
        self.result: HEClientResult | None = None
        self._sent = False

    def encrypt_input(self) -> bytes:
        """Encrypt the packed update: the :class:`EncryptedInput` wire bytes."""
        if self._sent:
            raise ProtocolAbortError(f"client {self.client_id} already sent its input in round {self.round_id}")
        cts = encrypt_chunks(self._ctx, self.params, pack(self._values, self.params.slots))
        msg = EncryptedInput(round_id=self.round_id, sender=self.client_id, receiver=SERVER_ID,
                             scheme=self.params.scheme, key_id=self.key_id, n_values=self.params.n_values,
                             ciphertexts=tuple(cts))
        if self.signing_key is not None:
            msg = replace(msg, auth=self.signing_key.sign(msg.signing_payload()))
        self._sent = True
        self._values = None  # the plaintext is no longer needed
        return msg.to_bytes()

    def handle(self, data: bytes) -> None:
        """Take the server's aggregate; decrypt it if this client holds the secret key.

        Raises
        ------
        ProtocolAbortError
            If the aggregate is malformed, for another round or key, leaves this
            client out although it sent its input, or decrypts outside the honest bounds.
        """
        if not self._ctx.has_secret_key():
            return
        self.result = open_aggregate(self._ctx, self.params, data, key_id=self.key_id, round_id=self.round_id,
                                     receiver=self.client_id, server_key=self.server_key)
        if self._sent and self.client_id not in self.result.contributors:
            logger.warning("client %d: its input is not in the aggregate", self.client_id)


def open_aggregate(
    ctx,
    params: HEParams,
    data: bytes,
    *,
    key_id: bytes,
    round_id: int,
    receiver: int = BROADCAST_ID,
    server_key: Ed25519PublicKey | None = None,
) -> HEClientResult:
    """Check, decrypt and decode an :class:`EncryptedAggregate` with a secret context.

    With ``server_key`` the aggregate must carry the server's Ed25519 signature
    (over the header with round and receiver, the contributors and the ciphertexts).

    Raises
    ------
    ProtocolAbortError
        If the aggregate is malformed, unsigned or badly signed (with ``server_key``),
        for another round, receiver, key, scheme or length, or decrypts outside the
        honest bounds (wrong key, corruption).
    """
    try:
        msg = EncryptedAggregate.from_bytes(data)
        if server_key is not None:
            try:
                server_key.verify(msg.auth, msg.signing_payload())
            except InvalidSignature:
                raise MessageRejectedError("the aggregate lacks a valid server signature") from None
        if msg.round_id != round_id or msg.sender != SERVER_ID or msg.receiver not in (BROADCAST_ID, receiver):
            raise MessageRejectedError(f"aggregate for round {msg.round_id} / receiver {msg.receiver}")
        if msg.key_id != key_id or msg.scheme != params.scheme or msg.n_values != params.n_values:
            raise MessageRejectedError("aggregate under another key, scheme or length")
        total = decrypt_chunks(ctx, params, list(msg.ciphertexts))
        decoded = decode_sum(params, total)
        mean, wsum = decode_mean(params, decoded, n_survivors=len(msg.contributors))
    except ValueError as e:  # WireFormatError, MessageRejectedError, HEDecryptionError, ...
        raise ProtocolAbortError(f"bad aggregate: {e}") from None
    return HEClientResult(mean=mean, weight_sum=wsum, contributors=msg.contributors, decoded_sum=decoded)

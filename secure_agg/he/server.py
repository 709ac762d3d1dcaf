"""The server role of HE aggregation: it can only add ciphertexts.

The server holds the public context (parameters and public key, no secret key:
it cannot decrypt). It accepts one :class:`~secure_agg.he.messages.EncryptedInput`
per client, checks it completely before it touches the running sum (round, stage,
addressee, known sender, scheme, ``key_id``, declared length, number of
ciphertexts, that every ciphertext deserialises under its context -- SEAL
rejects ciphertexts of other parameters and out-of-range data -- and holds exactly
the declared number of values, and the Ed25519 signature when clients
authenticate), then adds it chunk by chunk. A bad message *rejects* the client,
as if it had dropped: the sum of the others stays correct. A client beyond
``n_max`` is rejected too (the overflow and noise bounds hold only up to
``n_max`` summands). :meth:`HEServer.advance` closes the round and broadcasts the
ciphertext sum with the list of contributors; fewer than ``min_clients``
contributors abort (an aggregate of one client is that client's update).

Bookkeeping: a rejected client contributes nothing. If a client whose input is
already in the running sum is rejected later (a second, different input; a bad
message on its channel), its ciphertexts are subtracted again, so the sum and the
contributor list always agree; a rejected client stays out for the rest of the
round. The server keeps each accepted input's ciphertext bytes until the round
closes for that purpose. Messages after the round closed are ignored.

Threat model. Inputs are authenticated by default: the server refuses to start
without the clients' Ed25519 verification keys unless ``allow_unauthenticated``
is set, and signs the aggregate it broadcasts when given a ``signing_key``
(clients verify it, so a network attacker cannot alter it or replay an old one).
The server never holds the secret key, so it learns nothing about any input, but
it is not trusted for correctness: holding the public key, it can add an
encryption of any offset, drop contributors, or rebroadcast an older aggregate
under the same key; clients detect only results outside the honest bounds
(:func:`~secure_agg.he.client.open_aggregate`). Without authentication anyone on
the network can also replace, replay (with an edited header) or inject a
client's input, and an input can be attributed to the wrong client.

Examples
--------
>>> from secure_agg.he.params import select_params
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> vks = {u: Ed25519PrivateKey.generate().public_key() for u in (1, 2, 3)}
>>> s = HEServer(params=select_params(d=4, n=3, clip=1.0, weight_bound=3, precision_bits=8),
...              round_id=0, client_ids=[1, 2, 3], verify_keys=vks)
>>> s.state.name
'WAIT_CONTEXT'
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum, auto

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.errors import MessageRejectedError, ProtocolAbortError, SecAggConfigError, WireFormatError
from secure_agg.he.keys import key_id, load_server_context, load_vector
from secure_agg.he.messages import (
    BROADCAST_ID,
    KEY_HOLDER_ID,
    EncryptedAggregate,
    EncryptedInput,
    PublicContext,
    decode_he_message,
)
from secure_agg.he.params import HEParams
from secure_agg.messages import SERVER_ID

__all__ = ["HEServer", "HEServerResult", "HEServerState"]

logger = logging.getLogger(__name__)


class HEServerState(Enum):
    """Where the server is in the round."""

    WAIT_CONTEXT = auto()
    COLLECT_INPUTS = auto()
    DONE = auto()
    ABORTED = auto()


@dataclass
class HEServerResult:
    """What the server ends with: the ciphertext sum it broadcast and who is in it."""

    contributors: tuple[int, ...]
    aggregate: bytes
    rejected: dict[int, str] = field(default_factory=dict)


class HEServer:
    """Server role (see the module docstring).

    Parameters
    ----------
    params : HEParams
        Agreed parameters.
    round_id : int
        Round bound into every message.
    client_ids : iterable of int
        Clients allowed to contribute (ids 1 .. 2^32 - 3).
    min_clients : int
        Fewest contributors for which the sum is released.
    verify_keys : Mapping[int, Ed25519PublicKey], optional
        The clients' verification keys: every :class:`EncryptedInput` must carry
        its sender's signature. Required unless ``allow_unauthenticated``.
    allow_unauthenticated : bool
        Accept unsigned inputs (see the threat model above); ``verify_keys`` must then be ``None``.
    signing_key : Ed25519PrivateKey, optional
        Signs the broadcast aggregate (clients verify it with the public key).

    Raises
    ------
    SecAggConfigError
        On invalid ids or ``min_clients``, or without ``verify_keys`` unless
        ``allow_unauthenticated``.
    """

    def __init__(
        self,
        *,
        params: HEParams,
        round_id: int,
        client_ids: Iterable[int],
        min_clients: int = 2,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
        allow_unauthenticated: bool = False,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        if verify_keys is None and not allow_unauthenticated:
            raise SecAggConfigError(
                "HE inputs are authenticated by default: pass verify_keys (the clients' Ed25519 "
                "public keys) or allow_unauthenticated=True"
            )
        if verify_keys is not None and allow_unauthenticated:
            raise SecAggConfigError("allow_unauthenticated=True contradicts the verify_keys given")
        self.params = params
        self.round_id = int(round_id)
        self.client_ids = frozenset(int(u) for u in client_ids)
        bad = [u for u in self.client_ids if not 0 < u < BROADCAST_ID]
        if bad or not self.client_ids:
            raise SecAggConfigError(f"client ids must be in [1, 2^32 - 3], got {sorted(bad) or 'none'}")
        if not isinstance(min_clients, int) or min_clients < 1:
            raise SecAggConfigError(f"min_clients must be an int >= 1, got {min_clients!r}")
        self.min_clients = min_clients
        self.verify_keys = dict(verify_keys) if verify_keys is not None else None
        self.signing_key = signing_key
        self.state = HEServerState.WAIT_CONTEXT
        self._ctx = None
        self._key_id = b""
        self._acc: list = []
        self._accepted: dict[int, bytes] = {}  # sender -> digest of the accepted message
        self._stored: dict[int, tuple[bytes, ...]] = {}  # sender -> its ciphertexts in the sum
        self.rejected: dict[int, str] = {}
        self._result: HEServerResult | None = None
        self._sizes = [min(params.slots, params.n_values - i * params.slots) for i in range(params.n_ciphertexts)]

    @property
    def key_id(self) -> bytes:
        """SHA-256 name of the public context the server holds (empty before setup)."""
        return self._key_id

    def _reject(self, sender: int, reason: str) -> bool:
        logger.warning("HE server rejects client %d: %s", sender, reason)
        if sender in self._accepted:
            self._remove(sender)
        self.rejected.setdefault(sender, reason)
        return False

    def _remove(self, sender: int) -> None:
        """Take an accepted input out of the running sum (exact: ciphertext subtraction)."""
        cts = self._stored.pop(sender)
        del self._accepted[sender]
        if not self._accepted:
            self._acc = []
            return
        vecs = [load_vector(self._ctx, self.params, ct, size) for ct, size in zip(cts, self._sizes, strict=True)]
        for acc, v in zip(self._acc, vecs, strict=True):
            acc -= v
        logger.warning("HE server took the input of client %d out of the sum", sender)

    def receive(self, sender: int, data: bytes) -> bool:
        """Take one message from ``sender``; returns whether it was accepted.

        A bad client message rejects that client: it is left out of the sum, and
        taken out again if an earlier input of it was already added. A rejected
        client stays out; messages after the round closed are ignored. A bad
        public context raises :class:`WireFormatError` / :class:`MessageRejectedError`.
        """
        if sender != KEY_HOLDER_ID and self.state in (HEServerState.DONE, HEServerState.ABORTED):
            logger.info("HE server ignores a message from %d after the round closed", sender)
            return False
        try:
            msg = decode_he_message(data)
        except WireFormatError as e:
            if sender == KEY_HOLDER_ID:
                raise
            return self._reject(sender, str(e))
        if isinstance(msg, PublicContext):
            self._setup(sender, msg)
            return True
        if sender in self.rejected:
            return False
        if not isinstance(msg, EncryptedInput):
            return self._reject(sender, f"unexpected {type(msg).__name__} from a client")
        try:
            self._check(sender, msg)
        except (MessageRejectedError, WireFormatError) as e:
            return self._reject(sender, str(e))
        digest = hashlib.sha256(data).digest()
        if sender in self._accepted:
            if self._accepted[sender] == digest:
                return False  # identical duplicate: ignored
            return self._reject(sender, "second, different input in the same round")
        if len(self._accepted) >= self.params.n_max:
            return self._reject(sender, f"the round already holds n_max={self.params.n_max} inputs (overflow bound)")
        try:
            vecs = [load_vector(self._ctx, self.params, ct, size)
                    for ct, size in zip(msg.ciphertexts, self._sizes, strict=True)]
        except WireFormatError as e:
            return self._reject(sender, str(e))
        if not self._acc:
            self._acc = vecs
        else:
            for acc, v in zip(self._acc, vecs, strict=True):
                acc += v
        self._accepted[sender] = digest
        self._stored[sender] = msg.ciphertexts
        return True

    def _setup(self, sender: int, msg: PublicContext) -> None:
        if self.state is not HEServerState.WAIT_CONTEXT:
            raise MessageRejectedError(f"public context received in state {self.state.name}")
        if sender != KEY_HOLDER_ID or msg.sender != KEY_HOLDER_ID or msg.round_id != self.round_id:
            raise MessageRejectedError(
                f"public context must come from the key holder for round {self.round_id}, got sender {sender}, "
                f"round {msg.round_id}"
            )
        if msg.scheme != self.params.scheme:
            raise MessageRejectedError(f"public context is {msg.scheme}, the round uses {self.params.scheme}")
        if key_id(msg.context) != msg.key_id:
            raise MessageRejectedError("public context does not match its key_id")
        self._ctx = load_server_context(msg.context)
        self._key_id = msg.key_id
        self.state = HEServerState.COLLECT_INPUTS

    def _check(self, sender: int, msg: EncryptedInput) -> None:
        if self.state is not HEServerState.COLLECT_INPUTS:
            raise MessageRejectedError(f"input received in state {self.state.name}")
        if msg.round_id != self.round_id:
            raise MessageRejectedError(f"round {msg.round_id}, expected {self.round_id} (replay?)")
        if msg.sender != sender or sender not in self.client_ids:
            raise MessageRejectedError(f"sender {msg.sender} on the channel of {sender}, or an unknown client")
        if msg.receiver != SERVER_ID:
            raise MessageRejectedError(f"addressed to {msg.receiver}, not the server")
        if msg.scheme != self.params.scheme or msg.key_id != self._key_id:
            raise MessageRejectedError("ciphertexts under another scheme or key (key_id mismatch)")
        if msg.n_values != self.params.n_values:
            raise MessageRejectedError(f"declared {msg.n_values} values, the round has {self.params.n_values}")
        if len(msg.ciphertexts) != self.params.n_ciphertexts:
            raise MessageRejectedError(f"{len(msg.ciphertexts)} ciphertexts, expected {self.params.n_ciphertexts}")
        if self.verify_keys is not None:
            vk = self.verify_keys.get(sender)
            if vk is None or not msg.auth:
                raise MessageRejectedError("unsigned input while clients must authenticate")
            try:
                vk.verify(msg.auth, msg.signing_payload())
            except InvalidSignature:
                raise MessageRejectedError("bad signature") from None

    def advance(self) -> dict[int, bytes]:
        """Close the round: ``{client: aggregate bytes}`` for every contributor (one shared object).

        Raises
        ------
        ProtocolAbortError
            Before setup, or with fewer than ``min_clients`` contributors.
        """
        if self.state is not HEServerState.COLLECT_INPUTS:
            raise ProtocolAbortError(f"cannot close the round in state {self.state.name}")
        contributors = tuple(sorted(self._accepted))
        if len(contributors) < self.min_clients:
            self.state = HEServerState.ABORTED
            raise ProtocolAbortError(
                f"only {len(contributors)} accepted inputs, fewer than min_clients={self.min_clients}"
            )
        msg = EncryptedAggregate(
            round_id=self.round_id, sender=SERVER_ID, receiver=BROADCAST_ID, scheme=self.params.scheme,
            key_id=self._key_id, n_values=self.params.n_values, contributors=contributors,
            ciphertexts=tuple(v.serialize() for v in self._acc),
        )
        if self.signing_key is not None:
            msg = replace(msg, auth=self.signing_key.sign(msg.signing_payload()))
        data = msg.to_bytes()
        self._acc = []
        self._stored = {}
        self._result = HEServerResult(contributors=contributors, aggregate=data, rejected=dict(self.rejected))
        self.state = HEServerState.DONE
        return dict.fromkeys(contributors, data)

    def result(self) -> HEServerResult:
        """The broadcast sum; raises :class:`ProtocolAbortError` before the round is closed."""
        if self._result is None:
            raise ProtocolAbortError(f"no result in state {self.state.name}")
        return self._result

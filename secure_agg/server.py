"""The server role of SecAgg / SecAgg+ as an explicit state machine.

Implements the server of Bonawitz et al., CCS 2017 (Fig. 4) over the communication
graph of Bell et al., CCS 2020. The server collects one message per client and
stage (:meth:`SecAggServer.receive`), then closes the stage
(:meth:`SecAggServer.advance`), which checks that at least ``t`` clients are left
and returns the next stage's messages. The client sets are the paper's
``U1 >= U2 >= U3 >= U4 >= U5`` (keys, shares, masked inputs, consistency
signatures, unmasking shares).

A client message that is malformed, from another round, of the wrong stage,
addressed wrongly, unauthentic (bad MAC, or bad signature in the active setting)
or inconsistent is *rejected*: the sender is excluded from the round from that
stage on, exactly as if it had dropped there, so the sum of the others stays
correct.

View consistency. The server records exactly which shares it relayed to each
client (``relayed[u]``, the paper's ``U2`` as ``u`` sees it). A masked input is
accepted only if the peers it says it was masked with (``MaskedInput.masked_with``,
under the client's MAC or signature) are exactly ``relayed[u]``; otherwise the
input is refused and ``u`` counts as dropped before ``U3`` (its pairwise masks
are then removed from its neighbours' inputs with its reconstructed ``s_u^SK``,
its own input, still hidden by ``b_u``, is not used). So every survivor's pairs
with other survivors cancel and every pair with a non-survivor is removed: a
withheld or lost relay entry costs that client, never the sum. (A masked input
also names those peers, so unmasking uses exactly the pairs each survivor used,
and refuses with a reason if two survivors disagree.)

Model binding. The server relays each client's advertised model digest
(``AdvertiseKeys.model_digest``) with its keys; the clients compare them (see
:mod:`secure_agg.client`), so a server that equivocates on the model loses the
clients it lied to. In the active setting the digest is under the client's
signature, which the server checks like the keys.

A duplicate identical message is ignored. The final unmasking reconstructs ``b_u`` for every ``u in U3`` and
``s_v^SK`` for every ``v in U2 \\ U3`` (vectorised Lagrange interpolation, grouped
by share-holder set), checks them against the commitment ``H(b_u)`` and the
advertised ``s_v^PK``, and removes the masks. Anything that cannot be done
correctly raises :class:`~secure_agg.errors.ProtocolAbortError`: never a wrong sum.

Examples
--------
>>> import numpy as np
>>> from secure_agg.graph import CommunicationGraph
>>> from secure_agg.params import SecAggParams
>>> g = CommunicationGraph.complete([1, 2, 3])
>>> s = SecAggServer(params=SecAggParams(round_id=0, t=2, d=3), graph=g,
...                  channel_keys={u: bytes(32) for u in g.ids})
>>> s.state.name
'COLLECT_KEYS'
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import secure_agg.crypto as crypto
from secure_agg.client import PAIR_MASK_PURPOSE, SELF_MASK_PURPOSE, advertise_payload
from secure_agg.errors import (
    MessageRejectedError,
    ProtocolAbortError,
    SecAggConfigError,
    SecAggError,
)
from secure_agg.graph import CommunicationGraph
from secure_agg.messages import (
    SERVER_ID,
    AdvertiseKeys,
    ConsistencySignature,
    KeyBroadcast,
    KeyEntry,
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
from secure_agg.shamir import N_LIMBS, PRIME, limbs_to_secret, reconstruct_limbs

__all__ = ["SecAggServer", "ServerResult", "ServerState"]

logger = logging.getLogger(__name__)


def _channel_keys(
    params: SecAggParams, graph: CommunicationGraph, channel_keys: Mapping[int, bytes] | None
) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Per-client upstream and downstream MAC keys of the round (authenticated channels)."""
    keys = dict(channel_keys or {})
    missing = [u for u in graph.ids if u not in keys]
    if missing:
        raise SecAggConfigError(
            f"authenticated channels need the channel key of every client; missing {missing} "
            f"(or params.authenticated=False when the transport authenticates every message)"
        )
    up, down = {}, {}
    for u in graph.ids:
        k = keys[u]
        if not isinstance(k, bytes) or len(k) != crypto.CHANNEL_KEY_BYTES:
            raise SecAggConfigError(
                f"channel key of client {u} must be {crypto.CHANNEL_KEY_BYTES} bytes"
            )
        up[u] = crypto.channel_mac_key(k, round_id=params.round_id, client_id=u, upstream=True)
        down[u] = crypto.channel_mac_key(k, round_id=params.round_id, client_id=u, upstream=False)
    return up, down


class ServerState(Enum):
    """Which messages the server is collecting."""

    COLLECT_KEYS = auto()
    COLLECT_SHARES = auto()
    COLLECT_INPUTS = auto()
    COLLECT_SIGNATURES = auto()
    COLLECT_UNMASK = auto()
    DONE = auto()
    ABORTED = auto()


_EXPECTED: dict[ServerState, type[Message]] = {
    ServerState.COLLECT_KEYS: AdvertiseKeys,
    ServerState.COLLECT_SHARES: ShareKeys,
    ServerState.COLLECT_INPUTS: MaskedInput,
    ServerState.COLLECT_SIGNATURES: ConsistencySignature,
    ServerState.COLLECT_UNMASK: UnmaskShares,
}


@dataclass(frozen=True)
class ServerResult:
    """Outcome of a finished round.

    Attributes
    ----------
    sum : numpy.ndarray
        ``(d,)`` ring words: ``sum_{u in U3} x_u`` mod ``2^b``.
    survivors : tuple of int
        ``U3``: the clients whose inputs are in the sum.
    sets : dict of str to tuple of int
        ``U1`` .. ``U5`` as named stages.
    rejected : dict of int to str
        Clients excluded for a bad message, with the reason.
    n_masks_removed : int
        Keystreams the server expanded (self-masks plus pairwise masks of dropouts).
    """

    sum: np.ndarray
    survivors: tuple[int, ...]
    sets: dict[str, tuple[int, ...]]
    rejected: dict[int, str] = field(default_factory=dict)
    n_masks_removed: int = 0


class SecAggServer:
    """The server of one SecAgg(+) round.

    Parameters
    ----------
    params : SecAggParams
        Public round parameters.
    graph : CommunicationGraph
        Who is neighbour of whom (complete for SecAgg).
    verify_keys : Mapping[int, Ed25519PublicKey], optional
        Clients' verification keys; required when ``params.active``.
    channel_keys : Mapping[int, bytes], optional
        The 32-byte channel key of every client; required when
        ``params.authenticated`` (the default).

    Raises
    ------
    SecAggConfigError
        If ``t`` is not in ``((k + 1) / 2, k + 1]`` (see
        :meth:`~secure_agg.params.SecAggParams.check_threshold`) or keys are missing.
    """

    def __init__(
        self,
        *,
        params: SecAggParams,
        graph: CommunicationGraph,
        verify_keys: Mapping[int, Ed25519PublicKey] | None = None,
        channel_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        params.check_threshold(holders=graph.k + 1)
        if params.active and verify_keys is None:
            raise SecAggConfigError("the active setting needs verify_keys")
        self._mac_up: dict[int, bytes] = {}
        self._mac_down: dict[int, bytes] = {}
        if params.authenticated:
            self._mac_up, self._mac_down = _channel_keys(params, graph, channel_keys)
        self.params = params
        self.graph = graph
        self._vk = dict(verify_keys or {})
        self.state = ServerState.COLLECT_KEYS
        self.abort_reason: str | None = None
        self.rejected: dict[int, str] = {}
        self._inbox: dict[int, tuple[bytes, Message]] = {}
        self._sets: dict[str, frozenset[int]] = {"U0": frozenset(graph.ids)}
        self._keys: dict[int, AdvertiseKeys] = {}
        self._shares: dict[int, ShareKeys] = {}
        self._inputs: dict[int, np.ndarray] = {}
        self._sigs: dict[int, bytes] = {}
        self._unmask: dict[int, UnmaskShares] = {}
        self._result: ServerResult | None = None
        self._relayed: dict[int, frozenset[int]] = {}
        self._masked_with: dict[int, frozenset[int]] = {}

    # ------------------------------------------------------------------ receiving
    def _allowed(self) -> frozenset[int]:
        order = ["U0", "U1", "U2", "U3", "U4"]
        last = [s for s in order if s in self._sets][-1]
        return self._sets[last] - frozenset(self.rejected)

    def _reject(self, sender: int, reason: str) -> bool:
        if sender in self.graph.neighbours:
            self.rejected.setdefault(sender, reason)
            self._inbox.pop(sender, None)
        logger.info("server rejects a message from client %s: %s", sender, reason)
        return False

    def receive(self, sender: int, data: bytes) -> bool:
        """Accept one client message arriving on ``sender``'s channel.

        Returns ``True`` if accepted. A bad message never raises: the sender is
        excluded (see :attr:`rejected`) and ``False`` is returned.
        """
        if self.state in (ServerState.DONE, ServerState.ABORTED):
            return self._reject(sender, f"message after the round ended ({self.state.name})")
        if sender in self.rejected:
            return False
        if sender not in self._allowed():
            return self._reject(sender, f"client {sender} is not expected in {self.state.name}")
        if sender in self._inbox:
            if self._inbox[sender][0] == bytes(data):
                return False  # retransmission of the same message
            return self._reject(sender, "two different messages in one stage")
        try:
            msg = decode_message(data)
            self._check(sender, msg, data)
        except SecAggError as e:
            return self._reject(sender, str(e))
        self._inbox[sender] = (bytes(data), msg)
        return True

    def _check(self, sender: int, msg: Message, data: bytes) -> None:
        p = self.params
        if msg.round_id != p.round_id:
            raise MessageRejectedError(
                f"message for round {msg.round_id}, this is round {p.round_id}"
            )
        if msg.sender != sender or msg.receiver != SERVER_ID:
            raise MessageRejectedError(
                f"message from {msg.sender} to {msg.receiver} on client {sender}'s channel"
            )
        expected = _EXPECTED.get(self.state)
        if expected is None or not isinstance(msg, expected):
            raise MessageRejectedError(f"out-of-order {type(msg).__name__} in {self.state.name}")
        if p.active:
            vk = self._vk.get(sender)
            if vk is None:
                raise MessageRejectedError(f"no verification key for client {sender}")
            crypto.verify(vk, msg.auth, msg.signing_payload(), what=f"message of client {sender}")
        elif p.authenticated:
            crypto.verify_mac(
                self._mac_up[sender], msg.auth, *signed_part(data, len(msg.auth)),
                what=f"message of client {sender}",
            )
        if isinstance(msg, AdvertiseKeys):
            if p.active:
                payload = advertise_payload(p.round_id, sender, msg.c_pk, msg.s_pk, msg.model_digest)
                crypto.verify(
                    self._vk[sender], msg.signature, payload, what=f"keys of client {sender}"
                )
            crypto.check_public_key(msg.c_pk, what=f"c_pk of client {sender}")
            crypto.check_public_key(msg.s_pk, what=f"s_pk of client {sender}")
        elif isinstance(msg, ShareKeys):
            want = self.graph.neighbours[sender] & self._sets["U1"]
            got = [v for v, _ in msg.ciphertexts]
            if set(got) != want:
                raise MessageRejectedError(
                    f"shares addressed to {sorted(got)}, expected {sorted(want)}"
                )
        elif isinstance(msg, MaskedInput):
            if msg.ring_bits != p.ring_bits or msg.y.size != p.d:
                raise MessageRejectedError(
                    f"masked input with ring_bits={msg.ring_bits}, d={msg.y.size}; "
                    f"expected {p.ring_bits}, {p.d}"
                )
            relayed = self._relayed.get(sender, frozenset())
            if frozenset(msg.masked_with) != relayed:
                raise MessageRejectedError(
                    f"inconsistent view of U2: masked with {sorted(msg.masked_with)}, but the "
                    f"server relayed shares from {sorted(relayed)}"
                )
        elif isinstance(msg, ConsistencySignature):
            payload = crypto.consistency_payload(p.round_id, self._sets["U3"])
            crypto.verify(self._vk[sender], msg.signature, payload, what=f"U3 signed by {sender}")
        elif isinstance(msg, UnmaskShares):
            u3 = self._sets["U3"]
            holds = self._relayed[sender] | {sender}
            for owner, kind, share in msg.shares:
                if (np.frombuffer(share, dtype="<u4") >= PRIME).any():
                    raise MessageRejectedError(
                        f"share of client {owner} has an element outside GF(2^31 - 1)"
                    )
                if owner not in holds:
                    raise MessageRejectedError(
                        f"share of client {owner}, which {sender} does not hold"
                    )
                want_kind = ShareKind.SELF_MASK if owner in u3 else ShareKind.MASK_KEY
                if kind != want_kind:
                    raise MessageRejectedError(
                        f"{kind.name} share of client {owner}; expected {want_kind.name}"
                    )

    # ------------------------------------------------------------------ advancing
    def _close(self, name: str, inbox: Mapping[int, Message]) -> frozenset[int]:
        got = frozenset(inbox)
        if len(got) < self.params.t:
            self._fail(
                f"only {len(got)} clients completed {self.state.name} "
                f"(threshold t={self.params.t}); rejected: {self.rejected or 'none'}"
            )
        self._sets[name] = got
        return got

    def _fail(self, reason: str) -> None:
        self.state = ServerState.ABORTED
        self.abort_reason = reason
        logger.warning("server aborts round %d: %s", self.params.round_id, reason)
        raise ProtocolAbortError(reason)

    def _send(self, msg_cls: type[Message], receiver: int, **fields: object) -> bytes:
        unsigned = msg_cls(
            round_id=self.params.round_id, sender=SERVER_ID, receiver=receiver, **fields
        ).to_bytes()
        if not self.params.authenticated:
            return unsigned
        return with_auth(unsigned, crypto.mac(self._mac_down[receiver], unsigned))

    def advance(self) -> dict[int, bytes]:
        """Close the current stage and return the encoded messages of the next, per client.

        Raises
        ------
        ProtocolAbortError
            If fewer than ``t`` clients completed the stage, or the final unmasking
            cannot reconstruct or verify a secret.
        """
        st = self.state
        if st in (ServerState.DONE, ServerState.ABORTED):
            raise ProtocolAbortError(f"advance called in state {st.name}")
        inbox = {u: m for u, (_, m) in self._inbox.items() if u not in self.rejected}
        self._inbox = {}
        return self._CLOSE_STAGE[st](self, inbox)

    def _close_keys(self, inbox: dict[int, Message]) -> dict[int, bytes]:
        """Round 0 -> 1: fix U1 and send each client its neighbours' public keys and model digests."""
        u1 = self._close("U1", inbox)
        self._keys = {u: inbox[u] for u in u1}  # type: ignore[misc]
        out: dict[int, bytes] = {}
        for u in sorted(u1):
            entries = tuple(
                KeyEntry(
                    v, self._keys[v].c_pk, self._keys[v].s_pk, self._keys[v].signature,
                    self._keys[v].model_digest,
                )
                for v in sorted(self.graph.neighbours[u] & u1)
            )
            out[u] = self._send(KeyBroadcast, u, entries=entries)
        self.state = ServerState.COLLECT_SHARES
        return out

    def _close_shares(self, inbox: dict[int, Message]) -> dict[int, bytes]:
        """Round 1 -> 2: fix U2 and relay to each client the encrypted shares addressed to it."""
        u2 = self._close("U2", inbox)
        self._shares = {u: inbox[u] for u in u2}  # type: ignore[misc]
        relay: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for u in sorted(u2):
            for v, ct in self._shares[u].ciphertexts:
                if v in u2:
                    relay[v].append((u, ct))
        out: dict[int, bytes] = {}
        for v in sorted(u2):
            self._relayed[v] = frozenset(u for u, _ in relay[v])
            out[v] = self._send(ShareRelay, v, ciphertexts=tuple(relay[v]))
        self.state = ServerState.COLLECT_INPUTS
        return out

    def _close_inputs(self, inbox: dict[int, Message]) -> dict[int, bytes]:
        """Round 2 -> 3: fix U3 (the survivors) and announce it; in the passive setting U4 = U3."""
        u3 = self._close("U3", inbox)
        self._inputs = {u: inbox[u].y for u in u3}  # type: ignore[attr-defined]
        self._masked_with = {u: frozenset(inbox[u].masked_with) for u in u3}  # type: ignore[attr-defined]
        survivors = tuple(sorted(u3))
        out = {u: self._send(SurvivorList, u, survivors=survivors) for u in survivors}
        self.state = ServerState.COLLECT_SIGNATURES if self.params.active else ServerState.COLLECT_UNMASK
        if not self.params.active:
            self._sets["U4"] = u3
        return out

    def _close_signatures(self, inbox: dict[int, Message]) -> dict[int, bytes]:
        """Round 3 -> 4 (active setting): fix U4 and send each client its neighbours' signatures of U3."""
        u4 = self._close("U4", inbox)
        self._sigs = {u: inbox[u].signature for u in u4}  # type: ignore[attr-defined]
        out: dict[int, bytes] = {}
        for u in sorted(u4):
            sigs = tuple((v, self._sigs[v]) for v in sorted(self.graph.neighbours[u] & u4))
            out[u] = self._send(SignatureBroadcast, u, signatures=sigs)
        self.state = ServerState.COLLECT_UNMASK
        return out

    def _close_unmask(self, inbox: dict[int, Message]) -> dict[int, bytes]:
        """Round 4 -> done: fix U5, reconstruct the secrets and unmask the sum; nothing more to send."""
        u5 = self._close("U5", inbox)
        self._unmask = {u: inbox[u] for u in u5}  # type: ignore[misc]
        try:
            self._result = self._finish()
        except ProtocolAbortError:
            raise
        except SecAggError as e:  # backstop: no other error leaves a live server
            self._fail(f"unmasking failed: {e}")
        self.state = ServerState.DONE
        return {}

    #: What :meth:`advance` does in each collecting state.
    _CLOSE_STAGE: ClassVar[dict[ServerState, Callable[[SecAggServer, dict[int, Message]], dict[int, bytes]]]] = {
        ServerState.COLLECT_KEYS: _close_keys,
        ServerState.COLLECT_SHARES: _close_shares,
        ServerState.COLLECT_INPUTS: _close_inputs,
        ServerState.COLLECT_SIGNATURES: _close_signatures,
        ServerState.COLLECT_UNMASK: _close_unmask,
    }

    # ------------------------------------------------------------------ unmasking
    def _reconstruct(self, wanted: dict[int, ShareKind]) -> dict[int, bytes]:
        """Reconstruct the secrets ``owner -> kind`` from the U5 shares, batched by holder set."""
        t = self.params.t
        pool: dict[int, dict[int, bytes]] = defaultdict(dict)
        for holder, msg in self._unmask.items():
            for owner, kind, share in msg.shares:
                if wanted.get(owner) == kind:
                    pool[owner][holder] = share
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for owner, kind in wanted.items():
            have = pool.get(owner, {})
            if len(have) < t:
                self._fail(
                    f"only {len(have)} shares of the {kind.name} of client {owner} arrived "
                    f"(threshold t={t})"
                )
            groups[tuple(sorted(have)[:t])].append(owner)
        out: dict[int, bytes] = {}
        for xs, owners in groups.items():
            ys = np.empty((t, len(owners), N_LIMBS), dtype=np.uint64)
            for j, owner in enumerate(owners):
                for i, x in enumerate(xs):
                    ys[i, j] = np.frombuffer(pool[owner][x], dtype="<u4")
            try:
                limbs = reconstruct_limbs(xs, ys)
            except SecAggError as e:
                self._fail(f"cannot reconstruct the secrets of clients {owners}: {e}")
            for j, owner in enumerate(owners):
                try:
                    out[owner] = limbs_to_secret(limbs[j])
                except SecAggError:
                    self._fail(
                        f"shares of the {wanted[owner].name} of client {owner} are inconsistent"
                    )
        return out

    def _finish(self) -> ServerResult:
        p = self.params
        u3 = self._sets["U3"]
        mw = self._masked_with
        for u in u3:  # pairs inside U3 must cancel: both ends masked with each other
            for v in mw[u] & u3:
                if u not in mw[v]:
                    self._fail(f"clients {u} and {v} disagree on whether they masked together")
        dropped = set().union(*(mw[u] - u3 for u in u3))
        wanted = {u: ShareKind.SELF_MASK for u in u3} | {v: ShareKind.MASK_KEY for v in dropped}
        secrets = self._reconstruct(wanted)
        acc = MaskAccumulator(p.d, p.dtype)
        total = acc.value
        for u in sorted(u3):
            np.add(total, self._inputs[u], out=total)
        n_masks = 0
        for u in sorted(u3):
            b = secrets[u]
            if crypto.b_commitment(p.round_id, u, b) != self._shares[u].b_commitment:
                self._fail(
                    f"reconstructed self-mask seed of client {u} does not match its commitment"
                )
            acc.subtract(derive_key(b, purpose=SELF_MASK_PURPOSE, round_id=p.round_id, a=u, b=u))
            n_masks += 1
        for v in sorted(dropped):
            sk = X25519PrivateKey.from_private_bytes(secrets[v])
            if crypto.public_bytes(sk) != self._keys[v].s_pk:
                self._fail(f"reconstructed mask key of client {v} does not match its public key")
            for u in sorted(u for u in u3 if v in mw[u]):
                key = crypto.pair_key(
                    sk, self._keys[u].s_pk, purpose=PAIR_MASK_PURPOSE, round_id=p.round_id, u=v, v=u
                )
                # u added +PRG if u > v and -PRG if u < v: undo it
                if u > v:
                    acc.subtract(key)
                else:
                    acc.add(key)
                n_masks += 1
        total = p.reduce(acc.value)
        sets = {k: tuple(sorted(v)) for k, v in self._sets.items() if k != "U0"}
        return ServerResult(total, tuple(sorted(u3)), sets, dict(self.rejected), n_masks)

    def result(self) -> ServerResult:
        """The result of a finished round; raises if the round is not done."""
        if self._result is None:
            raise ProtocolAbortError(
                f"no result: the round is in state {self.state.name}"
                + (f" ({self.abort_reason})" if self.abort_reason else "")
            )
        return self._result

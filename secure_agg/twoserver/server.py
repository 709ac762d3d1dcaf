"""The server role of the two-server protocol: an explicit state machine.

Stages, in order (a call out of order raises :class:`~secure_agg.errors.MessageRejectedError`)::

    COLLECT   receive_triples (offline), receive_client (one sealed share per client)
    AGREE     survivors_frame -> agree(peer's Survivors): the clients both servers hold, same weight
    OPEN      openings_frame -> receive_openings(peer's Openings): E = X - A opened per triple
    VALIDATE  validation_frame -> receive_validation: coarse-to-exact squared norms opened, clients checked
    GEOMETRY  geometry_frame -> receive_geometry: the rule's inner products opened, the rule decides
    COMBINE   aggregate_frame -> finish(peer's AggregateShare): the aggregate opened

What is opened (each server sees it): the masked matrices ``E`` (uniform, independent of
the updates), every client's squared norm at each validation level, then, for the
accepted clients only, the inner products the rule declares (:class:`~fl_core.geometry.Needs`),
and the aggregate. Nothing else.

Beaver products (Beaver, CRYPTO 1991) with the dealer's masks ``A = A_0 + A_1``:
``X X^T = (E + A)(E + A)^T``; S0 computes ``(E + A_0)(E + A_0)^T - A_0 A_0^T + C_0`` (one
symmetric ring product online, ``A_0 A_0^T`` offline), S1 ``E A_1^T + A_1 E^T + C_1``
(one general product). A norm triple is the same with row sums of squares.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch

from fl_core.aggregation import Aggregator, RoundContext
from fl_core.errors import FlsecError
from fl_core.geometry import Decision, Geometry, Needs
from secure_agg.errors import MessageRejectedError, ProtocolAbortError, WireFormatError
from secure_agg.twoserver.client import CLIENT_PURPOSE, input_key
from secure_agg.twoserver.dealer import DEALER_PURPOSE, MaskStream, product_share
from secure_agg.twoserver.messages import (
    AggregateShare,
    ClientSeed,
    ClientVector,
    Openings,
    Scalars,
    Survivors,
    Triples,
    seal,
    unseal,
)
from secure_agg.twoserver.params import (
    DEALER,
    GRAM_BITS,
    GRAM_TAG,
    SEED_BYTES,
    SERVERS,
    Party,
    TwoServerParams,
    keystream_words,
)
from secure_agg.twoserver.ring import (
    BLOCK,
    U64,
    GramAccumulator,
    column_blocks,
    encode,
    reduce62,
    row_sums,
    truncate,
)

__all__ = ["ServerOutcome", "ShareServer", "Stage", "decision_digest", "online_steps", "triple_tags"]

logger = logging.getLogger(__name__)
PEER_PURPOSE = b"2s-peer"
#: Why a client is out when only the other server holds its share.
MISSING_SHARE = "its share did not reach both servers"


class Stage(IntEnum):
    COLLECT = 0
    AGREE = 1
    OPEN = 2
    VALIDATE = 3
    GEOMETRY = 4
    COMBINE = 5
    DONE = 6


def triple_tags(params: TwoServerParams, needs: Needs) -> tuple[int, ...]:
    """The triples a round needs: one per coarse level, then the exact norms or the Gram matrix."""
    return (*params.levels, GRAM_TAG if needs >= Needs.GRAM else 0)


@dataclass
class ServerOutcome:
    """What a server ends a round with.

    Attributes
    ----------
    aggregate : np.ndarray
        ``(d,)`` float64 opened aggregate (noise included).
    cohort : tuple of int
        The clients both servers held, in row order.
    accepted : np.ndarray
        ``(len(cohort),)`` bool: passed the norm validation.
    decision : Decision
        The rule's decision over the accepted clients.
    dropped : dict
        Client id to the reason its message was refused or missing.
    rejected : dict
        Client id to the validation level (truncation ``t``) it failed.
    opened : dict
        Every value this server saw opened besides the masked matrices, by name.
    """

    aggregate: np.ndarray
    cohort: tuple[int, ...]
    accepted: np.ndarray
    decision: Decision
    dropped: dict[int, str]
    rejected: dict[int, int]
    opened: dict[str, np.ndarray] = field(default_factory=dict)


class ShareServer:
    """Server ``index`` (0 or 1) of one round.

    Parameters
    ----------
    index : int
        0 (receives seeds) or 1 (receives vectors).
    party : Party
        This server's key.
    peer_public, dealer_public : bytes
        The other server's and the dealer's X25519 public keys.
    client_publics : dict
        Public key of every client sampled this round.
    round_id : int
        The round; bound into every key and frame.
    params : TwoServerParams
        Fixed point and validation.
    rule : Aggregator
        A :class:`~fl_core.geometry.GeometricRule`; both servers run its ``decide`` on the
        same opened values, so they take the same decision.
    ctx : RoundContext or None
        Passed to the rule (references, e.g. FLTrust's ``g0``).
    noise : np.random.Generator
        This server's own generator for its half of the rule's noise.
    rejected_are_byzantine : bool
        Count the clients rejected for their norm among the rule's ``f`` (the rule then
        decides with ``f - rejected``, :meth:`~fl_core.geometry.GeometricRule.excluding`):
        right when ``bound`` is above every honest norm, as the protocol assumes.
    references : np.ndarray, optional
        ``(r, d)`` public reference vectors to use instead of ``rule.references(d, ctx)``
        (S1 in another process gets S0's, e.g. FLTrust's root update).
    """

    def __init__(self, *, index: int, party: Party, peer_public: bytes, dealer_public: bytes,
                 client_publics: dict[int, bytes], round_id: int, params: TwoServerParams, rule: Aggregator,
                 ctx: RoundContext | None, noise: np.random.Generator, rejected_are_byzantine: bool = True,
                 references: np.ndarray | None = None) -> None:
        self.index, self.party, self.params, self.rule, self.ctx = index, party, params, rule, ctx
        self._given_refs = references
        self.rejected_are_byzantine = rejected_are_byzantine
        self.peer = SERVERS[1 - index]
        self.round_id, self.noise = round_id, noise
        self._peer_key = party.key_with(peer_public, self.peer, purpose=PEER_PURPOSE, round_id=round_id)
        self._dealer_key = party.key_with(dealer_public, DEALER, purpose=DEALER_PURPOSE, round_id=round_id)
        self._client_publics = dict(client_publics)
        self.needs: Needs = rule.geometry_needs()  # type: ignore[attr-defined]
        self.tags = triple_tags(params, self.needs)
        self.stage = Stage.COLLECT
        self.dropped: dict[int, str] = {}
        self._inputs: dict[int, tuple[float, object]] = {}
        self._triples: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        self._self_products: dict[int, np.ndarray] = {}
        self._sent = self._received = 0
        self.online_seconds = self.offline_seconds = 0.0
        self.opened: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------- plumbing
    def _expect(self, *stages: Stage) -> None:
        if self.stage not in stages:
            raise MessageRejectedError(f"server {self.index}: call at stage {self.stage.name}, expected "
                                       f"{' or '.join(s.name for s in stages)}")

    def _send(self, msg: object) -> bytes:
        frame = seal(msg, self._peer_key, round_id=self.round_id, sender=self.party.ident,  # type: ignore[arg-type]
                     receiver=self.peer, seq=self._sent)
        self._sent += 1
        return frame

    def _recv(self, frame: bytes, expect: type, into: np.ndarray | None = None) -> object:
        try:
            msg = unseal(frame, self._peer_key, expect, round_id=self.round_id, sender=self.peer,
                         receiver=self.party.ident, seq=self._received, into=into)
        except (MessageRejectedError, WireFormatError) as e:
            what = f"server {self.index}: the other server's {expect.__name__}"
            raise ProtocolAbortError(f"{what} was refused ({e})") from e
        self._received += 1
        return msg

    def _timed(self, offline: bool = False):
        server = self

        class _Clock:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t
                if offline:
                    server.offline_seconds += dt
                else:
                    server.online_seconds += dt
        return _Clock()

    # ---------------------------------------------------------------- COLLECT
    def receive_triples(self, frame: bytes) -> None:
        """The dealer's frame (offline): expand the masks and precompute what does not depend on inputs."""
        self._expect(Stage.COLLECT)
        with self._timed(offline=True):
            try:
                msg = unseal(frame, self._dealer_key, Triples, round_id=self.round_id, sender=DEALER,
                             receiver=self.party.ident, seq=0)
            except (MessageRejectedError, WireFormatError) as e:
                raise ProtocolAbortError(f"server {self.index}: the dealer's triples were refused ({e})") from e
            self._load_triples(msg)

    def _load_triples(self, msg: Triples) -> None:
        if msg.tags != self.tags or msg.d != self.params.d:
            raise ProtocolAbortError(f"server {self.index}: triples {msg.tags} for d={msg.d}, expected {self.tags} "
                                     f"for d={self.params.d}")
        n, rnd = len(msg.ids), self.round_id
        per = 2 if self.index == 0 else 1
        if len(msg.seeds) != SEED_BYTES * per * len(self.tags):
            raise ProtocolAbortError(f"server {self.index}: dealer sent {len(msg.seeds)} seed bytes")
        sizes = [n * n if t == GRAM_TAG else n for t in self.tags]
        if self.index == 1 and msg.corrections.shape != (sum(sizes),):
            raise ProtocolAbortError(f"server 1: dealer corrections of shape {msg.corrections.shape}")
        self._triple_ids = msg.ids
        self._triples, offset = {}, 0
        for k, tag in enumerate(self.tags):
            seed = msg.seeds[SEED_BYTES * per * k: SEED_BYTES * (per * k + 1)]
            stream = MaskStream(seed, round_id=rnd, tag=tag, n=n)
            if self.index == 0:
                c = product_share(msg.seeds[SEED_BYTES * (2 * k + 1): SEED_BYTES * (2 * k + 2)], round_id=rnd,
                                  tag=tag, n=n)
                self._self_products[tag] = self._self_product(stream, tag, n)
            else:
                c = msg.corrections[offset: offset + sizes[k]]
                c = c.reshape(n, n) if tag == GRAM_TAG else c
            offset += sizes[k]
            self._triples[tag] = (stream, c)

    def _self_product(self, stream: MaskStream, tag: int, n: int) -> np.ndarray:
        """S0's ``rowsum(A_0 * A_0)`` or ``A_0 A_0^T`` over every sampled row (input-independent: offline)."""
        gram = GramAccumulator(n, n, bits=GRAM_BITS) if tag == GRAM_TAG else None
        sums = np.zeros(n, dtype=U64)
        for cols in column_blocks(self.params.d):
            a = stream.block(range(n), cols)
            if gram is not None:
                gram.add(a)
            else:
                sums += row_sums(a * a)
        return gram.out if gram is not None else sums

    def receive_client(self, client_id: int, frame: bytes) -> None:
        """One client's sealed share; a refused, duplicate or replayed frame drops that client."""
        self._expect(Stage.COLLECT)
        with self._timed():
            if client_id not in self._client_publics:
                raise MessageRejectedError(f"server {self.index}: client {client_id} was not sampled this round")
            if client_id in self._inputs or client_id in self.dropped:
                self._inputs.pop(client_id, None)
                self.dropped[client_id] = "a second message in one round (replayed or equivocating)"
                return
            try:
                self._inputs[client_id] = self._open_client(client_id, frame)
            except (MessageRejectedError, WireFormatError) as e:
                self.dropped[client_id] = str(e)

    def _open_client(self, client_id: int, frame: bytes) -> tuple[float, object]:
        key = self.party.key_with(self._client_publics[client_id], client_id, purpose=CLIENT_PURPOSE,
                                  round_id=self.round_id)
        expect = ClientSeed if self.index == 0 else ClientVector
        msg = unseal(frame, key, expect, round_id=self.round_id, sender=client_id, receiver=self.party.ident, seq=0)
        if not (math.isfinite(msg.weight) and msg.weight > 0):
            raise MessageRejectedError(f"client {client_id}: weight {msg.weight} is not a finite number > 0")
        if self.index == 0:
            if len(msg.seed) != SEED_BYTES:
                raise WireFormatError(f"client {client_id}: seed of {len(msg.seed)} bytes")
            return msg.weight, msg.seed
        if msg.share.shape != (self.params.d,):
            raise WireFormatError(f"client {client_id}: share of shape {msg.share.shape}, expected ({self.params.d},)")
        return msg.weight, msg.share

    # ---------------------------------------------------------------- AGREE
    def survivors_frame(self) -> bytes:
        """The clients this server holds, with their declared weights."""
        self._expect(Stage.COLLECT)
        if self._triples is None:
            raise ProtocolAbortError(f"server {self.index}: no triples from the dealer")
        self.stage = Stage.AGREE
        ids = tuple(sorted(self._inputs))
        return self._send(Survivors(ids=ids, weights=tuple(self._inputs[i][0] for i in ids)))

    def agree(self, frame: bytes) -> None:
        """Keep the clients both servers hold with the same weight; build this server's share matrix."""
        self._expect(Stage.AGREE)
        with self._timed():
            peer = self._recv(frame, Survivors)
            theirs = dict(zip(peer.ids, peer.weights, strict=True))  # type: ignore[attr-defined]
            for cid in set(self._inputs) ^ set(theirs):
                self.dropped.setdefault(cid, MISSING_SHARE)
            cohort = []
            for cid in sorted(set(self._inputs) & set(theirs)):
                if theirs[cid] != self._inputs[cid][0]:
                    self.dropped[cid] = (f"declared weight {self._inputs[cid][0]} to one server, "
                                         f"{theirs[cid]} to the other")
                elif cid not in self._triple_ids:
                    self.dropped[cid] = "no triple for this client"
                else:
                    cohort.append(cid)
            self.cohort = tuple(cohort)
            self.weights = np.array([self._inputs[c][0] for c in cohort], dtype=np.float64)
            rows = [self._triple_ids.index(c) for c in cohort]
            self._rows = np.asarray(rows, dtype=np.int64)
            self._hold_inputs()
            self._tag_pos, self._blk, self._own_E, self._mask = 0, 0, None, None
            self._cols = column_blocks(self.params.d)
            self._acc: GramAccumulator | None = None
            self._sums: np.ndarray | None = None
            self._norm_shares, self._gram_share = [], None
            self.stage = Stage.OPEN

    def _hold_inputs(self) -> None:
        """S1 stacks the cohort's vectors; S0 keeps one keystream key per client (its rows are regenerated)."""
        if self.index == 0:
            self._input_keys = [input_key(self._inputs[c][1], round_id=self.round_id, client_id=c)  # type: ignore
                                for c in self.cohort]
        else:
            self.X = np.empty((len(self.cohort), self.params.d), dtype=U64)
            for r, cid in enumerate(self.cohort):
                self.X[r] = self._inputs[cid][1]
        self._inputs = {c: (w, None) for c, (w, _) in self._inputs.items()}

    def _x_block(self, cols: slice) -> np.ndarray:
        """This server's shares of the cohort's columns ``cols``."""
        if self.index == 1:
            return self.X[:, cols]
        out = np.empty((len(self.cohort), cols.stop - cols.start), dtype=U64)
        for r, key in enumerate(self._input_keys):
            out[r] = keystream_words(key, cols)
        return out

    # ---------------------------------------------------------------- OPEN
    @property
    def opening_steps(self) -> int:
        """Openings frames each way: one per triple and column block (:func:`column_blocks`)."""
        return len(self.tags) * len(column_blocks(self.params.d))

    def openings_frame(self) -> bytes:
        """This server's share of ``E = trunc(X, t) - A_t`` on the next column block of the current triple.

        Streamed block by block: a server holds one block of ``E`` and of the mask at a time,
        never an ``n x d`` matrix of them, and each frame is ``n x`` :data:`BLOCK` words.
        """
        self._expect(Stage.OPEN)
        if self._own_E is not None:
            raise MessageRejectedError(f"server {self.index}: openings of triple {self._tag_pos} block {self._blk} "
                                       "already sent")
        with self._timed():
            tag, cols = self.tags[self._tag_pos], self._cols[self._blk]
            y = self._x_block(cols)
            if tag not in (0, GRAM_TAG):
                y = truncate(y, tag)
            self._mask = self._triples[tag][0].block(self._rows, cols)  # type: ignore[index]
            self._own_E = y - self._mask  # a new array: S1's y is a view of its input shares
            return self._send(Openings(tags=(tag, self._blk), stack=self._own_E[None]))

    def receive_openings(self, frame: bytes) -> None:
        """Open this block of ``E`` and add its part of this server's product share; close the triple after its
        last block."""
        self._expect(Stage.OPEN)
        if self._own_E is None:
            raise MessageRejectedError(f"server {self.index}: openings received before this server sent its own")
        with self._timed():
            tag, own = self.tags[self._tag_pos], self._own_E
            if getattr(self, "_body_buffer", None) is None:  # every block of every triple is opened into one buffer
                self._body_buffer = np.empty(8 * len(self.cohort) * BLOCK + 4096, dtype=np.uint8)
            peer = self._recv(frame, Openings, into=self._body_buffer)
            if peer.tags != (tag, self._blk) or peer.stack.shape != (1, *own.shape):  # type: ignore[attr-defined]
                raise ProtocolAbortError(f"server {self.index}: openings for {peer.tags} of shape "  # type: ignore
                                         f"{peer.stack.shape}, expected {(tag, self._blk)} {(1, *own.shape)}")
            e = np.add(own, peer.stack[0], out=own)  # type: ignore[attr-defined]
            self._accumulate_block(tag, e, self._mask)
            self._own_E = self._mask = None
            self._blk += 1
            if self._blk == len(self._cols):
                self._close_triple(tag)

    def _accumulate_block(self, tag: int, e: np.ndarray, a: np.ndarray) -> None:
        """S0 adds ``(E + A_0)(E + A_0)^T`` (or its row sums of squares), S1 ``E A_1^T``, for this block."""
        m = len(self.cohort)
        if self.index == 0:
            e += a
        if tag == GRAM_TAG:
            if self._acc is None:
                self._acc = GramAccumulator(m, m, bits=GRAM_BITS)
            self._acc.add(e) if self.index == 0 else self._acc.add(e, a)
        else:
            if self._sums is None:
                self._sums = np.zeros(m, dtype=U64)
            self._sums += row_sums(e * e if self.index == 0 else e * a)

    def _close_triple(self, tag: int) -> None:
        """The triple's product share from the accumulated blocks and the dealer's shares; on to the next triple."""
        c = self._triples[tag][1]  # type: ignore[index]
        if tag == GRAM_TAG:
            idx, out = np.ix_(self._rows, self._rows), self._acc.out  # type: ignore[union-attr]
            if self.index == 0:
                self._gram_share = out - self._self_products[GRAM_TAG][idx] + c[idx]
            else:
                self._gram_share = out + out.T + c[idx]
            self._norm_shares.append(self._gram_share.diagonal().copy())
        elif self.index == 0:
            self._norm_shares.append(self._sums - self._self_products[tag][self._rows] + c[self._rows])
        else:
            self._norm_shares.append(self._sums * U64(2) + c[self._rows])
        self._acc = self._sums = None
        self._blk, self._tag_pos = 0, self._tag_pos + 1
        if self._tag_pos == len(self.tags):
            self._body_buffer = None
            self._reference_shares()
            self.stage = Stage.VALIDATE

    def _reference_shares(self) -> None:
        if self._given_refs is not None:
            self._refs = np.asarray(self._given_refs, dtype=np.float64).reshape(-1, self.params.d)
        else:
            self._refs = self.rule.references(self.params.d, self.ctx).to(torch.float64).cpu().numpy()  # type: ignore
        self._ref_bits = [self._ref_frac_bits(r) for r in self._refs]
        m, r = len(self.cohort), len(self._refs)
        if not (r and self.needs >= Needs.REFERENCES):
            self._ref_share = np.zeros((m, 0), dtype=U64)
            return
        enc = np.stack([encode(v, b) for v, b in zip(self._refs, self._ref_bits, strict=True)])
        acc = GramAccumulator(m, r)
        for cols in column_blocks(self.params.d):
            acc.add(self._x_block(cols), enc[:, cols])
        self._ref_share = acc.out

    def _ref_frac_bits(self, r: np.ndarray) -> int:
        """Fractional bits of a reference vector: ``F``, fewer if ``||r|| 2^F`` would exceed ``2^31``."""
        norm = float(np.linalg.norm(r))
        return min(self.params.frac_bits, 31 - max(0, math.ceil(math.log2(norm))) if norm > 0 else 31)

    # ---------------------------------------------------------------- VALIDATE
    def validation_frame(self) -> bytes:
        """This server's shares of every client's squared norm at every level."""
        self._expect(Stage.VALIDATE)
        stack = np.stack(self._norm_shares) if self._norm_shares else np.zeros((0,), U64)
        return self._send(Scalars(phase=1, values=stack))

    def receive_validation(self, frame: bytes) -> None:
        """Open the norms; a client is accepted if every level is within what a norm of ``bound`` allows."""
        self._expect(Stage.VALIDATE)
        with self._timed():
            peer = self._recv(frame, Scalars)
            own = np.stack(self._norm_shares) if self._norm_shares else np.zeros((0,), U64)
            if peer.phase != 1 or peer.values.shape != own.shape:  # type: ignore[attr-defined]
                raise ProtocolAbortError(f"server {self.index}: validation scalars of the wrong shape")
            norms = (own + peer.values).view(np.int64)  # type: ignore[attr-defined]
            if self.tags[-1] == GRAM_TAG:  # the exact norms are the Gram's diagonal, modulo 2^62
                norms[-1] = reduce62(own[-1] + peer.values[-1], signed=False)  # type: ignore[attr-defined]
            self.opened["level_norms2"] = norms.copy()
            accepted = np.ones(len(self.cohort), dtype=bool)
            self.rejected: dict[int, int] = {}
            for k, tag in enumerate(self.tags):
                t = 0 if tag == GRAM_TAG else tag
                ok = (norms[k] >= 0) & (norms[k].astype(object) <= self.params.threshold(t)).astype(bool)
                for r in np.flatnonzero(accepted & ~ok):
                    self.rejected[self.cohort[r]] = t
                accepted &= ok
            self.accepted = accepted
            self._exact_norms = norms[-1]
            self.stage = Stage.GEOMETRY

    # ---------------------------------------------------------------- GEOMETRY
    def geometry_frame(self) -> bytes:
        """Shares of the inner products the rule needs, for the accepted clients only."""
        self._expect(Stage.GEOMETRY)
        acc = np.flatnonzero(self.accepted)
        parts = [self._ref_share[acc].ravel()]
        if self.needs >= Needs.GRAM:
            parts.append(self._gram_share[np.ix_(acc, acc)].ravel())  # type: ignore[index]
        return self._send(Scalars(phase=2, values=np.concatenate(parts)))

    def receive_geometry(self, frame: bytes) -> None:
        """Open the inner products, let the rule decide, and form this server's share of the aggregate."""
        self._expect(Stage.GEOMETRY)
        with self._timed():
            peer = self._recv(frame, Scalars)
            acc = np.flatnonzero(self.accepted)
            m, r = len(acc), len(self._refs)
            want = m * (r if self.needs >= Needs.REFERENCES else 0) + (m * m if self.needs >= Needs.GRAM else 0)
            if peer.phase != 2 or peer.values.shape != (want,):  # type: ignore[attr-defined]
                raise ProtocolAbortError(f"server {self.index}: geometry scalars of the wrong shape")
            own = self._ref_share[acc].ravel()
            if self.needs >= Needs.GRAM:
                own = np.concatenate([own, self._gram_share[np.ix_(acc, acc)].ravel()])  # type: ignore[index]
            opened = (own + peer.values).view(np.int64)  # type: ignore[attr-defined]
            if self.needs >= Needs.GRAM:  # the pairwise part, after the reference dots, was computed modulo 2^62
                used = self._ref_share[acc].size
                opened[used:] = reduce62(opened[used:].view(U64), signed=True)
            self.opened["geometry"] = opened.copy()
            self.geometry = self._geometry(acc, opened)
            self.decision = self._decide(acc)
            self._aggregate_share = self._combine(acc)
            self.stage = Stage.COMBINE

    def _geometry(self, acc: np.ndarray, opened: np.ndarray) -> Geometry:
        m, r, two_f = len(acc), len(self._refs), 2.0 ** (2 * self.params.frac_bits)
        gram = np.full((m + r, m + r), np.nan)
        gram[np.arange(m), np.arange(m)] = self._exact_norms[acc] / two_f
        gram[m:, m:] = self._refs @ self._refs.T
        used = 0
        if self.needs >= Needs.REFERENCES and r:
            scale = np.array([2.0 ** (self.params.frac_bits + b) for b in self._ref_bits])
            dots = opened[: m * r].reshape(m, r) / scale
            gram[:m, m:], gram[m:, :m] = dots, dots.T
            used = m * r
        if self.needs >= Needs.GRAM:
            gram[:m, :m] = opened[used:].reshape(m, m) / two_f
        return Geometry(gram=torch.from_numpy(gram), n=m)

    def _decide(self, acc: np.ndarray) -> Decision:
        if len(acc) == 0:
            raise ProtocolAbortError("no client passed validation: nothing to aggregate")
        rule = self.rule.excluding(len(self.rejected)) if self.rejected_are_byzantine else self.rule  # type: ignore
        try:
            rule.check_tolerance(len(acc))
            return rule.decide(self.geometry, torch.from_numpy(self.weights[acc]), self.ctx)
        except ProtocolAbortError:
            raise
        except FlsecError as e:
            raise ProtocolAbortError(f"the rule cannot run on the {len(acc)} accepted clients: {e}") from e

    def _combine(self, acc: np.ndarray) -> np.ndarray:
        p, m = self.params, len(acc)
        coef = self.decision.coef[:m].numpy()
        norms = np.sqrt(np.maximum(self._exact_norms[acc].astype(np.float64), 0.0))
        if float(np.abs(coef) @ norms) * 2.0**p.coef_bits >= 2.0**61:
            raise ProtocolAbortError(f"the rule's coefficients (sum |c_i| ||x_i|| = {float(np.abs(coef) @ norms):.3g}"
                                     " ring units) would overflow the ring")
        fixed = encode(coef, p.coef_bits)
        share = np.zeros(p.d, dtype=U64)
        for cols in column_blocks(p.d):
            x = self._x_block(cols)
            for k, row in enumerate(acc):
                if fixed[k]:
                    share[cols] += x[row] * fixed[k]
        sigma = float(self.decision.noise_std)
        if sigma > 0:  # half the variance each: neither server knows the noise in the aggregate
            share += encode(self.noise.normal(0.0, sigma / math.sqrt(2.0), p.d), p.frac_bits + p.coef_bits)
        return share

    # ---------------------------------------------------------------- COMBINE
    def aggregate_frame(self) -> bytes:
        self._expect(Stage.COMBINE)
        return self._send(AggregateShare(values=self._aggregate_share))

    def finish(self, frame: bytes) -> ServerOutcome:
        """Open the aggregate: ``sum_i c_i x_i`` (plus the noise) plus the references' part, in float64."""
        self._expect(Stage.COMBINE)
        with self._timed():
            peer = self._recv(frame, AggregateShare)
            if peer.values.shape != (self.params.d,):  # type: ignore[attr-defined]
                raise ProtocolAbortError(f"server {self.index}: aggregate share of the wrong shape")
            total = (self._aggregate_share + peer.values).view(np.int64)  # type: ignore[attr-defined]
            agg = total / 2.0 ** (self.params.frac_bits + self.params.coef_bits)
            ref_coef = self.decision.coef[len(np.flatnonzero(self.accepted)):].numpy()
            if len(ref_coef):
                agg = agg + ref_coef @ self._refs
            self.opened["aggregate"] = agg
            self.stage = Stage.DONE
            return ServerOutcome(aggregate=agg, cohort=self.cohort, accepted=self.accepted, decision=self.decision,
                                 dropped=dict(self.dropped), rejected=dict(self.rejected), opened=dict(self.opened))


#: ``(name, send, receive)`` of each online step after COLLECT: both servers send, then each
#: receives the other's frame (a server's frame never depends on the other's in the same step).
Step = tuple[str, "Callable[[ShareServer], bytes]", "Callable[[ShareServer, bytes], object]"]


def online_steps(opening_steps: int) -> list[Step]:
    """The online steps of a round with ``opening_steps`` openings, in order.

    Examples
    --------
    >>> [name for name, _, _ in online_steps(2)]
    ['survivors', 'openings', 'openings', 'validation', 'geometry', 'aggregate']
    """
    return [("survivors", ShareServer.survivors_frame, ShareServer.agree),
            *[("openings", ShareServer.openings_frame, ShareServer.receive_openings)] * opening_steps,
            ("validation", ShareServer.validation_frame, ShareServer.receive_validation),
            ("geometry", ShareServer.geometry_frame, ShareServer.receive_geometry),
            ("aggregate", ShareServer.aggregate_frame, ShareServer.finish)]


def decision_digest(decision: Decision, cohort: tuple[int, ...], accepted: np.ndarray) -> str:
    """SHA-256 (hex) of what must be equal on both servers before the aggregate is opened:
    the cohort, the accepted clients, the rule's coefficients, kept set and noise.

    Examples
    --------
    >>> d = Decision(coef=torch.tensor([0.5, 0.5], dtype=torch.float64), kept=torch.tensor([True, True]))
    >>> decision_digest(d, (1, 2), np.array([True, True])) == decision_digest(d, (1, 2), np.array([True, True]))
    True
    >>> decision_digest(d, (1, 3), np.array([True, True])) == decision_digest(d, (1, 2), np.array([True, True]))
    False
    """
    h = hashlib.sha256()
    h.update(np.asarray(cohort, dtype=np.int64).tobytes())
    h.update(np.asarray(accepted, dtype=bool).tobytes())
    h.update(decision.coef.detach().to(torch.float64).cpu().numpy().tobytes())
    h.update(decision.kept.detach().to(torch.bool).cpu().numpy().tobytes())
    h.update(np.float64(decision.noise_std).tobytes())
    return h.hexdigest()

"""The two-server protocol with S1 and the dealer as real processes behind sealed links.

S0 runs here (:class:`~secure_agg.twoserver.remote.RemoteRound`); S1 and the dealer are
``python -m benchmarks.twoserver_serve`` processes on 127.0.0.1. Every round's aggregate
equals the plaintext rule on the accepted clients, or the round aborts with a specific
error: a refused spec, a wrong pinned key, a dead S1, an altered link record.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import torch

from defenses.robust import Krum
from fl_core.errors import ConfigError
from secure_agg.errors import ProtocolAbortError
from secure_agg.twoserver.client import ShareClient
from secure_agg.twoserver.link import Link, LinkError
from secure_agg.twoserver.params import DEALER, SERVERS, Party, TwoServerParams
from secure_agg.twoserver.remote import RemoteParty, RemoteRound
from secure_agg.twoserver.service import DealerRole, PartyService, S1Role
from tests.secure_agg import twoserver_procs

N, D, BOUND = 7, 3000, 4.0


def _cohort(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 0.02, (N, D))
    X[5] += 0.04                   # an outlier (norm about 2.4) Krum never picks
    X[6] *= 400.0                  # norm about 11 > BOUND: rejected by validation
    return X


def _frames(X: np.ndarray, s0: Party, s1_public: bytes, frac_bits: int, round_id: int):
    parties = {i: Party(i) for i in range(len(X))}
    frames = {i: ShareClient(party=p, server_publics=(s0.public, s1_public), frac_bits=frac_bits)
              .share(X[i], weight=1.0, round_id=round_id) for i, p in parties.items()}
    return {i: p.public for i, p in parties.items()}, frames


def _round(s1: RemoteParty, dealer: RemoteParty, s0: Party, X: np.ndarray, *, rule=None, round_id: int = 1,
           tamper=None):
    params = TwoServerParams.from_bound(d=D, bound=BOUND)
    publics, frames = _frames(X, s0, s1.public, params.frac_bits, round_id)
    if tamper:
        frames = tamper(frames)
    rnd = RemoteRound(params=params, rule=rule or Krum(f=2), party=s0, s1=s1, dealer=dealer,
                      rejected_are_byzantine=True, noise=np.random.default_rng(0))
    spec = {"round_idx": round_id - 1, "weights": [1.0] * len(X), "generator_seed": 11}
    return rnd.run(round_id=round_id, spec=spec, client_publics=publics, frames=frames,
                   global_params=np.zeros(D, np.float32))


def _links(s1proc, dproc, s0: Party, *, s1_public=None):
    s1 = RemoteParty(s1proc.address, own=s0, ident=SERVERS[1], public=s1_public or s1proc.public, timeout_s=60)
    dealer = RemoteParty(dproc.address, own=s0, ident=DEALER, public=dproc.public, timeout_s=60)
    return s1, dealer


def _krum_of_accepted(X: np.ndarray, keep) -> np.ndarray:
    rows = torch.tensor(X[keep], dtype=torch.float64)
    return Krum(f=2).excluding(N - len(keep))(rows).numpy()


@pytest.fixture(scope="module")
def procs():
    with twoserver_procs.parties("--rule", "krum", "--param", "f=2", "--bound", str(BOUND)) as pair:
        yield pair


def test_two_rounds_over_processes_equal_plaintext_krum_on_the_accepted_clients(procs):
    s0 = Party(SERVERS[0])
    s1, dealer = _links(*procs, s0)
    X = _cohort()
    for rnd in (1, 2):  # the same links carry consecutive rounds
        out, cost = _round(s1, dealer, s0, X, round_id=rnd)
        assert out.rejected == {6: out.rejected[6]} and out.accepted.tolist() == [True] * 6 + [False]
        np.testing.assert_allclose(out.aggregate, _krum_of_accepted(X, list(range(6))), rtol=0, atol=1e-6)
        assert cost.bytes_to_s1 > N * 8 * D      # the clients' vectors were relayed, sealed
        assert cost.bytes_from_dealer < 4000     # the dealer sends seeds and O(n^2) words, never O(n d)
    s1.close(), dealer.close()


def test_a_tampered_share_relayed_to_s1_drops_that_client_and_the_rest_aggregate_right(procs):
    s0 = Party(SERVERS[0])
    s1, dealer = _links(*procs, s0)

    def flip(frames):
        f0, f1 = frames[2]
        f1 = bytearray(f1)
        f1[200] ^= 1
        return {**frames, 2: (f0, bytes(f1))}

    X = _cohort(1)
    out, _ = _round(s1, dealer, s0, X, tamper=flip)
    assert 2 in out.dropped and 2 not in out.cohort
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(out.aggregate, Krum(f=2).excluding(1)(torch.tensor(X[keep])).numpy(),
                               rtol=0, atol=1e-6)
    s1.close(), dealer.close()


def test_s1_refuses_a_round_whose_rule_differs_from_its_own(procs):
    s0 = Party(SERVERS[0])
    s1, dealer = _links(*procs, s0)
    with pytest.raises(ProtocolAbortError, match=r"rule='Krum\(f=1\)', S1 is configured with rule='Krum\(f=2\)'"):
        _round(s1, dealer, s0, _cohort(), rule=Krum(f=1))
    s1.close(), dealer.close()


def test_a_wrong_pinned_s1_key_is_refused_before_anything_is_sent(procs):
    s0 = Party(SERVERS[0])
    s1, _ = _links(*procs, s0, s1_public=Party(SERVERS[1]).public)
    with pytest.raises(LinkError, match="not the pinned"):
        s1.call("round", {})


def test_a_dead_s1_aborts_the_round_without_an_aggregate():
    with twoserver_procs.parties("--rule", "krum", "--param", "f=2", "--bound", str(BOUND)) as (s1p, dp):
        s0 = Party(SERVERS[0])
        s1, dealer = _links(s1p, dp, s0)
        _round(s1, dealer, s0, _cohort())  # a good round: the link is open
        s1p.kill()
        with pytest.raises(LinkError, match=r"the link (closed|to 0xfffffff1 failed)"):
            _round(s1, dealer, s0, _cohort(), round_id=2)
        with pytest.raises(LinkError, match="cannot reach party 0xfffffff1"):  # and no silent reconnect
            _round(s1, dealer, s0, _cohort(), round_id=3)


# --------------------------------------------------------------------------- in-process, white box
def _serve(role, **kw):
    service = PartyService(role, **kw)
    threading.Thread(target=service.serve, daemon=True).start()
    return service


class _Skewed(Krum):
    """Krum whose coefficients are shifted: S1 decides differently from S0."""

    def decide(self, geometry, weights, ctx):
        d = super().decide(geometry, weights, ctx)
        d.coef[0] += 0.5
        return d

    def __repr__(self) -> str:  # passes S1's configuration check: only the decision differs
        return "Krum(f=2)"


def test_servers_that_decide_differently_abort_before_the_aggregate_is_opened():
    s1svc = _serve(S1Role(party=Party(SERVERS[1]), bound=BOUND, rule=Krum(f=2), noise_seed=0))
    dsvc = _serve(DealerRole(party=Party(DEALER)))
    s1svc.role.rule = _Skewed(f=2)  # same repr, different decision
    s0 = Party(SERVERS[0])
    s1 = RemoteParty(s1svc.address, own=s0, ident=SERVERS[1], timeout_s=30)
    dealer = RemoteParty(dsvc.address, own=s0, ident=DEALER, timeout_s=30)
    with pytest.raises(ProtocolAbortError, match="different decisions"):
        _round(s1, dealer, s0, _cohort())
    s1.close(), dealer.close(), s1svc.close(), dsvc.close()


def test_s1_pinning_s0_refuses_another_s0():
    s0 = Party(SERVERS[0])
    s1svc = _serve(S1Role(party=Party(SERVERS[1]), bound=BOUND, rule=Krum(f=2)), peer_public=s0.public)
    other = RemoteParty(s1svc.address, own=Party(SERVERS[0]), ident=SERVERS[1], timeout_s=10)
    with pytest.raises(LinkError):
        other.call("round", {})
    s1svc.close()


@pytest.mark.parametrize("attack", ["flip", "replay", "drop"])
def test_an_altered_replayed_or_dropped_link_record_ends_the_link(attack):
    a, b = Party(1), Party(2)
    left_sock, right_sock = socket.socketpair()
    box = {}
    t = threading.Thread(target=lambda: box.update(link=Link.accept(right_sock, b, timeout_s=5.0)))
    t.start()
    left = Link.connect(left_sock, a, peer_ident=2, peer_public=b.public, timeout_s=5.0)
    t.join()
    right = box["link"]
    records = []
    real = left.sock.sendall
    left.sock = type("S", (), {"sendall": lambda self, data: records.append(data)})()
    left.send("one", {"v": 1})
    left.send("two", {"v": 2})
    first, second = records
    if attack == "flip":
        bad = bytearray(first)
        bad[-3] ^= 1
        real(bytes(bad))
    elif attack == "replay":
        real(first), real(first)
        assert right.recv()[0] == "one"
    else:
        real(second)  # the first record never arrives
    with pytest.raises(LinkError, match="failed authentication"):
        right.recv()
    right.close(), left_sock.close()


def test_the_serve_command_checks_its_options_and_keeps_its_key(tmp_path, capsys):
    from benchmarks.cli import main as cli_main
    from benchmarks.twoserver_serve import load_key

    assert cli_main(["two-server", "serve", "--role", "dealer", "--bound", "3"]) == 2
    assert "the dealer takes no --rule, --param or --bound" in capsys.readouterr().err
    assert cli_main(["two-server", "serve", "--role", "s1", "--rule", "krum"]) == 2
    assert "S1 needs --bound" in capsys.readouterr().err
    key = tmp_path / "s1.key"
    first = load_key(key)
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert Party(SERVERS[1], private=load_key(key)).public == Party(SERVERS[1], private=first).public
    key.write_bytes(b"short")
    with pytest.raises(ConfigError, match="holds 5 bytes, expected a 32-byte X25519 key"):
        load_key(key)

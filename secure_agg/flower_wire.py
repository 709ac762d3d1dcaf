"""What SecAgg+ over Flower messages puts on the wire: names shared by the ServerApp and ClientApp sides.

A secure round is Flower's train round (the ``ClientApp`` trains and keeps its update)
followed by the protocol's stages, each one Flower message per node of type
:data:`MESSAGE_TYPE` carrying a ``ConfigRecord`` under :data:`RECORD`:

=============  ==========================================  ======================================
stage          server -> client                            client -> server
=============  ==========================================  ======================================
``setup``      round, group, ``u``, ``t``, ``d``, ring,    ``AdvertiseKeys`` bytes and the
               clip, ``W``, weight, server X25519 key      client's X25519 channel key
``keys``       ``KeyBroadcast`` bytes                      ``ShareKeys`` bytes
``shares``     ``ShareRelay`` bytes                        ``MaskedInput`` bytes
``unmask``     ``SurvivorList`` bytes                      ``UnmaskShares`` bytes
=============  ==========================================  ======================================

Every protocol payload is the protocol's own versioned wire encoding
(:mod:`secure_agg.messages`), HMAC-tagged under the node's channel key; a client that
aborts answers ``{"abort": reason}`` instead.

Examples
--------
>>> MESSAGE_TYPE, STAGES
('train.flsec_secagg', ('setup', 'keys', 'shares', 'unmask'))
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_agg.crypto import CHANNEL_KEY_BYTES

__all__ = ["ACTION", "CONFIG_FLAG", "MESSAGE_TYPE", "RECORD", "STAGES", "STATE_KEY", "TWO_SERVER_FLAG",
           "TWO_SERVER_RECORD", "channel_key"]

#: The ClientApp action the protocol's messages go to (``@app.train(ACTION)``).
ACTION = "flsec_secagg"
MESSAGE_TYPE = f"train.{ACTION}"
#: The ConfigRecord holding a stage's fields, both ways.
RECORD = "flsec-secagg"
#: Set in the train config of a secure round: the ClientApp keeps its update and replies without arrays.
CONFIG_FLAG = "flsec-secure-round"
#: Where the ClientApp keeps its update and protocol state in ``context.state``.
STATE_KEY = "flsec-secagg-state"
STAGES = ("setup", "keys", "shares", "unmask")
#: Optional node config: the ServerApp's X25519 public key (hex) the node accepts, nothing else.
PIN_KEY = "flsec-server-public-key"

# Two-server rounds (:mod:`secure_agg.flower_twoserver`): one train message, one reply, no stages.
#: Train config flag of a two-server round; the config also carries the keys and the cohort below.
TWO_SERVER_FLAG = "flsec-two-server-round"
#: Train config: S0's and S1's X25519 public keys, the fixed point, the sampled node ids (little-endian u64).
S0_KEY, S1_KEY, FRAC_BITS_KEY, NODES_KEY = "flsec-2s-s0", "flsec-2s-s1", "flsec-2s-frac-bits", "flsec-2s-nodes"
#: The reply's ConfigRecord: the node's round key and its two sealed shares.
TWO_SERVER_RECORD = "flsec-two-server"
#: Optional node config: S1's X25519 public key (hex) the node accepts, nothing else.
PIN_S1_KEY = "flsec-s1-public-key"


def channel_key(own: X25519PrivateKey, peer_public: bytes, *, run_id: int, round_id: int, node_id: int) -> bytes:
    """The node's 32-byte channel key for one protocol round: ``HKDF-SHA256(X25519(own, peer))``.

    Both sides derive it, the ServerApp from its key and the node's, the node from its
    fresh key and the ServerApp's; ``run_id``, ``round_id`` and ``node_id`` are bound in.

    Examples
    --------
    >>> a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    >>> from secure_agg.crypto import public_bytes
    >>> k1 = channel_key(a, public_bytes(b), run_id=1, round_id=2, node_id=3)
    >>> k1 == channel_key(b, public_bytes(a), run_id=1, round_id=2, node_id=3), len(k1)
    (True, 32)
    """
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    info = b"flsec/flower/channel" + b"".join(int(v).to_bytes(8, "little") for v in (run_id, round_id, node_id))
    return HKDF(algorithm=hashes.SHA256(), length=CHANNEL_KEY_BYTES, salt=None, info=info).derive(shared)

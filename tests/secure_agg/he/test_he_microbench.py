"""pytest-benchmark micro-benchmarks of the HE hot paths (marked slow: not in the default run).

Run with ``pytest -m slow tests/secure_agg/he/test_he_microbench.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from secure_agg.he.keys import KeyHolder, load_server_context, load_vector
from secure_agg.he.params import HEParams, select_params

pytestmark = [pytest.mark.slow, pytest.mark.benchmark(group="he")]

_CHOSEN = select_params(d=1_000_000, n=100, clip=1.0, weight_bound=5000, precision_bits=24)
_ANCHOR = HEParams(scheme="ckks", poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40), scale_bits=40,
                   d=1_000_000, n_max=100, clip=1.0, weight_bound=5000)


@pytest.mark.parametrize("params", [_CHOSEN, _ANCHOR], ids=["bfv-chosen", "ckks-nvflare"])
def test_encrypt_one_ciphertext(benchmark, params: HEParams) -> None:
    kh = KeyHolder(params)
    vals = np.arange(params.slots, dtype=np.int64 if params.scheme == "bfv" else np.float64) % 1000
    make = ts.bfv_vector if params.scheme == "bfv" else ts.ckks_vector
    benchmark(lambda: make(kh.context, vals).serialize())


@pytest.mark.parametrize("params", [_CHOSEN, _ANCHOR], ids=["bfv-chosen", "ckks-nvflare"])
def test_server_deserialise_and_add(benchmark, params: HEParams) -> None:
    kh = KeyHolder(params)
    ctx = load_server_context(kh.public_context())
    make = ts.bfv_vector if params.scheme == "bfv" else ts.ckks_vector
    data = make(kh.context, [1] * params.slots).serialize()
    acc = load_vector(ctx, params, data, params.slots)

    def step() -> None:
        nonlocal acc
        acc += load_vector(ctx, params, data, params.slots)

    benchmark(step)

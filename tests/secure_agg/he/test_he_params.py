"""Parameter selection: 128-bit security per the HE standard, overflow/noise bounds, cheapest scheme."""

from __future__ import annotations

import pytest

from secure_agg.he.errors import HEConfigError, HEOverflowError, InsecureParametersError
from secure_agg.he.keys import KeyHolder, load_server_context
from secure_agg.he.params import SECURITY_TABLE, HEParams, plain_modulus_prime, security_level, select_params


def test_security_table_matches_the_standard() -> None:
    assert SECURITY_TABLE[128] == {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
    assert security_level(8192, 218) == 128 and security_level(8192, 219) == 0
    assert security_level(2048, 29) == 256 and security_level(2048, 37) == 192


def test_parameters_below_128_bits_are_refused_unless_allowed() -> None:
    kw = {"scheme": "ckks", "poly_modulus_degree": 2048, "coeff_mod_bit_sizes": (40, 30), "scale_bits": 20,
          "d": 10, "n_max": 2, "clip": 1.0, "weight_bound": 2}
    with pytest.raises(InsecureParametersError, match="below 128-bit"):
        HEParams(**kw)
    p = HEParams(**kw, allow_insecure=True)
    assert p.security_bits == 0
    with pytest.raises(HEConfigError, match="refused"):  # SEAL itself enforces the same table
        KeyHolder(p)
    with pytest.raises(InsecureParametersError):
        select_params(d=10, n=2, clip=1.0, weight_bound=2, security_bits=80)


@pytest.mark.parametrize("n", [2, 10, 100, 1000])
def test_selection_is_secure_and_meets_the_target(n: int) -> None:
    p = select_params(d=1000, n=n, clip=0.5, weight_bound=50 * n, precision_bits=20)
    assert p.security_bits >= 128
    assert p.scheme == "bfv"  # all N slots: half the bytes of CKKS at the same number of primes
    assert len(p.coeff_mod_bit_sizes) == 2  # one data prime + the special prime
    assert p.mean_error_bound(n, 50 * n) <= 0.5 * 2**-20
    assert p.plain_modulus % (2 * p.poly_modulus_degree) == 1
    c = select_params(d=1000, n=n, clip=0.5, weight_bound=50 * n, precision_bits=20, scheme="ckks")
    assert c.bytes_per_value == 2 * p.bytes_per_value
    assert c.mean_error_bound(n, 50 * n) <= 0.5 * 2**-20


def test_bfv_overflow_bound_checked_against_n() -> None:
    p = select_params(d=10, n=4, clip=1.0, weight_bound=8, precision_bits=12)
    with pytest.raises(HEOverflowError, match=r"noise|hold"):
        HEParams(scheme="bfv", poly_modulus_degree=p.poly_modulus_degree, coeff_mod_bit_sizes=p.coeff_mod_bit_sizes,
                 plain_modulus=p.plain_modulus, d=10, n_max=p.plain_modulus, clip=1.0, weight_bound=8)
    with pytest.raises(HEOverflowError, match="weight bound"):
        HEParams(scheme="bfv", poly_modulus_degree=p.poly_modulus_degree, coeff_mod_bit_sizes=p.coeff_mod_bit_sizes,
                 plain_modulus=p.plain_modulus, d=10, n_max=4, clip=1.0, weight_bound=p.plain_modulus)
    with pytest.raises(HEConfigError, match="no bfv parameters"):
        select_params(d=10, n=2**40, clip=1.0, weight_bound=2**40, precision_bits=20, scheme="bfv")


@pytest.mark.parametrize("bad", [{"d": 0}, {"n": 0}, {"clip": float("nan")}, {"weight_bound": -1},
                                 {"precision_bits": 0}, {"scheme": "paillier"}])
def test_bad_arguments_name_the_value(bad: dict) -> None:
    kw = {"d": 10, "n": 2, "clip": 1.0, "weight_bound": 2, **bad}
    with pytest.raises(HEConfigError):
        select_params(**kw)


def test_plain_modulus_prime() -> None:
    t = plain_modulus_prime(2**20, 4096)
    assert t >= 2**20 and t % 8192 == 1
    assert all(t % q for q in range(2, 2000))


def test_production_size_keys_at_128_bits() -> None:
    p = select_params(d=1_000_000, n=100, clip=1.0, weight_bound=100 * 600, precision_bits=20)
    assert (p.scheme, p.poly_modulus_degree, p.security_bits) == ("bfv", 4096, 128)
    assert p.n_ciphertexts == 245 and p.bytes_per_value == 16.0
    kh = KeyHolder(p)
    assert not load_server_context(kh.public_context()).has_secret_key()
    assert KeyHolder(p).key_id != kh.key_id  # same parameters, another key, another id

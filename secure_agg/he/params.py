"""HE parameters for addition-only aggregation, chosen at 128-bit security.

Aggregation only ever *adds* ciphertexts, so no multiplicative depth is needed:
the ciphertext modulus holds **one data level** (as few primes as the noise of a
sum of ``n`` fresh ciphertexts needs, usually one prime) plus the special prime
TenSEAL requires for key generation (it is never part of a ciphertext). This is
unlike the generic chain of the NVFlare configuration (CKKS, ``N = 8192``,
``[60, 40, 40]``, scale ``2^40``: two data primes, ``N/2`` slots, about 64 bytes per
value before compression).

Security. The total ``log2 q`` must not exceed the bound of the HomomorphicEncryption.org
security standard (Albrecht et al., "Homomorphic Encryption Security Standard",
HomomorphicEncryption.org, 2018; Table 1, ternary secret, classical attacks), which
SEAL also enforces: ``N -> max log2 q`` = 1024: 27, 2048: 54, 4096: 109, 8192: 218,
16384: 438, 32768: 881 bits for 128-bit security (192 and 256 bits in
:data:`SECURITY_TABLE`). Parameters below 128 bits raise
:class:`~secure_agg.he.errors.InsecureParametersError` unless ``allow_insecure=True``
(TenSEAL itself still refuses to build such a context: SEAL checks the same table).

Encoding of a client's update ``x`` (length ``d``, clipped to ``[-c, c]``) with
example count ``w`` and the public cohort weight bound ``W`` (``d + 1`` values):

* BFV (Fan and Vercauteren, IACR ePrint 2012/144; batching of Smart and Vercauteren,
  DCC 2014, fills all ``N`` slots): ``y = rint(s * (w / W) * x)`` and the exact
  integer ``w`` in the last slot, modulo the prime plaintext modulus
  ``t = 1 mod 2N``. With at most ``n`` summands ``|sum y| <= s c + n/2 < t/2`` and
  ``sum w <= W < t/2``: the sum never wraps (overflow bound checked against ``n``).
  The weighted mean ``(sum y / s) * W / sum w`` has error at most
  ``n_s W / (2 s sum w)``.
* CKKS (Cheon, Kim, Kim and Song, ASIACRYPT 2017; ``N/2`` slots): ``z = (w / W) x`` and
  ``w / W`` at scale ``Delta = 2^scale_bits``; ``|sum z| <= c`` and ``sum w / W <= 1``.

Noise. A fresh public-key encryption in SEAL has noise ``v = e1 + e2 s - e u``
(``e`` with standard deviation ``sigma``, ``s, u`` uniform ternary), so every
coefficient has standard deviation ``sigma_f = sigma sqrt(1 + 4N/3)``; a sum of
``n`` independent ciphertexts has ``sqrt(n) sigma_f``. We bound it by
``Z sqrt(n) sigma_f`` with ``Z = 9`` (a ``2e-19`` tail per coefficient). BFV decrypts
correctly while ``t (Z sqrt(n) sigma_f + n/2 + 1) < q / 2``; the CKKS slot error of
the sum is at most ``Z sqrt(n N (sigma_f^2 + 1/12)) / Delta`` (encryption noise and
encoding rounding through the canonical embedding).

Choice. :func:`select_params` tries every ring dimension and, where asked, both
schemes; it keeps those that meet the precision target (at full participation the
weighted mean is within ``c 2^-p``), the overflow and noise bounds for ``n`` and
128-bit security, and returns the one with the fewest bytes per value of a fresh
ciphertext (``16 k N / slots`` for ``k`` data primes), then the smallest ``N``. BFV
needs half the bytes of CKKS at equal ``k`` because it fills all ``N`` slots.

Examples
--------
>>> p = select_params(d=1000, n=10, clip=1.0, weight_bound=1000, precision_bits=16)
>>> p.scheme, p.poly_modulus_degree, p.security_bits >= 128, p.bytes_per_value
('bfv', 2048, True, 16.0)
>>> p.mean_error_bound(10, 1000) <= 2**-16
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from secure_agg.he.errors import HEConfigError, HEOverflowError, InsecureParametersError

__all__ = [
    "NOISE_SIGMA",
    "NOISE_TAIL_Z",
    "SCHEMES",
    "SECURITY_TABLE",
    "HEParams",
    "is_prime",
    "plain_modulus_prime",
    "security_level",
    "select_params",
]

SCHEMES = ("bfv", "ckks")

SECURITY_TABLE: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
"""``security bits -> {N: max total log2 q}`` (HE security standard, Table 1, ternary secret)."""

NOISE_SIGMA = 3.3
"""Error standard deviation (SEAL's default is 3.2; 3.3 covers its centred-binomial sampler)."""

NOISE_TAIL_Z = 9.0
"""Tail factor of the high-probability noise bound (``P(|N(0,1)| > 9) ~ 2e-19``)."""

_MAX_PRIME_BITS = 60
_MIN_DEGREE, _MAX_DEGREE = 1024, 32768


def security_level(poly_modulus_degree: int, total_bits: int) -> int:
    """Highest of 256/192/128 bits that ``(N, log2 q)`` reaches; 0 if below 128.

    Examples
    --------
    >>> security_level(4096, 109), security_level(4096, 60), security_level(4096, 110)
    (128, 192, 0)
    """
    for lam in (256, 192, 128):
        if total_bits <= SECURITY_TABLE[lam].get(poly_modulus_degree, -1):
            return lam
    return 0


def is_prime(m: int) -> bool:
    """Deterministic Miller-Rabin for ``m < 3.3e24`` (the first 13 prime bases).

    Examples
    --------
    >>> is_prime(65537), is_prime(65536)
    (True, False)
    """
    if m < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in bases:
        if m % p == 0:
            return m == p
    r, dd = 0, m - 1
    while dd % 2 == 0:
        r, dd = r + 1, dd // 2
    for a in bases:
        x = pow(a, dd, m)
        if x in (1, m - 1):
            continue
        for _ in range(r - 1):
            x = x * x % m
            if x == m - 1:
                break
        else:
            return False
    return True


def plain_modulus_prime(at_least: int, poly_modulus_degree: int) -> int:
    """Smallest prime ``t >= at_least`` with ``t = 1 mod 2N`` (BFV batching needs it).

    Examples
    --------
    >>> plain_modulus_prime(1000, 1024)
    12289
    """
    step = 2 * poly_modulus_degree
    t = max(1, -(-(at_least - 1) // step)) * step + 1
    while not is_prime(t):
        t += step
    return t


def _min_prime_bits(n_deg: int) -> int:
    return int(math.log2(2 * n_deg)) + 4


def _fresh_sigma(n_deg: int) -> float:
    return NOISE_SIGMA * math.sqrt(1.0 + 4.0 * n_deg / 3.0)


@dataclass(frozen=True, kw_only=True)
class HEParams:
    """Public parameters of HE aggregation, agreed by the key holder, clients and server.

    Attributes
    ----------
    scheme : {"bfv", "ckks"}
        BFV for quantised integers (exact sums), CKKS for approximate floats.
    poly_modulus_degree : int
        Ring dimension ``N`` (power of two, 1024 to 32768).
    coeff_mod_bit_sizes : tuple of int
        Data primes then the special (key-switching) prime; ciphertexts hold only
        the data primes.
    plain_modulus : int
        BFV ``t`` (prime, ``1 mod 2N``); 0 for CKKS.
    scale_bits : int
        CKKS ``log2 Delta``; 0 for BFV.
    d : int
        Model size (the packed vector has ``d + 1`` values: the weight is last).
    n_max : int
        Most summands the overflow and noise bounds allow.
    clip : float
        ``c``: coordinates are clipped to ``[-c, c]`` (with a logged warning).
    weight_bound : int
        ``W``: public bound on the sum of the example counts of the cohort.
    allow_insecure : bool
        Accept parameters below 128-bit security.
    """

    scheme: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    plain_modulus: int = 0
    scale_bits: int = 0
    d: int
    n_max: int
    clip: float
    weight_bound: int
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise HEConfigError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        n_deg = self.poly_modulus_degree
        if not isinstance(n_deg, int) or n_deg < _MIN_DEGREE or n_deg > _MAX_DEGREE or n_deg & (n_deg - 1):
            raise HEConfigError(f"poly_modulus_degree must be a power of two in [1024, 32768], got {n_deg!r}")
        bits = tuple(self.coeff_mod_bit_sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if len(bits) < 2 or any(not isinstance(b, int) or not 2 <= b <= _MAX_PRIME_BITS for b in bits):
            raise HEConfigError(
                f"coeff_mod_bit_sizes needs >= 2 primes (data primes + special prime) of 2..60 bits, got {bits}"
            )
        if self.security_bits < 128 and not self.allow_insecure:
            raise InsecureParametersError(
                f"N={n_deg} with log2 q={sum(bits)} is below 128-bit security (the HE standard allows at most "
                f"{SECURITY_TABLE[128].get(n_deg)} bits); pass allow_insecure=True to accept it"
            )
        for name in ("d", "n_max", "weight_bound"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HEConfigError(f"{name} must be an int >= 1, got {v!r}")
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise HEConfigError(f"clip must be a finite float > 0, got {self.clip!r}")
        if self.scheme == "bfv":
            self._check_bfv()
        else:
            self._check_ckks()

    # ------------------------------------------------------------------ validation
    def _check_bfv(self) -> None:
        t, n_deg = self.plain_modulus, self.poly_modulus_degree
        if not isinstance(t, int) or t.bit_length() > _MAX_PRIME_BITS or not is_prime(t) or t % (2 * n_deg) != 1:
            raise HEConfigError(f"BFV plain_modulus must be a prime = 1 mod 2N={2 * n_deg} of <= 60 bits, got {t!r}")
        if self.scale_bits:
            raise HEConfigError(f"scale_bits is for CKKS only, got {self.scale_bits} with BFV")
        if 2 * self.weight_bound >= t:
            raise HEOverflowError(f"weight bound W={self.weight_bound} does not fit below t/2 (t={t})")
        if self.quant_scale * self.clip < 1.0:
            raise HEOverflowError(
                f"t={t} cannot hold the sum of n_max={self.n_max} quantised values at even one level "
                f"(scale {self.quant_scale:.3g}); raise t or lower n_max"
            )
        need = 2 * t * (self._noise(self.n_max) + self.n_max / 2 + 1)
        if math.log2(need) > self.data_bits_min:
            raise HEOverflowError(
                f"the noise of a sum of n_max={self.n_max} ciphertexts needs log2 q >= {math.log2(need):.1f} "
                f"data bits with t={t}, but the data primes {self.coeff_mod_bit_sizes[:-1]} give "
                f"{self.data_bits_min}: use fewer clients, a smaller t or more data bits"
            )

    def _check_ckks(self) -> None:
        if self.plain_modulus:
            raise HEConfigError(f"plain_modulus is for BFV only, got {self.plain_modulus} with CKKS")
        if not isinstance(self.scale_bits, int) or self.scale_bits < 10:
            raise HEConfigError(f"CKKS scale_bits must be an int >= 10, got {self.scale_bits!r}")
        need = self.scale_bits + math.log2(self.clip + 1.0) + 2
        if need > self.data_bits_min:
            raise HEOverflowError(
                f"CKKS sums up to clip={self.clip} at scale 2^{self.scale_bits} need {need:.1f} data bits, "
                f"the data primes {self.coeff_mod_bit_sizes[:-1]} give {self.data_bits_min}"
            )
        if self.sum_error_bound(self.n_max) >= 0.5:
            raise HEOverflowError(
                f"CKKS noise of a sum of n_max={self.n_max} ciphertexts swamps the weight slot at scale "
                f"2^{self.scale_bits}"
            )

    def _noise(self, n: int) -> float:
        return NOISE_TAIL_Z * math.sqrt(n) * _fresh_sigma(self.poly_modulus_degree)

    # ------------------------------------------------------------------ derived facts
    @property
    def security_bits(self) -> int:
        """128, 192 or 256 (HE standard, ternary secret); 0 if below 128 bits."""
        return security_level(self.poly_modulus_degree, sum(self.coeff_mod_bit_sizes))

    @property
    def data_bits_min(self) -> int:
        """``log2`` of a lower bound on the data modulus (each ``b``-bit prime is ``>= 2^(b-1)``)."""
        return sum(b - 1 for b in self.coeff_mod_bit_sizes[:-1])

    @property
    def slots(self) -> int:
        """Values per ciphertext: ``N`` (BFV) or ``N/2`` (CKKS)."""
        return self.poly_modulus_degree if self.scheme == "bfv" else self.poly_modulus_degree // 2

    @property
    def n_values(self) -> int:
        """Packed vector length ``d + 1`` (the update and the weight)."""
        return self.d + 1

    @property
    def n_ciphertexts(self) -> int:
        """Ciphertexts per client: ``ceil((d + 1) / slots)``."""
        return -(-self.n_values // self.slots)

    @property
    def bytes_per_value(self) -> float:
        """Uncompressed bytes per value of a fresh ciphertext: ``2 k N 8 / slots``."""
        return 16.0 * (len(self.coeff_mod_bit_sizes) - 1) * self.poly_modulus_degree / self.slots

    @property
    def quant_scale(self) -> float:
        """BFV fixed-point scale ``s``: the largest with ``s c + n_max/2 + 1 < t/2``."""
        if self.scheme != "bfv":
            return 0.0
        return (self.plain_modulus // 2 - self.n_max / 2 - 2) / self.clip

    def sum_error_bound(self, n: int) -> float:
        """Max absolute error of the decrypted sum of ``sum_i (w_i/W) x_i`` over ``n`` clients.

        BFV: rounding only, ``n / (2 s)`` (the ciphertext sum itself is exact).
        CKKS: ``Z sqrt(n N (sigma_f^2 + 1/12)) / Delta``.
        """
        if self.scheme == "bfv":
            return n / (2.0 * self.quant_scale)
        var = _fresh_sigma(self.poly_modulus_degree) ** 2 + 1.0 / 12.0
        return NOISE_TAIL_Z * math.sqrt(n * self.poly_modulus_degree * var) / 2.0**self.scale_bits

    def mean_error_bound(self, n_survivors: int, weight_sum: float) -> float:
        """Max absolute error of the decoded weighted mean (vs the clipped float mean).

        Parameters
        ----------
        n_survivors : int
            Clients in the sum.
        weight_sum : float
            Their total example count ``sum w`` (``<= W``).
        """
        if weight_sum <= 0 or n_survivors < 1:
            raise HEConfigError(f"need n_survivors >= 1 and weight_sum > 0, got {n_survivors}, {weight_sum}")
        eps = self.sum_error_bound(n_survivors)
        b = weight_sum / self.weight_bound
        if self.scheme == "bfv":
            return eps / b
        if eps >= b:
            return math.inf
        return eps * (1.0 + self.clip) / (b - eps)

    def describe(self) -> str:
        """One line: scheme, ring, modulus chain, security, bytes per value, error bound."""
        extra = f"t={self.plain_modulus}" if self.scheme == "bfv" else f"scale=2^{self.scale_bits}"
        return (
            f"{self.scheme.upper()} N={self.poly_modulus_degree} q bits={list(self.coeff_mod_bit_sizes)} "
            f"(data {list(self.coeff_mod_bit_sizes[:-1])}, special {self.coeff_mod_bit_sizes[-1]}) {extra}, "
            f"{self.security_bits}-bit security, {self.slots} slots, {self.bytes_per_value:.1f} B/value, "
            f"mean error <= {self.mean_error_bound(self.n_max, self.weight_bound):.3g} at n={self.n_max}"
        )


def _data_primes(need_bits: float, n_deg: int) -> tuple[int, ...] | None:
    """Fewest data primes whose product is ``>= 2^need_bits`` (each ``b``-bit prime counts ``b - 1``)."""
    need = max(math.ceil(need_bits), _min_prime_bits(n_deg))
    for k in range(1, 16):
        per = -(-(need + k) // k)
        if per <= _MAX_PRIME_BITS:
            return (max(per, _min_prime_bits(n_deg)),) * k
    return None


def _with_special(data: tuple[int, ...], n_deg: int, security_bits: int) -> tuple[int, ...] | None:
    room = SECURITY_TABLE[security_bits][n_deg] - sum(data)
    special = min(max(data), room)
    if special < _min_prime_bits(n_deg):
        return None
    return (*data, special)


def _bfv_candidate(
    n_deg: int, *, d: int, n: int, clip: float, weight_bound: int, p: int, security_bits: int
) -> HEParams | None:
    # s >= n 2^(p-1) / c makes the rounding error n / (2 s) <= c 2^-p at full participation
    t_min = max(2 * (n * 2 ** (p - 1) + n / 2 + 2) + 1, 2 * weight_bound + 1)
    t = plain_modulus_prime(math.ceil(t_min), n_deg)
    if t.bit_length() > _MAX_PRIME_BITS:
        return None
    noise = NOISE_TAIL_Z * math.sqrt(n) * _fresh_sigma(n_deg) + n / 2 + 1
    data = _data_primes(math.log2(2 * t * noise) + 0.01, n_deg)
    bits = _with_special(data, n_deg, security_bits) if data else None
    if bits is None:
        return None
    return HEParams(
        scheme="bfv", poly_modulus_degree=n_deg, coeff_mod_bit_sizes=bits, plain_modulus=t,
        d=d, n_max=n, clip=clip, weight_bound=weight_bound,
    )


def _ckks_candidate(
    n_deg: int, *, d: int, n: int, clip: float, weight_bound: int, p: int, security_bits: int
) -> HEParams | None:
    var = _fresh_sigma(n_deg) ** 2 + 1.0 / 12.0
    noise = NOISE_TAIL_Z * math.sqrt(n * n_deg * var)
    target = clip * 2.0**-p
    # eps (1 + c) / (1 - eps) <= target  <=  eps <= target / (1 + c + target)
    scale_bits = max(10, math.ceil(math.log2(noise * (1.0 + clip + target) / target)))
    data = _data_primes(scale_bits + math.log2(clip + 1.0) + 2, n_deg)
    bits = _with_special(data, n_deg, security_bits) if data else None
    if bits is None:
        return None
    return HEParams(
        scheme="ckks", poly_modulus_degree=n_deg, coeff_mod_bit_sizes=bits, scale_bits=scale_bits,
        d=d, n_max=n, clip=clip, weight_bound=weight_bound,
    )


def select_params(
    *,
    d: int,
    n: int,
    clip: float,
    weight_bound: int,
    precision_bits: int = 20,
    scheme: str = "auto",
    security_bits: int = 128,
) -> HEParams:
    """Cheapest parameters (bytes per value) for summing ``n`` updates of length ``d``.

    Parameters
    ----------
    d : int
        Model size.
    n : int
        Most clients in one sum (the overflow and noise bounds hold up to ``n``).
    clip : float
        ``c``: coordinate bound of the updates.
    weight_bound : int
        ``W``: bound on the cohort's total example count.
    precision_bits : int
        ``p``: at full participation the weighted mean is within ``c 2^-p``.
    scheme : {"auto", "bfv", "ckks"}
        ``auto`` compares both schemes.
    security_bits : {128, 192, 256}
        Required security level (never below 128).

    Raises
    ------
    HEConfigError
        On invalid arguments or when no ring dimension meets the target.
    """
    if scheme not in ("auto", *SCHEMES):
        raise HEConfigError(f"scheme must be 'auto', 'bfv' or 'ckks', got {scheme!r}")
    # NumPy scalars are valid values: np.int64(1000), np.float32(1.0)
    d, n, weight_bound, precision_bits, security_bits = (
        int(v) if isinstance(v, np.integer) else v for v in (d, n, weight_bound, precision_bits, security_bits)
    )
    clip = float(clip) if isinstance(clip, np.floating) else clip
    if security_bits not in SECURITY_TABLE:
        raise InsecureParametersError(
            f"security_bits must be one of {sorted(SECURITY_TABLE)}, got {security_bits!r}"
        )
    if not isinstance(precision_bits, int) or not 1 <= precision_bits <= 50:
        raise HEConfigError(f"precision_bits must be an int in [1, 50], got {precision_bits!r}")
    for name, v in (("d", d), ("n", n), ("weight_bound", weight_bound)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise HEConfigError(f"{name} must be an int >= 1, got {v!r}")
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise HEConfigError(f"clip must be a finite float > 0, got {clip!r}")
    kw = {"d": d, "n": n, "clip": float(clip), "weight_bound": weight_bound, "p": precision_bits,
          "security_bits": security_bits}
    schemes = SCHEMES if scheme == "auto" else (scheme,)
    found: list[HEParams] = []
    for s in schemes:
        make = _bfv_candidate if s == "bfv" else _ckks_candidate
        for k in range(10, 16):
            try:
                cand = make(2**k, **kw)
            except HEConfigError:
                cand = None
            if cand is not None:
                found.append(cand)
    if not found:
        raise HEConfigError(
            f"no {scheme} parameters at {security_bits}-bit security sum n={n} updates with clip={clip}, "
            f"W={weight_bound} to precision 2^-{precision_bits}; lower n, W or precision_bits"
        )
    return min(found, key=lambda p: (p.bytes_per_value, p.poly_modulus_degree, sum(p.coeff_mod_bit_sizes)))

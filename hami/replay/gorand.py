"""A bit-exact port of Go's ``math/rand`` global generator (pre-1.20 seeded semantics).

The FGD experiments draw everything (pod shuffle, workload inflation, the node tie-break
permutation) from Go's global ``math/rand`` seeded with the experiment seed, so replaying
them per seed needs the same stream (replay-method §3).

The generator is Go's additive lagged Fibonacci source: 607 words, tap 273, seeded through
a Lehmer generator XOR a fixed "cooked" table. That table is the state of the same lagged
Fibonacci recurrence after 7.8e12 steps from ``srand(1)``; :func:`derive_cooked` computes it
here by jumping ahead with polynomial arithmetic (about a second), and the constant
:data:`hami.replay.gorand_cooked.COOKED` is its output, checked against it by the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hami.replay.gorand_cooked import COOKED

T = TypeVar("T")

_LEN = 607
_TAP = 273
_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1
_INT32MAX = (1 << 31) - 1
# Lehmer (Park-Miller) constants of Go's seedrand, Schrage's method.
_A = 48271
_Q = 44488
_R = 3399
_DEFAULT_SEED = 89482311
# gen_cooked runs the recurrence this many times from srand(1).
_COOK_STEPS = 7_800_000_000_000


def _seedrand(x: int) -> int:
    # Go int32 division truncates toward zero; x is always in [1, 2^31-2] here.
    hi, lo = divmod(x, _Q)
    x = _A * lo - _R * hi
    if x < 0:
        x += _INT32MAX
    return x


def _lehmer_words(seed: int, shifts: tuple[int, int]) -> list[int]:
    seed %= _INT32MAX
    if seed == 0:
        seed = _DEFAULT_SEED
    x = seed
    out = [0] * _LEN
    for i in range(-20, _LEN):
        x = _seedrand(x)
        if i >= 0:
            u = x << shifts[0]
            x = _seedrand(x)
            u ^= x << shifts[1]
            x = _seedrand(x)
            u ^= x
            out[i] = u & _MASK64
    return out


def _polymulmod(a: list[int], b: list[int]) -> list[int]:
    """(a*b) mod (x^607 - x^334 - 1) over Z/2^64, by Kronecker substitution."""
    slot = 140  # > 64 + 64 + log2(607): no carries between packed coefficients
    ai = 0
    for c in reversed(a):
        ai = (ai << slot) | c
    bi = 0
    for c in reversed(b):
        bi = (bi << slot) | c
    prod = ai * bi
    mask = (1 << slot) - 1
    coeffs = [(prod >> (slot * i)) & mask for i in range(2 * _LEN - 1)]
    for k in range(2 * _LEN - 2, _LEN - 1, -1):
        v = coeffs[k]
        if v:
            coeffs[k - _TAP] += v
            coeffs[k - _LEN] += v
    return [c & _MASK64 for c in coeffs[:_LEN]]


def derive_cooked(steps: int = _COOK_STEPS) -> tuple[int, ...]:
    """Go's ``rngCooked`` table: the recurrence state after ``steps`` steps from srand(1).

    Writing y_k for the word stored at step k, y_k = y_{k-273} + y_{k-607} (mod 2^64), so
    y_n is a linear combination of the 607 initial words with the coefficients of
    x^n mod (x^607 - x^334 - 1). The result is returned as signed int64 values.
    """
    vec = _lehmer_words(1, (20, 10))
    # z_m = y_{m-606}; the initial words are z_0..z_606. Word p of the vector is written at
    # steps k with (334 - k) mod 607 == p.
    z = [0] * (2 * _LEN)
    for p in range(_LEN):
        k = (_LEN - _TAP - p) % _LEN
        if k > 0:
            k -= _LEN
        z[k + _LEN - 1] = vec[p]
    for m in range(_LEN, 2 * _LEN):
        z[m] = (z[m - _TAP] + z[m - _LEN]) & _MASK64
    start = steps  # z index of the first of the last 607 words written
    result = [1] + [0] * (_LEN - 1)
    base = [0, 1] + [0] * (_LEN - 2)
    n = start
    while n:
        if n & 1:
            result = _polymulmod(result, base)
        base = _polymulmod(base, base)
        n >>= 1
    out = [0] * _LEN
    for j in range(_LEN):
        word = sum(result[i] * z[i + j] for i in range(_LEN)) & _MASK64
        k = start + j - (_LEN - 1)
        out[(_LEN - _TAP - k) % _LEN] = word
    return tuple(w - (1 << 64) if w >> 63 else w for w in out)


class GoRand:
    """Go's ``rand.New(rand.NewSource(seed))`` (equivalently the seeded global functions)."""

    __slots__ = ("_feed", "_tap", "_vec")

    def __init__(self, seed: int) -> None:
        self._vec: list[int] = []
        self._tap = 0
        self._feed = 0
        self.seed(seed)

    def seed(self, seed: int) -> None:
        words = _lehmer_words(seed, (40, 20))
        self._vec = [(w ^ c) & _MASK64 for w, c in zip(words, COOKED, strict=True)]
        self._tap = 0
        self._feed = _LEN - _TAP

    def uint64(self) -> int:
        tap = self._tap - 1
        if tap < 0:
            tap += _LEN
        feed = self._feed - 1
        if feed < 0:
            feed += _LEN
        vec = self._vec
        x = (vec[feed] + vec[tap]) & _MASK64
        vec[feed] = x
        self._tap = tap
        self._feed = feed
        return x

    def int63(self) -> int:
        return self.uint64() & _MASK63

    def go_int(self) -> int:
        """``rand.Int()`` on a 64-bit platform."""
        return self.int63()

    def uint32(self) -> int:
        return self.int63() >> 31

    def int31(self) -> int:
        return self.int63() >> 32

    def float64(self) -> float:
        while True:
            f = self.int63() / (1 << 63)
            if f != 1.0:
                return f

    def int31n(self, n: int) -> int:
        if n <= 0:
            raise ValueError("invalid argument to Int31n")
        if n & (n - 1) == 0:
            return self.int31() & (n - 1)
        top = _INT32MAX - (1 << 31) % n
        v = self.int31()
        while v > top:
            v = self.int31()
        return v % n

    def int63n(self, n: int) -> int:
        if n <= 0:
            raise ValueError("invalid argument to Int63n")
        if n & (n - 1) == 0:
            return self.int63() & (n - 1)
        top = _MASK63 - (1 << 63) % n
        v = self.int63()
        while v > top:
            v = self.int63()
        return v % n

    def intn(self, n: int) -> int:
        if n <= 0:
            raise ValueError("invalid argument to Intn")
        if n <= _INT32MAX:
            return self.int31n(n)
        return self.int63n(n)

    def _int31n_lemire(self, n: int) -> int:
        """Go's unexported ``int31n`` (Lemire's multiply-shift), used by Shuffle."""
        prod = self.uint32() * n
        low = prod & 0xFFFFFFFF
        if low < n:
            thresh = ((1 << 32) - n) % n
            while low < thresh:
                prod = self.uint32() * n
                low = prod & 0xFFFFFFFF
        return prod >> 32

    def shuffle(self, n: int, swap: Callable[[int, int], None]) -> None:
        if n < 0:
            raise ValueError("invalid argument to Shuffle")
        i = n - 1
        while i > (1 << 31) - 1 - 1:
            swap(i, self.int63n(i + 1))
            i -= 1
        while i > 0:
            swap(i, self._int31n_lemire(i + 1))
            i -= 1

    def shuffle_list(self, items: list[T]) -> None:
        def swap(i: int, j: int) -> None:
            items[i], items[j] = items[j], items[i]

        self.shuffle(len(items), swap)

    def perm(self, n: int) -> list[int]:
        m = [0] * n
        for i in range(n):
            j = self.intn(i + 1)
            m[i] = m[j]
            m[j] = i
        return m

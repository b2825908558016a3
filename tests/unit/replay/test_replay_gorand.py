from __future__ import annotations

import pytest

from hami.replay.gorand import GoRand, derive_cooked
from hami.replay.gorand_cooked import COOKED


def test_cooked_table_is_derived_from_the_recurrence() -> None:
    assert derive_cooked() == COOKED
    assert len(COOKED) == 607


def test_seed_one_stream_matches_go() -> None:
    # rand.New(rand.NewSource(1)).Int63(): Go's documented first value of the default source.
    rng = GoRand(1)
    assert rng.int63() == 5577006791947779410
    assert rng.int63() == 8674665223082153551


def test_seed_zero_and_negative_seeds_follow_go() -> None:
    # Seed(0) uses the fixed seed 89482311; Seed is taken modulo 2^31-1.
    assert GoRand(0).int63() == GoRand(89482311).int63()
    assert GoRand(2**31 - 1 + 5).int63() == GoRand(5).int63()


def test_intn_power_of_two_masks_and_consumes_one_draw() -> None:
    a, b = GoRand(7), GoRand(7)
    assert a.intn(1) == 0
    b.int63()
    assert a.int63() == b.int63()
    c, d = GoRand(9), GoRand(9)
    assert c.intn(8) == d.int31() & 7


def test_int31n_rejects_above_the_largest_multiple() -> None:
    rng = GoRand(3)
    values = [rng.intn(10) for _ in range(2000)]
    assert set(values) == set(range(10))


def test_perm_is_a_permutation_built_by_inside_out_shuffle() -> None:
    rng, ref = GoRand(42), GoRand(42)
    perm = rng.perm(50)
    assert sorted(perm) == list(range(50))
    m = [0] * 50
    for i in range(50):
        j = ref.intn(i + 1)
        m[i] = m[j]
        m[j] = i
    assert perm == m


def test_shuffle_uses_lemire_not_intn() -> None:
    items = list(range(20))
    GoRand(5).shuffle_list(items)
    ref = GoRand(5)
    expected = list(range(20))
    for i in range(19, 0, -1):
        prod = ref.uint32() * (i + 1)
        low = prod & 0xFFFFFFFF
        if low < i + 1:
            thresh = ((1 << 32) - (i + 1)) % (i + 1)
            while low < thresh:
                prod = ref.uint32() * (i + 1)
                low = prod & 0xFFFFFFFF
        j = prod >> 32
        expected[i], expected[j] = expected[j], expected[i]
    assert items == expected
    assert items != list(range(20))


def test_float64_is_in_unit_interval() -> None:
    rng = GoRand(11)
    assert all(0.0 <= rng.float64() < 1.0 for _ in range(100))


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="Intn"):
        GoRand(1).intn(0)
    with pytest.raises(ValueError, match="Shuffle"):
        GoRand(1).shuffle(-1, lambda i, j: None)

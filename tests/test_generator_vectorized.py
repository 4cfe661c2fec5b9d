"""The generator's fast vectorized helpers give what the plain way gives.

``data_generator.fmt`` builds millions of fields with numpy byte matrices and Arrow casts
instead of ``str()`` / f-strings per value, and the simulation sorts and draws with tricks
that must not change a result; these tests compare each with the plain Python or numpy way
on random inputs (edge values included), so a faster trick can never change a byte.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from data_generator import fmt, model


def _python_number(value: int, decimals: int) -> str:
    return format(Decimal(int(value)).scaleb(-decimals), "f")


@pytest.mark.parametrize("seed", range(6))
def test_number_text_matches_decimal_formatting(seed):
    rng = np.random.default_rng(seed)
    n = 2_000
    magnitude = 10 ** rng.integers(0, 19, n).clip(0, 18)
    values = (rng.random(n) * magnitude).astype(np.int64) * rng.choice([-1, 1], n)
    values[:6] = [0, 1, -1, 5, np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1]
    per_row = rng.integers(0, 5, n)
    blank = rng.random(n) < 0.2

    for decimals in (0, 2, fmt.MAX_DECIMALS):
        assert fmt.number_text(values, decimals).to_pylist() == [
            _python_number(v, decimals) for v in values.tolist()]
    assert fmt.number_text(values, per_row).to_pylist() == [
        _python_number(v, d) for v, d in zip(values.tolist(), per_row.tolist())]
    assert fmt.number_text(values, per_row, blank).to_pylist() == [
        "" if b else _python_number(v, d)
        for v, d, b in zip(values.tolist(), per_row.tolist(), blank.tolist())]
    assert fmt.number_text(values[:0], 2).to_pylist() == []
    with pytest.raises(ValueError, match="0 to 6 decimals"):
        fmt.number_text(values, fmt.MAX_DECIMALS + 1)       # Arrow would write 1E-7


def test_take_rows_and_concat_matrices_match_numpy_indexing():
    rng = np.random.default_rng(1)
    table = rng.integers(32, 127, (40, 11), dtype=np.uint8)
    idx = rng.integers(0, 40, 5_000)
    assert np.array_equal(fmt.take_rows(table, idx), table[idx])
    assert fmt.take_rows(table, idx[:0]).shape == (0, 11)

    wide = rng.integers(48, 58, (5_000, 13), dtype=np.uint8)
    parts = ["id-", wide[:, 1:], ",", table[idx][:, :4], "", wide[:, :2], "\n"]
    expected = ["id-" + bytes(a).decode() + "," + bytes(b).decode() + bytes(c).decode() + "\n"
                for a, b, c in zip(wide[:, 1:], table[idx][:, :4], wide[:, :2])]
    joined = fmt.concat_matrices(parts, 5_000)
    assert [bytes(row).decode() for row in joined] == expected


def test_timestamps_match_isoformat():
    rng = np.random.default_rng(2)
    seconds = rng.integers(0, 4_102_444_800, 3_000)          # 1970 .. 2100
    expected = [np.datetime64(int(s), "s").astype(object).isoformat() + "Z"
                for s in seconds.tolist()]
    assert fmt.timestamps(seconds, "Z").to_pylist() == expected


def test_lexsort_is_numpys_stable_lexsort():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 4_000))
        keys = tuple(rng.integers(-10 ** int(rng.integers(0, 7)), 10 ** int(rng.integers(0, 7)),
                                  n) for _ in range(int(rng.integers(1, 4))))
        if rng.random() < 0.3:
            keys += (rng.random(n) < 0.5,)                   # booleans, many ties
        assert np.array_equal(model.lexsort(keys), np.lexsort(keys))
    wide = (rng.integers(0, 2 ** 40, 1_000), rng.integers(0, 2 ** 30, 1_000))  # too wide to combine
    assert np.array_equal(model.lexsort(wide), np.lexsort(wide))


def test_draws_in_chunks_are_the_same_numbers_as_one_draw(monkeypatch):
    monkeypatch.setattr(model, "DRAW_CHUNK_ROWS", 1_000)
    whole = np.random.default_rng(9).random((4_321, 10))
    chunked = model._draw_in_chunks(np.random.default_rng(9), 4_321, 10,
                                    lambda u, rows: u.copy(), dtype=float)
    assert np.array_equal(chunked, whole)
    has = np.random.default_rng(1).random((4_321, 10)) < 0.2
    picked = model._draw_in_chunks(np.random.default_rng(9), 4_321, 10,
                                   lambda u, rows: model._pick_condition(u, has[rows]),
                                   dtype=np.int64)
    masked = whole * has
    expected = np.where(masked.max(axis=1) > 0, masked.argmax(axis=1), -1)
    assert np.array_equal(picked, expected)
    assert model._draw_in_chunks(np.random.default_rng(9), 0, 10, lambda u, rows: u < 0.5
                                 ).shape == (0, 10)

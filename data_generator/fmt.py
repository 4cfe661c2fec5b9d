"""Vectorized text formatting with Arrow compute kernels.

The generator keeps every value as an Arrow string array from the moment it is formatted:
joining columns into CSV lines or JSON objects is then one C++ kernel call per file instead of
a Python loop per row, and the file bytes are written straight from Arrow's buffers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SECONDS_PER_DAY = 86_400
EPOCH_DAY0 = np.datetime64("1970-01-01", "D")


@lru_cache(maxsize=1)
def _time_of_day_table() -> pa.Array:
    """"HH:MM:SS" for every second of a day: formatting becomes a table lookup (take)."""
    sod = np.arange(SECONDS_PER_DAY)
    hours = np.char.zfill((sod // 3600).astype(str), 2)
    minutes = np.char.zfill((sod // 60 % 60).astype(str), 2)
    seconds = np.char.zfill((sod % 60).astype(str), 2)
    return pa.array(np.char.add(np.char.add(np.char.add(hours, ":"), np.char.add(minutes, ":")),
                                seconds).astype(object))


def _date_lookup(days: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """A table of ISO dates covering ``days`` (days since 1970-01-01) and the lookup indices."""
    if len(days) == 0:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    low, high = int(days.min()), int(days.max())
    table = np.arange(low, high + 1).astype("datetime64[D]").astype(str).astype(object)
    return pa.array(table, pa.string()), (days - low).astype(np.int64)


def dates(days: np.ndarray, quote: str = "") -> pa.Array:
    """``YYYY-MM-DD`` strings from days since the Unix epoch (optionally quoted for JSON)."""
    table, idx = _date_lookup(np.asarray(days, dtype=np.int64))
    if quote:
        table = pc.binary_join_element_wise(quote, table, quote, "")
    return pc.take(table, pa.array(idx))


def timestamps(seconds: np.ndarray, suffix: str = "", prefix: str = "") -> pa.Array:
    """``YYYY-MM-DDTHH:MM:SS`` (plus ``suffix``, e.g. ``Z``) from seconds since the epoch."""
    seconds = np.asarray(seconds, dtype=np.int64)
    day_part = dates(seconds // SECONDS_PER_DAY)
    time_part = pc.take(_time_of_day_table(), pa.array(seconds % SECONDS_PER_DAY))
    return pc.binary_join_element_wise(prefix, day_part, "T", time_part, suffix, "")


def integers(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(np.asarray(values, dtype=np.int64)), pa.string())


def fixed(values: np.ndarray, decimals: int) -> pa.Array:
    """Fixed-point text (``12.50``) from floats, rounded half away from zero; no exponent."""
    scale = 10 ** decimals
    scaled = np.round(np.asarray(values, dtype=np.float64) * scale).astype(np.int64)
    return scaled_integers(scaled, decimals)


def scaled_integers(scaled: np.ndarray, decimals: int) -> pa.Array:
    """Text of ``scaled / 10**decimals`` (e.g. cents -> ``12.50``) computed on integers."""
    scaled = np.asarray(scaled, dtype=np.int64)
    if decimals == 0:
        return integers(scaled)
    scale = 10 ** decimals
    magnitude = np.abs(scaled)
    whole = integers(magnitude // scale)
    frac = pc.utf8_lpad(integers(magnitude % scale), decimals, "0")
    sign = pc.if_else(pa.array(scaled < 0), "-", "")
    return pc.binary_join_element_wise(sign, whole, ".", frac, "")


def prefixed_ids(prefix: str, numbers: np.ndarray, width: int, suffix: str = "") -> pa.Array:
    """``MRN0000042``-style identifiers."""
    digits = pc.utf8_lpad(integers(numbers), width, "0")
    return pc.binary_join_element_wise(prefix, digits, suffix, "")


def pick(categories: list[str] | np.ndarray, idx: np.ndarray, json: bool = False) -> pa.Array:
    """Category labels by index (a vectorized lookup); ``json=True`` gives JSON literals."""
    labels = list(categories)
    if json:
        import json as _json

        labels = [_json.dumps(str(x)) for x in labels]
    return pc.take(pa.array(labels, pa.string()), pa.array(np.asarray(idx, np.int64)))


def csv_quote(values: pa.Array) -> pa.Array:
    """RFC 4180 quoting, only where needed (a comma, quote or line break in the value)."""
    needs = pc.match_substring_regex(values, r'[",\r\n]')
    if not pc.any(needs).as_py():
        return values
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, values)


def row_values(values: pa.Array, rows: np.ndarray) -> list[str | None]:
    """Python strings of a few rows (for the small, per-defect edits)."""
    return pc.take(values, pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

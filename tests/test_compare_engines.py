"""The check that two engines built the same lakehouse must see every real difference."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
from deltalake import write_deltalake

from utils.compare_engines import compare_roots, compare_rows

ROWS = [
    {"month": dt.date(2025, 1, 1), "facility": "FAC001", "rate": 0.125, "amount": Decimal("10.50"),
     "conditions": ["diabetes", "hypertension"]},
    {"month": dt.date(2025, 1, 1), "facility": "FAC002", "rate": None, "amount": Decimal("0.00"),
     "conditions": []},
]


def test_the_same_rows_in_another_order_are_equal():
    assert compare_rows(ROWS, list(reversed(ROWS))) == ""


def test_floats_may_differ_in_the_last_digits_only():
    noisy = [dict(ROWS[0], rate=0.125 + 1e-15), ROWS[1]]
    assert compare_rows(ROWS, noisy) == ""
    wrong = [dict(ROWS[0], rate=0.126), ROWS[1]]
    assert compare_rows(ROWS, wrong) == "first differing row: rate: 0.125 vs 0.126"


def test_a_missing_row_a_changed_value_or_list_is_reported():
    assert compare_rows(ROWS, ROWS[:1]) == "2 rows vs 1"
    changed = [ROWS[0], dict(ROWS[1], amount=Decimal("0.01"))]
    assert "amount: Decimal('0.00') vs Decimal('0.01')" in compare_rows(ROWS, changed)
    reordered_list = [dict(ROWS[0], conditions=["hypertension", "diabetes"]), ROWS[1]]
    assert "conditions" in compare_rows(ROWS, reordered_list)


def test_a_null_is_not_a_zero():
    assert "rate: None vs 0.0" in compare_rows(ROWS, [ROWS[0], dict(ROWS[1], rate=0.0)])


def _table(root, layer, name, rows):
    write_deltalake(str(root / "lakehouse" / layer / name), pa.Table.from_pylist(rows))


def test_roots_compare_gold_rows_silver_counts_and_quarantine_rules(tmp_path):
    reference, other = tmp_path / "sail", tmp_path / "spark"
    for root in (reference, other):
        _table(root, "gold", "kpi", [{"k": "a", "v": 1.0}])
        _table(root, "silver", "dq_metrics", [{"run": str(root)}])  # a run log: not compared
    _table(reference, "silver", "quarantine_claims", [{"_failed_rules": ["amount_positive"]}])
    _table(other, "silver", "quarantine_claims", [{"_failed_rules": ["claim_id_present"]}])
    _table(reference, "silver", "claims", [{"id": 1}, {"id": 2}])
    _table(other, "silver", "claims", [{"id": 1}])
    results = {f"{r.layer}.{r.table}": r for r in compare_roots(reference, other)}
    assert set(results) == {"gold.kpi", "silver.claims", "silver.quarantine_claims"}
    assert results["gold.kpi"].equal
    assert results["silver.claims"].difference == "2 rows vs 1"
    assert results["silver.quarantine_claims"].difference.startswith(
        "failed rules {'amount_positive': 1} vs {'claim_id_present': 1}")


def test_a_table_only_one_engine_built_is_a_difference(tmp_path):
    reference, other = tmp_path / "sail", tmp_path / "spark"
    _table(reference, "gold", "kpi", [{"k": "a"}])
    _table(reference, "gold", "extra", [{"k": "a"}])
    _table(other, "gold", "kpi", [{"k": "a"}])
    results = {r.table: r for r in compare_roots(reference, other)}
    assert results["extra"].difference == "missing in the other run"


def test_no_gold_at_all_is_not_a_pass(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    results = compare_roots(tmp_path / "a", tmp_path / "b")
    assert [r.difference for r in results] == ["no gold table in either root"]

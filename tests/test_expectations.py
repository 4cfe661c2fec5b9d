"""The expectations engine: each action, NULL handling, metrics and the fail message."""

import pytest

from tests.dataframes import assert_df_equality
from utils.expectations import (
    Expectation,
    ExpectationFailed,
    apply_expectations,
    expectations,
    metrics_frame,
)

SCHEMA = "id INT, charge DOUBLE, cls STRING"
ROWS = [(1, 10.0, "inpatient"), (2, -5.0, "inpatient"), (3, None, "emergency"), (4, 7.0, "bogus")]


@pytest.fixture
def df(spark):
    return spark.createDataFrame(ROWS, SCHEMA)


def test_warn_keeps_rows_and_counts_null_as_failure(spark, df):
    result = apply_expectations(df, [Expectation("charge_positive", "charge >= 0", "warn")])
    assert result.valid.count() == 4
    assert result.quarantined.count() == 0
    (metric,) = result.metrics
    assert (metric.rule, metric.action, metric.passed, metric.failed) == ("charge_positive", "warn", 2, 2)


def test_drop_quarantines_with_every_failed_rule_name(spark, df):
    rules = [
        Expectation("charge_positive", "charge >= 0", "drop"),
        Expectation("known_class", "cls IN ('inpatient', 'emergency')", "drop"),
        Expectation("small_id", "id < 4", "warn"),
    ]
    result = apply_expectations(df, rules)
    assert_df_equality(result.valid, spark.createDataFrame([(1, 10.0, "inpatient")], SCHEMA))
    quarantined = {r["id"]: list(r["_failed_rules"]) for r in result.quarantined.collect()}
    assert quarantined == {2: ["charge_positive"], 3: ["charge_positive"],
                           4: ["known_class", "small_id"]}
    assert [(m.rule, m.passed, m.failed) for m in result.metrics] == [
        ("charge_positive", 2, 2), ("known_class", 3, 1), ("small_id", 3, 1)]
    assert result.total_rows == 4


def test_fail_names_rule_and_shows_first_failing_record(spark, df):
    rules = expectations({"charge_present": "charge IS NOT NULL"}, "fail")
    with pytest.raises(ExpectationFailed) as info:
        apply_expectations(df, rules, sample_order=["id"])
    assert str(info.value) == ("Expectation 'charge_present' (charge IS NOT NULL) failed for 1 row(s); "
                               'sample record: {"charge": null, "cls": "emergency", "id": 3}')


def test_fail_passes_when_every_row_is_valid(spark, df):
    result = apply_expectations(df, [Expectation("has_id", "id IS NOT NULL", "fail")])
    assert result.valid.count() == 4


def test_bad_definitions_are_rejected():
    with pytest.raises(ValueError, match="action must be one of"):
        Expectation("x", "1 = 1", "quarantine")
    with pytest.raises(ValueError, match="Two expectations are named 'x'"):
        apply_expectations(None, [Expectation("x", "1=1"), Expectation("x", "2=2")])


def test_metrics_frame_shape(spark, df):
    result = apply_expectations(df, [Expectation("charge_positive", "charge >= 0", "drop")])
    frame = metrics_frame(spark, result.metrics, run_id="r1", dataset="encounters")
    assert [tuple(r) for r in frame.collect()] == [
        ("r1", "encounters", None, "charge_positive", "drop", "charge >= 0", 2, 2)]


def test_group_by_gives_per_group_metrics_in_the_same_pass(spark):
    df = spark.createDataFrame(
        [("2025-01-02", 1.0), ("2025-01-01", -1.0), ("2025-01-01", 2.0), (None, None)],
        "batch STRING, charge DOUBLE")
    result = apply_expectations(df, [Expectation("charge_positive", "charge >= 0", "drop")],
                                group_by="batch")
    per_group = {group: [(m.passed, m.failed) for m in metrics]
                 for group, metrics in result.group_metrics.items()}
    assert list(per_group) == ["2025-01-01", "2025-01-02", None]  # sorted, NULL last
    assert per_group == {"2025-01-01": [(1, 1)], "2025-01-02": [(1, 0)], None: [(0, 1)]}
    assert [(m.passed, m.failed) for m in result.metrics] == [(2, 2)]
    assert result.valid.count() == 2

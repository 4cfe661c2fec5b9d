"""The course's one expectations engine, in the Delta Live Tables vocabulary.

An expectation has a **name**, a SQL boolean **condition** and an **action**:

* ``warn``: keep the row, count the failure (DLT ``@dp.expect``);
* ``drop``: remove the row from the output; here it is not thrown away but returned as a
  quarantined row carrying the names of the rules it failed (DLT ``@dp.expect_or_drop``);
* ``fail``: stop, naming the rule and showing a failing record (DLT ``@dp.expect_or_fail``).

A condition that evaluates to NULL counts as failed: ``total_charge >= 0`` must not let a
missing charge through silently. The imperative silver notebooks and the declarative pipeline
both call :func:`apply_expectations`, so a rule means the same thing everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ACTIONS = ("warn", "drop", "fail")
FAILED_RULES_COLUMN = "_failed_rules"


@dataclass(frozen=True)
class Expectation:
    """One data-quality rule: ``name``, SQL boolean ``condition``, ``action`` (warn/drop/fail)."""

    name: str
    condition: str
    action: str = "warn"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Expectation {self.name!r}: action must be one of {ACTIONS}, "
                             f"not {self.action!r}")
        if not self.name or not self.condition:
            raise ValueError("An expectation needs a name and a SQL condition")


def expectations(rules: Mapping[str, str], action: str) -> list[Expectation]:
    """Several rules with one action, like DLT's ``expect_all*({name: condition})``."""
    return [Expectation(name, condition, action) for name, condition in rules.items()]


@dataclass(frozen=True)
class RuleMetric:
    """How many rows passed and failed one rule in one evaluation."""

    rule: str
    action: str
    condition: str
    passed: int
    failed: int


class ExpectationFailed(RuntimeError):
    """A ``fail`` expectation was violated; the message names the rule and a sample record."""

    def __init__(self, rule: Expectation, failed: int, sample: dict) -> None:
        self.rule, self.failed, self.sample = rule, failed, sample
        super().__init__(
            f"Expectation '{rule.name}' ({rule.condition}) failed for {failed} row(s); "
            f"sample record: {json.dumps(sample, default=str, sort_keys=True)}"
        )


@dataclass
class ExpectationResult:
    """What evaluating expectations on a DataFrame gives back.

    ``valid``: the rows that go on (input columns only); ``quarantined``: rows that failed a
    drop rule, with their input columns plus ``_failed_rules`` (every rule they failed);
    ``metrics``: passed/failed per rule, in the order the rules were given.
    """

    valid: "DataFrame"
    quarantined: "DataFrame"
    metrics: list[RuleMetric] = field(default_factory=list)
    #: With ``group_by``: the same metrics per group value (e.g. per batch date), groups sorted
    #: with NULL last, rules in the order given.
    group_metrics: dict[Any, list[RuleMetric]] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return self.metrics[0].passed + self.metrics[0].failed if self.metrics else 0


def _check_names(rules: list[Expectation]) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"Two expectations are named {rule.name!r}: names must be unique")
        seen.add(rule.name)


def apply_expectations(df: "DataFrame", rules: Iterable[Expectation],
                       sample_order: Iterable[str] | None = None,
                       group_by: str | None = None) -> ExpectationResult:
    """Evaluate ``rules`` on ``df``: count, split valid from quarantined, or fail.

    One aggregation computes every rule's failures (one pass over the data); with
    ``group_by`` (a column, e.g. the batch date) that same pass also gives the metrics per
    group, for data-quality tables kept per batch. ``sample_order`` names the columns that
    order the sample record of a failed ``fail`` rule, so the error message is deterministic.
    """
    from pyspark.sql import functions as F

    rules = list(rules)
    _check_names(rules)
    columns = df.columns
    if not rules:
        empty = df.limit(0).withColumn(FAILED_RULES_COLUMN, F.array().cast("array<string>"))
        return ExpectationResult(df, empty, [], {})

    flags = [F.coalesce(F.expr(rule.condition).cast("boolean"), F.lit(False)) for rule in rules]
    flag_names = [f"__ok_{i}" for i in range(len(rules))]
    flagged = df.select(*[F.col(c) for c in columns],
                        *[flag.alias(name) for flag, name in zip(flags, flag_names)])

    aggregates = [F.count(F.lit(1)).alias("__rows"),
                  *[F.sum(F.when(~F.col(name), 1).otherwise(0)).alias(name) for name in flag_names]]
    if group_by is None:
        group_rows = [(None, flagged.agg(*aggregates).first())]
    else:
        collected = flagged.groupBy(F.col(group_by).alias("__group")).agg(*aggregates).collect()
        group_rows = sorted(((row["__group"], row) for row in collected),
                            key=lambda item: (item[0] is None, item[0]))

    def metrics_of(counts: Any) -> list[RuleMetric]:
        rows = int(counts["__rows"]) if counts is not None else 0
        return [RuleMetric(rule.name, rule.action, rule.condition,
                           rows - int(counts[name] or 0) if counts is not None else 0,
                           int(counts[name] or 0) if counts is not None else 0)
                for rule, name in zip(rules, flag_names)]

    per_group = {group: metrics_of(counts) for group, counts in group_rows}
    if group_by is None:
        metrics = per_group[None]
        per_group = {}
    else:
        metrics = [RuleMetric(rule.name, rule.action, rule.condition,
                              sum(g[i].passed for g in per_group.values()),
                              sum(g[i].failed for g in per_group.values()))
                   for i, rule in enumerate(rules)]

    for rule, name, metric in zip(rules, flag_names, metrics):
        if rule.action == "fail" and metric.failed:
            order = [F.col(c) for c in (sample_order or columns)]
            sample_row = flagged.filter(~F.col(name)).select(*columns).orderBy(*order).first()
            raise ExpectationFailed(rule, metric.failed, sample_row.asDict() if sample_row else {})

    failed_rules = F.filter(
        F.array(*[F.when(~F.col(name), F.lit(rule.name)) for rule, name in zip(rules, flag_names)]),
        lambda x: x.isNotNull(),
    )
    drop_names = [name for rule, name in zip(rules, flag_names) if rule.action == "drop"]
    keep = F.lit(True)
    for name in drop_names:
        keep = keep & F.col(name)

    valid = flagged.filter(keep).select(*columns)
    quarantined = (flagged.filter(~keep)
                   .select(*[F.col(c) for c in columns], failed_rules.alias(FAILED_RULES_COLUMN)))
    return ExpectationResult(valid, quarantined, metrics, per_group)


METRICS_SCHEMA = ("run_id STRING, dataset STRING, batch_date DATE, rule STRING, action STRING, "
                  "condition STRING, passed BIGINT, failed BIGINT")


def metrics_frame(spark: "SparkSession", metrics: Iterable[RuleMetric], run_id: str,
                  dataset: str, batch_date=None) -> "DataFrame":
    """The metrics as a DataFrame in the shape of ``silver.dq_metrics``."""
    rows = [(run_id, dataset, batch_date, m.rule, m.action, m.condition, m.passed, m.failed)
            for m in metrics]
    return spark.createDataFrame(rows, METRICS_SCHEMA)

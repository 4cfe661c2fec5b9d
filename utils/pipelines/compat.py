"""The few pipeline APIs open-source PySpark lacks, with Databricks' names and semantics.

A pipeline source file imports the official API (``from pyspark import pipelines as dp``) for
tables, materialized views, views and flows, and imports from here only what open-source
PySpark 4.2 does not have or restricts (measured on the pyspark 4.2 wheel: ``pyspark.pipelines``
exports ``append_flow``, ``create_auto_cdc_flow``, ``create_streaming_table``, ``create_sink``,
``materialized_view``, ``table`` and ``temporary_view``; no ``expect*`` decorators, and
``create_auto_cdc_flow`` raises for ``stored_as_scd_type=2``):

* the expectation decorators ``expect``, ``expect_or_drop``, ``expect_or_fail`` and
  ``expect_all*`` (Databricks: ``dp.expect*``);
* ``create_auto_cdc_flow`` with ``stored_as_scd_type=2`` (open source accepts only 1), and
  :func:`create_auto_cdc_table`, a streaming table and its AUTO CDC flow in one call.

This module imports nothing of any engine at import time, and at definition time only the
public ``pyspark.pipelines`` API, so the same sources load in three runtimes. Which one runs
them is decided by what ``dp`` offers when a decorator is applied (the capability, not a name):

* **Databricks** has ``dp.expect*`` and SCD type 2: every call goes to the native function.
* **The course's local runner** (``python -m utils.pipelines``) offers the same two while it
  loads the sources (:mod:`utils.pipelines.registry` puts them on ``dp`` for the duration), so
  it runs the Databricks-shaped definitions with its own expectations engine and SCD2 MERGE.
* **The open-source ``spark-pipelines`` CLI** has neither, so the fallbacks below define the
  same datasets from the OSS API: expectations become filters (plus counted metrics) inside
  the query, and an SCD type 2 target becomes a materialized view computed from a streaming
  table of every change event (:func:`scd2_versions`).

Decorator order is the Databricks one: expectations go *below* ``@dp.table`` /
``@dp.materialized_view``, directly on the function::

    @dp.materialized_view
    @expect_or_drop("valid_charge", "total_charge >= 0")
    def encounters(): ...
"""

from __future__ import annotations

import functools
import typing
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from utils.config import on_databricks
from utils.expectations import Expectation

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = [
    "create_auto_cdc_flow",
    "create_auto_cdc_table",
    "define_scd2_fallback",
    "enforce_expectations",
    "expect",
    "expect_all",
    "expect_all_or_drop",
    "expect_all_or_fail",
    "expect_or_drop",
    "expect_or_fail",
    "expectations_decorator",
    "scd2_versions",
    "supports_native_expectations",
    "supports_scd_type_2",
]

_NATIVE_NAME = {"warn": "expect", "drop": "expect_or_drop", "fail": "expect_or_fail"}
#: Suffix of the streaming table that keeps every change event in the SCD type 2 fallback.
CHANGES_SUFFIX = "_changes"


def _dp() -> Any:
    """The pipelines API of this runtime: ``pyspark.pipelines``, else Databricks' classic ``dlt``."""
    try:
        from pyspark import pipelines as dp

        return dp
    except ImportError:  # pragma: no cover - older Databricks runtimes
        import dlt  # type: ignore[import-not-found]

        return dlt


# ----- capabilities ----------------------------------------------------------------------------
def supports_native_expectations(dp: Any | None = None) -> bool:
    """Whether this runtime's ``dp`` has expectation decorators (Databricks, the local runner)."""
    dp = dp if dp is not None else _dp()
    return all(callable(getattr(dp, name, None)) for name in _NATIVE_NAME.values())


def _literal_values(annotation: Any) -> set[str] | None:
    """The values a ``Literal[...]`` annotation (possibly inside ``Optional``) allows, as
    strings; ``None`` when the annotation does not restrict to literals."""
    if isinstance(annotation, str):  # postponed annotations: not evaluated, not restrictive
        return None
    if typing.get_origin(annotation) is typing.Literal:
        return {str(v) for v in typing.get_args(annotation)}
    allowed: set[str] = set()
    for arg in typing.get_args(annotation):
        if arg is type(None):
            continue
        values = _literal_values(arg)
        if values is None:
            return None
        allowed |= values
    return allowed or None


def supports_scd_type_2(dp: Any | None = None) -> bool:
    """Whether ``dp.create_auto_cdc_flow`` accepts ``stored_as_scd_type=2``.

    Open-source PySpark 4.2 annotates the argument ``Optional[Literal[1, "1"]]`` and raises for
    2 (measured); Databricks and the local runner accept 2. Read from the signature, so asking
    registers nothing.
    """
    if on_databricks():  # pragma: no cover - Databricks supports SCD type 2 natively
        return True
    import inspect

    dp = dp if dp is not None else _dp()
    try:
        parameter = inspect.signature(dp.create_auto_cdc_flow).parameters["stored_as_scd_type"]
        hints = typing.get_type_hints(dp.create_auto_cdc_flow)
    except (KeyError, TypeError, ValueError, NameError):
        return True
    annotation = hints.get("stored_as_scd_type", parameter.annotation)
    allowed = _literal_values(annotation)
    return allowed is None or "2" in allowed


# ----- expectations ------------------------------------------------------------------------------
def _rule_flag(rule: Expectation) -> "Column":
    """True when a row passes ``rule``; a NULL result fails it (as in ``apply_expectations``)."""
    from pyspark.sql import functions as F

    return F.coalesce(F.expr(rule.condition).cast("boolean"), F.lit(False))


def enforce_expectations(df: "DataFrame", rules: Iterable[Expectation],
                         metrics_name: str | None = None) -> "DataFrame":
    """``rules`` applied inside a query, for runtimes without expectation decorators.

    The OSS fallback of ``expect*``: what ``utils.expectations.apply_expectations`` does with
    actions (count, then drop or fail) done as one lazy plan, so it also runs on a stream and
    inside the pipeline engine's own query: a ``fail`` rule is a filter that raises
    (``raise_error``) on the first failing row, ``drop`` rules filter failing rows out, ``warn``
    rules keep them. With ``metrics_name``, every rule's failed-row count is observed on the
    query (``DataFrame.observe``, named ``metrics_name``: Spark's listeners and UI show it; the
    OSS pipeline engine does not copy it into its event log).
    """
    from pyspark.sql import functions as F

    rules = list(rules)
    if not rules:
        return df
    if metrics_name:
        df = df.observe(metrics_name, F.count(F.lit(1)).alias("rows"),
                        *[F.sum(F.when(~_rule_flag(r), 1).otherwise(0)).alias(f"failed_{r.name}")
                          for r in rules])
    for rule in rules:
        if rule.action == "fail":
            message = F.lit(f"Expectation '{rule.name}' ({rule.condition}) failed")
            df = df.filter(F.when(_rule_flag(rule), F.lit(True)).otherwise(F.raise_error(message)))
    keep = F.lit(True)
    for rule in rules:
        if rule.action == "drop":
            keep = keep & _rule_flag(rule)
    return df.filter(keep) if any(r.action == "drop" for r in rules) else df


def require_query_function(func: Any, rules: Iterable[Expectation]) -> None:
    """An expectation decorator stacked above ``@dp.table`` gets the table, not its function:
    say where it goes (the local runner's decorators check the same)."""
    if not callable(func):
        raise TypeError(
            "Expectation decorators go directly on the query function, below "
            "@dp.table / @dp.materialized_view / @dp.temporary_view "
            f"(got {type(func).__name__}; rules: {', '.join(r.name for r in rules)})"
        )


def expectations_decorator(rules: Iterable[Expectation]) -> Callable[[Callable], Callable]:
    """Decorate a query function with ``rules``, in order: the runtime's native decorators
    when it has them, else one wrapper applying :func:`enforce_expectations` to its result."""
    rules = list(rules)

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        require_query_function(func, rules)
        dp = _dp()
        if supports_native_expectations(dp):
            for rule in reversed(rules):   # decorators apply bottom-up: keep the rules' order
                func = getattr(dp, _NATIVE_NAME[rule.action])(rule.name, rule.condition)(func)
            return func

        @functools.wraps(func)
        def checked(*args: Any, **kwargs: Any) -> "DataFrame":
            return enforce_expectations(func(*args, **kwargs), rules,
                                        metrics_name=f"expectations_{func.__name__}")

        return checked

    return decorator


def expect(name: str, constraint: str) -> Callable:
    """Keep failing rows and count them (Databricks ``dp.expect``)."""
    return expectations_decorator([Expectation(name, constraint, "warn")])


def expect_or_drop(name: str, constraint: str) -> Callable:
    """Remove failing rows from the dataset and count them (``dp.expect_or_drop``)."""
    return expectations_decorator([Expectation(name, constraint, "drop")])


def expect_or_fail(name: str, constraint: str) -> Callable:
    """Stop the flow on the first failing row (``dp.expect_or_fail``)."""
    return expectations_decorator([Expectation(name, constraint, "fail")])


def expect_all(expectations: Mapping[str, str]) -> Callable:
    return expectations_decorator([Expectation(n, c, "warn") for n, c in expectations.items()])


def expect_all_or_drop(expectations: Mapping[str, str]) -> Callable:
    return expectations_decorator([Expectation(n, c, "drop") for n, c in expectations.items()])


def expect_all_or_fail(expectations: Mapping[str, str]) -> Callable:
    return expectations_decorator([Expectation(n, c, "fail") for n, c in expectations.items()])


# ----- AUTO CDC ----------------------------------------------------------------------------------
def _is_scd2(stored_as_scd_type: Any) -> bool:
    if stored_as_scd_type is not None and str(stored_as_scd_type) not in ("1", "2"):
        raise ValueError(f"stored_as_scd_type must be 1 or 2, not {stored_as_scd_type!r}")
    return str(stored_as_scd_type) == "2"


def create_auto_cdc_flow(target: str, source: str, keys: list, sequence_by: Any,
                         apply_as_deletes: Any = None, column_list: list | None = None,
                         except_column_list: list | None = None,
                         stored_as_scd_type: int | str | None = None,
                         name: str | None = None, **databricks_only: Any) -> None:
    """``dp.create_auto_cdc_flow``, SCD type 1 or 2, into a streaming table declared before.

    Where the runtime accepts the call (Databricks; the local runner; OSS for type 1) this *is*
    the native call. The OSS CLI cannot store type 2 in a streaming table the source already
    declared: use :func:`create_auto_cdc_table`, which declares the target itself.
    """
    dp = _dp()
    if _is_scd2(stored_as_scd_type) and not supports_scd_type_2(dp):
        raise NotImplementedError(
            f"AUTO CDC into '{target}' with stored_as_scd_type=2: this runtime (open-source "
            "pyspark.pipelines) accepts only SCD type 1. Declare the target with "
            "utils.pipelines.compat.create_auto_cdc_table(...), which falls back to a "
            "materialized view of the SCD2 history.")
    dp.create_auto_cdc_flow(target=target, source=source, keys=keys, sequence_by=sequence_by,
                            apply_as_deletes=apply_as_deletes, column_list=column_list,
                            except_column_list=except_column_list,
                            stored_as_scd_type=stored_as_scd_type, name=name, **databricks_only)


def create_auto_cdc_table(name: str, *, source: str, keys: list[str], sequence_by: Any,
                          apply_as_deletes: Any = None, column_list: list[str] | None = None,
                          except_column_list: list[str] | None = None,
                          stored_as_scd_type: int | str | None = None,
                          comment: str | None = None) -> None:
    """A streaming table ``name`` kept by AUTO CDC from ``source``: ``dp.create_streaming_table``
    followed by :func:`create_auto_cdc_flow`, exactly, wherever the runtime stores the SCD type.

    Fallback, only for SCD type 2 on open-source ``pyspark.pipelines`` (which rejects it): the
    same rows built from the OSS API. A streaming table ``<name>_changes`` appends every change
    event of ``source`` once (incremental, like AUTO CDC's own change storage), and ``name``
    becomes a materialized view of :func:`scd2_versions` over it: the columns, ``__START_AT``
    and ``__END_AT`` that AUTO CDC stores. Recomputing every key each update costs more than
    AUTO CDC's MERGE but gives the same table, late and deleted changes included.
    """
    dp = _dp()
    scd2 = _is_scd2(stored_as_scd_type)
    if not scd2 or supports_scd_type_2(dp):
        dp.create_streaming_table(name, comment=comment)
        create_auto_cdc_flow(target=name, source=source, keys=keys, sequence_by=sequence_by,
                             apply_as_deletes=apply_as_deletes, column_list=column_list,
                             except_column_list=except_column_list,
                             stored_as_scd_type=stored_as_scd_type)
        return

    define_scd2_fallback(name, source=source, keys=keys, sequence_by=sequence_by,
                         apply_as_deletes=apply_as_deletes, column_list=column_list,
                         except_column_list=except_column_list, comment=comment)


def define_scd2_fallback(name: str, *, source: str, keys: list[str], sequence_by: Any,
                         apply_as_deletes: Any = None, column_list: list[str] | None = None,
                         except_column_list: list[str] | None = None,
                         comment: str | None = None,
                         sequence_fields: list[str] | None = None) -> None:
    """The OSS definition of an SCD type 2 AUTO CDC target (see :func:`create_auto_cdc_table`):
    the streaming table ``<name>_changes`` of every change event and the materialized view
    ``name`` of :func:`scd2_versions` over it. Public so that the tests can run it where the
    native path also runs (the local runner) and compare both."""
    from pyspark.sql import SparkSession

    dp = _dp()
    changes = f"{name}{CHANGES_SUFFIX}"

    @dp.table(name=changes, comment=f"Every change event of {source} (SCD2 fallback of {name})")
    def change_events() -> "DataFrame":
        return SparkSession.active().readStream.table(source)

    @dp.materialized_view(name=name, comment=comment)
    def scd2_history() -> "DataFrame":
        return scd2_versions(SparkSession.active().read.table(changes), keys, sequence_by,
                             apply_as_deletes, column_list, except_column_list,
                             sequence_fields)


def _as_column(value: Any) -> "Column":
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    return value if isinstance(value, Column) else F.expr(str(value))



def scd2_versions(events: "DataFrame", keys: list[str], sequence_by: Any,
                  apply_as_deletes: Any = None, column_list: list[str] | None = None,
                  except_column_list: list[str] | None = None,
                  sequence_fields: list[str] | None = None) -> "DataFrame":
    """Change events -> the SCD type 2 rows AUTO CDC stores, as a pure DataFrame function.

    Per key, events are ordered by ``sequence_by``; the same event delivered twice (same keys
    and sequence) counts once. Every event that is not a delete (``apply_as_deletes``) opens a
    version: its columns (``column_list``, or all but ``except_column_list``), ``__START_AT``
    = its sequence value, ``__END_AT`` = the next event's (NULL while current). A delete opens
    nothing and so closes the version before it. These are the rules of the local runner's
    AUTO CDC (:mod:`utils.pipelines.autocdc`) and of Databricks' ``stored_as_scd_type=2``.

    The plan is built without asking the engine for a schema (the official pipelines CLI
    refuses analysis inside a query function): columns are removed, not listed, and a struct
    sequence is ordered as a struct unless ``sequence_fields`` names its fields (engines that
    cannot order a window by a struct, such as Sail, need them).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    seq, is_delete = "__seq", "__is_delete"
    delete_flag = (F.coalesce(_as_column(apply_as_deletes).cast("boolean"), F.lit(False))
                   if apply_as_deletes is not None else F.lit(False))
    order = [F.col(f"{seq}.`{f}`") for f in sequence_fields] if sequence_fields else [F.col(seq)]
    # one row per (keys, sequence) with a window, not dropDuplicates: a Spark Connect server
    # analyses a Deduplicate's input as soon as the flow is defined (see official_check)
    same_event = Window.partitionBy(*keys, seq).orderBy(*order)
    staged = (events.select("*", _as_column(sequence_by).alias(seq), delete_flag.alias(is_delete))
              .withColumn("__n", F.row_number().over(same_event)).filter("__n = 1"))
    by_key = Window.partitionBy(*keys).orderBy(*order)
    versions = (staged.withColumn("__END_AT", F.lead(seq).over(by_key))
                .filter(~F.col(is_delete)))
    if column_list:
        return versions.select(*[F.col(f"`{c}`") for c in column_list],
                               F.col(seq).alias("__START_AT"), F.col("__END_AT"))
    # every column but the excluded ones, without listing them: a struct of all columns minus
    # fields (``DataFrame.drop`` would not do: a Spark Connect server analyses its input
    # eagerly, and in the pipelines CLI the input table does not exist yet when it is defined)
    row = F.struct("*").dropFields(*(except_column_list or []), seq, is_delete, "__n",
                                   "__END_AT")
    return (versions.select(row.alias("__row"), F.col(seq).alias("__START_AT"), "__END_AT")
            .select("__row.*", "__START_AT", "__END_AT"))

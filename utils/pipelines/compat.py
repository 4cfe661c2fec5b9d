"""The few pipeline APIs open-source PySpark lacks, with Databricks' names and semantics.

A pipeline source file imports the official API (``from pyspark import pipelines as dp``) for
tables, materialized views, views and flows, and imports from here only what open-source
PySpark 4.2 does not have or restricts:

* the expectation decorators ``expect``, ``expect_or_drop``, ``expect_or_fail`` and
  ``expect_all*`` (Databricks: ``dp.expect*``);
* ``create_auto_cdc_flow`` with ``stored_as_scd_type=2`` (open source accepts only 1).

On Databricks every name here **is** the native one (re-exported), so the pipeline runs there
unchanged. Locally the expectation decorators attach :class:`utils.expectations.Expectation`
objects to the query function, which the local runner evaluates with the course's one
expectations engine (:func:`utils.expectations.apply_expectations`); AUTO CDC calls the native
open-source function whenever it accepts the call (SCD type 1) and registers an SCD type 2
flow with the local runner's registry otherwise.

Decorator order is the Databricks one: expectations go *below* ``@dp.table`` /
``@dp.materialized_view``, directly on the function::

    @dp.materialized_view
    @expect_or_drop("valid_charge", "total_charge >= 0")
    def encounters(): ...
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from utils.config import on_databricks
from utils.expectations import Expectation

#: Attribute of a query function holding its expectations, in declaration order (top first).
EXPECTATIONS_ATTR = "__course_expectations__"

__all__ = [
    "EXPECTATIONS_ATTR",
    "create_auto_cdc_flow",
    "expect",
    "expect_all",
    "expect_all_or_drop",
    "expect_all_or_fail",
    "expect_or_drop",
    "expect_or_fail",
    "expectations_of",
]


def expectations_of(func: Callable[..., Any] | None) -> list[Expectation]:
    """The expectations the local decorators attached to ``func`` (empty when none)."""
    return list(getattr(func, EXPECTATIONS_ATTR, ())) if func is not None else []


def _attach(rules: list[Expectation]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(func):
            raise TypeError(
                "Expectation decorators go directly on the query function, below "
                "@dp.table / @dp.materialized_view / @dp.temporary_view "
                f"(got {type(func).__name__}; rules: {', '.join(r.name for r in rules)})"
            )
        # Decorators apply bottom-up; keep the order they are written in (top first).
        existing = expectations_of(func)
        setattr(func, EXPECTATIONS_ATTR, rules + existing)
        return func

    return decorator


def _local_expect(name: str, constraint: str) -> Callable:
    """Keep failing rows and count them (Databricks ``dp.expect``)."""
    return _attach([Expectation(name, constraint, "warn")])


def _local_expect_or_drop(name: str, constraint: str) -> Callable:
    """Remove failing rows from the dataset and count them (``dp.expect_or_drop``)."""
    return _attach([Expectation(name, constraint, "drop")])


def _local_expect_or_fail(name: str, constraint: str) -> Callable:
    """Stop the flow on the first failing row (``dp.expect_or_fail``)."""
    return _attach([Expectation(name, constraint, "fail")])


def _local_expect_all(expectations: Mapping[str, str]) -> Callable:
    return _attach([Expectation(n, c, "warn") for n, c in expectations.items()])


def _local_expect_all_or_drop(expectations: Mapping[str, str]) -> Callable:
    return _attach([Expectation(n, c, "drop") for n, c in expectations.items()])


def _local_expect_all_or_fail(expectations: Mapping[str, str]) -> Callable:
    return _attach([Expectation(n, c, "fail") for n, c in expectations.items()])


def _local_create_auto_cdc_flow(target: str, source: str, keys: list, sequence_by: Any,
                                apply_as_deletes: Any = None, column_list: list | None = None,
                                except_column_list: list | None = None,
                                stored_as_scd_type: int | str | None = None,
                                name: str | None = None, **databricks_only: Any) -> None:
    """``create_auto_cdc_flow`` with SCD type 1 **and** 2 for the local runner.

    Type 1 (or unspecified) goes straight to open-source PySpark. For type 2 the native
    function validates and normalises every other argument (it is called with type 1 into a
    throw-away registry), then the flow is registered with ``stored_as_scd_type=2``.
    """
    from pyspark.pipelines import api
    from pyspark.pipelines.graph_element_registry import (
        get_active_graph_element_registry,
        graph_element_registration_context,
    )
    from pyspark.pipelines.source_code_location import get_caller_source_code_location

    if databricks_only:
        raise NotImplementedError(
            "The local runner does not implement these AUTO CDC options (Databricks only): "
            + ", ".join(sorted(databricks_only))
        )
    scd = 1 if stored_as_scd_type is None else stored_as_scd_type
    if str(scd) not in ("1", "2"):
        raise ValueError(f"stored_as_scd_type must be 1 or 2, not {stored_as_scd_type!r}")
    arguments = dict(target=target, source=source, keys=keys, sequence_by=sequence_by,
                     apply_as_deletes=apply_as_deletes, column_list=column_list,
                     except_column_list=except_column_list, name=name)
    if str(scd) == "1":
        api.create_auto_cdc_flow(stored_as_scd_type=stored_as_scd_type, **arguments)
        return

    captured: list = []

    class _Capture(_CaptureRegistry):
        def register_auto_cdc_flow(self, flow) -> None:  # noqa: ANN001
            captured.append(flow)

    registry = get_active_graph_element_registry()  # fails clearly outside a pipeline
    with graph_element_registration_context(_Capture()):
        api.create_auto_cdc_flow(stored_as_scd_type=1, **arguments)
    flow = dataclasses.replace(captured[0], stored_as_scd_type=2,
                               source_code_location=get_caller_source_code_location(stacklevel=1))
    registry.register_auto_cdc_flow(flow)


def _capture_registry_base():
    from pyspark.pipelines.graph_element_registry import GraphElementRegistry

    class CaptureRegistry(GraphElementRegistry):
        def register_output(self, output) -> None:  # noqa: ANN001
            raise AssertionError("unexpected output")

        def register_flow(self, flow) -> None:  # noqa: ANN001
            raise AssertionError("unexpected flow")

        def register_auto_cdc_flow(self, flow) -> None:  # noqa: ANN001
            raise AssertionError("unexpected flow")

        def register_sql(self, sql_text, file_path) -> None:  # noqa: ANN001
            raise AssertionError("unexpected SQL")

    return CaptureRegistry


if on_databricks():  # pragma: no cover - exercised on Databricks only
    try:
        from pyspark.pipelines import (  # type: ignore[attr-defined]
            create_auto_cdc_flow,
            expect,
            expect_all,
            expect_all_or_drop,
            expect_all_or_fail,
            expect_or_drop,
            expect_or_fail,
        )
    except ImportError:  # older runtimes: the classic `dlt` module has the same functions
        from dlt import (  # type: ignore[import-not-found,no-redef]
            create_auto_cdc_flow,
            expect,
            expect_all,
            expect_all_or_drop,
            expect_all_or_fail,
            expect_or_drop,
            expect_or_fail,
        )
else:
    _CaptureRegistry = _capture_registry_base()
    expect = _local_expect
    expect_or_drop = _local_expect_or_drop
    expect_or_fail = _local_expect_or_fail
    expect_all = _local_expect_all
    expect_all_or_drop = _local_expect_all_or_drop
    expect_all_or_fail = _local_expect_all_or_fail
    create_auto_cdc_flow = _local_create_auto_cdc_flow

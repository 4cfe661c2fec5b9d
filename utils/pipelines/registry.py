"""Collect what a pipeline's source files define, with PySpark's own registration hook.

``pyspark.pipelines`` decorators (``@dp.table``, ``@dp.materialized_view``, ...) do not run
anything: they hand an ``Output`` (the dataset) and a ``Flow`` (the query that fills it) to the
*active graph element registry*. The official CLI's registry sends them to a Spark Connect
server that runs pipelines; Sail has no such server command, so :class:`LocalRegistry` keeps
them in memory for the local runner instead. Loading mirrors the official CLI
(``pyspark.pipelines.cli.register_definitions``): each ``.py`` file is executed as a module with
``spark`` in its globals, inside the registration context, with session mutations blocked.

While the sources load, the runner also offers on ``pyspark.pipelines`` the two Databricks APIs
open-source PySpark lacks (:func:`local_api`): the ``expect*`` decorators (they attach
:class:`utils.expectations.Expectation` objects to the query function, which the runner
evaluates with the course's expectations engine) and a ``create_auto_cdc_flow`` that accepts
``stored_as_scd_type=2``. The sources and :mod:`utils.pipelines.compat` see them as the
runtime's own capabilities, as on Databricks; nothing in the sources imports this module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from pyspark.pipelines.flow import AutoCdcFlow, Flow
from pyspark.pipelines.graph_element_registry import (
    GraphElementRegistry,
    graph_element_registration_context,
)
from pyspark.pipelines.output import Output

from utils.expectations import Expectation
from utils.pipelines.compat import require_query_function

#: Attribute of a query function holding its expectations, in declaration order (top first).
EXPECTATIONS_ATTR = "__course_expectations__"

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class PipelineDefinitionError(ValueError):
    """The pipeline's source files define something invalid (duplicate names, SQL files, ...)."""


def expectations_of(func: Callable[..., Any] | None) -> list[Expectation]:
    """The expectations the local decorators attached to ``func`` (empty when none)."""
    return list(getattr(func, EXPECTATIONS_ATTR, ())) if func is not None else []


def _attach(rules: list[Expectation]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        require_query_function(func, rules)
        # Decorators apply bottom-up; keep the order they are written in (top first).
        setattr(func, EXPECTATIONS_ATTR, rules + expectations_of(func))
        return func

    return decorator


def local_expect(name: str, constraint: str) -> Callable:
    """Keep failing rows and count them (Databricks ``dp.expect``)."""
    return _attach([Expectation(name, constraint, "warn")])


def local_expect_or_drop(name: str, constraint: str) -> Callable:
    """Remove failing rows from the dataset and count them (``dp.expect_or_drop``)."""
    return _attach([Expectation(name, constraint, "drop")])


def local_expect_or_fail(name: str, constraint: str) -> Callable:
    """Stop the flow on the first failing row (``dp.expect_or_fail``)."""
    return _attach([Expectation(name, constraint, "fail")])


def local_expect_all(expectations: Mapping[str, str]) -> Callable:
    return _attach([Expectation(n, c, "warn") for n, c in expectations.items()])


def local_expect_all_or_drop(expectations: Mapping[str, str]) -> Callable:
    return _attach([Expectation(n, c, "drop") for n, c in expectations.items()])


def local_expect_all_or_fail(expectations: Mapping[str, str]) -> Callable:
    return _attach([Expectation(n, c, "fail") for n, c in expectations.items()])


class _CaptureRegistry(GraphElementRegistry):
    """Collects the one AUTO CDC flow a native call registers; anything else is a bug."""

    def __init__(self) -> None:
        self.captured: list[AutoCdcFlow] = []

    def register_output(self, output) -> None:  # noqa: ANN001
        raise AssertionError("unexpected output")

    def register_flow(self, flow) -> None:  # noqa: ANN001
        raise AssertionError("unexpected flow")

    def register_auto_cdc_flow(self, flow) -> None:  # noqa: ANN001
        self.captured.append(flow)

    def register_sql(self, sql_text, file_path) -> None:  # noqa: ANN001
        raise AssertionError("unexpected SQL")


def local_create_auto_cdc_flow(target: str, source: str, keys: list, sequence_by: Any,
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
    from pyspark.pipelines.graph_element_registry import get_active_graph_element_registry

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
    registry = get_active_graph_element_registry()  # fails clearly outside a pipeline
    capture = _CaptureRegistry()
    with graph_element_registration_context(capture):
        api.create_auto_cdc_flow(stored_as_scd_type=1, **arguments)
    registry.register_auto_cdc_flow(dataclasses.replace(
        capture.captured[0], stored_as_scd_type=2, source_code_location=_declaring_location()))


def _declaring_location():
    """Where the source declared the flow: the first frame outside this module and compat."""
    import inspect

    from pyspark.pipelines.source_code_location import SourceCodeLocation

    here = {Path(__file__).resolve(), (Path(__file__).parent / "compat.py").resolve()}
    for frame in inspect.stack()[2:]:
        if Path(frame.filename).resolve() not in here:
            return SourceCodeLocation(filename=frame.filename, line_number=frame.lineno)
    return None


def local_api() -> dict[str, Callable]:
    """What the runner adds to ``pyspark.pipelines`` while the sources load (see the module)."""
    return {"expect": local_expect, "expect_or_drop": local_expect_or_drop,
            "expect_or_fail": local_expect_or_fail, "expect_all": local_expect_all,
            "expect_all_or_drop": local_expect_all_or_drop,
            "expect_all_or_fail": local_expect_all_or_fail,
            "create_auto_cdc_flow": local_create_auto_cdc_flow}


@contextmanager
def local_api_installed() -> Iterator[None]:
    """``pyspark.pipelines`` with :func:`local_api` on it for the ``with`` block, then as before."""
    import pyspark.pipelines as dp

    missing = object()
    saved = {name: getattr(dp, name, missing) for name in local_api()}
    for name, function in local_api().items():
        setattr(dp, name, function)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                delattr(dp, name)
            else:
                setattr(dp, name, value)


@dataclass
class LocalRegistry(GraphElementRegistry):
    """Every output, flow and AUTO CDC flow registered while the source files ran, in order."""

    outputs: dict[str, Output] = field(default_factory=dict)
    flows: list[Flow] = field(default_factory=list)
    auto_cdc_flows: list[AutoCdcFlow] = field(default_factory=list)
    expectations: dict[str, list[Expectation]] = field(default_factory=dict)
    sql_files: list[Path] = field(default_factory=list)

    def register_output(self, output: Output) -> None:
        if output.name in self.outputs:
            first = self.outputs[output.name].source_code_location
            raise PipelineDefinitionError(
                f"Dataset '{output.name}' is defined twice (first at "
                f"{Path(first.filename).name}:{first.line_number})"
            )
        self.outputs[output.name] = output

    def register_flow(self, flow: Flow) -> None:
        if flow.name in self.flow_names():
            raise PipelineDefinitionError(f"Flow '{flow.name}' is defined twice")
        self.flows.append(flow)
        rules = expectations_of(flow.func)
        if rules:
            self.expectations[flow.name] = rules

    def register_auto_cdc_flow(self, flow: AutoCdcFlow) -> None:
        name = flow.name or flow.target
        if name in self.flow_names():
            raise PipelineDefinitionError(f"Flow '{name}' is defined twice")
        self.auto_cdc_flows.append(flow)

    def register_sql(self, sql_text: str, file_path: Path) -> None:
        # SQL pipeline files (CREATE STREAMING TABLE ...) need the server-side SQL parser of
        # Spark's pipeline engine; the local runner supports Python sources only.
        self.sql_files.append(Path(file_path))

    def flow_names(self) -> set[str]:
        return {f.name for f in self.flows} | {f.name or f.target for f in self.auto_cdc_flows}


@contextmanager
def _change_dir(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def load_definitions(files: list[Path], spark: "SparkSession", root: Path) -> LocalRegistry:
    """Execute the pipeline source ``files`` (in the given order) and return what they define."""
    from pyspark.pipelines.block_session_mutations import block_session_mutations

    registry = LocalRegistry()
    with _change_dir(root), graph_element_registration_context(registry), local_api_installed():
        for file in files:
            if file.suffix == ".sql":
                registry.register_sql(file.read_text(encoding="utf-8"), file.relative_to(root))
                continue
            if file.suffix != ".py":
                raise PipelineDefinitionError(
                    f"Pipeline source {file.name}: only .py files are supported")
            module_spec = importlib.util.spec_from_file_location(
                f"_pipeline_{file.stem}", str(file))
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module.__dict__["spark"] = spark
            with block_session_mutations():
                module_spec.loader.exec_module(module)
    if registry.sql_files:
        raise PipelineDefinitionError(
            "SQL pipeline files are not supported by the local runner: "
            + ", ".join(str(p) for p in registry.sql_files))
    return registry


def describe_output(output: Output) -> str:
    """``streaming table`` / ``materialized view`` / ``temporary view`` / ``sink``."""
    return {
        "StreamingTable": "streaming table",
        "MaterializedView": "materialized view",
        "TemporaryView": "temporary view",
        "Sink": "sink",
    }.get(type(output).__name__, type(output).__name__)


def output_kind(output: Any) -> str:
    """Short kind used in the graph and event log: ``st``, ``mv``, ``view``, ``sink``."""
    return {"StreamingTable": "st", "MaterializedView": "mv", "TemporaryView": "view",
            "Sink": "sink"}.get(type(output).__name__, "external")

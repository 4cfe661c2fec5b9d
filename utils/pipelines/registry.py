"""Collect what a pipeline's source files define, with PySpark's own registration hook.

``pyspark.pipelines`` decorators (``@dp.table``, ``@dp.materialized_view``, ...) do not run
anything: they hand an ``Output`` (the dataset) and a ``Flow`` (the query that fills it) to the
*active graph element registry*. The official CLI's registry sends them to a Spark Connect
server that runs pipelines; Sail has no such server command, so :class:`LocalRegistry` keeps
them in memory for the local runner instead. Loading mirrors the official CLI
(``pyspark.pipelines.cli.register_definitions``): each ``.py`` file is executed as a module with
``spark`` in its globals, inside the registration context, with session mutations blocked.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pyspark.pipelines.flow import AutoCdcFlow, Flow
from pyspark.pipelines.graph_element_registry import (
    GraphElementRegistry,
    graph_element_registration_context,
)
from pyspark.pipelines.output import Output

from utils.expectations import Expectation
from utils.pipelines.compat import expectations_of

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class PipelineDefinitionError(ValueError):
    """The pipeline's source files define something invalid (duplicate names, SQL files, ...)."""


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
    with _change_dir(root), graph_element_registration_context(registry):
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

"""Declarative pipelines (``pyspark.pipelines`` / Databricks Lakeflow) run locally on Sail.

A pipeline is a folder with a ``pipeline.yml`` and Python source files written with the
official API (``from pyspark import pipelines as dp``) plus :mod:`utils.pipelines.compat` for
expectations and SCD2 AUTO CDC. ``python -m utils.pipelines run <folder>`` (or
:func:`run_pipeline`) loads the sources with PySpark's own registration hook, validates the
graph, and executes it on the course engine, writing Delta tables, an event log and a lineage
picture. The same sources deploy unchanged as a Databricks pipeline (``databricks.yml``) and
run unchanged with the official ``spark-pipelines`` CLI (``notebooks/pipeline/spark-pipeline.yml``,
checked by ``python -m utils.pipelines.official_check``).

The runner's names below are imported on first use (PEP 562), not with the package: pipeline
sources import :mod:`utils.pipelines.medallion` and :mod:`utils.pipelines.compat`, and those
must not pull in the runner, which imports ``pyspark.pipelines``' engine-side modules
(``graph_element_registry``, ``flow``, ``output``) that other runtimes do not have.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FlowResult": "utils.pipelines.runner",
    "Pipeline": "utils.pipelines.runner",
    "PipelineDefinitionError": "utils.pipelines.registry",
    "PipelineGraph": "utils.pipelines.graph",
    "PipelineGraphError": "utils.pipelines.graph",
    "PipelineRun": "utils.pipelines.runner",
    "PipelineRunFailed": "utils.pipelines.runner",
    "PipelineSpec": "utils.pipelines.spec",
    "PipelineSpecError": "utils.pipelines.spec",
    "load_pipeline": "utils.pipelines.runner",
    "load_spec": "utils.pipelines.spec",
    "register_pipeline_tables": "utils.pipelines.runner",
    "run_pipeline": "utils.pipelines.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

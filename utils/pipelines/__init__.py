"""Declarative pipelines (``pyspark.pipelines`` / Databricks Lakeflow) run locally on Sail.

A pipeline is a folder with a ``pipeline.yml`` and Python source files written with the
official API (``from pyspark import pipelines as dp``) plus :mod:`utils.pipelines.compat` for
expectations and SCD2 AUTO CDC. ``python -m utils.pipelines run <folder>`` (or
:func:`run_pipeline`) loads the sources with PySpark's own registration hook, validates the
graph, and executes it on the course engine, writing Delta tables, an event log and a lineage
picture. The same sources deploy unchanged as a Databricks pipeline (``databricks.yml``).
"""

from utils.pipelines.graph import PipelineGraph, PipelineGraphError
from utils.pipelines.registry import PipelineDefinitionError
from utils.pipelines.runner import (
    FlowResult,
    Pipeline,
    PipelineRun,
    PipelineRunFailed,
    load_pipeline,
    register_pipeline_tables,
    run_pipeline,
)
from utils.pipelines.spec import PipelineSpec, PipelineSpecError, load_spec

__all__ = [
    "FlowResult",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineGraph",
    "PipelineGraphError",
    "PipelineRun",
    "PipelineRunFailed",
    "PipelineSpec",
    "PipelineSpecError",
    "load_pipeline",
    "load_spec",
    "register_pipeline_tables",
    "run_pipeline",
]

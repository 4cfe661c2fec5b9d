"""``python -m utils.pipelines run|dry-run|full-refresh <pipeline folder>``.

Prints one progress line per flow, then where the event log and the lineage picture are.
Exit code 0 when every flow completed, 1 when a flow failed, 2 when the graph is invalid.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None, stop_session: bool = True) -> int:
    """Run the CLI; ``stop_session=False`` keeps the Spark session (for tests)."""
    parser = argparse.ArgumentParser(prog="python -m utils.pipelines",
                                     description="Run a declarative pipeline on the local engine")
    parser.add_argument("command", choices=["run", "dry-run", "full-refresh"],
                        help="run: incremental update; dry-run: validate the graph only; "
                             "full-refresh: reset every table and recompute")
    parser.add_argument("path", help="pipeline folder (with pipeline.yml) or spec file")
    args = parser.parse_args(argv)

    from utils.pipelines import (
        PipelineDefinitionError,
        PipelineGraphError,
        PipelineRunFailed,
        PipelineSpecError,
        load_pipeline,
    )
    from utils.session import get_spark, stop_spark

    started = time.perf_counter()
    try:
        spark = get_spark()
        try:
            pipeline = load_pipeline(args.path, spark)
        except (PipelineGraphError, PipelineDefinitionError, PipelineSpecError) as err:
            print(err, file=sys.stderr)
            return 2
        graph = pipeline.graph
        print(f"pipeline {pipeline.spec.name}: {len(graph.flows)} flows, "
              f"{sum(1 for d in graph.datasets.values() if d.kind != 'external')} datasets, "
              f"schema {pipeline.spec.schema}")
        if args.command == "dry-run":
            print(graph.describe())
            print("graph is valid")
            return 0
        try:
            run = pipeline.run(full_refresh=args.command == "full-refresh", progress=print,
                               timings=True)
        except PipelineRunFailed as err:
            print(err, file=sys.stderr)
            return 1
        print(f"{run.status} in {time.perf_counter() - started:.1f} s")
        print(f"event log: {pipeline.event_log_name} ({pipeline.spec.event_log_path})")
        print(f"lineage:   {run.lineage_path}")
        return 0
    finally:
        if stop_session:
            stop_spark()


if __name__ == "__main__":
    sys.exit(main())

"""The helpers that only work on a local engine, in one place.

On Databricks every course table is a Unity Catalog managed table: it has no folder a notebook
can read, and the lakehouse folder of ``get_config()`` holds nothing. A helper that needs a
table's folder, scans the local lakehouse or drives the local pipeline runner raises there (or
silently finds nothing), so a notebook or pipeline source may call one only on the local branch,
for example under ``if not config.databricks:`` or in the ``else`` of ``if on_databricks():``.
``tests/test_databricks_branch.py`` reads every notebook's code cells and every pipeline source
and fails when such a call is not guarded.

Keys are the helpers' qualified names (``module.function``, where the function is defined);
values say why the helper is local-only. A helper that has a Databricks path (Delta SQL, the
catalog) does not belong here.
"""

from __future__ import annotations

LOCAL_ONLY_HELPERS: dict[str, str] = {
    "utils.delta_ops.table_path": "a managed table has no folder: raises on Databricks",
    "utils.delta_ops.log_files": "lists the table folder's _delta_log (raises on Databricks)",
    "utils.delta_ops.read_commit": "reads a commit file of the table folder (raises on Databricks)",
    "utils.delta_ops.latest_checkpoint": "lists checkpoint files of the table folder "
                                         "(raises on Databricks)",
    "utils.delta_ops.files_scanned": "prunes the table folder's files with delta-rs "
                                     "(raises on Databricks)",
    "utils.delta_ops.file_stats": "reads per-file statistics from the table folder's log "
                                  "(raises on Databricks)",
    "utils.tables.existing_tables": "scans the local lakehouse folder (finds nothing on Databricks)",
    "utils.tables.is_delta_table": "looks at a local folder",
    "utils.pipelines.runner.load_pipeline": "the local pipeline runner: open-source "
                                            "pyspark.pipelines internals and table folders",
}

__all__ = ["LOCAL_ONLY_HELPERS"]

"""Two DataFrame operations written so that a plan can be built before its inputs exist.

A declarative pipeline defines every flow *before* it runs: the query function of a silver
view is called while the bronze tables it reads are not there yet. On a Spark Connect server
(the official ``spark-pipelines`` CLI, a Spark Connect cluster) two everyday calls analyse
their input as soon as the plan is built, and so fail inside a query function
(``TABLE_OR_VIEW_NOT_FOUND``, or the CLI's ``ATTEMPT_ANALYSIS_IN_PIPELINE_QUERY_FUNCTION``):

- ``DataFrame.drop``: the server resolves the input to learn which columns remain;
- ``DataFrame.distinct`` / ``dropDuplicates``: the server resolves the input to learn the key
  columns (measured in the planner of Spark 4.2; ``select``, ``withColumn``, ``join``,
  ``groupBy`` and ``withColumnRenamed`` stay lazy there). So do ``df.columns`` and
  ``df.schema`` on any Spark Connect client: they ask the server for the schema.

The two functions below give the same result with plans that are resolved only when the
query runs. Use them in code a pipeline shares (``utils.silver``, ``utils.gold``,
``utils.cdc``); in a notebook cell, ``df.drop(...)`` and ``df.distinct()`` are just as right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def drop_columns(df: "DataFrame", *names: str) -> "DataFrame":
    """``df`` without the columns ``names``, in the same column order (``df.drop(*names)``).

    Packs the row into one struct, removes the fields from it and unpacks it: a projection of
    ``*``, resolved when the query runs (Spark's optimizer removes the struct again). A name
    that is not a column is ignored, as by ``drop``.
    """
    from pyspark.sql import functions as F

    if not names:
        return df
    return df.select(F.struct("*").dropFields(*names).alias("__row")).select("__row.*")


def distinct_rows(df: "DataFrame", *columns: str) -> "DataFrame":
    """One row per distinct combination of ``columns`` (``df.select(*columns).distinct()``).

    A ``GROUP BY`` of the columns: the same rows, planned without resolving ``df`` first.
    """
    from pyspark.sql import functions as F

    return df.groupBy(*columns).agg(F.count(F.lit(1)).alias("__rows")).select(*columns)

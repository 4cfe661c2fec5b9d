"""Bronze: one streaming table per landing entity, fed incrementally from the landing zone.

A streaming table processes each landing file once: `landing_stream` is a `spark.readStream`
of whole files (Auto Loader on Databricks), so an update reads only the files that arrived
since the previous one. `bronze_lines` splits each file into one row per physical line with
the same lineage columns as `utils.bronze.ingest_landing` (notebook 02). Nothing is parsed here.
"""

from pyspark import pipelines as dp

from utils.bronze import ENTITY_SPECS
from utils.pipelines.medallion import bronze_lines, landing_stream


def define_bronze_table(entity: str) -> None:
    spec = ENTITY_SPECS[entity]

    @dp.table(name=f"bronze_{entity}",
              comment=f"Raw lines of landing/{spec.source}/ ({spec.format}), with lineage.")
    def bronze():
        files = landing_stream(spark, spec.source, spec.file_name)  # noqa: F821 - set by the runner
        return bronze_lines(files, spec.source, spec.format)


for name in ENTITY_SPECS:   # claims, encounters, facilities, lab_results, medications, ...
    define_bronze_table(name)

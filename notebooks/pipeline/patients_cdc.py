"""Patients: change records applied as an SCD type 2 history with AUTO CDC (notebook 04).

The change records stream in from bronze (only the new ones each update), are parsed and
checked with the rules of `utils.cdc`, pseudonymised (`to_change_records`) and applied by
AUTO CDC with `stored_as_scd_type=2`: ordered by `(change_ts, change_id)`, so a late change
lands in its place in the history, and a DELETE closes the current version.
`create_auto_cdc_table` is `dp.create_streaming_table` + `dp.create_auto_cdc_flow` on Databricks
and in the local runner; open-source `spark-pipelines` accepts only SCD type 1, so there
`utils.pipelines.compat` builds the same history as a materialized view over a streaming table
of the change events. `silver_patients` maps the AUTO CDC columns (`__START_AT`, `__END_AT`) to
the contract's (`valid_from`, `valid_to`, ...).
"""

from pyspark import pipelines as dp
from pyspark.sql import functions as F

from utils import cdc
from utils.pipelines.compat import create_auto_cdc_table
from utils.pipelines.medallion import scd2_to_contract, with_expectations


@dp.temporary_view(comment="New patient change records, parsed; invalid ones dropped")
@with_expectations(cdc.patient_change_expectations())
def patient_changes_checked():
    changes = spark.readStream.table("bronze_patients")  # noqa: F821 - set by the runner
    # Not deduplicated here: a re-delivered change has the same change_id, so the same
    # sequence, and AUTO CDC applies one event per key and sequence. (dropDuplicates on a
    # stream would keep every change_id in its state forever.)
    return cdc.parse_patient_changes(changes)


@dp.temporary_view(comment="Valid change records without direct identifiers (patient_key)")
def patient_changes():
    return cdc.to_change_records(spark.readStream.table("patient_changes_checked"))  # noqa: F821


create_auto_cdc_table(
    "silver_patients_scd2",
    comment="SCD type 2 history of each patient as AUTO CDC stores it (__START_AT/__END_AT)",
    source="patient_changes",
    keys=["patient_key"],
    sequence_by=F.struct("change_ts", "change_id"),
    apply_as_deletes=F.expr("operation = 'DELETE'"),
    except_column_list=["operation", "change_id", "change_ts"],
    stored_as_scd_type=2,
)


@dp.materialized_view(comment="silver.patients: valid_from, valid_to, is_current, is_deleted")
def silver_patients():
    return scd2_to_contract(spark.read.table("silver_patients_scd2"))  # noqa: F821

"""Gold: one materialized view per KPI, computed by the functions of `utils.gold` (notebook 05).

Materialized views are recomputed from silver on every update, like `utils.gold.build_gold`,
so each KPI has exactly one definition: the function named after it.
"""

from pyspark import pipelines as dp
from pyspark.sql import functions as F

from utils import gold
from utils.pipelines.medallion import AS_OF_COLUMN, with_reference_date


def silver(name: str):
    return spark.read.table(f"silver_{name}")  # noqa: F821 - `spark` is set by the runner


def title(name: str) -> str:
    return gold.gold_tables()[name].title


@dp.materialized_view(comment=title("readmission_30d"))
def gold_readmission_30d():
    return gold.readmission_30d(silver("encounters"), silver("facilities"))


@dp.materialized_view(comment=title("length_of_stay"))
def gold_length_of_stay():
    return gold.length_of_stay(silver("encounters"), silver("facilities"))


@dp.materialized_view(comment=title("bed_occupancy_daily"))
def gold_bed_occupancy_daily():
    return gold.bed_occupancy_daily(silver("encounters"), silver("facilities"))


@dp.materialized_view(comment=title("ed_utilization"))
def gold_ed_utilization():
    return gold.ed_utilization(silver("encounters"), silver("patients"))


@dp.materialized_view(comment=title("payer_mix"))
def gold_payer_mix():
    return gold.payer_mix(silver("encounters"), silver("payers"))


@dp.materialized_view(comment=title("claims_denial_rate"))
def gold_claims_denial_rate():
    return gold.claims_denial_rate(silver("claims"), silver("payers"))


@dp.materialized_view(comment=title("abnormal_lab_rate"))
def gold_abnormal_lab_rate():
    return gold.abnormal_lab_rate(silver("lab_results"))


# Ages are taken at the reference date (the last day of the encounters). The notebooks compute
# it with gold.reference_date, a query returning a date; a pipeline must not query its own
# datasets while it is planned, so the date is joined to the patients as a column.


@dp.materialized_view(comment=title("chronic_condition_prevalence"))
def gold_chronic_condition_prevalence():
    patients = with_reference_date(silver("patients"), silver("encounters"))
    return gold.chronic_condition_prevalence(patients, silver("diagnoses"), F.col(AS_OF_COLUMN))


@dp.materialized_view(comment=title("patient_summary"))
def gold_patient_summary():
    patients = with_reference_date(silver("patients"), silver("encounters"))
    return gold.patient_summary(patients, silver("encounters"), silver("diagnoses"),
                                silver("claims"), silver("payers"), F.col(AS_OF_COLUMN))

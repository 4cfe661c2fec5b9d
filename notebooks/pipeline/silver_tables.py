"""Silver: typed, deduplicated, validated entities, with the same rules as notebook 03.

For each entity a temporary view parses the bronze lines (`utils.silver.parse_entity`), keeps
the first arrival of each business key (`deduplicate`) and adds the reference flags the rules
look up (`with_references`, reading the keys of the `silver_known_keys` view, which is computed
once per update); the entity's named rules (`utils.silver.EXPECTATIONS`) are its
expectations, so `drop` rules remove failing rows and `warn` rules only count them. The
materialized view `silver_<entity>` projects the contract's columns (`silver_frame`).
Silver is recomputed from all of bronze each update, like `utils.silver.build_silver`.
"""

from pyspark import pipelines as dp

from utils import silver
from utils.pipelines.medallion import KNOWN_KEYS_VIEW, known_keys, references, with_expectations


def bronze(entity: str):
    return spark.read.table(f"bronze_{entity}")  # noqa: F821 - `spark` is set by the runner


@dp.temporary_view(name=KNOWN_KEYS_VIEW,
                   comment="Every business key bronze has received (entity, key): the orphan checks")
def silver_known_keys():
    return known_keys(spark, lambda entity: f"bronze_{entity}")  # noqa: F821


def define_silver_table(entity: str) -> None:
    @dp.temporary_view(name=f"silver_{entity}_checked",
                       comment=f"{entity}: parsed, deduplicated, reference flags; rules applied")
    @with_expectations(silver.EXPECTATIONS[entity]())
    def checked():
        parsed = silver.parse_entity(entity, bronze(entity))
        kept = silver.deduplicate(parsed, silver.ENTITY_KEYS[entity]).kept
        return silver.with_references(entity, kept, references(spark))  # noqa: F821

    @dp.materialized_view(name=f"silver_{entity}", comment=f"silver.{entity} (contract columns)")
    def table():
        return silver.silver_frame(entity, spark.read.table(f"silver_{entity}_checked"))  # noqa: F821


for name in silver.SILVER_ENTITIES:
    define_silver_table(name)


@dp.materialized_view(name="silver_diagnoses",
                      comment="One row per encounter diagnosis (primary = 1), with chronic groups")
def silver_diagnoses():
    encounters = spark.read.table("silver_encounters_checked")  # noqa: F821
    return silver.diagnoses_of(encounters, silver.code_table(spark, "icd10cm"))  # noqa: F821

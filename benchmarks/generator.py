"""Generator throughput: the vectorized generator against a row-by-row Faker loop.

``bench_generator(encounters=1_000_000)`` generates a landing zone with about that many
encounters (patients calibrated on a small run with the same number of days) and times it end
to end: simulation, planting defects, formatting and writing every file and the manifest.
It then times the classic approach on the same encounter schema: a Python loop that builds
one encounter at a time with Faker and ``csv.writer`` (a smaller N, scaled linearly).

Encounter-level rows are the rows at encounter grain or finer (encounters, lab results,
medication requests, claim lines); the speedup compares rows/s on that basis.
"""

from __future__ import annotations

import csv
import random
import shutil
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET_ROWS_PER_S = 1_000_000
TARGET_SPEEDUP = 50.0
ENCOUNTER_LEVEL = ("encounters", "lab_results", "medications", "claims")


def _count_encounters(summary) -> int:
    return int(summary.rows.get("encounters", 0))


def calibrate_patients(encounters: int, days: int, seed: int, work: Path) -> int:
    """Patients needed for about ``encounters`` encounters over ``days`` (linear in both)."""
    from data_generator import generate

    probe_patients = 4_000
    summary = generate(work / "calibration", patients=probe_patients, days=days, seed=seed)
    per_patient = _count_encounters(summary) / probe_patients
    shutil.rmtree(work / "calibration", ignore_errors=True)
    return max(int(round(encounters / max(per_patient, 1e-9))), 10)


def row_by_row_encounters(n: int, out_path: Path, seed: int = 7) -> tuple[float, float]:
    """The naive generator: one encounter per loop iteration with Faker.

    Returns (wall seconds, CPU seconds of this process)."""
    from faker import Faker

    from utils.contracts import accepted_values, landing_sources

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rnd = random.Random(seed)
    columns = landing_sources()["ehr_encounters"]["columns"]
    classes = accepted_values("encounter_class")
    admission_types = accepted_values("admission_type")
    sources = accepted_values("admission_source")
    dispositions = accepted_values("discharge_disposition")
    icd = ["E11.9", "I10", "J18.9", "N39.0", "R07.9", "J06.9", "Z00.00", "M54.50"]
    start = datetime(2025, 1, 1)
    end = start + timedelta(days=90)
    started = time.perf_counter()
    cpu_started = time.process_time()
    with open(out_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for i in range(n):
            encounter_class = fake.random_element(classes)
            admit = fake.date_time_between(start_date=start, end_date=end)
            hours = rnd.lognormvariate(4.4, 0.75) if encounter_class == "inpatient" else \
                rnd.lognormvariate(0.7, 0.5)
            discharge = admit + timedelta(hours=hours)
            writer.writerow([
                f"ENC{i + 1:09d}",
                f"MRN{fake.random_int(1, 9_999_999):07d}",
                f"FAC{fake.random_int(1, 12):03d}",
                fake.numerify("1#########"),
                encounter_class,
                admit.strftime("%Y-%m-%dT%H:%M:%S"),
                discharge.strftime("%Y-%m-%dT%H:%M:%S"),
                fake.random_element(admission_types),
                fake.random_element(sources),
                fake.random_element(dispositions),
                f"PAY{fake.random_int(1, 8):02d}",
                fake.random_element(icd),
                "|".join(fake.random_elements(icd, length=rnd.randint(0, 3), unique=True)),
                f"{fake.pyfloat(min_value=45, max_value=90_000, right_digits=2):.2f}",
            ])
    return time.perf_counter() - started, time.process_time() - cpu_started


def bench_generator(encounters: int = 1_000_000, days: int = 90, loop_rows: int = 20_000,
                    seed: int = 7) -> dict[str, Any]:
    """Rows/s of the vectorized generator at ``encounters`` and of the row-by-row loop."""
    from data_generator import generate

    work = Path(tempfile.mkdtemp(prefix="bench-generator-"))
    try:
        patients = calibrate_patients(encounters, days, seed, work)
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = generate(work / "landing", patients=patients, days=days, seed=seed,
                           defect_rate=0.02, start_date=date(2025, 1, 1))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        landing_bytes = sum(p.stat().st_size for p in (work / "landing").rglob("*")
                            if p.is_file())
        shutil.rmtree(work / "landing", ignore_errors=True)

        loop_seconds, loop_cpu = row_by_row_encounters(loop_rows, work / "loop.csv", seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    encounter_level = sum(summary.rows.get(e, 0) for e in ENCOUNTER_LEVEL)
    vector_rate = encounter_level / seconds
    loop_rate = loop_rows / loop_seconds
    speedup = vector_rate / loop_rate
    # CPU time is what the code costs; wall time also measures how busy the machine was
    vector_cpu_rate = encounter_level / max(cpu_seconds, 1e-9)
    loop_cpu_rate = loop_rows / max(loop_cpu, 1e-9)
    return {
        "patients": patients,
        "days": days,
        "encounters": _count_encounters(summary),
        "encounter_level_rows": encounter_level,
        "total_rows": summary.total_rows,
        "files": summary.files,
        "planted_defects": summary.defects,
        "landing_mb": round(landing_bytes / 2**20, 1),
        "vectorized_s": round(seconds, 2),
        "vectorized_cpu_s": round(cpu_seconds, 2),
        "vectorized_encounter_level_rows_per_s": round(vector_rate),
        "vectorized_total_rows_per_s": round(summary.total_rows / seconds),
        "vectorized_encounters_per_s": round(_count_encounters(summary) / seconds),
        "vectorized_encounter_level_rows_per_cpu_s": round(vector_cpu_rate),
        "row_by_row_rows": loop_rows,
        "row_by_row_s": round(loop_seconds, 2),
        "row_by_row_rows_per_s": round(loop_rate),
        "row_by_row_rows_per_cpu_s": round(loop_cpu_rate),
        "row_by_row_s_scaled_to_same_rows": round(encounter_level / loop_rate, 1),
        "speedup": round(speedup, 1),
        "speedup_cpu": round(vector_cpu_rate / loop_cpu_rate, 1),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "target_speedup": TARGET_SPEEDUP,
        "target_rows_per_s_met": bool(vector_rate >= TARGET_ROWS_PER_S),
        "target_speedup_met": bool(speedup >= TARGET_SPEEDUP),
    }


if __name__ == "__main__":  # a quick look without `make bench`: python benchmarks/generator.py
    import json
    import sys

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(json.dumps(bench_generator(encounters=size), indent=1))

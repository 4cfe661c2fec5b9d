"""Reliability of bronze ingestion: killed runs, bad input, two runs at once.

Bronze's promise: every line of every landing file lands exactly once, with lineage, whatever
the bytes are and whenever the process dies. Silver decides later what a bad line means.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from tests.test_bronze import ENC_HEADER, enc_file, encounters_day, table, write_landing
from utils import get_config
from utils.bronze import ensure_bronze_tables, ingest_landing, ingested_files
from utils.config import REPO_ROOT

FILES = 12
LINES = 200


def run_ingestion_process(data_dir: Path, body: str) -> subprocess.Popen:
    """Start a Python process that ingests into ``data_dir`` (its own Sail server)."""
    script = textwrap.dedent("""
        import sys, time
        from utils import get_spark, stop_spark
        from utils import bronze
        spark = get_spark()
        real_append = bronze._append
    """) + textwrap.dedent(body)
    env = {**os.environ, "COURSE_DATA_DIR": str(data_dir), "RUST_LOG": "error",
           "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = 90) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"ingestion process failed:\n{err[-3000:]}"
    return out


def landing_of_days(data_dir: Path, files: int = FILES, lines: int = LINES) -> list[str]:
    days = [f"2025-02-{d:02d}" for d in range(1, files + 1)]
    for i, day in enumerate(days):
        write_landing(data_dir, encounters_day(day, lines, start=1000 * i))
    return [enc_file(d) for d in days]


def lines_per_file(df) -> Counter:
    return Counter({r[0]: r[1] for r in df.groupBy("_source_file").count().collect()})


def assert_exactly_once(spark, expected_files: list[str], lines: int = LINES) -> None:
    df = table(spark, "encounters")
    assert lines_per_file(df) == Counter({f: lines for f in expected_files})
    assert df.select("_source_file", "_line_number").distinct().count() == len(expected_files) * lines


# ----- kill -9 in the middle of a run ---------------------------------------------------------
def test_sigkill_mid_ingestion_then_rerun(spark, data_dir):
    """Kill the process while its 4th commit is being written, then re-run.

    (A crash *between* commits is covered without a subprocess in test_bronze.py.)
    """
    from deltalake import DeltaTable

    files = landing_of_days(data_dir)
    process = run_ingestion_process(data_dir, """
        bronze.COMMIT_BYTES = 1  # one commit per file: many commits to die between
        def traced(spark_, table, df, config):
            print("writing", flush=True)
            real_append(spark_, table, df, config)
            print("committed", flush=True)
            time.sleep(0.2)
        bronze._append = traced
        print("started", flush=True)
        bronze.ingest_landing(spark, sources=["encounters"])
        print("done", flush=True)
    """)
    seen = 0
    try:
        for line in process.stdout:
            if line.strip() == "writing":
                seen += 1
                if seen == 4:
                    os.kill(process.pid, signal.SIGKILL)
                    break
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"

    path = str(get_config().table_path("bronze", "encounters"))
    latest = DeltaTable(path).version()
    assert latest in (3, 4)  # create + 3 commits, and the 4th if it beat the kill
    for version in range(latest + 1):  # every version readable, files whole
        snapshot = spark.read.format("delta").option("versionAsOf", version).load(path)
        counts = lines_per_file(snapshot)
        assert set(counts.values()) <= {LINES}, f"version {version} holds a partial file"
        assert len(counts) == version  # version v holds the first v files, each whole
        assert DeltaTable(path, version=version).to_pyarrow_table().num_rows == version * LINES
    committed = ingested_files(spark, "encounters")
    assert committed == files[:latest]

    report = ingest_landing(spark, sources=["encounters"])  # the lock died with the process
    assert report.entities["encounters"].new_files == files[latest:]
    assert_exactly_once(spark, files)
    assert ingest_landing(spark, sources=["encounters"]).files_added == 0


# ----- two runs at the same time ----------------------------------------------------------------
CONCURRENT_RUN = """
    from pathlib import Path
    def slow_append(spark_, table, df, config):
        time.sleep(1.5)  # both runs have read the ledger before either commits
        real_append(spark_, table, df, config)
    bronze._append = slow_append
    import os
    flags = Path("{flags}")
    (flags / f"ready-{{os.getpid()}}").touch()
    while not (flags / "go").exists():
        time.sleep(0.05)
    report = bronze.ingest_landing(spark, sources=["encounters"])
    print(report.files_added, report.rows_added, flush=True)
"""


def start_two_runs(data_dir: Path, tmp_path: Path) -> list[int]:
    flags = tmp_path / "flags"
    flags.mkdir()
    body = CONCURRENT_RUN.format(flags=flags)
    processes = [run_ingestion_process(data_dir, body) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(flags.glob("ready-*"))) < 2:
        assert time.monotonic() < deadline, "ingestion processes did not start"
        assert all(p.poll() is None for p in processes), processes[0].communicate()[1][-2000:]
        time.sleep(0.05)
    (flags / "go").touch()
    return [int(finish(p).split()[0]) for p in processes]


def test_two_concurrent_runs_ingest_each_file_once(spark, data_dir, tmp_path):
    files = landing_of_days(data_dir, files=4, lines=50)
    added = start_two_runs(data_dir, tmp_path)
    assert sorted(added) == [0, 4]  # one run took every file, the other found nothing new
    assert_exactly_once(spark, files, lines=50)


def test_without_the_lock_blind_appends_duplicate(spark, data_dir, monkeypatch):
    """Why the lock exists: two blind Delta appends of the same file both commit on Sail.

    Two threads (cheaper than two processes; the same Delta commit path) both read the
    ledger, wait for each other, then append.
    """
    import contextlib
    import threading

    from utils import bronze

    files = landing_of_days(data_dir, files=4, lines=50)
    ensure_bronze_tables(spark, ["encounters"])  # only the appends race, not the CREATE
    both_read_the_ledger = threading.Barrier(2, timeout=60)
    real_append = bronze._append

    def append_after_the_other_has_read(spark_, table, df, config):
        both_read_the_ledger.wait()
        real_append(spark_, table, df, config)

    monkeypatch.setattr(bronze, "ingest_lock", lambda config=None: contextlib.nullcontext())
    monkeypatch.setattr(bronze, "_append", append_after_the_other_has_read)
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(ingest_landing(spark, sources=["encounters"]))
        except Exception as err:  # noqa: BLE001 - surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    assert [r.files_added for r in reports] == [4, 4]
    assert lines_per_file(table(spark, "encounters")) == Counter({f: 100 for f in files})


# ----- bad input: stored with lineage, never a crash, never lost -----------------------------
def _binary_blob() -> bytes:
    rng = random.Random(7)
    blob = bytes(rng.randrange(256) for _ in range(4000)).replace(b"\r", b"")
    return b"\x89PNG\n" + blob


HUGE = "x" * 1_000_000
BAD_FILES: dict[str, bytes] = {
    # relative path -> bytes
    enc_file("2025-03-01"): b"",  # empty file
    enc_file("2025-03-02"): (ENC_HEADER + "\n").encode(),  # only a header
    enc_file("2025-03-03"): (ENC_HEADER + "\nE1,M1,1.00\nE2,M2,2.0").encode(),  # truncated last line
    enc_file("2025-03-04"): (ENC_HEADER + "\nE3,M\xe9,3.00\n").encode("latin-1"),  # invalid UTF-8
    enc_file("2025-03-05"): b"\xef\xbb\xbf" + (ENC_HEADER + "\nE4,M4,4.00\n").encode(),  # BOM
    enc_file("2025-03-06"): (ENC_HEADER + "\r\nE5,M5,5.00\r\nE6,M6,6.00\r\n").encode(),  # CRLF
    "ehr_encounters/2025-03-07/scan.png": _binary_blob(),  # binary file dropped in the folder
    enc_file("2025-03-08"): (ENC_HEADER + ",extra_col\nE7,M7,7.00,x\n").encode(),  # column added
    enc_file("2025-03-09"): b"encounter_id,mrn\nE8,M8\n",  # a missing column
    "ehr_encounters/2025-03-10/r\xe9sum\xe9 de l'h\xf4pital 03.csv":
        (ENC_HEADER + "\nE9,M9,9.00\n").encode(),  # spaces and non-ASCII in the name
    enc_file("2025-03-11"): (ENC_HEADER + f"\nE10,{HUGE},10.00\n").encode(),  # a 1 MB field
    "fhir_observations/2025-03-01/Observation_20250301.ndjson":  # a JSON array, not JSON lines
        b'[{"resourceType":"Observation","id":"obs-1"},\n {"resourceType":"Observation","id":"obs-2"}]\n',
}


def expected_data_lines(relative: str, data: bytes) -> int:
    """Physical lines minus the CSV header (counted independently of bronze's code)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return physical if relative.endswith(".ndjson") else max(physical - 1, 0)


def test_bad_input_is_kept_line_for_line(spark, data_dir):
    write_landing(data_dir, BAD_FILES)
    report = ingest_landing(spark, sources=["encounters", "lab_results"])
    assert report.files_added == len(BAD_FILES)
    assert report.entities["encounters"].empty_files == [enc_file("2025-03-01"), enc_file("2025-03-02")]

    enc, labs = table(spark, "encounters"), table(spark, "lab_results")
    counts = lines_per_file(enc) + lines_per_file(labs)
    expected = Counter({rel: expected_data_lines(rel, data) for rel, data in BAD_FILES.items()})
    assert counts == +expected  # Counter "+" drops the two files without data lines
    assert sorted(ingested_files(spark, "encounters")) == sorted(
        rel for rel in BAD_FILES if rel.startswith("ehr_encounters/"))

    def rows(relative: str) -> list:
        df = enc if relative.startswith("ehr_") else labs
        return [tuple(r) for r in df.where(df._source_file == relative).orderBy("_line_number")
                .select("_line_number", "value", "_header", "_raw_base64").collect()]

    assert rows(enc_file("2025-03-03")) == [(2, "E1,M1,1.00", ENC_HEADER, None),
                                            (3, "E2,M2,2.0", ENC_HEADER, None)]
    [(_, value, _, raw)] = rows(enc_file("2025-03-04"))
    assert value == "E3,M\ufffd,3.00" and base64.b64decode(raw) == b"E3,M\xe9,3.00"
    assert rows(enc_file("2025-03-05")) == [(2, "E4,M4,4.00", ENC_HEADER, None)]
    assert rows(enc_file("2025-03-06")) == [(2, "E5,M5,5.00", ENC_HEADER, None),
                                            (3, "E6,M6,6.00", ENC_HEADER, None)]
    assert rows(enc_file("2025-03-08")) == [(2, "E7,M7,7.00,x", ENC_HEADER + ",extra_col", None)]
    assert rows(enc_file("2025-03-09")) == [(2, "E8,M8", "encounter_id,mrn", None)]
    name = "ehr_encounters/2025-03-10/r\xe9sum\xe9 de l'h\xf4pital 03.csv"
    assert rows(name) == [(2, "E9,M9,9.00", ENC_HEADER, None)]
    [(_, huge, _, _)] = rows(enc_file("2025-03-11"))
    assert len(huge) == len(f"E10,{HUGE},10.00")
    assert [r[1] for r in rows("fhir_observations/2025-03-01/Observation_20250301.ndjson")] == [
        '[{"resourceType":"Observation","id":"obs-1"},',
        ' {"resourceType":"Observation","id":"obs-2"}]']

    # The binary file's lines can be rebuilt byte for byte from bronze: nothing was lost.
    # (Its first line is taken as the CSV header: kept in _header, decoded with U+FFFD.)
    original = BAD_FILES["ehr_encounters/2025-03-07/scan.png"]
    rebuilt = [base64.b64decode(raw) if raw else value.encode()
               for _, value, _, raw in rows("ehr_encounters/2025-03-07/scan.png")]
    assert rebuilt == original.split(b"\n")[1:]

    again = ingest_landing(spark, sources=["encounters", "lab_results"])  # names are stable
    assert (again.files_added, again.rows_added) == (0, 0)


# ----- and silver quarantines what bronze kept ------------------------------------------------
def _contract_header(source: str) -> str:
    from utils.contracts import landing_sources

    return ",".join(landing_sources()[source]["columns"])


GOOD_ENCOUNTER = ("ENC{n},MRN0000001,FAC001,1234567893,inpatient,2025-03-01T08:00:00,"
                  "2025-03-02T09:00:00,emergency,emergency_room,home,PAY01,E11.9,I10,100.00")


def test_bad_lines_end_in_silver_quarantine_with_the_rule_that_caught_them(spark, data_dir):
    """Bronze keeps everything; silver's structural rules quarantine the broken lines."""
    from utils import silver

    header = _contract_header("ehr_encounters")
    files = {
        enc_file("2025-04-01"): (header + "\n" + GOOD_ENCOUNTER.format(n=1) + "\n"  # truncated last line
                                 + GOOD_ENCOUNTER.format(n=2).rsplit(",", 3)[0]).encode(),
        enc_file("2025-04-02"): (header + "\n" + GOOD_ENCOUNTER.format(n=3).replace("MRN", "MR\xc9")
                                 + "\n").encode("latin-1"),  # invalid UTF-8
        enc_file("2025-04-03"): b"\xef\xbb\xbf" + (header + "\r\n" + GOOD_ENCOUNTER.format(n=4)
                                                   + "\r\n").encode(),  # BOM + CRLF: fine
        enc_file("2025-04-04"): (header + ",note\n" + GOOD_ENCOUNTER.format(n=5)
                                 + ",late fee\n").encode(),  # column added: rescued, not lost
        enc_file("2025-04-05"): (header.replace(",admit_ts", "") + "\n"
                                 + GOOD_ENCOUNTER.format(n=6).replace(",2025-03-01T08:00:00", "")
                                 + "\n").encode(),  # a missing (required) column
        "ehr_encounters/2025-04-06/scan.png": _binary_blob(),
        "fhir_observations/2025-04-01/Observation_20250401.ndjson":
            BAD_FILES["fhir_observations/2025-03-01/Observation_20250301.ndjson"],
    }
    write_landing(data_dir, files)
    ingest_landing(spark, sources=["encounters", "lab_results"])

    empty_keys = spark.createDataFrame([], "key string")
    refs = {name: silver.code_table(spark, name) for name in ("icd10cm", "loinc", "rxnorm", "cpt")}
    refs.update({name: empty_keys for name in ("patients", "encounters", "providers",
                                               "facilities", "payers")})
    structural = {"valid_encoding", "complete_record", "encounter_id_not_null", "admit_ts_not_null"}

    def quarantined(entity: str) -> dict[tuple[str, int], list[str]]:
        rules = [r for r in silver.EXPECTATIONS[entity]() if r.name in structural]
        result = silver.cleanse(entity, table(spark, entity), refs, rules=rules)
        return {(r._source_file, r._line_number): sorted(r._failed_rules)
                for r in result.quarantined.collect()}

    caught = quarantined("encounters")
    assert caught[(enc_file("2025-04-01"), 3)] == ["complete_record"]
    assert caught[(enc_file("2025-04-02"), 2)] == ["valid_encoding"]
    assert caught[(enc_file("2025-04-05"), 2)] == ["admit_ts_not_null"]
    binary_lines = {line for (path, line) in caught if path.endswith("scan.png")}
    binary = files["ehr_encounters/2025-04-06/scan.png"]
    assert binary_lines == set(range(2, 2 + expected_data_lines("scan.png", binary)))
    for clean in [(enc_file("2025-04-01"), 2), (enc_file("2025-04-03"), 2), (enc_file("2025-04-04"), 2)]:
        assert clean not in caught, f"{clean} should pass the structural rules"
    rescued = silver.parse_entity("encounters", table(spark, "encounters")).where(
        f"_source_file = '{enc_file('2025-04-04')}'").first()._rescued_data
    assert rescued == '{"note":"late fee"}'

    labs = quarantined("lab_results")
    assert sorted(labs) == [("fhir_observations/2025-04-01/Observation_20250401.ndjson", 1),
                            ("fhir_observations/2025-04-01/Observation_20250401.ndjson", 2)]
    assert set(map(tuple, labs.values())) == {("complete_record",)}

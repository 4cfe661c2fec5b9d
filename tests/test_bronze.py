"""Bronze ingestion: raw lines with lineage, exactly once across runs and crashes."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from utils import get_config
from utils import bronze
from utils.bronze import (
    BRONZE_ENTITIES,
    delta_log_commits,
    ingest_landing,
    ingested_files,
    read_landing_file,
    split_lines,
)

ENC_HEADER = "encounter_id,mrn,total_charge"


def enc_file(day: str) -> str:
    return f"ehr_encounters/{day}/encounters_{day.replace('-', '')}.csv"


def write_landing(root: Path, files: dict[str, bytes | str]) -> None:
    """Write landing files (paths relative to the landing root)."""
    landing = root / "landing"
    for relative, content in files.items():
        path = landing / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


def encounters_day(day: str, n: int, start: int = 0) -> dict[str, str]:
    lines = [ENC_HEADER] + [f"ENC{start + i:04d},MRN{i:03d},{i}.50" for i in range(n)]
    return {enc_file(day): "\n".join(lines) + "\n"}


def table(spark, name: str):
    """A bronze table by path: the session-wide catalog may still point at an earlier test's
    data root (names are registered once per session), the path never does."""
    return spark.read.format("delta").load(str(get_config().table_path("bronze", name)))


def bronze_rows(spark, entity: str) -> list[tuple]:
    df = table(spark, entity)
    return [tuple(r) for r in df.select("_source_file", "_line_number", "value")
            .orderBy("_source_file", "_line_number").collect()]


# ----- pure line handling ---------------------------------------------------------------------
def test_split_lines_handles_terminators_bom_and_bad_bytes():
    assert split_lines(b"") == []
    assert split_lines(b"\xef\xbb\xbfa,b\r\n1,2\r\n") == [("a,b", None), ("1,2", None)]
    assert split_lines(b"a\n\nb") == [("a", None), ("", None), ("b", None)]  # truncated last line
    assert split_lines("x\u2028y\x0bz\n".encode()) == [("x\u2028y\x0bz", None)]  # not line breaks
    bad = split_lines(b"ok\nbad \xff\xfe end\r\n")
    assert bad[0] == ("ok", None)
    assert bad[1][0] == "bad \ufffd\ufffd end"
    assert base64.b64decode(bad[1][1]) == b"bad \xff\xfe end"


def test_read_landing_file_keeps_physical_line_numbers(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"\xef\xbb\xbfid,v\r\n1,a\r\n2,b")
    lines = read_landing_file(path, "csv")
    assert lines.header == "id,v"
    assert (lines.line_numbers, lines.values) == ([2, 3], ["1,a", "2,b"])
    path.write_bytes(b'{"a":1}\n{"a":2}\n')
    lines = read_landing_file(path, "ndjson")
    assert (lines.header, lines.line_numbers, lines.values) == (None, [1, 2], ['{"a":1}', '{"a":2}'])


def test_entities_come_from_the_contract():
    assert BRONZE_ENTITIES == {
        "claims": "payer_claims", "encounters": "ehr_encounters", "facilities": "reference",
        "lab_results": "fhir_observations", "medications": "fhir_medications",
        "patients": "ehr_patients", "payers": "reference", "providers": "reference"}


# ----- ingestion ------------------------------------------------------------------------------
def test_exactly_once_across_three_runs(spark, data_dir):
    write_landing(data_dir, {**encounters_day("2025-01-01", 3),
                             **encounters_day("2025-01-02", 2, start=100)})
    first = ingest_landing(spark, sources=["encounters"], until="2025-01-01")
    assert first.rows() == [("encounters", 1, 0, 3)]

    second = ingest_landing(spark, sources=["encounters"], until=dt.date(2025, 1, 1))
    assert (second.files_added, second.rows_added) == (0, 0)  # re-run adds nothing

    write_landing(data_dir, encounters_day("2025-01-03", 4, start=200))
    third = ingest_landing(spark, sources=["ehr_encounters"])  # a source name works too
    assert third.entities["encounters"].new_files == [enc_file("2025-01-02"), enc_file("2025-01-03")]
    assert third.rows_added == 6

    rows = bronze_rows(spark, "encounters")
    assert len(rows) == 9 and len(set(rows)) == 9
    assert rows[:2] == [(enc_file("2025-01-01"), 2, "ENC0000,MRN000,0.50"),
                        (enc_file("2025-01-01"), 3, "ENC0001,MRN001,1.50")]
    assert ingested_files(spark, "encounters") == [enc_file(d) for d in
                                                   ("2025-01-01", "2025-01-02", "2025-01-03")]
    # Three runs: create + two appends (the no-op run wrote nothing).
    ops = [(c["version"], c["operation"], c["rows_added"]) for c in delta_log_commits("encounters")]
    assert ops == [(0, "CREATE TABLE", 0), (1, "WRITE", 3), (2, "WRITE", 6)]
    assert delta_log_commits("encounters")[1]["log_file"] == \
        "lakehouse/bronze/encounters/_delta_log/00000000000000000001.json"


def test_lineage_columns_and_schema(spark, data_dir):
    write_landing(data_dir, {**encounters_day("2025-01-05", 1),
                             "fhir_observations/2025-01-05/Observation_20250105.ndjson":
                                 '{"id":"obs-1"}\n{"id":"obs-2"}\n'})
    report = ingest_landing(spark, sources=["encounters", "lab_results"])
    df = table(spark, "lab_results")
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("value", "string"), ("_header", "string"), ("_source", "string"),
        ("_source_file", "string"), ("_line_number", "int"), ("_batch_date", "date"),
        ("_ingest_ts", "timestamp"), ("_ingest_run_id", "string"), ("_raw_base64", "string")]
    rows = df.orderBy("_line_number").collect()
    assert [(r.value, r._header, r._source, r._line_number, r._batch_date, r._raw_base64)
            for r in rows] == [
        ('{"id":"obs-1"}', None, "fhir_observations", 1, dt.date(2025, 1, 5), None),
        ('{"id":"obs-2"}', None, "fhir_observations", 2, dt.date(2025, 1, 5), None)]
    assert {r._ingest_run_id for r in rows} == {report.run_id}
    enc = table(spark, "encounters").collect()
    assert [(r._header, r._line_number) for r in enc] == [(ENC_HEADER, 2)]


def test_reference_files_feed_their_own_tables(spark, data_dir):
    write_landing(data_dir, {
        "reference/2025-01-01/facilities.csv": "facility_id,facility_name\nF1,General\nF2,North\n",
        "reference/2025-01-01/payers.csv": "payer_id,payer_name,payer_type\nP1,Medicare,medicare\n",
        "reference/2025-01-01/notes.txt": "not a reference file\n",
        "reference/2025-01-01/_SUCCESS": "",
    })
    report = ingest_landing(spark, sources=["reference"])
    assert report.rows() == [("facilities", 1, 0, 2), ("payers", 1, 0, 1), ("providers", 0, 0, 0)]
    assert report.skipped == [("reference/2025-01-01/notes.txt",
                               "no bronze entity reads this file in reference/")]
    assert table(spark, "facilities").count() == 2


def test_files_without_data_lines_are_recorded_exactly_once(spark, data_dir):
    write_landing(data_dir, {enc_file("2025-01-01"): "",
                             enc_file("2025-01-02"): ENC_HEADER + "\r\n",
                             **encounters_day("2025-01-03", 1)})
    first = ingest_landing(spark, sources=["encounters"])
    assert first.entities["encounters"].empty_files == [enc_file("2025-01-01"), enc_file("2025-01-02")]
    assert first.rows() == [("encounters", 3, 2, 1)]
    assert ingest_landing(spark, sources=["encounters"]).files_added == 0
    ledger = table(spark, "empty_files").orderBy("_source_file").collect()
    assert [(r.entity, r._source_file, r._lines, r._header) for r in ledger] == [
        ("encounters", enc_file("2025-01-01"), 0, None),
        ("encounters", enc_file("2025-01-02"), 1, ENC_HEADER)]
    assert len(ingested_files(spark, "encounters")) == 3


def test_crash_between_commits_neither_loses_nor_duplicates(spark, data_dir, monkeypatch):
    """Each file its own commit; the run dies on its second data commit, then runs again."""
    days = ["2025-01-01", "2025-01-02", "2025-01-03"]
    for i, day in enumerate(days):
        write_landing(data_dir, encounters_day(day, 2, start=10 * i))
    write_landing(data_dir, {enc_file("2025-01-04"): ENC_HEADER + "\n"})  # an empty one too
    monkeypatch.setattr(bronze, "COMMIT_BYTES", 1)
    real_append = bronze._append
    calls = {"n": 0}

    def crashing_append(spark_, table, df, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash between two commits")
        real_append(spark_, table, df, config)

    monkeypatch.setattr(bronze, "_append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        ingest_landing(spark, sources=["encounters"])
    assert ingested_files(spark, "encounters") == [enc_file(days[0])]

    monkeypatch.setattr(bronze, "_append", real_append)
    report = ingest_landing(spark, sources=["encounters"])
    assert report.entities["encounters"].new_files == [enc_file(d) for d in days[1:]] + [
        enc_file("2025-01-04")]
    rows = bronze_rows(spark, "encounters")
    assert len(rows) == 6 and len(set(rows)) == 6
    assert ingest_landing(spark, sources=["encounters"]).files_added == 0


def test_crash_before_empty_file_ledger_records_it_on_the_next_run(spark, data_dir, monkeypatch):
    write_landing(data_dir, {**encounters_day("2025-01-01", 2), enc_file("2025-01-02"): ""})
    real_append = bronze._append

    def crash_on_ledger(spark_, table, df, config):
        if table == bronze.EMPTY_FILES_TABLE:
            raise KeyboardInterrupt("crash after the data commit")
        real_append(spark_, table, df, config)

    monkeypatch.setattr(bronze, "_append", crash_on_ledger)
    with pytest.raises(KeyboardInterrupt):
        ingest_landing(spark, sources=["encounters"])
    monkeypatch.setattr(bronze, "_append", real_append)
    report = ingest_landing(spark, sources=["encounters"])
    assert report.rows() == [("encounters", 1, 1, 0)]
    assert len(bronze_rows(spark, "encounters")) == 2
    assert table(spark, "empty_files").count() == 1


def test_report_renders_sorted_without_run_ids(spark, data_dir):
    write_landing(data_dir, {**encounters_day("2025-01-01", 2),
                             "ehr_encounters/not-a-day/x.csv": "a\n"})
    report = ingest_landing(spark, sources=["encounters", "claims"])
    assert str(report).splitlines() == [
        "entity      new_files  empty_files  rows_added",
        "----------  ---------  -----------  ----------",
        "claims              0            0           0",
        "encounters          1            0           2",
        "TOTAL               1            0           2",
        "skipped (not ingested, see report.skipped): 1",
    ]
    assert report.run_id not in str(report)
    assert report.skipped == [("ehr_encounters/not-a-day",
                               "folder name is not a YYYY-MM-DD batch date")]


def test_unknown_source_is_a_clear_error(spark, data_dir):
    with pytest.raises(ValueError, match="Unknown bronze source or entity 'ehr_labs'"):
        ingest_landing(spark, sources=["ehr_labs"])


def test_a_file_too_big_for_one_message_is_staged_and_still_one_commit(spark, data_dir, monkeypatch):
    """Spark Connect caps a plan at 128 MB: big files travel in chunks, commit once."""
    write_landing(data_dir, {**encounters_day("2025-01-01", 40), **encounters_day("2025-01-02", 3)})
    monkeypatch.setattr(bronze, "COMMIT_BYTES", 300)  # day 1 (~800 bytes) is "too big"
    monkeypatch.setattr(bronze, "CHUNK_BYTES", 250)  # ... and is sent in several chunks
    real_append = bronze._append

    def crash_once(spark_, table, df, config):
        monkeypatch.setattr(bronze, "_append", real_append)
        raise KeyboardInterrupt("crash after staging, before the commit")

    monkeypatch.setattr(bronze, "_append", crash_once)
    with pytest.raises(KeyboardInterrupt):
        ingest_landing(spark, sources=["encounters"])
    assert bronze.staging_dir(get_config()).is_dir()  # left behind, nothing committed
    assert ingested_files(spark, "encounters") == []

    report = ingest_landing(spark, sources=["encounters"])
    assert report.rows() == [("encounters", 2, 0, 43)]
    assert report.entities["encounters"].commits == 2  # the big file alone, then day 2
    rows = bronze_rows(spark, "encounters")
    assert len(rows) == 43 and len(set(rows)) == 43
    assert [r[1] for r in rows if r[0] == enc_file("2025-01-01")] == list(range(2, 42))
    assert not bronze.staging_dir(get_config()).exists()
    assert [c["rows_added"] for c in delta_log_commits("encounters")] == [0, 40, 3]

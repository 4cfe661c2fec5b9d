"""The synthetic data generator: determinism, layout and schema per the contract, referential
integrity, code validity, NPI check digits, plausible distributions, and a manifest that lists
exactly the planted defects.

The defect check re-derives every defect from the files with its own rules (an independent
oracle): each listed entry must point at a line that really has that defect, and no line may
have a defect the manifest does not list.
"""

from __future__ import annotations

import csv
import filecmp
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from data_generator import DEFAULT_PARAMS, generate, load_manifest, npi_is_valid
from data_generator.codes import code_table_path, load_code_table
from utils.contracts import accepted_values, defect_types, landing_sources

START = date(2025, 1, 1)
SOURCES = ["ehr_patients", "ehr_encounters", "fhir_observations", "fhir_medications",
           "payer_claims"]


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    """A small landing zone with a high defect rate, so every defect type shows up."""
    out = tmp_path_factory.mktemp("gen") / "landing"
    generate(out, patients=600, days=40, seed=11, defect_rate=0.06, start_date=START)
    return out


@pytest.fixture(scope="module")
def parsed(landing):
    return parse_landing(landing)


# ---- an independent reader of the landing zone ----------------------------------------------
def _ts(text, fhir=False):
    if text is None or text == "":
        return None
    try:
        if fhir:
            if not text.endswith("Z"):
                return None
            text = text[:-1]
        if len(text) != 19 or text[10] != "T":
            return None
        return datetime.fromisoformat(text)
    except (ValueError, TypeError):
        return None


def _date(text):
    try:
        return date.fromisoformat(text) if text and len(text) == 10 else None
    except (ValueError, TypeError):
        return None


def _number(text):
    try:
        return float(text)
    except (ValueError, TypeError):
        return None


def parse_landing(root: Path) -> dict:
    """Every record line of every file: (source, file, line, batch date, fields/JSON or None)."""
    sources = landing_sources()
    records = {s: [] for s in [*SOURCES, "reference"]}
    for source in records:
        for day_dir in sorted((root / source).iterdir()):
            batch = date.fromisoformat(day_dir.name)
            for path in sorted(day_dir.iterdir()):
                rel = path.relative_to(root).as_posix()
                raw = path.read_bytes().decode("utf-8")
                assert "\r" not in raw, rel
                lines = raw.split("\n")
                assert lines[-1] == "", f"{rel} must end with a newline"
                lines = lines[:-1]
                if sources[source if source != "reference" else "reference"]["format"] == "csv":
                    header = next(csv.reader([lines[0]])) if lines else []
                    for number, text in enumerate(lines[1:], start=2):
                        fields = next(csv.reader([text]))
                        row = dict(zip(header, fields)) if len(fields) == len(header) else None
                        records[source].append({"file": rel, "line": number, "batch": batch,
                                                "text": text, "row": row, "header": header})
                else:
                    for number, text in enumerate(lines, start=1):
                        try:
                            row = json.loads(text)
                        except json.JSONDecodeError:
                            row = None
                        records[source].append({"file": rel, "line": number, "batch": batch,
                                                "text": text, "row": row, "header": None})
    return records


def _key(source: str, rec: dict) -> str | None:
    row = rec["row"]
    if row is None:
        return None
    if source == "ehr_patients":
        return row["change_id"]
    if source == "ehr_encounters":
        return row["encounter_id"]
    if source == "payer_claims":
        return f"{row['claim_id'].strip()}:{row['line_number'].strip()}"
    if source == "reference":
        return rec["file"] + ":" + (row.get("npi") or row.get("payer_id") or
                                    row.get("facility_id"))
    return row.get("id")


def _fhir_values(source: str, row: dict) -> dict:
    """Flatten the fields the rules look at (None when missing or null)."""
    def ref(part):
        value = (row.get(part) or {}).get("reference")
        return value
    if source == "fhir_observations":
        coding = row["code"]["coding"][0]
        quantity = row.get("valueQuantity") or {}
        return {"subject": ref("subject"), "encounter": ref("encounter"),
                "code": coding.get("code"), "ts": row.get("effectiveDateTime"),
                "value": quantity.get("value"), "unit": quantity.get("unit"),
                "low": row["referenceRange"][0]["low"]["value"],
                "high": row["referenceRange"][0]["high"]["value"]}
    coding = row["medicationCodeableConcept"]["coding"][0]
    return {"subject": ref("subject"), "encounter": ref("encounter"),
            "code": coding.get("code"), "ts": row.get("authoredOn")}


class Oracle:
    """Re-derives the defects of every line from the files alone."""

    def __init__(self, records: dict):
        self.records = records
        self.codes = {name: set(load_code_table(name)["code"]) for name in
                      ("icd10cm", "loinc", "rxnorm", "cpt")}
        self.mrns = set()
        for rec in records["ehr_patients"]:
            fields = next(csv.reader([rec["text"]]))
            if len(fields) > 3:
                self.mrns.add(fields[3])
        self.encounter_ids = {next(csv.reader([r["text"]]))[0] for r in
                              records["ehr_encounters"]}
        self.npis = {r["row"]["npi"] for r in records["reference"]
                     if r["row"] and "npi" in r["row"]}
        self.accepted = {f: set(accepted_values(f)) for f in
                         ("operation", "sex", "encounter_class", "admission_type",
                          "admission_source", "discharge_disposition", "claim_status",
                          "payer_type", "facility_type")}

    def detect(self) -> dict[tuple[str, int], set[str]]:
        found: dict[tuple[str, int], set[str]] = {}
        for source, recs in self.records.items():
            first: dict[str, str] = {}
            ordered = sorted(recs, key=lambda r: (r["batch"], r["file"], r["line"]))
            for rec in ordered:
                kinds = set()
                key = _key(source, rec)
                if rec["row"] is None:
                    kinds.add("truncated_line")
                elif key is not None and key.strip() in first:
                    same = first[key.strip()] == rec["text"]
                    kinds.add("exact_duplicate" if same else "near_duplicate")
                else:
                    if key is not None:
                        first[key.strip()] = rec["text"]
                    kinds |= getattr(self, f"rules_{source}")(rec)
                found[(rec["file"], rec["line"])] = kinds
        return found

    # -- helpers
    def _event_date_rules(self, event: date | None, batch: date) -> set[str]:
        if event is None:
            return set()
        if event > batch + timedelta(days=1):
            return {"future_date"}
        if event <= batch - timedelta(days=2):
            return {"late_arriving"}
        assert event == batch, f"clean event date {event} must equal its batch date {batch}"
        return set()

    def _coded(self, value: str, field: str) -> set[str]:
        return set() if value in self.accepted[field] else {"whitespace_case_noise"}

    # -- per source
    def rules_reference(self, rec):
        row, kinds = rec["row"], set()
        if "state" in row and (row["state"] != row["state"].strip().upper()):
            kinds.add("whitespace_case_noise")
        if "facility_type" in row:
            kinds |= self._coded(row["facility_type"], "facility_type")
        if "payer_type" in row:
            kinds |= self._coded(row["payer_type"], "payer_type")
        return kinds

    def rules_ehr_patients(self, rec):
        row, kinds = rec["row"], set()
        assert row["operation"] in self.accepted["operation"]
        change = _ts(row["change_ts"])
        assert change is not None and row["mrn"]
        if row["operation"] == "DELETE":
            assert all(row[c] == "" for c in list(row)[4:]), "DELETE carries only keys"
            return self._event_date_rules(change.date(), rec["batch"])
        required = ["first_name", "last_name", "birth_date", "sex", "payer_id"]
        if any(row[c] == "" for c in required):
            kinds.add("null_required")
        elif _date(row["birth_date"]) is None:
            kinds.add("unparseable_date")
        elif (change.date() - _date(row["birth_date"])).days > 120 * 365.25:
            kinds.add("impossible_age")
        if row["sex"]:
            kinds |= self._coded(row["sex"], "sex")
        if row["state"] != row["state"].strip().upper():
            kinds.add("whitespace_case_noise")
        kinds |= self._event_date_rules(change.date(), rec["batch"])
        return kinds

    def rules_ehr_encounters(self, rec):
        row, kinds = rec["row"], set()
        required = ["encounter_id", "mrn", "facility_id", "provider_npi", "encounter_class",
                    "admit_ts", "discharge_ts", "payer_id", "primary_dx", "total_charge"]
        if any(row[c] == "" for c in required):
            return {"null_required"}
        admit, discharge = _ts(row["admit_ts"]), _ts(row["discharge_ts"])
        if admit is None or discharge is None:
            kinds.add("unparseable_date")
        elif discharge < admit:
            kinds.add("discharge_before_admit")
        if _number(row["total_charge"]) is None:
            kinds.add("unparseable_number")
        dx = [row["primary_dx"]] + [c for c in row["secondary_dx"].split("|") if c]
        if any(c not in self.codes["icd10cm"] for c in dx):
            kinds.add("invalid_code")
        if row["mrn"] not in self.mrns or row["provider_npi"] not in self.npis:
            kinds.add("orphan_foreign_key")
        for field in ("encounter_class", "admission_type", "admission_source",
                      "discharge_disposition"):
            kinds |= self._coded(row[field], field)
        if discharge is not None:
            kinds |= self._event_date_rules(discharge.date(), rec["batch"])
        return kinds

    def _fhir_common(self, rec, values, code_table):
        kinds = set()
        if values["subject"] is None or values["code"] is None or values.get("value", 0) is None:
            return {"null_required"}
        ts = _ts(values["ts"], fhir=True)
        if ts is None:
            kinds.add("unparseable_date")
        if values["code"] not in self.codes[code_table]:
            kinds.add("invalid_code")
        encounter = values["encounter"].removeprefix("Encounter/")
        if encounter not in self.encounter_ids:
            kinds.add("orphan_foreign_key")
        assert values["subject"].startswith("Patient/MRN")
        if ts is not None:
            kinds |= self._event_date_rules(ts.date(), rec["batch"])
        return kinds

    def rules_fhir_observations(self, rec):
        row = rec["row"]
        assert row["resourceType"] == "Observation" and row["status"] == "final"
        values = _fhir_values("fhir_observations", row)
        kinds = self._fhir_common(rec, values, "loinc")
        if values["code"] == "2345-7" and values["unit"] == "mmol/L":
            kinds.add("unit_mixup")
        return kinds

    def rules_fhir_medications(self, rec):
        row = rec["row"]
        assert row["resourceType"] == "MedicationRequest" and row["intent"] == "order"
        return self._fhir_common(rec, _fhir_values("fhir_medications", row), "rxnorm")

    def rules_payer_claims(self, rec):
        row, kinds = rec["row"], set()
        required = ["claim_id", "line_number", "encounter_id", "mrn", "payer_id",
                    "service_date", "cpt_code", "units", "billed_amount", "claim_status",
                    "adjudication_date"]
        if any(row[c] == "" for c in required):
            return {"null_required"}
        amounts = [row["units"], row["billed_amount"]] + [
            row[c] for c in ("allowed_amount", "paid_amount") if row[c] != ""]
        if any(_number(a) is None for a in amounts) or not row["units"].isdigit():
            kinds.add("unparseable_number")
        adjudicated = _date(row["adjudication_date"])
        if _date(row["service_date"]) is None or adjudicated is None:
            kinds.add("unparseable_date")
        if row["cpt_code"] not in self.codes["cpt"]:
            kinds.add("invalid_code")
        if row["encounter_id"] not in self.encounter_ids:
            kinds.add("orphan_foreign_key")
        kinds |= self._coded(row["claim_status"], "claim_status")
        if adjudicated is not None:
            kinds |= self._event_date_rules(adjudicated, rec["batch"])
        return kinds


# ---- tests ----------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        generate(out, patients=150, days=12, seed=seed, defect_rate=0.05)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files_a], shallow=False)
    assert mismatch == [] and errors == []
    assert (a / "_manifest.json").read_bytes() != (c / "_manifest.json").read_bytes()


def test_rerun_rewrites_the_folder_completely(tmp_path):
    out = tmp_path / "landing"
    generate(out, patients=80, days=10, seed=1)
    (out / "ehr_patients" / "stale.csv").write_text("old")
    generate(out, patients=80, days=6, seed=1)
    assert not (out / "ehr_patients" / "stale.csv").exists()
    assert sorted(p.name for p in (out / "ehr_encounters").iterdir()) == [
        f"2025-01-0{d}" for d in range(1, 7)]


def test_direct_writes_give_the_same_bytes_as_ordinary_ones(tmp_path, monkeypatch):
    """Files of 1 MB or more bypass the page cache (O_DIRECT from an aligned buffer, the last
    partial block through the cache); force that path for every file and compare."""
    from data_generator import generator

    generate(tmp_path / "ordinary", patients=300, days=6, seed=3, defect_rate=0.1)
    monkeypatch.setattr(generator, "DIRECT_MIN_BYTES", 0)
    generate(tmp_path / "direct", patients=300, days=6, seed=3, defect_rate=0.1)
    files = sorted(p.relative_to(tmp_path / "ordinary")
                   for p in (tmp_path / "ordinary").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "direct")
                           for p in (tmp_path / "direct").rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "ordinary", tmp_path / "direct",
                                           [str(p) for p in files], shallow=False)
    assert mismatch == [] and errors == []


def test_generate_turns_numpys_huge_page_hint_off_and_back_on(tmp_path, monkeypatch):
    """The hint costs the generator seconds (``_small_pages``); the caller's setting must come
    back after a run, and after a failed one."""
    from data_generator import model

    try:
        from numpy._core import multiarray
    except ImportError:                                # numpy 1.26
        from numpy.core import multiarray
    previous = multiarray._set_madvise_hugepage(True)
    seen = []
    simulate = model.simulate

    def spy(*args, **kwargs):
        seen.append(multiarray._get_madvise_hugepage())
        return simulate(*args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("simulation failed")

    try:
        monkeypatch.setattr(model, "simulate", spy)
        generate(tmp_path / "ok", patients=50, days=3, seed=1)
        assert seen == [False]
        assert multiarray._get_madvise_hugepage() is True
        monkeypatch.setattr(model, "simulate", broken)
        with pytest.raises(RuntimeError, match="simulation failed"):
            generate(tmp_path / "failed", patients=50, days=3, seed=1)
        assert multiarray._get_madvise_hugepage() is True
    finally:
        multiarray._set_madvise_hugepage(previous)


def test_layout_and_file_names_follow_the_contract(landing):
    sources = landing_sources()
    manifest = load_manifest(landing)
    assert sorted(p.name for p in landing.iterdir()) == sorted(
        ["_manifest.json", *sources])
    days = [(START + timedelta(days=d)).isoformat() for d in range(40)]
    for source in SOURCES:
        spec = sources[source]
        assert sorted(p.name for p in (landing / source).iterdir()) == days
        for day in days:
            expected = spec["file_pattern"].format(yyyymmdd=day.replace("-", ""))
            assert [p.name for p in (landing / source / day).iterdir()] == [expected]
    assert [p.name for p in (landing / "reference").iterdir()] == ["2025-01-01"]
    assert sorted(p.name for p in (landing / "reference" / "2025-01-01").iterdir()) == sorted(
        sources["reference"]["files"])
    assert manifest["parameters"] == {"patients": 600, "days": 40, "seed": 11,
                                      "defect_rate": 0.06, "start_date": "2025-01-01",
                                      "readmission_rate": 0.12}


def test_manifest_lists_every_file_with_its_row_count(landing, parsed):
    manifest = load_manifest(landing)
    on_disk = sorted(p.relative_to(landing).as_posix() for p in landing.rglob("*")
                     if p.is_file() and p.name != "_manifest.json")
    assert sorted(f["file"] for f in manifest["files"]) == on_disk
    counts: dict[str, int] = {}
    for recs in parsed.values():
        for rec in recs:
            counts[rec["file"]] = counts.get(rec["file"], 0) + 1
    for entry in manifest["files"]:
        assert entry["rows"] == counts.get(entry["file"], 0), entry["file"]


def test_csv_headers_and_json_shapes_match_the_contract(landing, parsed):
    sources = landing_sources()
    drift = [d for d in load_manifest(landing)["defects"] if d["defect_type"] == "schema_drift"]
    assert len(drift) == 1 and drift[0]["line"] == 1 and drift[0]["record_key"] is None
    for source in ("ehr_patients", "ehr_encounters", "payer_claims"):
        columns = sources[source]["columns"]
        for path in sorted((landing / source).rglob("*.csv")):
            header = path.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
            rel = path.relative_to(landing).as_posix()
            if rel == drift[0]["file"]:
                assert header == columns + [drift[0]["column"]]
            else:
                assert header == columns, rel
    for spec in sources["reference"]["entities"].values():
        path = landing / "reference" / "2025-01-01" / spec["file"]
        assert path.read_text(encoding="utf-8").split("\n", 1)[0].split(",") == spec["columns"]
    obs = next(r["row"] for r in parsed["fhir_observations"] if r["row"])
    assert set(obs) == {"resourceType", "id", "status", "subject", "encounter", "code",
                        "effectiveDateTime", "valueQuantity", "referenceRange"}
    assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
    med = next(r["row"] for r in parsed["fhir_medications"] if r["row"])
    assert set(med) == {"resourceType", "id", "status", "intent", "subject", "encounter",
                        "medicationCodeableConcept", "authoredOn", "dosageInstruction",
                        "dispenseRequest"}
    assert med["subject"]["reference"].startswith("Patient/MRN")


def test_manifest_defects_are_exactly_the_defective_lines(landing, parsed):
    manifest = load_manifest(landing)
    listed = {(d["file"], d["line"]): d for d in manifest["defects"]
              if d["defect_type"] != "schema_drift"}
    assert len(listed) == len(manifest["defects"]) - 1, "one defect per line"
    found = Oracle(parsed).detect()
    problems = []
    for where, kinds in found.items():
        entry = listed.get(where)
        expected = {entry["defect_type"]} if entry else set()
        if kinds != expected:
            problems.append((where, sorted(kinds), sorted(expected)))
    assert problems == [], '\n'.join(map(str, problems))
    assert set(listed) <= set(found), "every entry points at a real line"
    # every planted type of the contract shows up at this rate and size
    assert set(manifest["defect_counts"]) == set(defect_types())
    assert manifest["defect_counts"] == {
        t: sum(d["defect_type"] == t for d in manifest["defects"]) for t in defect_types()}


def test_manifest_record_keys_and_columns(landing, parsed):
    by_line = {(r["file"], r["line"]): (s, r) for s, recs in parsed.items() for r in recs}
    for d in load_manifest(landing)["defects"]:
        if d["defect_type"] == "schema_drift":
            continue
        source, rec = by_line[(d["file"], d["line"])]
        assert d["source"] == source
        assert d["record_key"] and d["record_key"].split(":")[0] in rec["text"], d
        if d["defect_type"] in ("whitespace_case_noise", "near_duplicate"):
            value = rec["row"][d["column"]]
            if d["column"] in ("state", "sex"):
                assert value != value.strip().upper(), d
            else:
                assert value not in accepted_values(d["column"]), d


def test_clean_rows_are_referentially_consistent(parsed, landing):
    defective = {(d["file"], d["line"]) for d in load_manifest(landing)["defects"]}
    clean = {s: [r for r in recs if (r["file"], r["line"]) not in defective]
             for s, recs in parsed.items()}
    inserts: dict[str, date] = {}
    noise_only = {(d["file"], d["line"]) for d in load_manifest(landing)["defects"]
                  if d["defect_type"] == "whitespace_case_noise"}
    for rec in parsed["ehr_patients"]:
        if rec["row"] and rec["row"]["operation"] == "INSERT":
            # an INSERT is never corrupted: at most standardizable noise
            assert (rec["file"], rec["line"]) not in defective - noise_only or \
                rec["row"]["mrn"] in inserts
            inserts.setdefault(rec["row"]["mrn"], rec["batch"])
    facilities = {r["row"]["facility_id"] for r in parsed["reference"] if
                  "staffed_beds" in r["row"]}     # a noisy facility row is standardized
    payers = {r["row"]["payer_id"] for r in clean["reference"] if "payer_type" in r["row"]}
    encounter_mrn = {}
    for rec in clean["ehr_encounters"]:
        row = rec["row"]
        assert inserts[row["mrn"]] <= rec["batch"], "INSERT in the same or an earlier batch"
        assert row["facility_id"] in facilities and row["payer_id"] in payers
        encounter_mrn[row["encounter_id"]] = row["mrn"]
    checked = 0
    for source in ("fhir_observations", "fhir_medications"):
        for rec in clean[source]:
            enc = rec["row"]["encounter"]["reference"].removeprefix("Encounter/")
            if enc in encounter_mrn:
                assert rec["row"]["subject"]["reference"] == "Patient/" + encounter_mrn[enc]
                checked += 1
    for rec in clean["payer_claims"]:
        if rec["row"]["encounter_id"] in encounter_mrn:
            assert rec["row"]["mrn"] == encounter_mrn[rec["row"]["encounter_id"]]
            checked += 1
    assert checked > 1000


def test_codes_and_coded_values_are_valid_in_clean_rows(parsed, landing):
    defective = {(d["file"], d["line"]) for d in load_manifest(landing)["defects"]}
    loinc = load_code_table("loinc").set_index("code")
    for rec in parsed["fhir_observations"]:
        if (rec["file"], rec["line"]) in defective:
            continue
        v = _fhir_values("fhir_observations", rec["row"])
        assert v["unit"] == loinc.loc[v["code"], "unit"]
        assert (v["low"], v["high"]) == (loinc.loc[v["code"], "ref_low"],
                                         loinc.loc[v["code"], "ref_high"])
    for name in ("icd10cm", "loinc", "rxnorm", "cpt"):
        table = load_code_table(name)
        assert code_table_path(name).is_file() and table["code"].is_unique
    icd = load_code_table("icd10cm")
    assert icd["code"].str.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?").all()
    assert set(icd["chronic_condition"].dropna()) >= {"diabetes", "heart_failure", "copd"}
    assert load_code_table("loinc")["code"].str.fullmatch(r"\d{1,5}-\d").all()
    assert load_code_table("cpt")["code"].str.fullmatch(r"(\d{5}|[A-Z]\d{4})").all()
    assert load_code_table("rxnorm")["code"].str.fullmatch(r"\d{5,8}").all()


def test_npis_have_valid_luhn_check_digits(parsed):
    npis = [r["row"]["npi"] for r in parsed["reference"] if r["row"] and "npi" in r["row"]]
    assert len(npis) > 20
    assert all(npi_is_valid(n) and n[0] in "12" for n in npis)
    assert npi_is_valid("1234567893")            # the CMS worked example
    assert not npi_is_valid("1234567890")


def test_distributions_are_plausible(tmp_path):
    import numpy as np
    import pandas as pd

    out = tmp_path / "clean"
    generate(out, patients=5000, days=90, seed=3, defect_rate=0.0)
    assert load_manifest(out)["defects"] == []

    def frame(source):
        return pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False)
                          for p in sorted((out / source).rglob("*.csv"))], ignore_index=True)
    pat = frame("ehr_patients")
    ins = pat[pat.operation == "INSERT"]
    assert ins.mrn.is_unique and len(ins) == 5000
    assert 0.45 < (ins.sex == "F").mean() < 0.57
    age = (pd.Timestamp("2025-01-01") - pd.to_datetime(ins.birth_date)).dt.days / 365.25
    assert 0 <= age.min() and age.max() < 105 and 35 < age.mean() < 55
    updates = pat[pat.operation == "UPDATE"]
    assert 0.15 < updates.mrn.nunique() / 5000 < 0.6, "addresses and payers change (SCD2)"
    payers = pd.read_csv(out / "reference" / "2025-01-01" / "payers.csv", dtype=str)
    payer_type = dict(zip(payers.payer_id, payers.payer_type))
    medicare_65 = ins[age >= 65].payer_id.map(payer_type).eq("medicare").mean()
    assert medicare_65 > 0.8

    enc = frame("ehr_encounters")
    enc["admit"], enc["disch"] = pd.to_datetime(enc.admit_ts), pd.to_datetime(enc.discharge_ts)
    share = enc.encounter_class.value_counts(normalize=True)
    assert share["ambulatory"] > share["emergency"] > share["inpatient"] > 0.02
    inp = enc[enc.encounter_class == "inpatient"].sort_values(["mrn", "admit"])
    los = (inp.disch - inp.admit).dt.total_seconds() / 86400
    assert 2.5 <= los.median() <= 5.0 and los.quantile(0.95) > 2 * los.median()
    inp["next_admit"] = inp.groupby("mrn").admit.shift(-1)
    index = inp[(inp.disch < pd.Timestamp("2025-03-02"))
                & ~inp.discharge_disposition.isin(["expired", "transfer", "hospice"])]
    readmitted = ((index.next_admit - index.disch) < pd.Timedelta(days=30)).mean()
    assert 0.07 <= readmitted <= 0.20, readmitted
    chronic = inp.secondary_dx.ne("")
    by_chronic = ((index.next_admit - index.disch) < pd.Timedelta(days=30)).groupby(
        chronic.reindex(index.index)).mean()
    assert by_chronic[True] > by_chronic[False], "chronic patients are readmitted more often"

    obs = [json.loads(line) for p in sorted((out / "fhir_observations").rglob("*.ndjson"))
           for line in p.read_text().splitlines()]
    a1c = pd.DataFrame([{"mrn": o["subject"]["reference"].removeprefix("Patient/"),
                         "value": o["valueQuantity"]["value"]}
                        for o in obs if o["code"]["coding"][0]["code"] == "4548-4"])
    has_e11 = enc.primary_dx.str.startswith("E11") | enc.secondary_dx.str.contains("E11")
    a1c["diabetic"] = a1c.mrn.isin(set(enc.mrn[has_e11]))
    high = (a1c.value >= 6.5).groupby(a1c.diabetic).mean()
    assert high[True] > 0.6 and high[False] < 0.05
    claims = frame("payer_claims")
    status = claims.drop_duplicates("claim_id").claim_status.value_counts(normalize=True)
    assert status["paid"] > 0.75 and 0.03 < status["denied"] < 0.15
    billed = claims.billed_amount.astype(float)
    assert (billed > 0).all() and np.isclose(
        claims.paid_amount.replace("", "0").astype(float).le(billed).mean(), 1.0)


def test_default_parameters_are_the_course_dataset():
    assert DEFAULT_PARAMS == {"patients": 3000, "days": 60, "seed": 42, "defect_rate": 0.02,
                              "start_date": date(2025, 1, 1)}


def test_late_patient_changes_arrive_after_a_newer_change_of_the_same_patient(tmp_path):
    """Out-of-order CDC: every late patient change is delivered after a newer change of that
    patient, the case an SCD2 MERGE must place in history instead of making current."""
    import csv

    from data_generator import generate, load_manifest

    generate(tmp_path, patients=3000, days=60, seed=42)
    late = {d["record_key"] for d in load_manifest(tmp_path)["defects"]
            if d["source"] == "ehr_patients" and d["defect_type"] == "late_arriving"}
    changes: dict[str, list[tuple[str, str, str]]] = {}
    for path in sorted(tmp_path.glob("ehr_patients/*/*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                changes.setdefault(row["mrn"], []).append(
                    (path.parent.name, row["change_ts"], row["change_id"]))
    out_of_order = {cid for rows in changes.values() for batch, ts, cid in rows
                    if any(other_ts > ts and other_batch < batch for other_batch, other_ts, _ in rows)}
    assert late, "the default-sized dataset plants late patient changes"
    assert late <= out_of_order, f"late but not out of order: {sorted(late - out_of_order)}"


def test_staffed_beds_fit_the_simulated_census(tmp_path):
    """Beds are sized to the simulated population: every hospital's midnight census stays
    within its staffed beds, and average occupancy is that of a working hospital, not ~1 %."""
    import pandas as pd

    from data_generator import generate
    from data_generator.explore import read_source

    generate(tmp_path, patients=3000, days=60, seed=42)
    facilities = read_source("reference", tmp_path)
    facilities = facilities[facilities["facility_id"].notna() & facilities["staffed_beds"].notna()]
    beds = {f: int(b) for f, b in zip(facilities["facility_id"], facilities["staffed_beds"])}
    stays = read_source("ehr_encounters", tmp_path, clean_only=True)
    stays = stays[stays["encounter_class"] == "inpatient"]
    admit, discharge = pd.to_datetime(stays["admit_ts"]), pd.to_datetime(stays["discharge_ts"])
    midnights = pd.date_range("2025-01-02", periods=58, freq="D")
    for facility, rows in stays.groupby("facility_id"):
        census = [int(((admit[rows.index] < m) & (discharge[rows.index] > m)).sum()) for m in midnights]
        assert beds[facility] > 0, facility
        assert max(census) <= beds[facility], (facility, max(census), beds[facility])
        assert sum(census) / len(census) / beds[facility] >= 0.2, (facility, census, beds[facility])
    clinics = facilities[facilities["facility_type"].str.strip() == "outpatient_clinic"]
    assert set(clinics["staffed_beds"].astype(int)) == {0}

"""Turn the simulated world into the landing zone: files per source and day, planted defects,
and the manifest that lists every defect (the ground truth silver is tested against).

Layout, file names and columns come from ``utils/contracts.yml`` (``landing:``), read at run
time, so the contract stays the one definition.
"""

from __future__ import annotations

import heapq
import json
import mmap
import os
import shutil
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_generator import fmt
from data_generator import model as M
from data_generator.codes import load_code_table

GENERATOR_VERSION = "1.0.0"
MANIFEST_NAME = "_manifest.json"

#: Columns that are never empty in a clean record (silver's null_required rule), per source.
#: DELETE change records carry only change_id, operation, change_ts and mrn; pending claims
#: have no allowed/paid amounts yet; denial_reason is set only on denied claims.
REQUIRED_COLUMNS: dict[str, list[str]] = {
    "ehr_patients": ["change_id", "operation", "change_ts", "mrn", "first_name", "last_name",
                     "birth_date", "sex", "payer_id"],
    "ehr_encounters": ["encounter_id", "mrn", "facility_id", "provider_npi", "encounter_class",
                       "admit_ts", "discharge_ts", "payer_id", "primary_dx", "total_charge"],
    "fhir_observations": ["id", "subject.reference", "encounter.reference", "code.coding.code",
                          "effectiveDateTime", "valueQuantity.value", "valueQuantity.unit"],
    "fhir_medications": ["id", "subject.reference", "encounter.reference",
                         "medicationCodeableConcept.coding.code", "authoredOn"],
    "payer_claims": ["claim_id", "line_number", "encounter_id", "mrn", "payer_id", "service_date",
                     "cpt_code", "units", "billed_amount", "claim_status", "adjudication_date"],
}

#: Which defect types each source can carry and in which columns (manifest ``column``).
SOURCE_DEFECTS: dict[str, dict[str, list[str] | None]] = {
    "ehr_patients": {
        "exact_duplicate": None, "near_duplicate": ["sex", "state"],
        "null_required": ["birth_date", "last_name", "sex"], "unparseable_date": ["birth_date"],
        "future_date": ["change_ts"], "impossible_age": ["birth_date"], "truncated_line": None,
        "whitespace_case_noise": ["sex", "state"], "late_arriving": ["change_ts"],
    },
    "ehr_encounters": {
        "exact_duplicate": None,
        "near_duplicate": ["encounter_class", "admission_type", "discharge_disposition"],
        "null_required": ["mrn", "admit_ts", "encounter_class", "facility_id"],
        "unparseable_number": ["total_charge"], "unparseable_date": ["admit_ts"],
        "discharge_before_admit": ["discharge_ts"], "future_date": ["discharge_ts"],
        "invalid_code": ["primary_dx"], "orphan_foreign_key": ["mrn", "provider_npi"],
        "truncated_line": None,
        "whitespace_case_noise": ["encounter_class", "admission_type", "admission_source",
                                  "discharge_disposition"],
        "late_arriving": ["discharge_ts"],
    },
    "fhir_observations": {
        "exact_duplicate": None, "null_required": ["valueQuantity.value", "subject.reference"],
        "unparseable_date": ["effectiveDateTime"], "future_date": ["effectiveDateTime"],
        "invalid_code": ["code.coding.code"], "orphan_foreign_key": ["encounter.reference"],
        "truncated_line": None, "unit_mixup": ["valueQuantity.unit"],
        "late_arriving": ["effectiveDateTime"],
    },
    "fhir_medications": {
        "exact_duplicate": None,
        "null_required": ["medicationCodeableConcept.coding.code", "subject.reference"],
        "unparseable_date": ["authoredOn"], "future_date": ["authoredOn"],
        "invalid_code": ["medicationCodeableConcept.coding.code"],
        "orphan_foreign_key": ["encounter.reference"], "truncated_line": None,
        "late_arriving": ["authoredOn"],
    },
    "payer_claims": {
        "exact_duplicate": None, "near_duplicate": ["claim_status"],
        "null_required": ["cpt_code", "billed_amount", "encounter_id"],
        "unparseable_number": ["billed_amount", "units"], "unparseable_date": ["service_date"],
        "future_date": ["adjudication_date"], "invalid_code": ["cpt_code"],
        "orphan_foreign_key": ["encounter_id"], "truncated_line": None,
        "whitespace_case_noise": ["claim_status"], "late_arriving": ["adjudication_date"],
    },
}
SCHEMA_DRIFT_COLUMN = "drg_code"
INVALID_CODES = {
    "icd10cm": ["E11.999", "I10.X", "999.99", "J18.99", "R07.99", "ZZ9.9"],
    "loinc": ["99999-9", "4548-5", "2345", "0000-0"],
    "rxnorm": ["0000000", "99999999", "86097X"],
    "cpt": ["9921", "99999", "0000T", "A999"],
}
ENTITY_OF_SOURCE = {"ehr_patients": "patients", "ehr_encounters": "encounters",
                    "fhir_observations": "lab_results", "fhir_medications": "medications",
                    "payer_claims": "claims"}
#: A record's planted defect and its column are kept as codes (index into these lists, 0 =
#: none): a byte per record instead of a Python string, cheap to concatenate and reorder.
DEFECT_NAMES = ["", *sorted({d for spec in SOURCE_DEFECTS.values() for d in spec})]
DEFECT_COLUMNS = ["", *sorted({c for spec in SOURCE_DEFECTS.values()
                               for cols in spec.values() for c in cols or []})]
_DEFECT_CODE = {name: i for i, name in enumerate(DEFECT_NAMES)}
_COLUMN_CODE = {name: i for i, name in enumerate(DEFECT_COLUMNS)}


@dataclass
class GenerationSummary:
    """What one run wrote: rows per entity, files, planted defects and the time it took."""

    out_dir: Path
    rows: dict[str, int]
    files: int
    defects: int
    defect_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def __str__(self) -> str:
        per_entity = ", ".join(f"{count:,} {name}" for name, count in self.rows.items())
        return (f"generated {self.total_rows:,} rows ({per_entity}) in {self.files} files "
                f"with {self.defects:,} planted defects in {self.seconds:.1f} s")


# ----------------------------------------------------------------------------------------------
#: A column as a recipe: record numbers of the source -> its text for those records, in that
#: order. Formatting is deferred so each column is formatted once, already in file order (no
#: gather of the long text lines afterwards), and a defect edit formats only the rows it reads.
Recipe = Callable[[np.ndarray], pa.Array]


class Frame:
    """Records of one source, plus what is needed to place them in files.

    ``rows`` are record numbers of the source (a re-sent copy points at its original);
    ``cols`` the recipes of CSV fields (already quoted) or NDJSON fragments (JSON literals);
    ``batch`` the day index of the batch each record is delivered in; ``ts`` the sort time
    inside a file; ``key`` the recipe of the manifest record key; ``copy`` marks re-sent
    duplicates (sorted after originals); ``defect``/``column`` the planted defect (codes into
    DEFECT_NAMES and DEFECT_COLUMNS, 0 when clean). ``blank`` = (mask over record numbers,
    k): those records carry only their first k fields, the others empty (the recipes do not
    blank them: such lines are rendered apart, and defects are never planted on them).
    """

    def __init__(self, cols: dict[str, Recipe], batch: np.ndarray, ts: np.ndarray,
                 key: Recipe, extra: dict[str, np.ndarray] | None = None,
                 rows: np.ndarray | None = None,
                 blank: tuple[np.ndarray, int] | None = None):
        self.cols = cols
        self.blank = blank
        self.batch = np.asarray(batch, dtype=np.int64)
        self.ts = np.asarray(ts, dtype=np.int64)
        self.key = key
        n = len(self.batch)
        self.rows = np.arange(n, dtype=np.int64) if rows is None else rows
        self.copy = np.zeros(n, dtype=bool)
        self.defect = np.zeros(n, dtype=np.int8)      # codes: DEFECT_NAMES, DEFECT_COLUMNS
        self.column = np.zeros(n, dtype=np.int8)
        self.extra = extra or {}
        self.pending: dict[str, tuple[list[int], list[str | None]]] = {}

    def __len__(self) -> int:
        return len(self.batch)

    def take(self, rows: np.ndarray) -> "Frame":
        rows = np.asarray(rows, dtype=np.int64)
        out = Frame(self.cols, self.batch[rows], self.ts[rows], self.key,
                    {k: v[rows] for k, v in self.extra.items()}, self.rows[rows], self.blank)
        out.copy, out.defect, out.column = self.copy[rows], self.defect[rows], self.column[rows]
        position = {int(r): i for i, r in enumerate(rows)}
        for column, (edited, values) in self.pending.items():
            for r, v in zip(edited, values):
                if r in position:
                    out.set(column, [position[r]], [v])
        return out

    def set(self, column: str, rows: np.ndarray, values: list[str | None]) -> None:
        """Queue an edit of some records (applied when the lines are rendered)."""
        pending = self.pending.setdefault(column, ([], []))
        pending[0].extend(int(r) for r in rows)
        pending[1].extend(values)

    def edited_lines(self, source: str, columns: list[str]) -> tuple[np.ndarray, list[str]]:
        """The records with queued edits (planted defects), rendered like the clean lines (the
        edited values put in by a mask, the lines joined by Arrow).

        Returns their row numbers and lines (each ending with a newline); the caller swaps
        them in for the clean lines when it writes the files.
        """
        if not self.pending:
            return np.zeros(0, dtype=np.int64), []
        rows = np.array(sorted({r for edited, _ in self.pending.values() for r in edited}),
                        dtype=np.int64)
        records = self.rows[rows]
        overrides: dict[str, pa.Array] = {}
        for column, (edited, new_values) in self.pending.items():
            latest = dict(zip(edited, new_values))          # a later edit of a row wins
            at = np.searchsorted(rows, np.fromiter(latest, dtype=np.int64, count=len(latest)))
            order = np.argsort(at, kind="stable")
            mask = np.zeros(len(rows), dtype=bool)
            mask[at] = True
            values = list(latest.values())
            overrides[column] = pc.replace_with_mask(
                fmt.decode(self.cols[column](records)), pa.array(mask),
                pa.array([values[i] for i in order.tolist()], pa.string()))
        return rows, compose_lines(source, self, records, columns, overrides).to_pylist()

    def get(self, column: str, rows: np.ndarray) -> list[str | None]:
        """Values as delivered before queued edits (each record gets one defect, so the rows
        read are never rows already edited)."""
        return self.cols[column](self.rows[np.asarray(rows, dtype=np.int64)]).to_pylist()


# ----------------------------------------------------------------------------------------------
def _fhir_references(patient_of_encounter: np.ndarray, encounter: np.ndarray
                     ) -> dict[str, Recipe]:
    """The ``subject`` and ``encounter`` references (JSON strings) of FHIR resources that
    belong to encounters ``encounter`` (indices): the same two fields in every resource."""
    return {
        "subject": lambda r: fmt.prefixed_ids('"Patient/MRN',
                                              patient_of_encounter[encounter[r]] + 1, 7, '"'),
        "encounter": lambda r: fmt.prefixed_ids('"Encounter/ENC', encounter[r] + 1, 9, '"'),
    }


def frame_builders(world: M.World) -> dict[str, Callable[[], Frame]]:
    """Per source, a function building its records (column recipes, batch day, sort time).

    Sources are built when written, so only the text of the sources being written is in
    memory. Each builder reads the world's parts when it runs (not before): a source can be
    built as soon as its part and the encounters are simulated.
    """
    d0 = world.start_day
    payer_ids = [p[0] for p in M.PAYERS]

    def patients() -> Frame:
        # --- patients (change records) ------------------------------------------------------------
        P, ch = world.patients, world.changes
        pat, op, ver = ch["pat"], ch["op"], ch["version"]
        v = np.maximum(ver, 0)
        live = op != 2
        city_idx = P["city"][pat, v]
        cities = [c[0] for c in M.CITIES]
        states = [c[1] for c in M.CITIES]
        area = np.array([int(c[3]) for c in M.CITIES], dtype=np.int64)
        zip3 = np.array([int(c[2]) for c in M.CITIES], dtype=np.int64)
        # phone and zip as whole numbers (area code + 7 digits; zip3 + 2 digits): one digit
        # matrix each, the dashes put in by fmt.grouped_digits
        phone_num = area[city_idx] * 10_000_000 + P["phone"][pat, v]
        zip_num = zip3[city_idx] * 100 + P["zip2"][pat, v]
        street_no = P["street_no"][pat, v]
        street = P["street"][pat, v]
        street_names = pa.array(P["street_pool"], pa.string())
        # names per patient as (quoted) Arrow text once: a block takes its rows' names
        first_names = fmt.csv_quote(pa.array(P["first_name"], pa.string()))
        last_names = fmt.csv_quote(pa.array(P["last_name"], pa.string()))

        def address(r: np.ndarray) -> pa.Array:
            text = pc.binary_join_element_wise(fmt.number_text(street_no[r], 0),
                                               street_names.take(pa.array(street[r])), " ")
            return fmt.csv_quote(text)

        def change_id(r: np.ndarray) -> pa.Array:
            return fmt.prefixed_ids("CHG", r + 1, 9)

        cols: dict[str, Recipe] = {
            "change_id": change_id,
            "operation": lambda r: fmt.pick(["INSERT", "UPDATE", "DELETE"], op[r]),
            "change_ts": lambda r: fmt.timestamps(ch["ts"][r]),
            "mrn": lambda r: fmt.prefixed_ids("MRN", pat[r] + 1, 7),
            "first_name": lambda r: first_names.take(pa.array(pat[r])),
            "last_name": lambda r: last_names.take(pa.array(pat[r])),
            "birth_date": lambda r: fmt.dates(P["birth_day"][pat[r]]),
            "sex": lambda r: fmt.pick(["F", "M", "U"], P["sex"][pat[r]]),
            "address_line": address,
            "city": lambda r: fmt.pick(cities, city_idx[r]),
            "state": lambda r: fmt.pick(states, city_idx[r]),
            "zip": lambda r: fmt.grouped_digits(zip_num[r], [5]),
            "phone": lambda r: fmt.grouped_digits(phone_num[r], [3, 3, 4]),
            "ssn": lambda r: fmt.grouped_digits(P["ssn"][pat[r]], [3, 2, 4]),
            "payer_id": lambda r: fmt.pick(payer_ids, P["payer"][pat[r], v[r]]),
        }
        day = ch["ts"] // M.DAY - d0
        # DELETE records carry only change_id, operation, change_ts and mrn
        return Frame(cols, day, ch["ts"], change_id,
                     {"op": op, "next_gap": _days_to_next_change(pat, ch["ts"])},
                     blank=(~live, 4))
        # record id order follows change time, so change_id is increasing within the export
        # (the lexsort in the model already ordered the records by time)

    def encounters() -> Frame:
        # --- encounters ---------------------------------------------------------------------------
        E = world.encounters
        facility_ids = world.facilities["facility_id"]
        npis = world.providers["npi"]

        def encounter_id(r: np.ndarray) -> pa.Array:
            return fmt.prefixed_ids("ENC", r + 1, 9)

        cols: dict[str, Recipe] = {
            "encounter_id": encounter_id,
            "mrn": lambda r: fmt.prefixed_ids("MRN", E["pat"][r] + 1, 7),
            "facility_id": lambda r: fmt.pick(facility_ids, E["fac"][r]),
            "provider_npi": lambda r: fmt.pick(npis, E["prov"][r]),
            "encounter_class": lambda r: fmt.pick(M.CLASSES, E["cls"][r]),
            "admit_ts": lambda r: fmt.timestamps(E["admit"][r]),
            "discharge_ts": lambda r: fmt.timestamps(E["disch"][r]),
            "admission_type": lambda r: fmt.pick(M.ADMISSION_TYPES, E["adm_type"][r]),
            "admission_source": lambda r: fmt.pick(M.ADMISSION_SOURCES, E["adm_src"][r]),
            "discharge_disposition": lambda r: fmt.pick(M.DISPOSITIONS, E["disp"][r]),
            "payer_id": lambda r: fmt.pick(payer_ids, E["payer"][r]),
            "primary_dx": lambda r: fmt.pick(world.labels["primary"], E["primary"][r]),
            "secondary_dx": lambda r: fmt.pick(world.labels["secondary"], E["secondary"][r]),
            "total_charge": lambda r: fmt.scaled_integers(E["charge_cents"][r], 2),
        }
        return Frame(cols, E["disch"] // M.DAY - d0, E["disch"], encounter_id,
                     {"drg": E["drg"]})

    def observations() -> Frame:
        # --- lab results (FHIR Observation) -----------------------------------------------------
        # NDJSON fragments are JSON literals (quoted strings, numbers, or null for a planted
        # null_required), so a line is one concatenation of template text and fragments.
        L, E = world.labs, world.encounters
        loinc = load_code_table("loinc").set_index("code")
        lab_codes = [t[0] for t in M.LABS]
        decimals = np.array([t[1] for t in M.LABS])
        units = loinc.loc[lab_codes, "unit"].tolist()
        names = loinc.loc[lab_codes, "name"].tolist()
        k = len(L["enc"])
        width = max(6, len(str(k)))
        low = loinc.loc[lab_codes, "ref_low"].to_numpy()
        high = loinc.loc[lab_codes, "ref_high"].to_numpy()
        low_txt = [_num(x, 2) for x in low]
        high_txt = [_num(x, 2) for x in high]
        test = L["test"]
        cols: dict[str, Recipe] = {
            "id": lambda r: fmt.prefixed_ids('"obs-', r + 1, width, '"'),
            **_fhir_references(E["pat"], L["enc"]),
            "code": lambda r: fmt.pick(lab_codes, test[r], json=True),
            "display": lambda r: fmt.pick(names, test[r], json=True),
            "effective": lambda r: fmt.timestamps(L["ts"][r], 'Z"', '"'),
            "value": lambda r: _fixed_by_decimals(L["value"][r], decimals[test[r]]),
            "unit": lambda r: fmt.pick(units, test[r], json=True),
            "low": lambda r: fmt.pick(low_txt, test[r]),
            "high": lambda r: fmt.pick(high_txt, test[r]),
        }
        return Frame(cols, L["ts"] // M.DAY - d0, L["ts"],
                     lambda r: fmt.prefixed_ids("obs-", r + 1, width),
                     {"test": L["test"], "value": L["value"]})

    def medications() -> Frame:
        # --- medications (FHIR MedicationRequest) -----------------------------------------------
        R, E = world.meds, world.encounters
        rx = load_code_table("rxnorm")
        k = len(R["enc"])
        width = max(6, len(str(k)))
        dose = [_num(x, 3) for x in rx["dose_value"]]
        dose_text = [f"{d} {u} {f}" for d, u, f in zip(dose, rx["dose_unit"], rx["frequency"])]
        codes, names, units = (rx["code"].tolist(), rx["name"].tolist(),
                               rx["dose_unit"].tolist())
        start_day = R["ts"] // M.DAY
        drug = R["drug"]
        cols: dict[str, Recipe] = {
            "id": lambda r: fmt.prefixed_ids('"medrx-', r + 1, width, '"'),
            "status": lambda r: fmt.pick(["active", "completed", "stopped"], R["status"][r],
                                         json=True),
            **_fhir_references(E["pat"], R["enc"]),
            "code": lambda r: fmt.pick(codes, drug[r], json=True),
            "display": lambda r: fmt.pick(names, drug[r], json=True),
            "authored": lambda r: fmt.timestamps(R["ts"][r], 'Z"', '"'),
            "dose_text": lambda r: fmt.pick(dose_text, drug[r], json=True),
            "dose": lambda r: fmt.pick(dose, drug[r]),
            "dose_unit": lambda r: fmt.pick(units, drug[r], json=True),
            "start": lambda r: fmt.dates(start_day[r], '"'),
            "end": lambda r: fmt.dates(start_day[r] + R["days"][r], '"'),
        }
        return Frame(cols, R["ts"] // M.DAY - d0, R["ts"],
                     lambda r: fmt.prefixed_ids("medrx-", r + 1, width))

    def claims() -> Frame:
        # --- claims -----------------------------------------------------------------------------
        C, E = world.claims, world.encounters
        lc = C["line_claim"]
        enc_of_line = C["enc"][lc]
        status = C["status"][lc]
        pending = status == 2
        denial = C["denial"][lc]
        adjudicated = C["adjudicated"][lc]
        cpt_codes = load_code_table("cpt")["code"].tolist()

        def claim_id(r: np.ndarray) -> pa.Array:               # one claim per encounter
            return fmt.prefixed_ids("CLM", enc_of_line[r] + 1, 9)

        def line_number(r: np.ndarray) -> pa.Array:
            return fmt.integers(C["line_no"][r])

        cols: dict[str, Recipe] = {
            "claim_id": claim_id,
            "line_number": line_number,
            "encounter_id": lambda r: fmt.prefixed_ids("ENC", enc_of_line[r] + 1, 9),
            "mrn": lambda r: fmt.prefixed_ids("MRN", E["pat"][enc_of_line[r]] + 1, 7),
            "payer_id": lambda r: fmt.pick(payer_ids, E["payer"][enc_of_line[r]]),
            "service_date": lambda r: fmt.dates(E["admit"][enc_of_line[r]] // M.DAY),
            "cpt_code": lambda r: fmt.pick(cpt_codes, C["cpt"][r]),
            "units": lambda r: fmt.integers(C["units"][r]),
            "billed_amount": lambda r: fmt.number_text(C["billed"][r], 2),
            "allowed_amount": lambda r: fmt.number_text(C["allowed"][r], 2, pending[r]),
            "paid_amount": lambda r: fmt.number_text(C["paid"][r], 2, pending[r]),
            "claim_status": lambda r: fmt.pick(M.CLAIM_STATUSES, status[r]),
            # label 0 is the empty reason of claims not denied (denial -1)
            "denial_reason": lambda r: fmt.pick(["", *M.DENIAL_REASONS], denial[r] + 1),
            "adjudication_date": lambda r: fmt.dates(adjudicated[r]),
        }
        # sort time: adjudication day, then claim and line order
        sort_ts = adjudicated * M.DAY + (np.arange(len(lc)) % M.DAY)
        return Frame(cols, adjudicated - d0, sort_ts,
                     lambda r: pc.binary_join_element_wise(claim_id(r),
                                                           fmt.decode(line_number(r)), ":"))
    return {"ehr_patients": patients, "ehr_encounters": encounters,
            "fhir_observations": observations, "fhir_medications": medications,
            "payer_claims": claims}


def _num(x: float, decimals: int) -> str:
    """Shortest plain decimal text of a number (JSON number: no trailing zeros, no exponent)."""
    text = f"{float(x):.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _fixed_by_decimals(values: np.ndarray, decimals: np.ndarray) -> pa.Array:
    """Fixed-point text with each value's own number of decimals (rounded as ``fmt.fixed``)."""
    values = np.asarray(values, dtype=np.float64)
    scaled = np.empty(len(values), dtype=np.int64)
    for d in np.unique(decimals):
        sel = decimals == d
        scaled[sel] = np.round(values[sel] * 10 ** int(d)).astype(np.int64)
    return fmt.number_text(scaled, decimals)


# ----------------------------------------------------------------------------------------------
def reference_tables(world: M.World) -> dict[str, dict[str, list[str]]]:
    """Reference entities as columns of text (facilities, providers, payers)."""
    F, R = world.facilities, world.providers
    return {
        "facilities": {
            "facility_id": list(F["facility_id"]), "facility_name": list(F["facility_name"]),
            "facility_type": list(F["facility_type"]), "city": list(F["city"]),
            "state": list(F["state"]), "staffed_beds": [str(b) for b in F["staffed_beds"]],
        },
        "providers": {
            "npi": list(R["npi"]), "first_name": list(R["first_name"]),
            "last_name": list(R["last_name"]), "specialty": list(R["specialty"]),
            "facility_id": list(F["facility_id"][R["facility_idx"]]),
        },
        "payers": {
            "payer_id": [p[0] for p in M.PAYERS], "payer_name": [p[1] for p in M.PAYERS],
            "payer_type": [M.PAYER_TYPES[p[2]] for p in M.PAYERS],
        },
    }


# ----------------------------------------------------------------------------------------------
def _noise(value: str, rng: np.random.Generator, upper_coded: bool) -> str:
    """Whitespace or case noise that silver's trim + case normalization undoes."""
    if upper_coded:
        options = [value.lower(), f" {value}", f"{value.lower()} ", f" {value} "]
    else:
        options = [f" {value} ", value.upper(), value.title() + " ", f" {value.capitalize()}",
                   value.upper() + " "]
    choice = options[int(rng.integers(0, len(options)))]
    return choice if choice != value else f" {value}"


def _spoil_number(text: str) -> str:
    for digit, letter in (("0", "O"), ("1", "l"), ("5", "S")):
        if digit in text:
            return text.replace(digit, letter, 1)
    return text[:1] + "O" + text[1:]


def _bad_date(rng: np.random.Generator, template: str) -> str:
    """A date that cannot parse (month 13-19, day 32-39), keeping the template's time part."""
    bad = f"{template[:4]}-{int(rng.integers(13, 20))}-{int(rng.integers(32, 40))}"
    return bad + template[10:]


def _raw_fields(line: str) -> list[str]:
    """Split a CSV line into its fields as written (quotes kept), for truncation."""
    if '"' not in line:
        return line.split(",")
    fields, current, quoted = [], [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    return fields


def _truncate_csv(fields: list[str], rng: np.random.Generator) -> str:
    """A record cut short: fewer fields than the header, never inside a quoted field."""
    n = len(fields)
    k = int(rng.integers(1, max(2, n - 2)))
    partial = fields[k]
    partial = "" if partial.startswith('"') else partial[: len(partial) // 2]
    return ",".join(fields[:k]) + "," + partial


def _days_to_next_change(pat: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Days from each change to the same patient's next change (-1 for a patient's last one).

    A late change of a patient whose newer change is delivered first arrives truly out of
    order: the case an SCD2 MERGE must place in history instead of making it current.
    """
    order = M.lexsort((ts, pat))
    has_next = np.r_[pat[order][1:] == pat[order][:-1], False]
    day = ts[order] // M.DAY                      # calendar days: batches are per day
    gap = np.r_[day[1:] - day[:-1], 0]
    result = np.full(len(pat), -1, dtype=np.int64)
    result[order] = np.where(has_next, gap, -1)
    return result


#: A late patient change is chosen among updates whose next change follows within this many
#: days, and delayed past it, so it arrives after a newer change of the same patient.
OUT_OF_ORDER_MAX_GAP_DAYS = 5


class DefectPlanter:
    """Plants the defects of one source into its frame and records them."""

    def __init__(self, source: str, frame: Frame, rng: np.random.Generator, days: int,
                 start_day: int, rate: float, n_patients: int, n_encounters: int,
                 provider_npis: np.ndarray):
        self.source, self.f, self.rng, self.days = source, frame, rng, days
        self.start_day, self.rate = start_day, rate
        self.n_patients, self.n_encounters = n_patients, n_encounters
        self.provider_npis = provider_npis
        self.used = np.zeros(len(frame), dtype=bool)
        self.truncate_rows: list[int] = []
        self.copies: list[Frame] = []

    # ------------------------------------------------------------------------------------------
    def eligible(self, defect: str) -> np.ndarray:
        f = self.f
        ok = ~self.used
        if self.source == "ehr_patients":
            op = f.extra["op"]
            if defect in ("exact_duplicate", "near_duplicate", "whitespace_case_noise"):
                ok &= op != 2
            else:
                ok &= op == 1                       # corrupt updates, never a patient's INSERT
        if defect == "late_arriving":
            ok &= f.batch <= self.days - 3
            if self.source == "ehr_patients":
                gap = f.extra["next_gap"]
                out_of_order = ok & (gap >= 0) & (gap <= OUT_OF_ORDER_MAX_GAP_DAYS)
                if out_of_order.any():
                    ok = out_of_order
        if defect == "unit_mixup":
            ok &= f.extra["test"] == [t[0] for t in M.LABS].index(M.GLUCOSE)
        return np.flatnonzero(ok)

    def plan(self) -> dict[str, np.ndarray]:
        types = list(SOURCE_DEFECTS[self.source])
        n_defects = int(self.rng.binomial(len(self.f), self.rate)) if self.rate > 0 else 0
        drawn = self.rng.integers(0, len(types), n_defects)
        chosen: dict[str, np.ndarray] = {}
        for t_idx, defect in enumerate(types):
            want = int((drawn == t_idx).sum())
            pool = self.eligible(defect)
            take = min(want, len(pool))
            rows = np.sort(self.rng.choice(pool, size=take, replace=False)) if take else \
                np.zeros(0, dtype=np.int64)
            self.used[rows] = True
            chosen[defect] = rows
        return chosen

    def mark(self, rows: np.ndarray, defect: str, columns: list[str] | None) -> np.ndarray:
        """Record the defect on ``rows`` and return the column chosen for each row."""
        if columns:
            picked = np.array(columns, dtype=object)[self.rng.integers(0, len(columns),
                                                                       len(rows))]
        else:
            picked = np.full(len(rows), "", dtype=object)
        self.f.defect[rows] = _DEFECT_CODE[defect]
        self.f.column[rows] = [_COLUMN_CODE[c] for c in picked]
        return picked

    # ------------------------------------------------------------------------------------------
    def run(self) -> Frame:
        chosen = self.plan()
        spec = SOURCE_DEFECTS[self.source]
        f = self.f
        for defect, rows in chosen.items():
            if len(rows) == 0 or defect in ("exact_duplicate", "near_duplicate"):
                continue
            columns = self.mark(rows, defect, spec[defect])
            getattr(self, f"_{defect}")(rows, columns)
        copies = []
        for defect in ("exact_duplicate", "near_duplicate"):
            rows = chosen.get(defect, np.zeros(0, dtype=np.int64))
            if len(rows) == 0:
                continue
            dup = f.take(rows)
            dup.copy[:] = True
            dup.batch = np.minimum(dup.batch + self.rng.integers(0, 3, len(rows)), self.days - 1)
            dup.defect[:] = _DEFECT_CODE[defect]
            if defect == "near_duplicate":
                columns = np.array(spec[defect], dtype=object)[
                    self.rng.integers(0, len(spec[defect]), len(rows))]
                dup.column[:] = [_COLUMN_CODE[c] for c in columns]
                for col in np.unique(columns):
                    sel = np.flatnonzero(columns == col)
                    upper = col in ("sex", "state")
                    dup.set(col, sel, [_noise(x, self.rng, upper) for x in dup.get(col, sel)])
            copies.append(dup)
        self.copies = copies
        return f

    # ---- one method per defect type: edit the text of the chosen rows -------------------------
    def _set(self, column: str, rows: np.ndarray, values: list[str | None]) -> None:
        self.f.set(_FRAME_COLUMN.get(column, column), rows, values)

    def _get(self, column: str, rows: np.ndarray) -> list[str | None]:
        return self.f.get(_FRAME_COLUMN.get(column, column), rows)

    def _for_each_column(self, rows: np.ndarray, columns: np.ndarray,
                         edit: Callable[[str, np.ndarray], None]) -> None:
        for col in np.unique(columns):
            edit(col, rows[columns == col])

    def _null_required(self, rows, columns):
        json_source = self.source.startswith("fhir")
        self._for_each_column(rows, columns, lambda c, r: self._set(
            c, r, ["null" if json_source else ""] * len(r)))

    def _unparseable_number(self, rows, columns):
        self._for_each_column(rows, columns, lambda c, r: self._set(
            c, r, [_spoil_number(x) for x in self._get(c, r)]))

    def _unparseable_date(self, rows, columns):
        def edit(c, r):
            values = self._get(c, r)
            quoted = values[0].startswith('"')
            self._set(c, r, [('"' + _bad_date(self.rng, x[1:-1]) + '"') if quoted
                             else _bad_date(self.rng, x) for x in values])
        self._for_each_column(rows, columns, edit)

    def _future_date(self, rows, columns):
        # the event moves 3-40 days past its batch date (silver allows at most one day)
        day = (self.start_day + self.f.batch[rows] + self.rng.integers(3, 41, len(rows)))
        secs = day * M.DAY + self.rng.integers(6 * 3600, 20 * 3600, len(rows)) // 60 * 60
        col = columns[0]
        if col == "adjudication_date":
            values = fmt.row_values(fmt.dates(day), np.arange(len(rows)))
        elif self.source.startswith("fhir"):
            values = ['"' + x + '"' for x in fmt.timestamps(secs, "Z").to_pylist()]
        else:
            values = fmt.timestamps(secs).to_pylist()
        self._set(col, rows, values)

    def _impossible_age(self, rows, columns):
        change_day = self.start_day + self.f.batch[rows]
        birth = change_day - self.rng.integers(121 * 366, 140 * 365, len(rows))
        self._set("birth_date", rows, fmt.dates(birth).to_pylist())

    def _discharge_before_admit(self, rows, columns):
        # admit moves 1-6 hours after discharge; the discharge (event) date stays in its batch
        disch = self._get("discharge_ts", rows)
        secs = (np.array(disch, dtype="datetime64[s]").astype(np.int64)
                + self.rng.integers(1, 7, len(rows)) * 3600)
        self._set("admit_ts", rows, fmt.timestamps(secs).to_pylist())

    def _invalid_code(self, rows, columns):
        table = {"ehr_encounters": "icd10cm", "fhir_observations": "loinc",
                 "fhir_medications": "rxnorm", "payer_claims": "cpt"}[self.source]
        bad = INVALID_CODES[table]
        values = [bad[int(i)] for i in self.rng.integers(0, len(bad), len(rows))]
        if self.source.startswith("fhir"):
            values = ['"' + x + '"' for x in values]
        self._set(columns[0], rows, values)

    def _orphan_foreign_key(self, rows, columns):
        def edit(c, r):
            n = len(r)
            if c == "mrn":
                numbers = self.rng.integers(max(self.n_patients + 1, 8_000_000), 10_000_000, n)
                values = [f"MRN{x:07d}" for x in numbers]
            elif c == "provider_npi":
                bases = self.rng.integers(100_000_000, 300_000_000, 4 * n + 8)
                npis = M.npi_numbers(bases).astype(str)
                npis = npis[~np.isin(npis, self.provider_npis)]
                values = list(npis[:n])
            else:
                numbers = self.rng.integers(900_000_000, 1_000_000_000, n)
                values = [f"ENC{x:09d}" for x in numbers]
                if self.source.startswith("fhir"):
                    values = ['"Encounter/' + x + '"' for x in values]
            self._set(c, r, values)
        self._for_each_column(rows, columns, edit)

    def _truncated_line(self, rows, columns):
        self.truncate_rows.extend(int(r) for r in rows)

    def _whitespace_case_noise(self, rows, columns):
        self._for_each_column(rows, columns, lambda c, r: self._set(
            c, r, [_noise(x, self.rng, c in ("sex", "state")) for x in self._get(c, r)]))

    def _unit_mixup(self, rows, columns):
        # glucose delivered in mmol/L (value and reference range), silver converts x18.016
        mg = self.f.extra["value"][rows]
        self._set("value", rows, [_num(x / 18.016, 1) for x in mg])
        self._set("unit", rows, ['"mmol/L"'] * len(rows))
        self._set("low", rows, ["3.9"] * len(rows))
        self._set("high", rows, ["5.5"] * len(rows))

    def _late_arriving(self, rows, columns):
        delay = self.rng.integers(2, 8, len(rows))
        if self.source == "ehr_patients":  # past the patient's newer change: out of order
            delay = np.maximum(delay, self.f.extra["next_gap"][rows] + 1)
        self.f.batch[rows] = np.minimum(self.f.batch[rows] + delay, self.days - 1)


#: NDJSON defect column names -> the fragment that holds the value
_FRAME_COLUMN = {"valueQuantity.value": "value", "subject.reference": "subject",
                 "encounter.reference": "encounter", "code.coding.code": "code",
                 "medicationCodeableConcept.coding.code": "code",
                 "effectiveDateTime": "effective", "authoredOn": "authored",
                 "valueQuantity.unit": "unit"}

OBSERVATION_TEMPLATE = [
    '{"resourceType":"Observation","id":', "id", ',"status":"final","subject":{"reference":',
    "subject", '},"encounter":{"reference":', "encounter",
    '},"code":{"coding":[{"system":"http://loinc.org","code":', "code", ',"display":', "display",
    '}]},"effectiveDateTime":', "effective", ',"valueQuantity":{"value":', "value", ',"unit":',
    "unit", '},"referenceRange":[{"low":{"value":', "low", ',"unit":', "unit",
    '},"high":{"value":', "high", ',"unit":', "unit", "}}]}",
]
MEDICATION_TEMPLATE = [
    '{"resourceType":"MedicationRequest","id":', "id", ',"status":', "status",
    ',"intent":"order","subject":{"reference":', "subject", '},"encounter":{"reference":',
    "encounter", '},"medicationCodeableConcept":{"coding":[{"system":'
    '"http://www.nlm.nih.gov/research/umls/rxnorm","code":', "code", ',"display":', "display",
    '}]},"authoredOn":', "authored", ',"dosageInstruction":[{"text":', "dose_text",
    ',"doseAndRate":[{"doseQuantity":{"value":', "dose", ',"unit":', "dose_unit",
    '}}]}],"dispenseRequest":{"validityPeriod":{"start":', "start", ',"end":', "end", "}}}",
]
TEMPLATES = {"fhir_observations": OBSERVATION_TEMPLATE, "fhir_medications": MEDICATION_TEMPLATE}


# ----------------------------------------------------------------------------------------------
def compose_lines(source: str, frame: Frame, rows: np.ndarray, columns: list[str],
                  overrides: dict[str, pa.Array] | None = None) -> pa.Array:
    """One text line per record number in ``rows`` (in that order), each ending with a newline.

    Each column recipe is evaluated once over all the rows, so the lines come out in file
    order and no long text array is gathered afterwards. ``overrides``: the text of some
    columns for these rows, used instead of their recipes (edited values).
    """
    if len(rows) == 0:
        return pa.array([], pa.string())
    formatted: dict[str, pa.Array] = dict(overrides or {})

    def text(name: str) -> pa.Array:
        if name not in formatted:
            formatted[name] = frame.cols[name](rows)
        return formatted[name]

    if source in TEMPLATES:
        parts = [text(p) if p in frame.cols else p for p in TEMPLATES[source]]
    else:
        parts = []
        for i, c in enumerate(columns):
            if i:
                parts.append(",")
            parts.append(text(c))
    return fmt.join_lines([*parts, "\n"], len(rows))


def clean_generation_args(patients: int, days: int, seed: int, defect_rate: float,
                          start_date: date) -> None:
    """Clear messages for impossible parameters (raised as ValueError)."""
    if not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ValueError(f"--patients must be a positive whole number (got {patients!r})")
    if patients > 5_000_000:
        raise ValueError(f"--patients must be at most 5,000,000 (got {patients:,}): MRNs have "
                         "seven digits and part of the range is kept for planted orphans")
    if not isinstance(days, (int, np.integer)) or days < 1:
        raise ValueError(f"--days must be a positive whole number of days (got {days!r})")
    if days > 3660:
        raise ValueError(f"--days must be at most 3660 (got {days})")
    if not 0 <= defect_rate <= 0.2:
        raise ValueError(f"--defect-rate must be between 0 and 0.2 (got {defect_rate})")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative whole number (got {seed!r})")
    if not isinstance(start_date, date):
        raise ValueError(f"--start-date must be a date YYYY-MM-DD (got {start_date!r})")


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` (or empty a previous landing zone there); fail clearly if unwritable."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out_dir} cannot be created: {err.strerror or err}") from err
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir} is not writable (permission denied)")
    entries = [p for p in out_dir.iterdir()]
    if entries and not (out_dir / MANIFEST_NAME).exists():
        raise ValueError(f"--out {out_dir} is not empty and holds no {MANIFEST_NAME}: refusing "
                         "to delete files that the generator did not write")
    for entry in entries:     # a previous run's landing zone: rewrite it completely
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


#: Lines are composed and written in blocks of whole days of about this many records: the
#: buffers of one block are reused by the next (fresh memory is slow to touch the first time),
#: and peak memory stays far below a whole source's text. With up to three sources written
#: at once, 100k (vs 200k) cut peak RSS by ~0.2 GB and CPU by ~0.5 s at 1M encounters;
#: smaller blocks add per-block overhead.
BLOCK_RECORDS = 100_000


class _Lines:
    """A source's lines in file order, composed block by block when written, plus the few
    lines replaced by planted defects (swapped in when the files are written)."""

    def __init__(self, source: str, frame: Frame, records: np.ndarray, columns: list[str]):
        self.source, self.frame, self.records, self.columns = source, frame, records, columns
        self.replaced: dict[int, str] = {}
        self._positions: np.ndarray | None = None
        if frame.blank is not None:               # records with only their first k fields
            mask, keep = frame.blank
            positions = np.flatnonzero(mask[records])
            if len(positions):
                kept = [frame.cols[c](records[positions]).to_pylist() for c in columns[:keep]]
                tail = "," * (len(columns) - keep) + "\n"
                self.replace(positions, [",".join(values) + tail for values in zip(*kept)])

    def compose(self, lo: int, hi: int) -> pa.Array:
        """The clean lines at file positions ``lo`` to ``hi`` (exclusive)."""
        return compose_lines(self.source, self.frame, self.records[lo:hi], self.columns)

    def replace(self, positions: np.ndarray, texts: list[str]) -> None:
        self.replaced.update(zip((int(p) for p in positions), texts))
        self._positions = None

    def prepare(self) -> None:
        """Sort the replaced positions now: blocks are then written by several threads, which
        only read this object."""
        self._positions = np.array(sorted(self.replaced), dtype=np.int64)

    def texts_of(self, positions: np.ndarray) -> list[str]:
        """The current lines at ``positions`` (replaced ones included)."""
        positions = np.asarray(positions, dtype=np.int64)
        clean = compose_lines(self.source, self.frame, self.records[positions],
                              self.columns).to_pylist()
        return [self.replaced.get(int(p), c) for p, c in zip(positions, clean)]

    def write(self, path: Path, header: str | None, block: pa.Array, block_lo: int, lo: int,
              hi: int, scratch: _DirectScratch | None = None) -> None:
        """Lines ``lo`` to ``hi`` (exclusive; ``block`` holds the lines from ``block_lo``) as one
        file: runs of clean lines straight from the Arrow buffer (no Python join), the replaced
        lines in between."""
        pieces: list[bytes | memoryview] = [] if header is None else [header.encode("utf-8")]
        if hi > lo:
            if self._positions is None:
                self.prepare()
            replaced = self._positions[np.searchsorted(self._positions, lo):
                                       np.searchsorted(self._positions, hi)]
            buffers = block.buffers()
            offsets = np.frombuffer(buffers[1], dtype=np.int32,
                                    count=block.offset + len(block) + 1)[block.offset:]
            data = memoryview(buffers[2])
            # clean run i is lines starts[i] .. ends[i] (exclusive), replaced line i after it
            run_from = offsets[np.r_[lo, replaced + 1] - block_lo].tolist()
            run_to = offsets[np.r_[replaced, hi] - block_lo].tolist()
            for i, p in enumerate(replaced.tolist()):
                if run_to[i] > run_from[i]:
                    pieces.append(data[run_from[i]:run_to[i]])
                pieces.append(self.replaced[p].encode("utf-8"))
            if run_to[-1] > run_from[-1]:
                pieces.append(data[run_from[-1]:run_to[-1]])
        _write_file(path, pieces, scratch)


#: Buffers per os.writev call (the system's IOV_MAX, at most 1024).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 1024


#: Files of at least this many bytes go through ``_DirectScratch`` (see there).
DIRECT_MIN_BYTES = 1 << 20
#: O_DIRECT wants buffers, file offsets and lengths in whole blocks of the disk (4096 covers
#: the usual 512- and 4096-byte blocks).
_DIRECT_ALIGN = 4096


class _DirectScratch:
    """Writes big files with O_DIRECT (Linux), from one page-aligned buffer reused per source.

    The generator never reads its files back, and copying 1.6 GB (1M encounters) into the page
    cache was its largest single cost: on a VM each fresh page-cache page is a hypervisor fault
    (writing 100 MB to new files took 0.2-0.3 s CPU; with O_DIRECT 800 MB took 0.05 s CPU and
    0.5 s of disk time, during which the GIL is free for the other writers). The last partial
    block is written through the page cache. Where O_DIRECT is missing or refused (tmpfs,
    macOS, Windows) ``write`` returns False and the caller writes the file the ordinary way.
    """

    def __init__(self) -> None:
        self.buffer: mmap.mmap | None = None          # anonymous mmap: page-aligned

    def write(self, path: Path, pieces: list[bytes | memoryview], size: int) -> bool:
        """Write ``pieces`` (``size`` bytes in all) as ``path``; False if O_DIRECT failed."""
        direct = getattr(os, "O_DIRECT", 0)
        if not direct or size < DIRECT_MIN_BYTES:
            return False
        if self.buffer is None or len(self.buffer) < size:
            if self.buffer is not None:
                self.buffer.close()
            self.buffer = mmap.mmap(-1, -(-size // (1 << 20)) * (1 << 20))
        try:
            fd = _open_to_overwrite(path, direct)
        except OSError:
            return False
        try:
            with memoryview(self.buffer) as view:
                at = 0
                for piece in pieces:
                    view[at:at + len(piece)] = memoryview(piece).cast("B")   # Arrow: 'b'
                    at += len(piece)
                body = size - size % _DIRECT_ALIGN
                done = 0
                while done < body:
                    done += os.write(fd, view[done:body])
                if body < size:                   # the tail: through the page cache
                    import fcntl

                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~direct)
                    rest = view[body:size]
                    while len(rest):
                        rest = rest[os.write(fd, rest):]
        except OSError:
            return False                          # the caller rewrites the whole file
        finally:
            os.close(fd)
        return True

    def close(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None


def _open_to_overwrite(path: Path, flags: int = 0) -> int:
    """A descriptor to write ``path`` from its start. The file normally exists already, empty
    (``_make_landing_files``): opened without O_CREAT, the open takes no lock on its folder,
    where O_CREAT makes concurrent opens in one folder wait for each other (the kernel spun on
    that lock for ~0.5 CPU s per run). A missing file, or folder, is created."""
    try:
        return os.open(path, os.O_WRONLY | os.O_TRUNC | flags)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o666)


def _write_file(path: Path, pieces: list[bytes | memoryview],
                scratch: _DirectScratch | None = None) -> None:
    """Write ``pieces`` one after another as the file ``path``: big files through ``scratch``
    when given, else with ``os.writev`` (one system call per 1024 pieces instead of one or two
    per piece: a file holds a clean run of lines between every two planted defects), else piece
    by piece."""
    if scratch is not None and scratch.write(path, pieces, sum(len(p) for p in pieces)):
        return
    fd = _open_to_overwrite(path, getattr(os, "O_BINARY", 0))
    try:
        for i in range(0, len(pieces), _IOV_MAX):
            chunk = pieces[i:i + _IOV_MAX]
            written = os.writev(fd, chunk) if hasattr(os, "writev") else 0
            if written < sum(len(piece) for piece in chunk):
                rest = memoryview(b"".join(chunk))[written:]
                while len(rest):
                    rest = rest[os.write(fd, rest):]
    finally:
        os.close(fd)


def _day_blocks(bounds: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Runs of whole days ``(first, last + 1)`` of about ``size`` records each."""
    blocks, first = [], 0
    days = len(bounds) - 1
    for d in range(days):
        if bounds[d + 1] - bounds[first] >= size or d == days - 1:
            blocks.append((first, d + 1))
            first = d + 1
    return blocks


def _csv_line(values: list[str]) -> str:
    out = []
    for v in values:
        v = "" if v is None else str(v)
        out.append('"' + v.replace('"', '""') + '"' if any(ch in v for ch in ',"\r\n') else v)
    return ",".join(out) + "\n"


def _write_event_source(out: Path, source: str, entity: str, spec: dict[str, Any],
                        build: Callable[[], Frame], rng: np.random.Generator, world: M.World,
                        days: int, defect_rate: float, patients: int, day_names: np.ndarray,
                        provider_npis: np.ndarray, helpers: _SourceWriters | None = None,
                        files_ready: Callable[[], Any] | None = None
                        ) -> tuple[list[dict], list[str], dict[str, int], int]:
    """Plant one event source's defects, order its records and write its daily files.

    Returns its manifest file entries, its defects (manifest entries already in JSON: there
    can be 100k, ``_defect_json`` writes them faster than json.dumps), defects per type and
    its record count.
    Sources share nothing mutable (each has its own random generator and files), so they can
    run in any order or at the same time. Its day-blocks are offered to ``helpers`` (idle
    writer threads may compose and write some of them); the entries come out in day order.
    """
    files: list[dict[str, Any]] = []
    defects: list[str] = []
    planter = DefectPlanter(source, build(), rng, days, world.start_day, defect_rate,
                            patients, len(world.encounters["pat"]), provider_npis)
    frame = planter.run()
    is_csv = spec["format"] == "csv"
    columns = spec.get("columns", [])
    parts = [frame, *planter.copies]
    batch = np.concatenate([part.batch for part in parts])
    ts = np.concatenate([part.ts for part in parts])
    copy = np.concatenate([part.copy for part in parts])
    defect = np.concatenate([part.defect for part in parts])
    column = np.concatenate([part.column for part in parts])
    records = np.concatenate([part.rows for part in parts])
    order = M.lexsort((ts, copy, batch))           # stable: ties keep part order
    position = np.empty_like(order)                 # file position of each part row
    position[order] = np.arange(len(order))
    records, batch, defect, column = records[order], batch[order], defect[order], \
        column[order]
    lines = _Lines(source, frame, records, columns)
    start = 0
    for part in parts:
        edited, rendered = part.edited_lines(source, columns)
        lines.replace(position[start + edited], rendered)
        start += len(part)
    drift_day = -1
    if is_csv and source == "ehr_encounters" and defect_rate > 0 and days >= 3:
        counts = np.bincount(batch, minlength=days)
        candidates = np.flatnonzero(counts[days // 3: max(days // 3 + 1, 2 * days // 3)])
        if len(candidates):
            drift_day = days // 3 + int(candidates[int(rng.integers(0, len(candidates)))])
    if drift_day >= 0:
        rows_d = np.flatnonzero(batch == drift_day)
        drg = frame.extra["drg"][records[rows_d]]
        extra = [f"{x:03d}" if x >= 0 else "" for x in drg.tolist()]
        lines.replace(rows_d, [text[:-1] + "," + value + "\n"
                               for text, value in zip(lines.texts_of(rows_d), extra)])
    if planter.truncate_rows:
        rows_t = np.sort(position[np.asarray(planter.truncate_rows, dtype=np.int64)])
        old = lines.texts_of(rows_t)
        if is_csv:
            new = [_truncate_csv(_raw_fields(text[:-1]), rng) + "\n" for text in old]
        else:
            new = []
            for text in old:
                cut = int(len(text) * (0.3 + 0.5 * rng.random()))
                new.append(text[:cut] + "\n")
        lines.replace(rows_t, new)

    # files: one per day (header-only / empty when a day has no records)
    bounds = np.searchsorted(batch, np.arange(days + 1))
    first_line = 2 if is_csv else 1
    flagged = np.flatnonzero(defect)
    keys = dict(zip(flagged.tolist(), frame.key(records[flagged]).to_pylist())) \
        if len(flagged) else {}
    lines.prepare()

    def write_block(first: int, last: int, scratch: _DirectScratch) -> tuple[list, list]:
        """Compose days ``first`` to ``last`` (exclusive) and write their files; their manifest
        file entries and defects."""
        block_files: list[dict[str, Any]] = []
        block_defects: list[str] = []
        block_lo = int(bounds[first])
        block = lines.compose(block_lo, int(bounds[last]))
        for d in range(first, last):
            day_name = day_names[d]
            rel = _day_file(source, spec, day_name)
            header = None
            if is_csv:
                header = ",".join(columns + ([SCHEMA_DRIFT_COLUMN] if d == drift_day else []))
                header += "\n"
            lo, hi = int(bounds[d]), int(bounds[d + 1])
            lines.write(out / rel, header, block, block_lo, lo, hi, scratch)
            block_files.append({"source": source, "entity": entity, "file": rel,
                                "format": spec["format"], "rows": hi - lo})
            if d == drift_day:
                block_defects.append(_defect_json("schema_drift", source, rel, 1, None,
                                                  SCHEMA_DRIFT_COLUMN))
            for i in flagged[np.searchsorted(flagged, lo):
                             np.searchsorted(flagged, hi)].tolist():
                block_defects.append(_defect_json(DEFECT_NAMES[defect[i]], source, rel,
                                                  i - lo + first_line, keys[i],
                                                  DEFECT_COLUMNS[column[i]] or None))
        return block_files, block_defects

    if files_ready is not None:
        files_ready()                # writing while the folders are made would contend
    blocks = _day_blocks(bounds, BLOCK_RECORDS)
    queue = _BlockQueue([lambda scratch, b=b: write_block(*b, scratch) for b in blocks])
    if helpers is not None:
        helpers.share(queue)
    scratch = _DirectScratch()
    try:
        while (i := queue.take()) is not None:
            queue.run(i, scratch)
    finally:
        scratch.close()
    for block_files, block_defects in queue.wait():
        files.extend(block_files)
        defects.extend(block_defects)
    per_code = np.bincount(defect[flagged], minlength=len(DEFECT_NAMES))
    counts = {DEFECT_NAMES[c]: int(per_code[c]) for c in np.flatnonzero(per_code).tolist()}
    if drift_day >= 0:
        counts["schema_drift"] = 1
    return files, defects, counts, len(batch)


_json_str = json.encoder.encode_basestring_ascii      # what json.dumps uses for a str


def _defect_json(defect: str, source: str, file: str, line: int, key: str | None,
                 column: str | None) -> str:
    """``json.dumps`` of a manifest defect entry (same text, without building a dict)."""
    return (f'{{"defect_type": {_json_str(defect)}, "source": {_json_str(source)}, '
            f'"file": {_json_str(file)}, "line": {int(line)}, '
            f'"record_key": {"null" if key is None else _json_str(key)}, '
            f'"column": {"null" if column is None else _json_str(column)}}}')


@dataclass
class _SourceResult:
    """What writing one event source gave: its manifest entries (already JSON, one per file
    and per defect: encoded in the writer thread), defects per type and its record count."""

    files: list[str]
    defects: list[str]
    defect_counts: dict[str, int]
    count: int


def _event_source_job(out: Path, source: str, spec: dict[str, Any], world: M.World,
                      rng: np.random.Generator, days: int, defect_rate: float, patients: int,
                      day_names: np.ndarray, helpers: _SourceWriters | None = None,
                      files_ready: Callable[[], Any] | None = None) -> _SourceResult:
    """Write one event source and encode its manifest entries (so that work runs in the
    writer thread too, not after all sources are written)."""
    files, defects, counts, count = _write_event_source(
        out, source, ENTITY_OF_SOURCE[source], spec, frame_builders(world)[source], rng, world,
        days, defect_rate, patients, day_names, world.providers["npi"].astype(str), helpers,
        files_ready)
    return _SourceResult([json.dumps(item) for item in files], defects, counts, count)


class _BlockQueue:
    """The day-blocks of one source, taken in order by its own thread and by idle helpers.

    The last source would otherwise run alone on one core at the end; blocks cover whole
    days (their own files), so they can be written in any order, and their results are kept
    per block to come out in day order.
    """

    def __init__(self, work: list[Callable[[_DirectScratch], tuple[list, list]]]):
        self.work = work
        self.results: list[Any] = [None] * len(work)
        self.next = 0
        self.left = len(work)
        self.lock = threading.Condition()

    def take(self) -> int | None:
        """The next block nobody has taken (None when all are taken)."""
        with self.lock:
            if self.next >= len(self.work):
                return None
            self.next += 1
            return self.next - 1

    def open(self) -> bool:
        return self.next < len(self.work)

    def run(self, i: int, scratch: _DirectScratch) -> None:
        try:
            self.results[i] = self.work[i](scratch)
        except BaseException as err:                 # re-raised by wait()
            self.results[i] = err
        with self.lock:
            self.left -= 1
            self.lock.notify_all()

    def wait(self) -> list[tuple[list, list]]:
        """Every block's result in block order, once all are written."""
        with self.lock:
            while self.left:
                self.lock.wait()
        for result in self.results:
            if isinstance(result, BaseException):
                raise result
        return self.results


#: The simulation stage after which each event source can be written.
SOURCE_OF_STAGE = {"encounters": "ehr_encounters", "labs": "fhir_observations",
                   "meds": "fhir_medications", "claims": "payer_claims",
                   "changes": "ehr_patients"}
#: From this many encounters on (about 300k event records), sources are written in two
#: threads while the simulation goes on (numpy and Arrow kernels and file writes release the
#: GIL). Below it the threads' start-up and contention would cost more than they save.
PARALLEL_MIN_ENCOUNTERS = 60_000


#: Records of each stage's source (to start the biggest waiting source first).
_STAGE_SIZE = {"encounters": lambda w: len(w.encounters["pat"]),
               "labs": lambda w: len(w.labs["enc"]), "meds": lambda w: len(w.meds["enc"]),
               "claims": lambda w: len(w.claims["line_claim"]),
               "changes": lambda w: len(w.changes["pat"])}
#: Writer threads started alongside the simulation for big worlds.
WRITER_THREADS = 2


class _SourceWriters:
    """Writes each event source once its part of the world is simulated.

    For big worlds, writer threads take a source the moment the simulation reports its stage
    ready (encounters are written while labs, medications and claims are still simulated),
    the biggest waiting source first; when the simulation is done the main thread takes
    waiting sources too, so the last big source does not wait for a thread to come free.
    A thread (or the main thread) with no source to take writes day-blocks of a running
    source instead (``share``), so the last source does not end on one core alone.
    Small worlds write their sources one after another afterwards. Each source has its own
    random generator and files, so the bytes do not depend on the timing.
    """

    def __init__(self, job: Callable[[str, M.World], _SourceResult]):
        self.job = job
        self.world: M.World | None = None
        self.futures: dict[str, Future[_SourceResult]] = {}
        self.waiting: list[tuple[int, str]] = []     # heap of (-records, source)
        self.queues: list[_BlockQueue] = []          # running sources with blocks left
        self.wake = threading.Condition()
        self.closed = False
        self.threads: list[threading.Thread] = []

    def ready(self, stage: str, world: M.World) -> None:
        """The simulation's callback: queue the source of ``stage`` (big worlds)."""
        self.world = world
        if stage == "encounters" and len(world.encounters["pat"]) >= PARALLEL_MIN_ENCOUNTERS:
            self.threads = [threading.Thread(target=self._work, name=f"generate-{i}",
                                             daemon=True) for i in range(WRITER_THREADS)]
            for thread in self.threads:
                thread.start()
        if self.threads:
            source = SOURCE_OF_STAGE[stage]
            with self.wake:
                self.futures[source] = Future()
                heapq.heappush(self.waiting, (-_STAGE_SIZE[stage](world), source))
                self.wake.notify()

    def share(self, queue: _BlockQueue) -> None:
        """Offer a running source's day-blocks to threads that have no source to take."""
        if self.threads:
            with self.wake:
                self.queues.append(queue)
                self.wake.notify_all()

    def _next(self, block: bool) -> str | _BlockQueue | None:
        """The biggest waiting source, else a running source with blocks left (None when
        closed, or when there is neither and not block)."""
        with self.wake:
            while not self.closed:
                if self.waiting:
                    return heapq.heappop(self.waiting)[1]
                self.queues = [queue for queue in self.queues if queue.open()]
                if self.queues:
                    return self.queues[0]
                if not block:
                    return None
                self.wake.wait()
            return None

    def _run(self, source: str) -> None:
        M.run_into(self.futures[source], self.job, source, self.world)   # errors: results()

    def _help(self, task: str | _BlockQueue, scratch: _DirectScratch) -> None:
        """Write a waiting source, or one block of a running one."""
        if isinstance(task, str):
            self._run(task)
        elif (i := task.take()) is not None:
            task.run(i, scratch)

    def _work(self) -> None:
        scratch = _DirectScratch()                   # for the blocks this thread helps with
        try:
            while (task := self._next(block=True)) is not None:
                self._help(task, scratch)
        finally:
            scratch.close()

    def results(self, sources: list[str], bar) -> list[tuple[str, _SourceResult]]:
        """Every source's result, in the order of ``sources`` (the simulation is done)."""
        scratch = _DirectScratch()
        try:
            while self.threads and (task := self._next(block=False)) is not None:
                self._help(task, scratch)
        finally:
            scratch.close()
        results = []
        for source in sources:
            future = self.futures.get(source)
            result = future.result() if future is not None else self.job(source, self.world)
            results.append((source, result))
            bar.update(1)
        return results

    def close(self) -> None:
        """Stop the threads (after their current source); waiting sources are dropped."""
        with self.wake:
            self.closed = True
            self.wake.notify_all()
        for thread in self.threads:
            thread.join()


@contextmanager
def _small_pages() -> Iterator[None]:
    """Run without numpy's transparent-huge-page hint, and put it back afterwards.

    On Linux numpy asks for huge pages (``madvise(MADV_HUGEPAGE)``) on every array of 4 MB or
    more. Where the kernel's THP ``defrag`` setting is ``madvise`` (the usual default), the
    first touch of such an array can stall on compacting memory to find a free 2 MB page
    (numpy issue #31590). The generator's big arrays are short-lived and written once, so the
    compaction is never paid back: at 1M encounters the hint cost 1-2 s of system CPU (3.1-4.0
    s with it, 1.5-2.3 s without) and 10-15 % of the wall time on a 2-core VM.
    """
    try:
        from numpy._core import multiarray                     # numpy >= 2
    except ImportError:                                        # pragma: no cover - numpy 1.26
        from numpy.core import multiarray
    toggle = getattr(multiarray, "_set_madvise_hugepage", None)
    if toggle is None:                                         # pragma: no cover
        yield
        return
    previous = toggle(False)
    try:
        yield
    finally:
        toggle(previous)


def _day_file(source: str, spec: dict[str, Any], day_name: str) -> str:
    """The landing-zone path of an event source's file of one day (``<source>/<day>/...``)."""
    name = spec["file_pattern"].format(yyyymmdd=day_name.replace("-", ""))
    return f"{source}/{day_name}/{name}"


def _make_landing_files(out: Path, sources: dict[str, dict[str, Any]],
                        day_names: np.ndarray) -> None:
    """Every folder of the landing zone and every event source's daily file, empty.

    Run on a thread while the simulation still has one core to itself: creating hundreds of
    folders and files is file-system work (about 0.5 ms each on this VM's disk, 0.5 s in all
    for 90 days) that writers would otherwise do on the way; opening an existing empty file
    takes microseconds. Writers still create what they find missing.
    """
    os.makedirs(out / "reference" / str(day_names[0]), exist_ok=True)
    root = str(out)
    for source in ENTITY_OF_SOURCE:          # plain os calls on strings: this thread holds
        for day in day_names.tolist():       # the GIL as little as it can
            path = os.path.join(root, _day_file(source, sources[source], day))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))


# ----------------------------------------------------------------------------------------------
def generate(out_dir: str | os.PathLike, patients: int, days: int, seed: int = 42,
             defect_rate: float = 0.02, start_date: date = date(2025, 1, 1),
             progress: bool = False, readmission_rate: float = 0.12) -> GenerationSummary:
    """Generate the landing zone into ``out_dir`` (rewritten completely) and its manifest.

    Same arguments -> byte-identical files. Returns what was written (rows per entity, files,
    planted defects, seconds).
    """
    from utils.contracts import landing_sources

    started = time.perf_counter()
    clean_generation_args(patients, days, seed, defect_rate, start_date)
    if not 0 <= readmission_rate <= 0.8:
        raise ValueError(f"readmission_rate must be between 0 and 0.8 (got {readmission_rate})")
    out = Path(out_dir)
    prepare_out_dir(out)
    sources = landing_sources()
    bar = _progress(progress, total=7)
    day_names = (np.datetime64(start_date, "D") + np.arange(days)).astype(str)
    # one generator per source, derived from the seed: planting in one source never shifts
    # another source's random stream
    seed_seq = np.random.SeedSequence([seed, 7])
    source_rngs = dict(zip(["reference", *ENTITY_OF_SOURCE.values()],
                           [np.random.default_rng(s) for s in seed_seq.spawn(6)]))

    def job(source: str, world: M.World) -> _SourceResult:
        return _event_source_job(out, source, sources[source], world,
                                 source_rngs[ENTITY_OF_SOURCE[source]], days, defect_rate,
                                 patients, day_names, writers, folders.exception)

    writers = _SourceWriters(job)
    folders = Future()
    threading.Thread(target=M.run_into, args=(folders, _make_landing_files, out, sources,
                                             day_names),
                     name="generate-folders", daemon=True).start()
    try:
        with _small_pages():
            world = M.simulate(patients, days, seed, start_date, readmission_rate,
                               writers.ready)
            bar.update(1)
            files, defects, rows_per_entity = _write_reference(out, sources["reference"],
                                                               world, source_rngs["reference"],
                                                               defect_rate, day_names)
            bar.update(1)
            results = writers.results(list(ENTITY_OF_SOURCE), bar)
    finally:
        writers.close()
        folders.exception()                      # wait; a writer reports a real mkdir error

    file_entries = [json.dumps(item) for item in files]
    defect_entries = [json.dumps(item) for item in defects]
    defect_counts: dict[str, int] = {}
    for d in defects:
        defect_counts[d["defect_type"]] = defect_counts.get(d["defect_type"], 0) + 1
    for source, result in results:
        file_entries.extend(result.files)
        defect_entries.extend(result.defects)
        for defect, count in result.defect_counts.items():
            defect_counts[defect] = defect_counts.get(defect, 0) + count
        rows_per_entity[ENTITY_OF_SOURCE[source]] = result.count
    defect_counts = dict(sorted(defect_counts.items()))
    manifest = {
        "generator": "data_generator",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": {"patients": patients, "days": days, "seed": seed,
                       "defect_rate": defect_rate, "start_date": start_date.isoformat(),
                       "readmission_rate": readmission_rate},
        "batch_dates": [str(x) for x in day_names],
        "rows": rows_per_entity,
        "required_columns": REQUIRED_COLUMNS,
        "defect_counts": defect_counts,
    }
    (out / MANIFEST_NAME).write_text(_manifest_text(manifest, file_entries, defect_entries),
                                     encoding="utf-8")
    bar.close()
    return GenerationSummary(out_dir=out, rows=rows_per_entity, files=len(file_entries),
                             defects=len(defect_entries), defect_counts=defect_counts,
                             seconds=time.perf_counter() - started)


def _write_reference(out: Path, ref_spec: dict[str, Any], world: M.World,
                     rng: np.random.Generator, defect_rate: float, day_names: np.ndarray
                     ) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Reference files, delivered once on the first day (with their two planted defects).

    Returns their manifest file entries, defects and rows per entity."""
    files: list[dict[str, Any]] = []
    defects: list[dict[str, Any]] = []
    rows_per_entity: dict[str, int] = {}
    ref = reference_tables(world)
    for entity, spec in ref_spec["entities"].items():
        table = ref[entity]
        columns = spec["columns"]
        rows = [[table[c][i] for c in columns] for i in range(len(table[columns[0]]))]
        planted: list[tuple[int, str, str]] = []      # (row index, defect, column)
        if defect_rate > 0 and entity == "facilities":
            # one facility state delivered lower case with a blank (" oh"): standardized
            i = int(rng.integers(0, len(rows)))
            col = columns.index("state")
            rows[i][col] = " " + rows[i][col].lower()
            planted.append((i, "whitespace_case_noise", "state"))
        if defect_rate > 0 and entity == "providers":
            # the reference extract repeats one provider row at its end: silver drops the copy
            i = int(rng.integers(0, len(rows)))
            rows.append(list(rows[i]))
            planted.append((len(rows) - 1, "exact_duplicate", ""))
        rel = f"reference/{day_names[0]}/{spec['file']}"
        text = _csv_line(columns) + "".join(_csv_line(r) for r in rows)
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        files.append({"source": "reference", "entity": entity, "file": rel,
                      "format": "csv", "rows": len(rows)})
        key_col = columns.index(spec["key"][0])
        for i, defect, col in planted:
            defects.append({"defect_type": defect, "source": "reference", "file": rel,
                            "line": i + 2, "record_key": rows[i][key_col],
                            "column": col or None})
        rows_per_entity[entity] = len(rows)
    return files, defects, rows_per_entity


def _manifest_text(manifest: dict, files: list[str], defects: list[str]) -> str:
    """Readable JSON with one line per file and per defect (``files`` and ``defects`` are
    their entries, already JSON) after the other keys of ``manifest``."""
    parts = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in manifest.items()]
    for key, entries in (("files", files), ("defects", defects)):
        body = ",\n  ".join(entries)
        parts.append(f'"{key}": [\n  {body}\n ]' if entries else f'"{key}": []')
    return "{\n " + ",\n ".join(parts) + "\n}\n"


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="generating", unit="step", leave=False)


def load_manifest(landing_dir: str | os.PathLike | None = None) -> dict:
    """The manifest of a landing zone (default: the configured one)."""
    if landing_dir is None:
        from utils.config import get_config

        landing_dir = get_config().landing_dir
    path = Path(landing_dir) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"No {MANIFEST_NAME} in {landing_dir}: run `make data` first")
    return json.loads(path.read_text(encoding="utf-8"))

"""The clinical simulation: who the patients are and what happens to them, all vectorized.

Every entity is a dict of equal-length numpy arrays (one element per record). Nothing here
loops over rows: counts come from Poisson draws, children are expanded with ``np.repeat``,
per-patient state is looked up by index. Faker is used only to build small pools of names
and street names that are then sampled with numpy.

Times are integer seconds since the Unix epoch (naive, the hospital's local time); dates are
integer days since the epoch.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable

import numpy as np

from data_generator.codes import load_code_table

DAY = 86_400
HOUR = 3_600
MINUTE = 60

# ----------------------------------------------------------------------------------------------
# Static reference data of the simulated health system (a regional system in the US Midwest).
# (city, state, zip3, area code, relative population)
CITIES: list[tuple[str, str, str, str, float]] = [
    ("Columbus", "OH", "432", "614", 9.0), ("Dayton", "OH", "454", "937", 4.0),
    ("Toledo", "OH", "436", "419", 4.0), ("Cincinnati", "OH", "452", "513", 7.0),
    ("Akron", "OH", "443", "330", 3.0), ("Lima", "OH", "458", "419", 1.0),
    ("Ann Arbor", "MI", "481", "734", 2.0), ("Detroit", "MI", "482", "313", 6.0),
    ("Lansing", "MI", "489", "517", 2.0), ("Fort Wayne", "IN", "468", "260", 3.0),
    ("Indianapolis", "IN", "462", "317", 7.0), ("South Bend", "IN", "466", "574", 2.0),
]
FACILITY_TYPES = ["acute_care_hospital", "critical_access_hospital", "outpatient_clinic"]
# (name, type index, city index, staffed beds)
FACILITIES: list[tuple[str, int, int, int]] = [
    ("Columbus General Hospital", 0, 0, 612), ("Cincinnati Riverside Medical Center", 0, 3, 448),
    ("Indianapolis Methodist Hospital", 0, 10, 530), ("Detroit Lakeshore Hospital", 0, 7, 386),
    ("Toledo Mercy Hospital", 0, 2, 254), ("Lima Memorial Critical Access Hospital", 1, 5, 25),
    ("Columbus Northside Primary Care Clinic", 2, 0, 0), ("Dayton Family Health Clinic", 2, 1, 0),
    ("Akron Community Health Clinic", 2, 4, 0), ("Ann Arbor Internal Medicine Clinic", 2, 6, 0),
    ("Fort Wayne Primary Care Clinic", 2, 9, 0), ("South Bend Urgent and Primary Care", 2, 11, 0),
]
PAYER_TYPES = ["medicare", "medicaid", "commercial", "self_pay"]
# (payer_id, name, type index)
PAYERS: list[tuple[str, str, int]] = [
    ("PAY01", "Medicare Fee-for-Service", 0), ("PAY02", "Lakeshore Medicare Advantage", 0),
    ("PAY03", "State Medicaid", 1), ("PAY04", "Great Lakes Medicaid Managed Care", 1),
    ("PAY05", "Lakeshore Health Plan PPO", 2), ("PAY06", "Midwest Mutual HMO", 2),
    ("PAY07", "Keystone Employers Health", 2), ("PAY08", "Self-pay", 3),
]
SPECIALTIES = ["Internal Medicine", "Family Medicine", "Emergency Medicine", "Cardiology",
               "Pulmonology", "Endocrinology", "Nephrology", "Hospitalist", "General Surgery",
               "Orthopedic Surgery", "Pediatrics", "Psychiatry"]
# specialty weights at hospitals vs clinics
SPECIALTY_P_HOSPITAL = np.array([8, 3, 8, 4, 3, 2, 2, 8, 4, 3, 2, 2], float)
SPECIALTY_P_CLINIC = np.array([10, 12, 0, 2, 1, 2, 1, 0, 0, 1, 5, 2], float)

CLASSES = ["inpatient", "emergency", "outpatient", "ambulatory", "wellness", "urgent_care"]
INP, EMER, OUTP, AMB, WELL, URG = range(6)
ADMISSION_TYPES = ["emergency", "urgent", "elective"]
ADMISSION_SOURCES = ["emergency_room", "physician_referral", "clinic_referral",
                     "transfer_from_hospital", "transfer_from_snf", "self_referral"]
DISPOSITIONS = ["home", "snf", "home_health", "rehab", "transfer", "ama", "hospice", "expired"]
EXPIRED = DISPOSITIONS.index("expired")
CLAIM_STATUSES = ["paid", "denied", "pending"]
DENIAL_REASONS = ["CO-16", "CO-50", "CO-97", "CO-29", "CO-197", "PR-27"]

# Chronic condition groups: prevalence by age band (<18, 18-44, 45-64, 65+).
CONDITIONS = ["diabetes", "hypertension", "heart_failure", "copd", "asthma", "ckd",
              "depression", "hyperlipidemia", "atrial_fibrillation", "ischemic_heart_disease"]
PREVALENCE = np.array([
    [0.004, 0.05, 0.16, 0.24],   # diabetes
    [0.01, 0.12, 0.40, 0.62],    # hypertension
    [0.0, 0.005, 0.03, 0.12],    # heart_failure
    [0.0, 0.01, 0.06, 0.11],     # copd
    [0.09, 0.08, 0.08, 0.07],    # asthma
    [0.0, 0.01, 0.06, 0.18],     # ckd
    [0.03, 0.09, 0.09, 0.07],    # depression
    [0.005, 0.08, 0.28, 0.45],   # hyperlipidemia
    [0.0, 0.002, 0.02, 0.10],    # atrial_fibrillation
    [0.0, 0.005, 0.05, 0.15],    # ischemic_heart_disease
])

# Acute primary diagnoses by encounter class (codes from the ICD-10-CM table).
ACUTE_DX = {
    INP: ["A41.9", "J18.9", "N39.0", "I21.4", "I63.9", "J96.01", "N17.9", "K92.2", "S72.001A",
          "K35.80", "E86.0", "K80.20"],
    EMER: ["R07.9", "R10.9", "R55", "R51.9", "S93.401A", "S52.501A", "S01.81XA", "N39.0",
           "J06.9", "R50.9", "E86.0"],
    OUTP: ["M17.11", "K80.20", "K21.9", "M54.50"],
    AMB: ["J06.9", "M54.50", "K21.9", "J02.9", "H66.90", "N39.0", "R51.9"],
    WELL: ["Z00.00", "Z00.01", "Z23"],
    URG: ["J06.9", "J02.9", "H66.90", "S93.401A", "S01.81XA", "N39.0", "R50.9"],
}
# Chronic exacerbations that put a chronic patient in hospital, by condition group.
EXACERBATION_DX = {"diabetes": "E11.65", "heart_failure": "I50.9", "copd": "J44.1",
                   "ckd": "N18.4"}

# Lab tests: (loinc, decimals, normal mean, normal sd, {condition: (mean, sd)}).
LABS: list[tuple[str, int, float, float, dict[str, tuple[float, float]]]] = [
    ("4548-4", 1, 5.3, 0.35, {"diabetes": (7.8, 1.4)}),
    ("2345-7", 0, 92.0, 12.0, {"diabetes": (165.0, 45.0)}),
    ("2160-0", 2, 0.95, 0.18, {"ckd": (2.2, 0.7)}),
    ("3094-0", 0, 14.0, 4.0, {"ckd": (34.0, 10.0)}),
    ("2951-2", 0, 139.5, 2.5, {"heart_failure": (134.0, 4.0)}),
    ("2823-3", 1, 4.2, 0.35, {"ckd": (5.1, 0.5)}),
    ("718-7", 1, 13.8, 1.4, {"ckd": (10.8, 1.3)}),
    ("6690-2", 1, 7.4, 1.9, {}),
    ("777-3", 0, 260.0, 55.0, {}),
    ("2093-3", 0, 188.0, 32.0, {"hyperlipidemia": (238.0, 35.0)}),
    ("2571-8", 0, 125.0, 45.0, {"diabetes": (195.0, 70.0)}),
    ("2085-9", 0, 54.0, 12.0, {"diabetes": (41.0, 9.0)}),
    ("18262-6", 0, 108.0, 28.0, {"hyperlipidemia": (152.0, 30.0)}),
    ("33762-6", 0, 70.0, 40.0, {"heart_failure": (2400.0, 1500.0)}),
    ("10839-9", 2, 0.01, 0.01, {"ischemic_heart_disease": (0.05, 0.08)}),
    ("2524-7", 1, 1.2, 0.4, {}),
    ("1742-6", 0, 26.0, 9.0, {}),
    ("1988-5", 1, 3.0, 2.5, {}),
]
GLUCOSE = "2345-7"
# Which labs each encounter class orders (relative weights by LABS index).
LAB_WEIGHTS = {
    INP: [1, 6, 6, 5, 6, 6, 6, 6, 4, 0, 0, 0, 0, 2, 2, 2, 2, 3],
    EMER: [0, 5, 4, 3, 4, 4, 4, 5, 3, 0, 0, 0, 0, 1, 3, 2, 1, 2],
    OUTP: [1, 2, 2, 1, 2, 2, 3, 3, 2, 1, 1, 1, 1, 0, 0, 0, 1, 1],
    AMB: [2, 3, 2, 1, 2, 2, 2, 2, 1, 2, 2, 2, 2, 0, 0, 0, 1, 1],
    WELL: [2, 3, 1, 1, 1, 1, 2, 2, 1, 4, 4, 4, 4, 0, 0, 0, 1, 0],
    URG: [0, 2, 1, 0, 1, 1, 2, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3],
}
LAB_CPT = {"4548-4": "83036", "2345-7": "82947", "2093-3": "80061", "2571-8": "80061",
           "2085-9": "80061", "18262-6": "80061", "718-7": "85025", "6690-2": "85025",
           "777-3": "85025"}

# Claim lines by class: E&M code (by acuity) and the ancillary services billed with it.
EM_CODES = {INP: ["99221", "99223"], EMER: ["99283", "99284", "99285"], OUTP: ["99213", "99214"],
            AMB: ["99213", "99214", "99203"], WELL: ["99396", "99397", "99393"],
            URG: ["99213", "99214"]}
ANCILLARY = {INP: ["80053", "85025", "71046", "93000", "70450", "74177", "J2405", "96372",
                   "99291", "A0427"],
             EMER: ["80048", "85025", "71046", "93000", "70450", "74177", "J2405", "J1885",
                    "96372", "A0427"],
             OUTP: ["80053", "85025", "71046", "36415", "96372"],
             AMB: ["36415", "80048", "83036", "80061", "90471", "87880"],
             WELL: ["36415", "80061", "83036", "90471"],
             URG: ["87880", "71046", "J1885", "96372", "90471"]}


@dataclass
class World:
    """Everything simulated, before it is written as files (arrays of clean records)."""

    start_day: int
    days: int
    facilities: dict
    providers: dict
    patients: dict          # one element per patient (current attributes + history arrays;
                            # "street" indexes "street_pool", "ssn" is the 9-digit number)
    changes: dict           # patient change records (INSERT/UPDATE/DELETE)
    encounters: dict
    labs: dict
    meds: dict
    claims: dict
    #: text of category indices in the parts: "primary" (encounters' "primary" diagnosis
    #: index), "secondary" (their "secondary" diagnoses' bit set)
    labels: dict = field(default_factory=dict)


def lexsort(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """``np.lexsort(keys)`` (last key primary, stable) of integer or boolean keys, as one stable
    argsort of a combined int64 key when their ranges fit (about 1.5x faster); else lexsort."""
    keys = tuple(np.asarray(k) for k in keys)
    if not keys or len(keys[0]) == 0:
        return np.lexsort(keys) if keys else np.zeros(0, dtype=np.int64)
    lows = [int(k.min()) for k in keys]
    spans = [int(k.max()) - low + 1 for k, low in zip(keys, lows)]
    if np.prod([float(x) for x in spans]) >= 2.0**62:
        return np.lexsort(keys)
    combined = np.zeros(len(keys[0]), dtype=np.int64)
    for k, low, span in zip(reversed(keys), reversed(lows), reversed(spans)):
        combined *= span
        combined += k.astype(np.int64) - low
    # a stable argsort (timsort) finds the runs that are already in order: the sources' rows
    # come nearly sorted (1.5M lab rows: 14 ms, where a quicksort of unique packed keys took
    # 119 ms)
    return np.argsort(combined, kind="stable")


# ----------------------------------------------------------------------------------------------
def npi_check_digit(base9: np.ndarray) -> np.ndarray:
    """Luhn check digit of 9-digit NPI bases, computed over the prefix 80840 + base (CMS)."""
    base9 = np.asarray(base9, dtype=np.int64)
    digits = np.stack([(base9 // 10 ** (8 - i)) % 10 for i in range(9)], axis=1)
    # Positions from the right of the 15-digit number 80840+base+check: the check digit is
    # position 1, so the base's last digit is position 2 (doubled), alternating leftwards.
    doubled = digits[:, 8::-2] * 2
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    total = 24 + doubled.sum(axis=1) + digits[:, 7::-2].sum(axis=1)  # 24 = prefix 80840's share
    return (10 - total % 10) % 10


def npi_numbers(base9: np.ndarray) -> np.ndarray:
    """10-digit NPIs (as integers) from 9-digit bases."""
    base9 = np.asarray(base9, dtype=np.int64)
    return base9 * 10 + npi_check_digit(base9)


def npi_is_valid(npi: str) -> bool:
    """Scalar Luhn check of a 10-digit NPI with the 80840 prefix (for tests and notebooks)."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    digits = [int(c) for c in "80840" + npi]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return total % 10 == 0


def _cumulative(probs: np.ndarray) -> np.ndarray:
    """Cumulative probabilities of each row of ``probs`` (rows normalized to sum to one)."""
    probs = np.asarray(probs, dtype=float)
    return np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)


#: Rows of uniforms drawn at a time by ``_draw_in_chunks``: 64k x 10 doubles (5 MB) stay in
#: the cache, where one m x 10 array (80 MB at 1M encounters) is fresh memory to fault in.
DRAW_CHUNK_ROWS = 1 << 16


def _draw_in_chunks(rng: np.random.Generator, n: int, width: int,
                    use: Callable[[np.ndarray, slice], np.ndarray],
                    dtype: type = bool) -> np.ndarray:
    """``use(rng.random((n, width)), slice(0, n))`` computed chunk by chunk of rows.

    The uniforms are the same numbers in the same order as one big draw (the generator
    fills arrays in row-major order), only never all in memory: ``use(u, rows)`` maps the
    chunk ``u`` of rows ``rows`` to one value per row (or a row of ``width`` values)."""
    out: np.ndarray | None = None
    buffer = np.empty((min(n, DRAW_CHUNK_ROWS), width))
    for lo in range(0, n, DRAW_CHUNK_ROWS) if n else [0]:
        rows = slice(lo, min(lo + DRAW_CHUNK_ROWS, n))
        u = buffer[:rows.stop - lo]
        rng.random(out=u)
        part = use(u, rows)
        if out is None:
            out = np.empty((n, *part.shape[1:]), dtype=dtype)
        out[rows] = part
    return out


def _pick_condition(u: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Per row the column of the largest ``u`` among the columns ``has`` marks (-1: none),
    as ``argmax(u * has)`` picks it (first column on ties)."""
    u *= has
    best = u.argmax(axis=1)
    return np.where(u[np.arange(len(u)), best] > 0, best, -1)


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category index per row from row-specific probability vectors (rows of ``probs``)."""
    cum = _cumulative(probs)
    u = rng.random(len(cum))[:, None]
    return np.minimum((u > cum).sum(axis=1), cum.shape[1] - 1)


def _categorical_by_group(rng: np.random.Generator, table: np.ndarray,
                          group: np.ndarray) -> np.ndarray:
    """``_categorical(rng, table[group])`` -- the same draw and the same categories -- without
    building rows x categories matrices: rows sharing a probability vector are looked up with
    a binary search in its cumulative row (the count of cumulative values below ``u``)."""
    cum = _cumulative(table)
    u = rng.random(len(group))
    out = np.zeros(len(group), dtype=np.int64)
    for g in range(len(cum)):
        sel = group == g
        out[sel] = np.searchsorted(cum[g], u[sel], side="left")
    return np.minimum(out, cum.shape[1] - 1)


class NamePools:
    """Identity vocabularies from Faker's en_US providers, sampled with numpy.

    Faker's own frequency-weighted name lists are read once; drawing millions of names is
    then a weighted ``rng.choice`` instead of millions of Faker calls (same realism, seeded by
    the generator's numpy stream, so the output depends on the seed alone).
    """

    def __init__(self):
        from faker.providers.address.en_US import Provider as Address
        from faker.providers.person.en_US import Provider as Person

        def weighted(names) -> tuple[np.ndarray, np.ndarray]:
            if isinstance(names, dict):
                keys = np.array(list(names), dtype=object)
                weights = np.array(list(names.values()), dtype=float)
            else:
                keys = np.array(sorted(set(names)), dtype=object)
                weights = np.ones(len(keys))
            return keys, weights / weights.sum()

        self.pools = {
            "first_f": weighted(Person.first_names_female),
            "first_m": weighted(Person.first_names_male),
            "first_u": weighted(Person.first_names_nonbinary),
            "last": weighted(Person.last_names),
            "suffix": weighted(Address.street_suffixes),
        }

    def draw(self, rng: np.random.Generator, pool: str, size) -> np.ndarray:
        names, weights = self.pools[pool]
        return names[rng.choice(len(names), size=size, p=weights)]

    def streets(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Street names like Faker's ``street_name()``: '<last name> <suffix>'."""
        return (self.draw(rng, "last", size).astype(str).astype(object) + " "
                + self.draw(rng, "suffix", size).astype(str).astype(object))


# ----------------------------------------------------------------------------------------------
#: Average occupancy the staffed beds are sized for (US acute care runs at about 65-80 %).
TARGET_OCCUPANCY = 0.75


def staffed_beds(encounters: dict[str, np.ndarray], n_fac: int, fac_type: np.ndarray,
                 start_day: int, days: int) -> np.ndarray:
    """Staffed beds per facility, sized to the simulated population's midnight census.

    A real 600-bed hospital serves far more people than a few thousand simulated patients, so
    fixed bed counts would show ~1 % occupancy. Each hospital gets the beds its own simulated
    census needs at TARGET_OCCUPANCY on average (and at least its peak census, so occupancy
    stays at or under 100 %); clinics have none. A stay is in the census at midnight ``d`` when
    admitted before it and discharged after it, as gold counts it.
    """
    inpatient = encounters["cls"] == INP
    first_midnight = encounters["admit"][inpatient] // DAY + 1 - start_day
    last_midnight = (encounters["disch"][inpatient] - 1) // DAY - start_day
    fac = encounters["fac"][inpatient]
    census = np.zeros((n_fac, days + 2), dtype=np.int64)          # midnights 1..days
    lo = np.clip(first_midnight, 1, days + 1)
    hi = np.clip(last_midnight + 1, 1, days + 1)
    keep = hi > lo
    np.add.at(census, (fac[keep], lo[keep]), 1)
    np.add.at(census, (fac[keep], hi[keep]), -1)
    census = np.cumsum(census, axis=1)[:, 1:days + 1]
    beds = np.ceil(np.maximum(census.mean(axis=1) / TARGET_OCCUPANCY, census.max(axis=1)))
    return np.where(fac_type < 2, np.maximum(beds, 2), 0).astype(np.int64)


#: Called with a stage name ("encounters", "labs", "meds", "claims", "changes") and the world as
#: soon as that part of it is final: a caller can write it while the rest is simulated.
Ready = Callable[[str, "World"], None]


def simulate(patients: int, days: int, seed: int, start_date: date,
             readmission_rate: float = 0.12, ready: Ready | None = None) -> World:
    """Simulate the health system's records for ``days`` from ``start_date``.

    ``ready(stage, world)`` is called as each part becomes final (encounters, then labs,
    medications, claims and at last patient changes with the patients), so the writing of
    the first sources overlaps the simulation of the others. The parts filled in later are
    empty dicts until then; the random draws are the same with or without ``ready``.
    """
    rng = np.random.default_rng(seed)
    notify: Ready = ready or (lambda stage, world: None)
    start_day = int((np.datetime64(start_date, "D") - np.datetime64("1970-01-01", "D")).astype(int))
    t0 = start_day * DAY
    t_end = (start_day + days) * DAY
    names = NamePools()
    street_pool = names.streets(rng, 800)

    # --- reference: facilities, providers ---------------------------------------------------
    n_fac = len(FACILITIES)
    fac_type = np.array([f[1] for f in FACILITIES])
    fac_city = np.array([f[2] for f in FACILITIES])
    facilities = {
        "facility_id": np.array([f"FAC{i + 1:03d}" for i in range(n_fac)], dtype=object),
        "facility_name": np.array([f[0] for f in FACILITIES], dtype=object),
        "facility_type": np.array([FACILITY_TYPES[t] for t in fac_type], dtype=object),
        "city": np.array([CITIES[c][0] for c in fac_city], dtype=object),
        "state": np.array([CITIES[c][1] for c in fac_city], dtype=object),
        "staffed_beds": np.array([f[3] for f in FACILITIES]),
    }
    n_prov = int(np.clip(patients // 40, 24, 5000))
    is_hosp = fac_type < 2
    fac_weight = np.where(is_hosp, np.maximum(np.array([f[3] for f in FACILITIES]), 60), 30.0)
    prov_fac = rng.choice(n_fac, size=n_prov, p=fac_weight / fac_weight.sum())
    prov_fac[:n_fac] = np.arange(n_fac)            # every facility has at least one provider
    prov_fac.sort(kind="stable")
    spec_p = np.where(is_hosp[prov_fac][:, None], SPECIALTY_P_HOSPITAL, SPECIALTY_P_CLINIC)
    prov_spec = _categorical(rng, spec_p)
    # NPIs start with 1 or 2 (CMS); the 9-digit base is random, the 10th digit its Luhn check
    bases = 100_000_000 + rng.choice(200_000_000, size=n_prov, replace=False)
    providers = {
        "npi": npi_numbers(bases).astype(str).astype(object),
        "first_name": np.where(rng.random(n_prov) < 0.5, names.draw(rng, "first_f", n_prov),
                               names.draw(rng, "first_m", n_prov)),
        "last_name": names.draw(rng, "last", n_prov),
        "specialty": np.array(SPECIALTIES, dtype=object)[prov_spec],
        "facility_idx": prov_fac,
    }
    fac_prov_start = np.searchsorted(prov_fac, np.arange(n_fac))
    fac_prov_count = np.bincount(prov_fac, minlength=n_fac)
    world = World(start_day=start_day, days=days, facilities=facilities, providers=providers,
                  patients={}, changes={}, encounters={}, labs={}, meds={}, claims={})

    # --- patients ---------------------------------------------------------------------------
    n = patients
    sex = rng.choice(3, size=n, p=[0.51, 0.487, 0.003])                      # F, M, U
    band = rng.choice(5, size=n, p=[0.14, 0.27, 0.29, 0.24, 0.06])
    lo = np.array([0, 18, 45, 65, 85])[band]
    hi = np.array([18, 45, 65, 85, 101])[band]
    age = lo + rng.random(n) * (hi - lo)
    birth_day = (start_day - np.floor(age * 365.25)).astype(np.int64)
    age_band = np.digitize(age, [18, 45, 65])                                  # 0..3
    cond = _draw_in_chunks(rng, n, len(CONDITIONS),
                           lambda u, rows: u < PREVALENCE.T[age_band[rows]])
    n_chronic = cond.sum(axis=1)
    city_w = np.array([c[4] for c in CITIES])
    city = rng.choice(len(CITIES), size=n, p=city_w / city_w.sum())
    first_name = np.empty(n, dtype=object)
    for s, pool in enumerate(("first_f", "first_m", "first_u")):
        sel = sex == s
        first_name[sel] = names.draw(rng, pool, int(sel.sum()))
    last_name = names.draw(rng, "last", n)
    payer_type_p = np.array([[0.00, 0.40, 0.57, 0.03], [0.03, 0.20, 0.66, 0.11],
                             [0.06, 0.14, 0.73, 0.07], [0.90, 0.05, 0.04, 0.01]])
    payer0 = _payer_for(rng, payer_type_p, age_band)
    home_phone = rng.integers(2_000_000, 10_000_000, n)     # exchange 200-999 + line
    # SSN as its 9 digits (area 900-999: never issued; group 01-99; serial 0001-9999),
    # formatted AAA-GG-SSSS when written
    ssn_area = rng.integers(900, 1000, n)
    ssn_group = rng.integers(1, 100, n)
    ssn = ssn_area * 1_000_000 + ssn_group * 10_000 + rng.integers(1, 10_000, n)

    # --- encounters: Poisson counts per patient and class -----------------------------------
    years = days / 365.0
    old = (age >= 75).astype(float)
    child = (age < 18).astype(float)
    rate = np.stack([
        0.12 + 0.22 * n_chronic + 0.30 * old,                       # inpatient (per year)
        0.55 + 0.25 * n_chronic + 0.3 * old + 0.2 * child,          # emergency
        0.90 + 0.45 * n_chronic,                                     # outpatient
        2.80 + 1.60 * n_chronic + 0.8 * child,                       # ambulatory
        np.full(n, 1.0),                                             # wellness
        0.80 + 0.4 * child,                                          # urgent care
    ], axis=1)
    counts = rng.poisson(rate * years)
    enc_pat = np.repeat(np.repeat(np.arange(n), 6), counts.ravel())
    enc_cls = np.repeat(np.tile(np.arange(6), n), counts.ravel())
    m = len(enc_pat)
    admit_day = start_day + rng.integers(0, days, m)
    # clinic visits happen on weekdays: move Saturday/Sunday ones to Friday or Monday
    weekday = (admit_day + 3) % 7                                    # 0 = Monday
    clinic = np.isin(enc_cls, [OUTP, AMB, WELL])
    shift = np.where(weekday == 5, -1, np.where(weekday == 6, 1, 0)) * clinic
    admit_day = np.clip(admit_day + shift, start_day, start_day + days - 1)
    hour_p = {
        INP: np.r_[np.full(6, 1.0), np.full(6, 3.0), np.full(6, 4.0), np.full(6, 2.0)],
        EMER: np.r_[np.full(6, 1.0), np.full(6, 3.0), np.full(6, 4.0), np.full(6, 3.0)],
        URG: np.r_[np.zeros(8), np.full(12, 3.0), np.zeros(4)],
    }
    clinic_hours = np.r_[np.zeros(8), np.full(9, 3.0), np.zeros(7)]
    hour = np.zeros(m, dtype=np.int64)
    u_hour = rng.random(m)
    for c in range(6):
        p = hour_p.get(c, clinic_hours)
        sel = enc_cls == c
        hour[sel] = np.searchsorted(np.cumsum(p / p.sum()), u_hour[sel], side="right")
    hour = np.minimum(hour, 23)
    admit_ts = admit_day * DAY + hour * HOUR + rng.integers(0, 60, m) * MINUTE
    log_median_h = np.log(np.array([4.1 * 24, 4.5, 2.5, 0.5, 0.75, 1.2]))[enc_cls]
    sigma = np.array([0.75, 0.5, 0.4, 0.3, 0.25, 0.4])[enc_cls]
    dur_h = np.exp(log_median_h + sigma * rng.standard_normal(m))
    dur_h = np.where(enc_cls == INP, np.clip(dur_h, 6, 45 * 24), np.clip(dur_h, 0.25, 20))
    disch_ts = admit_ts + (dur_h * HOUR).astype(np.int64) // MINUTE * MINUTE

    # --- readmissions: extra inpatient stays after inpatient discharges ----------------------
    enc = {"pat": enc_pat, "cls": enc_cls, "admit": admit_ts, "disch": disch_ts}
    enc["disp"] = _dispositions(rng, enc["cls"], age[enc["pat"]])
    # Stays that already happen within 30 days by chance count too; the planted extra rate is
    # set so the overall rate lands near the target, chronic patients weighted up.
    frail = 1.0 + 0.6 * n_chronic
    inp_pat = enc_pat[enc_cls == INP]
    if len(inp_pat):
        frail_mean = frail[inp_pat].mean()
        # chance that another stay falls within 30 days anyway (the Poisson process alone)
        natural = (1 - np.exp(-rate[inp_pat, INP] * 30 / 365)).mean()
    else:
        frail_mean, natural = 1.0, 0.0
    base_p = max(readmission_rate - natural, 0.0) / max(1 - natural, 1e-9) / frail_mean
    del rate, counts                                   # patients x 6: not needed any more
    parents = np.flatnonzero((enc["cls"] == INP) & ~np.isin(enc["disp"], [EXPIRED, 4, 6]))
    for _ in range(2):
        p = np.clip(base_p * frail[enc["pat"][parents]], 0, 0.9)
        parents = parents[rng.random(len(parents)) < p]
        gap = np.minimum(rng.exponential(9.0, len(parents)), 29.5)
        new_admit = enc["disch"][parents] + (gap * DAY).astype(np.int64) // MINUTE * MINUTE
        ok = new_admit < t_end
        parents, new_admit = parents[ok], new_admit[ok]
        k = len(parents)
        los_h = np.clip(np.exp(np.log(4.2 * 24) + 0.75 * rng.standard_normal(k)), 6, 45 * 24)
        child_enc = {"pat": enc["pat"][parents], "cls": np.full(k, INP), "admit": new_admit,
                     "disch": new_admit + (los_h * HOUR).astype(np.int64) // MINUTE * MINUTE}
        child_enc["disp"] = _dispositions(rng, child_enc["cls"], age[child_enc["pat"]])
        start_idx = len(enc["pat"])
        enc = {key: np.concatenate([enc[key], child_enc[key]]) for key in enc}
        parents = start_idx + np.flatnonzero(~np.isin(child_enc["disp"], [EXPIRED, 4, 6]))

    # The patient change records' draws need nothing simulated from here on: a thread makes
    # them (the same calls in the same order on the same generator, which nothing else uses
    # meanwhile) while this one makes the encounters consistent, which draws nothing.
    change_draws = Future()
    threading.Thread(target=run_into, name="simulate-draws", daemon=True, args=(
        change_draws, _patient_change_draws, rng, n, days, len(street_pool),
        city_w / city_w.sum(), payer_type_p, age_band)).start()

    # --- consistency: nothing after death, nothing during an inpatient stay ------------------
    order = lexsort((enc["cls"] != INP, enc["admit"], enc["pat"]))
    enc = {key: v[order] for key, v in enc.items()}
    keep = _drop_overlaps(enc)
    enc = {key: v[keep] for key, v in enc.items()}
    death = np.full(n, np.iinfo(np.int64).max)
    died = enc["disp"] == EXPIRED
    np.minimum.at(death, enc["pat"][died], enc["disch"][died])
    keep = enc["admit"] < death[enc["pat"]]
    # extracted once completed: only stays discharged inside the window are delivered
    keep &= enc["disch"] < t_end
    enc = {key: v[keep] for key, v in enc.items()}
    order = lexsort((enc["pat"], enc["admit"]))
    enc = {key: v[order] for key, v in enc.items()}
    m = len(enc["pat"])
    pat, cls = enc["pat"], enc["cls"]

    # --- patient change records: INSERT, UPDATEs (address / payer / phone), DELETE ----------
    first_admit = np.full(n, t_end)
    np.minimum.at(first_admit, pat, enc["admit"])
    has_enc = first_admit < t_end
    draws = change_draws.result()
    # the encounters' own attributes draw next: a thread simulates them (the generator is its
    # alone from here until the thread is done) while this one builds the patient versions,
    # which draw nothing
    attributes = Future()
    threading.Thread(target=run_into, name="simulate-encounters", daemon=True, args=(
        attributes, _encounter_attributes, rng, enc, cond, city, birth_day, is_hosp, fac_city,
        fac_prov_start, fac_prov_count)).start()
    insert_ts = np.where(has_enc, first_admit - draws["insert_lead"] * MINUTE,
                         t0 + (draws["insert_u"] * (t_end - t0 - HOUR)).astype(np.int64))
    insert_ts = np.maximum(insert_ts, t0 + draws["insert_floor"] * MINUTE)
    insert_ts = np.minimum(insert_ts, np.where(has_enc, first_admit - MINUTE, t_end - MINUTE))
    insert_ts = np.maximum(insert_ts, t0)

    n_upd = np.minimum(draws["n_upd"], 2)
    u = np.sort(draws["upd_u"], axis=1)
    upd_ts = insert_ts[:, None] + (u * (t_end - insert_ts)[:, None]).astype(np.int64)
    upd_ts = upd_ts // MINUTE * MINUTE + draws["upd_second"]
    upd_kind = draws["upd_kind"]                                           # address/payer/phone
    upd_valid = np.arange(2)[None, :] < n_upd[:, None]
    upd_valid &= upd_ts > insert_ts[:, None]
    upd_valid &= upd_ts < t_end
    upd_valid[:, 1] &= upd_valid[:, 0]        # a second change only after a first one
    # state per version (0 = insert, 1 = after first update, 2 = after second)
    street_no, street, zip2 = draws["street_no"], draws["street"], draws["zip2"]
    moved_city = np.where(draws["moves"], draws["new_city"], city[:, None])
    new_payer = np.stack([payer0, draws["payer_1"], draws["payer_2"]], axis=1)
    new_phone = draws["new_phone"]
    # the version arrays are the draws themselves, carried forward in place where a version
    # did not change (only the payer draws are compared again below, so only they are copied)
    v_street_no, v_street, v_zip2, v_city = street_no, street, zip2, moved_city
    v_payer, v_phone = new_payer.copy(), new_phone
    v_city[:, 0] = city
    v_phone[:, 0] = home_phone
    for j in (1, 2):
        changed = upd_valid[:, j - 1]
        kind = upd_kind[:, j - 1]
        addr = changed & (kind == 0)
        pay = changed & (kind == 1) & (new_payer[:, j] != new_payer[:, j - 1])
        phone = changed & (kind == 2)
        # a payer "change" to the same payer becomes an address correction (still a change)
        addr |= changed & (kind == 1) & ~pay
        for arr in (v_street_no, v_street, v_zip2, v_city):
            arr[:, j] = np.where(addr, arr[:, j], arr[:, j - 1])
        v_payer[:, j] = np.where(pay, v_payer[:, j], v_payer[:, j - 1])
        v_phone[:, j] = np.where(phone, v_phone[:, j], v_phone[:, j - 1])

    # encounter payer: the patient's payer as of admission (an SCD2 as-of lookup)
    version = ((upd_valid[pat, 0] & (upd_ts[pat, 0] <= enc["admit"])).astype(int)
               + (upd_valid[pat, 1] & (upd_ts[pat, 1] <= enc["admit"])).astype(int))
    enc_payer = v_payer[pat, version]

    encounters = {"pat": pat, "cls": cls, "admit": enc["admit"], "disch": enc["disch"],
                  "disp": enc["disp"], "payer": enc_payer, **attributes.result()}
    world.labels = encounters.pop("labels")

    facilities["staffed_beds"] = staffed_beds(encounters, n_fac, fac_type, start_day, days)
    world.encounters = encounters
    notify("encounters", world)

    world.labs = _labs(rng, encounters, cond)
    notify("labs", world)
    world.meds = _meds(rng, encounters, cond)
    notify("meds", world)
    claims = world.claims = _claims(rng, encounters, t_end)
    notify("claims", world)

    # DELETE: a few patients whose record is retired after their last activity (merged charts)
    last = insert_ts.copy()
    np.maximum.at(last, pat, enc["disch"])
    if len(claims["adjudicated"]):
        np.maximum.at(last, pat[claims["enc"]], claims["adjudicated"] * DAY + DAY - 1)
    last = np.maximum(last, np.where(upd_valid, upd_ts, 0).max(axis=1))
    deletable = (t_end - last) > 2 * DAY
    delete = deletable & (rng.random(n) < 0.004 * min(days / 30, 3))
    delete_ts = last + DAY + (rng.random(n) * np.maximum(t_end - last - 2 * DAY, 0)).astype(
        np.int64)

    world.changes = _change_records(n, insert_ts, upd_ts, upd_valid, delete, delete_ts)
    world.patients = {
        "sex": sex, "birth_day": birth_day, "first_name": first_name, "last_name": last_name,
        "street_no": v_street_no, "street": v_street, "street_pool": street_pool, "zip2": v_zip2,
        "city": v_city, "payer": v_payer, "phone": v_phone, "ssn": ssn, "cond": cond,
        "age": age, "n_chronic": n_chronic, "insert_ts": insert_ts,
    }
    notify("changes", world)
    return world


# ----------------------------------------------------------------------------------------------
def _encounter_attributes(rng: np.random.Generator, enc: dict[str, np.ndarray],
                          cond: np.ndarray, city: np.ndarray, birth_day: np.ndarray,
                          is_hosp: np.ndarray, fac_city: np.ndarray, fac_prov_start: np.ndarray,
                          fac_prov_count: np.ndarray) -> dict[str, Any]:
    """What happened at each (consistent) encounter: facility and provider, admission type and
    source, primary and secondary diagnoses, age, total charge and DRG, plus the diagnosis
    ``labels``. The draws come in the order ``simulate`` has always made them."""
    pat, cls = enc["pat"], enc["cls"]
    m = len(pat)
    age_at = (enc["admit"] // DAY - birth_day[pat]) / 365.25
    hosp_fac = np.flatnonzero(is_hosp)
    clinic_fac = np.flatnonzero(~is_hosp)
    # patients go to the facility of their city when there is one, else the nearest big one
    city_hosp = np.array([next((i for i in hosp_fac if fac_city[i] == c), hosp_fac[c % 5])
                          for c in range(len(CITIES))])
    city_clinic = np.array([next((i for i in clinic_fac if fac_city[i] == c),
                                 clinic_fac[c % len(clinic_fac)]) for c in range(len(CITIES))])
    home = city[pat]
    at_hospital = np.isin(cls, [INP, EMER, OUTP]) | (rng.random(m) < 0.25)
    other = rng.random(m) < 0.12                       # some care elsewhere in the system
    fac = np.where(at_hospital, city_hosp[home], city_clinic[home])
    fac = np.where(other & at_hospital, hosp_fac[rng.integers(0, len(hosp_fac), m)], fac)
    fac = np.where(other & ~at_hospital, clinic_fac[rng.integers(0, len(clinic_fac), m)], fac)
    prov = fac_prov_start[fac] + (rng.random(m) * fac_prov_count[fac]).astype(int)

    adm_type = np.select([cls == INP, cls == EMER, cls == URG], [
        rng.choice(3, size=m, p=[0.62, 0.14, 0.24]), np.zeros(m, int),
        np.ones(m, int)], 2)
    adm_src = np.select(
        [(cls == INP) & (adm_type == 0), cls == INP, cls == EMER, cls == URG],
        [np.where(rng.random(m) < 0.9, 0, 3), rng.choice(6, size=m, p=[0.0, 0.45, 0.25, 0.15, 0.10, 0.05]),
         np.where(rng.random(m) < 0.85, 5, 1), np.full(m, 5)],
        rng.choice(6, size=m, p=[0, 0.55, 0.25, 0, 0, 0.2]))

    # diagnoses: chronic patients are seen for their conditions
    # a uniform per (encounter, condition the patient has): the largest picks the condition
    picked = _draw_in_chunks(rng, m, len(CONDITIONS), lambda u, rows: _pick_condition(
        u, cond[pat[rows]]), dtype=np.int64)
    some_cond, cond_of_enc = picked >= 0, np.maximum(picked, 0)
    chronic_codes = _condition_codes()
    acute_idx = (rng.random(m) * np.array([len(ACUTE_DX[c]) for c in range(6)])[cls]).astype(int)
    # diagnoses are indices into DX codes (compared as integers, written as category labels)
    main_code = [c[0] for c in chronic_codes]
    exac = [EXACERBATION_DX.get(g, c[0]) for g, c in zip(CONDITIONS, chronic_codes)]
    dx_codes = list(dict.fromkeys([*(x for c in range(6) for x in ACUTE_DX[c]), "Z00.129",
                                   *exac, *main_code]))
    dx_index = {code: i for i, code in enumerate(dx_codes)}
    acute_tbl = np.array([[dx_index[x] for x in ACUTE_DX[c]] + [0] * (20 - len(ACUTE_DX[c]))
                          for c in range(6)])
    primary = acute_tbl[cls, acute_idx]
    wellness_child = (cls == WELL) & (age_at < 18)
    primary = np.where(wellness_child, dx_index["Z00.129"], primary)
    chronic_primary = some_cond & (cls != WELL) & (rng.random(m) < np.where(cls == INP, 0.35, 0.5))
    main_idx = np.array([dx_index[x] for x in main_code], dtype=np.int64)
    exac_idx = np.array([dx_index[x] for x in exac], dtype=np.int64)
    primary = np.where(chronic_primary, np.where(cls == INP, exac_idx[cond_of_enc],
                                                 main_idx[cond_of_enc]), primary)
    # secondary diagnoses: the patient's chronic conditions (the encounter's own primary aside)
    secondary_labels, secondary = _secondary_dx(cond, pat, main_code, main_idx, primary, rng)

    # charges (USD): long-tailed, inpatient by length of stay
    los_days = (enc["disch"] - enc["admit"]) / DAY
    base = np.array([0, 2600, 1400, 190, 260, 210], float)[cls]
    per_day = np.where(cls == INP, 2900.0 * np.maximum(los_days, 1) + 4200, base)
    charge_cents = np.round(per_day * np.exp(0.35 * rng.standard_normal(m)) * 100).astype(np.int64)
    charge_cents = np.maximum(charge_cents, 4_500)

    return {"fac": fac, "prov": prov, "adm_type": adm_type, "adm_src": adm_src,
            "primary": primary, "secondary": secondary, "charge_cents": charge_cents,
            "age": age_at, "drg": np.where(cls == INP, rng.integers(1, 999, m), -1),
            "labels": {"primary": dx_codes, "secondary": secondary_labels}}


def _patient_change_draws(rng: np.random.Generator, n: int, days: int, streets: int,
                          city_p: np.ndarray, payer_type_p: np.ndarray,
                          age_band: np.ndarray) -> dict[str, np.ndarray]:
    """Every random draw of the patient change records, in the order ``simulate`` has always
    made them (the generated data depends on that order): when each record was inserted, how
    many updates follow and when, of which kind, and the address, city, payer and phone each
    version would have. All are per patient, so they can be drawn before the encounters are
    final."""
    return {
        "insert_lead": rng.integers(10, 240, n),          # minutes before the first visit
        "insert_u": rng.random(n),                        # when, for patients without visits
        "insert_floor": rng.integers(0, 30, n),
        "n_upd": rng.poisson(0.0045 * days, n),
        "upd_u": rng.random((n, 2)),
        "upd_second": rng.integers(0, 60, (n, 2)),
        "upd_kind": rng.choice(3, size=(n, 2), p=[0.5, 0.35, 0.15]),
        "street_no": rng.integers(1, 9_900, (n, 3)),
        "street": rng.integers(0, streets, (n, 3)),
        "zip2": rng.integers(0, 100, (n, 3)),
        "moves": rng.random((n, 3)) < 0.25,
        "new_city": rng.choice(len(CITIES), size=(n, 3), p=city_p),
        "payer_1": _payer_for(rng, payer_type_p, age_band),
        "payer_2": _payer_for(rng, payer_type_p, age_band),
        "new_phone": rng.integers(2_000_000, 10_000_000, (n, 3)),
    }


def run_into(future: Future, function: Callable[..., Any], *args: Any) -> None:
    """``future``'s result is ``function(*args)`` (or the error it raised): a thread target."""
    try:
        future.set_result(function(*args))
    except BaseException as err:
        future.set_exception(err)


def _payer_for(rng: np.random.Generator, type_probs: np.ndarray,
               band: np.ndarray) -> np.ndarray:
    """A payer index per row: payer type by age band (``type_probs[band]``), then a plan of
    that type."""
    ptype = _categorical_by_group(rng, type_probs, band)
    by_type = [[i for i, p in enumerate(PAYERS) if p[2] == t] for t in range(len(PAYER_TYPES))]
    choice = (rng.random(len(ptype)) * np.array([len(b) for b in by_type])[ptype]).astype(int)
    table = np.array([b + [b[0]] * (3 - len(b)) for b in by_type])
    return table[ptype, choice]


def _dispositions(rng: np.random.Generator, cls: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Discharge disposition per encounter: inpatient stays by age, emergency visits mostly
    home, every other class home.

    One uniform draw per encounter, as ``_categorical`` over the per-row probabilities would
    make; only inpatient rows (age-specific) get their own cumulative row, the rest share one.
    """
    m = len(cls)
    if not m:
        return np.zeros(0, int)
    inp = np.array([0.62, 0.10, 0.13, 0.04, 0.03, 0.02, 0.02, 0.015])
    inp_old = np.array([0.42, 0.22, 0.17, 0.06, 0.03, 0.01, 0.05, 0.04])
    emer = np.array([0.955, 0.0, 0.0, 0.0, 0.02, 0.023, 0.0, 0.002])
    u = rng.random(m)
    out = np.zeros(m, dtype=np.int64)            # other classes: all mass on home (index 0)
    rows = np.flatnonzero(cls == INP)
    elderly = np.clip((age[rows] - 60) / 30, 0, 1)[:, None]
    cum = _cumulative(inp * (1 - elderly) + inp_old * elderly)
    out[rows] = (u[rows, None] > cum).sum(axis=1)
    rows = np.flatnonzero(cls == EMER)
    out[rows] = np.searchsorted(_cumulative(emer[None, :])[0], u[rows], side="left")
    return np.minimum(out, len(inp) - 1)


def _drop_overlaps(enc: dict) -> np.ndarray:
    """Keep mask: drop encounters admitted while the same patient is in an inpatient stay.

    ``enc`` is sorted by patient, admit time (inpatient first on ties)."""
    import pandas as pd

    inp_end = np.where(enc["cls"] == INP, enc["disch"], np.iinfo(np.int64).min)
    frame = pd.DataFrame({"pat": enc["pat"], "end": inp_end})
    running = frame.groupby("pat")["end"].cummax().to_numpy()
    previous = np.r_[np.iinfo(np.int64).min, running[:-1]]
    same = np.r_[False, enc["pat"][1:] == enc["pat"][:-1]]
    previous = np.where(same, previous, np.iinfo(np.int64).min)
    return enc["admit"] >= previous


def _condition_codes() -> list[list[str]]:
    icd = load_code_table("icd10cm")
    return [icd.loc[icd["chronic_condition"] == g, "code"].tolist() for g in CONDITIONS]


def _secondary_dx(cond: np.ndarray, pat: np.ndarray, main_code: list[str],
                  main_idx: np.ndarray, primary: np.ndarray, rng: np.random.Generator
                  ) -> tuple[list[str], np.ndarray]:
    """'|'-separated chronic codes of each encounter's patient ``pat`` (vectorized over
    conditions: ``cond`` is patients x conditions).

    Which codes an encounter lists is a bit set (bit k: condition k, left out when it is the
    encounter's primary: ``primary`` and ``main_idx`` are diagnosis indices). Returns the text
    of every bit set (at most 2**10; "" for sets that do not occur) and each row's bit set.
    """
    bits = np.zeros(len(primary), dtype=np.uint32)
    for k, code in enumerate(main_idx.tolist()):
        include = np.ascontiguousarray(cond[:, k])[pat]        # one column per pass
        include &= primary != code
        include &= rng.random(len(primary)) < 0.9
        bits |= np.left_shift(include, k, dtype=np.uint32)
    bits = bits.astype(np.int64)
    labels = [""] * (1 << len(main_code))
    for s in np.flatnonzero(np.bincount(bits, minlength=len(labels))).tolist():
        labels[s] = "|".join(code for k, code in enumerate(main_code) if s >> k & 1)
    return labels, bits


def _labs(rng: np.random.Generator, enc: dict, cond: np.ndarray) -> dict:
    cls, pat = enc["cls"], enc["pat"]
    m = len(cls)
    los_days = (enc["disch"] - enc["admit"]) / DAY
    mean = np.array([0, 2.5, 1.0, 0.8, 2.2, 0.3])[cls] + np.where(cls == INP, 2 + 1.3 * los_days, 0)
    diabetic = cond[pat, CONDITIONS.index("diabetes")]
    mean = mean + np.where(diabetic & np.isin(cls, [AMB, WELL]), 0.8, 0.0)
    n_labs = np.minimum(rng.poisson(mean), 30)
    e = np.repeat(np.arange(m), n_labs)
    k = len(e)
    weights = np.array([LAB_WEIGHTS[c] for c in range(6)], float)
    test = _categorical_by_group(rng, weights, cls[e]) if k else np.zeros(0, int)
    # diabetic patients get HbA1c checked more often
    a1c = diabetic[e] & (rng.random(k) < 0.25)
    test = np.where(a1c, 0, test)
    decimals = np.array([t[1] for t in LABS])
    # a test shifts for at most one condition: (condition, (mean, sd)) or None per test
    if any(len(t[4]) > 1 for t in LABS):
        raise ValueError("LABS: a test's values shift for one chronic condition at most")
    shift = [next(iter(t[4].items()), None) for t in LABS]
    shift_cond = np.array([CONDITIONS.index(s[0]) if s else -1 for s in shift])
    shifted = shift_cond[test] >= 0
    shifted[shifted] = cond[pat[e][shifted], shift_cond[test[shifted]]]
    mu = np.where(shifted, np.array([s[1][0] if s else 0.0 for s in shift])[test],
                  np.array([t[2] for t in LABS])[test])
    sd = np.where(shifted, np.array([s[1][1] if s else 0.0 for s in shift])[test],
                  np.array([t[3] for t in LABS])[test])
    value = np.abs(mu + sd * rng.standard_normal(k))
    scale = 10.0 ** decimals[test]
    value = np.maximum(np.round(value * scale), 1) / scale      # rounded, never zero
    span = np.maximum(enc["disch"][e] - enc["admit"][e], MINUTE)
    ts = enc["admit"][e] + (rng.random(k) * span).astype(np.int64) // 60 * 60
    order = lexsort((test, e, ts))
    return {"enc": e[order], "test": test[order], "value": value[order], "ts": ts[order]}


def _meds(rng: np.random.Generator, enc: dict, cond: np.ndarray) -> dict:
    rx = load_code_table("rxnorm")
    cls, pat = enc["cls"], enc["pat"]
    m = len(cls)
    n_meds = rng.poisson(np.array([3.0, 0.8, 0.3, 0.9, 0.2, 0.6])[cls])
    n_meds = np.minimum(n_meds + (cls == INP), 8)
    e = np.repeat(np.arange(m), n_meds)
    k = len(e)
    indication = rx["indication"].to_numpy()
    chronic_meds = [np.flatnonzero(indication == g) for g in CONDITIONS]
    acute = np.flatnonzero(indication == "acute")
    inpatient = np.flatnonzero(indication == "inpatient")
    pick_cond = rng.random((k, len(CONDITIONS)))
    pick_cond *= cond[pat[e]]
    has_chronic_med = np.array([len(x) > 0 for x in chronic_meds])
    pick_cond *= has_chronic_med
    group = pick_cond.argmax(axis=1)
    use_chronic = (pick_cond.max(axis=1) > 0) & (rng.random(k) < np.where(cls[e] == INP, 0.35,
                                                                          0.6))
    table = np.array([(list(x) * 3)[:3] if len(x) else [0, 0, 0] for x in chronic_meds])
    chronic_choice = table[group, rng.integers(0, 3, k)]
    acute_pool = np.where(cls[e] == INP, 1, 0)
    pools = [acute, np.r_[inpatient, acute[:3]]]
    sizes = np.array([len(p) for p in pools])
    pool_tbl = np.array([(list(p) * 10)[:max(sizes)] for p in pools])
    acute_choice = pool_tbl[acute_pool, (rng.random(k) * sizes[acute_pool]).astype(int)]
    drug = np.where(use_chronic, chronic_choice, acute_choice)
    span = np.maximum(enc["disch"][e] - enc["admit"][e], MINUTE)
    ts = enc["admit"][e] + (rng.random(k) * span).astype(np.int64) // 60 * 60
    # per drug of the code table first, then per row (no text compared per row)
    inpatient_drug = (indication == "inpatient")[drug]
    chronic_drug = ~np.isin(indication, ["acute", "inpatient"])[drug]
    duration = np.where(chronic_drug, 90, np.where(inpatient_drug, rng.integers(1, 8, k),
                                                   rng.integers(5, 15, k)))
    status = np.where(inpatient_drug, 1, rng.choice(3, size=k, p=[0.85, 0.1, 0.05]))
    order = lexsort((drug, e, ts))
    return {"enc": e[order], "drug": drug[order], "ts": ts[order], "days": duration[order],
            "status": status[order]}


def _claims(rng: np.random.Generator, enc: dict, t_end: int) -> dict:
    """One claim per non-self-pay encounter; lines = E&M + ancillaries; amounts in cents.

    A line's code is ``cpt``: its row in the CPT code table."""
    cpt = load_code_table("cpt")
    code_idx = {c: i for i, c in enumerate(cpt["code"])}
    base_charge = cpt["base_charge"].to_numpy()
    cls, payer = enc["cls"], enc["payer"]
    payer_type = np.array([p[2] for p in PAYERS])[payer]
    billed = np.flatnonzero(payer_type != 3)
    status = rng.choice(3, size=len(billed), p=[0.86, 0.08, 0.06])
    lag = np.where(status == 2, rng.integers(2, 10, len(billed)),
                   np.clip(np.round(rng.lognormal(np.log(10), 0.5, len(billed))), 3, 45))
    adjudicated = enc["disch"][billed] // DAY + lag.astype(np.int64)
    ok = adjudicated < t_end // DAY
    billed, status, adjudicated = billed[ok], status[ok], adjudicated[ok]
    c = len(billed)
    c_cls = cls[billed]
    n_anc = np.minimum(rng.poisson(np.array([4.0, 2.5, 1.5, 0.8, 1.5, 1.0])[c_cls]), 6)
    inp = c_cls == INP
    n_lines = 1 + n_anc + 2 * inp                      # inpatient: + subsequent days + discharge
    line_claim = np.repeat(np.arange(c), n_lines)
    line_no = np.arange(len(line_claim)) - np.repeat(np.cumsum(n_lines) - n_lines, n_lines) + 1
    l_cls = c_cls[line_claim]
    # codes as indices into the CPT table (the text is looked up when written)
    em_tbl = np.array([[code_idx[x] for x in (EM_CODES[k] * 3)[:3]] for k in range(6)])
    anc_tbl = np.array([[code_idx[x] for x in (ANCILLARY[k] * 10)[:10]] for k in range(6)])
    anc_n = np.array([len(ANCILLARY[k]) for k in range(6)])
    em_n = np.array([len(EM_CODES[k]) for k in range(6)])
    nl = len(line_claim)
    cidx = anc_tbl[l_cls, (rng.random(nl) * anc_n[l_cls]).astype(int)]
    first = line_no == 1
    cidx = np.where(first, em_tbl[l_cls, (rng.random(nl) * em_n[l_cls]).astype(int)], cidx)
    n_line = n_lines[line_claim]
    los_days = np.maximum(np.ceil((enc["disch"] - enc["admit"]) / DAY).astype(int), 1)[
        billed][line_claim]
    cidx = np.where((l_cls == INP) & (line_no == n_line - 1), code_idx["99232"], cidx)
    cidx = np.where((l_cls == INP) & (line_no == n_line), code_idx["99238"], cidx)
    units = np.where(cidx == code_idx["99232"], np.maximum(los_days - 1, 1), 1)
    units = np.where(cidx == code_idx["J2405"], rng.integers(4, 9, nl), units)
    weight = base_charge[cidx] * units * np.exp(0.15 * rng.standard_normal(nl))
    claim_total = np.bincount(line_claim, weights=weight, minlength=c)
    total_cents = enc["charge_cents"][billed]
    billed_cents = np.floor(total_cents[line_claim] * weight / claim_total[line_claim]).astype(
        np.int64)
    residual = total_cents - np.bincount(line_claim, weights=billed_cents, minlength=c).astype(
        np.int64)
    billed_cents = billed_cents + np.where(first, residual[line_claim], 0)
    ptype = np.array([p[2] for p in PAYERS])[payer[billed]]
    ratio = np.array([0.32, 0.27, 0.52, 1.0])[ptype] * np.exp(0.08 * rng.standard_normal(c))
    allowed = np.round(billed_cents * ratio[line_claim]).astype(np.int64)
    coins = np.array([0.2, 0.0, 0.15, 0.0])[ptype][line_claim]
    paid = np.round(allowed * (1 - coins)).astype(np.int64)
    l_status = status[line_claim]
    allowed = np.where(l_status == 1, 0, allowed)
    paid = np.where(l_status == 1, 0, paid)
    denial = np.where(status == 1, rng.integers(0, len(DENIAL_REASONS), c), -1)
    return {"enc": billed, "status": status, "adjudicated": adjudicated, "denial": denial,
            "line_claim": line_claim, "line_no": line_no, "cpt": cidx, "units": units,
            "billed": billed_cents, "allowed": allowed, "paid": paid}


def _change_records(n: int, insert_ts: np.ndarray, upd_ts: np.ndarray, upd_valid: np.ndarray,
                    delete: np.ndarray, delete_ts: np.ndarray) -> dict:
    """Patient change records: (patient, operation, version, change_ts)."""
    pat = np.r_[np.arange(n), np.flatnonzero(upd_valid[:, 0]), np.flatnonzero(upd_valid[:, 1]),
                np.flatnonzero(delete)]
    op = np.r_[np.zeros(n, int), np.ones(upd_valid[:, 0].sum(), int),
               np.ones(upd_valid[:, 1].sum(), int), np.full(delete.sum(), 2)]
    version = np.r_[np.zeros(n, int), np.ones(upd_valid[:, 0].sum(), int),
                    np.full(upd_valid[:, 1].sum(), 2), np.full(delete.sum(), -1)]
    ts = np.r_[insert_ts, upd_ts[upd_valid[:, 0], 0], upd_ts[upd_valid[:, 1], 1],
               delete_ts[delete]]
    order = lexsort((op, pat, ts))
    return {"pat": pat[order], "op": op[order], "version": version[order], "ts": ts[order]}

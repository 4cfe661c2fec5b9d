"""Did two engines build the same lakehouse? Compare two data roots table by table.

``make test-spark`` and ``make test-cluster`` run the course on Apache Spark; this check then
holds their lakehouse against a run of the same data on the default engine (Sail):

* every **gold** table: the same rows, row for row (sorted, floats to 1e-9 relative), because
  gold is what a report shows;
* every **silver** table and quarantine table: the same row count, and for quarantine the
  same count per failed rule, because a row silver keeps on one engine and drops on the other
  is exactly the divergence the course must not have. Run logs (``dq_metrics``,
  ``dedup_log``) are left out: they grow with every run, and the two roots may have run the
  notebooks a different number of times.

The tables are read with ``deltalake`` (delta-rs), not with either engine, so the check does
not trust the engines it checks. ``python -m utils.compare_engines REFERENCE OTHER`` prints one
line per table and exits 1 on any difference; ``--build-reference`` first runs the course on
Sail into REFERENCE when it holds no gold yet.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from utils.config import LAYERS
from utils.tables import is_delta_table

#: Silver tables that log runs rather than hold data: their size depends on how often the
#: notebooks ran, not on the engine.
RUN_LOGS = frozenset({"dq_metrics", "dedup_log"})
FLOAT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TableComparison:
    layer: str
    table: str
    reference_rows: int | None
    other_rows: int | None
    difference: str = ""  # empty when equal

    @property
    def equal(self) -> bool:
        return not self.difference

    def line(self) -> str:
        rows = f"{self.reference_rows if self.reference_rows is not None else '-':>6} rows"
        verdict = "equal" if self.equal else f"DIFFERENT: {self.difference}"
        return f"{self.layer}.{self.table:<30} {rows}  {verdict}"


def _tables(root: Path, layer: str) -> dict[str, Path]:
    folder = root / "lakehouse" / layer
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if is_delta_table(p)}


def read_rows(path: Path) -> list[dict]:
    """A Delta table's rows as dicts, read with delta-rs (no engine)."""
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def _normalized(value: object) -> object:
    """Values that compare and sort the same from both engines: lists (``chronic_conditions``)
    as tuples, NaN as a marker, floats kept for the tolerant comparison."""
    if isinstance(value, list):
        return tuple(_normalized(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _normalized(v)) for k, v in value.items()))
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _sort_key(row: tuple) -> tuple:
    # rounded floats in the key, so two engines' last-digit noise cannot reorder rows
    return tuple((v is None, round(v, 6) if isinstance(v, float) else repr(v)) for v in row)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def compare_rows(reference: list[dict], other: list[dict]) -> str:
    """'' when both hold the same rows (any order), else what differs first."""
    if len(reference) != len(other):
        return f"{len(reference)} rows vs {len(other)}"
    columns = list(reference[0]) if reference else []
    if other and sorted(other[0]) != sorted(columns):
        return f"columns {sorted(columns)} vs {sorted(other[0])}"
    as_tuples = [sorted((tuple(_normalized(r[c]) for c in columns) for r in rows), key=_sort_key)
                 for rows in (reference, other)]
    for ref_row, other_row in zip(*as_tuples):
        if not _same(ref_row, other_row):
            diff = [f"{c}: {x!r} vs {y!r}" for c, x, y in zip(columns, ref_row, other_row)
                    if not _same(x, y)]
            return "first differing row: " + "; ".join(diff)[:300]
    return ""


def _failed_rules(rows: list[dict]) -> Counter:
    return Counter(rule for r in rows for rule in (r.get("_failed_rules") or ["(none)"]))


def compare_roots(reference: Path, other: Path) -> list[TableComparison]:
    """Every gold, silver and quarantine table of ``reference`` held against ``other``."""
    results: list[TableComparison] = []
    for layer in LAYERS:
        if layer == "bronze":  # raw lines with ingestion times: equal by construction
            continue
        ref_tables, other_tables = _tables(reference, layer), _tables(other, layer)
        for table in sorted(set(ref_tables) | set(other_tables)):
            if table in RUN_LOGS:
                continue
            if table not in ref_tables or table not in other_tables:
                missing = "reference" if table not in ref_tables else "other run"
                results.append(TableComparison(layer, table, None, None, f"missing in the {missing}"))
                continue
            ref_rows, other_rows = read_rows(ref_tables[table]), read_rows(other_tables[table])
            if layer == "gold":
                difference = compare_rows(ref_rows, other_rows)
            elif len(ref_rows) != len(other_rows):
                difference = f"{len(ref_rows)} rows vs {len(other_rows)}"
            elif table.startswith("quarantine_") and _failed_rules(ref_rows) != _failed_rules(other_rows):
                difference = (f"failed rules {dict(_failed_rules(ref_rows))} vs "
                              f"{dict(_failed_rules(other_rows))}")
            else:
                difference = ""
            results.append(TableComparison(layer, table, len(ref_rows), len(other_rows), difference))
    if not any(r.layer == "gold" for r in results):
        results.append(TableComparison("gold", "*", None, None, "no gold table in either root"))
    return results


def build_reference(root: Path) -> None:
    """Run the course's notebooks on the default engine into ``root`` (``make run``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "COURSE_ENGINE")}
    env["COURSE_DATA_DIR"] = str(root)
    print(f"building the Sail reference in {root} (python -m utils.run_course) ...", flush=True)
    subprocess.run([sys.executable, "-m", "utils.run_course"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.compare_engines",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="data root of the reference run (Sail)")
    parser.add_argument("other", type=Path, help="data root of the run to check")
    parser.add_argument("--build-reference", action="store_true",
                        help="run the course on Sail into REFERENCE first if it has no gold tables")
    args = parser.parse_args(argv)
    if args.build_reference and not _tables(args.reference, "gold"):
        build_reference(args.reference)
    results = compare_roots(args.reference, args.other)
    for result in results:
        print(result.line())
    different = [r for r in results if not r.equal]
    gold = [r for r in results if r.layer == "gold"]
    print(f"\n{len(results) - len(different)} of {len(results)} tables equal "
          f"({sum(r.equal for r in gold)} of {len(gold)} gold tables row for row)")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())

"""Small pandas readers of the landing zone, for looking at the data (notebook 01, tests).

They are not the ingestion path (bronze reads raw lines with Spark): they read every file of a
source into one pandas DataFrame with the lineage a person needs to find a line again
(``_file`` relative to the landing root, ``_line``, ``_batch_date``) and, using the manifest,
whether the line carries a planted defect (``_defect``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from data_generator.generator import load_manifest


def _landing(landing_dir) -> Path:
    if landing_dir is None:
        from utils.config import get_config

        landing_dir = get_config().landing_dir
    return Path(landing_dir)


def _defects_by_line(manifest: dict) -> dict[tuple[str, int], str]:
    return {(d["file"], d["line"]): d["defect_type"] for d in manifest["defects"]}


def read_source(source: str, landing_dir=None, clean_only: bool = False) -> pd.DataFrame:
    """All records of one landing source (``ehr_encounters``, ``fhir_observations``, ...).

    CSV values stay strings (as delivered); NDJSON resources are flattened with
    ``pandas.json_normalize`` (a line that is not valid JSON becomes a row with only the
    lineage columns). ``clean_only`` drops the lines the manifest lists as defective.
    """
    root = _landing(landing_dir)
    manifest = load_manifest(root)
    defects = _defects_by_line(manifest)
    frames = []
    for entry in manifest["files"]:
        if entry["source"] != source or entry["rows"] == 0:
            continue
        path = root / entry["file"]
        if entry["format"] == "csv":
            frame = _read_csv_lines(path)
            first_line = 2
        else:
            rows = []
            for text in path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(text))
                except json.JSONDecodeError:
                    rows.append({})
            frame = pd.json_normalize(rows)
            first_line = 1
        frame.insert(0, "_file", entry["file"])
        frame.insert(1, "_line", range(first_line, first_line + len(frame)))
        frame.insert(2, "_batch_date", entry["file"].split("/")[1])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["_file", "_line", "_batch_date", "_defect"])
    data = pd.concat(frames, ignore_index=True)
    data["_defect"] = [defects.get(key, "") for key in zip(data["_file"], data["_line"])]
    if clean_only:
        data = data[data["_defect"] == ""].reset_index(drop=True)
    return data


def _read_csv_lines(path: Path) -> pd.DataFrame:
    """A CSV file line by line: a short (truncated) line keeps its fields, the rest empty."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    width = len(header)
    body = [r + [""] * (width - len(r)) if len(r) < width else r[:width] for r in body]
    return pd.DataFrame(body, columns=header, dtype=str)


def raw_line(file: str, line: int, landing_dir=None) -> str:
    """The text of one physical line (1-based) of a landing file, as delivered."""
    path = _landing(landing_dir) / file
    with open(path, encoding="utf-8", newline="") as handle:
        for number, text in enumerate(handle, start=1):
            if number == line:
                return text.rstrip("\n")
    raise IndexError(f"{file} has fewer than {line} lines")

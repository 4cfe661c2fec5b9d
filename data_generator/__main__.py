"""Command line: ``python -m data_generator --patients N --days D --seed S --out DIR``.

``--default`` generates the course dataset (what ``make data`` runs). Errors in the arguments
are reported in one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from data_generator import DEFAULT_PARAMS, generate


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number (got {text!r})") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1 (got {value})")
        return value
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be a whole number (got {text!r})") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--seed must be 0 or more (got {value})")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--defect-rate must be a number (got {text!r})") from None
    if not 0 <= value <= 0.2:
        raise argparse.ArgumentTypeError(f"--defect-rate must be between 0 and 0.2 (got {value})")
    return value


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--start-date must be a date YYYY-MM-DD (got {text!r})") from None


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULT_PARAMS
    parser = argparse.ArgumentParser(
        prog="python -m data_generator",
        description="Generate the synthetic hospital landing zone (CSV + FHIR NDJSON, one "
                    "folder per source and day) with planted defects and a manifest.")
    parser.add_argument("--default", action="store_true",
                        help="generate the course dataset (%(prog)s defaults below); "
                             "other size options are ignored")
    parser.add_argument("--patients", type=_positive_int("--patients"), default=d["patients"],
                        help="number of patients (default %(default)s)")
    parser.add_argument("--days", type=_positive_int("--days"), default=d["days"],
                        help="simulated days, one batch folder each (default %(default)s)")
    parser.add_argument("--seed", type=_non_negative_int, default=d["seed"],
                        help="random seed: same seed, same bytes (default %(default)s)")
    parser.add_argument("--defect-rate", type=_rate, default=d["defect_rate"],
                        help="share of records with a planted defect (default %(default)s)")
    parser.add_argument("--start-date", type=_date, default=d["start_date"],
                        help="first batch date YYYY-MM-DD (default %(default)s)")
    parser.add_argument("--out", default=None,
                        help="landing folder, rewritten completely (default: the configured "
                             "landing zone, data/landing or $COURSE_DATA_DIR/landing)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    params = dict(DEFAULT_PARAMS)
    if not args.default:
        params.update(patients=args.patients, days=args.days, seed=args.seed,
                      defect_rate=args.defect_rate, start_date=args.start_date)
    out = args.out
    if out is None:
        from utils.config import get_config

        out = get_config().landing_dir
    try:
        summary = generate(out, progress=not args.no_progress and sys.stderr.isatty(), **params)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{summary} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

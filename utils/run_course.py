"""Execute the course notebooks headlessly, in order (``make run``, ``make notebooks``).

``make run`` executes every numbered notebook into ``<data root>/executed/`` (your notebooks
stay untouched) and prints where the tables and figures are. ``--in-place`` re-executes them
into ``notebooks/`` itself: that refreshes the stored outputs nbval compares in ``make test``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from utils.config import REPO_ROOT, get_config

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def course_notebooks(include_solutions: bool = False) -> list[Path]:
    """The numbered notebooks (``NN_topic.ipynb``) in course order, then their solutions."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if include_solutions:
        found += sorted((NOTEBOOKS_DIR / "solutions").glob("[0-9][0-9]_*.ipynb"))
    return found


def execute_notebook(path: Path, output: Path, timeout: int = 900) -> float:
    """Run one notebook top to bottom in a fresh kernel and save it; return seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    started = time.perf_counter()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, output)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-place", action="store_true",
                        help="write outputs back into notebooks/ (and run the solutions too)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only notebooks whose name starts with these prefixes (e.g. 00 03)")
    args = parser.parse_args(argv)

    config = get_config()
    notebooks = course_notebooks(include_solutions=args.in_place)
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(args.only))]
    executed_dir = config.data_root / "executed"
    total = time.perf_counter()
    for notebook in notebooks:
        relative = notebook.relative_to(NOTEBOOKS_DIR)
        output = notebook if args.in_place else executed_dir / relative
        print(f"running {relative} ...", end=" ", flush=True)
        try:
            seconds = execute_notebook(notebook, output)
        except Exception as err:  # noqa: BLE001 - report which notebook failed, then stop
            print(f"FAILED\n{type(err).__name__}: {str(err)[-2000:]}\nsaved: {output}", flush=True)
            return 1
        print(f"{seconds:.1f} s", flush=True)
    print(f"\n{len(notebooks)} notebooks in {time.perf_counter() - total:.1f} s")
    print(f"executed copies: {notebooks[0].parent if args.in_place else executed_dir}")
    print(f"Delta tables:    {config.lakehouse_dir}")
    print(f"figures:         {config.reports_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

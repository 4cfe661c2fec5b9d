"""Execute the course notebooks headlessly, in course order (``make run``, ``make notebooks``).

``make run`` executes every numbered notebook into ``<data root>/executed/`` (your notebooks
stay untouched) and prints where the tables and figures are. ``--in-place`` re-executes them
into ``notebooks/`` itself: that refreshes the stored outputs nbval compares in ``make test``.
Each notebook runs in a fresh kernel once the notebooks it reads from are done
(:data:`PREREQUISITES`); on two cores the last three run two at a time (``--jobs 1``: one by one).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from utils.config import REPO_ROOT, get_config

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def course_notebooks(include_solutions: bool = False) -> list[Path]:
    """The numbered notebooks (``NN_topic.ipynb``) in course order, then their solutions."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if include_solutions:
        found += sorted((NOTEBOOKS_DIR / "solutions").glob("[0-9][0-9]_*.ipynb"))
    return found


#: Modules every course notebook imports first (PySpark's Connect client pulls in pandas,
#: pyarrow and numpy): a prepared kernel loads them while the previous notebook runs.
PREWARMED_MODULES: tuple[str, ...] = ("pyspark.sql.connect.session", "pyspark.sql.functions")


class KernelLauncher:
    """Fresh kernels, each started while the previous notebook is still running.

    Every notebook still gets its own new kernel (nothing is shared between notebooks), but
    starting one (~0.6 s) and shutting one down (~0.3 s) no longer sit between two notebooks:
    the next kernel boots in a background thread during the current notebook, and the finished
    one shuts down in the background during the next. A prepared kernel also loads the modules
    every notebook imports first (:data:`PREWARMED_MODULES`), binding no name. On POSIX the
    kernels talk over Unix sockets in a private temporary folder (no TCP ports, no "running
    over TCP without encryption" warning); on Windows over TCP on localhost.
    """

    def __init__(self):
        self._sockets = tempfile.TemporaryDirectory(prefix="course-kernels-")
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kernel")
        self._lock = threading.Lock()
        self._prepared: list[tuple[Path, Future]] = []
        self._stopping: list[Future] = []

    def _start(self, cwd: Path):
        from jupyter_client.manager import KernelManager

        if os.name == "nt":
            manager = KernelManager(kernel_name="python3")
        else:   # a folder per kernel: socket names are reused once a kernel's files are gone
            folder = Path(tempfile.mkdtemp(dir=self._sockets.name))
            manager = KernelManager(kernel_name="python3", transport="ipc",
                                    ip=str(folder / "kernel"))
        manager.start_kernel(cwd=str(cwd), extra_arguments=["--HistoryManager.hist_file=:memory:"])
        self._warm_up(manager)
        return manager

    @staticmethod
    def _warm_up(manager) -> None:
        """Load PREWARMED_MODULES into the kernel's module cache, binding no name.

        Silent and without history: the notebook's first cell still gets execution count 1
        and finds an empty namespace; only its ``import pyspark`` no longer costs ~0.6 s.
        """
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            code = f"[__import__(module) for module in {PREWARMED_MODULES!r}]"
            client.execute_interactive(code, silent=True, store_history=False, timeout=120,
                                       output_hook=lambda msg: None)
        finally:
            client.stop_channels()

    def prepare(self, cwd: Path) -> None:
        """Start booting a kernel for a coming notebook (working folder ``cwd``), unless one
        is already being prepared for that folder."""
        with self._lock:
            if all(folder != cwd for folder, _ in self._prepared):
                self._prepared.append((cwd, self._pool.submit(self._start, cwd)))

    def take(self, cwd: Path):
        """A prepared kernel for ``cwd`` (or a new one, if none was prepared there)."""
        with self._lock:
            match = next((item for item in self._prepared if item[0] == cwd), None)
            if match is not None:
                self._prepared.remove(match)
        return match[1].result() if match is not None else self._start(cwd)

    def retire(self, manager) -> None:
        """Shut a used kernel down in the background."""
        with self._lock:
            self._stopping.append(self._pool.submit(manager.shutdown_kernel, now=False))

    def close(self) -> None:
        """Shut down prepared but unused kernels, wait for every shutdown, remove sockets."""
        for _, prepared in self._prepared:
            try:
                self.retire(prepared.result())
            except Exception:  # noqa: BLE001 - it never started: nothing to stop
                pass
        self._prepared.clear()
        for stopping in self._stopping:
            stopping.result()
        self._pool.shutdown()
        self._sockets.cleanup()


def execute_notebook(path: Path, output: Path, kernel, timeout: int = 900) -> float:
    """Run one notebook top to bottom in ``kernel`` and save it; return seconds taken.

    ``kernel``: a fresh, started ``KernelManager`` whose working folder is the notebook's
    (from :class:`KernelLauncher`, which also shuts it down).
    """
    import nbformat
    from nbclient import NotebookClient

    started = time.perf_counter()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, km=kernel, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()     # nbclient leaves a borrowed kernel's client open
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, output)
    return time.perf_counter() - started


#: What a notebook needs to have run before it (by number); any other notebook needs the one
#: before it. 06, 07 and 08 only read tables that 05 and earlier wrote, and write nothing
#: another notebook reads (06: figures, 07: the pipeline's own tables, 08: scratch tables),
#: so they may run side by side.
PREREQUISITES: dict[str, tuple[str, ...]] = {"06": ("05",), "07": ("05",), "08": ("05",)}


def prerequisites(notebooks: list[Path]) -> dict[Path, set[Path]]:
    """Which of ``notebooks`` must finish before each one starts.

    Course notebooks follow :data:`PREREQUISITES` (only those being run count); solutions run
    after every course notebook, one after the other.
    """
    course = [nb for nb in notebooks if nb.parent.name != "solutions"]
    by_number = {nb.name[:2]: nb for nb in course}
    needs: dict[Path, set[Path]] = {}
    for i, notebook in enumerate(course):
        wanted = PREREQUISITES.get(notebook.name[:2])
        if wanted is None:
            needs[notebook] = {course[i - 1]} if i else set()
        else:
            needs[notebook] = {by_number[n] for n in wanted if n in by_number}
    previous: set[Path] = set(course)
    for notebook in notebooks:
        if notebook not in needs:
            needs[notebook] = set(previous)
            previous = {notebook}
    return needs


def default_jobs() -> int:
    """Notebooks run at once: two where there are two cores (each also uses both)."""
    return max(1, min(2, os.cpu_count() or 1))


def run_notebooks(notebooks: list[Path], output_of: Callable[[Path], Path],
                  jobs: int | None = None) -> bool:
    """Execute ``notebooks``, each once its prerequisites are done, ``jobs`` at a time.

    Prints a line when a notebook starts and one when it ends; after a failure no new
    notebook starts (those running finish) and the result is False.
    """
    jobs = jobs or default_jobs()
    needs = prerequisites(notebooks)
    launcher = KernelLauncher()
    printing = threading.Lock()

    def say(text: str) -> None:
        with printing:
            print(text, flush=True)

    def shown(notebook: Path) -> Path:
        return notebook.relative_to(NOTEBOOKS_DIR) if notebook.is_relative_to(NOTEBOOKS_DIR) \
            else notebook

    def run_one(notebook: Path) -> bool:
        output = output_of(notebook)
        try:
            kernel = launcher.take(notebook.parent)
        except Exception as err:  # noqa: BLE001 - no kernel: nothing can run
            say(f"{shown(notebook)} ... FAILED\nno Python kernel could be started "
                f"({type(err).__name__}: {err}); `make doctor` checks the environment")
            return False
        try:
            seconds = execute_notebook(notebook, output, kernel)
        except Exception as err:  # noqa: BLE001 - report which notebook failed
            say(f"{shown(notebook)} ... FAILED\n{type(err).__name__}: {str(err)[-2000:]}\n"
                f"saved: {output}")
            return False
        finally:
            launcher.retire(kernel)
        say(f"{shown(notebook)} ... {seconds:.1f} s")
        return True

    pending, done, ok = list(notebooks), set(), True
    running: dict[Future, Path] = {}
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="notebook") as pool:
            while pending or running:
                for notebook in [nb for nb in pending if ok and needs[nb] <= done]:
                    if len(running) >= jobs:
                        break
                    pending.remove(notebook)
                    say(f"running {shown(notebook)}")
                    running[pool.submit(run_one, notebook)] = notebook
                    if pending:          # boot a kernel for what comes next
                        launcher.prepare(pending[0].parent)
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    notebook = running.pop(future)
                    if future.result():
                        done.add(notebook)
                    else:
                        ok = False
        return ok and not pending
    finally:
        launcher.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-place", action="store_true",
                        help="write outputs back into notebooks/ (and run the solutions too)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only notebooks whose name starts with these prefixes (e.g. 00 03)")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"notebooks at once where the order allows (default {default_jobs()}; "
                             "1 runs them strictly one after the other)")
    args = parser.parse_args(argv)

    config = get_config()
    notebooks = course_notebooks(include_solutions=args.in_place)
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(args.only))]
    executed_dir = config.data_root / "executed"
    total = time.perf_counter()

    def output_of(notebook: Path) -> Path:
        return notebook if args.in_place else executed_dir / notebook.relative_to(NOTEBOOKS_DIR)

    if not run_notebooks(notebooks, output_of, args.jobs):
        return 1
    print(f"\n{len(notebooks)} notebooks in {time.perf_counter() - total:.1f} s")
    print(f"executed copies: {notebooks[0].parent if args.in_place else executed_dir}")
    print(f"Delta tables:    {config.lakehouse_dir}")
    print(f"figures:         {config.reports_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of the course (``make bench`` = ``python -m benchmarks``).

Each measured thing runs in its own fresh process, started by :func:`run_sampled`, which
times it and samples the resident memory of its whole process tree (the Python child plus
Sail's threads, or plus the JVM that PySpark launches). Nothing here asserts on timings: the
numbers go into a report (``<reports_dir>/benchmarks.{json,md}``).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "


@dataclass
class SampledRun:
    """What :func:`run_sampled` measured about one child process tree."""

    returncode: int | None
    wall_s: float
    peak_rss_bytes: int
    peak_processes: int
    cpu_s: float | None
    timed_out: bool
    samples: int
    output_tail: str = ""
    result: dict | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20


def tree_rss(pid: int, cpu_seen: dict[int, float] | None = None) -> tuple[int, int]:
    """Summed RSS (bytes) of a process and all its descendants, and how many there are.

    Processes that end while being read are skipped. Pages shared between processes (libc,
    the Python runtime) are counted once per process, so this slightly over-counts. When
    ``cpu_seen`` is given, it is updated with each process's user+system CPU seconds so far.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = count = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            count += 1
            if cpu_seen is not None:
                times = proc.cpu_times()
                cpu_seen[proc.pid] = max(cpu_seen.get(proc.pid, 0.0), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total, count


def run_sampled(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                timeout: float | None = None, interval: float = 0.05,
                log_path: str | Path | None = None) -> SampledRun:
    """Run ``cmd`` to completion; return wall time, peak tree RSS and its parsed result line.

    The tree's RSS is sampled every ``interval`` seconds (~50 ms) from a thread while the
    parent waits. Output (stdout and stderr together) goes to ``log_path`` (a temporary file
    by default), never to a pipe a chatty JVM could fill. The last line starting with
    ``BENCH_RESULT `` is parsed as JSON into ``result``. CPU seconds are the user+system time
    of every process of the tree as last sampled (up to one interval short at each exit).
    """
    import json
    import tempfile

    if log_path is None:
        handle, log_name = tempfile.mkstemp(prefix="bench-", suffix=".log")
        os.close(handle)
        log_path = Path(log_name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)

    cpu_seen: dict[int, float] = {}
    peak = {"rss": 0, "procs": 0, "samples": 0}
    done = threading.Event()
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def sample() -> None:
            while not done.is_set():
                rss, count = tree_rss(proc.pid, cpu_seen)
                peak["rss"] = max(peak["rss"], rss)
                peak["procs"] = max(peak["procs"], count)
                peak["samples"] += 1
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    cpu = sum(cpu_seen.values())

    text = log_path.read_text(encoding="utf-8", errors="replace")
    result = None
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                result = None
    tail = "\n".join(line for line in text.splitlines()[-25:] if not line.startswith(RESULT_PREFIX))
    return SampledRun(returncode=proc.returncode, wall_s=wall, peak_rss_bytes=peak["rss"],
                      peak_processes=peak["procs"], cpu_s=round(cpu, 2), timed_out=timed_out,
                      samples=peak["samples"], output_tail=tail[-3000:], result=result)


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a timed-out child and everything it started (it runs in its own session)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()

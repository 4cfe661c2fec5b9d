"""``make run``'s notebook runner: fresh kernel per notebook, in order, stops at a failure."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from utils.run_course import run_notebooks


def _notebook(path: Path, *sources: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def _stdout(path: Path) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    return [out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


REPORT = "import os\nprint(os.getpid(), os.getcwd(), 'seen' in globals())\nseen = True"
NAMESPACE = ("import sys\n"
             "print(sorted(k for k in globals() if not k.startswith('_')), "
             "'pyspark.sql.connect.session' in sys.modules)")


@pytest.mark.skipif(os.name == "nt", reason="checks kernel processes with POSIX signals")
def test_each_notebook_gets_a_fresh_kernel_in_its_folder_and_none_outlives_the_run(tmp_path):
    notebooks = [_notebook(tmp_path / "a" / "01_x.ipynb", REPORT),
                 _notebook(tmp_path / "b" / "02_y.ipynb", REPORT),
                 _notebook(tmp_path / "b" / "03_z.ipynb", REPORT)]
    assert run_notebooks(notebooks, lambda nb: tmp_path / "out" / nb.name)

    reports = [_stdout(tmp_path / "out" / nb.name)[0].split() for nb in notebooks]
    pids = [int(r[0]) for r in reports]
    assert len(set(pids)) == 3, "each notebook must run in its own kernel"
    assert [r[1] for r in reports] == [str(nb.parent) for nb in notebooks]
    assert [r[2] for r in reports] == ["False"] * 3, "no state may leak between notebooks"
    assert not any(_alive(pid) for pid in pids), "kernels must be shut down after the run"


def test_a_failing_notebook_stops_the_run_and_keeps_its_output(tmp_path, capsys):
    notebooks = [_notebook(tmp_path / "01_ok.ipynb", "print('first')"),
                 _notebook(tmp_path / "02_bad.ipynb", "raise ValueError('planted failure')"),
                 _notebook(tmp_path / "03_never.ipynb", "print('never')")]
    assert not run_notebooks(notebooks, lambda nb: tmp_path / "out" / nb.name)

    printed = capsys.readouterr().out
    assert "02_bad.ipynb ... FAILED" in printed and "planted failure" in printed
    assert _stdout(tmp_path / "out" / "01_ok.ipynb") == ["first\n"]
    saved = nbformat.read(tmp_path / "out" / "02_bad.ipynb", as_version=4)
    assert saved.cells[0].outputs[0]["ename"] == "ValueError"
    assert not (tmp_path / "out" / "03_never.ipynb").exists()


def test_a_prepared_kernel_has_the_modules_loaded_but_an_untouched_namespace(tmp_path):
    notebooks = [_notebook(tmp_path / f"0{i}_n.ipynb", NAMESPACE) for i in (1, 2)]
    assert run_notebooks(notebooks, lambda nb: tmp_path / "out" / nb.name)
    for notebook in notebooks:
        saved = nbformat.read(tmp_path / "out" / notebook.name, as_version=4)
        assert saved.cells[0].execution_count == 1
        assert saved.cells[0].outputs[0]["text"] == (
            "['In', 'Out', 'exit', 'get_ipython', 'open', 'quit', 'sys'] True\n")


def test_a_kernel_that_cannot_start_fails_the_run_with_a_clear_message(tmp_path, capsys,
                                                                      monkeypatch):
    from utils import run_course

    def broken_start(self, cwd):
        raise RuntimeError("Kernel didn't respond in 60 seconds")

    monkeypatch.setattr(run_course.KernelLauncher, "_start", broken_start)
    notebooks = [_notebook(tmp_path / "01_a.ipynb", "print(1)")]
    assert not run_notebooks(notebooks, lambda nb: tmp_path / "out" / nb.name)
    printed = capsys.readouterr().out
    assert "01_a.ipynb ... FAILED" in printed and "no Python kernel could be started" in printed
    assert "make doctor" in printed


def test_course_order_with_the_last_three_side_by_side_and_solutions_after_all():
    from utils.run_course import course_notebooks, prerequisites

    notebooks = course_notebooks(include_solutions=True)
    by_name = {f"{nb.parent.name}/{nb.name[:2]}": nb for nb in notebooks}
    needs = prerequisites(notebooks)
    assert needs[by_name["notebooks/00"]] == set()
    assert needs[by_name["notebooks/04"]] == {by_name["notebooks/03"]}
    for n in ("06", "07", "08"):
        assert needs[by_name[f"notebooks/{n}"]] == {by_name["notebooks/05"]}
    course = {nb for nb in notebooks if nb.parent.name == "notebooks"}
    assert needs[by_name["solutions/00"]] == course
    assert needs[by_name["solutions/01"]] == {by_name["solutions/00"]}


STAMP = ("import time, pathlib\nstarted = time.time()\ntime.sleep(1.5)\n"
         "pathlib.Path('{name}.times').write_text(f'{{started}} {{time.time()}}')")


def test_independent_notebooks_wait_for_what_they_need(tmp_path):
    """With two jobs, 06 and 07 still start only after 05 has finished. (Whether they then
    overlap depends on the machine's load, so no test asserts it; the prerequisites test
    above shows that nothing makes them wait for each other.)"""
    names = ["05_first", "06_left", "07_right"]
    notebooks = [_notebook(tmp_path / f"{n}.ipynb", STAMP.format(name=n)) for n in names]
    assert run_notebooks(notebooks, lambda nb: tmp_path / "out" / nb.name, jobs=2)

    times = {n: [float(x) for x in (tmp_path / f"{n}.times").read_text().split()] for n in names}
    assert times["06_left"][0] >= times["05_first"][1] and times["07_right"][0] >= times["05_first"][1]


def test_after_a_failure_nothing_that_needs_it_starts(tmp_path, capsys):
    notebooks = [_notebook(tmp_path / "05_bad.ipynb", "raise RuntimeError('planted')"),
                 _notebook(tmp_path / "06_after.ipynb", "print('never')"),
                 _notebook(tmp_path / "07_after.ipynb", "print('never')")]
    assert not run_notebooks(notebooks, lambda nb: tmp_path / "out" / nb.name, jobs=2)
    assert "05_bad.ipynb ... FAILED" in capsys.readouterr().out
    assert not (tmp_path / "out" / "06_after.ipynb").exists()
    assert not (tmp_path / "out" / "07_after.ipynb").exists()

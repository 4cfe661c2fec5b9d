"""The Databricks Asset Bundle cannot be deployed from here: check its structure instead.

``databricks.yml`` and the resource files it includes must parse, every file they reference
must exist, every ``${var.x}`` must be declared, the pipeline must load exactly the source
files the local runner loads, and the job must run the notebooks in course order.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "databricks.yml"


def _resource_files() -> list[Path]:
    bundle = yaml.safe_load(BUNDLE.read_text())
    files: list[Path] = []
    for pattern in bundle.get("include", []):
        files += sorted(ROOT.glob(pattern))
    return files


@pytest.fixture(scope="module")
def bundle() -> dict:
    return yaml.safe_load(BUNDLE.read_text())


@pytest.fixture(scope="module")
def resources() -> dict[Path, dict]:
    return {path: yaml.safe_load(path.read_text()) for path in _resource_files()}


def _pipelines(resources):
    return {name: (path, spec) for path, doc in resources.items()
            for name, spec in doc.get("resources", {}).get("pipelines", {}).items()}


def _jobs(resources):
    return {name: (path, spec) for path, doc in resources.items()
            for name, spec in doc.get("resources", {}).get("jobs", {}).items()}


def test_bundle_has_a_name_targets_and_resources(bundle, resources):
    assert bundle["bundle"]["name"]
    assert any(t.get("default") for t in bundle["targets"].values())
    assert resources, "databricks.yml includes no resource file"
    assert set(_pipelines(resources)) == {"medallion_pipeline"}
    assert set(_jobs(resources)) == {"medallion_course_job"}


def test_every_variable_used_is_declared(bundle, resources):
    declared = set(bundle.get("variables", {}))
    texts = [BUNDLE.read_text()] + [p.read_text() for p in resources]
    used = {m for text in texts for m in re.findall(r"\$\{var\.([a-zA-Z_]+)\}", text)}
    assert used and used <= declared, f"undeclared: {sorted(used - declared)}"
    assert {"catalog", "schema"} <= declared


def test_every_referenced_file_exists(resources):
    referenced = []
    for path, doc in resources.items():
        for _, spec in doc["resources"].get("pipelines", {}).items():
            referenced += [(path, lib["file"]["path"]) for lib in spec["libraries"]]
            referenced.append((path, spec["root_path"]))
        for _, spec in doc["resources"].get("jobs", {}).items():
            referenced += [(path, t["notebook_task"]["notebook_path"]) for t in spec["tasks"]
                           if "notebook_task" in t]
    assert referenced
    missing = [f"{p.name}: {ref}" for p, ref in referenced if not (p.parent / ref).exists()]
    assert not missing, f"missing: {missing}"


def test_pipeline_loads_the_files_the_local_runner_loads(resources):
    from utils.pipelines.spec import load_spec

    (path, spec), = _pipelines(resources).values()
    deployed = [(path.parent / lib["file"]["path"]).resolve() for lib in spec["libraries"]]
    local = load_spec(ROOT / "notebooks" / "pipeline")
    assert deployed == local.source_files()
    assert (path.parent / spec["root_path"]).resolve() == ROOT     # `import utils` works
    assert spec["catalog"] == "${var.catalog}" and spec["schema"] == "${var.schema}"
    assert "course.landing_dir" in spec["configuration"]


def test_job_runs_notebooks_in_course_order_then_the_pipeline(resources):
    (_, job), = _jobs(resources).values()
    tasks = job["tasks"]
    keys = [t["task_key"] for t in tasks]
    assert len(keys) == len(set(keys))
    for previous, task in zip(tasks, tasks[1:]):          # a chain: each after the one before
        assert [d["task_key"] for d in task["depends_on"]] == [previous["task_key"]]
    notebooks = [Path(t["notebook_task"]["notebook_path"]).name for t in tasks
                 if "notebook_task" in t]
    assert notebooks == sorted(notebooks) and notebooks[0].startswith("00_")
    assert tasks[-1]["pipeline_task"]["pipeline_id"] == "${resources.pipelines.medallion_pipeline.id}"


def test_job_runs_every_lesson_but_the_local_pipeline_one(resources):
    """A new lesson notebook must be added to the job; 07 is replaced by the pipeline task."""
    (path, job), = _jobs(resources).values()
    in_job = {(path.parent / t["notebook_task"]["notebook_path"]).resolve()
              for t in job["tasks"] if "notebook_task" in t}
    lessons = {p.resolve() for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
               if not p.name.startswith("07_")}
    assert in_job == lessons, f"not in the job: {sorted(p.name for p in lessons - in_job)}"

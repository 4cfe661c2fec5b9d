"""The Databricks Asset Bundle, checked without a workspace.

1. ``databricks.yml`` merged with the resource files it includes must be valid against the
   bundle JSON schema of a real Databricks CLI (``tests/fixtures/databricks_bundle_schema.json``,
   what ``databricks bundle schema`` prints; ``make bundle-schema`` rebuilds it, the CLI
   version is in ``databricks_bundle_schema.version``). The schema refuses unknown keys and
   wrong types, so a misspelled setting fails here, not at ``bundle deploy``.
2. What the schema cannot know: every file referenced exists, every ``${var.x}`` is declared,
   the pipeline loads exactly the local runner's sources, the job runs every lesson in order on
   serverless with the course's environment and passes the catalog to each notebook.
3. If the CLI binary is there (``make bundle-schema`` leaves it in build/), ``databricks bundle
   validate --strict`` itself runs, against a stand-in workspace on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml
from jsonschema._keywords import pattern as _pattern_keyword

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "databricks.yml"
SCHEMA = ROOT / "tests" / "fixtures" / "databricks_bundle_schema.json"
SCHEMA_VERSION = SCHEMA.with_suffix(".version")
ENGINE_PACKAGES = {"pyspark", "delta-spark", "pysail", "deltalake", "databricks-connect"}
CLUSTER_KEYS = {"new_cluster", "existing_cluster_id", "job_cluster_key"}
INSTALL_THE_BUNDLE = "--editable ${workspace.file_path}"


# ----- the bundle as the CLI sees it -----------------------------------------------------------
def _resource_files() -> list[Path]:
    bundle = yaml.safe_load(BUNDLE.read_text())
    files: list[Path] = []
    for pattern in bundle.get("include", []):
        files += sorted(ROOT.glob(pattern))
    return files


def _merge(into: dict, other: dict, where: str) -> None:
    """Merge an included file into the root the way the CLI does: mappings merge, and the same
    key defined twice (a resource in two files) is an error."""
    for key, value in other.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, f"{where}.{key}")
        elif key in into:
            raise AssertionError(f"{where}.{key} is defined twice")
        else:
            into[key] = copy.deepcopy(value)


def merged_bundle() -> dict:
    root = yaml.safe_load(BUNDLE.read_text())
    for path in _resource_files():
        _merge(root, yaml.safe_load(path.read_text()), path.name)
    return root


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


# ----- the CLI's JSON schema ---------------------------------------------------------------------
def _python_regex(pattern: str) -> str:
    r"""The schema's patterns are ECMA-262 with Unicode classes (\p{L} letters, \p{N} numbers),
    which Python's `re` lacks: rewrite the two forms the CLI uses, and refuse any other."""
    translated = pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"\p{L}", r"[^\W\d_]")
    if r"\p" in translated:
        raise AssertionError(f"a new Unicode class in the bundle schema, teach _python_regex: {pattern}")
    return translated


def _pattern(validator, pattern, instance, schema):
    yield from _pattern_keyword(validator, _python_regex(pattern), instance, schema)


BundleValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@pytest.fixture(scope="module")
def validator():
    return BundleValidator(json.loads(SCHEMA.read_text()))


def _is_interpolation_branch(error) -> bool:
    """Every setting may also be a `${...}` reference: the schema says so with a `oneOf` whose
    second branch is a string matching a pattern. Its failures only say "not a reference"."""
    return (isinstance(error.schema, dict)
            and str(error.schema.get("pattern", "")).startswith(r"\$\{"))


def _leaves(error):
    if not error.context:
        yield error
        return
    for sub in error.context:
        yield from _leaves(sub)


def problems(validator, instance) -> list[str]:
    """Each schema violation as `path: message`, the interpolation alternatives left out.

    The schema leaves the top level open (`additionalProperties: {}`) while the CLI warns about
    an unknown top-level key and `bundle validate --strict` fails on it: checked here too."""
    known = set(validator.schema["properties"])
    found = [f": unknown top-level key {key!r} (the CLI knows {', '.join(sorted(known))})"
             for key in instance if key not in known]
    for error in validator.iter_errors(instance):
        for leaf in _leaves(error):
            if _is_interpolation_branch(leaf):
                continue
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in leaf.absolute_path)
            found.append(f"{path.lstrip('.')}: {leaf.message}")
    return sorted(set(found))


def test_the_schema_is_the_databricks_clis():
    version = SCHEMA_VERSION.read_text().strip()
    assert re.fullmatch(r"Databricks CLI v\d+\.\d+\.\d+", version), version
    schema = json.loads(SCHEMA.read_text())
    assert {"bundle", "resources", "targets", "variables", "include"} <= set(schema["properties"])
    job = schema["$defs"]["github.com"]["databricks"]["cli"]["bundle"]["config"]["resources.Job"]
    assert job["oneOf"][0]["additionalProperties"] is False     # unknown keys are refused


def test_bundle_is_valid_against_the_cli_schema(validator):
    found = problems(validator, merged_bundle())
    version = SCHEMA_VERSION.read_text().strip()
    assert not found, f"not what {version} accepts:\n" + "\n".join(found)


def _task(bundle, index=0):
    return bundle["resources"]["jobs"]["medallion_course_job"]["tasks"][index]


def _pipeline(bundle):
    return bundle["resources"]["pipelines"]["medallion_pipeline"]


def _misspell_notebook_task(bundle):
    _task(bundle)["notebook_tsk"] = _task(bundle).pop("notebook_task")


def _serverless_as_text(bundle):
    _pipeline(bundle)["serverless"] = "yes"


def _misspell_environment_dependencies(bundle):
    spec = bundle["resources"]["jobs"]["medallion_course_job"]["environments"][0]["spec"]
    spec["dependency"] = spec.pop("dependencies")


def _glob_as_a_list(bundle):
    _pipeline(bundle)["libraries"][0]["glob"]["include"] = ["../notebooks/pipeline/*.py"]


def _unknown_top_level_key(bundle):
    bundle["variable"] = {"catalog": {"default": "x"}}


MISTAKES = [
    (_misspell_notebook_task, "resources.jobs.medallion_course_job.tasks[0]: Additional properties "
                              "are not allowed ('notebook_tsk' was unexpected)"),
    (_serverless_as_text, "resources.pipelines.medallion_pipeline.serverless: 'yes' is not of type "
                          "'boolean'"),
    (_misspell_environment_dependencies, "resources.jobs.medallion_course_job.environments[0].spec: "
                                         "Additional properties are not allowed ('dependency' was "
                                         "unexpected)"),
    (_glob_as_a_list, "resources.pipelines.medallion_pipeline.libraries[0].glob.include: "
                      "['../notebooks/pipeline/*.py'] is not of type 'string'"),
    (_unknown_top_level_key, ": unknown top-level key 'variable' (the CLI knows artifacts, bundle, "
                             "environments, experimental, include, permissions, presets, python, "
                             "resources, run_as, scripts, sync, targets, variables, workspace)"),
]


@pytest.mark.parametrize("mistake, expected",
                         [pytest.param(m, e, id=m.__name__.strip("_")) for m, e in MISTAKES])
def test_the_schema_refuses_a_real_mistake(validator, mistake, expected):
    broken = merged_bundle()
    mistake(broken)
    assert problems(validator, broken) == [expected]


def test_a_reference_is_accepted_where_a_value_is_expected(validator):
    """`${var.x}` in a boolean setting is what the interpolation branch is for."""
    bundle = merged_bundle()
    bundle["variables"]["serverless"] = {"default": True}
    _pipeline(bundle)["serverless"] = "${var.serverless}"
    assert problems(validator, bundle) == []


# ----- what the schema cannot check ----------------------------------------------------------------
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
            referenced += [(path, lib["glob"]["include"]) for lib in spec["libraries"]]
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
    assert all(set(lib) == {"glob"} for lib in spec["libraries"]), "libraries are `glob` entries"
    deployed = [(path.parent / lib["glob"]["include"]).resolve() for lib in spec["libraries"]]
    local = load_spec(ROOT / "notebooks" / "pipeline")
    assert deployed == local.source_files()
    assert (path.parent / spec["root_path"]).resolve() == ROOT     # `import utils` works
    assert spec["catalog"] == "${var.catalog}" and spec["schema"] == "${var.schema}"
    assert spec["serverless"] is True and "clusters" not in spec
    assert "course.landing_dir" in spec["configuration"]
    assert spec["environment"]["dependencies"] == [INSTALL_THE_BUNDLE]


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


def test_job_runs_on_serverless_and_passes_the_catalog_to_every_notebook(resources):
    """No cluster anywhere (Free Edition is serverless only). The job parameters are pushed
    down to every notebook task as widgets, which utils.config reads for the catalog; a task
    parameter of the same name would only be overridden, so none is set."""
    (_, job), = _jobs(resources).values()
    assert "job_clusters" not in job
    assert not [t["task_key"] for t in job["tasks"] if CLUSTER_KEYS & set(t)]
    parameters = {p["name"]: p["default"] for p in job["parameters"]}
    assert parameters == {"catalog": "${var.catalog}", "schema": "${var.schema}"}
    from utils.config import CATALOG_WIDGET

    assert CATALOG_WIDGET in parameters
    overridden = [t["task_key"] for t in job["tasks"]
                  if set(t.get("notebook_task", {}).get("base_parameters", {})) & set(parameters)]
    assert not overridden


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11 (tomllib)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_job_environment_declares_the_course_dependencies(resources):
    """The `course` environment installs this repository's package from the bundle's workspace
    copy, so pyproject.toml stays the one list; the packages it names itself are the ones
    serverless lacks, with pyproject's exact specifiers (they cannot drift)."""
    (_, job), = _jobs(resources).values()
    (environment,) = job["environments"]
    assert environment["environment_key"] == "course"
    spec = environment["spec"]
    assert spec["environment_version"] == "${var.serverless_environment_version}"
    dependencies = spec["dependencies"]
    assert dependencies[-1] == INSTALL_THE_BUNDLE
    runtime = {_name(r): r for r in _pyproject()["project"]["dependencies"]}
    named = dependencies[:-1]
    assert {_name(r) for r in named} >= {"faker"}
    assert [r for r in named if runtime.get(_name(r)) != r] == [], "not pyproject's specifier"


def test_installing_the_package_never_brings_an_engine():
    """Serverless has its own PySpark: a package that pulls pyspark (or anything shipping it)
    into the environment replaces it. The engines are the `engines` extra, which `dev` (what
    `make install` installs) includes, so local setups are unchanged."""
    project = _pyproject()["project"]
    assert not {_name(r) for r in project["dependencies"]} & ENGINE_PACKAGES
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["engines"]} == ENGINE_PACKAGES - {"databricks-connect"}
    assert f"{project['name']}[engines]" in extras["dev"]


def test_serverless_environment_version_has_spark_4(bundle):
    """Environment version 4 is the first on Spark 4 (Column.try_cast, DataFrame.toArrow)."""
    assert int(bundle["variables"]["serverless_environment_version"]["default"]) >= 4


# ----- `databricks bundle validate --strict`, when the CLI has been built ------------------------
CLI = ROOT / "build" / "databricks-cli"


def _cli() -> Path | None:
    version = SCHEMA_VERSION.read_text().split()[-1]
    path = CLI / f"databricks-{version}"
    return path if path.is_file() else None


class _Workspace(BaseHTTPRequestHandler):
    """The three calls `bundle validate` makes: who am I, and does the deploy folder exist."""

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.startswith("/api/2.0/preview/scim/v2/Me"):
            return self._answer({"id": "1", "userName": "learner@example.com", "active": True})
        if self.path.startswith("/api/2.0/workspace/get-status"):
            return self._answer({"object_type": "DIRECTORY", "path": "/", "object_id": 1})
        if self.path.startswith("/api/2.0/workspace/mkdirs"):
            return self._answer({})
        return self._answer({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "stand-in"})

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.skipif(_cli() is None, reason="no Databricks CLI in build/ (make bundle-schema builds it)")
def test_databricks_bundle_validate_strict(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Workspace)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(HOME=str(tmp_path), DATABRICKS_HOST=f"http://127.0.0.1:{server.server_port}",
               DATABRICKS_TOKEN="dapi-stand-in")
    try:
        run = subprocess.run([str(_cli()), "bundle", "validate", "--strict", "-o", "json"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr
    resolved = json.loads(run.stdout)
    job = resolved["resources"]["jobs"]["medallion_course_job"]
    files = resolved["workspace"]["file_path"]
    assert job["environments"][0]["spec"]["dependencies"][-1] == f"--editable {files}"
    tasks = {t["task_key"]: t for t in job["tasks"]}          # the CLI sorts them by key
    assert tasks["n00_environment_check"]["notebook_task"]["notebook_path"] == \
        f"{files}/notebooks/00_environment_check"


def test_every_job_notebook_declares_the_course_environment(resources):
    """A serverless notebook task runs in the notebook's own environment, not the job's: each
    lesson notebook declares the job environment's dependencies in its Databricks metadata
    (``--editable ..``: the repository, one folder up), or it would run without faker."""
    (path, job), = _jobs(resources).values()
    spec = job["environments"][0]["spec"]
    wanted = [("--editable .." if d == INSTALL_THE_BUNDLE else d) for d in spec["dependencies"]]
    version = yaml.safe_load(BUNDLE.read_text())["variables"]["serverless_environment_version"]
    for task in (t for t in job["tasks"] if "notebook_task" in t):
        notebook = path.parent / task["notebook_task"]["notebook_path"]
        metadata = json.loads(notebook.read_text())["metadata"]
        env = metadata.get("application/vnd.databricks.v1+notebook", {}).get("environmentMetadata")
        assert env is not None, f"{notebook.name} declares no Databricks environment"
        assert (env["dependencies"], env["environment_version"]) == (
            wanted, str(version["default"])), notebook.name

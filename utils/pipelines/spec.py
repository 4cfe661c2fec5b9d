"""The pipeline spec: ``pipeline.yml`` in the pipeline folder, shaped like ``spark-pipeline.yml``.

::

    name: medallion_declarative          # also the default schema of its tables
    database: medallion_declarative      # optional ("schema" works too)
    storage: pipelines/medallion         # optional; relative to the data root
    configuration: {spark.sql.shuffle.partitions: "4"}   # optional Spark conf for the run
    libraries:                           # optional; default: every *.py in the folder
      - glob: {include: bronze.py}
      - glob: {include: transformations/**}

Where things go locally (``storage`` = ``<data root>/pipelines/<name>`` unless set)::

    <storage>/tables/<schema>/<table>     Delta tables of streaming tables and materialized views
    <storage>/checkpoints/<flow>/         offsets/ and commits/ of each streaming flow
    <storage>/system/events               the event log (Delta)
    <storage>/system/auto_cdc/<target>    the change events an AUTO CDC flow has applied
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from utils.config import CourseConfig, get_config

SPEC_FILE_NAMES = ("pipeline.yml", "pipeline.yaml", "spark-pipeline.yml", "spark-pipeline.yaml")
ALLOWED_FIELDS = {"name", "storage", "catalog", "database", "schema", "configuration",
                  "libraries"}


class PipelineSpecError(ValueError):
    """The spec file is missing or invalid."""


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    root: Path
    storage: Path
    schema: str
    catalog: str | None = None
    configuration: Mapping[str, str] = field(default_factory=dict)
    libraries: tuple[str, ...] = ()

    def source_files(self) -> list[Path]:
        """The Python (or SQL) files the libraries' globs match, sorted, without duplicates."""
        patterns = self.libraries or ("*.py",)
        found: list[Path] = []
        for pattern in patterns:
            if pattern.endswith("/**"):
                pattern = pattern + "/*"
            matches = sorted(Path(p) for p in globlib.glob(str(self.root / pattern),
                                                            recursive=True))
            for path in matches:
                if (path.is_file() and path.suffix in (".py", ".sql")
                        and "__pycache__" not in path.parts and not path.name.startswith("_")
                        and path not in found):
                    found.append(path)
        if not found:
            raise PipelineSpecError(f"Pipeline '{self.name}': no source files match "
                                    f"{list(patterns)} in {self.root}")
        return found

    # ----- locations ---------------------------------------------------------------------------
    def table_path(self, schema: str, table: str) -> Path:
        return self.storage / "tables" / schema / table

    def checkpoint_dir(self, flow: str) -> Path:
        return self.storage / "checkpoints" / flow

    @property
    def event_log_path(self) -> Path:
        return self.storage / "system" / "events"

    def auto_cdc_state_path(self, target: str) -> Path:
        return self.storage / "system" / "auto_cdc" / target


def find_spec_file(path: Path) -> Path:
    """``path`` itself when it is a file, else the spec file inside the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    for name in SPEC_FILE_NAMES:
        if (path / name).is_file():
            return path / name
    raise PipelineSpecError(f"No pipeline spec ({' or '.join(SPEC_FILE_NAMES[:1])}) in {path}")


def load_spec(path: str | Path, config: CourseConfig | None = None) -> PipelineSpec:
    """Read the spec of the pipeline in folder ``path`` (or the spec file ``path``)."""
    import yaml

    spec_file = find_spec_file(Path(path)).resolve()
    data = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
    return spec_from_dict(data, spec_file.parent, config)


def spec_from_dict(data: Mapping[str, Any], root: Path,
                   config: CourseConfig | None = None) -> PipelineSpec:
    unknown = sorted(set(data) - ALLOWED_FIELDS)
    if unknown:
        raise PipelineSpecError(f"Unknown field(s) in pipeline spec: {', '.join(unknown)}")
    name = data.get("name")
    if not name or not str(name).isidentifier():
        raise PipelineSpecError(f"Pipeline spec needs a 'name' that is an identifier, got {name!r}")
    config = config or get_config()
    storage = Path(data["storage"]) if data.get("storage") else Path("pipelines") / name
    if not storage.is_absolute():
        storage = config.data_root / storage
    libraries = []
    for entry in data.get("libraries") or []:
        try:
            libraries.append(str(entry["glob"]["include"]))
        except (KeyError, TypeError):
            raise PipelineSpecError(f"libraries entries look like {{glob: {{include: ...}}}}, "
                                    f"got {entry!r}") from None
    configuration = {str(k): str(v) for k, v in (data.get("configuration") or {}).items()}
    return PipelineSpec(
        name=str(name),
        root=Path(root).resolve(),
        storage=storage,
        schema=str(data.get("database") or data.get("schema") or name),
        catalog=data.get("catalog"),
        configuration=configuration,
        libraries=tuple(libraries),
    )

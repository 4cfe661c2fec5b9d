"""Incremental sources: how a streaming flow reads only what is new, exactly once, on Sail.

Pipeline code reads incrementally the way it does on Databricks, with ``spark.readStream``:

* ``spark.readStream.format("text").load(<landing folder>)`` - new files of a folder;
* ``spark.readStream.table("bronze_x")`` - rows appended to a table since the last update.

Sail plans such DataFrames but cannot run streaming queries into Delta (engine notes). So before
a streaming flow runs, the runner **rewrites its plan** (the Spark Connect protobuf): each
streaming file read becomes a batch read of the files not yet committed for that flow, and each
streaming table read becomes a batch read of the Parquet files added to that Delta table since
the version the flow last committed. The flow's own transformations stay untouched.

Exactly once, like Structured Streaming's checkpoint: before writing, the runner records the
batch it is about to process in ``<checkpoint>/offsets/<n>.json`` (files, table versions and
the target's Delta version); after the write it records ``commits/<n>.json``. A batch with an
offset but no commit is re-planned on the next run, unless the target's Delta version shows the
write happened, in which case the commit is completed instead of writing twice.

File reads add the Databricks file-metadata column ``_metadata`` (``file_path``, ``file_name``,
``file_size``, ``file_modification_time``) when the query uses it, because Sail supports neither
``_metadata`` nor ``input_file_name()``; the runner drops it from the output like Databricks
hides it.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import unquote

from utils.pipelines.graph import iter_messages
from utils.tables import local_location

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

METADATA_COLUMN = "_metadata"


class IncrementalSourceError(RuntimeError):
    """A streaming source cannot be read incrementally (e.g. its table was rewritten)."""


# ----- checkpoints --------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """Offsets and commits of one streaming flow."""

    directory: Path

    def _batches(self, kind: str) -> dict[int, dict]:
        folder = self.directory / kind
        if not folder.is_dir():
            return {}
        return {int(p.stem): json.loads(p.read_text(encoding="utf-8"))
                for p in folder.glob("*.json")}

    def committed(self) -> dict[int, dict]:
        return self._batches("commits")

    def pending(self) -> tuple[int, dict] | None:
        """The planned but uncommitted batch, if the previous run stopped mid-way."""
        offsets, commits = self._batches("offsets"), self.committed()
        open_ids = sorted(set(offsets) - set(commits))
        return (open_ids[-1], offsets[open_ids[-1]]) if open_ids else None

    def next_batch_id(self) -> int:
        ids = set(self._batches("offsets")) | set(self.committed())
        return max(ids) + 1 if ids else 0

    def committed_files(self, source: str) -> set[str]:
        files: set[str] = set()
        for batch in self.committed().values():
            files.update(batch.get("sources", {}).get(source, {}).get("files", []))
        return files

    def committed_version(self, source: str) -> int | None:
        versions = [b["sources"][source]["end"] for b in self.committed().values()
                    if source in b.get("sources", {}) and "end" in b["sources"][source]]
        return max(versions) if versions else None

    def _write(self, kind: str, batch_id: int, payload: dict) -> None:
        folder = self.directory / kind
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{batch_id}.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / f"{batch_id}.json")   # atomic: a batch file is whole or absent

    def write_offsets(self, batch_id: int, payload: dict) -> None:
        self._write("offsets", batch_id, payload)

    def write_commit(self, batch_id: int, payload: dict) -> None:
        self._write("commits", batch_id, payload)


# ----- Delta log helpers (no Spark needed) ----------------------------------------------------
def delta_version(path: Path) -> int | None:
    """Latest version of the Delta table at ``path`` (None when there is none)."""
    log = Path(path) / "_delta_log"
    versions = [int(p.stem) for p in log.glob("*.json") if p.stem.isdigit()] if log.is_dir() else []
    return max(versions) if versions else None


def delta_actions(path: Path, version: int) -> list[dict]:
    log_file = Path(path) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def rows_added(path: Path, after: int | None, upto: int) -> int | None:
    """Rows added by the commits after version ``after`` up to ``upto`` (from file stats)."""
    total = 0
    start = -1 if after is None else after
    for version in range(start + 1, upto + 1):
        for action in delta_actions(path, version):
            add = action.get("add")
            if add and add.get("dataChange", True):
                stats = json.loads(add.get("stats") or "{}")
                if "numRecords" not in stats:
                    return None
                total += int(stats["numRecords"])
    return total


# ----- file listing -------------------------------------------------------------------------
def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def list_files(paths: list[str], options: dict[str, str]) -> list[Path]:
    """Files a file source would read: like Spark, hidden (``_``/``.``) names are skipped.

    Folders are listed recursively when ``recursiveFileLookup`` is true (the landing zone has
    one sub-folder per day); ``pathGlobFilter`` filters file names.
    """
    recursive = str(options.get("recursiveFileLookup", "false")).lower() == "true"
    name_filter = options.get("pathGlobFilter")
    found: list[Path] = []
    for pattern in paths:
        pattern = local_location(pattern)
        matches = [Path(p) for p in globlib.glob(pattern)] if globlib.has_magic(pattern) \
            else [Path(pattern)]
        for match in matches:
            if match.is_file():
                candidates = [] if _hidden(match.name) and match != Path(pattern) else [match]
            elif match.is_dir():
                walker = match.rglob("*") if recursive else match.iterdir()
                candidates = [p for p in walker if p.is_file()
                              and not any(_hidden(part) for part in p.relative_to(match).parts)]
            else:
                candidates = []
            for file in candidates:
                if name_filter and not fnmatch.fnmatch(file.name, name_filter):
                    continue
                if file not in found:
                    found.append(file)
    return sorted(found)


# ----- plan rewriting ---------------------------------------------------------------------------
@dataclass
class PlannedBatch:
    """What one run of a streaming flow reads: per source, the new files or table versions."""

    sources: dict[str, dict] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return all(not s.get("files") and s.get("start") == s.get("end")
                   for s in self.sources.values())


def _file_source_key(read: Any) -> str:
    ds = read.data_source
    return f"files:{ds.format or 'parquet'}:" + ",".join(ds.paths)


def _replace(target: Any, new_root: Any) -> None:
    """Put relation ``new_root`` where ``target`` is, keeping target's plan id (column refs)."""
    common = type(target.common)()
    common.CopyFrom(target.common)
    target.CopyFrom(new_root)
    target.common.CopyFrom(common)


def _file_read(spark: "SparkSession", read: Any, files: list[Path],
               with_metadata: bool) -> "DataFrame":
    from pyspark.sql import functions as F

    ds = read.data_source
    options = dict(ds.options)

    def one(path: Path) -> "DataFrame":
        reader = spark.read.format(ds.format or "parquet").options(**options)
        if ds.schema:
            reader = reader.schema(ds.schema)
        df = reader.load(str(path))
        if with_metadata:
            stat = path.stat()
            df = df.withColumn(METADATA_COLUMN, F.struct(
                F.lit(str(path)).alias("file_path"),
                F.lit(path.name).alias("file_name"),
                F.lit(stat.st_size).cast("bigint").alias("file_size"),
                F.lit(datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc))
                .cast("timestamp").alias("file_modification_time"),
            ))
        return df

    frames = [one(p) for p in files]
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def _empty_file_read(spark: "SparkSession", read: Any, known_files: list[Path],
                     with_metadata: bool) -> "DataFrame":
    ds = read.data_source
    if known_files:  # same schema as real batches: read one file, keep no rows
        return _file_read(spark, read, known_files[:1], with_metadata).limit(0)
    schema = ds.schema or ("value STRING" if (ds.format or "") == "text" else "")
    if not schema:
        raise IncrementalSourceError(
            f"No files yet in {', '.join(ds.paths)} and no schema to read them with: "
            "give the streaming read a .schema(...)")
    if with_metadata:
        schema += (f", {METADATA_COLUMN} STRUCT<file_path: STRING, file_name: STRING, "
                   "file_size: BIGINT, file_modification_time: TIMESTAMP>")
    return spark.createDataFrame([], schema)


def _table_read(spark: "SparkSession", path: Path, start: int | None, end: int,
                name: str) -> "DataFrame":
    """Rows appended to the Delta table at ``path`` after version ``start`` up to ``end``."""
    from pyspark.sql import functions as F

    snapshot = spark.read.format("delta").option("versionAsOf", end).load(str(path))
    if start is None:
        return snapshot
    added: list[dict] = []
    for version in range(start + 1, end + 1):
        for action in delta_actions(path, version):
            if "remove" in action and action["remove"].get("dataChange", True):
                raise IncrementalSourceError(
                    f"'{name}' was updated or overwritten at version {version}, so it cannot "
                    "be read as a stream (streaming reads need an append-only source): run a "
                    "full refresh")
            if "add" in action and action["add"].get("dataChange", True):
                added.append(action["add"])
    if not added:
        return snapshot.limit(0)
    schema = snapshot.schema
    groups: dict[tuple, list[str]] = {}
    for add in added:
        key = tuple(sorted((add.get("partitionValues") or {}).items()))
        groups.setdefault(key, []).append(str(Path(path) / unquote(add["path"])))
    frames = []
    for key, files in sorted(groups.items()):
        partitions = dict(key)
        data_fields = [f for f in schema.fields if f.name not in partitions]
        from pyspark.sql.types import StructType

        df = spark.read.schema(StructType(data_fields)).parquet(*files)
        for col_name, value in partitions.items():
            data_type = schema[col_name].dataType
            df = df.withColumn(col_name, F.lit(value).cast(data_type))
        frames.append(df.select(*schema.fieldNames()))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def streaming_reads(plan: Any) -> Iterator[tuple[Any, Any]]:
    """(relation message, its ``read``) for every streaming read in a Spark Connect plan,
    listed up front so a caller may replace the messages while iterating."""
    for message in list(iter_messages(plan.root)):
        if message.DESCRIPTOR.full_name != "spark.connect.Relation":
            continue
        if message.WhichOneof("rel_type") == "read" and message.read.is_streaming:
            yield message, message.read


def rewrite_streaming_reads(df: "DataFrame", spark: "SparkSession", checkpoint: Checkpoint,
                            resolve_table: Callable[[str], tuple[str, Path | None]],
                            replan: dict | None = None) -> tuple["DataFrame", PlannedBatch]:
    """``df`` with every streaming read replaced by a batch read of what is new.

    ``resolve_table(name)`` gives ``(key, delta path or None)``; a name without a Delta path
    (a temporary view) is read in batch as it is. ``replan`` is a pending batch's sources, to
    re-read exactly the same files/versions after an interrupted run.
    """
    from pyspark.sql.connect.dataframe import DataFrame

    plan = df._plan.to_proto(spark.client)
    batch = PlannedBatch()
    uses_metadata = METADATA_COLUMN in str(plan)
    for message, read in streaming_reads(plan):
        if read.HasField("data_source"):
            key = _file_source_key(read)
            all_files = list_files(list(read.data_source.paths), dict(read.data_source.options))
            if replan and key in replan:
                wanted = set(replan[key].get("files", []))
                new = [f for f in all_files if str(f) in wanted]
            else:
                done = checkpoint.committed_files(key)
                new = [f for f in all_files if str(f) not in done]
            batch.sources[key] = {"files": [str(f) for f in new]}
            if new:
                replacement = _file_read(spark, read, new, uses_metadata)
            else:
                replacement = _empty_file_read(spark, read, all_files, uses_metadata)
        else:
            name = read.named_table.unparsed_identifier
            key, path = resolve_table(name)
            if path is None:
                replacement = spark.table(name)
            else:
                source_key = f"table:{key}"
                end = delta_version(path)
                if end is None:
                    raise IncrementalSourceError(f"'{name}' has no data yet")
                if replan and source_key in replan:
                    start, end = replan[source_key]["start"], replan[source_key]["end"]
                else:
                    start = checkpoint.committed_version(source_key)
                batch.sources[source_key] = {"start": start, "end": end}
                replacement = _table_read(spark, path, start, end, name) if start != end \
                    else spark.read.format("delta").load(str(path)).limit(0)
        new_root = replacement._plan.to_proto(spark.client).root
        _replace(message, new_root)

    return DataFrame(_ProtoPlan(plan.root), spark), batch


def schema_only(df: "DataFrame", spark: "SparkSession") -> "DataFrame":
    """``df`` with every streaming read replaced by an empty batch read of the same schema.

    Sail cannot analyze a streaming file read that uses ``_metadata``; the pipeline needs the
    schema of such a flow (to analyze the flows reading it) before running anything.
    """
    from pyspark.sql.connect.dataframe import DataFrame

    plan = df._plan.to_proto(spark.client)
    uses_metadata = METADATA_COLUMN in str(plan)
    for message, read in streaming_reads(plan):
        if read.HasField("data_source"):
            files = list_files(list(read.data_source.paths), dict(read.data_source.options))
            replacement = _empty_file_read(spark, read, files, uses_metadata)
        else:
            replacement = spark.table(read.named_table.unparsed_identifier).limit(0)
        _replace(message, replacement._plan.to_proto(spark.client).root)
    return DataFrame(_ProtoPlan(plan.root), spark)


def _proto_plan_class():
    from pyspark.sql.connect.plan import LogicalPlan

    class ProtoPlan(LogicalPlan):
        """A logical plan that is a ready-made protobuf relation (a rewritten plan)."""

        def __init__(self, relation: Any) -> None:
            super().__init__(None)
            self._relation = relation

        def plan(self, session: Any) -> Any:
            copy = type(self._relation)()
            copy.CopyFrom(self._relation)
            return copy

    return ProtoPlan


def _ProtoPlan(relation: Any) -> Any:  # noqa: N802 - reads like the class it builds
    global _PROTO_PLAN
    if _PROTO_PLAN is None:
        _PROTO_PLAN = _proto_plan_class()
    return _PROTO_PLAN(relation)


_PROTO_PLAN = None

"""The dataflow graph: which flow reads which dataset, checked before anything runs.

A flow's inputs are not declared: like Databricks, we find them in the query. Calling a flow's
function returns a lazy Spark Connect DataFrame whose plan (a protobuf tree) names every table
it reads: ``spark.read.table(x)`` / ``spark.readStream.table(x)`` appear as ``read.named_table``
nodes, and ``spark.sql(text)`` keeps its SQL text, which sqlglot parses for table references
(CTE names excluded). Names are matched case-insensitively; ``<pipeline schema>.t`` is ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from utils.expectations import Expectation
from utils.pipelines.registry import LocalRegistry, output_kind

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class PipelineGraphError(ValueError):
    """The graph is invalid: missing inputs, cycles, flows without a dataset, ..."""


# ----- input discovery ----------------------------------------------------------------------
def _strip(part: str) -> str:
    return part.strip().strip("`").lower()


def split_name(name: str) -> list[str]:
    """``cat.`My Schema`.t`` -> ['cat', 'my schema', 't'] (lower case, backticks removed)."""
    parts, current, quoted = [], "", False
    for char in name:
        if char == "`":
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [_strip(p) for p in parts]


def iter_messages(message: Any) -> Iterator[Any]:
    """Every protobuf message in the tree below ``message`` (itself included), depth first."""
    yield message
    for descriptor, value in message.ListFields():
        if descriptor.type != descriptor.TYPE_MESSAGE:
            continue
        repeated = (descriptor.is_repeated if hasattr(descriptor, "is_repeated")
                    else descriptor.label == descriptor.LABEL_REPEATED)
        if repeated:
            if descriptor.message_type.GetOptions().map_entry:
                continue
            for item in value:
                yield from iter_messages(item)
        else:
            yield from iter_messages(value)


@dataclass(frozen=True)
class TableReference:
    """One table a query reads: its name as written and whether it is read as a stream."""

    name: str
    streaming: bool = False


def sql_table_references(sql_text: str) -> list[str]:
    """Tables a SQL query reads (sqlglot, Spark dialect), CTE names excluded, sorted."""
    import sqlglot
    from sqlglot import exp

    found: list[str] = []
    for statement in sqlglot.parse(sql_text, read="spark"):
        if statement is None:
            continue
        ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
        for table in statement.find_all(exp.Table):
            if not table.name:
                continue
            parts = [p for p in (table.catalog, table.db, table.name) if p]
            name = ".".join(parts)
            if len(parts) == 1 and name.lower() in ctes:
                continue
            if name not in found:
                found.append(name)
    return sorted(found)


def plan_references(df: "DataFrame", spark: "SparkSession") -> list[TableReference]:
    """Tables read by ``df``: named-table reads in its plan plus tables of its SQL text."""
    plan = df._plan.to_proto(spark.client)
    found: list[TableReference] = []
    for message in iter_messages(plan):
        kind = message.DESCRIPTOR.full_name
        if kind == "spark.connect.Read" and message.HasField("named_table"):
            ref = TableReference(message.named_table.unparsed_identifier, message.is_streaming)
        elif kind == "spark.connect.SQL":
            for name in sql_table_references(message.query):
                ref = TableReference(name, False)
                if ref not in found:
                    found.append(ref)
            continue
        else:
            continue
        if ref not in found:
            found.append(ref)
    return found


def streaming_file_sources(df: "DataFrame", spark: "SparkSession") -> list[str]:
    """Paths of the streaming file reads in ``df``'s plan (empty when it has none)."""
    plan = df._plan.to_proto(spark.client)
    return [path for m in iter_messages(plan)
            if m.DESCRIPTOR.full_name == "spark.connect.Read" and m.is_streaming
            and m.HasField("data_source") for path in (list(m.data_source.paths) or ["?"])]


def has_streaming_file_source(df: "DataFrame", spark: "SparkSession") -> bool:
    return bool(streaming_file_sources(df, spark))


class _ReferenceRecorder:
    """Record the tables a flow function names while it runs (``read.table``, ``readStream
    .table``, ``spark.table``, ``spark.sql``), even if the function fails half-way.

    A flow function may run an action while it builds its query (e.g. a KPI that first looks up
    the latest date in its input). On a first run that input does not exist yet, so the call
    fails before a plan exists; the names it asked for before failing are still its inputs, and
    the flow is analyzed again when it runs, after its inputs were written.
    """

    def __init__(self) -> None:
        self.references: list[TableReference] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def _add(self, ref: TableReference) -> None:
        if ref not in self.references:
            self.references.append(ref)

    def __enter__(self) -> "_ReferenceRecorder":
        from pyspark.sql.connect.readwriter import DataFrameReader
        from pyspark.sql.connect.session import SparkSession
        from pyspark.sql.connect.streaming.readwriter import DataStreamReader

        recorder = self

        def wrap(cls: Any, method: str, make_refs: Any) -> None:
            original = getattr(cls, method)

            def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    for ref in make_refs(*args, **kwargs):
                        recorder._add(ref)
                except Exception:  # noqa: BLE001 - recording must never break the flow
                    pass
                return original(self, *args, **kwargs)

            self._saved.append((cls, method, original))
            setattr(cls, method, patched)

        wrap(DataFrameReader, "table", lambda name, *a, **k: [TableReference(name, False)])
        wrap(DataStreamReader, "table", lambda name, *a, **k: [TableReference(name, True)])
        wrap(SparkSession, "table", lambda name, *a, **k: [TableReference(name, False)])
        wrap(SparkSession, "sql", lambda query, *a, **k: [
            TableReference(n, False) for n in sql_table_references(query)])
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, method, original in reversed(self._saved):
            setattr(cls, method, original)
        self._saved.clear()


# ----- the graph ------------------------------------------------------------------------------
@dataclass
class FlowNode:
    """One flow: its target dataset, the datasets it reads, how it runs."""

    name: str
    target: str                     # dataset key
    kind: str                       # "query" or "auto_cdc"
    inputs: list[str] = field(default_factory=list)          # dataset keys (pipeline or external)
    streaming_inputs: set[str] = field(default_factory=set)  # keys read with readStream
    expectations: list[Expectation] = field(default_factory=list)
    definition: Any = None          # the pyspark Flow / AutoCdcFlow
    analysis_error: str | None = None
    streaming: bool = False         # reads at least one source with readStream
    deferred: bool = False          # query could not be planned before its inputs exist
    file_sources: list[str] = field(default_factory=list)   # paths read with readStream


@dataclass
class DatasetNode:
    name: str                       # key (lower case, unqualified when in the pipeline schema)
    kind: str                       # st / mv / view / sink / external
    output: Any = None
    flows: list[str] = field(default_factory=list)


@dataclass
class PipelineGraph:
    datasets: dict[str, DatasetNode]
    flows: dict[str, FlowNode]
    order: list[str] = field(default_factory=list)   # flow names, dependencies first

    def upstream_datasets(self, dataset: str) -> list[str]:
        inputs: list[str] = []
        for flow in self.datasets[dataset].flows:
            for name in self.flows[flow].inputs:
                if name not in inputs:
                    inputs.append(name)
        return inputs

    def layers(self) -> dict[str, int]:
        """Depth of every dataset: 0 for sources, 1 + max(depth of inputs) otherwise."""
        depth: dict[str, int] = {}

        def visit(name: str) -> int:
            if name not in depth:
                depth[name] = 0
                ups = self.upstream_datasets(name) if name in self.datasets else []
                depth[name] = 1 + max((visit(u) for u in ups), default=-1)
            return depth[name]

        for name in self.datasets:
            visit(name)
        return depth

    def describe(self) -> str:
        """Flows in execution order with what they read (deterministic text)."""
        lines = []
        for i, flow_name in enumerate(self.order, 1):
            flow = self.flows[flow_name]
            kind = self.datasets[flow.target].kind
            reads = ", ".join(flow.inputs) or "files"
            lines.append(f"{i:2d}. {flow.target} [{kind}] <- {reads}")
        return "\n".join(lines)


class _Resolver:
    def __init__(self, schema: str, defined: Iterable[str]) -> None:
        self.schema = schema.lower()
        self.defined = set(defined)

    def key(self, name: str) -> str:
        parts = split_name(name)
        if len(parts) >= 2 and parts[-2] == self.schema:
            return parts[-1]
        if len(parts) == 1:
            return parts[0]
        return ".".join(parts[-2:])


class _Placeholders:
    """Empty temporary views standing in for datasets that do not exist yet, so a flow whose
    function needs its inputs' schemas (``df.columns``) can be analyzed before the first run,
    as Databricks analyzes a pipeline in dependency order. Dropped after the analysis."""

    def __init__(self, spark: "SparkSession", table_exists) -> None:
        self.spark = spark
        self.table_exists = table_exists or (lambda name: False)
        self.names: list[str] = []
        self.available: set[str] = set()

    def resolvable(self, key: str) -> bool:
        return key in self.available or bool(self.table_exists(key))

    def add(self, key: str, df: "DataFrame") -> None:
        if key in self.available:
            return
        if "." in key or self.table_exists(key):
            self.available.add(key)
            return   # an existing table resolves by itself
        from utils.pipelines.sources import METADATA_COLUMN, schema_only

        try:
            batch = schema_only(df, self.spark)
            schema = (batch.drop(METADATA_COLUMN) if METADATA_COLUMN in batch.columns
                      else batch).schema
        except Exception:  # noqa: BLE001 - readers of this dataset are analyzed when they run
            return
        self.spark.createDataFrame([], schema).createOrReplaceTempView(key)
        self.names.append(key)
        self.available.add(key)

    def drop(self) -> None:
        for name in self.names:
            self.spark.catalog.dropTempView(name)
        self.names.clear()


def _cdc_output(cdc: Any, source: "DataFrame") -> "DataFrame":
    """An (empty) frame with the columns an AUTO CDC target gets from ``source``."""
    from utils.pipelines.autocdc import END_AT, START_AT, _quote, output_columns

    columns = [source[_quote(c)] for c in output_columns(cdc, source)]
    if str(cdc.stored_as_scd_type or 1) == "2":
        columns += [cdc.sequence_by.alias(START_AT), cdc.sequence_by.alias(END_AT)]
    return source.select(*columns).limit(0)


def _analyze_flows(registry: LocalRegistry, spark: "SparkSession", resolver: "_Resolver",
                   datasets: dict[str, "DatasetNode"], flows: dict[str, "FlowNode"],
                   problems: list[str], placeholders: _Placeholders) -> None:
    """Find each flow's inputs, in rounds: a flow whose function fails because an input does
    not exist yet is retried once that input's schema is known (from its own analysis)."""
    pending = list(registry.flows)
    cdc_pending = list(registry.auto_cdc_flows)
    analyzed: dict[str, "DataFrame"] = {}
    attempts: dict[str, tuple] = {}
    while pending or cdc_pending:
        progress = False
        for flow in list(pending):
            recorder = _ReferenceRecorder()
            try:
                with recorder:
                    df = flow.func()
                if df is None or not hasattr(df, "_plan"):
                    raise TypeError(f"it returned {type(df).__name__}, not a DataFrame")
                references = plan_references(df, spark)
                file_stream = streaming_file_sources(df, spark)
            except Exception as err:  # noqa: BLE001 - retried, deferred or reported below
                error = f"{type(err).__name__}: {(str(err).strip() or '?').splitlines()[0][:300]}"
                attempts[flow.name] = (recorder.references, error)
                waiting = [r for r in recorder.references if resolver.key(r.name) in datasets
                           and not placeholders.resolvable(resolver.key(r.name))]
                if waiting:
                    continue              # an input is not known yet: next round
                pending.remove(flow)
                progress = True
                _add_flow(flows, datasets, resolver, flow, registry, recorder.references, [],
                          error, problems)
                continue
            pending.remove(flow)
            progress = True
            extra = [r for r in recorder.references if r not in references]
            node = _add_flow(flows, datasets, resolver, flow, registry, references + extra,
                             file_stream, None, problems)
            analyzed[node.target] = df
            if node.target in datasets:
                placeholders.add(node.target, df)
        for cdc in list(cdc_pending):
            source = resolver.key(cdc.source)
            if source not in analyzed and any(resolver.key(f.target) == source
                                              for f in pending):
                continue      # its source's schema may still become known
            cdc_pending.remove(cdc)
            progress = True
            name = cdc.name or cdc.target
            node = FlowNode(name, resolver.key(cdc.target), "auto_cdc", [source], {source},
                            definition=cdc, streaming=True)
            flows[name] = node
            if source in analyzed:
                try:
                    output = _cdc_output(cdc, analyzed[source])
                    placeholders.add(node.target, output)
                    analyzed[node.target] = output
                except Exception:  # noqa: BLE001 - the flow reports it when it runs
                    pass
        if not progress:   # inputs that never become known: report what each flow needed
            for flow in pending:
                refs, error = attempts.get(flow.name, ([], "not analyzed"))
                _add_flow(flows, datasets, resolver, flow, registry, refs, [], error, problems)
            for cdc in cdc_pending:
                source = resolver.key(cdc.source)
                flows[cdc.name or cdc.target] = FlowNode(
                    cdc.name or cdc.target, resolver.key(cdc.target), "auto_cdc", [source],
                    {source}, definition=cdc, streaming=True)
            break


def _add_flow(flows: dict, datasets: dict, resolver: "_Resolver", flow: Any,
              registry: LocalRegistry, references: list[TableReference],
              file_sources: list[str], error: str | None, problems: list[str]) -> "FlowNode":
    node = FlowNode(flow.name, resolver.key(flow.target), "query",
                    expectations=registry.expectations.get(flow.name, []), definition=flow)
    if error is not None:
        if any(resolver.key(r.name) in datasets for r in references):
            node.deferred = True      # analyzed again when it runs, after its inputs exist
        else:
            node.analysis_error = error
            problems.append(f"Flow '{flow.name}' could not be analyzed ({error})")
    for ref in references:
        key = resolver.key(ref.name)
        if key not in node.inputs:
            node.inputs.append(key)
        if ref.streaming:
            node.streaming_inputs.add(key)
    node.file_sources = list(file_sources)
    node.streaming = bool(node.streaming_inputs) or bool(file_sources)
    flows[node.name] = node
    return node


def build_graph(registry: LocalRegistry, spark: "SparkSession", schema: str,
                table_exists=None) -> PipelineGraph:
    """Resolve every flow's inputs and check the graph; raise PipelineGraphError on problems.

    ``table_exists(name)`` says whether a name that is not a pipeline dataset exists in the
    catalog (an external input such as a table written by the imperative notebooks).
    """
    resolver = _Resolver(schema, [])
    datasets: dict[str, DatasetNode] = {}
    for output in registry.outputs.values():
        key = resolver.key(output.name)
        datasets[key] = DatasetNode(key, output_kind(output), output)
    resolver.defined = set(datasets)

    flows: dict[str, FlowNode] = {}
    problems: list[str] = []
    placeholders = _Placeholders(spark, table_exists)
    try:
        _analyze_flows(registry, spark, resolver, datasets, flows, problems, placeholders)
    finally:
        placeholders.drop()
    order_hint = [f.name for f in registry.flows]
    flows = {name: flows[name] for name in order_hint if name in flows} | {
        name: node for name, node in flows.items() if name not in order_hint}

    for flow in flows.values():
        if flow.target not in datasets:
            problems.append(f"Flow '{flow.name}' writes to '{flow.target}', which is not a "
                            "dataset of the pipeline (define it with @dp.table, "
                            "@dp.materialized_view or dp.create_streaming_table)")
            continue
        datasets[flow.target].flows.append(flow.name)
        target = datasets[flow.target]
        if flow.kind == "query" and flow.analysis_error is None:
            if target.kind == "st" and not flow.streaming:
                problems.append(f"Flow '{flow.name}' writes to streaming table '{flow.target}' "
                                "but reads nothing as a stream (read with spark.readStream, or "
                                "make it a @dp.materialized_view)")
            if target.kind == "mv" and flow.streaming:
                problems.append(f"Materialized view '{flow.target}' reads a stream: read with "
                                "spark.read (a materialized view is recomputed in batch)")
        if flow.kind == "auto_cdc" and target.kind != "st":
            problems.append(f"AUTO CDC flow '{flow.name}' must target a streaming table, "
                            f"'{flow.target}' is a {target.kind}")
        for name in flow.inputs:
            if name in datasets:
                continue
            exists = table_exists(name) if table_exists else False
            if not exists:
                problems.append(f"Flow '{flow.name}' reads '{name}', which is neither a dataset "
                                "of this pipeline nor an existing table")
            elif name not in datasets:
                datasets[name] = DatasetNode(name, "external")
    for name, node in datasets.items():
        if node.kind in ("mv", "view") and len(node.flows) > 1:
            problems.append(f"{'Materialized view' if node.kind == 'mv' else 'View'} '{name}' "
                            f"has {len(node.flows)} flows ({', '.join(node.flows)}); it needs one")
        if node.kind not in ("external",) and not node.flows:
            problems.append(f"Dataset '{name}' has no flow writing to it")
    if problems:
        raise PipelineGraphError("Invalid pipeline graph:\n  - " + "\n  - ".join(problems))

    graph = PipelineGraph(datasets, flows)
    graph.order = topological_order(graph)
    return graph


def topological_order(graph: PipelineGraph) -> list[str]:
    """Flow names so every flow runs after the flows writing the datasets it reads.

    Ties keep the order of definition (deterministic). A cycle raises PipelineGraphError naming
    the datasets on it, e.g. ``a -> b -> a``.
    """
    definition_order = list(graph.flows)
    dataset_deps: dict[str, list[str]] = {name: graph.upstream_datasets(name)
                                          for name, node in graph.datasets.items()
                                          if node.kind != "external"}
    # cycle detection on datasets (DFS with colours), reporting the path
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for up in dataset_deps.get(name, []):
            if state.get(up) == 1:
                cycle = stack[stack.index(up):] + [up]
                raise PipelineGraphError(
                    "Invalid pipeline graph: cycle between datasets "
                    + " -> ".join(reversed(cycle)))
            if state.get(up) is None:
                visit(up)
        stack.pop()
        state[name] = 2

    for name in dataset_deps:
        if state.get(name) is None:
            visit(name)

    done: set[str] = set()
    order: list[str] = []
    remaining = list(definition_order)
    while remaining:
        for flow_name in remaining:
            flow = graph.flows[flow_name]
            writers = [w for up in flow.inputs if up in graph.datasets
                       for w in graph.datasets[up].flows]
            if all(w in done for w in writers):
                order.append(flow_name)
                done.add(flow_name)
                remaining.remove(flow_name)
                break
        else:  # pragma: no cover - a dataset-level cycle was reported above
            raise PipelineGraphError("Invalid pipeline graph: cycle between flows "
                                     + ", ".join(remaining))
    return order

"""A picture of the pipeline graph: layers left to right, datasets as boxes, rows on edges.

Column 0 holds the file sources (folders a streaming table reads), then each dataset sits one
column right of its deepest input. Within a column, boxes are ordered by the average height of
their inputs (fewer crossing lines). The edge from a flow's first input is drawn solid and,
after a run, labelled with the rows the flow wrote; further inputs (lookups, joins) are thin
dashed lines, so the main path of each table stays readable.
"""

from __future__ import annotations

import glob as globlib
from pathlib import PurePosixPath
from typing import Mapping

from utils.pipelines.graph import PipelineGraph
from utils.tables import local_location

KIND_STYLE = {  # face colour and legend label of each node kind
    "files": ("#ffffff", "landing files"),
    "external": ("#d9d9d9", "table outside the pipeline"),
    "st": ("#cd7f32", "streaming table"),
    "view": ("#f2f2f2", "temporary view"),
    "mv": ("#ffd700", "materialized view"),
    "sink": ("#9ecae1", "sink"),
}


def source_label(path: str) -> str:
    """A short name for a file source: its last two path parts without wildcards."""
    parts = [p for p in PurePosixPath(local_location(path)).parts
             if not globlib.has_magic(p) and p != "/"]
    return "/".join(parts[-2:]) if parts else path


def lineage_edges(graph: PipelineGraph) -> list[tuple[str, str, bool]]:
    """(upstream, dataset, is_main_input) for every edge, file sources included."""
    edges: list[tuple[str, str, bool]] = []
    for name, node in graph.datasets.items():
        for flow_name in node.flows:
            flow = graph.flows[flow_name]
            ups = [f"files:{source_label(p)}" for p in flow.file_sources] + list(flow.inputs)
            for i, up in enumerate(ups):
                if not any(e[0] == up and e[1] == name for e in edges):
                    edges.append((up, name, i == 0))
    return edges


def lineage_layout(graph: PipelineGraph) -> dict[str, tuple[int, int]]:
    """(column, row) of every node: columns by depth, rows ordered to limit crossings."""
    edges = lineage_edges(graph)
    ups: dict[str, list[str]] = {}
    for up, down, _ in edges:
        ups.setdefault(down, []).append(up)
    depth: dict[str, int] = {}

    def visit(name: str, seen: tuple = ()) -> int:
        if name not in depth:
            parents = [u for u in ups.get(name, []) if u not in seen]
            depth[name] = 1 + max((visit(u, seen + (name,)) for u in parents), default=-1)
        return depth[name]

    nodes = list(dict.fromkeys([e[0] for e in edges] + list(graph.datasets)))
    for name in nodes:
        visit(name)
    columns: dict[int, list[str]] = {}
    for name in nodes:
        columns.setdefault(depth[name], []).append(name)
    row: dict[str, float] = {}
    for column in sorted(columns):
        names = columns[column]
        if column == 0:
            names.sort()
        else:  # barycentre of the inputs' rows, then name: stable and readable
            names.sort(key=lambda n: (sum(row[u] for u in ups.get(n, []) if u in row)
                                      / max(1, len([u for u in ups.get(n, []) if u in row])), n))
        for i, name in enumerate(names):
            row[name] = i
    return {name: (depth[name], int(row[name])) for name in nodes}


def draw_lineage(graph: PipelineGraph, path, rows: Mapping[str, int | None] | None = None,
                 title: str | None = None):
    """Save the graph as a PNG at ``path``; ``rows`` (dataset -> rows written) labels edges."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = rows or {}
    layout = lineage_layout(graph)
    edges = lineage_edges(graph)
    n_columns = max(c for c, _ in layout.values()) + 1
    per_column: dict[int, int] = {}
    for column, _ in layout.values():
        per_column[column] = per_column.get(column, 0) + 1
    height = max(per_column.values())
    x_step, y_step = 3.4, 1.0

    def position(name: str) -> tuple[float, float]:
        column, row = layout[name]
        offset = (height - per_column[column]) / 2
        return column * x_step, -(row + offset) * y_step

    fig, ax = plt.subplots(figsize=(2.2 + 2.6 * n_columns, 1.0 + 0.42 * height))
    half = 1.25
    for up, down, main in sorted(edges, key=lambda e: e[2]):   # main edges drawn on top
        (x0, y0), (x1, y1) = position(up), position(down)
        ax.annotate("", xy=(x1 - half, y1), xytext=(x0 + half, y0),
                    arrowprops=dict(arrowstyle="-|>", color="#444444" if main else "#aaaaaa",
                                    lw=1.1 if main else 0.6, linestyle="-" if main else "--",
                                    shrinkA=0, shrinkB=0, mutation_scale=8))
        count = rows.get(down)
        if main and count is not None:
            t = 0.72
            ax.text(x0 + half + t * (x1 - x0 - 2 * half), y0 + t * (y1 - y0), f"{count:,}",
                    fontsize=6.5, ha="center", va="center", color="#222222",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="#cccccc", lw=0.4))
    kinds = set()
    for name in layout:
        kind = "files" if name.startswith("files:") else graph.datasets[name].kind
        kinds.add(kind)
        label = name.removeprefix("files:")
        x, y = position(name)
        ax.text(x, y, label, ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.3", fc=KIND_STYLE.get(kind, KIND_STYLE["external"])[0],
                          ec="#333333", lw=0.7, ls="--" if kind == "files" else "-"))
    ax.legend(handles=[Patch(fc=KIND_STYLE[k][0], ec="#333333", label=KIND_STYLE[k][1])
                       for k in KIND_STYLE if k in kinds],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(kinds), fontsize=7,
              frameon=False)
    ax.set_xlim(-half - 0.3, (n_columns - 1) * x_step + half + 0.3)
    ax.set_ylim(-(height - 1) * y_step - 0.6, 0.6)
    ax.axis("off")
    if title:
        ax.set_title(title + (" (rows written by the last update on the edges)" if rows else ""),
                     fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

"""A picture of the pipeline graph: layers left to right, datasets as boxes, rows on edges."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from utils.pipelines.graph import PipelineGraph

KIND_STYLE = {  # face colour and label of each dataset kind
    "external": ("#d9d9d9", "table (outside)"),
    "st": ("#cd7f32", "streaming table"),
    "view": ("#f2f2f2", "temporary view"),
    "mv": ("#ffd700", "materialized view"),
    "sink": ("#9ecae1", "sink"),
}


def draw_lineage(graph: PipelineGraph, path: Path, rows: Mapping[str, int | None] | None = None,
                 title: str | None = None) -> Path:
    """Save the graph as a PNG at ``path``; ``rows`` (dataset -> rows written) labels edges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = rows or {}
    depth = graph.layers()
    columns: dict[int, list[str]] = {}
    for name in graph.datasets:  # definition order inside a layer keeps the picture stable
        columns.setdefault(depth[name], []).append(name)
    height = max(len(v) for v in columns.values())
    position = {}
    for layer, names in columns.items():
        for i, name in enumerate(sorted(names)):
            position[name] = (layer * 3.2, -(i - (len(names) - 1) / 2) * 1.1)

    fig, ax = plt.subplots(figsize=(3.0 + 3.0 * len(columns), 1.2 + 0.75 * height))
    for name in graph.datasets:
        for up in graph.upstream_datasets(name):
            (x0, y0), (x1, y1) = position[up], position[name]
            ax.annotate("", xy=(x1 - 1.05, y1), xytext=(x0 + 1.05, y0),
                        arrowprops=dict(arrowstyle="->", color="#555555", lw=1))
            if rows.get(name) is not None:
                ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, f"{rows[name]:,}", fontsize=7,
                        ha="center", color="#333333",
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for name, (x, y) in position.items():
        colour = KIND_STYLE.get(graph.datasets[name].kind, KIND_STYLE["external"])[0]
        ax.text(x, y, name, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.35", fc=colour, ec="#333333", lw=0.8))
    kinds = sorted({node.kind for node in graph.datasets.values()})
    ax.legend(handles=[Patch(fc=KIND_STYLE[k][0], ec="#333333", label=KIND_STYLE[k][1])
                       for k in kinds if k in KIND_STYLE],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=len(kinds), fontsize=7,
              frameon=False)
    xs = [p[0] for p in position.values()]
    ys = [p[1] for p in position.values()]
    ax.set_xlim(min(xs) - 1.4, max(xs) + 1.4)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

"""The KPI wall: one consistent matplotlib style and one function per figure.

Every figure function takes the gold (or silver) table it draws as a Spark or pandas
DataFrame, returns the matplotlib ``Figure`` and saves it as ``<reports_dir>/<name>.png``
(``get_config().reports_dir``), so ``make run`` leaves the PNGs an analyst would print. Every
figure has a title, axis labels with units and a source note; the style lives in
:data:`STYLE` (applied to each figure, and globally by :func:`set_style`), so figures match
without notebook cells setting fonts or colors.

The data for the two pipeline figures (data-quality scorecard, medallion funnel) is gathered
by :func:`dq_scorecard_data`, :func:`quarantine_counts` and :func:`layer_row_counts`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from utils.config import CourseConfig, get_config

try:  # numpy comes with pandas and matplotlib; imported here only for figure math
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from pyspark.sql import DataFrame, SparkSession

#: Okabe-Ito: distinguishable with the common color-vision deficiencies and in grey print.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9",
                            "#F0E442", "#000000")
TARGET_COLOR = "#D55E00"
#: An illustrative 30-day readmission target: the US all-cause rate is about 14-15 %.
READMISSION_TARGET = 0.15
FIGURE_SIZE = (10.0, 5.0)
DPI = 120
LAYER_ORDER: tuple[str, ...] = ("landing", "bronze", "silver", "gold")
LAYER_COLORS: dict[str, str] = {"landing": "#8DA0B6", "bronze": "#CD7F32", "silver": "#A8A9AD",
                                "gold": "#D4AF37"}

STYLE: dict[str, Any] = {
    "figure.figsize": FIGURE_SIZE,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "legend.frameon": False,
    "legend.fontsize": 9,
}


def _style() -> dict[str, Any]:
    """:data:`STYLE` plus the color cycle from :data:`PALETTE`."""
    from cycler import cycler

    return {**STYLE, "axes.prop_cycle": cycler(color=list(PALETTE))}


def set_style() -> None:
    """Apply the course style to every figure of this process (figure functions also apply it)."""
    import matplotlib as mpl

    mpl.rcParams.update(_style())


# ----- plumbing --------------------------------------------------------------------------------
def _pandas(df: "DataFrame | pd.DataFrame") -> "pd.DataFrame":
    """A pandas frame from a Spark or pandas DataFrame (Spark frames are small gold tables)."""
    return df.toPandas() if hasattr(df, "toPandas") else df.copy()


def figure_path(name: str, config: CourseConfig | None = None) -> Path:
    """Where figure ``name`` is saved: ``<reports_dir>/<name>.png``."""
    return (config or get_config()).reports_dir / f"{name}.png"


def styled(draw: Callable[..., "Figure"]) -> Callable[..., "Figure"]:
    """Run a figure function inside the course style (rcParams are read while drawing)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> "Figure":
        import matplotlib as mpl

        # Set and restore only the style's own keys: plt.rc_context would also restore
        # `interactive`, which Jupyter's inline backend switches on when the first figure is
        # created, and figures would then stop showing in the notebook.
        style = _style()
        saved = {key: mpl.rcParams[key] for key in style}
        mpl.rcParams.update(style)
        try:
            return draw(*args, **kwargs)
        finally:
            mpl.rcParams.update(saved)

    return wrapper


def _new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple["Figure", Any]:
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, **kwargs)


def _finish(fig: "Figure", name: str, source: str, save: bool = True) -> "Figure":
    """Add the source note, lay out and save ``fig`` as ``<reports_dir>/<name>.png``."""
    fig.text(0.01, -0.02, f"Source: {source}. Synthetic data.", fontsize=8, color="#555555",
             ha="left", va="top")
    fig.tight_layout()
    if save:
        path = figure_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, metadata={"Software": None})
    return fig


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))


def _month_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_locator(mdates.MonthLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %Y"))


def _dates(series: "pd.Series") -> "pd.Series":
    import pandas as pd

    return pd.to_datetime(series)


# ----- KPI figures -----------------------------------------------------------------------------
@styled
def readmission_trend(readmissions: "DataFrame | pd.DataFrame", target: float = READMISSION_TARGET,
                      save: bool = True) -> "Figure":
    """Monthly 30-day readmission rate, all facilities and per facility, with the target line."""
    df = _pandas(readmissions)
    df["month"] = _dates(df["month"])
    df = df.sort_values(["facility", "month"])
    total = df.groupby("month", as_index=False)[["readmissions_30d", "index_discharges"]].sum()
    total["rate"] = total["readmissions_30d"] / total["index_discharges"]
    fig, ax = _new_figure()
    for i, (facility, part) in enumerate(sorted(df.groupby("facility"), key=lambda kv: kv[0])):
        ax.plot(part["month"], part["rate"], marker=".", linewidth=1, alpha=0.6,
                color=PALETTE[(i + 1) % len(PALETTE)], label=facility)
    ax.plot(total["month"], total["rate"], marker="o", linewidth=2.5, color=PALETTE[0],
            label="All facilities")
    ax.axhline(target, color=TARGET_COLOR, linestyle="--", linewidth=1.5,
               label=f"Target {target:.0%}")
    ax.set_title("30-day unplanned readmission rate by discharge month")
    ax.set_xlabel("Discharge month")
    ax.set_ylabel("Readmission rate (% of index discharges)")
    _percent_axis(ax.yaxis)
    ax.set_ylim(bottom=0)
    _month_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, "readmission_trend", "gold.readmission_30d (latest month provisional)",
                   save)


@styled
def alos_by_facility(length_of_stay: "DataFrame | pd.DataFrame", save: bool = True) -> "Figure":
    """Average length of stay per facility over the whole period (inpatient days / stays)."""
    df = _pandas(length_of_stay)
    by = df.groupby("facility", as_index=False)[["total_los_days", "inpatient_stays"]].sum()
    by["alos"] = by["total_los_days"] / by["inpatient_stays"]
    by = by.sort_values(["alos", "facility"])
    fig, ax = _new_figure()
    bars = ax.barh(by["facility"], by["alos"], color=PALETTE[0])
    ax.bar_label(bars, labels=[f"{v:.1f} d ({n:,} stays)" for v, n in
                               zip(by["alos"], by["inpatient_stays"])], padding=3, fontsize=9)
    ax.set_title("Average length of stay (ALOS) by facility")
    ax.set_xlabel("Average length of stay (days)")
    ax.set_ylabel("Facility")
    ax.set_xlim(0, by["alos"].max() * 1.3 if len(by) else 1)
    ax.grid(axis="y", visible=False)
    return _finish(fig, "alos_by_facility", "gold.length_of_stay (all discharge months)", save)


@styled
def bed_occupancy_heatmap(occupancy: "DataFrame | pd.DataFrame", save: bool = True) -> "Figure":
    """Midnight occupancy rate per facility (rows) and day (columns)."""
    import matplotlib.dates as mdates

    df = _pandas(occupancy)
    df["census_date"] = _dates(df["census_date"])
    grid = df.pivot(index="facility", columns="census_date", values="occupancy_rate").sort_index()
    days = grid.columns
    fig, ax = _new_figure(figsize=(12.0, 1.2 + 0.6 * max(len(grid), 1)))
    extent = (mdates.date2num(days.min()), mdates.date2num(days.max()) + 1, len(grid), 0)
    values = grid.to_numpy(dtype=float) * 100
    # Full scale 0-100 % when occupancy is high; zoom in (to the next 10 %) when it is low,
    # so differences stay visible. The colorbar shows the scale either way.
    top = float(np.nanmax(values)) if values.size else 0.0
    vmax = 100.0 if top >= 50 else max(10.0, float(np.ceil(top / 10) * 10))
    image = ax.imshow(values, aspect="auto", cmap="YlOrRd", vmin=0, vmax=max(vmax, top),
                      extent=extent, interpolation="nearest")
    ax.set_yticks([i + 0.5 for i in range(len(grid))], grid.index)
    ax.xaxis_date()
    _month_axis(ax)
    ax.grid(False)
    colorbar = fig.colorbar(image, ax=ax, pad=0.01)
    colorbar.set_label("Occupancy (% of staffed beds)")
    ax.set_title("Bed occupancy at midnight census, by facility and day")
    ax.set_xlabel("Census date (midnight ending the day)")
    ax.set_ylabel("Facility")
    return _finish(fig, "bed_occupancy_heatmap", "gold.bed_occupancy_daily", save)


@styled
def ed_visits_per_1000(ed: "DataFrame | pd.DataFrame", save: bool = True) -> "Figure":
    """Emergency visits per 1,000 active patients by month, with the visit counts."""
    df = _pandas(ed).sort_values("month")
    months = _dates(df["month"])
    labels = [m.strftime("%b %Y") for m in months]
    full = [int(c) == m.days_in_month for c, m in zip(df["days_covered"], months)]
    fig, ax = _new_figure()
    bars = ax.bar(labels, df["ed_visits_per_1000"].fillna(0), color=PALETTE[5])
    for bar, is_full in zip(bars, full):
        if not is_full:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    ax.bar_label(bars, labels=[f"{v:,} visits" + ("" if f else f"\npartial: {d} day(s)")
                               for v, f, d in zip(df["ed_visits"], full, df["days_covered"])],
                 padding=2, fontsize=8)
    ax.set_title("Emergency department visits per 1,000 active patients")
    ax.set_xlabel("Month of visit")
    ax.set_ylabel("ED visits (per 1,000 active patients)")
    ax.grid(axis="x", visible=False)
    return _finish(fig, "ed_visits_per_1000", "gold.ed_utilization", save)


@styled
def payer_mix_stacked(payer_mix: "DataFrame | pd.DataFrame", save: bool = True) -> "Figure":
    """Share of encounters by payer type, one stacked bar per month."""
    df = _pandas(payer_mix)
    shares = (df.groupby(["month", "payer_type"])["encounters"].sum()
              .unstack(fill_value=0).sort_index())
    shares = shares[sorted(shares.columns)]
    shares = shares.div(shares.sum(axis=1), axis=0)
    labels = [m.strftime("%b %Y") for m in _dates(shares.index.to_series())]
    fig, ax = _new_figure()
    bottom = [0.0] * len(shares)
    for i, payer_type in enumerate(shares.columns):
        values = shares[payer_type].tolist()
        ax.bar(labels, values, bottom=bottom, color=PALETTE[i % len(PALETTE)],
               label=payer_type.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title("Payer mix: share of encounters by payer type")
    ax.set_xlabel("Month of admission")
    ax.set_ylabel("Share of encounters (%)")
    _percent_axis(ax.yaxis)
    ax.set_ylim(0, 1)
    ax.grid(axis="x", visible=False)
    ax.legend(title="Payer type", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, "payer_mix", "gold.payer_mix", save)


def _short_test_name(name: str, width: int = 36) -> str:
    """A LOINC long name without its [property/system] part, cut to ``width`` characters."""
    short = str(name).split(" [")[0]
    return short if len(short) <= width else short[: width - 1] + "…"


@styled
def abnormal_lab_rates(labs: "DataFrame | pd.DataFrame", save: bool = True) -> "Figure":
    """Share of results outside the reference range per LOINC test, over the whole period."""
    df = _pandas(labs)
    by = (df.groupby(["loinc_code", "test_name"], as_index=False)[["abnormal_results", "results"]]
          .sum())
    by["rate"] = by["abnormal_results"] / by["results"]
    by["label"] = [f"{_short_test_name(name)} ({code})"
                   for name, code in zip(by["test_name"], by["loinc_code"])]
    by = by.sort_values(["rate", "label"])
    fig, ax = _new_figure(figsize=(10.0, 1.5 + 0.4 * max(len(by), 1)))
    bars = ax.barh(by["label"], by["rate"], color=PALETTE[3])
    ax.bar_label(bars, labels=[f"{r:.0%} of {n:,}" for r, n in zip(by["rate"], by["results"])],
                 padding=3, fontsize=8)
    ax.set_title("Abnormal lab results: share outside the reference range")
    ax.set_xlabel("Results outside the reference range (%)")
    ax.set_ylabel("Test (LOINC code)")
    _percent_axis(ax.xaxis)
    ax.set_xlim(0, min(1.0, by["rate"].max() * 1.25) if len(by) else 1)
    ax.grid(axis="y", visible=False)
    return _finish(fig, "abnormal_lab_rates", "gold.abnormal_lab_rate (all months)", save)


def prevalence_matrix(prevalence: "DataFrame | pd.DataFrame") -> "pd.DataFrame":
    """Prevalence per chronic condition (rows, sorted) and age band (columns, in band order),
    both sexes pooled: patients with the condition / population of the band."""
    from utils.gold import AGE_BANDS, UNKNOWN_AGE_BAND

    df = _pandas(prevalence)
    by = df.groupby(["chronic_condition", "age_band"])[["patients_with_condition", "population"]].sum()
    rates = (by["patients_with_condition"] / by["population"]).unstack(fill_value=0.0)
    order = [band for _, band in AGE_BANDS] + [UNKNOWN_AGE_BAND]
    return rates[[band for band in order if band in rates.columns]].sort_index()


@styled
def chronic_prevalence_by_age(prevalence: "DataFrame | pd.DataFrame",
                              save: bool = True) -> "Figure":
    """Prevalence of each chronic condition by age band (both sexes), as an annotated heat map."""
    matrix = prevalence_matrix(prevalence)
    values = matrix.to_numpy(dtype=float) * 100
    fig, ax = _new_figure(figsize=(10.0, 1.6 + 0.45 * max(len(matrix), 1)))
    top = float(values.max()) if values.size else 0.0
    image = ax.imshow(values, aspect="auto", cmap="Blues", vmin=0, vmax=max(top, 1.0))
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=9,
                color="white" if value > 0.6 * max(top, 1.0) else "black")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns)
    ax.set_yticks(range(len(matrix.index)), [c.replace("_", " ") for c in matrix.index])
    ax.grid(False)
    colorbar = fig.colorbar(image, ax=ax, pad=0.01)
    colorbar.set_label("Prevalence (% of current patients in the band)")
    ax.set_title("Chronic condition prevalence by age band (%)")
    ax.set_xlabel("Age band (years, at the reference date)")
    ax.set_ylabel("Chronic condition")
    return _finish(fig, "chronic_prevalence_by_age", "gold.chronic_condition_prevalence", save)


@styled
def claims_denial_trend(denials: "DataFrame | pd.DataFrame", save: bool = True) -> "Figure":
    """Monthly claim-line denial rate per payer."""
    df = _pandas(denials)
    df["month"] = _dates(df["month"])
    df = df.sort_values(["payer", "month"])
    fig, ax = _new_figure()
    for i, (payer, part) in enumerate(sorted(df.groupby("payer"), key=lambda kv: kv[0])):
        ax.plot(part["month"], part["denial_rate"], marker="o", linewidth=1.5,
                color=PALETTE[i % len(PALETTE)], label=payer)
    ax.set_title("Claims denial rate by payer")
    ax.set_xlabel("Month of service")
    ax.set_ylabel("Denied lines (% of adjudicated lines)")
    _percent_axis(ax.yaxis)
    ax.set_ylim(bottom=0)
    _month_axis(ax)
    ax.legend(title="Payer", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _finish(fig, "claims_denial_trend", "gold.claims_denial_rate", save)


# ----- pipeline figures ------------------------------------------------------------------------
def dq_scorecard_data(metrics: "DataFrame | pd.DataFrame") -> "pd.DataFrame":
    """Pass rate per dataset and rule from ``silver.dq_metrics``, sorted by dataset and rule:
    dataset, rule, action, passed, failed, pass_rate.

    ``dq_metrics`` keeps one set of rows per silver run (``run_id``), and silver is rebuilt
    from all of bronze, so re-runs repeat the same batch's numbers: one row is kept per
    dataset, batch and rule (the one that counted the most rows), then batches are summed.
    """
    df = _pandas(metrics)
    batch = ["batch_date"] if "batch_date" in df.columns else []
    df["_rows"] = df["passed"] + df["failed"]
    df = (df.sort_values(["dataset", *batch, "rule", "_rows"], ascending=True, na_position="first")
          .drop_duplicates(["dataset", *batch, "rule", "action"], keep="last"))
    by = (df.groupby(["dataset", "rule", "action"], as_index=False, dropna=False)[["passed", "failed"]]
          .sum().sort_values(["dataset", "rule"]).reset_index(drop=True))
    total = by["passed"] + by["failed"]
    by["pass_rate"] = (by["passed"] / total.where(total > 0)).round(4)
    return by


def _catalog_counts(spark: "SparkSession", names: list[str]) -> dict[str, int]:
    """Rows of each table in ``names`` the session's catalog has (tables it lacks are left
    out), asked through the catalog, never a folder: the same on every engine and on
    Databricks, where the tables are managed and have no local folder."""
    return {name: spark.table(name).count() for name in names if spark.catalog.tableExists(name)}


def quarantine_counts(spark: "SparkSession", config: CourseConfig | None = None) -> dict[str, int]:
    """Rows in each ``silver.quarantine_<entity>`` table, by entity (sorted), for the bronze
    entities of the contract whose quarantine table exists in the catalog."""
    from utils.bronze import ENTITY_SPECS

    config = config or get_config()
    names = {config.table_name("silver", f"quarantine_{e}"): e for e in sorted(ENTITY_SPECS)}
    return {names[name]: n for name, n in _catalog_counts(spark, list(names)).items()}


#: Pass-rate bands of the scorecard: (lowest pass rate, cell color, meaning).
DQ_BANDS: tuple[tuple[float, str, str], ...] = (
    (0.995, "#CDEBD9", ">= 99.5 %"), (0.95, "#FBE3B5", "95 - 99.5 %"), (0.0, "#F6C1B0", "< 95 %"))


def _band_color(pass_rate: float) -> str:
    for lowest, color, _ in DQ_BANDS:
        if pass_rate == pass_rate and pass_rate >= lowest:  # NaN (no rows) fails every test
            return color
    return "#FFFFFF"


def dq_dataset_summary(scorecard: "pd.DataFrame", quarantined: dict[str, int]) -> "pd.DataFrame":
    """One row per dataset from :func:`dq_scorecard_data`: rules, rules passing every row,
    rows checked, the worst rule (None when no rule failed a row) and its pass rate,
    quarantined rows and their share of the rows checked."""
    import pandas as pd

    rows = []
    for dataset, part in scorecard.groupby("dataset", sort=True):
        ranked = part.assign(_rate=part["pass_rate"].fillna(1.0)).sort_values(["_rate", "rule"])
        worst = ranked.iloc[0]
        checked = int((part["passed"] + part["failed"]).max())
        q = int(quarantined.get(dataset, 0))
        rows.append({"dataset": dataset, "rules": len(part),
                     "rules_all_pass": int((part["failed"] == 0).sum()), "rows_checked": checked,
                     "worst_rule": worst["rule"] if worst["failed"] > 0 else None,
                     "worst_pass_rate": float(worst["_rate"]),
                     "quarantined_rows": q,
                     "quarantined_share": round(q / checked, 4) if checked else float("nan")})
    return pd.DataFrame(rows)


@styled
def dq_scorecard(scorecard: "pd.DataFrame", quarantined: dict[str, int], top: int = 12,
                 save: bool = True) -> "Figure":
    """Data-quality scorecard: per dataset (rules, rules passing every row, worst rule,
    quarantined rows) as a color-banded table, the ``top`` rules by failing rows, and the
    quarantined rows per entity."""
    from matplotlib.patches import Patch

    summary = dq_dataset_summary(scorecard, quarantined)
    worst = (scorecard[scorecard["failed"] > 0].sort_values(["failed", "dataset", "rule"],
                                                            ascending=[False, True, True])
             .head(top).iloc[::-1])
    import matplotlib.pyplot as plt

    table_h = 0.8 + 0.3 * (len(summary) + 1)
    bars_h = 1.2 + 0.3 * max(len(worst), len(quarantined), 4)
    fig = plt.figure(figsize=(13.0, table_h + bars_h))
    grid = fig.add_gridspec(2, 2, height_ratios=[table_h, bars_h], width_ratios=[1.6, 1])
    ax_table = fig.add_subplot(grid[0, :])
    ax_rules, ax_q = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])

    ax_table.axis("off")
    ax_table.set_title("Data-quality scorecard: silver expectation rules by dataset")
    cells = [[r.dataset, f"{r.rules}", f"{r.rules_all_pass}", f"{r.rows_checked:,}",
              r.worst_rule or "(none failed)",
              f"{r.worst_pass_rate:.2%}", f"{r.quarantined_rows:,}",
              "n/a" if r.quarantined_share != r.quarantined_share else f"{r.quarantined_share:.2%}"]
             for r in summary.itertuples()]
    colors = [["white"] * 5 + [_band_color(r.worst_pass_rate)] + ["white"] * 2
              for r in summary.itertuples()]
    if cells:
        table = ax_table.table(
            cellText=cells, cellColours=colors, loc="upper center", cellLoc="left", colLoc="left",
            colLabels=["dataset", "rules", "rules at 100 %", "rows checked", "worst rule",
                       "worst pass rate", "quarantined rows", "quarantined %"])
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.auto_set_column_width(list(range(8)))
        table.scale(1, 1.3)
    ax_table.legend(handles=[Patch(color=color, label=label) for _, color, label in DQ_BANDS],
                    title="Worst pass rate", loc="upper center", bbox_to_anchor=(0.5, 0.0),
                    ncol=len(DQ_BANDS))

    labels = worst["dataset"] + " · " + worst["rule"]
    bars = ax_rules.barh(labels, worst["failed"], color=PALETTE[1])
    ax_rules.bar_label(bars, labels=[f"{f:,} ({r:.2%} pass)" for f, r in
                                     zip(worst["failed"], worst["pass_rate"])],
                       padding=3, fontsize=8)
    ax_rules.set_title(f"Rules with the most failing rows (top {top})")
    ax_rules.set_xlabel("Rows failing the rule (count)")
    ax_rules.set_ylabel("Dataset · rule")
    ax_rules.set_xlim(0, (worst["failed"].max() if len(worst) else 0) * 1.45 + 1)
    ax_rules.grid(axis="y", visible=False)

    entities = sorted(quarantined, reverse=True)
    qbars = ax_q.barh(entities, [quarantined[e] for e in entities], color=PALETTE[3])
    ax_q.bar_label(qbars, labels=[f"{quarantined[e]:,}" for e in entities], padding=3, fontsize=8)
    ax_q.set_title("Quarantined rows by entity")
    ax_q.set_xlabel("Rows in silver.quarantine_<entity> (count)")
    ax_q.set_ylabel("Entity")
    ax_q.set_xlim(0, max(quarantined.values(), default=0) * 1.3 + 1)
    ax_q.grid(axis="y", visible=False)
    return _finish(fig, "dq_scorecard", "silver.dq_metrics (each batch once), silver.quarantine_*",
                   save)


def landing_row_counts(config: CourseConfig | None = None) -> dict[str, int]:
    """Data rows delivered per entity, from the generator's manifest (``_manifest.json``).

    The manifest's ``rows`` ({entity: rows}); older manifests without it are summed from
    their ``files`` list (each file with its ``entity`` and ``rows``).
    """
    manifest = json.loads((config or get_config()).manifest_path.read_text(encoding="utf-8"))
    counts: dict[str, int] = {}
    if isinstance(manifest.get("rows"), dict):
        counts = {entity: int(n) for entity, n in manifest["rows"].items()}
    else:
        for entry in manifest.get("files", []):
            entity = entry.get("entity")
            counts[entity] = counts.get(entity, 0) + int(entry.get("rows", 0))
    return dict(sorted(counts.items()))


def layer_row_counts(spark: "SparkSession", config: CourseConfig | None = None,
                     landing: dict[str, int] | None = None) -> "pd.DataFrame":
    """Rows per layer and table: landing (manifest), bronze and silver entity tables, gold.

    Bronze and silver count the tables of the landing entities (silver's quarantine, logs
    and derived tables are not the entity's rows); gold counts every gold table.
    Columns: layer, table, rows; sorted by layer order then table.
    """
    import pandas as pd

    from utils.gold import gold_tables

    config = config or get_config()
    landing = landing if landing is not None else landing_row_counts(config)
    rows = [("landing", entity, n) for entity, n in landing.items()]
    for layer in ("bronze", "silver"):
        counted = _catalog_counts(spark, [config.table_name(layer, e) for e in landing])
        rows += [(layer, name.split(".", 1)[1], n) for name, n in counted.items()]
    counted = _catalog_counts(spark, [config.table_name("gold", t) for t in sorted(gold_tables())])
    rows += [("gold", name.split(".", 1)[1], n) for name, n in counted.items()]
    df = pd.DataFrame(rows, columns=["layer", "table", "rows"])
    df["order"] = df["layer"].map({layer: i for i, layer in enumerate(LAYER_ORDER)})
    return (df.sort_values(["order", "table"]).drop(columns="order")
            .reset_index(drop=True))


@styled
def medallion_funnel(counts: "pd.DataFrame", save: bool = True) -> "Figure":
    """Row count funnel landing -> bronze -> silver -> gold (totals per layer, centred bars)."""
    totals = counts.groupby("layer")["rows"].sum()
    tables = counts.groupby("layer")["table"].nunique()
    layers = [layer for layer in LAYER_ORDER if layer in totals.index]
    widths = [int(totals[layer]) for layer in layers]
    widest = max(widths, default=1) or 1
    fig, ax = _new_figure(figsize=(10.0, 4.5))
    positions = list(range(len(layers)))[::-1]
    previous = None
    for layer, width, y in zip(layers, widths, positions):
        ax.barh(y, width, left=(widest - width) / 2, color=LAYER_COLORS[layer], height=0.7)
        change = ""
        if layer == "gold":
            change = "\n(KPI aggregates, not entity rows)"
        elif previous is not None:
            change = f"\n{width - previous:+,} rows vs {layers[layers.index(layer) - 1]}"
        ax.text(widest / 2, y, f"{width:,} rows in {tables[layer]} table(s){change}", ha="center",
                va="center", fontsize=10, color="black",
                bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none"})
        previous = width
    ax.set_yticks(positions, layers)
    ax.set_xlim(0, widest)
    ax.set_title("Medallion row count funnel: landing → bronze → silver → gold")
    ax.set_xlabel("Rows (bar width, centred; counts in the bars)")
    ax.set_ylabel("Layer")
    ax.grid(False)
    ax.set_xticks([])
    return _finish(fig, "medallion_funnel",
                   "landing manifest; bronze and silver entity tables; all gold tables", save)


# ----- everything at once ----------------------------------------------------------------------
def kpi_wall(spark: "SparkSession", close: bool = True) -> dict[str, Path]:
    """Draw and save every figure from the registered tables; return {name: png path}.

    ``close`` closes each figure after saving (for scripts; notebooks show them instead).
    """
    import matplotlib.pyplot as plt

    figures = {
        "readmission_trend": lambda: readmission_trend(spark.table("gold.readmission_30d")),
        "alos_by_facility": lambda: alos_by_facility(spark.table("gold.length_of_stay")),
        "bed_occupancy_heatmap": lambda: bed_occupancy_heatmap(
            spark.table("gold.bed_occupancy_daily")),
        "ed_visits_per_1000": lambda: ed_visits_per_1000(spark.table("gold.ed_utilization")),
        "payer_mix": lambda: payer_mix_stacked(spark.table("gold.payer_mix")),
        "claims_denial_trend": lambda: claims_denial_trend(spark.table("gold.claims_denial_rate")),
        "abnormal_lab_rates": lambda: abnormal_lab_rates(spark.table("gold.abnormal_lab_rate")),
        "chronic_prevalence_by_age": lambda: chronic_prevalence_by_age(
            spark.table("gold.chronic_condition_prevalence")),
        "dq_scorecard": lambda: dq_scorecard(dq_scorecard_data(spark.table("silver.dq_metrics")),
                                             quarantine_counts(spark)),
        "medallion_funnel": lambda: medallion_funnel(layer_row_counts(spark)),
    }
    paths = {}
    for name, draw in figures.items():
        fig = draw()
        if close:
            plt.close(fig)
        paths[name] = figure_path(name)
    return paths

"""The KPI wall figures on tiny frames: titled, labeled with units, saved as PNG, right numbers."""

from __future__ import annotations

import datetime as dt
import json

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402

from utils import plots  # noqa: E402
from utils.config import get_config  # noqa: E402

JAN, FEB = dt.date(2025, 1, 1), dt.date(2025, 2, 1)


def readmissions():
    # Jan: General 3/4, North 0/1 -> all facilities 3/5 = 60 %; Feb: General 0/1, North 1/2 -> 1/3
    return pd.DataFrame({"month": [JAN, JAN, FEB, FEB],
                         "facility": ["General", "North", "General", "North"],
                         "index_discharges": [4, 1, 1, 2], "readmissions_30d": [3, 0, 0, 1],
                         "rate": [0.75, 0.0, 0.0, 0.5]})


def length_of_stay():
    # General: (10 + 4) days / (5 + 1) stays = 2.33; North: (8 + 7) / (1 + 2) = 5.0
    return pd.DataFrame({"month": [JAN, JAN, FEB, FEB],
                         "facility": ["General", "North", "General", "North"],
                         "inpatient_stays": [5, 1, 1, 2], "total_los_days": [10, 8, 4, 7],
                         "avg_los_days": [2.0, 8.0, 4.0, 3.5], "median_los_days": [2.0, 8.0, 4.0, 3.5]})


def occupancy():
    days = [dt.date(2025, 1, d) for d in (1, 2, 3)]
    return pd.DataFrame({"census_date": days * 2, "facility": ["General"] * 3 + ["North"] * 3,
                         "staffed_beds": [2] * 3 + [10] * 3, "census": [1, 2, 1, 0, 0, 3],
                         "occupancy_rate": [0.5, 1.0, 0.5, 0.0, 0.0, 0.3]})


def ed():
    return pd.DataFrame({"month": [JAN, FEB], "days_covered": [31, 3], "ed_visits": [1, 0],
                         "active_patients": [2, 3], "ed_visits_per_1000": [500.0, 0.0]})


def payer_mix():
    return pd.DataFrame({"month": [JAN, JAN, JAN, FEB], "payer": ["Acme", "Medicare", "Unknown", "Medicare"],
                         "payer_type": ["commercial", "medicare", "unknown", "medicare"],
                         "encounters": [2, 1, 1, 1], "share": [0.5, 0.25, 0.25, 1.0]})


def denials():
    return pd.DataFrame({"month": [JAN, FEB], "payer": ["Acme", "Acme"], "claim_lines": [3, 2],
                         "adjudicated_lines": [2, 2], "denied_lines": [1, 2], "denial_rate": [0.5, 1.0]})


def labs():
    # HbA1c: 2 of 3 abnormal over both months; Glucose 0 of 2
    return pd.DataFrame({"loinc_code": ["4548-4", "4548-4", "2345-7"],
                         "test_name": ["HbA1c", "HbA1c", "Glucose"], "month": [JAN, FEB, JAN],
                         "results": [2, 1, 2], "abnormal_results": [1, 1, 0],
                         "abnormal_rate": [0.5, 1.0, 0.0]})


def prevalence():
    # diabetes in 18-44: (1 + 0) / (2 + 2) = 25 % over both sexes
    return pd.DataFrame({"chronic_condition": ["diabetes"] * 3 + ["copd"] * 3,
                         "age_band": ["18-44", "18-44", "75+"] * 2, "sex": ["M", "F", "F"] * 2,
                         "population": [2, 2, 1] * 2, "patients_with_condition": [1, 0, 1, 0, 0, 0]})


def scorecard():
    metrics = pd.DataFrame({"run_id": ["r1"] * 3, "dataset": ["encounters", "encounters", "claims"],
                            "rule": ["admit_ts_present", "charge_not_negative", "status_valid"],
                            "action": ["drop", "warn", "drop"], "passed": [98, 100, 50],
                            "failed": [2, 0, 0]})
    return plots.dq_scorecard_data(metrics)


def counts():
    return pd.DataFrame({"layer": ["landing", "bronze", "silver", "silver", "gold"],
                         "table": ["encounters", "encounters", "encounters", "claims", "kpi"],
                         "rows": [100, 100, 90, 5, 4]})


FIGURES = {
    "readmission_trend": lambda: plots.readmission_trend(readmissions()),
    "alos_by_facility": lambda: plots.alos_by_facility(length_of_stay()),
    "bed_occupancy_heatmap": lambda: plots.bed_occupancy_heatmap(occupancy()),
    "ed_visits_per_1000": lambda: plots.ed_visits_per_1000(ed()),
    "payer_mix": lambda: plots.payer_mix_stacked(payer_mix()),
    "claims_denial_trend": lambda: plots.claims_denial_trend(denials()),
    "abnormal_lab_rates": lambda: plots.abnormal_lab_rates(labs()),
    "chronic_prevalence_by_age": lambda: plots.chronic_prevalence_by_age(prevalence()),
    "dq_scorecard": lambda: plots.dq_scorecard(scorecard(), {"encounters": 2, "claims": 0}),
    "medallion_funnel": lambda: plots.medallion_funnel(counts()),
}


@pytest.fixture
def drawn():
    figures = []
    yield figures
    for fig in figures:
        plt.close(fig)


@pytest.mark.parametrize("name", FIGURES)
def test_figure_is_titled_labeled_with_units_and_saved(name, data_dir, drawn):
    fig = FIGURES[name]()
    drawn.append(fig)
    assert all(ax.get_title(loc="left") for ax in fig.axes if ax.get_label() != "<colorbar>"), name
    charts = [ax for ax in fig.axes if ax.get_xlabel() and ax.get_ylabel()]
    assert charts, f"{name}: no axes with both axis labels"
    for ax in charts:
        assert "(" in ax.get_xlabel() + ax.get_ylabel(), f"{name}: an axis label should give its unit"
    assert any(t.get_text().startswith("Source: ") for t in fig.texts), name
    path = get_config().reports_dir / f"{name}.png"
    assert path == data_dir / "reports" / f"{name}.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_style_is_restored_but_interactive_mode_is_left_alone(drawn):
    @plots.styled
    def draw():
        plt.ion()  # what Jupyter's inline backend does when the first figure is created
        return plt.figure()

    title_weight = matplotlib.rcParams["axes.titleweight"]
    plt.ioff()
    try:
        drawn.append(draw())
        assert matplotlib.is_interactive(), "figures would stop showing in notebooks"
    finally:
        plt.ioff()
    assert matplotlib.rcParams["axes.titleweight"] == title_weight


def test_save_false_writes_nothing(data_dir, drawn):
    drawn.append(plots.ed_visits_per_1000(ed(), save=False))
    assert not (data_dir / "reports").exists()


def test_readmission_trend_pools_facilities_and_draws_the_target(data_dir, drawn):
    fig = plots.readmission_trend(readmissions(), target=0.12)
    drawn.append(fig)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["All facilities"].get_ydata()) == pytest.approx([0.6, 1 / 3])
    assert list(lines["Target 12%"].get_ydata()) == [0.12, 0.12]
    assert {"General", "North"} <= set(lines)


def test_alos_is_weighted_by_stays(data_dir, drawn):
    fig = plots.alos_by_facility(length_of_stay())
    drawn.append(fig)
    widths = {label.get_text(): patch.get_width() for label, patch in
              zip(fig.axes[0].get_yticklabels(), fig.axes[0].patches)}
    assert widths == pytest.approx({"General": 14 / 6, "North": 5.0})


def test_chronic_prevalence_pools_sexes_in_band_order(data_dir, drawn):
    matrix = plots.prevalence_matrix(prevalence())
    assert list(matrix.index) == ["copd", "diabetes"]
    assert list(matrix.columns) == ["18-44", "75+"]
    assert matrix.to_numpy().tolist() == [[0.0, 0.0], [0.25, 1.0]]
    fig = plots.chronic_prevalence_by_age(prevalence())
    drawn.append(fig)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.0", "0.0", "25.0", "100.0"]


def test_dq_dataset_summary():
    # claims: 1 rule, 50 rows, all pass, 0 quarantined. encounters: 2 rules over 100 rows, the
    # worst is admit_ts_present (98 %); 2 quarantined rows of 100 checked = 2 %.
    got = plots.dq_dataset_summary(scorecard(), {"encounters": 2})
    assert got.to_dict("records") == [
        {"dataset": "claims", "rules": 1, "rules_all_pass": 1, "rows_checked": 50,
         "worst_rule": None, "worst_pass_rate": 1.0, "quarantined_rows": 0,
         "quarantined_share": 0.0},
        {"dataset": "encounters", "rules": 2, "rules_all_pass": 1, "rows_checked": 100,
         "worst_rule": "admit_ts_present", "worst_pass_rate": 0.98, "quarantined_rows": 2,
         "quarantined_share": 0.02}]


def test_dq_scorecard_table_colors_worst_pass_rate(data_dir, drawn):
    fig = plots.dq_scorecard(scorecard(), {"encounters": 2, "claims": 0})
    drawn.append(fig)
    cells = fig.axes[0].tables[0].get_celld()
    assert [cells[(r, 5)].get_text().get_text() for r in (1, 2)] == ["100.00%", "98.00%"]
    assert cells[(2, 6)].get_text().get_text() == "2"
    assert matplotlib.colors.to_hex(cells[(2, 5)].get_facecolor()) == plots.DQ_BANDS[1][1].lower()
    rules = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert rules == ["encounters · admit_ts_present"]  # only rules that failed rows


def test_dq_scorecard_data_sums_batches_once_per_rule():
    # Two silver runs (r1, r2) repeat the Jan batch; r2 also saw the Feb batch.
    # admit_present: Jan 48/2 (once, not twice) + Feb 49/1 -> 97 passed, 3 failed = 0.97
    def m(run, batch, rule, action, passed, failed):
        return {"run_id": run, "dataset": "encounters", "batch_date": batch, "rule": rule,
                "action": action, "condition": "c", "passed": passed, "failed": failed}
    metrics = pd.DataFrame([
        m("r1", JAN, "admit_present", "drop", 48, 2), m("r1", JAN, "charge_ok", "warn", 0, 0),
        m("r2", JAN, "admit_present", "drop", 48, 2), m("r2", JAN, "charge_ok", "warn", 0, 0),
        m("r2", FEB, "admit_present", "drop", 49, 1)])
    got = plots.dq_scorecard_data(metrics)
    assert got.drop(columns="pass_rate").to_dict("records") == [
        {"dataset": "encounters", "rule": "admit_present", "action": "drop", "passed": 97,
         "failed": 3},
        {"dataset": "encounters", "rule": "charge_ok", "action": "warn", "passed": 0, "failed": 0}]
    assert got["pass_rate"].iloc[0] == 0.97 and pd.isna(got["pass_rate"].iloc[1])


def test_layer_counts_and_quarantine_from_tables(spark, data_dir):
    from tests.test_gold import forget_course_tables
    from utils.tables import write_table

    forget_course_tables(spark)

    def rows(n):
        return spark.range(n).selectExpr("CAST(id AS INT) AS id")

    write_table(rows(5), "bronze", "encounters")
    write_table(rows(1), "bronze", "empty_files")           # a ledger, not an entity
    write_table(rows(3), "silver", "encounters")
    write_table(rows(1), "silver", "quarantine_encounters")
    write_table(rows(2), "silver", "diagnoses")             # derived, not a landing entity
    write_table(rows(4), "gold", "payer_mix")
    write_table(rows(2), "gold", "ed_utilization")

    got = plots.layer_row_counts(spark, landing={"claims": 0, "encounters": 5})
    assert list(got.itertuples(index=False, name=None)) == [
        ("landing", "claims", 0), ("landing", "encounters", 5), ("bronze", "encounters", 5),
        ("silver", "encounters", 3), ("gold", "ed_utilization", 2), ("gold", "payer_mix", 4)]
    assert plots.quarantine_counts(spark) == {"encounters": 1}


def test_ed_partial_month_is_hatched_and_labeled(data_dir, drawn):
    fig = plots.ed_visits_per_1000(ed())
    drawn.append(fig)
    jan, feb = fig.axes[0].patches
    assert (jan.get_hatch(), feb.get_hatch()) == (None, "//")  # February: 3 of 28 days
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["1 visits", "0 visits\npartial: 3 day(s)"]


def test_short_test_names():
    assert plots._short_test_name("Glucose [Mass/volume] in Serum or Plasma") == "Glucose"
    assert plots._short_test_name("Hemoglobin A1c/Hemoglobin.total in Blood", 20) == \
        "Hemoglobin A1c/Hemo…"


def test_figures_accept_spark_frames(spark, data_dir, drawn):
    fig = plots.ed_visits_per_1000(spark.createDataFrame(ed()))
    drawn.append(fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Jan 2025", "Feb 2025"]


def test_landing_counts_from_the_manifest(data_dir):
    manifest = get_config().manifest_path
    manifest.parent.mkdir(parents=True)
    files = [{"entity": "encounters", "file": "a.csv", "rows": 3},
             {"entity": "encounters", "file": "b.csv", "rows": 4},
             {"entity": "claims", "file": "c.csv", "rows": 0}]
    manifest.write_text(json.dumps({"files": files}))
    assert plots.landing_row_counts() == {"claims": 0, "encounters": 7}
    manifest.write_text(json.dumps({"rows": {"encounters": 7, "claims": 0}, "files": files}))
    assert plots.landing_row_counts() == {"claims": 0, "encounters": 7}

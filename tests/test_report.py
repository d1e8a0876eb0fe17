"""Tables built from finished cells: mean ± std over seeds, one-seed rows, robustness Δ."""
from __future__ import annotations

import pytest

from mmsa_alignmamba.report import markdown_table, robustness_table, summary_table


def record(model, seed, acc, rate=0.0, protocol="complete"):
    cell = {"model": model, "variant": None, "dataset": "mosi", "data": "synthetic-small",
            "protocol": protocol, "rate": rate, "seed": seed}
    return {"cell": cell, "metrics": {"Has0_acc_2": acc, "MAE": 1.0 - acc}}


def test_summary_mean_std_over_seeds_and_no_std_for_one_seed():
    summary = summary_table([record("a", 1, 0.70), record("a", 2, 0.80), record("b", 1, 0.60)])
    a, b = (summary[summary["Model"] == m].iloc[0] for m in ("a", "b"))
    assert (a["Seeds"], round(a["Has0_acc_2"], 4), round(a["Has0_acc_2_std"], 4)) == (2, 75.0, 5.0)
    assert b["Seeds"] == 1 and b["Has0_acc_2"] == 60.0 and b["Has0_acc_2_std"] == 0.0  # CSV stays numeric
    lines = markdown_table(summary).splitlines()
    row_a, row_b = (next(line for line in lines if line.startswith(f"| {m} |")) for m in ("a", "b"))
    assert "75.00 ± 5.00" in row_a
    assert "60.00" in row_b and "±" not in row_b  # one seed: a value, not a fake "± 0.00"


def test_robustness_average_and_delta_between_lowest_and_highest_rate():
    records = [record("a", 1, acc, rate, "sample") for rate, acc in ((0.1, 0.8), (0.4, 0.7), (0.7, 0.5))]
    row = robustness_table(summary_table(records)).iloc[0]
    assert round(row["Has0_acc_2_avg"], 4) == round(100 * (0.8 + 0.7 + 0.5) / 3, 4)
    assert round(row["Has0_acc_2_delta"], 4) == 30.0
    assert row["Rates"] == "0.1 0.4 0.7"


def test_oracle_rows_join_the_tables_of_their_data_only():
    from mmsa_alignmamba.report import summary_table
    ladder = {"text_linear": {"Has0_acc_2": 0.6, "Corr": 0.3}, "pooled_linear": {"Has0_acc_2": 0.7, "Corr": 0.5},
              "aligned_ceiling": {"Has0_acc_2": 0.8, "Corr": 0.8}}
    oracles = [{"dataset": "mosi", "data": "synthetic-small", "ladder": ladder},
               {"dataset": "mosi", "data": "synthetic-other", "ladder": ladder}]   # no runs on it: left out
    summary = summary_table([record("a", 1, 0.75)], oracles)
    rows = summary[summary["Model"].str.startswith("oracle:")]
    assert list(rows["Model"]) == ["oracle: text-only linear", "oracle: pooled all-modality linear",
                                   "oracle: true-alignment ceiling"]
    assert list(rows["Has0_acc_2"]) == [60.0, 70.0, 80.0]
    assert "Corr" not in summary.columns          # the ladder adds no columns the models do not have
    assert set(rows["Data"]) == {"synthetic-small"} and (rows["Seeds"] == 0).all()
    text = markdown_table(summary)
    assert "| oracle: true-alignment ceiling | mosi | synthetic-small | complete | 0 | 0 | 80.00 |" in text


def test_alignment_table_shows_each_plans_accuracy():
    from mmsa_alignmamba.report import alignment_table
    metrics = {"Has0_acc_2": 0.7, "Plan_ot_audio": 0.45, "Plan1_ot_audio": 0.8, "Plan_none_audio": 0.28,
               "Plan1_none_audio": 0.7}
    records = [{"cell": {"model": "alignmamba", "variant": None, "dataset": "mosi", "data": "synthetic-wordlevel-full",
                         "protocol": "complete", "rate": 0.0, "seed": s}, "metrics": metrics} for s in (1, 2)]
    records.append(record("lf_dnn", 1, 0.6))                      # no plan: not in the alignment table
    text = alignment_table(summary_table(records))
    assert "| OT plan: audio | time-proportional plan: audio |" in text
    assert "| alignmamba | mosi | synthetic-wordlevel-full | complete | 0 | 2 | 45.0 / 80.0 | 28.0 / 70.0 |" in text
    assert "lf_dnn" not in text
    assert alignment_table(summary_table([record("lf_dnn", 1, 0.6)])) == ""


# ------------------------------------------------------------------------------ mmsa report
def _results(tmp_path):
    """A results folder: three models, three seeds, complete data and the sample protocol at 0.7."""
    from mmsa_alignmamba.results import Cell, ResultStore
    store = ResultStore(tmp_path / "res")
    accuracy = {"alignmamba": (0.80, 0.81, 0.82), "mult": (0.70, 0.72, 0.71), "lf_dnn": (0.60, 0.62, 0.58)}
    for model, values in accuracy.items():
        for seed, acc in zip((1, 2, 3), values):
            for protocol, rate, drop in (("complete", 0.0, 0.0), ("sample", 0.7, 0.1)):
                cell = Cell(model, "mosi", "synthetic-small", seed, protocol, rate)
                store.save(cell, {"Has0_acc_2": acc - drop, "Has0_F1_score": acc - drop - 0.01, "MAE": 1 - acc},
                           {"train_seconds": 1.0})
    return tmp_path / "res"


def test_significance_marks_only_a_clear_winner(tmp_path):
    from mmsa_alignmamba.report import significance, significant
    from mmsa_alignmamba.results import ResultStore
    sig = significance(ResultStore(_results(tmp_path)).records(), "Has0_acc_2")
    setting = ("mosi", "synthetic-small", "complete", 0.0)
    assert significant(sig, "alignmamba", setting)
    assert not significant(sig, "mult", setting) and not significant(sig, "lf_dnn", setting)
    row = sig[(sig["Model"] == "mult") & (sig["Protocol"] == "complete")].iloc[0]
    assert row["Versus"] == "alignmamba" and not row["Better"] and row["P"] < 0.05
    mae = significance(ResultStore(tmp_path / "res").records(), "MAE")     # lower is better
    assert mae[(mae["Model"] == "alignmamba") & (mae["Protocol"] == "complete")]["Better"].iloc[0]


@pytest.mark.parametrize("metric, order", [("Has0_acc_2", ["alignmamba", "mult", "lf_dnn"]),
                                            ("MAE", ["alignmamba", "mult", "lf_dnn"])])
def test_side_by_side_ranks_models_best_first(tmp_path, metric, order):
    """Ranked by the first column (complete data), lower first for MAE; a tie shares its rank and a
    model without complete data comes last, unranked."""
    import pandas as pd

    from mmsa_alignmamba.report import ranked_models, side_by_side, summary_table
    from mmsa_alignmamba.results import ResultStore
    summary = summary_table(ResultStore(_results(tmp_path)).records())
    lines = [line for line in side_by_side(summary, metric).splitlines() if line.startswith("| ") and "Rank" not in line]
    assert [line.split(" | ")[1] for line in lines] == order
    assert [line.split(" | ")[0] for line in lines] == ["| 1", "| 2", "| 3"]
    block = pd.DataFrame({"Model": ["a", "b", "c", "d"], "MissingRate": [0.0, 0.0, 0.0, 0.7],
                          "Has0_acc_2": [70.0, 80.0, 70.0, 90.0]})
    assert ranked_models(block, "Has0_acc_2") == [(1, "b"), (2, "a"), (2, "c"), ("—", "d")]


def test_report_writes_one_set_of_publication_outputs(tmp_path, capsys):
    import os
    import shutil
    import subprocess

    from PIL import Image

    from conftest import run_cli
    res = _results(tmp_path)
    rc, stdout, err = run_cli(["report", "--results-dir", res, "--metric", "Has0_acc_2", "--format", "md", "latex",
                               "html", "--paper-rows", "--reference", "mmsa"], capsys)
    assert rc == 0, err
    assert not list(res.glob("leaderboard*")), "one set of outputs: summary.*"
    md = (res / "summary.md").read_text()
    assert "Side by side: Has0 Acc-2 (%) / Has0 F1 (%)" in md and "MR 0.7 (applied 0.67)" in md
    assert "81.00 ± 0.82 / 80.0†" in md                      # best, and significantly so
    assert "reported in the paper" in md and "Welch" in md
    measured, published = md.split("## Reference: reported by MMSA, not measured here")
    assert "reported by MMSA" not in measured and "| tfn (reported by MMSA) | unaligned |" in published
    tex = (res / "summary.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\textbf{81.00 $\\pm$ 0.82}" in tex
    assert "$^\\dagger$" in tex and "SYNTHETIC" in tex and "(paper)" in tex
    assert "MOSI, real data: reported by MMSA" in tex and "self\\_mm (reported by MMSA) & unaligned & 83.44" in tex
    stem = res / "figures" / "robustness-mosi-synthetic-small-sample-Has0_acc_2"
    for suffix in (".pdf", ".svg", ".png"):
        assert stem.with_suffix(suffix).stat().st_size > 1000
    assert round(Image.open(stem.with_suffix(".png")).info["dpi"][0]) == 200
    # the page, rendered by a real headless browser
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        assert not os.environ.get("MMSA_REQUIRE_BROWSER"), "CI needs chromium (apt-get install chromium)"
        pytest.skip("no chromium here: apt-get install chromium")
    page = (res / "summary.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table") >= 3 and 'class="sortable"' in dom and "data:image/png;base64," in dom
    assert "alignmamba" in dom and "reported in the paper" in dom and "self_mm (reported by MMSA)" in dom
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,1800", page],
                   capture_output=True, timeout=120)
    assert Image.open(shot).size == (1280, 1800)

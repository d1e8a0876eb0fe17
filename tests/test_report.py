"""Tables built from finished cells: mean ± std over seeds, one-seed rows, robustness Δ."""
from __future__ import annotations

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

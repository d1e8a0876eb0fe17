"""Leaderboards, robustness tables and plots, always rebuilt from the finished cells on disk.

Accuracy and F1 columns are in percent (as the paper and MMSA's CSV report them); MAE and Corr
stay raw. Every row carries its data source ('real' or 'synthetic-…'), and every table and plot
made from synthetic data says so in its title.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .results import COMPLETE, ResultStore, model_label, plan_kinds
from .safeio import atomic_write, atomic_write_text

logger = logging.getLogger("mmsa_alignmamba")

KEYS = ["Model", "Dataset", "Data", "Protocol", "MissingRate"]
RAW_METRICS = {"MAE", "Corr", "Loss"}
HEADLINE = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_2", "F1_score", "MAE", "Corr"]


def _scaled(metric: str, value: float) -> float:
    return value if metric in RAW_METRICS else 100.0 * value


def cell_table(records: list[dict]) -> pd.DataFrame:
    """One row per finished cell (per seed)."""
    rows = []
    for r in records:
        c = r["cell"]
        row = {"Model": model_label(c["model"], c.get("variant", "")), "Dataset": c["dataset"], "Data": c["data"], "Protocol": c["protocol"],
               "MissingRate": float(c["rate"]), "Seed": int(c["seed"])}
        row.update({m: _scaled(m, v) for m, v in r["metrics"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def oracle_table(oracles: list[dict]) -> pd.DataFrame:
    """The oracle ladders of synthetic data as summary rows ('oracle: …' models, Seeds 0: nothing
    was trained with a seed), so every table on that data shows them beside the models."""
    from .synthetic.oracle import RUNGS
    rows = []
    for o in oracles:
        for rung, name in RUNGS.items():
            if rung in o["ladder"]:
                row = {"Model": name, "Dataset": o["dataset"], "Data": o["data"], "Protocol": COMPLETE,
                       "MissingRate": 0.0, "Seeds": 0}
                for metric, value in o["ladder"][rung].items():
                    row[metric], row[f"{metric}_std"] = _scaled(metric, value), 0.0
                rows.append(row)
    return pd.DataFrame(rows)


def summary_table(records: list[dict], oracles: list[dict] = ()) -> pd.DataFrame:
    """Mean and std over seeds per (model, dataset, data, protocol, rate); plain numeric cells;
    then the oracle rows of the data that has them."""
    cells = cell_table(records)
    if cells.empty:
        return cells
    metrics = [m for m in cells.columns if m not in KEYS + ["Seed"]]
    grouped = cells.groupby(KEYS, sort=True)
    out = grouped[metrics].mean().round(4)
    # Population std over seeds (0 for one seed), as in MMSA's own result CSVs.
    std = grouped[metrics].std(ddof=0).round(4).add_suffix("_std")
    out = out.join(std)
    out.insert(0, "Seeds", grouped["Seed"].count())
    ordered = ["Seeds"] + [c for m in metrics for c in (m, f"{m}_std")]
    out = out[ordered].reset_index()
    used = {(o["dataset"], o["data"]) for o in oracles} & set(zip(out["Dataset"], out["Data"]))
    ladder = oracle_table([o for o in oracles if (o["dataset"], o["data"]) in used])
    return pd.concat([out, ladder[[c for c in out.columns if c in ladder.columns]]], ignore_index=True) \
        if not ladder.empty else out


def robustness_table(summary: pd.DataFrame, low: float = 0.1, high: float = 0.7) -> pd.DataFrame:
    """Per (model, dataset, data, protocol): the average over missing rates and Δ = metric(low) − metric(high)."""
    missing = summary[summary["Protocol"] != COMPLETE]  # oracle rows are complete-data only
    metrics = [m for m in HEADLINE if m in summary.columns]
    rows = []
    for key, group in missing.groupby(["Model", "Dataset", "Data", "Protocol"], sort=True):
        by_rate = group.set_index("MissingRate")
        row = dict(zip(["Model", "Dataset", "Data", "Protocol"], key))
        row["Rates"] = " ".join(f"{r:g}" for r in by_rate.index)
        for m in metrics:
            row[f"{m}_avg"] = round(float(by_rate[m].mean()), 4)
            has_ends = np.isclose(by_rate.index, low).any() and np.isclose(by_rate.index, high).any()
            row[f"{m}_delta"] = (round(float(by_rate[m][np.isclose(by_rate.index, low)].iloc[0]
                                             - by_rate[m][np.isclose(by_rate.index, high)].iloc[0]), 4)
                                 if has_ends else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """Compact markdown: metric cells as 'mean ± std' where a std column exists and there are
    several seeds."""
    if df.empty:
        return "(no finished runs)\n"
    metrics = metrics or [m for m in HEADLINE if m in df.columns]
    keys = [k for k in df.columns if k in KEYS + ["Seeds", "Rates"]]
    head = keys + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in df.iterrows():
        cells = [f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        for m in metrics:
            value = row[m]
            # one seed: a value alone, not a "± 0.00" that would read as a measured spread
            std = row.get(f"{m}_std") if row.get("Seeds", 2) > 1 else None
            cells.append("—" if pd.isna(value) else (f"{value:.2f} ± {std:.2f}" if std is not None and not pd.isna(std)
                                                    else f"{value:.2f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLAN_KINDS = {"ot": "OT plan", "soft_ot": "soft OT plan", "none": "time-proportional plan"}


def alignment_table(summary: pd.DataFrame) -> str:
    """Markdown: where the true frame→word map was known, the share of audio and vision frames
    each plan sends to their true word, exactly / within ±1 word (%, mean over seeds)."""
    columns = [(kind, m) for kind in plan_kinds(summary.columns) for m in ("audio", "vision")
               if f"Plan_{kind}_{m}" in summary.columns]
    if not columns:
        return ""
    rows = summary.dropna(subset=[f"Plan_{k}_{m}" for k, m in columns], how="all")
    if rows.empty:
        return ""
    head = ["Model", "Dataset", "Data", "Protocol", "MissingRate", "Seeds"] + [f"{PLAN_KINDS.get(k, k + ' plan')}: {m}" for k, m in columns]
    text = ("\n## Alignment: frames sent to their true word, exact / within ±1 word (%)\n\n"
            "Measured on the test split against the data's true frame→word map; the model's own plan is "
            "the one its config names (`local_alignment`), the others are computed on the same features.\n\n")
    text += "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    for _, row in rows.iterrows():
        cells = [str(row["Model"]), str(row["Dataset"]), str(row["Data"]), str(row["Protocol"]),
                 f"{row['MissingRate']:g}", str(row["Seeds"])]
        cells += [f"{row[f'Plan_{k}_{m}']:.1f} / {row[f'Plan1_{k}_{m}']:.1f}" if not pd.isna(row[f"Plan_{k}_{m}"])
                  else "—" for k, m in columns]
        text += "| " + " | ".join(cells) + " |\n"
    return text


def synthetic_note(df: pd.DataFrame) -> str:
    data = sorted(set(df["Data"])) if "Data" in df.columns else []
    if any(d != "real" for d in data):
        return ("**SYNTHETIC DATA** — rows whose Data column is not 'real' come from generated "
                "MMSA-format data, not CMU-MOSI/MOSEI/SIMS; their numbers say nothing about real performance.\n\n")
    return ""


def write_csv(df: pd.DataFrame, path) -> Path:
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False)
    return Path(path)


def write_summary(res_dir, name: str = "summary") -> dict[str, Path]:
    """Rebuild `<res_dir>/<name>.csv|.md` (and the robustness table when there are missing-rate runs)."""
    res_dir = Path(res_dir)
    store = ResultStore(res_dir)
    summary = summary_table(store.records(), store.oracles())
    paths = {"csv": write_csv(summary, res_dir / f"{name}.csv")}
    # The folder is named, not located: no machine's absolute path in a committed table.
    text = f"# Results ({Path(res_dir).name})\n\n" + synthetic_note(summary) + markdown_table(summary)
    if (summary.get("Seeds", pd.Series(dtype=int)) == 0).any():
        text += ("\nRows named `oracle: …` are the synthetic generator's own linear read-outs on the test split "
                 "(text only; pooled text, audio and vision; and with the TRUE word alignment), not trained models.\n")
    text += alignment_table(summary)
    if not summary.empty and (summary["Protocol"] != COMPLETE).any():
        robust = robustness_table(summary)
        paths["robustness_csv"] = write_csv(robust, res_dir / f"{name}-robustness.csv")
        avg_cols = [c for c in robust.columns if c.endswith(("_avg", "_delta"))
                    and c.rsplit("_", 1)[0] in ("Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                                                "Mult_acc_2", "F1_score")]
        text += "\n## Robustness: average over missing rates and Δ = metric(0.1) − metric(0.7)\n\n"
        text += markdown_table(robust, avg_cols)
    paths["md"] = atomic_write_text(res_dir / f"{name}.md", text)
    return paths


def plot_robustness(summary: pd.DataFrame, out_dir, metric: str = "Has0_acc_2") -> list[Path]:
    """One PNG per (dataset, data, protocol): `metric` vs missing rate, a line per model, ±std band.
    Complete-data results are drawn at rate 0 on every curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if summary.empty or metric not in summary.columns:
        return paths
    complete = summary[summary["Protocol"] == COMPLETE]
    for (dataset, data, protocol), group in summary[summary["Protocol"] != COMPLETE].groupby(
            ["Dataset", "Data", "Protocol"], sort=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for model, rows in group.groupby("Model", sort=True):
            base = complete[(complete["Model"] == model) & (complete["Dataset"] == dataset) & (complete["Data"] == data)]
            rows = pd.concat([base, rows]).sort_values("MissingRate")
            x, y, s = rows["MissingRate"], rows[metric], rows[f"{metric}_std"].fillna(0)
            line, = ax.plot(x, y, marker="o", label=model)
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2)
        source = "SYNTHETIC data (not real)" if data != "real" else "real data"
        ax.set_title(f"{dataset.upper()} — {protocol} protocol — {source}")
        ax.set_xlabel("missing rate")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(title="model (mean ± std over seeds)")
        fig.tight_layout()
        path = Path(out_dir) / f"robustness-{dataset}-{data}-{protocol}-{metric}.png"
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def side_by_side(summary: pd.DataFrame, acc: str = "Non0_acc_2", f1: str = "Non0_F1_score") -> str:
    """Markdown: per (dataset, data, protocol), a row per model and a column per missing rate
    (complete data first), each cell 'Acc-2 / F1' — the shape of the paper's Table 1."""
    if summary.empty or acc not in summary.columns:
        return ""
    text = f"## Side by side: {acc} / {f1} (%) per missing rate\n\n"
    complete = summary[summary["Protocol"] == COMPLETE]
    protocols = sorted(set(summary["Protocol"]) - {COMPLETE}) or [COMPLETE]
    for (dataset, data), rows in summary.groupby(["Dataset", "Data"], sort=True):
        for protocol in protocols:
            block = pd.concat([complete[(complete["Dataset"] == dataset) & (complete["Data"] == data)],
                               rows[rows["Protocol"] == protocol] if protocol != COMPLETE else rows.iloc[:0]])
            rates = sorted(set(block["MissingRate"]))
            header = ["Model"] + ["complete" if r == 0 else f"MR {r:g}" for r in rates]
            source = "SYNTHETIC data" if data != "real" else "real data"
            text += f"### {dataset.upper()} · {protocol} · {source} ({data})\n\n"
            text += "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
            for model, model_rows in block.groupby("Model", sort=True):
                by_rate = model_rows.set_index("MissingRate")
                cells = [f"{by_rate.loc[r, acc]:.1f} / {by_rate.loc[r, f1]:.1f}" if r in by_rate.index else "—"
                         for r in rates]
                text += "| " + " | ".join([model] + cells) + " |\n"
            text += "\n"
    return text


def write_report(res_dir) -> dict[str, Path]:
    """`mmsa report`: the leaderboard and robustness tables of every run under res_dir, plus plots."""
    paths = write_summary(res_dir, name="leaderboard")
    store = ResultStore(res_dir)
    summary = summary_table(store.records(), store.oracles())
    atomic_write_text(paths["md"], paths["md"].read_text() + "\n" + side_by_side(summary))
    for i, path in enumerate(plot_robustness(summary, Path(res_dir) / "plots")):
        paths[f"plot{i + 1}"] = path
    return paths

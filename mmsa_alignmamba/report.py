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

from .results import COMPLETE, ResultStore, lower_is_better, model_label, plan_kinds
from .safeio import atomic_write, atomic_write_text

logger = logging.getLogger("mmsa_alignmamba")

KEYS = ["Model", "Dataset", "Data", "Protocol", "MissingRate"]
RAW_METRICS = {"MAE", "Corr", "Loss"}
HEADLINE = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_2", "F1_score", "MAE", "Corr"]


# How tables and figures name MMSA's metrics, and which F1 goes with which accuracy.
METRIC_NAMES = {"Has0_acc_2": "Has0 Acc-2 (%)", "Has0_F1_score": "Has0 F1 (%)", "Non0_acc_2": "Non0 Acc-2 (%)",
                "Non0_F1_score": "Non0 F1 (%)", "Mult_acc_2": "Acc-2 (%)", "Mult_acc_3": "Acc-3 (%)",
                "Mult_acc_5": "Acc-5 (%)", "Mult_acc_7": "Acc-7 (%)", "F1_score": "F1 (%)", "MAE": "MAE",
                "Corr": "Corr"}
F1_OF = {"Has0_acc_2": "Has0_F1_score", "Non0_acc_2": "Non0_F1_score", "Mult_acc_2": "F1_score"}
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_NOTE = (f"† : better than the best other model of the same setting at p < {SIGNIFICANCE_LEVEL:g} "
                     "(Welch's t-test over seeds, two-sided; needs 2+ seeds on both sides)")


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


def significance(records: list[dict], metric: str) -> pd.DataFrame:
    """Per model and setting (dataset, data, protocol, rate): the best other model there (by mean
    ``metric``) and Welch's two-sided t-test p-value over seeds between the two; ``Better`` says
    whether this model's mean is the better one. NaN p where either side has fewer than 2 seeds."""
    from scipy.stats import ttest_ind
    cells = cell_table(records)
    if cells.empty or metric not in cells.columns:
        return pd.DataFrame(columns=KEYS + ["Versus", "P", "Better"])
    sign = -1.0 if lower_is_better(metric) else 1.0
    rows = []
    for key, group in cells.groupby(KEYS[1:], sort=True):
        seeds = {m: g[metric].dropna().to_numpy() for m, g in group.groupby("Model")}
        means = {m: v.mean() for m, v in seeds.items() if len(v)}
        for model, values in seeds.items():
            others = {m: mu for m, mu in means.items() if m != model}
            if not others or not len(values):
                continue
            rival = max(others, key=lambda m: sign * others[m])
            p = float("nan")
            if len(values) > 1 and len(seeds[rival]) > 1:
                with np.errstate(all="ignore"):
                    p = float(ttest_ind(values, seeds[rival], equal_var=False).pvalue)
            rows.append(dict(zip(KEYS, (model, *key)), Versus=rival, P=p,
                             Better=bool(sign * values.mean() > sign * others[rival])))
    return pd.DataFrame(rows)


def significant(sig: pd.DataFrame, model: str, setting: tuple) -> bool:
    """Whether ``model`` beats the best other model of ``setting`` (dataset, data, protocol, rate)."""
    if sig.empty:
        return False
    hit = sig[(sig["Model"] == model) & (sig["Dataset"] == setting[0]) & (sig["Data"] == setting[1])
              & (sig["Protocol"] == setting[2]) & np.isclose(sig["MissingRate"], setting[3])]
    return bool(len(hit)) and bool(hit["Better"].iloc[0]) and hit["P"].iloc[0] < SIGNIFICANCE_LEVEL


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
        cells += [format_cell(row, m) for m in metrics]
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


def summary_tables(res_dir: Path, metric: str) -> tuple[ResultStore, pd.DataFrame, pd.DataFrame]:
    """The store of ``res_dir``, its summary and the significance table for ``metric`` (records read once)."""
    store = ResultStore(res_dir)
    records = store.records()
    return store, summary_table(records, store.oracles()), significance(records, metric)


def write_summary(res_dir, name: str = "summary", metric: str = "Has0_acc_2", paper_rows: bool = False,
                  tables=None, reference: str | None = None) -> dict[str, Path]:
    """Rebuild `<res_dir>/<name>.csv|.md` (and the robustness table when there are missing-rate
    runs); the side-by-side table and the significance columns are for ``metric``. ``tables``:
    what summary_tables gives, when the caller has it already. ``reference`` (e.g. 'mmsa'): that
    source's published rows for the datasets present, in their own section of the markdown."""
    res_dir = Path(res_dir)
    store, summary, sig = tables or summary_tables(res_dir, metric)
    table = summary
    if not sig.empty:
        table = summary.merge(sig.rename(columns={"Versus": f"{metric}_versus", "P": f"{metric}_p",
                                                  "Better": f"{metric}_better"}), on=KEYS, how="left")
    paths = {"csv": write_csv(table, res_dir / f"{name}.csv")}
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
    text += "\n" + side_by_side(summary, metric, sig)
    failures = store.failures()
    if failures:
        text += "\n## Runs that did not finish (run the same command again to retry them)\n\n"
        text += "| Model | Dataset | Data | Protocol | MissingRate | Seed | likely cause |\n|---|---|---|---|---|---|---|\n"
        for r in failures:
            c = r["cell"]
            text += (f"| {model_label(c['model'], c.get('variant', ''))} | {c['dataset']} | {c['data']} | {c['protocol']} | "
                     f"{c['rate']:g} | {c['seed']} | {r['likely_cause']} |\n")
    if paper_rows:
        text += paper_reference(summary)
    if reference:
        text += published_reference(summary, reference)
    paths["md"] = atomic_write_text(res_dir / f"{name}.md", text)
    return paths


def side_by_side(summary: pd.DataFrame, metric: str = "Has0_acc_2", sig: pd.DataFrame | None = None) -> str:
    """Markdown: per (dataset, data, protocol), a row per model and a column per missing rate
    (complete data first), each cell the ``metric`` (and its F1, for an accuracy) with ± std over
    seeds and † where it beats the best other model significantly — the shape of the paper's Table 1."""
    blocks = side_by_side_blocks(summary, metric)
    if not blocks:
        return ""
    partner = F1_OF.get(metric)
    text = (f"## Side by side: {metric_title(metric)} per missing rate (mean ± std over seeds; ranked by "
            "the first column)\n\n")
    for (dataset, data, protocol), block in blocks:
        rates = sorted(set(block["MissingRate"]))
        source = "SYNTHETIC data" if data != "real" else "real data"
        text += f"### {dataset.upper()} · {protocol} · {source} ({data})\n\n"
        header = ["Rank", "Model"] + [rate_label(protocol, r) for r in rates]
        text += "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        for rank, model in ranked_models(block, metric):
            by_rate = block[block["Model"] == model].set_index("MissingRate")
            cells = []
            for r in rates:
                if r not in by_rate.index:
                    cells.append("—")
                    continue
                row = by_rate.loc[r]
                mark = "†" if sig is not None and significant(sig, model, (dataset, data, row["Protocol"], r)) else ""
                cells.append(format_cell(row, metric) + (f" / {row[partner]:.1f}" if partner in row else "") + mark)
            text += "| " + " | ".join([str(rank), model] + cells) + " |\n"
        text += "\n"
    if sig is not None and not sig.empty:
        text += SIGNIFICANCE_NOTE + ".\n"
    return text


def ranked_models(block: pd.DataFrame, metric: str) -> list[tuple[int | str, str]]:
    """The models of a side-by-side block, best first by mean ``metric`` at the block's lowest rate
    (complete data where there is), each with its rank (ties share one: 1, 2, 2, 4); models without
    that rate follow, by name, ranked '—'."""
    first = block[block["MissingRate"] == block["MissingRate"].min()].dropna(subset=[metric])
    means = first.groupby("Model")[metric].mean()
    ranks = means.rank(method="min", ascending=lower_is_better(metric)).astype(int)
    ranked = sorted((int(r), m) for m, r in ranks.items())   # by rank, then by name
    return ranked + [("—", m) for m in sorted(set(block["Model"]) - set(means.index))]


def metric_title(metric: str) -> str:
    """How a table names ``metric``, with the F1 that goes with an accuracy: 'Has0 Acc-2 (%) / Has0 F1 (%)'."""
    partner = F1_OF.get(metric)
    return METRIC_NAMES.get(metric, metric) + (f" / {METRIC_NAMES.get(partner, partner)}" if partner else "")


def side_by_side_blocks(summary: pd.DataFrame, metric: str) -> list[tuple[tuple, pd.DataFrame]]:
    """The (dataset, data, protocol) blocks of the side-by-side tables: each protocol's rows with
    the complete-data rows of the same data as its rate 0 (the oracle rows left out)."""
    if summary.empty or metric not in summary.columns:
        return []
    measured = summary[summary["Seeds"] > 0]
    complete = measured[measured["Protocol"] == COMPLETE]
    blocks = []
    for (dataset, data), rows in measured.groupby(["Dataset", "Data"], sort=True):
        here = complete[(complete["Dataset"] == dataset) & (complete["Data"] == data)]
        for protocol in sorted(set(rows["Protocol"]) - {COMPLETE}) or [COMPLETE]:
            block = pd.concat([here, rows[rows["Protocol"] == protocol] if protocol != COMPLETE else rows.iloc[:0]])
            blocks.append(((dataset, data, protocol), block))
    return blocks


def applied_rate(protocol: str, rate: float) -> float:
    """The share of modality slots a protocol actually drops at a nominal rate (imder caps at 2/3)."""
    if protocol == COMPLETE or rate == 0:
        return 0.0
    from .missing import make_protocol
    return float(make_protocol(protocol, rate, 0).realised_rate)


def rate_label(protocol: str, rate: float) -> str:
    if rate == 0:
        return "complete"
    applied = applied_rate(protocol, rate)
    return f"MR {rate:g}" + (f" (applied {applied:.2f})" if abs(applied - rate) > 5e-3 else "")


def format_cell(row, metric: str) -> str:
    """'mean ± std'; one seed: the value alone, not a "± 0.00" that would read as a measured spread."""
    std = row.get(f"{metric}_std") if row.get("Seeds", 2) > 1 else None
    value = row[metric]
    if pd.isna(value):
        return "—"
    return f"{value:.2f} ± {std:.2f}" if std is not None and not pd.isna(std) else f"{value:.2f}"


def reported_tables(summary: pd.DataFrame) -> list[tuple[str, list[float], list[tuple[str, str, list]]]]:
    """The paper's published AlignMamba numbers for the datasets in ``summary``: per dataset, the
    missing rates and rows (label, 'Acc-2 / F1' with complete modalities, per rate the same or None)."""
    from .paper import REPORTED_COMPLETE, REPORTED_MISSING
    datasets = sorted(set(summary["Dataset"]) & set(REPORTED_MISSING)) if not summary.empty else []
    tables = []
    for dataset in datasets:
        rates = list(REPORTED_MISSING[dataset])
        rows = []
        for variant, by_data in REPORTED_COMPLETE.items():
            acc, f1 = by_data[dataset]
            missing = [f"{a:.1f} / {b:.1f}" for a, b in REPORTED_MISSING[dataset].values()] \
                if variant == "alignmamba" else [None] * len(rates)
            rows.append((model_label("alignmamba", "" if variant == "alignmamba" else variant), f"{acc:.1f} / {f1:.1f}",
                         missing))
        tables.append((dataset, rates, rows))
    return tables


def paper_reference(summary: pd.DataFrame) -> str:
    """Markdown: the paper's published AlignMamba numbers for the datasets present, in their own
    section (never mixed with the measured rows)."""
    from .paper import REPORTED_NOTE
    tables = reported_tables(summary)
    if not tables:
        return ""
    text = f"\n## Reference: {REPORTED_NOTE}\n\n"
    for dataset, rates, rows in tables:
        text += f"### {dataset.upper()}: Table 3 (complete modalities) and Table 1 (missing rates, IMDer's protocol)\n\n"
        text += "| Model | complete | " + " | ".join(f"MR {r:g}" for r in rates) + " |\n"
        text += "|---|---|" + "---|" * len(rates) + "\n"
        for label, complete, missing in rows:
            text += f"| {label} (reported in the paper) | {complete} | " + " | ".join(m or "—" for m in missing) + " |\n"
        text += "\n"
    return text


def published_reference(summary: pd.DataFrame, name: str) -> str:
    """Markdown: ``name``'s published rows (reference.py) for each dataset in ``summary``, in their own
    section after the measured ones, every row marked 'reported by MMSA' (never mixed with them)."""
    from .reference import reference_tables
    tables, source, note = reference_tables(name, [] if summary.empty else summary["Dataset"])
    text = ""
    for dataset, rows, metrics in tables:
        if not text:
            text = f"\n## Reference: reported by {name.upper()}, not measured here\n\n{note} Source: {source}.\n\n"
        text += f"### {dataset.upper()} (real data, as reported by {name.upper()})\n\n"
        text += "| Model | Data setting | " + " | ".join(metrics) + " |\n|---|---|" + "---|" * len(metrics) + "\n"
        for r in rows:
            text += (f"| {r['model']} (reported by {name.upper()}) | {r['data_setting']} | "
                     + " | ".join(f"{r[m]:g}" for m in metrics) + " |\n")
        text += "\n"
    return text

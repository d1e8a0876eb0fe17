"""The report's forms for papers and browsers: figures (PDF, SVG, 200-dpi PNG), a booktabs LaTeX
table in the shape of the paper's Table 1, and a self-contained HTML page.

Everything is built from report.py's summary (mean and std over seeds per model and setting) and
its significance table; measured rows and the paper's published numbers never share a table body.
"""
from __future__ import annotations

import base64
import html as _html
import io
from pathlib import Path

import pandas as pd

from .report import (
    COMPLETE,
    F1_OF,
    METRIC_NAMES,
    SIGNIFICANCE_NOTE,
    applied_rate,
    format_cell,
    metric_title,
    paper_reference,
    published_reference,
    ranked_models,
    rate_label,
    reported_tables,
    side_by_side,
    side_by_side_blocks,
    significant,
    summary_tables,
    synthetic_note,
    write_summary,
)
from .results import lower_is_better
from .safeio import atomic_write, atomic_write_text

__all__ = ["write_report", "robustness_figures", "latex", "html", "FIGURE_FORMATS"]

FIGURE_FORMATS = ("pdf", "svg", "png")
PNG_DPI = 200


# ------------------------------------------------------------------------------------ figures
def robustness_figures(summary: pd.DataFrame, out_dir, metric: str) -> tuple[list[Path], list[str]]:
    """One figure per (dataset, data, protocol) with missing rates: ``metric`` against the rate
    the protocol actually applied, a line per model with its ± std band, complete data at 0.
    Each as PDF, SVG and a 200-dpi PNG. -> (paths, notes for the reader)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths, notes = [], []
    blocks = [(k, b) for k, b in side_by_side_blocks(summary, metric) if k[2] != COMPLETE]
    if not blocks:
        notes.append("no missing-rate runs: no robustness figure (run a sweep with --missing-protocol and "
                     "--missing-rates 0 0.1 … to get one)")
        return paths, notes
    label = METRIC_NAMES.get(metric, metric)
    for (dataset, data, protocol), block in blocks:
        fig, ax = plt.subplots(figsize=(6.4, 3.9))
        for model, rows in block.groupby("Model", sort=True):
            rows = rows.sort_values("MissingRate")
            x = [applied_rate(protocol, r) for r in rows["MissingRate"]]
            y, s = rows[metric].to_numpy(), rows[f"{metric}_std"].fillna(0).to_numpy()
            line, = ax.plot(x, y, marker="o", label=model)
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.18, linewidth=0)
        if not (block["MissingRate"] == 0).any():
            notes.append(f"{dataset.upper()} {protocol} ({data}): no complete-data run, so no point at rate 0 "
                         "(add rate 0 to --missing-rates)")
        source = "SYNTHETIC data (not real)" if data != "real" else "real data"
        ax.set_title(f"{dataset.upper()} · {protocol} protocol · {source}", fontsize=10)
        ax.set_xlabel("missing rate actually applied (share of modality slots dropped)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        # outside the axes: never over a model's band
        ax.legend(title="mean ± std over seeds", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                  title_fontsize=8, frameon=False)
        fig.tight_layout()
        stem = Path(out_dir) / f"robustness-{dataset}-{data}-{protocol}-{metric}"
        for fmt in FIGURE_FORMATS:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=PNG_DPI, bbox_inches="tight")
            with atomic_write(stem.with_suffix(f".{fmt}")) as f:
                f.write(buf.getvalue())
            paths.append(stem.with_suffix(f".{fmt}"))
        plt.close(fig)
    return paths, notes


# ------------------------------------------------------------------------------------ LaTeX
def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("[", "{[}"), ("]", "{]}")):
        text = text.replace(a, b)
    return text


def _best(block: pd.DataFrame, metric: str, rate: float) -> float | None:
    here = block[block["MissingRate"] == rate][metric].dropna()
    if here.empty:
        return None
    return here.min() if lower_is_better(metric) else here.max()


def latex(summary: pd.DataFrame, sig: pd.DataFrame, metric: str, paper_rows: bool = False,
          reference: str | None = None) -> str:
    """booktabs tables, one per (dataset, data, protocol): a row per model, a column per missing
    rate, 'mean ± std' of ``metric`` (and its F1), the best mean of each column in bold, † where
    a model beats the best other one significantly; the paper's numbers, and ``reference``'s
    published rows, each in tables of their own."""
    partner = F1_OF.get(metric)
    name = metric_title(metric)
    out = ["% mmsa report: booktabs tables (\\usepackage{booktabs}); generated, do not edit by hand", ""]
    for (dataset, data, protocol), block in side_by_side_blocks(summary, metric):
        rates = sorted(set(block["MissingRate"]))
        source = "SYNTHETIC data (not real data)" if data != "real" else "real data"
        caption = (f"{_tex(name)} on {dataset.upper()}, {_tex(protocol)} protocol, {source} ({_tex(data)}): "
                   "mean $\\pm$ std over seeds; best mean per column in bold; "
                   + _tex(SIGNIFICANCE_NOTE).replace("†", "$^\\dagger$") + ".")
        out += ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
                f"\\begin{{tabular}}{{l{'c' * len(rates)}}}", "\\toprule",
                "Model & " + " & ".join(_tex(rate_label(protocol, r)) for r in rates) + " \\\\", "\\midrule"]
        for _, model in ranked_models(block, metric):       # best first, as the markdown ranks them
            by_rate = block[block["Model"] == model].set_index("MissingRate")
            cells = []
            for r in rates:
                if r not in by_rate.index:
                    cells.append("--")
                    continue
                row = by_rate.loc[r]
                cell = format_cell(row, metric).replace("±", "$\\pm$")
                if _best(block, metric, r) == row[metric]:
                    cell = f"\\textbf{{{cell}}}"
                if partner in row and not pd.isna(row[partner]):
                    cell += f" / {row[partner]:.1f}"
                if significant(sig, model, (dataset, data, row["Protocol"], r)):
                    cell += "$^\\dagger$"
                cells.append(cell)
            out.append(f"{_tex(model)} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    if paper_rows:
        out += _paper_latex(summary)
    if reference:
        out += _reference_latex(summary, reference)
    return "\n".join(out) + "\n"


def _paper_latex(summary: pd.DataFrame) -> list[str]:
    from .paper import REPORTED_NOTE
    out = []
    for dataset, rates, rows in reported_tables(summary):
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\caption{{{dataset.upper()}: {_tex(REPORTED_NOTE)}.}}",
                f"\\begin{{tabular}}{{l{'c' * (1 + len(rates))}}}", "\\toprule",
                "Model & complete & " + " & ".join(f"MR {r:g}" for r in rates) + " \\\\", "\\midrule"]
        for label, complete, missing in rows:
            out.append(f"{_tex(label)} (paper) & {complete} & " + " & ".join(m or "--" for m in missing) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return out


def _reference_latex(summary: pd.DataFrame, name: str) -> list[str]:
    """``name``'s published rows (reference.py), one table per dataset present, every row marked."""
    from .reference import reference_tables
    tables, source, _ = reference_tables(name, [] if summary.empty else summary["Dataset"])
    out = []
    for dataset, rows, metrics in tables:
        out += ["\\begin{table}[t]", "\\centering", "\\small",
                f"\\caption{{{dataset.upper()}, real data: reported by {name.upper()} ({_tex(source)}), "
                "not measured here.}", f"\\begin{{tabular}}{{ll{'c' * len(metrics)}}}", "\\toprule",
                "Model & Data setting & " + " & ".join(_tex(m) for m in metrics) + " \\\\", "\\midrule"]
        for r in rows:
            out.append(f"{_tex(r['model'])} (reported by {name.upper()}) & {_tex(r['data_setting'])} & "
                       + " & ".join(f"{r[m]:g}" for m in metrics) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return out


# ------------------------------------------------------------------------------------ HTML

def page_asset(name: str) -> str:
    """The page's CSS or JS from its one source file (mmsa_alignmamba/assets/), on one line: the page
    stays self-contained, and the pages a sweep writes do not each repeat the source's lines."""
    from importlib import resources
    return " ".join(resources.files("mmsa_alignmamba").joinpath("assets", name).read_text().split())


def _table(df: pd.DataFrame, columns: list[str], metric_columns: list[str]) -> str:
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in columns + [METRIC_NAMES.get(m, m) for m in metric_columns])
    body = []
    for _, row in df.iterrows():
        cells = [f"<td>{_html.escape(str(row[c]))}</td>" for c in columns]
        cells += [f"<td data-value=\"{row[m]:.6g}\">{_html.escape(format_cell(row, m))}</td>"
                  if not pd.isna(row[m]) else "<td data-value=\"\">—</td>" for m in metric_columns]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class=\"sortable\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html(res_dir, summary: pd.DataFrame, sig: pd.DataFrame, metric: str, figures: list[Path],
         paper_rows: bool = False, reference: str | None = None) -> str:
    """One self-contained page: the leaderboard as a sortable table (click a header), the
    side-by-side tables, the figures embedded as PNG, the paper's numbers and ``reference``'s
    published rows apart."""
    title = f"mmsa report — {Path(res_dir).name}"
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_html.escape(title)}</title>"
             f"<style>{page_asset('summary.css')}</style></head><body>", f"<h1>{_html.escape(title)}</h1>"]
    note = synthetic_note(summary)
    if note:
        parts.append(f"<p class=\"synthetic\">{_html.escape(note.replace('**', '').strip())}</p>")
    if summary.empty:
        parts.append("<p>No finished runs.</p>")
    else:
        keys = [c for c in ("Model", "Dataset", "Data", "Protocol", "MissingRate", "Seeds") if c in summary.columns]
        metrics = [m for m in METRIC_NAMES if m in summary.columns]
        parts += ["<h2>Leaderboard (mean ± std over seeds; click a column to sort)</h2>",
                  _table(summary, keys, metrics)]
        parts.append(_markdown_tables_to_html(side_by_side(summary, metric, sig)))
    pngs = [p for p in figures if p.suffix == ".png"]
    if pngs:
        parts.append("<h2>Figures</h2>")
        for path in pngs:
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<figure><img alt=\"{_html.escape(path.stem)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{_html.escape(path.stem)} (PDF and SVG beside it)</figcaption></figure>")
    if paper_rows:
        parts.append("<div class=\"reported\">" + _markdown_tables_to_html(paper_reference(summary)) + "</div>")
    if reference:
        parts.append("<div class=\"reported\">" + _markdown_tables_to_html(published_reference(summary, reference))
                     + "</div>")
    parts.append(f"<script>{page_asset('summary.js')}</script></body></html>")
    return "\n".join(parts) + "\n"


def _markdown_tables_to_html(text: str) -> str:
    """The report's own markdown (headings, pipe tables, paragraphs) as HTML."""
    out, rows = [], []

    def flush():
        if rows:
            head, *body = rows
            out.append("<table class=\"sortable\"><thead><tr>" + "".join(f"<th>{_html.escape(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_html.escape(c)}</td>" for c in r)
                                                          + "</tr>" for r in body) + "</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{_html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_html.escape(line.strip())}</p>")
    flush()
    return "\n".join(out)


def write_report(res_dir, metric: str = "Has0_acc_2", formats=("md", "html"), paper_rows: bool = False,
                 reference: str | None = None) -> dict:
    """`mmsa report`: the summary of every run under res_dir (the same files a run writes, with
    the side-by-side table and significance for ``metric``), its figures, and the LaTeX / HTML
    forms asked for; ``reference`` (e.g. 'mmsa'): that source's published rows in their own
    section of each. -> {what: path}, plus "notes": things the reader should know."""
    res_dir = Path(res_dir)
    tables = summary_tables(res_dir, metric)
    paths = write_summary(res_dir, metric=metric, paper_rows=paper_rows, tables=tables, reference=reference)
    _, summary, sig = tables
    figures, notes = robustness_figures(summary, res_dir / "figures", metric)
    paths.update({f"figure{i + 1}": p for i, p in enumerate(figures)})
    if "latex" in formats:
        paths["latex"] = atomic_write_text(res_dir / "summary.tex", latex(summary, sig, metric, paper_rows, reference))
    if "html" in formats:
        paths["html"] = atomic_write_text(res_dir / "summary.html",
                                          html(res_dir, summary, sig, metric, figures, paper_rows, reference))
    paths["notes"] = notes
    return paths

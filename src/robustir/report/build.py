"""Building the report of an experiment output folder: Markdown, CSV, LaTeX and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

from robustir.data.atomic import atomic_write_text
from robustir.errors import RobustirError
from robustir.experiments.db import DB_NAME, ResultsDB
from robustir.report.plots import sweep_plots, transfer_heatmaps
from robustir.report.published import published
from robustir.report.tables import (Summary, Table, attach_published, column_label, long_rows, model_label,
                                    per_item_tables, pivot_tables, summarize, to_csv, to_latex, to_markdown)

_GRID = ("reference", "input", "adversarial", "restored_clean", "restored_adversarial", "perturbation")
_GRID_TITLES = {"reference": "ground truth", "input": "clean input", "adversarial": "adversarial input",
                "restored_clean": "restored (clean)", "restored_adversarial": "restored (attacked)",
                "perturbation": "perturbation (amplified)"}


@dataclass
class ReportFiles:
    """Paths of what `build_report` wrote."""

    markdown: Path
    html: Path
    csv: Path
    latex: Path
    tables: list[Table]


def load_summary(out_dir: Path) -> Summary:
    """Read the database of an output folder and aggregate it (published numbers attached when named)."""
    db_path = out_dir / DB_NAME
    if not db_path.is_file():
        raise RobustirError(f"{out_dir}: no results database ({DB_NAME}); run an experiment into it first")
    with ResultsDB(db_path, read_only=True) as db:
        config = json.loads(db.get_meta("config") or "{}")
        rows = db.rows()
    if not rows:
        raise RobustirError(f"{db_path}: the database holds no finished jobs yet")
    summary = summarize(rows, config)
    if config.get("paper"):
        attach_published(summary, published(config["paper"]))
    return summary


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" loading="lazy">'


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table.rows)
    return (f"<h3>{html.escape(table.title)}</h3><div class='scroll'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}h1{margin-bottom:.2rem}.meta{color:#666;font-size:.9rem}table{border-collapse:collapse;margin:.5rem 0;
font-size:.85rem}th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}thead th{background:#f4f4f4}.scroll{overflow-x:auto}
.grid{display:grid;grid-template-columns:repeat(6,1fr);gap:4px;margin-bottom:1rem}.grid figure{margin:0}
.grid img{width:100%;image-rendering:pixelated;border:1px solid #ccc}.grid figcaption{font-size:.7rem;color:#555}
.plots img{max-width:100%;margin:.5rem 0}.note{background:#f7f7e8;padding:.5rem 1rem;border-left:3px solid #cc9}
"""


def render_html(summary: Summary, out_dir: Path, tables: list[Table], item_tables: list[Table],
                max_grid_rows: int = 3) -> str:
    """The self-contained HTML report (images and plots embedded as data URIs)."""
    cfg = summary.config
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>robustir: "
             f"{html.escape(cfg.get('name', 'experiment'))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(cfg.get('name', 'experiment'))}</h1>",
             f"<p class='meta'>fingerprint {html.escape(str(cfg.get('fingerprint')))} · seed {cfg.get('seed')} · "
             f"{cfg.get('jobs', '?')} jobs · report built {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"]
    if cfg.get("description"):
        parts.append(f"<p>{html.escape(cfg['description'])}</p>")
    if cfg.get("paper"):
        parts.append(f"<p class='note'>Published numbers of paper table <b>{html.escape(cfg['paper'])}</b> are shown "
                     f"in brackets <code>[paper …]</code> beside ours where the paper has the same cell. Our models "
                     f"and data may differ from the paper's (see the experiment file), so compare trends, not "
                     f"decimals.</p>")
    parts.append("<h2>Results</h2>")
    parts += [_html_table(t) for t in tables]
    figs = sweep_plots(summary, "steps") + sweep_plots(summary, "eps") + transfer_heatmaps(summary)
    if figs:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for title, png in figs:
            parts.append(f"<figure><img src='data:image/png;base64,{base64.b64encode(png).decode()}' "
                         f"alt='{html.escape(title)}'><figcaption>{html.escape(title)}</figcaption></figure>")
        parts.append("</div>")
    if summary.artifacts:
        parts.append("<h2>Examples</h2>")
        for (ds, model, col), entries in sorted(summary.artifacts.items(),
                                                key=lambda kv: (kv[0][0], kv[0][1], kv[0][2].attack,
                                                                kv[0][2].params_json)):
            parts.append(f"<h3>{html.escape(model_label(summary, model))} · {html.escape(column_label(summary, col))}"
                         f" · {html.escape(ds)}</h3>")
            for item, arts in sorted(entries)[:max_grid_rows]:
                parts.append("<div class='grid'>")
                for key in _GRID:
                    if key in arts and (out_dir / arts[key]).is_file():
                        parts.append(f"<figure>{_img_tag(out_dir / arts[key], f'{item} {key}')}"
                                     f"<figcaption>{html.escape(item)}: {_GRID_TITLES[key]}</figcaption></figure>")
                parts.append("</div>")
    if item_tables:
        parts.append("<h2>Per image</h2>")
        parts += [_html_table(t) for t in item_tables]
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(out_dir: str | Path) -> ReportFiles:
    """Write report.md, report.html, results.csv and tables.tex into the output folder (atomically)."""
    out = Path(out_dir)
    summary = load_summary(out)
    tables = pivot_tables(summary)
    item_tables = per_item_tables(summary)
    md = [f"# {summary.config.get('name', 'experiment')}\n"]
    if summary.config.get("description"):
        md.append(summary.config["description"] + "\n")
    md += [to_markdown(t) for t in tables]
    md += [to_markdown(t) for t in item_tables]
    files = ReportFiles(out / "report.md", out / "report.html", out / "results.csv", out / "tables.tex", tables)
    atomic_write_text(files.markdown, "\n".join(md))
    atomic_write_text(files.csv, to_csv(long_rows(summary)))
    atomic_write_text(files.latex, "\n".join(to_latex(t) for t in tables + item_tables))
    atomic_write_text(files.html, render_html(summary, out, tables, item_tables))
    return files

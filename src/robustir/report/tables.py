"""Result tables from the results database: aggregation, paper-style pivots, Markdown / CSV / LaTeX rendering."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustir.report.published import SET12_FILES, Published, lookup

METRIC_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "mae": "MAE", "ncc": "NCC"}


@dataclass
class Cell:
    """Mean clean and attacked value of one metric over the images of a group."""

    clean: float
    attacked: float
    n: int
    published_clean: float | None = None
    published_attacked: float | None = None


@dataclass(frozen=True)
class Column:
    """An attack configuration: attack id and one grid point of its parameters."""

    attack: str
    params_json: str

    @property
    def params(self) -> dict[str, Any]:
        """The grid point as a dict."""
        return json.loads(self.params_json)

    def sort_key(self, attack_order: list[str]) -> tuple[Any, ...]:
        """Attacks in file order, then parameters in numeric order (steps 5 before 10)."""
        pos = attack_order.index(self.attack) if self.attack in attack_order else len(attack_order)
        values = tuple((k, (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)))
                       for k, v in sorted(self.params.items()))
        return (pos, self.attack, values)


@dataclass
class Summary:
    """Everything the report shows, aggregated from database rows only."""

    config: Mapping[str, Any]
    cells: dict[tuple[str, str, str, Column, str], Cell]  # (dataset, source, eval_model, column, metric)
    per_item: dict[tuple[str, str, str, Column, str, str], tuple[float, float]]  # (+ item)
    varying: dict[str, list[str]]  # attack id -> parameter names that vary in its grid
    metrics: list[str]
    artifacts: dict[tuple[str, str, Column], list[tuple[str, dict[str, str]]]] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)


def _mean(values: Sequence[float]) -> float:
    """Mean that keeps +inf (identical images) instead of producing NaN."""
    return math.fsum(values) / len(values) if values else float("nan")


def summarize(rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> Summary:
    """Aggregate database rows into mean cells per (dataset, crafting model, eval model, attack config, metric)."""
    groups: dict[tuple[str, str, str, Column, str], list[tuple[float, float]]] = defaultdict(list)
    per_item: dict[tuple[str, str, str, Column, str, str], tuple[float, float]] = {}
    values_seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    artifacts: dict[tuple[str, str, Column], list[tuple[str, dict[str, str]]]] = defaultdict(list)
    metrics: list[str] = []
    seen_art: set[str] = set()
    for r in rows:
        col = Column(r["attack"], json.dumps(r["params"], sort_keys=True))
        key = (r["dataset"], r["model"], r["eval_model"], col, r["metric"])
        clean = float("nan") if r["clean"] is None else r["clean"]
        attacked = float("nan") if r["attacked"] is None else r["attacked"]
        groups[key].append((clean, attacked))
        per_item[(*key, r["item"])] = (clean, attacked)
        for k, v in r["params"].items():
            values_seen[r["attack"]][k].add(json.dumps(v))
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
        if r["artifacts"] and r["eval_model"] == r["model"] and r["job_key"] not in seen_art:
            seen_art.add(r["job_key"])
            artifacts[(r["dataset"], r["model"], col)].append((r["item"], r["artifacts"]))
    cells = {k: Cell(_mean([c for c, _ in v]), _mean([a for _, a in v]), len(v)) for k, v in groups.items()}
    varying = {a: sorted(k for k, vals in ps.items() if len(vals) > 1) for a, ps in values_seen.items()}
    order = [m for m in ("psnr", "ssim", "mae", "ncc") if m in metrics]
    order += [m for m in metrics if m not in order]
    return Summary(config, cells, per_item, varying, order, dict(artifacts))


def datasets_in_order(summary: Summary) -> list[str]:
    """Dataset ids with results, in the experiment file's order."""
    present = {k[0] for k in summary.cells}
    order = [d for d in summary.config.get("data", {}) if d in present]
    return order + sorted(present - set(order))


def fmt_param(name: str, value: Any) -> str:
    """Human form of a parameter: eps in k/255, others as given."""
    if name in ("eps", "alpha") and isinstance(value, (int, float)):
        k = value * 255
        return f"{name}={k:.3g}/255" if abs(k - round(k)) < 1e-6 or k >= 0.1 else f"{name}={value:.3g}"
    return f"{name}={value}"


def column_label(summary: Summary, col: Column) -> str:
    """Attack label plus the parameters that vary in its grid, e.g. `PGD (steps=10)`."""
    label = summary.config.get("attacks", {}).get(col.attack, {}).get("label", col.attack)
    shown = [fmt_param(k, col.params[k]) for k in summary.varying.get(col.attack, []) if k in col.params]
    return f"{label} ({', '.join(shown)})" if shown else label


def model_label(summary: Summary, model_id: str) -> str:
    """The model's display label from the experiment config."""
    return summary.config.get("models", {}).get(model_id, {}).get("label", model_id)


def dataset_label(summary: Summary, data_id: str) -> str:
    """The dataset's display label from the experiment config."""
    return summary.config.get("data", {}).get(data_id, {}).get("label", data_id)


def paper_key(summary: Summary, kind: str, ident: str) -> str:
    """The name a model / dataset / attack has in the paper's table (`paper_label`, else its label)."""
    entry = summary.config.get(kind, {}).get(ident, {})
    return entry.get("paper_label") or entry.get("label") or ident


def attach_published(summary: Summary, records: list[Published]) -> int:
    """Fill each cell's published clean/attacked values where the paper has them; returns how many matched."""
    summary.published = records
    matched = 0
    for (ds, _src, ev, col, metric), cell in summary.cells.items():
        common = {"dataset": paper_key(summary, "data", ds), "model": paper_key(summary, "models", ev),
                  "metric": metric}
        attack_label = paper_key(summary, "attacks", col.attack)
        cell.published_clean = lookup(records, attack="clean", params={}, **common)
        cell.published_attacked = lookup(records, attack=attack_label, params=col.params, **common)
        matched += cell.published_attacked is not None
    return matched


@dataclass
class Table:
    """A rendered-agnostic table: title, header, rows of strings (first column = row label)."""

    title: str
    header: list[str]
    rows: list[list[str]]


def _num(v: float | None, metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if math.isinf(v):
        return "inf"
    return f"{v:.4f}" if metric in ("ssim", "ncc") or metric.startswith(("ssim", "ncc")) else f"{v:.2f}"


def pivot_tables(summary: Summary) -> list[Table]:
    """Paper layout: per dataset, rows = models (transfer rows `target ← source`), columns = clean + attack configs,
    each cell `metric1 / metric2 ...`, with the published value in brackets where the paper has one."""
    tables = []
    metrics = summary.metrics
    for ds in datasets_in_order(summary):
        order = list(summary.config.get("attacks", {}))
        cols = sorted({k[3] for k in summary.cells if k[0] == ds}, key=lambda c: c.sort_key(order))
        pairs = sorted({(k[1], k[2]) for k in summary.cells if k[0] == ds}, key=lambda p: (p[0] != p[1], p))
        header = ["model", "clean " + " / ".join(METRIC_NAMES.get(m, m) for m in metrics)]
        header += [column_label(summary, c) for c in cols]
        rows = []
        for src, ev in pairs:
            label = model_label(summary, ev) if src == ev else f"{model_label(summary, ev)} ← {model_label(summary, src)}"
            row = [label]
            clean_parts, pub_parts = [], []
            for m in metrics:
                cell = next((summary.cells[(ds, src, ev, c, m)] for c in cols if (ds, src, ev, c, m) in summary.cells),
                            None)
                clean_parts.append(_num(cell.clean if cell else None, m))
                if cell and cell.published_clean is not None:
                    pub_parts.append(_num(cell.published_clean, m))
            row.append(" / ".join(clean_parts) + (f" [paper {' / '.join(pub_parts)}]" if pub_parts else ""))
            for c in cols:
                parts, pubs = [], []
                for m in metrics:
                    cell = summary.cells.get((ds, src, ev, c, m))
                    parts.append(_num(cell.attacked if cell else None, m))
                    if cell and cell.published_attacked is not None:
                        pubs.append(_num(cell.published_attacked, m))
                row.append(" / ".join(parts) + (f" [paper {' / '.join(pubs)}]" if pubs else ""))
            rows.append(row)
        tables.append(Table(f"{dataset_label(summary, ds)} — attacked {' / '.join(METRIC_NAMES.get(m, m) for m in metrics)}",
                            header, rows))
    return tables


def _published_item(summary: Summary, ds: str, ev: str, col: Column, metric: str, item: str
                    ) -> tuple[float, float] | None:
    """Published (clean, attacked) of one image, if the paper lists per-image values (Set12 files 01-12 by name)."""
    if not summary.published:
        return None
    name = SET12_FILES.get(item, item)
    common = {"dataset": paper_key(summary, "data", ds), "model": paper_key(summary, "models", ev), "metric": metric,
              "item": name}
    attack_label = paper_key(summary, "attacks", col.attack)
    clean = lookup(summary.published, attack="clean", params={}, **common)
    attacked = lookup(summary.published, attack=attack_label, params=col.params, **common)
    return (clean, attacked) if clean is not None and attacked is not None else None


def per_item_tables(summary: Summary, max_items: int = 24) -> list[Table]:
    """Per-image tables (clean → attacked of the first metric) for datasets with at most `max_items` items."""
    tables = []
    for ds in datasets_in_order(summary):
        items = sorted({k[5] for k in summary.per_item if k[0] == ds})
        if not items or len(items) > max_items:
            continue
        for m in summary.metrics:
            order = list(summary.config.get("attacks", {}))
            keys = sorted({(k[1], k[2], k[3]) for k in summary.per_item if k[0] == ds and k[4] == m},
                          key=lambda t: (t[0] != t[1], t[0], t[1], t[2].sort_key(order)))
            header = ["image"] + [
                (model_label(summary, ev) if src == ev else f"{model_label(summary, ev)} ← {model_label(summary, src)}")
                + f": {column_label(summary, col)}" for src, ev, col in keys]
            rows = []
            for it in items:
                row = [it]
                for src, ev, col in keys:
                    v = summary.per_item.get((ds, src, ev, col, m, it))
                    text = "–" if v is None else f"{_num(v[0], m)} → {_num(v[1], m)}"
                    pub = _published_item(summary, ds, ev, col, m, it)
                    row.append(text + (f" [paper {_num(pub[0], m)} → {_num(pub[1], m)}]" if pub else ""))
                rows.append(row)
            tables.append(Table(f"{dataset_label(summary, ds)} per image — {METRIC_NAMES.get(m, m)} clean → attacked",
                                header, rows))
    return tables


def long_rows(summary: Summary) -> list[dict[str, Any]]:
    """One row per (dataset, source, eval model, attack config, metric) with means and published values."""
    out = []
    for (ds, src, ev, col, m), cell in sorted(summary.cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                    kv[0][3].attack,
                                                                                    kv[0][3].params_json, kv[0][4])):
        out.append({"dataset": ds, "crafted_on": src, "evaluated_on": ev, "attack": col.attack,
                    "params": col.params_json, "metric": m, "images": cell.n, "clean": cell.clean,
                    "attacked": cell.attacked, "drop": cell.clean - cell.attacked,
                    "paper_clean": cell.published_clean, "paper_attacked": cell.published_attacked})
    return out


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown table with a heading."""
    esc = [[c.replace("|", "\\|") for c in r] for r in [table.header, *table.rows]]
    lines = [f"### {table.title}", "", "| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines) + "\n"


def to_latex(table: Table) -> str:
    """A LaTeX tabular (booktabs) with escaped cells."""
    def esc(s: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("←", r"$\leftarrow$"), ("→", r"$\rightarrow$"), ("–", "--")):
            s = s.replace(a, b)
        return s

    lines = [f"% {esc(table.title)}", r"\begin{tabular}{l" + "c" * (len(table.header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of dict rows (header from the first row)."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()

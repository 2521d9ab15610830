"""Report figures (matplotlib, headless): metric vs iterations, metric vs epsilon, transferability heatmap."""

from __future__ import annotations

import io
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from robustir.report.tables import METRIC_NAMES, Summary, dataset_label, model_label  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def sweep_plots(summary: Summary, param: str, metric: str = "psnr") -> list[tuple[str, bytes]]:
    """One figure per dataset: attacked `metric` vs `param` (steps or eps), a line per (model, attack, other params)."""
    figures = []
    for ds in sorted({k[0] for k in summary.cells}):
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        clean: dict[str, float] = {}
        for (d, src, ev, col, m), cell in summary.cells.items():
            if d != ds or m != metric or src != ev or param not in summary.varying.get(col.attack, []):
                continue
            others = {k: v for k, v in col.params.items() if k != param and k in summary.varying.get(col.attack, [])}
            attack_label = summary.config.get("attacks", {}).get(col.attack, {}).get("label", col.attack)
            name = f"{model_label(summary, ev)} · {attack_label}" + (f" {others}" if others else "")
            x = float(col.params[param]) * (255 if param == "eps" else 1)
            lines[name].append((x, cell.attacked))
            clean[model_label(summary, ev)] = cell.clean
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for name, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for i, (mname, v) in enumerate(sorted(clean.items())):
            if math.isfinite(v):
                ax.axhline(v, color=f"C{i}", linestyle=":", linewidth=1)
        ax.set_xlabel("iterations" if param == "steps" else "ε (×1/255)" if param == "eps" else param)
        ax.set_ylabel(f"attacked {METRIC_NAMES.get(metric, metric)}")
        ax.set_title(f"{dataset_label(summary, ds)}: {METRIC_NAMES.get(metric, metric)} vs "
                     f"{'iterations' if param == 'steps' else param} (dotted: clean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        figures.append((f"{ds}: {metric} vs {param}", _png(fig)))
    return figures


def transfer_heatmaps(summary: Summary, metric: str = "psnr") -> list[tuple[str, bytes]]:
    """Per dataset and attack config: drop of `metric` (clean − attacked) with rows = crafted on, cols = evaluated on."""
    figures = []
    keys = {(k[0], k[3]) for k in summary.cells if k[1] != k[2] and k[4] == metric}
    for ds, col in sorted(keys, key=lambda t: (t[0], t[1].attack, t[1].params_json)):
        cells = {(k[1], k[2]): c for k, c in summary.cells.items() if k[0] == ds and k[3] == col and k[4] == metric}
        sources = sorted({s for s, _ in cells})
        targets = sorted({t for _, t in cells})
        grid = [[(cells[(s, t)].clean - cells[(s, t)].attacked) if (s, t) in cells else math.nan for t in targets]
                for s in sources]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(targets), 1.0 + 0.8 * len(sources)))
        im = ax.imshow(grid, cmap="magma_r", aspect="auto")
        ax.set_xticks(range(len(targets)), [model_label(summary, t) for t in targets], rotation=30, ha="right")
        ax.set_yticks(range(len(sources)), [model_label(summary, s) for s in sources])
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("crafted on")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v > max(map(max, grid)) / 2 else "k")
        fig.colorbar(im, ax=ax, label=f"{METRIC_NAMES.get(metric, metric)} drop")
        ax.set_title(f"{dataset_label(summary, ds)}: transferability ({col.attack})")
        figures.append((f"{ds}: transfer {col.attack} {col.params_json}", _png(fig)))
    return figures

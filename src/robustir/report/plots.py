"""Report figures (matplotlib, headless): metric vs iterations, metric vs epsilon, transferability heatmap."""

from __future__ import annotations

import io
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from robustir.report.tables import (METRIC_NAMES, Summary, dataset_label, datasets_in_order, fmt_param,  # noqa: E402
                                    model_label)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def sweep_plots(summary: Summary, param: str, metric: str = "psnr") -> list[tuple[str, bytes]]:
    """One figure per dataset: attacked `metric` vs `param` (steps or eps), a line per (model, attack, other params).

    Each line starts at 0 (no attack), the clean value, so the curve shows the whole degradation.
    """
    figures = []
    for ds in datasets_in_order(summary):
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for (d, src, ev, col, m), cell in summary.cells.items():
            if d != ds or m != metric or src != ev or param not in summary.varying.get(col.attack, []):
                continue
            others = [fmt_param(k, v) for k, v in sorted(col.params.items())
                      if k != param and k in summary.varying.get(col.attack, [])]
            attack_label = summary.config.get("attacks", {}).get(col.attack, {}).get("label", col.attack)
            name = f"{model_label(summary, ev)} · {attack_label}" + (f" ({', '.join(others)})" if others else "")
            x = float(col.params[param]) * (255 if param == "eps" else 1)
            if not lines[name]:
                lines[name].append((0.0, cell.clean))
            lines[name].append((x, cell.attacked))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for name, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel("iterations (0 = clean)" if param == "steps" else "ε (×1/255, 0 = clean)" if param == "eps"
                      else param)
        ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} of the restoration")
        ax.set_title(f"{dataset_label(summary, ds)}: {METRIC_NAMES.get(metric, metric)} vs "
                     f"{'iterations' if param == 'steps' else 'ε' if param == 'eps' else param}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        figures.append((f"{dataset_label(summary, ds)}: {METRIC_NAMES.get(metric, metric)} vs {param}", _png(fig)))
    return figures


def transfer_heatmaps(summary: Summary, metric: str = "psnr", max_panels: int = 6) -> list[tuple[str, bytes]]:
    """Per dataset and attack: drop of `metric` (clean − attacked), rows = crafted on, columns = evaluated on; one
    panel per grid point of the attack's parameters (the diagonal is the white-box attack)."""
    figures = []
    transfer_keys = {(k[0], k[3]) for k in summary.cells if k[1] != k[2] and k[4] == metric}
    by_attack: dict[tuple[str, str], list] = defaultdict(list)
    for ds, col in transfer_keys:
        by_attack[(ds, col.attack)].append(col)
    for (ds, attack), cols in sorted(by_attack.items()):
        cols = sorted(cols, key=lambda c: c.params_json)[:max_panels]
        models = sorted({m for k in summary.cells if k[0] == ds and k[3] in cols for m in (k[1], k[2])})
        fig, axes = plt.subplots(1, len(cols), figsize=(0.6 + (1.3 + 0.9 * len(models)) * len(cols),
                                                        1.2 + 0.7 * len(models)), squeeze=False)
        for ax, col in zip(axes[0], cols):
            cells = {(k[1], k[2]): c for k, c in summary.cells.items() if k[0] == ds and k[3] == col and k[4] == metric}
            grid = [[(cells[(s, t)].clean - cells[(s, t)].attacked) if (s, t) in cells else math.nan for t in models]
                    for s in models]
            finite = [v for row in grid for v in row if math.isfinite(v)]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            ax.imshow(grid, cmap="viridis", aspect="auto", vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
            ax.set_xticks(range(len(models)), [model_label(summary, t) for t in models], rotation=30, ha="right")
            ax.set_yticks(range(len(models)), [model_label(summary, s) for s in models])
            ax.set_xlabel("evaluated on")
            ax.set_ylabel("crafted on")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if math.isfinite(v):
                        bright = (v - lo) / (hi - lo) > 0.6 if hi > lo else False
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="k" if bright else "w")
            shown = [fmt_param(k, v) for k, v in sorted(col.params.items()) if k in summary.varying.get(attack, [])]
            ax.set_title(", ".join(shown) or attack, fontsize=9)
        label = summary.config.get("attacks", {}).get(attack, {}).get("label", attack)
        fig.suptitle(f"{dataset_label(summary, ds)}: transferability of {label} "
                     f"({METRIC_NAMES.get(metric, metric)} drop, dB)", fontsize=10)
        fig.tight_layout()
        figures.append((f"{dataset_label(summary, ds)}: transferability of {label}", _png(fig)))
    return figures

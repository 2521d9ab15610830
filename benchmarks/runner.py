"""Experiment-runner benchmark: throughput, overhead over pure attack compute, scaling with images x steps x eps.

Run: `.venv/bin/python benchmarks/runner.py` (or `make bench`). Everything is measured side by side in this one run,
on the same model and data: the runner's wall time for a sweep versus the time of the very same batched attacks
called directly (no data loading, scoring, artifacts or database), and how the sweep time grows with the number of
images, attack steps and epsilon values (epsilons are batched, so that axis should grow sub-linearly).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from robustir.attacks import preset
from robustir.experiments.execute import observation, prepare
from robustir.experiments.jobs import plan_batches
from robustir.experiments.runner import run_experiment
from robustir.experiments.spec import parse_experiment

MODEL = {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 32, "nb": 10, "act_mode": "R"}


def _experiment(out: Path, images: int, steps: list[int], eps: list[float], crop: int, save: int) -> dict:
    return {
        "name": "bench", "seed": 0, "output": str(out), "batch_size": 8, "save_artifacts": save,
        "models": {"dncnn": {"spec": MODEL}},
        "data": {"d": {"source": "skimage-gray", "limit": images, "crop": crop, "degradation": {"noise_sigma": 25}}},
        "attacks": {"dpgd": {"preset": "denoising_pgd_linf", "params": {"eps": eps, "steps": steps}}},
        "metrics": ["psnr", "ssim", "mae"],
    }


def pure_attack_seconds(raw: dict) -> float:
    """Time of the same batched attacks as the runner's plan, called directly (model loaded, inputs ready)."""
    exp = parse_experiment(raw)
    ctx = prepare(exp)
    from robustir.experiments.execute import _cond, _model

    total = 0.0
    for batch in plan_batches(ctx.jobs, exp.batch_size):
        obs = [observation(ctx, j.item) for j in batch]
        x = torch.cat([o[0] for o in obs])
        y = torch.cat([o[1] for o in obs])
        model = _model(ctx, batch[0].model)
        cond = _cond(ctx, batch[0].model, None)
        params = {k: v for k, v in batch[0].params.items() if k != "eps"}
        eps = torch.tensor([float(j.params["eps"]) for j in batch])
        gens = [torch.Generator().manual_seed(j.seed) for j in batch]
        attack = preset("denoising_pgd_linf", eps=eps, generator=gens, **params)
        t0 = time.perf_counter()
        attack(model, y, ref=x, cond=cond)
        total += time.perf_counter() - t0
    return total


def runner_seconds(raw: dict) -> tuple[float, int]:
    """Wall time of `run_experiment` on a fresh output folder (models and data loading included) and its job count."""
    exp = parse_experiment(raw)
    t0 = time.perf_counter()
    summary = run_experiment(exp, progress=False)
    return time.perf_counter() - t0, summary.executed


def main() -> None:
    """Print the measurements as a table (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, object] = {"threads": torch.get_num_threads(), "model": MODEL, "crop": args.crop}
    with tempfile.TemporaryDirectory() as tmp:
        base = _experiment(Path(tmp) / "sweep", 4, [10, 20], [1 / 255, 2 / 255, 4 / 255], args.crop, 1)
        pure_attack_seconds(base)  # warm-up: first calls allocate and tune kernels
        pure = pure_attack_seconds(base)
        wall, jobs = runner_seconds(base)
        overhead = (wall - pure) / wall
        results["sweep"] = {"jobs": jobs, "runner_s": wall, "pure_attack_s": pure, "overhead": overhead,
                            "images_per_s": jobs / wall}
        print(f"sweep: {jobs} jobs (4 images x steps {{10, 20}} x 3 eps), {args.crop}x{args.crop}, DnCNN nc32 nb10")
        print(f"  runner wall time        {wall:8.2f} s   ({jobs / wall:.2f} attacked images/s)")
        print(f"  pure attack compute     {pure:8.2f} s")
        print(f"  runner overhead         {100 * overhead:7.1f} %   (goal < 5 %)")
        print("scaling (runner wall time, 64x64 crops, no artifacts, best of 3):")

        def best(name: str, images: int, steps: list[int], eps: list[float]) -> tuple[int, float]:
            times = []
            for rep in range(3):
                raw = _experiment(Path(tmp) / f"{name}_{rep}".replace(" ", "_"), images, steps, eps, 64, 0)
                secs, n = runner_seconds(raw)
                times.append(secs)
            return n, min(times)

        cases = [("base: 2 images, 5 steps, 1 eps", 2, [5], [2 / 255]),
                 ("2x images", 4, [5], [2 / 255]),
                 ("2x steps", 2, [10], [2 / 255]),
                 ("3 eps values, one batched run", 2, [5], [1 / 255, 2 / 255, 4 / 255])]
        rows = [(name, *best(name, i, st, e)) for name, i, st, e in cases]
        separate = sum(best(f"sep{k}", 2, [5], [e])[1] for k, e in enumerate((1 / 255, 2 / 255, 4 / 255)))
        rows.append(("3 eps values, three runs", 6, separate))
        base_s = rows[0][2]
        for name, n, secs in rows:
            print(f"  {name:34s} {n:3d} jobs {secs:7.2f} s   x{secs / base_s:4.2f}")
        print(f"  eps batching: one run takes {rows[3][2] / separate:.2f} of three separate runs")
        results["scaling"] = [{"case": n, "jobs": j, "seconds": s, "ratio": s / base_s} for n, j, s in rows]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

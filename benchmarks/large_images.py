"""Peak memory and time of an L-inf PGD attack on a GoPro-sized frame (1280x720), with and without checkpointing.

Models: Restormer (motion-deblurring release configuration) and NAFNet width-32 as evaluated officially (local
pooling). Each (model, checkpointing) pair runs in a fresh subprocess so that peak memory is its own: on CPU the
peak resident set size (`ru_maxrss`) minus the size after building the model; on CUDA `max_memory_allocated`.
The attack is PGD with MSE against the reference, eps 8/255, alpha 0.01, random start (METHODS.md section 2.2),
through `robustir.attacks.Attack`; `--inference` times plain forward passes under `torch.no_grad` instead, and
`--strip-rows R` runs Restormer's transformer blocks in strips of R rows (exact; `Restormer(strip_rows=...)`). Weights are random
(timing and memory do not depend on their values); parameters are frozen as in an attack.

Examples:
    python benchmarks/large_images.py                                   # 10 steps, 1280x720, CPU
    python benchmarks/large_images.py --scale 0.5 --steps 2 --models nafnet-gopro-w32-local
    python benchmarks/large_images.py --device cuda --out runs/bench/large_images.json
    python benchmarks/large_images.py --models restormer-gopro --strip-rows 64 --steps 2
    python benchmarks/large_images.py --models restormer-gopro --inference --steps 1 --strip-rows 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from torch import Tensor

DEFAULT_MODELS = ("restormer-gopro", "nafnet-gopro-w32-local")


def _rss_gib() -> float:
    """Peak resident set size of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _attack(model: Any, x: Tensor, *, steps: int) -> tuple[Tensor, str]:
    """Run the attack; return the adversarial input and which implementation ran."""
    from robustir.attacks.engine import Attack
    from robustir.attacks.objectives import MSE
    from robustir.attacks.threat import LinfBall
    from robustir.attacks.updates import SignStep

    eps, alpha = 8 / 255, 0.01
    generator = torch.Generator(device=x.device).manual_seed(0)
    attack = Attack(LinfBall(eps), MSE(), SignStep(alpha), steps, True, generator, track_best=False)
    return attack(model, x, ref=x).x_adv, "robustir.attacks.Attack"


def _infer(model: Any, x: Tensor, *, steps: int) -> tuple[Tensor, str]:
    """`steps` forward passes without gradients (full-frame inference); return the last output."""
    with torch.no_grad():
        for _ in range(steps):
            out = model(x)
    return out, "inference (torch.no_grad)"


def worker(model_name: str, checkpointing: bool, *, height: int, width: int, steps: int, device: str,
           strip_rows: int = 0, inference: bool = False) -> dict:
    """One measurement in this process: build, attack, report time and peak memory."""
    from robustir.models import build, restorer

    torch.manual_seed(0)
    net = build(model_name)
    net.checkpointing = checkpointing
    if strip_rows:
        if not hasattr(net, "strip_rows"):
            raise SystemExit(f"{model_name} has no strip mode (strip_rows)")
        net.strip_rows = strip_rows
    net.requires_grad_(False)
    net.to(device)
    model = restorer(net)
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    base_rss = _rss_gib()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**30
    start = time.perf_counter()
    adv, impl = (_infer if inference else _attack)(model, x, steps=steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {"model": model_name, "checkpointing": checkpointing, "strip_rows": strip_rows, "height": height,
           "width": width, "steps": steps,
           "device": device, "threads": torch.get_num_threads(), "attack": impl, "seconds": round(seconds, 2),
           "seconds_per_step": round(seconds / steps, 2),
           "params": sum(p.numel() for p in net.parameters())}
    if not inference:
        row["linf"] = round(float((adv - x).abs().max()), 5)
    if device.startswith("cuda"):
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        row["attack_gib"] = round(row["peak_gib"] - base_cuda, 3)
        row["gpu"] = torch.cuda.get_device_name()
    else:
        row["peak_gib"] = round(_rss_gib(), 3)
        row["attack_gib"] = round(row["peak_gib"] - base_rss, 3)
    return row


def _table(rows: list[dict]) -> str:
    head = ("| model | run | checkpointing | strip rows | frame | steps | device | time (s) | s/step | peak (GiB) | "
            "attack part (GiB) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        strips = r.get("strip_rows") or "-"
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['checkpointing']} | {strips} | | | | failed: {r['error']} | | | |")
            continue
        run = "inference" if r["attack"].startswith("inference") else "PGD"
        lines.append(f"| {r['model']} | {run} | {r['checkpointing']} | {strips} | {r['width']}x{r['height']} | "
                     f"{r['steps']} | "
                     f"{r['device']} ({r['threads']} threads) | {r['seconds']} | {r['seconds_per_step']} | "
                     f"{r['peak_gib']} | {r['attack_gib']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every (model, checkpointing) pair in its own subprocess and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="model presets")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--scale", type=float, default=1.0, help="scale both frame sides (e.g. 0.5 -> 640x360)")
    parser.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    parser.add_argument("--strip-rows", type=int, default=0,
                        help="Restormer: compute transformer blocks in strips of this many rows (0 = off)")
    parser.add_argument("--inference", action="store_true",
                        help="time forward passes without gradients instead of the attack (steps = passes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the rows as JSON (atomically)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    h, w = int(round(args.height * args.scale)), int(round(args.width * args.scale))
    if args.worker:
        row = worker(args.worker[0], args.worker[1] == "1", height=h, width=w, steps=args.steps, device=args.device,
                     strip_rows=args.strip_rows, inference=args.inference)
        print(json.dumps(row))
        return 0
    flags = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    if args.inference:
        flags = (False,)  # checkpointing only matters when a backward pass follows
    rows = []
    for name in args.models:
        for flag in flags:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "1" if flag else "0",
                   "--steps", str(args.steps), "--height", str(args.height), "--width", str(args.width),
                   "--scale", str(args.scale), "--device", args.device, "--strip-rows", str(args.strip_rows)]
            if args.inference:
                cmd.append("--inference")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
                row = {"model": name, "checkpointing": flag, "strip_rows": args.strip_rows,
                       "error": f"{tail} (exit {proc.returncode})"}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(_table(rows))
    if args.out:
        from robustir.data.atomic import atomic_write_text

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

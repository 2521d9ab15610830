"""Attack-loop benchmark: overhead vs k forward+backward passes, speed vs the cospgd package's and a torchattacks-style
loop (with equality of the adversarial examples asserted), the engine's speed options (bf16 autocast, channels_last,
compile; attack strength compared), ε batching, and peak memory with/without checkpointing.

Run: `python benchmarks/attacks.py` (add `--threads N`, `--size S`, `--steps K`). Prints one table per section.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from robustir.attacks import MSE, Attack, LinfBall, SignStep, preset
from robustir.attacks.engine import frozen_model
from robustir.models import build, restorer


def _dncnn() -> nn.Module:
    """Official DnCNN σ=25 when the weights are there (the speed does not depend on them), else random init."""
    from robustir.data.root import data_root

    root = data_root(required=False)
    w = root / "weights" / "dncnn" / "kair_dncnn_25.pth" if root else None
    return restorer("dncnn-s25", weights=w if w is not None and w.is_file() else None)


def _nafnet() -> nn.Module:
    """The registered small NAFNet (width 16) in the uniform restorer."""
    return restorer(build("nafnet-small"))


def _real_images(shape: tuple[int, ...]) -> Tensor:
    """Centre crops of scikit-image's built-in photographs (gray: camera, coins; colour: astronaut, coffee)."""
    import numpy as np
    from skimage import data as skdata

    n, c, h, w = shape
    names = ["camera", "coins", "moon"] if c == 1 else ["astronaut", "coffee", "chelsea"]
    out = []
    for name in names[:n]:
        img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255
        img = img[..., None] if img.ndim == 2 else img
        top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        out.append(torch.from_numpy(img[top:top + h, left:left + w]).permute(2, 0, 1))
    return torch.stack(out).contiguous()


def _timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` runs after one warm-up."""
    return _timeit_many({"f": fn}, repeat)["f"]


def _timeit_many(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall times of several functions timed round-robin (after one warm-up each).

    Interleaving puts every candidate under the same machine conditions (frequency, cache, other load); timing them
    one after another biased ratios by 10-20 % on the shared 2-core machine.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _fwd_bwd(model: nn.Module, x: Tensor, gt: Tensor) -> Callable[[], object]:
    """One forward + backward with respect to the input, parameters frozen: the physical cost of one attack step.

    Call it inside `frozen_model(model)`: freezing is done once, outside the timed passes.
    """
    def run() -> object:
        xr = x.clone().requires_grad_(True)
        loss = ((model(xr) - gt) ** 2).mean(dim=(1, 2, 3)).sum()
        return torch.autograd.grad(loss, xr)
    return run


def cospgd_package_loop(model: nn.Module, x: Tensor, gt: Tensor, eps: float, alpha: float, steps: int,
                        seed: int) -> Tensor:
    """The cospgd package's functions driven as its `unet_backbones` trainer does (regression MSE, L-inf)."""
    from cospgd import Attack as Cos

    torch.manual_seed(seed)
    images = Cos.init_linf(x, eps)
    images.requires_grad = True
    crit = nn.MSELoss(reduction="none")
    loss = crit(model(images), gt)
    for _ in range(steps):
        loss = loss.mean()
        loss.backward()
        images = Cos.step_inf(images, eps, images.grad, x, alpha, False)
        images.requires_grad = True
        loss = crit(model(images), gt)
    model.zero_grad(set_to_none=True)
    return images.detach()


def torchattacks_style_loop(model: nn.Module, x: Tensor, gt: Tensor, eps: float, alpha: float, steps: int,
                            start: Tensor, clip: bool = True) -> Tensor:
    """torchattacks' PGD loop (`autograd.grad` on the input, parameters left trainable) with an MSE loss."""
    adv = start.clone().detach()
    for _ in range(steps):
        adv.requires_grad = True
        cost = ((model(adv) - gt) ** 2).mean(dim=(1, 2, 3)).sum()
        grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = (torch.clamp(x + delta, min=0, max=1) if clip else x + delta).detach()
    return adv


def section_overhead_and_speed(name: str, model: nn.Module, x: Tensor, gt: Tensor, steps: int, repeat: int) -> dict:
    """Overhead ratio and speed vs the reference loops, with equality of the results."""
    eps, alpha, seed = 8 / 255, 2 / 255, 3
    ours_nb = Attack(LinfBall(eps), MSE(), SignStep(alpha), steps, True, track_best=False)
    ours = Attack(LinfBall(eps), MSE(), SignStep(alpha), steps, True)
    start = LinfBall(eps).prepare(x).start("uniform", torch.Generator().manual_seed(seed))
    fwd_bwd = _fwd_bwd(model, x, gt)

    def k_fwd_bwd() -> None:
        with frozen_model(model):  # frozen once per k passes, as the attack does
            for _ in range(steps):
                fwd_bwd()

    t = _timeit_many({
        "fwd_bwd": k_fwd_bwd, "ours_nb": lambda: ours_nb(model, x, ref=gt), "ours": lambda: ours(model, x, ref=gt),
        "cospgd": lambda: cospgd_package_loop(model, x, gt, eps, alpha, steps, seed),
        "ta": lambda: torchattacks_style_loop(model, x, gt, eps, alpha, steps, start)}, repeat)
    one, t_nb, t_best, t_cos, t_ta = t["fwd_bwd"] / steps, t["ours_nb"], t["ours"], t["cospgd"], t["ta"]
    # identical adversarial examples (same algorithm, same random start)
    mine = Attack(LinfBall(eps), MSE(), SignStep(alpha), steps, True, torch.Generator().manual_seed(seed),
                  track_best=False)(model, x, ref=gt).x_adv
    ref_cos = cospgd_package_loop(model, x, gt, eps, alpha, steps, seed)
    ref_ta = torchattacks_style_loop(model, x, gt, eps, alpha, steps, start)
    assert torch.equal(mine, ref_cos), "robustir PGD differs from the cospgd package loop"
    assert torch.equal(mine, ref_ta), "robustir PGD differs from the torchattacks-style loop"
    return {"model": name, "shape": list(x.shape), "steps": steps, "fwd_bwd_s": one,
            "overhead_no_best": t_nb / (steps * one), "overhead_with_best": t_best / (steps * one),
            "pgd_s": t_nb, "pgd_best_s": t_best, "cospgd_loop_s": t_cos, "torchattacks_loop_s": t_ta,
            # the reference loops return the last iterate: compare with ours without best-so-far tracking
            "speedup_vs_cospgd": t_cos / t_nb, "speedup_vs_torchattacks": t_ta / t_nb, "identical": True}


FAST_PATHS: dict[str, dict[str, object]] = {
    "eager fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"amp_dtype": torch.bfloat16},
    "bf16 + channels_last": {"amp_dtype": torch.bfloat16, "channels_last": True},
    "compile": {"compile": "inductor"},
    "compile + bf16": {"compile": "inductor", "amp_dtype": torch.bfloat16},
}


def _psnr_drop(model: nn.Module, y: Tensor, y_adv: Tensor, gt: Tensor) -> float:
    """Mean PSNR drop of the float32 restoration caused by `y_adv` (the attack's strength)."""
    from robustir.metrics import psnr

    with torch.no_grad():
        return float((psnr(model(y).clamp(0, 1), gt) - psnr(model(y_adv).clamp(0, 1), gt)).mean())


def section_fast_paths(name: str, model: nn.Module, y: Tensor, gt: Tensor, steps: int, repeat: int) -> list[dict]:
    """PGD with the engine's speed options against both reference loops, with the attack's strength compared.

    These paths are not bit-identical to float32 eager (reduced-precision forward, fused kernels), so instead of
    equality the table gives each one's PSNR drop (scored in float32) beside the eager attack's.
    """
    eps, alpha, seed = 8 / 255, 2 / 255, 3

    def make(kw: dict[str, object], generator: torch.Generator | None = None) -> Attack:
        return Attack(LinfBall(eps, value_range=None), MSE(), SignStep(alpha), steps, True, generator,
                      track_best=False, **kw)

    attacks = {k: make(kw) for k, kw in FAST_PATHS.items()}
    compile_s = {}
    for k, atk in attacks.items():  # one-time compilation, measured apart
        t0 = time.perf_counter()
        atk(model, y, ref=gt)
        compile_s[k] = time.perf_counter() - t0
    start = LinfBall(eps, value_range=None).prepare(y).start("uniform", torch.Generator().manual_seed(seed))
    fns: dict[str, Callable[[], object]] = {k: (lambda a=a: a(model, y, ref=gt)) for k, a in attacks.items()}
    fns["torchattacks"] = lambda: torchattacks_style_loop(model, y, gt, eps, alpha, steps, start, clip=False)
    fns["cospgd"] = lambda: cospgd_package_loop(model, y, gt, eps, alpha, steps, seed)
    t = _timeit_many(fns, repeat)
    rows, ref_adv = [], None
    for k in FAST_PATHS:
        adv = make(FAST_PATHS[k], torch.Generator().manual_seed(seed))(model, y, ref=gt).x_adv  # fresh generator
        ref_adv = adv if ref_adv is None else ref_adv
        rows.append({"model": name, "option": k, "pgd_s": t[k], "vs_torchattacks": t["torchattacks"] / t[k],
                     "vs_cospgd": t["cospgd"] / t[k], "vs_eager": t["eager fp32"] / t[k],
                     "first_call_s": compile_s[k], "psnr_drop": _psnr_drop(model, y, adv, gt),
                     "differing": float((adv != ref_adv).float().mean())})
    return rows


def section_eps_batching(model: nn.Module, x: Tensor, gt: Tensor, steps: int, repeat: int) -> dict:
    """One batch with ε ∈ {4, 8, 12}/255 versus three separate runs."""
    eps = torch.tensor([4.0, 8.0, 12.0]) / 255
    xb, gb = x[:1].repeat(3, 1, 1, 1), gt[:1].repeat(3, 1, 1, 1)
    batched = Attack(LinfBall(eps), MSE(), SignStep(eps / 4), steps, True)
    singles = [Attack(LinfBall(float(e)), MSE(), SignStep(float(e) / 4), steps, True) for e in eps]
    t = _timeit_many({"b": lambda: batched(model, xb, ref=gb),
                      "s": lambda: [a(model, x[:1], ref=gt[:1]) for a in singles]}, repeat)
    t_b, t_s = t["b"], t["s"]
    return {"one_batch_s": t_b, "three_runs_s": t_s, "speedup": t_s / t_b}


def _peak_child(model_name: str, size: int, steps: int, ckpt: bool) -> None:
    """(subprocess) run one attack and print the peak RSS increase over the set-up in MiB."""
    torch.manual_seed(0)
    model = _dncnn() if model_name == "dncnn" else _nafnet()
    c = 1 if model_name == "dncnn" else 3
    x = torch.rand(1, c, size, size)
    gt = torch.rand(1, c, size, size)
    atk = preset("pgd", steps=steps, checkpoint=ckpt, track_best=False)
    with open("/proc/self/statm") as f:
        base_kib = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    t = time.perf_counter()
    atk(model, x, ref=gt)
    dt = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (peak_kib - base_kib) / 1024, "time_s": dt}))


def section_memory(size: int, steps: int) -> list[dict]:
    """Peak memory on a size×size image with and without activation checkpointing (fresh process each)."""
    rows = []
    for model_name in ("dncnn", "nafnet-small"):
        for ckpt in (False, True):
            out = subprocess.run([sys.executable, __file__, "--child", model_name, str(size), str(steps),
                                  str(int(ckpt))], capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"model": model_name, "checkpoint": ckpt, **row})
    return rows


def main() -> None:
    """Run all sections and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="image side for the speed sections")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mem-size", type=int, default=512)
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        _peak_child(args.child[0], int(args.child[1]), int(args.child[2]), bool(int(args.child[3])))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# robustir attack benchmark — torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPU(s)")
    s = args.size
    cases = [("DnCNN-S (17 layers)", _dncnn(), (2, 1, s, s)), ("NAFNet-small (width 16)", _nafnet(), (1, 3, s, s))]
    rows = []
    for name, model, shape in cases:
        x, gt = torch.rand(shape), torch.rand(shape)
        rows.append(section_overhead_and_speed(name, model, x, gt, args.steps, args.repeat))
    print("\n## 1-2. overhead = time(PGD k steps) / (k x fwd+bwd); speed vs reference loops (same results)")
    print("(speed ratios: ours without best tracking, as the references)")
    print("| model | input | k | fwd+bwd (s) | overhead (no best) | overhead (best tracking) | cospgd loop / ours | "
          "torchattacks loop / ours | identical x_adv |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {'x'.join(map(str, r['shape']))} | {r['steps']} | {r['fwd_bwd_s']:.3f} | "
              f"{r['overhead_no_best']:.3f} | {r['overhead_with_best']:.3f} | {r['speedup_vs_cospgd']:.2f}x | "
              f"{r['speedup_vs_torchattacks']:.2f}x | {r['identical']} |")
    print("\n## 2c. speed options (not bit-identical: strength compared instead), on real images: DnCNN on 2 noisy "
          "gray crops (sigma 25), NAFNet-small (random init) on 1 noisy colour crop (sigma 10); PGD 8/255, "
          "observations not clipped")
    print("| model | option | PGD k steps (s) | torchattacks loop / this | cospgd loop / this | eager / this | "
          "first call (s) | PSNR drop (dB) | x_adv entries differing from eager |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, model, shape) in cases:
        gt = _real_images(shape)
        y = gt + (25 if shape[1] == 1 else 10) / 255 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(1))
        for r in section_fast_paths(name, model, y, gt, args.steps, args.repeat):
            print(f"| {r['model']} | {r['option']} | {r['pgd_s']:.3f} | {r['vs_torchattacks']:.2f}x | "
                  f"{r['vs_cospgd']:.2f}x | {r['vs_eager']:.2f}x | {r['first_call_s']:.1f} | {r['psnr_drop']:.3f} | "
                  f"{100 * r['differing']:.2f} % |", flush=True)
    dn = cases[0][1]
    eb = section_eps_batching(dn, torch.rand(1, 1, s, s), torch.rand(1, 1, s, s), args.steps, args.repeat)
    print("\n## 3. epsilon batching on DnCNN: eps in {4,8,12}/255")
    print(f"one batch of 3: {eb['one_batch_s']:.3f} s; three runs of 1: {eb['three_runs_s']:.3f} s; "
          f"speed-up {eb['speedup']:.2f}x")
    mem = section_memory(args.mem_size, args.mem_steps)
    print(f"\n## 4. peak memory, one {args.mem_size}x{args.mem_size} image, PGD {args.mem_steps} step(s) "
          f"(RSS increase, MiB)")
    print("| model | checkpointing | peak (MiB) | time (s) |")
    print("|---|---|---|---|")
    for r in mem:
        print(f"| {r['model']} | {r['checkpoint']} | {r['peak_mib']:.0f} | {r['time_s']:.2f} |")


if __name__ == "__main__":
    main()

"""`robustir attack`: attack a restoration model on a folder of images and write everything needed to inspect it."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import click
import torch

from robustir.checks import parse_fraction
from robustir.errors import RobustirError
from robustir.metrics.ssim import WINDOW as SSIM_WINDOW


def _model(text: str, weights: str | None) -> Any:
    """The uniform restorer of `--model`: `shipped:NAME` (a checkpoint shipped with robustir), a preset or a spec."""
    from robustir.models import parse_spec, restorer

    t = text.strip()
    if t.startswith("shipped:"):
        if weights is not None:
            raise RobustirError("--weights: a shipped checkpoint brings its own weights; drop --weights")
        from robustir.train.shipped import shipped

        return shipped(t[len("shipped:"):])
    return restorer(parse_spec(t), weights=weights)


def _check_images(paths: list[Path], channels: int | None) -> dict[str, tuple[int, int]]:
    """Decode every input once; refuse unreadable files and, without --channels, folders mixing gray and RGB.

    Returns each file's (H, W), for the size checks that need the kernel.
    """
    import warnings

    from robustir.data.io import load_image

    found: dict[int, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the attack loop reads them again and warns there (alpha dropped, ...)
        for path in paths:
            img = load_image(path)
            found.setdefault(int(img.shape[0]), path.name)
            sizes[path.name] = (int(img.shape[-2]), int(img.shape[-1]))
    if channels is None and len(found) > 1:
        raise RobustirError(f"--input mixes gray ({found[1]}) and RGB ({found[3]}) images; pass --channels 1 or 3 "
                            f"to convert them")
    return sizes


def _check_sizes(sizes: dict[str, tuple[int, int]], kernel: torch.Tensor | None) -> None:
    """Every image must fit the 11x11 SSIM window and, when blurred, the kernel: fail before any output."""
    k = 0 if kernel is None else max(int(kernel.shape[-2]), int(kernel.shape[-1]))
    need = max(SSIM_WINDOW, k)
    for name, (h, w) in sizes.items():
        if min(h, w) < need:
            why = f"the {kernel.shape[-2]}x{kernel.shape[-1]} --kernel" if k > SSIM_WINDOW else \
                f"the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window of the metrics"
            raise RobustirError(f"--input: {name} is {h}x{w}, smaller than {why}; images must be at least "
                                f"{need}x{need}")


def _probe(model: Any, x: torch.Tensor, cond: dict[str, Any], path: Path, channels: int | None) -> None:
    """Run the model once on the first image, so that a channel or size mismatch is reported before any output."""
    from robustir.degradations import Blur
    from robustir.models.probe import channel_mismatch, run_once

    how = f"--channels {channels} gave the images {channels} channel(s)" if channels is not None else \
        f"{path.name} has {x.shape[1]} channel(s)"
    k = max(cond["kernel"].shape[-2:]) if "kernel" in cond else 0
    other = channel_mismatch(model, int(x.shape[1]), size=max(64, 2 * k), cond=cond)
    if other is not None:
        raise RobustirError(f"--model ({model.name}) takes {other}-channel images, not {x.shape[1]} "
                            f"({how}; --channels {other} converts them)")
    if "kernel" in cond:
        x = Blur(cond["kernel"], boundary="circular")(x).clamp(0, 1)
    try:
        run_once(model, x, **cond)
    except RobustirError as exc:
        raise RobustirError(f"{exc} ({how})") from None


# What one `attack` call writes into --out; an earlier run's copies are replaced together, never mixed with new ones.
_SUBDIRS = ("adversarial", "previews", "restored", "perturbation")
_FILES = ("metrics.csv", "attack.json")


@click.command()
@click.option("--model", "model_spec", required=True,
              help="Model preset name (see `robustir info`), JSON spec, a .json spec file (a run's model.json), "
                   "or shipped:NAME (a shipped checkpoint).")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), default=None, help="Checkpoint to load.")
@click.option("--attack", "attack_name", default="pgd", show_default=True, help="Attack preset name.")
@click.option("--eps", default=None, help="Budget, e.g. 8/255 (default: the preset's).")
@click.option("--alpha", default=None, help="Step size, e.g. 2/255 (Adam presets: --lr).")
@click.option("--lr", default=None, type=float, help="Adam learning rate (adam_pgd presets).")
@click.option("--steps", default=None, type=int, help="Number of steps (default: the preset's).")
@click.option("--input", "input_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of clean (ground-truth) images.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--sigma", default=None, type=float, help="Add Gaussian noise of this σ (0-255 scale, not clipped) and "
                                                         "attack the noisy observation (denoisers).")
@click.option("--kernel", "kernel_spec", default=None, help="Blur the input with this kernel (FILE, FILE:N, levin:N) "
                                                            "and give it to non-blind models.")
@click.option("--channels", default=None, type=click.Choice(["1", "3"]),
              help="Convert every image to gray (1, BT.601 luma) or RGB (3); default: as the files are.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise and the attack.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Shared data folder (levin:N).")
@click.option("--amp", default="none", show_default=True, type=click.Choice(["none", "bf16", "fp16"]),
              help="Autocast the model's forward (bf16: ~2x on GPUs and AVX512-BF16/AMX CPUs; loss/update in fp32).")
@click.option("--channels-last", is_flag=True, help="channels_last memory format (convolutional nets).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model's forward (inductor).")
@click.option("--checkpoint", is_flag=True,
              help="Activation checkpointing: less memory on large images, one extra forward per step.")
@click.option("--force", is_flag=True,
              help="--out holds the results of another attack run: replace them (its adversarial/, previews/, "
                   "restored/, perturbation/, metrics.csv and attack.json are removed once this run succeeds).")
def attack(model_spec: str, weights: str | None, attack_name: str, eps: str | None, alpha: str | None,
           lr: float | None, steps: int | None, input_dir: str, out_dir: str, sigma: float | None,
           kernel_spec: str | None, channels: str | None, seed: int, data_root: str | None, amp: str,
           channels_last: bool,
           compile_: bool, checkpoint: bool, force: bool) -> None:
    """Attack a model on every image of --input; write adversarial inputs (safetensors), previews, restorations,
    amplified perturbations, metrics.csv, attack.json (the settings), and print a summary table."""
    from robustir.attacks.presets import _PRESETS, preset
    from robustir.data import convert_channels
    from robustir.data.io import load_image
    from robustir.data.names import list_images
    from robustir.data.outputs import check_reusable_output, staged_output
    from robustir.data.pipeline import format_table, write_csv

    if sigma is not None and (not math.isfinite(sigma) or sigma < 0):
        # checked here, not by the noise step inside the loop, so that nothing is written
        raise RobustirError(f"--sigma: expected a finite non-negative noise level on the 0-255 scale, got {sigma}")
    paths = list_images(input_dir)
    if not paths:
        raise RobustirError(f"--input {input_dir!r}: no images found")
    n_channels = int(channels) if channels is not None else None
    sizes = _check_images(paths, n_channels)  # every file decodes before anything is written
    model = _model(model_spec, weights)
    key = attack_name.lower().replace("-", "_")
    if key not in _PRESETS:
        raise RobustirError(f"--attack {attack_name!r}: unknown; presets: {', '.join(sorted(_PRESETS))}")
    accepted = set(inspect.signature(_PRESETS[key]).parameters)
    opts: dict[str, Any] = {"generator": torch.Generator().manual_seed(seed)}
    for name, value in (("eps", eps), ("alpha", alpha)):
        if value is not None:
            opts[name] = parse_fraction(value, f"--{name}")
    if lr is not None:
        opts["lr"] = lr
    if steps is not None:
        opts["steps"] = steps
    speed = {"amp_dtype": amp, "channels_last": channels_last, "compile": compile_, "checkpoint": checkpoint}
    opts.update({k: v for k, v in speed.items() if v not in (False, "none")})
    if sigma is not None and ("value_range" in accepted or key.endswith("_parity") or key == "adam_pgd_targeted"):
        opts["value_range"] = None  # noisy observations are not clipped (DnCNN convention)
    atk = preset(key, **opts)
    eps_show = float(torch.as_tensor(getattr(atk.threat, "eps", getattr(getattr(atk.threat, "threat", None), "eps",
                                                                         1.0))).max())
    kernel = None
    if kernel_spec is not None:
        from robustir.data.pipeline import kernel_from_spec

        k = kernel_from_spec(kernel_spec, data_root)
        if isinstance(k, tuple):
            raise RobustirError("--kernel: give a fixed kernel (FILE, FILE:N or levin:N), not motion:SIZE")
        kernel = k
    cond: dict[str, Any] = {}
    if getattr(model, "needs_sigma", False):
        if sigma is None:
            raise RobustirError("--sigma: this model is a non-blind denoiser; give the noise level (0-255 scale)")
        cond["sigma"] = sigma / 255
    if getattr(model, "needs_kernel", False):
        if kernel is None:
            raise RobustirError("--kernel: this model is a non-blind deblurrer; give the blur kernel")
        cond["kernel"] = kernel

    def load(path: Path) -> torch.Tensor:
        return convert_channels(load_image(path), n_channels, str(path)).unsqueeze(0)

    _check_sizes(sizes, kernel)
    _probe(model, load(paths[0]), cond, paths[0], n_channels)  # a wrong model/image pairing fails before any output
    options = json.dumps({k: v for k, v in opts.items() if k != "generator"})
    record = {"model": model_spec, "weights": None if weights is None else str(Path(weights).resolve()),
              "attack": key, "options": json.loads(options), "sigma": sigma, "kernel": kernel_spec,
              "channels": n_channels, "seed": seed, "input": str(Path(input_dir).resolve()),
              "images": [p.name for p in paths]}
    out = Path(out_dir)
    check_reusable_output(out, _SUBDIRS + _FILES, "attack.json", record, force=force,
                          held_by="the results of another attack run")
    # everything goes to a staging folder first: a failure mid-way leaves --out as it was
    with staged_output(out, _SUBDIRS + _FILES, last="attack.json") as stage:
        for sub in _SUBDIRS:
            (stage / sub).mkdir()
        rows = _attack_all(paths, load, atk, model, cond, kernel, sigma, seed, key, input_dir, stage, options,
                           model_spec, eps_show)
        write_csv(rows, stage / "metrics.csv")
        (stage / "attack.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    click.echo(format_table(rows, columns=("clean_psnr", "adv_psnr", "psnr_drop", "clean_ssim", "adv_ssim")))
    click.echo(f"wrote {len(rows)} adversarial inputs to {out / 'adversarial'} and metrics to {out / 'metrics.csv'}")


def _attack_all(paths: list[Path], load: Any, atk: Any, model: Any, cond: dict[str, Any], kernel: torch.Tensor | None,
                sigma: float | None, seed: int, key: str, input_dir: str, out: Path, options: str, model_spec: str,
                eps_show: float) -> list[dict[str, float | str]]:
    """Attack every image and write its outputs under `out`; returns the metrics rows."""
    from tqdm import tqdm

    from robustir.data.io import save_image, save_tensors
    from robustir.degradations import Blur, add_gaussian_noise
    from robustir.metrics import psnr, ssim

    rows: list[dict[str, float | str]] = []
    noise_gen = torch.Generator().manual_seed(seed)
    for path in tqdm(paths, desc=f"{key} on {Path(input_dir).name}", unit="img"):
        gt = load(path)
        y = gt
        if kernel is not None:
            y = Blur(kernel, boundary="circular")(y).clamp(0, 1)
        if sigma is not None:
            y = add_gaussian_noise(y, sigma, generator=noise_gen)
        res = atk(model, y, ref=gt, cond=cond)
        x_adv = res.best_x_adv
        with torch.no_grad():
            clean_out = model(y, **cond).clamp(0, 1)
            adv_out = model(x_adv, **cond).clamp(0, 1)
        stem = path.stem
        save_tensors({"x_adv": x_adv[0].contiguous(), "x": y[0].contiguous(), "gt": gt[0].contiguous(),
                      "delta": (x_adv - y)[0].contiguous()}, out / "adversarial" / f"{stem}.safetensors",
                     metadata={"attack": key, "options": options,
                               "model": model_spec, "sigma": str(sigma), "seed": str(seed)})
        save_image(x_adv[0].clamp(0, 1), out / "previews" / f"{stem}_adv.png")
        save_image(clean_out[0], out / "restored" / f"{stem}_clean.png")
        save_image(adv_out[0], out / "restored" / f"{stem}_adv.png")
        amp = (0.5 + (x_adv - y)[0] / (2 * eps_show)).clamp(0, 1)  # ±ε maps to 0..1
        save_image(amp, out / "perturbation" / f"{stem}.png")
        rows.append({"image": path.name,
                     "clean_psnr": float(psnr(clean_out, gt)[0]), "adv_psnr": float(psnr(adv_out, gt)[0]),
                     "clean_ssim": float(ssim(clean_out, gt)[0]), "adv_ssim": float(ssim(adv_out, gt)[0])})
        rows[-1]["psnr_drop"] = float(rows[-1]["clean_psnr"]) - float(rows[-1]["adv_psnr"])
    return rows


COMMANDS = [attack]

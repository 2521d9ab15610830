"""Data commands: `robustir info`, `robustir degrade`, `robustir score`, `robustir demo`."""

from __future__ import annotations

import functools
import importlib
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from robustir.errors import RobustirError

_DATA_ROOT = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                          help="Shared data folder for named datasets (default: $ROBUSTIR_DATA or ../shared/data).")


def _attack_presets() -> list[str]:
    """Names of the registered attack presets, or [] while `robustir.attacks` has none."""
    attacks = importlib.import_module("robustir.attacks")
    lister = getattr(attacks, "list_presets", None)
    if lister is None:
        return []
    presets = lister()
    return sorted(presets) if not isinstance(presets, list) else sorted(map(str, presets))


def _os_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report file-system failures (permissions, full disk, a file where a folder is needed) as user errors."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise RobustirError(f"{where}{exc.strerror or exc}") from None
    return wrapper


@click.command()
@_DATA_ROOT
def info(data_root: str | None) -> None:
    """Show versions, the compute device, registered models, attack presets and datasets."""
    import numpy as np
    import torch

    import robustir
    from robustir.data.names import list_datasets
    from robustir.data.root import data_root as find_root
    from robustir.models import list_models

    click.echo(f"robustir {getattr(robustir, '__version__', '?')}")
    click.echo(f"python   {platform.python_version()} ({platform.system()} {platform.machine()})")
    click.echo(f"torch    {torch.__version__}")
    click.echo(f"numpy    {np.__version__}")
    if torch.cuda.is_available():
        click.echo(f"device   cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s))")
    else:
        click.echo(f"device   cpu ({torch.get_num_threads()} threads; CUDA not available)")

    models = list_models()
    click.echo(f"\nmodels ({len(models)}):")
    for row in models:
        click.echo(f"  {row['name']:<24} {row['kind']:<6} {row['task']:<8} {row['description']}")

    presets = _attack_presets()
    click.echo(f"\nattack presets ({len(presets)}): {', '.join(presets) if presets else '-'}")

    root = find_root(data_root, required=False)
    click.echo(f"\ndata root: {root if root is not None else 'not found (set --data-root or $ROBUSTIR_DATA)'}")
    for name, ds in list_datasets().items():
        base = ds.home() if ds.home is not None else root
        status = ""
        if base is not None:
            try:
                status = f"{len(ds.files(base))} images"
            except ValueError:
                status = "missing"
        click.echo(f"  {name:<15} {status:<11} {ds.description}")


def _channels(value: str) -> int | None:
    return {"keep": None, "gray": 1, "rgb": 3}[value]


@click.command()
@click.argument("source")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--sigma", default=0.0, show_default=True, type=float,
              help="Gaussian noise level on the 0-255 scale (e.g. 25).")
@click.option("--kernel", default=None,
              help="Blur kernel: FILE (.mat/.png/.npy), FILE:N, levin:N (N = 1..8) or motion:SIZE (one random "
                   "camera-shake kernel per image).")
@click.option("--boundary", default="circular", show_default=True,
              type=click.Choice(["circular", "reflect", "replicate", "zeros"]), help="Blur boundary condition.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; image i always gets the same noise.")
@click.option("--bits", default=8, show_default=True, type=click.Choice(["8", "16"]), help="PNG bit depth.")
@click.option("--channels", default="keep", show_default=True, type=click.Choice(["keep", "gray", "rgb"]))
@click.option("--size", default=None, type=int, help="Resize images to SIZE x SIZE (CelebA-HQ default 256).")
@click.option("--limit", default=None, type=int, help="Only the first N images.")
@click.option("--force", is_flag=True,
              help="--out holds images degraded with other settings: replace them (its input/, target/, tensors/ "
                   "and degrade.json are removed once this run succeeds).")
@_DATA_ROOT
@_os_errors
def degrade(source: str, out: str, sigma: float, kernel: str | None, boundary: str, seed: int, bits: str,
            channels: str, size: int | None, limit: int | None, force: bool, data_root: str | None) -> None:
    """Degrade a folder or named dataset (SOURCE) with blur and/or noise.

    Writes OUT/input/*.png (degraded), OUT/target/*.png (clean), OUT/tensors/*.safetensors (lossless float
    tensors, unclipped) and OUT/degrade.json.
    """
    from robustir.checks import check_positive
    from robustir.data.datasets import ImageFolder
    from robustir.data.outputs import check_reusable_output, staged_output
    from robustir.data.pipeline import DegradeSpec, degrade_folder, degrade_settings, kernel_from_spec

    # options first, in a fixed order, so that each bad value is named as itself (a negative sigma is not "nothing
    # to do") and before any image is decoded
    sigma = check_positive(sigma, "--sigma", allow_zero=True)
    if size is not None and size < 1:
        raise RobustirError(f"--size: expected a positive image size in pixels, got {size}")
    if limit is not None and limit < 1:
        raise RobustirError(f"--limit: expected a positive number of images, got {limit}")
    if kernel is not None:
        kernel_from_spec(kernel, data_root)  # a bad kernel spec or file fails before the images are read
    elif sigma == 0:
        raise RobustirError("degrade: nothing to do: give a noise level (--sigma) and/or a blur kernel (--kernel)")
    clean = ImageFolder(source, root=data_root, channels=_channels(channels), size=size, limit=limit)
    _check_images(clean.paths)
    spec = DegradeSpec(sigma=sigma, kernel=kernel, boundary=boundary, seed=seed)
    settings = degrade_settings(source, len(clean.paths), spec, bits=int(bits), channels=_channels(channels),
                                size=size)
    check_reusable_output(Path(out), _DEGRADE_OUTPUTS, "degrade.json", json.loads(json.dumps(settings)),
                          force=force, held_by="images degraded by another run")
    with staged_output(Path(out), _DEGRADE_OUTPUTS, last="degrade.json") as staging:
        stems = degrade_folder(source, staging, spec, root=data_root, bits=int(bits), channels=_channels(channels),
                               size=size, limit=limit, progress=True)
    click.echo(f"wrote {len(stems)} degraded images to {Path(out) / 'input'} (clean: {Path(out) / 'target'}, "
               f"lossless: {Path(out) / 'tensors'})")


_DEGRADE_OUTPUTS = ("input", "target", "tensors", "degrade.json")


def _check_images(paths: list[Path]) -> None:
    """Decode every input once, so that an unreadable file is reported before anything is written."""
    import warnings

    from robustir.data.io import load_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the degrade pass reads them again and warns there (alpha dropped, ...)
        for path in paths:
            load_image(path)


@click.command()
@click.argument("restored", type=click.Path())
@click.argument("reference")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False),
              help="CSV file to write (default: RESTORED/scores.csv).")
@click.option("--crop-border", default=0, show_default=True, type=int, help="Pixels cropped from each border.")
@click.option("--y-channel", is_flag=True, help="Score the luma (Y of YCbCr) of RGB images (BasicSR convention).")
@click.option("--quantize", is_flag=True, help="Round to 8-bit levels before scoring (KAIR convention).")
@click.option("--allow-missing", is_flag=True, help="Score only the references that have a restoration.")
@_DATA_ROOT
@_os_errors
def score(restored: str, reference: str, csv_path: str | None, crop_border: int, y_channel: bool, quantize: bool,
          allow_missing: bool, data_root: str | None) -> None:
    """Score a folder of restorations (RESTORED) against references (a folder or named dataset), matched by name.

    Prints per-image PSNR / SSIM / MAE / NCC with the mean, and writes them to CSV.
    """
    from robustir.data.pipeline import format_table, score_folders, write_csv

    if crop_border < 0:
        raise RobustirError(f"--crop-border: expected a non-negative number of pixels, got {crop_border}")
    rows = score_folders(restored, reference, root=data_root, crop_border=crop_border, y_channel=y_channel,
                         quantize=quantize, allow_missing=allow_missing)
    target = Path(csv_path) if csv_path else Path(restored) / "scores.csv"
    write_csv(rows, target)
    click.echo(format_table(rows))
    click.echo(f"wrote {target}")


@click.command()
@click.option("--out", "-o", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (re-running rewrites identical files).")
@click.option("--size", default=128, show_default=True, type=int, help="Side of the square image crops.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--sigma", default=25.0, show_default=True, type=float, help="Noise level of the denoising case (0-255).")
@click.option("--blur-sigma", default=2.55, show_default=True, type=float,
              help="Noise level added after motion blur (0-255).")
@click.option("--kernel-size", default=15, show_default=True, type=int, help="Motion-blur kernel size.")
@click.option("--channels", default="keep", show_default=True, type=click.Choice(["keep", "gray", "rgb"]))
@click.option("--model", default=None,
              help="Also run a trained restorer: preset name, JSON spec or .json spec file (needs --weights).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False), help="Checkpoint for --model.")
@_os_errors
def demo(out: str, size: int, seed: int, sigma: float, blur_sigma: float, kernel_size: int, channels: str,
         model: str | None, weights: str | None) -> None:
    """End-to-end run on scikit-image's bundled images: degrade, restore (classical methods), score, report."""
    from robustir.data.demo import run_demo, summarize
    from robustir.data.pipeline import format_table

    if model and not weights:
        raise RobustirError(f"--model {model!r} needs --weights (an untrained network restores nothing)")
    rows = run_demo(out, size=size, seed=seed, sigma=sigma, blur_sigma=blur_sigma, kernel_size=kernel_size,
                    channels=_channels(channels), model=model, weights=weights)
    click.echo("\n".join(format_table(summarize(rows)).splitlines()[:-2]))  # mean over images; no cross-restorer mean
    click.echo(f"\nwrote {Path(out) / 'results.md'}, {Path(out) / 'results.csv'} and images in {Path(out) / 'images'}")


COMMANDS = [info, degrade, score, demo]

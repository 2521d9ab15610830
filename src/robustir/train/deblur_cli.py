"""`robustir deblur-eval` (held-out deblurring scores, Wiener baseline) and `robustir ship-deblurrer` (run -> card)."""

from __future__ import annotations

import json

import click

from robustir.errors import RobustirError

_HELDOUT_OPTIONS = [
    click.option("--dataset", default="cbsd68", show_default=True, help="Held-out clean images (named set or folder)."),
    click.option("--n-images", default=10, show_default=True, type=click.IntRange(min=1),
                 help="Use the first N images."),
    click.option("--crop", default=128, show_default=True, type=click.IntRange(min=1), help="Centre crop size."),
    click.option("--sigma", default=2.0, show_default=True, help="Noise level on the 0-255 scale."),
    click.option("--seed", default=0, show_default=True, help="Seed of the held-out noise."),
    click.option("--data-root", default=None, help="Shared data folder (default $ROBUSTIR_DATA or ../shared/data)."),
]


def _heldout_options(fn):  # type: ignore[no-untyped-def]
    """Attach the held-out-set options."""
    for opt in reversed(_HELDOUT_OPTIONS):
        fn = opt(fn)
    return fn


@click.command("deblur-eval")
@click.option("--model", "model_spec", default=None,
              help="Preset name, JSON spec, or a .json file holding one (a run's model.json).")
@click.option("--weights", default=None, help="Weights for --model (safetensors/.pth), loaded strictly.")
@click.option("--shipped", default=None, help="Name of a shipped deblurring checkpoint (src/robustir/checkpoints).")
@click.option("--wiener", is_flag=True, help="Also report the oracle-tuned Wiener baseline (true kernel).")
@click.option("--blind-wiener", is_flag=True,
              help="Also report the blind classical baseline (Wiener with the best single Gaussian kernel).")
@_heldout_options
def deblur_eval_command(model_spec: str | None, weights: str | None, shipped: str | None, wiener: bool,
                        blind_wiener: bool,
                        dataset: str, n_images: int, crop: int, sigma: float, seed: int,
                        data_root: str | None) -> None:
    """Score a deblurring network (and/or Wiener) on Levin-blurred held-out crops; prints JSON."""
    import warnings

    from robustir.degradations import levin_kernels
    from robustir.train.deblur import (blind_wiener_baseline, check_crop, evaluate_deblur, heldout_set,
                                       identity_scores, load_shipped, wiener_baseline)

    if model_spec is None and shipped is None and not wiener and not blind_wiener:
        raise RobustirError("deblur-eval: give --model (with --weights), --shipped NAME, --wiener or --blind-wiener")
    if model_spec is not None and shipped is not None:
        raise RobustirError("deblur-eval: give either --model or --shipped, not both")
    check_crop(crop, levin_kernels(data_root), "--crop")  # named as the option here; heldout_set says "crop"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = heldout_set(dataset=dataset, n_images=n_images, crop=crop, sigma=sigma, seed=seed, root=data_root)
    for w in caught:  # one plain line each (gray images made RGB, alpha dropped), not a source-line traceback
        click.echo(f"warning: {w.message}", err=True)
    report: dict[str, object] = {"heldout": data.description, "blurred_input": identity_scores(data)}
    if shipped is not None:
        model, _ = load_shipped(shipped)
        report[shipped] = evaluate_deblur(model, data)
    elif model_spec is not None:
        from robustir.models import parse_spec, restorer

        model = restorer(parse_spec(model_spec), weights=weights)
        report[str(model_spec)] = evaluate_deblur(model, data)
    if wiener:
        report["wiener"] = wiener_baseline(data)
    if blind_wiener:
        report["wiener_blind"] = blind_wiener_baseline(data)
    click.echo(json.dumps(report, indent=2))


@click.command("ship-deblurrer")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--command", "train_cmd", required=True, help="The exact command that trained the run (for the card).")
@click.option("--dest", default=None, help="Output folder (default src/robustir/checkpoints).")
@click.option("--notes", default="", help="Free text for the card.")
@click.option("--data-root", default=None, help="Shared data folder (default $ROBUSTIR_DATA or ../shared/data).")
def ship_deblurrer_command(run_dir: str, name: str, train_cmd: str, dest: str | None, notes: str,
                           data_root: str | None) -> None:
    """Evaluate a finished deblurring run on the held-out set and write <name>.safetensors + <name>.json."""
    from robustir.train.deblur import ship_run

    card = ship_run(run_dir, name, command=train_cmd, dest=dest, notes=notes, root=data_root)
    m = card["metrics"]
    click.echo(f"{name}: PSNR {m['model']['psnr']:.2f} dB / SSIM {m['model']['ssim']:.4f}; Wiener (oracle nsr) "
               f"{m['wiener']['psnr']:.2f} / {m['wiener']['ssim']:.4f}; blurred {m['blurred_input']['psnr']:.2f}"
               + (f"; blind Wiener {m['wiener_blind']['psnr']:.2f}" if "wiener_blind" in m else ""))


COMMANDS = [deblur_eval_command, ship_deblurrer_command]

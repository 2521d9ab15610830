"""`robustir train CONFIG.yaml [--resume]` (also `python -m robustir.train.cli`, and under torchrun for DDP)."""

from __future__ import annotations

import os
import sys

import click
import yaml

from robustir.errors import RobustirError


def _parse_set(values: tuple[str, ...]) -> dict[str, object]:
    """`--set train.steps=100` pairs as a dotted-key dict (values parsed as YAML scalars)."""
    out: dict[str, object] = {}
    for item in values:
        if "=" not in item:
            raise RobustirError(f"--set: expected KEY=VALUE (e.g. train.steps=100), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue from train.out/last.safetensors (start fresh if absent).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. train.steps=100.")
@click.option("--data-root", default=None, help="Shared data folder (default $ROBUSTIR_DATA or ../shared/data).")
@click.option("--no-progress", is_flag=True, help="Disable the progress bar.")
def train_command(config: str, resume: bool, overrides: tuple[str, ...], data_root: str | None,
                  no_progress: bool) -> None:
    """Train a restorer from a YAML config (resumable; torchrun-ready)."""
    from robustir.train.config import load_config
    from robustir.train.distributed import launch_ranks
    from robustir.train.loop import train

    cfg = load_config(config, _parse_set(overrides))
    result = train(cfg, resume=resume, data_root=data_root, progress=not no_progress)
    rank, world, _ = launch_ranks()
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    if rank == 0:  # one summary line per run, not one per torchrun worker
        click.echo(f"trained {result.steps} steps in {result.wall_time_s:.1f} s -> {result.out / 'model.safetensors'}"
                   + (f" (val {val})" if val else ""))
    if world > 1:
        # Under torchrun with Gloo, a worker can abort in C++ static teardown after everything is written and the
        # process group destroyed ("terminate called without an active exception", no Python frame; 2 of 110 runs
        # under load), which torchrun reports as a failed run. Nothing is left to do: skip interpreter teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@click.command("ship-denoiser")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--command", "train_cmd", required=True, help="The exact command that trained the run (for the card).")
@click.option("--sigma", default=25.0, show_default=True, help="Noise level (0-255) of the Set12 evaluation.")
@click.option("--paper-psnr", type=float, default=None, help="The paper's Set12 PSNR for this setting (for the card).")
@click.option("--notes", default="", help="Free text for the card (e.g. the reduced width/depth).")
@click.option("--reference/--no-reference", default=False, show_default=True,
              help="Also score the official KAIR DnCNN-S-25 on the same noise (slow on CPU: a 17x64 network on Set12).")
@click.option("--dest", default=None, help="Folder for <name>.safetensors + <name>.json (default: the package's).")
@click.option("--data-root", default=None, help="Shared data folder (default $ROBUSTIR_DATA or ../shared/data).")
def ship_command(run_dir: str, name: str, train_cmd: str, sigma: float, paper_psnr: float | None, notes: str,
                 reference: bool, dest: str | None, data_root: str | None) -> None:
    """Score a finished denoising run on Set12 and write it as a shipped checkpoint with its JSON card."""
    from robustir.train.shipped import ship_denoiser

    card = ship_denoiser(run_dir, name, command=train_cmd, sigma=sigma, paper_psnr=paper_psnr, notes=notes,
                         dest=dest, root=data_root, reference=reference)
    m = card["metrics"]
    click.echo(f"{name}: Set12 sigma {sigma:g} PSNR {m['model']['psnr']:.2f} dB (noisy input "
               f"{m['noisy_input']['psnr']:.2f} dB)")


COMMANDS = [train_command, ship_command]


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m robustir.train.cli`, e.g. under torchrun) with `robustir`'s error handling."""
    from robustir.cli import run_click  # late: robustir.cli imports this module to register its commands

    return run_click(train_command, argv)


if __name__ == "__main__":
    sys.exit(main())

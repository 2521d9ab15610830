"""`robustir train CONFIG.yaml [--resume]` (also `python -m robustir.train.cli`, and under torchrun for DDP)."""

from __future__ import annotations

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
    from robustir.train.loop import train

    cfg = load_config(config, _parse_set(overrides))
    result = train(cfg, resume=resume, data_root=data_root, progress=not no_progress)
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val.items())
    click.echo(f"trained {result.steps} steps in {result.wall_time_s:.1f} s -> {result.out / 'model.safetensors'}"
               + (f" (val {val})" if val else ""))


COMMANDS = [train_command]


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with the same error handling as `robustir`."""
    try:
        train_command.main(args=argv, standalone_mode=False)
    except RobustirError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

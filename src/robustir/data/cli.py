"""Data commands: `robustir info` (environment, models, attacks, datasets)."""

from __future__ import annotations

import importlib
import platform

import click


def _attack_presets() -> list[str]:
    """Names of the registered attack presets, or [] while `robustir.attacks` has none."""
    attacks = importlib.import_module("robustir.attacks")
    lister = getattr(attacks, "list_presets", None)
    if lister is None:
        return []
    presets = lister()
    return sorted(presets) if not isinstance(presets, list) else sorted(map(str, presets))


@click.command()
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Shared data folder (default: $ROBUSTIR_DATA or ../shared/data).")
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
        status = ""
        if root is not None:
            try:
                status = f"{len(ds.files(root))} images"
            except ValueError:
                status = "missing"
        click.echo(f"  {name:<15} {status:<11} {ds.description}")


COMMANDS = [info]

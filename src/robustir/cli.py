"""Command-line interface: `robustir <command>`; each concept contributes its commands from its own `cli.py`."""

from __future__ import annotations

import sys

import click

from robustir.errors import RobustirError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robustir")
def cli() -> None:
    """robustir: attack, analyse, defend and benchmark image-restoration networks."""


def _register_commands() -> None:
    """Attach the commands of every concept (explicit list: nothing depends on import side effects)."""
    import importlib

    for module in ("robustir.data.cli", "robustir.experiments.cli", "robustir.report.cli",
                   "robustir.train.cli", "robustir.attacks.cli",
                   "robustir.train.deblur_cli"):
        mod = importlib.import_module(module)
        for command in mod.COMMANDS:
            cli.add_command(command)


_register_commands()


def run_click(command: click.Command, argv: list[str] | None = None) -> int:
    """Run a click command, printing user and file-system errors as one line (no traceback); return the exit code."""
    try:
        command.main(args=argv, standalone_mode=False)
    except RobustirError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except OSError as exc:  # a full disk, a read-only folder: the message names the file
        click.echo(f"error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `robustir`."""
    return run_click(cli, argv)


if __name__ == "__main__":
    sys.exit(main())

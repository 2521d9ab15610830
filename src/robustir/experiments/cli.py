"""`robustir run EXPERIMENT.yaml`: run or resume a declarative robustness experiment, then write its report."""

from __future__ import annotations

import click



@click.command("run")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--out", "output", default=None, help="Output folder (default: the file's `output:` or runs/NAME).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (default: start a local Ray instance).")
@click.option("--force", is_flag=True, help="Discard results of a different experiment in the output folder.")
@click.option("--extend", is_flag=True,
              help="The output folder holds an earlier version of this experiment (same name, edited: a model, "
                   "attack or image added or removed): keep the jobs this version still holds, run the rest.")
@click.option("--data-root", default=None, help="Folder of the shared research data (else $ROBUSTIR_DATA).")
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(experiment: str, output: str | None, backend: str, address: str | None, force: bool, extend: bool,
        data_root: str | None, no_report: bool, quiet: bool) -> None:
    """Run (or resume) EXPERIMENT.yaml: finished jobs are skipped, results go to OUT/results.sqlite."""
    import os

    from robustir.experiments.runner import run_experiment
    from robustir.experiments.spec import load_experiment

    if data_root:
        from robustir.data import data_root as resolve_root

        os.environ["ROBUSTIR_DATA"] = str(resolve_root(data_root))
    exp = load_experiment(experiment, output=output)
    summary = run_experiment(exp, backend=backend, address=address, force=force, extend=extend,
                             progress=not quiet)
    dropped = f", {summary.dropped} recorded job(s) no longer in it dropped" if summary.dropped else ""
    click.echo(f"{exp.name}: {summary.executed} job(s) run, {summary.skipped} already done, "
               f"{summary.total_jobs} in all{dropped}; {summary.seconds:.1f} s -> {summary.output}")
    if not no_report:
        from robustir.report.build import build_report

        files = build_report(summary.output)
        click.echo(f"report: {files.html} (also {files.markdown.name}, {files.csv.name}, {files.latex.name})")


COMMANDS = [run]

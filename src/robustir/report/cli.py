"""`robustir report OUT_DIR`: tables (Markdown, CSV, LaTeX) and a self-contained HTML report from the database."""

from __future__ import annotations

import click



@click.command("report")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--print/--no-print", "show", default=True, help="Print the main tables.")
def report(out_dir: str, show: bool) -> None:
    """Write OUT_DIR/report.{html,md}, results.csv and tables.tex from OUT_DIR/results.sqlite."""
    from robustir.report.build import build_report
    from robustir.report.tables import to_markdown

    files = build_report(out_dir)
    if show:
        for table in files.tables:
            click.echo(to_markdown(table))
    click.echo(f"report: {files.html}")


COMMANDS = [report]

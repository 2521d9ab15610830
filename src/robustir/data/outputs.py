"""Output folders written by more than one command run: refuse to mix one run's files with another's."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from robustir.errors import RobustirError


def check_reusable_output(out: Path, outputs: Sequence[str], record_file: str, record: dict[str, Any], *,
                          force: bool, held_by: str) -> None:
    """Refuse an `out` whose `outputs` come from a run with another `record` (kept in `record_file`), unless `force`.

    The same record (re-running the same command) is fine. A folder mixing two runs' files (the first run's b.png
    next to a listing of a.png only) misleads whoever reads it, hence the refusal; `held_by` names that other run in
    the message (e.g. "the results of another attack run").
    """
    held = [n for n in outputs if (out / n).is_file() or ((out / n).is_dir() and any((out / n).iterdir()))]
    if not held or force:
        return
    try:
        previous = json.loads((out / record_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == record:
        return
    what = ("settings that differ: " + ", ".join(k for k in record if previous.get(k) != record[k])
            if isinstance(previous, dict) else f"{held[0]} without {record_file} recording its settings")
    raise RobustirError(f"--out {out} already holds {held_by} ({what}); use a new --out folder, or pass --force to "
                        f"replace them")


def first_missing(path: Path) -> Path | None:
    """The top-most folder of `path` (itself or a parent) that does not exist yet, or None: what a call creates."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


@contextlib.contextmanager
def staged_output(out: Path, outputs: Sequence[str], *, last: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success its entries replace `outputs` in `out`, else it goes.

    A failure part-way (a bad image, a full disk, Ctrl-C) leaves neither a half-written `out` nor stray files in an
    existing one, and removes the folders this call created; on success the previous run's `outputs` are replaced as
    a whole (never mixed with the new ones), other files in `out` are kept, and the entry `last` (the record that
    lists the rest) is moved in last.
    """
    created = first_missing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the folder may become `out`, so it gets the usual umask permissions, not 0700
    staging = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)  # one rename on the same file system: `out` appears complete or not at all
            return
        for name in outputs:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == last):
            os.replace(item, out / item.name)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise

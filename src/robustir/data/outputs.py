"""Output folders written by more than one command run: refuse to mix one run's files with another's."""

from __future__ import annotations

import json
from collections.abc import Sequence
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

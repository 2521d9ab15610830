"""Where shared research data lives: `--data-root` > `$ROBUSTIR_DATA` > `../shared/data` found from cwd or the repo."""

from __future__ import annotations

import os
from pathlib import Path

from robustir.errors import RobustirError

ENV_VAR = "ROBUSTIR_DATA"


def _default_candidates() -> list[Path]:
    """`../shared/data` relative to the cwd, then relative to the source checkout (repository root)."""
    repo = Path(__file__).resolve().parents[3]  # src/robustir/data/root.py -> repository root
    cands = [Path.cwd().resolve().parent / "shared" / "data", repo.parent / "shared" / "data"]
    return list(dict.fromkeys(cands))


def data_root(override: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Resolve the data root: explicit `override`, then `$ROBUSTIR_DATA`, then `../shared/data` if it exists.

    Args:
        override: a folder given on the command line (`--data-root`); must exist.
        required: raise when nothing is found (otherwise return None).

    Returns:
        The absolute folder, or None when `required=False` and no data root exists.
    """
    if override is not None and str(override) != "":
        path = Path(override).expanduser()
        if not path.is_dir():
            raise RobustirError(f"data root {str(path)!r} (from --data-root) is not an existing folder")
        return path.resolve()
    env = os.environ.get(ENV_VAR, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise RobustirError(f"data root {env!r} (from ${ENV_VAR}) is not an existing folder")
        return path.resolve()
    for cand in _default_candidates():
        if cand.is_dir():
            return cand.resolve()
    if required:
        raise RobustirError(f"no data root found: pass --data-root DIR, set ${ENV_VAR}, or place the shared data at "
                            f"../shared/data")
    return None

"""Test helper: folders of random 8-bit images, and a folder's files as bytes (to prove nothing changed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_image_folder(path: Path, names: list[str], shape: tuple[int, ...], seed: int = 0) -> Path:
    """Write one random uint8 image of `shape` ((H, W) gray or (H, W, C)) per name into `path`; returns `path`."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path / name)
    return path


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> contents)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

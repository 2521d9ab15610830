"""Random training patches with the 8 flips/rotations of the square (dihedral group), deterministic given a seed."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from robustir.data.datasets import item_generator
from robustir.errors import RobustirError

__all__ = ["RandomPatches", "dihedral"]


def dihedral(x: Tensor, mode: int) -> Tensor:
    """Apply one of the 8 flips/rotations to the last two dims: rotate by 90*(mode % 4) degrees, then flip if mode >= 4."""
    if not 0 <= mode < 8:
        raise RobustirError(f"dihedral mode: expected 0..7, got {mode}")
    y = torch.rot90(x, mode % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if mode >= 4 else y


class RandomPatches(Dataset):
    """`patches_per_image` random square crops of every item of a base dataset, with optional dihedral augmentation.

    Works on any dataset whose items are dicts with (C, H, W) tensors under `keys` ("target", and "input" for paired
    data): they are cropped at the same place and transformed the same way; other entries pass through unchanged.
    Item j comes from base item j // patches_per_image with a position and transform drawn from
    `item_generator(seed, j, epoch)`, so it does not depend on the order items are read; `set_epoch` draws new ones.

    Args:
        base: the dataset to crop (e.g. `ImageFolder("train400")`, `PairedFolder(...)`).
        patch_size: side of the square patch in pixels.
        patches_per_image: crops per base image.
        seed: base seed.
        augment: apply a random one of the 8 flips/rotations.
        cache: keep decoded base images in memory (worth it for small training sets read every epoch).
        keys: the item entries that are images to crop.
    """

    def __init__(self, base: Dataset, *, patch_size: int, patches_per_image: int = 1, seed: int = 0,
                 augment: bool = True, cache: bool = False,
                 keys: tuple[str, ...] = ("input", "target")) -> None:
        if int(patch_size) < 1:
            raise RobustirError(f"patch_size: expected a positive integer, got {patch_size!r}")
        if int(patches_per_image) < 1:
            raise RobustirError(f"patches_per_image: expected a positive integer, got {patches_per_image!r}")
        if len(base) == 0:  # type: ignore[arg-type]
            raise RobustirError("RandomPatches: the base dataset is empty")
        self.base = base
        self.patch_size = int(patch_size)
        self.patches_per_image = int(patches_per_image)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.keys = tuple(keys)
        self.epoch = 0
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of patch positions/transforms (deterministic in (seed, epoch))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of patches: base images x patches per image."""
        return len(self.base) * self.patches_per_image  # type: ignore[arg-type]

    def _base_item(self, index: int) -> dict[str, Any]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self.base[index]
        if not isinstance(item, dict):
            raise RobustirError(f"RandomPatches: base items must be dicts of tensors, got {type(item).__name__}")
        if self._cache is not None:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        """A patch dict with the same keys as the base item; "name" gets the patch position appended."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        index = index % len(self)
        item = self._base_item(index // self.patches_per_image)
        images = {k: item[k] for k in self.keys if k in item}
        if not images or not all(isinstance(v, Tensor) and v.ndim == 3 for v in images.values()):
            raise RobustirError(f"RandomPatches: base items need (C, H, W) image tensors under {self.keys}, got "
                                f"{ {k: type(v).__name__ for k, v in item.items()} }")
        sizes = {tuple(v.shape[-2:]) for v in images.values()}
        if len(sizes) != 1:
            raise RobustirError(f"RandomPatches: images of item {item.get('name', index)!r} differ in size: "
                                f"{ {k: tuple(v.shape) for k, v in images.items()} }")
        h, w = sizes.pop()
        p = self.patch_size
        if h < p or w < p:
            raise RobustirError(f"RandomPatches: image {item.get('name', index)!r} is {h}x{w}, smaller than the "
                                f"patch size {p}")
        g = item_generator(self.seed, index, self.epoch)
        top = int(torch.randint(0, h - p + 1, (1,), generator=g))
        left = int(torch.randint(0, w - p + 1, (1,), generator=g))
        mode = int(torch.randint(0, 8, (1,), generator=g)) if self.augment else 0
        out = dict(item)
        for key, value in images.items():
            out[key] = dihedral(value[:, top:top + p, left:left + p], mode).contiguous()
        if "name" in item:
            out["name"] = f"{item['name']}@{top},{left},{mode}"
        return out

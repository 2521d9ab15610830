"""Map-style datasets (deterministic given a seed): clean image folders, on-the-fly degradation, paired folders.

Items are dicts of tensors plus the file name, so the default `DataLoader` collate works and every wrapper
(`DegradedImages`, `RandomPatches`) can pass extra entries (kernel, sigma) through unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from robustir.data.io import image_size, load_image
from robustir.data.names import check_image_paths, dataset_info, list_images, resolve_dataset
from robustir.errors import RobustirError

# A degradation receives a clean batch (1, C, H, W) and a seeded generator; it returns the degraded batch, or a dict
# with key "input" (the degraded batch) plus extra entries such as "kernel" or "sigma" that are passed through.
Degradation = Callable[[Tensor, torch.Generator], "Tensor | dict[str, Tensor]"]

__all__ = ["Degradation", "DegradedImages", "ImageFolder", "PairedFolder", "convert_channels", "item_generator",
           "resize_square"]


def item_generator(seed: int, index: int, *extra: int) -> torch.Generator:
    """A CPU generator seeded from (seed, index, ...) alone, so item i is the same whatever order items are read."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), *(int(e) for e in extra)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


def convert_channels(x: Tensor, channels: int | None, name: str = "image") -> Tensor:
    """Gray <-> RGB on a (C, H, W) tensor: gray is repeated; RGB -> gray uses ITU-R BT.601 luma (as Pillow's 'L')."""
    if channels is None or x.shape[0] == channels:
        return x
    if channels == 3 and x.shape[0] == 1:
        return x.expand(3, -1, -1).contiguous()
    if channels == 1 and x.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
        return (x * weights).sum(0, keepdim=True).clamp(0, 1)
    raise RobustirError(f"{name}: cannot convert {x.shape[0]} channel(s) to {channels} (expected 1 or 3)")


def resize_square(x: Tensor, size: int) -> Tensor:
    """Resize a (C, H, W) image to size x size with antialiased bicubic interpolation, clamped to [0,1]."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y[0].clamp(0, 1)


def _check_channels(channels: int | None) -> int | None:
    if channels not in (None, 1, 3):
        raise RobustirError(f"channels: expected 1, 3 or None (keep the file's), got {channels!r}")
    return channels


class ImageFolder(Dataset):
    """Clean images of a named dataset (e.g. 'set12', 'cbsd68', 'celeba_hq') or of a user folder.

    Items: `{"target": Tensor (C, H, W) in [0,1], "name": file name}`.

    Args:
        source: dataset name, folder, or an explicit list of image paths.
        root: data root override for named datasets.
        channels: force 1 (gray) or 3 (RGB) channels; None: the named dataset's own count, or each file's own.
        size: resize every image to size x size (CelebA-HQ defaults to 256); 0 keeps the native size.
        limit: use only the first `limit` images (sorted by name).
    """

    def __init__(self, source: str | os.PathLike | Sequence[str | os.PathLike], *,
                 root: str | os.PathLike | None = None, channels: int | None = None, size: int | None = None,
                 limit: int | None = None) -> None:
        info = None
        if isinstance(source, (str, os.PathLike)):
            self.paths = resolve_dataset(source, root)
            info = dataset_info(os.fspath(source)) if not Path(os.fspath(source)).is_dir() else None
        else:
            self.paths = check_image_paths(source)
        default_size = info.size if info is not None else None
        self.size = default_size if size is None else (int(size) or None)
        if self.size is not None and self.size < 1:
            raise RobustirError(f"size: expected a positive image size, got {size!r}")
        if limit is not None:
            if int(limit) < 1:
                raise RobustirError(f"limit: expected a positive number of images, got {limit!r}")
            self.paths = self.paths[:int(limit)]
        self.channels = _check_channels(info.channels if channels is None and info is not None else channels)
        self.names = [p.name for p in self.paths]

    def __len__(self) -> int:
        """Number of images."""
        return len(self.paths)

    def load(self, index: int) -> Tensor:
        """The clean image `index` as (C, H, W) after channel conversion and resizing."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        x = convert_channels(load_image(self.paths[index]), self.channels, str(self.paths[index]))
        return resize_square(x, self.size) if self.size else x

    def __getitem__(self, index: int) -> dict[str, Any]:
        """`{"target": (C, H, W), "name": str}`."""
        return {"target": self.load(index), "name": self.names[index]}


class DegradedImages(Dataset):
    """Clean images with an on-the-fly degradation, seeded per item (item i is the same in any order or worker).

    Items: `{"input": degraded (C, H, W), "target": clean (C, H, W), "name": str, ...extras}` where extras are the
    other entries a degradation returns (e.g. "kernel", "sigma").

    Args:
        clean: a dataset whose items are dicts with "target" (ImageFolder, RandomPatches, ...), or a dataset name /
            folder (then `ImageFolder(clean, root=root, channels=channels, size=size)`).
        degrade: `fn(x (1, C, H, W), generator) -> Tensor | dict`, e.g. `noise(25)` or `blur_noise(kernel, 2.55)`.
        seed: base seed; item i uses `item_generator(seed, i)`.
    """

    def __init__(self, clean: Dataset | str | os.PathLike, degrade: Degradation, *, seed: int = 0,
                 root: str | os.PathLike | None = None, channels: int | None = None,
                 size: int | None = None) -> None:
        if isinstance(clean, (str, os.PathLike)):
            clean = ImageFolder(clean, root=root, channels=channels, size=size)
        if not callable(degrade):
            raise RobustirError(f"degrade: expected a callable fn(x, generator), got {type(degrade).__name__}")
        self.clean = clean
        self.degrade = degrade
        self.seed = int(seed)

    def __len__(self) -> int:
        """Number of items (as the clean dataset)."""
        return len(self.clean)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The clean item with its degraded version under "input"."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        item = dict(self.clean[index])
        if "target" not in item:
            raise RobustirError("DegradedImages: the clean dataset's items must be dicts with a 'target' image")
        out = self.degrade(item["target"].unsqueeze(0), item_generator(self.seed, index))
        extras: dict[str, Any] = {}
        if isinstance(out, dict):
            if "input" not in out:
                raise RobustirError("DegradedImages: a degradation returning a dict must include 'input'")
            extras = {k: v for k, v in out.items() if k != "input"}
            out = out["input"]
        if not isinstance(out, Tensor) or out.shape[-3:] != item["target"].shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RobustirError(f"DegradedImages: degradation returned {shape} for a clean image of shape "
                                f"{tuple(item['target'].shape)} (expected the same (C, H, W))")
        item["input"] = out.reshape(item["target"].shape).detach()
        item.update({k: (v[0] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == 1 else v)
                     for k, v in extras.items()})
        return item


def _pair_up(inputs: list[Path], targets: list[Path], where: str) -> list[tuple[Path, Path]]:
    """Match input and target files by file stem; raise naming the unmatched ones."""
    tmap = {p.stem: p for p in targets}
    imap = {p.stem: p for p in inputs}
    only_in, only_t = sorted(set(imap) - set(tmap)), sorted(set(tmap) - set(imap))
    if only_in or only_t:
        parts = []
        if only_in:
            parts.append(f"{len(only_in)} input(s) without a target (e.g. {', '.join(only_in[:3])})")
        if only_t:
            parts.append(f"{len(only_t)} target(s) without an input (e.g. {', '.join(only_t[:3])})")
        raise RobustirError(f"unmatched pairs in {where}: {'; '.join(parts)}")
    return [(imap[s], tmap[s]) for s in sorted(imap)]


class PairedFolder(Dataset):
    """Pairs of degraded/clean images: GoPro layout `<root>/<split>/<sequence>/{blur,sharp}/*.png` or flat
    `<root>/{input,target}/*`.

    Items: `{"input": (C, H, W), "target": (C, H, W), "name": "<sequence>/<file>" or file name}`.

    Args:
        root: the dataset folder (GoPro: the folder holding the splits, or a split folder itself).
        split: GoPro split ('train', 'test'); ignored for the flat layout.
        channels: force 1 or 3 channels.
        check_sizes: compare image sizes of every pair at construction (header reads only).
    """

    def __init__(self, root: str | os.PathLike, *, split: str | None = None, channels: int | None = None,
                 check_sizes: bool = True) -> None:
        base = Path(root)
        if not base.is_dir():
            raise RobustirError(f"paired dataset folder {str(base)!r} does not exist")
        self.channels = _check_channels(channels)
        if (base / "input").is_dir() or (base / "target").is_dir():
            self.layout = "flat"
            for sub in ("input", "target"):
                if not (base / sub).is_dir():
                    raise RobustirError(f"paired dataset {str(base)!r}: flat layout needs both 'input' and 'target' "
                                        f"folders, '{sub}' is missing")
            self.pairs = _pair_up(list_images(base / "input"), list_images(base / "target"), str(base))
            self.names = [p.name for p, _ in self.pairs]
        else:
            self.layout = "gopro"
            folder = base / split if split else base
            if not folder.is_dir():
                splits = sorted(p.name for p in base.iterdir() if p.is_dir())
                raise RobustirError(f"paired dataset {str(base)!r}: no split {split!r} (found: {', '.join(splits)})")
            seqs = sorted(p for p in folder.iterdir() if p.is_dir() and ((p / "blur").is_dir() or (p / "sharp").is_dir()))
            if not seqs:
                raise RobustirError(f"paired dataset {str(folder)!r}: expected '<sequence>/blur' and "
                                    f"'<sequence>/sharp' folders (GoPro layout) or 'input' and 'target' folders "
                                    f"(flat layout), found neither" + ("" if split else
                                                                       "; pass split= if it holds train/test"))
            self.pairs, self.names = [], []
            for seq in seqs:
                for sub in ("blur", "sharp"):
                    if not (seq / sub).is_dir():
                        raise RobustirError(f"paired dataset sequence {str(seq)!r}: '{sub}' folder is missing")
                pairs = _pair_up(list_images(seq / "blur"), list_images(seq / "sharp"), str(seq))
                self.pairs += pairs
                self.names += [f"{seq.name}/{p.name}" for p, _ in pairs]
        if check_sizes:
            for inp, tgt in self.pairs:
                si, st = image_size(inp), image_size(tgt)
                if si != st:
                    raise RobustirError(f"size mismatch: input {str(inp)!r} is {si[0]}x{si[1]} but target "
                                        f"{str(tgt)!r} is {st[0]}x{st[1]} (height x width)")

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """`{"input": (C, H, W), "target": (C, H, W), "name": str}`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        inp, tgt = self.pairs[index]
        x = convert_channels(load_image(inp), self.channels, str(inp))
        y = convert_channels(load_image(tgt), self.channels, str(tgt))
        if x.shape != y.shape:
            raise RobustirError(f"size mismatch: input {str(inp)!r} has shape {tuple(x.shape)} but target "
                                f"{str(tgt)!r} has {tuple(y.shape)}")
        return {"input": x, "target": y, "name": self.names[index]}

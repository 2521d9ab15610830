"""Deterministic patch sampling: which image, crop and flip the k-th training sample gets depends on (seed, k) only.

Sample ids count every sample of the run in order (step 0 holds ids 0..B-1, step 1 the next B, ...). Sample k is image
`perm_e[k mod M]` of epoch `e = k // M`, where `perm_e` is a permutation seeded by (seed, e) — sampling without
replacement within an epoch, like a shuffled loader — and its crop and dihedral transform come from a generator seeded
by (seed, k). Processes of a distributed run take disjoint slices of each step's ids (DistributedSampler's sharding),
and a resumed run recomputes exactly the same samples.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.errors import RobustirError
from robustir.train.batch import derive_seed
from robustir.train.config import DataConfig, Stage


def load_images(name_or_path: str, channels: int, *, limit: int | None = None, root: str | None = None
                ) -> list[Tensor]:
    """Load a dataset (name or folder) as a list of (C,H,W) float tensors with `channels` channels."""
    from robustir.data import convert_channels, load_image, resolve_dataset

    paths = resolve_dataset(name_or_path, root)
    if not paths:
        raise RobustirError(f"dataset {name_or_path!r} contains no images")
    if limit is not None:
        paths = paths[:limit]
    return [convert_channels(load_image(p), channels, str(p)) for p in paths]


def dihedral(x: Tensor, mode: int) -> Tensor:
    """One of the 8 flips/rotations of a (..., H, W) tensor (mode 0 = identity)."""
    if mode >= 4:
        x = x.flip(-1)
    return torch.rot90(x, mode % 4, dims=(-2, -1))


def rescale(x: Tensor, factor: float) -> Tensor:
    """Bicubic resize of a (C,H,W) image by `factor` (DnCNN's multi-scale patches), clamped to [0,1]."""
    if factor == 1.0:
        return x
    h, w = (max(1, int(round(s * factor))) for s in x.shape[-2:])
    return F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0.0, 1.0)


@dataclass(frozen=True)
class StagePlan:
    """Where a step sits in the progressive schedule: its patch size, global batch size and first sample id."""

    patch_size: int
    batch_size: int
    first_id: int


def stage_at(step: int, data: DataConfig) -> StagePlan:
    """Patch size, global batch and the id of the step's first sample (a pure function of the step)."""
    stages: Sequence[Stage] = data.stages or [Stage(iters=1 << 62, patch_size=data.patch_size,
                                                    batch_size=data.batch_size)]
    first, begin = 0, 0
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        if step < begin + st.iters or last:
            return StagePlan(st.patch_size, st.batch_size, first + (step - begin) * st.batch_size)
        first += st.iters * st.batch_size
        begin += st.iters
    raise AssertionError("unreachable")


class ImageSource(Protocol):
    """Training images by index: `load(j) -> (target, input or None)`, each (C,H,W); `size(j) -> (H, W)`."""

    def __len__(self) -> int: ...

    def size(self, j: int) -> tuple[int, int]: ...

    def load(self, j: int) -> tuple[Tensor, Tensor | None]: ...


class MemorySource:
    """Images held in memory (small sets such as Train400): clean targets and optional aligned inputs."""

    def __init__(self, targets: Sequence[Tensor], inputs: Sequence[Tensor] | None = None) -> None:
        """Keep the (C,H,W) tensors; pairs must have equal shapes."""
        if inputs is not None and len(inputs) != len(targets):
            raise RobustirError(f"paired data: {len(inputs)} inputs but {len(targets)} targets")
        for j, t in enumerate(targets):
            if inputs is not None and inputs[j].shape != t.shape:
                raise RobustirError(f"paired data: pair {j} has input {tuple(inputs[j].shape)} and target "
                                    f"{tuple(t.shape)}")
        self.targets, self.inputs = list(targets), (list(inputs) if inputs is not None else None)

    def __len__(self) -> int:
        """Number of images."""
        return len(self.targets)

    def size(self, j: int) -> tuple[int, int]:
        """(H, W) of image j."""
        return int(self.targets[j].shape[-2]), int(self.targets[j].shape[-1])

    def load(self, j: int) -> tuple[Tensor, Tensor | None]:
        """Image j (and its input)."""
        return self.targets[j], (self.inputs[j] if self.inputs is not None else None)


class FileSource:
    """Images read from disk on demand (large sets such as GoPro): clean files, or (input, target) file pairs."""

    def __init__(self, targets: Sequence[Path], channels: int, inputs: Sequence[Path] | None = None) -> None:
        """Keep the paths; sizes come from the file headers."""
        from robustir.data import image_size

        if inputs is not None and len(inputs) != len(targets):
            raise RobustirError(f"paired data: {len(inputs)} inputs but {len(targets)} targets")
        self.targets, self.inputs, self.channels = list(targets), (list(inputs) if inputs else None), channels
        self.sizes = [image_size(p) for p in self.targets]

    def __len__(self) -> int:
        """Number of images."""
        return len(self.targets)

    def size(self, j: int) -> tuple[int, int]:
        """(H, W) of image j (from its header)."""
        return self.sizes[j]

    def load(self, j: int) -> tuple[Tensor, Tensor | None]:
        """Read image j (and its input) from disk."""
        from robustir.data import convert_channels, load_image

        t = convert_channels(load_image(self.targets[j]), self.channels, str(self.targets[j]))
        if self.inputs is None:
            return t, None
        i = convert_channels(load_image(self.inputs[j]), self.channels, str(self.inputs[j]))
        if i.shape != t.shape:
            raise RobustirError(f"paired data: {self.inputs[j]} has shape {tuple(i.shape)} but {self.targets[j]} "
                                f"has {tuple(t.shape)}")
        return t, i


class PatchSampler:
    """Random patches from an image source (clean only, or aligned input/target pairs), fixed by (seed, sample id).

    An epoch visits every (image, scale) item once. In-memory sources are rescaled once up front; file sources are
    read (and rescaled) per sample, so a DataLoader with workers can prefetch steps (`data.workers`).
    """

    def __init__(self, source: ImageSource | Sequence[Tensor], *, inputs: Sequence[Tensor] | None = None, seed: int,
                 scales: Sequence[float] = (1.0,), augment: bool = True) -> None:
        """`source` is an ImageSource or a list of (C,H,W) clean tensors (with optional aligned `inputs`)."""
        if not isinstance(source, (MemorySource, FileSource)):
            source = MemorySource(list(source), inputs)
        if len(source) == 0:
            raise RobustirError("training data: no images")
        self.source = source
        self.scales = [float(s) for s in scales]
        self.items = [(j, s) for j in range(len(source)) for s in self.scales]
        self.cache: list[tuple[Tensor, Tensor | None]] | None = None
        if isinstance(source, MemorySource):
            self.cache = []
            for j, s in self.items:
                t, i = source.load(j)
                self.cache.append((rescale(t, s), rescale(i, s) if i is not None else None))
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        """Number of (image, scale) items an epoch visits."""
        return len(self.items)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - small per-instance cache of epoch permutations
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(len(self.items))

    def _item_size(self, item: int) -> tuple[int, int]:
        j, s = self.items[item]
        if self.cache is not None:
            t = self.cache[item][0]
            return int(t.shape[-2]), int(t.shape[-1])
        h, w = self.source.size(j)
        return (h, w) if s == 1.0 else (max(1, int(round(h * s))), max(1, int(round(w * s))))

    def check_patch(self, patch: int) -> None:
        """Raise if some image is smaller than the patch size."""
        small = min(min(self._item_size(k)) for k in range(len(self.items)))
        if small < patch:
            raise RobustirError(f"patch size {patch} is larger than the smallest training image side ({small}); "
                                f"lower data.patch_size or data.scales")

    def _load_item(self, item: int) -> tuple[Tensor, Tensor | None]:
        if self.cache is not None:
            return self.cache[item]
        j, s = self.items[item]
        t, i = self.source.load(j)
        return rescale(t, s), (rescale(i, s) if i is not None else None)

    def sample(self, k: int, patch: int) -> tuple[Tensor, Tensor | None]:
        """The k-th sample of the run: a (C,patch,patch) target crop (and the aligned input crop for pairs)."""
        m = len(self.items)
        item = int(self._perm(k // m)[k % m])
        t, inp = self._load_item(item)
        rng = np.random.default_rng(derive_seed(self.seed, "crop", k))
        h, w = t.shape[-2:]
        if h < patch or w < patch:
            raise RobustirError(f"training image {self.items[item][0]} ({h}x{w}) is smaller than the patch size "
                                f"{patch}")
        top, left = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        mode = int(rng.integers(0, 8)) if self.augment else 0
        crop_t = dihedral(t[:, top:top + patch, left:left + patch], mode)
        if inp is None:
            return crop_t, None
        return crop_t, dihedral(inp[:, top:top + patch, left:left + patch], mode)

    def batch(self, ids: Sequence[int], patch: int) -> tuple[Tensor, Tensor | None]:
        """Stack samples `ids` into (N,C,P,P) targets (and inputs for pairs)."""
        pairs = [self.sample(int(k), patch) for k in ids]
        targets = torch.stack([p[0] for p in pairs]).contiguous()
        if pairs[0][1] is None:
            return targets, None
        return targets, torch.stack([p[1] for p in pairs]).contiguous()  # type: ignore[misc]


class StepBatches(torch.utils.data.Dataset):
    """Item i = this process's (targets, inputs, sample ids, patch size) for step `start + i` (a pure function of the
    step), so a DataLoader with workers can prefetch steps without changing what they contain."""

    def __init__(self, sampler: PatchSampler, data: DataConfig, *, start: int, total: int, rank: int = 0,
                 world_size: int = 1) -> None:
        """Steps start..total-1 of the run for process `rank` of `world_size`."""
        self.sampler, self.data, self.start, self.total = sampler, data, start, total
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Number of steps left."""
        return max(self.total - self.start, 0)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | None, Tensor, int]:
        """The batch of step start + i."""
        if not 0 <= i < len(self):  # IndexError ends plain iteration (`for b in steps`) at the run's last step
            raise IndexError(f"step index {i} out of range for {len(self)} steps left")
        plan = stage_at(self.start + i, self.data)
        if plan.batch_size % self.world_size:
            raise RobustirError(f"batch size {plan.batch_size} is not divisible by the {self.world_size} processes")
        ids = torch.arange(plan.first_id, plan.first_id + plan.batch_size)[self.rank::self.world_size]
        targets, inputs = self.sampler.batch(ids.tolist(), plan.patch_size)
        return targets, inputs, ids, plan.patch_size

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


class PatchSampler:
    """Random patches from in-memory images (clean only, or aligned input/target pairs), fixed by (seed, sample id)."""

    def __init__(self, targets: Sequence[Tensor], *, inputs: Sequence[Tensor] | None = None, seed: int,
                 scales: Sequence[float] = (1.0,), augment: bool = True) -> None:
        """Keep the images (each (C,H,W)); with `inputs`, crops are taken at the same place in both."""
        if not targets:
            raise RobustirError("training data: no images")
        if inputs is not None and len(inputs) != len(targets):
            raise RobustirError(f"paired data: {len(inputs)} inputs but {len(targets)} targets")
        items_t, items_i = [], []
        for j, t in enumerate(targets):
            if inputs is not None and inputs[j].shape != t.shape:
                raise RobustirError(f"paired data: pair {j} has input {tuple(inputs[j].shape)} and target "
                                    f"{tuple(t.shape)}")
            for s in scales:
                items_t.append(rescale(t, s))
                items_i.append(rescale(inputs[j], s) if inputs is not None else None)
        self.targets = items_t
        self.inputs = items_i if inputs is not None else None
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        """Number of (image, scale) items an epoch visits."""
        return len(self.targets)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - small per-instance cache of epoch permutations
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(len(self.targets))

    def check_patch(self, patch: int) -> None:
        """Raise if some image is smaller than the patch size."""
        small = min(min(t.shape[-2:]) for t in self.targets)
        if small < patch:
            raise RobustirError(f"patch size {patch} is larger than the smallest training image side ({small}); "
                                f"lower data.patch_size or data.scales")

    def sample(self, k: int, patch: int) -> tuple[Tensor, Tensor | None]:
        """The k-th sample of the run: a (C,patch,patch) target crop (and the aligned input crop for pairs)."""
        m = len(self.targets)
        j = int(self._perm(k // m)[k % m])
        t = self.targets[j]
        rng = np.random.default_rng(derive_seed(self.seed, "crop", k))
        h, w = t.shape[-2:]
        if h < patch or w < patch:
            raise RobustirError(f"training image {j} ({h}x{w}) is smaller than the patch size {patch}")
        top, left = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        mode = int(rng.integers(0, 8)) if self.augment else 0
        crop_t = dihedral(t[:, top:top + patch, left:left + patch], mode)
        if self.inputs is None:
            return crop_t, None
        inp = self.inputs[j]
        assert inp is not None
        return crop_t, dihedral(inp[:, top:top + patch, left:left + patch], mode)

    def batch(self, ids: Sequence[int], patch: int) -> tuple[Tensor, Tensor | None]:
        """Stack samples `ids` into (N,C,P,P) targets (and inputs for pairs)."""
        pairs = [self.sample(int(k), patch) for k in ids]
        targets = torch.stack([p[0] for p in pairs]).contiguous()
        if self.inputs is None:
            return targets, None
        return targets, torch.stack([p[1] for p in pairs]).contiguous()  # type: ignore[misc]

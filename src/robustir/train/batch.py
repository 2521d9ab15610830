"""Pluggable batch preparation: how a clean batch becomes the (input, target) pair the network trains on.

A preparation is a list of *steps* from a registry; each step maps `(Batch, PrepContext) -> Batch`. The built-in steps
degrade the inputs (`noise`, `blur`) or mix alternatives per sample (`mix`); other concepts register their own steps
without touching the training loop, e.g. the defenses add FGSM adversarial training (replace the first half of each
batch by examples crafted on the current model, METHODS 2.5), typical-set noise (a noise *sampler*, METHODS 4.5) and
mixed-noise training (a `mix` of two `noise` steps):

```python
@register_step("fgsm", train_only=True)
def fgsm(*, eps: float = 8 / 255, fraction: float = 0.5) -> Step:
    def step(batch: Batch, ctx: PrepContext) -> Batch:
        mask = select_samples(batch.size, fraction, ctx)
        ...  # ctx.model(y, sigma=..., kernel=...) and ctx.loss(pred, target) -> (N,)
        return batch.replace_inputs(mask, x_adv)
    return step
```

Randomness is reproducible by construction: every random choice for a sample comes from a generator seeded by
(seed, purpose, global sample id), so it depends on neither the process history nor the number of processes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustir.checks import parse_fraction
from robustir.errors import RobustirError


@dataclass
class Batch:
    """A training batch.

    Attributes:
        inputs: degraded images `(N, C, H, W)` (what the network sees).
        targets: clean images `(N, C, H, W)`.
        sigma: per-sample noise level `(N,)` in [0,1] units (given to non-blind denoisers), or None.
        kernel: per-sample blur kernels `(N, 1, kh, kw)` (given to non-blind deblurrers), or None.
        replaced: `(N,)` bool, samples some step replaced by something else (e.g. adversarial examples).
    """

    inputs: Tensor
    targets: Tensor
    sigma: Tensor | None = None
    kernel: Tensor | None = None
    replaced: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.inputs.shape[0])

    def replace_inputs(self, mask: Tensor, new_inputs: Tensor) -> Batch:
        """A copy whose inputs are `new_inputs` where `mask` (N,) is true, marked as replaced."""
        m = mask.to(self.inputs.device).reshape(-1, 1, 1, 1)
        inputs = torch.where(m, new_inputs.to(self.inputs.dtype), self.inputs)
        old = self.replaced if self.replaced is not None else torch.zeros(self.size, dtype=torch.bool)
        return replace(self, inputs=inputs, replaced=old | mask.cpu())

    def subset(self, index: Tensor) -> Batch:
        """The samples at `index` (a (k,) long tensor)."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index.to(t.device)]
        return Batch(self.inputs[index.to(self.inputs.device)], self.targets[index.to(self.targets.device)],
                     pick(self.sigma), pick(self.kernel), pick(self.replaced))


class SampleModel(Protocol):
    """The current network in the uniform restorer call (what steps craft examples on)."""

    def __call__(self, y: Tensor, *, sigma: Tensor | None = None, kernel: Tensor | None = None) -> Tensor: ...


@dataclass
class PrepContext:
    """What a step may use: the seed, the global ids of the samples, and (in training) the model and loss.

    Attributes:
        seed: the run seed (training) or the validation seed.
        step: the optimisation step (0-based) or -1 during validation.
        sample_ids: `(N,)` global sample ids; all per-sample randomness derives from (seed, purpose, id).
        model: the current network in the uniform call (not DDP-wrapped), or None during validation.
        loss: the training loss, `(pred, target) -> (N,)`, or None during validation.
        training: False during validation (train_only steps are skipped there).
    """

    seed: int
    step: int
    sample_ids: Tensor
    model: SampleModel | None = None
    loss: Callable[[Tensor, Tensor], Tensor] | None = None
    training: bool = True

    def generators(self, purpose: str, device: torch.device | str = "cpu") -> list[torch.Generator]:
        """One generator per sample, seeded by (seed, purpose, sample id) only."""
        return [sample_generator(self.seed, purpose, int(i), device=device) for i in self.sample_ids]

    def uniform(self, purpose: str) -> Tensor:
        """One U[0,1) number per sample (float64, CPU), from the per-sample generators of `purpose`."""
        return torch.tensor([float(torch.rand((), generator=g, dtype=torch.float64))
                             for g in self.generators(purpose)], dtype=torch.float64)

    def subset(self, index: Tensor) -> PrepContext:
        """The context for the samples at `index`."""
        return replace(self, sample_ids=self.sample_ids[index])


def derive_seed(seed: int, purpose: str, *ids: int) -> int:
    """A 63-bit seed from (seed, purpose, ids...) via numpy's SeedSequence (stable across platforms and versions)."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(purpose.encode()), *[int(i) for i in ids]]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def sample_generator(seed: int, purpose: str, sample_id: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded by (seed, purpose, sample id)."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose, sample_id))
    return g


Step = Callable[[Batch, PrepContext], Batch]


@dataclass(frozen=True)
class StepInfo:
    """A registered batch-preparation step type."""

    name: str
    factory: Callable[..., Step]
    train_only: bool
    description: str


_STEPS: dict[str, StepInfo] = {}

# Noise samplers: (shape (C,H,W), sigma in [0,1] units, generator) -> one noise draw. Gaussian is built in; the
# defenses register the typical-set sampler here.
NoiseSampler = Callable[[tuple[int, ...], float, torch.Generator], Tensor]
_SAMPLERS: dict[str, NoiseSampler] = {}


def register_step(name: str, *, train_only: bool = False, description: str = ""
                  ) -> Callable[[Callable[..., Step]], Callable[..., Step]]:
    """Decorator registering a step factory (keyword-only options -> Step); train_only steps skip validation."""
    def deco(factory: Callable[..., Step]) -> Callable[..., Step]:
        if name in _STEPS:
            raise ValueError(f"batch step {name!r} is registered twice")
        doc = description or ((factory.__doc__ or "").strip().splitlines() or [""])[0]
        _STEPS[name] = StepInfo(name, factory, train_only, doc)
        return factory
    return deco


def register_noise_sampler(name: str) -> Callable[[NoiseSampler], NoiseSampler]:
    """Decorator registering a noise sampler usable as `{type: noise, sampler: NAME}`."""
    def deco(fn: NoiseSampler) -> NoiseSampler:
        if name in _SAMPLERS:
            raise ValueError(f"noise sampler {name!r} is registered twice")
        _SAMPLERS[name] = fn
        return fn
    return deco


def list_steps() -> dict[str, StepInfo]:
    """All registered step types."""
    return dict(_STEPS)


def list_noise_samplers() -> list[str]:
    """Names of the registered noise samplers."""
    return sorted(_SAMPLERS)


def select_samples(n: int, fraction: float, ctx: PrepContext | None = None, *, position: str = "first") -> Tensor:
    """A (n,) bool mask of the samples to replace: the first ⌊n·fraction⌋ (at least one when fraction > 0, as a
    batch of one is all-replaced in the FGSM recipe), or each sample independently with probability `fraction`."""
    if not 0.0 <= fraction <= 1.0:
        raise RobustirError(f"fraction: expected a value in [0, 1], got {fraction}")
    if position == "first":
        k = 0 if fraction == 0 else max(1, math.floor(n * fraction))
        return torch.arange(n) < k
    if position == "random":
        if ctx is None:
            raise RobustirError("select_samples(position='random') needs the PrepContext for its generators")
        return ctx.uniform("select") < fraction
    raise RobustirError(f"position: expected 'first' or 'random', got {position!r}")


def _build_step(spec: Mapping[str, Any], where: str) -> tuple[StepInfo, Step]:
    """Build one step from `{type: NAME, **options}`."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise RobustirError(f"{where}: expected a mapping with a 'type' key, got {spec!r}")
    opts = dict(spec)
    name = opts.pop("type")
    if name not in _STEPS:
        raise RobustirError(f"{where}: unknown batch step {name!r}; registered steps: {', '.join(sorted(_STEPS))}")
    info = _STEPS[name]
    import inspect

    params = inspect.signature(info.factory).parameters
    valid = [p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY]
    for key in opts:
        if key not in valid:
            raise RobustirError(f"{where}: unknown option {key!r} for batch step {name!r}; valid options: "
                                f"{', '.join(valid) or '(none)'}")
    try:
        return info, info.factory(**opts)
    except RobustirError as exc:
        raise RobustirError(f"{where} ({name}): {exc}") from None


@dataclass
class BatchPrep:
    """A chain of steps turning a clean batch (or a paired batch) into the training batch."""

    steps: list[Step] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __call__(self, clean: Tensor, ctx: PrepContext, *, inputs: Tensor | None = None) -> Batch:
        """Prepare a batch; `inputs` are given for paired data (otherwise the clean images are the start)."""
        batch = Batch(inputs=clean.clone() if inputs is None else inputs, targets=clean,
                      replaced=torch.zeros(clean.shape[0], dtype=torch.bool))
        for step in self.steps:
            batch = step(batch, ctx)
        return batch


def build_batch_prep(specs: Sequence[Mapping[str, Any]], *, for_eval: bool = False, where: str = "batch"
                     ) -> BatchPrep:
    """Build a BatchPrep from step specs; `for_eval` drops train_only steps (e.g. adversarial replacement)."""
    prep = BatchPrep()
    for i, spec in enumerate(specs):
        info, step = _build_step(spec, f"{where}[{i}]")
        if for_eval and info.train_only:
            continue
        prep.steps.append(step)
        prep.names.append(info.name)
    return prep


# ----------------------------------------------------------------------------------------------------------- noise

@register_noise_sampler("gaussian")
def gaussian_sampler(shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> Tensor:
    """i.i.d. N(0, sigma²) noise."""
    return torch.randn(shape, generator=generator) * sigma


def _parse_sigma(sigma: Any) -> tuple[str, list[float]]:
    """sigma as ('fixed', [s]), ('range', [lo, hi]) on the 0-255 scale."""
    if isinstance(sigma, (list, tuple)):
        vals = [parse_fraction(v, "sigma") for v in sigma]
        if len(vals) != 2 or vals[0] > vals[1] or vals[0] < 0:
            raise RobustirError(f"sigma: a range must be [low, high] with 0 <= low <= high (0-255 scale), got {sigma}")
        return "range", vals
    s = parse_fraction(sigma, "sigma")
    if s < 0:
        raise RobustirError(f"sigma: expected a non-negative noise level (0-255 scale), got {s}")
    return "fixed", [s]


@register_step("noise")
def noise_step(*, sigma: Any = 25, sampler: str = "gaussian", clip: bool = False, record_sigma: bool = True) -> Step:
    """Add noise per sample: sigma fixed or uniform in [low, high] (0-255 scale); no clipping by default (DnCNN)."""
    kind, vals = _parse_sigma(sigma)
    if sampler not in _SAMPLERS:
        raise RobustirError(f"sampler: unknown noise sampler {sampler!r}; registered: {', '.join(sorted(_SAMPLERS))}")
    draw = _SAMPLERS[sampler]

    def step(batch: Batch, ctx: PrepContext) -> Batch:
        if kind == "fixed":
            s255 = torch.full((batch.size,), vals[0], dtype=torch.float64)
        else:
            s255 = vals[0] + (vals[1] - vals[0]) * ctx.uniform("sigma")
        s = (s255 / 255.0).to(torch.float32)
        shape = tuple(batch.inputs.shape[1:])
        noise = torch.stack([draw(shape, float(si), g) for si, g in zip(s, ctx.generators("noise"))])
        y = batch.inputs + noise.to(batch.inputs.device, batch.inputs.dtype)
        if clip:
            y = y.clamp(0.0, 1.0)
        sig = s.to(batch.inputs.device) if record_sigma else batch.sigma
        return replace(batch, inputs=y, sigma=sig)

    return step


# ------------------------------------------------------------------------------------------------------------ blur

def _kernel_list(kernels: Any) -> list[Tensor] | None:
    """Fixed kernels from a name ('levin'), a file path, or None for random motion kernels."""
    if kernels in (None, "motion"):
        return None
    from robustir.degradations import load_kernels

    if kernels == "levin":
        from robustir.degradations import levin_kernels

        ks = levin_kernels()
    else:
        ks = load_kernels(str(kernels))
    return [torch.as_tensor(k, dtype=torch.float32) for k in ks]


def _center_pad(k: Tensor, size: int) -> Tensor:
    """Zero-pad a (kh, kw) kernel to (size, size), keeping its centre."""
    kh, kw = k.shape
    top, left = (size - kh) // 2, (size - kw) // 2
    return F.pad(k, (left, size - kw - left, top, size - kh - top))


@register_step("blur")
def blur_step(*, kernels: Any = "motion", size: int = 25, intensity: Any = (0.0, 1.0),
              boundary: str = "circular", record_kernel: bool = True) -> Step:
    """Blur each sample with a kernel: a random one of `kernels` ('levin' or a file) or a random motion kernel."""
    fixed = _kernel_list(kernels)
    lo, hi = (parse_fraction(v, "intensity") for v in intensity) if isinstance(intensity, (list, tuple)) else \
        (parse_fraction(intensity, "intensity"),) * 2

    def step(batch: Batch, ctx: PrepContext) -> Batch:
        from robustir.degradations import blur, motion_kernel

        ks = []
        for g, u in zip(ctx.generators("kernel"), ctx.uniform("kernel-choice")):
            if fixed is not None:
                ks.append(fixed[min(int(u * len(fixed)), len(fixed) - 1)])
            else:
                ks.append(torch.as_tensor(motion_kernel(size, intensity=lo + (hi - lo) * float(u), generator=g),
                                          dtype=torch.float32))
        kmax = max(max(k.shape) for k in ks)
        kmax += 1 - kmax % 2  # odd, so the kernel centre is a pixel
        kb = torch.stack([_center_pad(k, kmax) for k in ks]).unsqueeze(1).to(batch.inputs)
        y = blur(batch.inputs, kb, boundary=boundary)
        return replace(batch, inputs=y, kernel=kb if record_kernel else batch.kernel)

    return step


# ------------------------------------------------------------------------------------------------------------- mix

@register_step("mix")
def mix_step(*, choices: Sequence[Mapping[str, Any]]) -> Step:
    """Per sample, run one of several step lists, chosen with the given weights (mixed-noise / TS mixing).

    `choices: [{weight: 2, steps: [{type: noise, sigma: 25}]}, {weight: 1, steps: [{type: noise, sigma: 26}]}]`.
    """
    if not choices:
        raise RobustirError("choices: expected at least one {weight, steps} entry")
    weights, preps = [], []
    for i, ch in enumerate(choices):
        if not isinstance(ch, Mapping) or set(ch) - {"weight", "steps"} or "steps" not in ch:
            raise RobustirError(f"choices[{i}]: expected {{weight: W, steps: [...]}}, got {ch!r}")
        w = parse_fraction(ch.get("weight", 1), f"choices[{i}].weight")
        if w < 0:
            raise RobustirError(f"choices[{i}].weight: expected a non-negative weight, got {w}")
        weights.append(w)
        preps.append(build_batch_prep(ch["steps"], where=f"choices[{i}].steps"))
    total = sum(weights)
    if total <= 0:
        raise RobustirError(f"choices: the weights must not all be zero, got {weights}")
    edges = torch.tensor(np.cumsum(weights) / total, dtype=torch.float64)

    def step(batch: Batch, ctx: PrepContext) -> Batch:
        pick = torch.searchsorted(edges, ctx.uniform("mix"), right=True).clamp(max=len(preps) - 1)
        parts: list[tuple[Tensor, Batch]] = []
        for j, prep in enumerate(preps):
            idx = torch.nonzero(pick == j).flatten()
            if idx.numel() == 0:
                continue
            sub = batch.subset(idx)
            for s in prep.steps:
                sub = s(sub, ctx.subset(idx))
            parts.append((idx, sub))
        return _scatter(batch, parts)

    return step


def _scatter(batch: Batch, parts: list[tuple[Tensor, Batch]]) -> Batch:
    """Reassemble a batch from sub-batches at the given indices."""
    inputs = batch.inputs.clone()
    sigma = None if batch.sigma is None else batch.sigma.clone()
    replaced = batch.replaced.clone() if batch.replaced is not None else torch.zeros(batch.size, dtype=torch.bool)
    kernels: list[tuple[Tensor, Tensor]] = []
    for idx, sub in parts:
        inputs[idx.to(inputs.device)] = sub.inputs
        if sub.sigma is not None:
            if sigma is None:
                sigma = torch.zeros(batch.size, dtype=sub.sigma.dtype, device=sub.sigma.device)
            sigma[idx.to(sigma.device)] = sub.sigma
        if sub.replaced is not None:
            replaced[idx] = sub.replaced
        if sub.kernel is not None:
            kernels.append((idx, sub.kernel))
    kernel = batch.kernel
    if kernels:
        kmax = max(k.shape[-1] for _, k in kernels)
        kernel = torch.zeros(batch.size, 1, kmax, kmax, dtype=kernels[0][1].dtype, device=kernels[0][1].device)
        for idx, k in kernels:
            pad = (kmax - k.shape[-1]) // 2
            kernel[idx.to(kernel.device)] = F.pad(k, (pad, pad, pad, pad))
    return Batch(inputs, batch.targets, sigma, kernel, replaced)

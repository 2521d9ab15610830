"""The attack loop: one batched, allocation-light driver for every threat × objective × update combination.

Per step: one forward, one `torch.autograd.grad` with respect to the perturbed inputs only (parameters are frozen
once), an in-place update and an in-place projection against bounds precomputed from the clean input. Losses and the
best-so-far iterate stay on the device (`torch.where`); the only host synchronisations are the validation before the
loop and one finiteness check after it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from robustir.attacks.objectives import MSE, needs_random_start, reference_for
from robustir.attacks.speed import bf16_native, parse_amp_dtype
from robustir.attacks.threat import KernelSimplexBall, L2Ball, LinfBall, Masked, Projector, ZeroMean, check_mask
from robustir.attacks.updates import AdamStep, L2Step, SignStep
from robustir.checks import check_image, check_same_shape
from robustir.errors import RobustirError

ThreatT = LinfBall | L2Ball | Masked | ZeroMean | KernelSimplexBall
UpdateT = SignStep | L2Step | AdamStep
_START_KINDS = ("uniform", "normal")


@dataclass(frozen=True)
class CondThreat:
    """Perturb one conditioning input `cond[name]` (noise level, blur kernel), jointly with or instead of the image.

    Args:
        threat: e.g. `LinfBall(2/255, value_range=(0, None))` for a noise level, `KernelSimplexBall(1e-3)` for a kernel.
        update: its own step rule (kernel entries are ~1e-2, image entries ~1).
        random_start: False, True (the threat's default kind) or a kind name.
    """

    threat: ThreatT
    update: UpdateT
    _: KW_ONLY
    random_start: bool | str = False


@dataclass
class AttackResult:
    """What an attack returns (all tensors on the input's device).

    Attributes:
        x_adv: final adversarial input `(N, C, H, W)` (the last iterate).
        delta: `x_adv − x`.
        loss_history: `(steps, N)` objective value at each iterate the gradient was taken at.
        best_x_adv: per sample, the iterate with the worst objective for the model (max untargeted, min targeted),
            including the final one when `track_best=True`.
        best_loss: `(N,)` objective value of `best_x_adv` (NaN when `track_best=False`; best_x_adv is then x_adv).
        final_loss: `(N,)` objective at `x_adv` (None when `track_best=False`: it would cost one more forward).
        cond_adv: perturbed conditioning inputs (final iterate) by name; best_cond: the same at the best iterate.
    """

    x_adv: Tensor
    delta: Tensor
    loss_history: Tensor
    best_x_adv: Tensor
    best_loss: Tensor
    final_loss: Tensor | None = None
    cond_adv: dict[str, Tensor] = field(default_factory=dict)
    best_cond: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Var:
    name: str
    clean: Tensor
    adv: Tensor
    projector: Projector
    update: UpdateT
    state: Any
    best: Tensor


# ---------------------------------------------------------------------------------------------------------------------
# model handling: freeze once, restore exactly, optional checkpointing / channels_last / compile


@contextlib.contextmanager
def frozen_model(model: Callable[..., Tensor], *, eval_mode: bool = True, channels_last: bool = False,
                 checkpointing: bool = False) -> Iterator[None]:
    """Freeze parameters (and optionally switch to eval) for the attack; restore every flag afterwards."""
    if not isinstance(model, nn.Module):
        yield
        return
    params = list(model.parameters())
    grad_flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    patched: list[nn.Module] = []
    # networks with their own switch (NAFNet, Restormer) know their blocks best; others are patched generically
    own = [(m, m.checkpointing) for m in model.modules() if isinstance(getattr(m, "checkpointing", None), bool)]
    try:
        for p in params:
            p.requires_grad_(False)
        if eval_mode:
            model.eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if checkpointing and own:
            for m, _ in own:
                m.checkpointing = True
        elif checkpointing:
            patched = _install_checkpoints(model)
        yield
    finally:
        for m, flag in own:
            m.checkpointing = flag
        for m in patched:
            del m.forward
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        for m, mode in modes:
            m.training = mode
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)


def _checkpointed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn` under non-reentrant activation checkpointing when a gradient is being recorded."""
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    return checkpoint(fn, *args, use_reentrant=False, **kwargs)


def _segmented(seq: nn.Sequential, segments: int, inp: Tensor) -> Tensor:
    """A flat Sequential of layers, checkpointed in √n segments."""
    if not torch.is_grad_enabled():
        for layer in seq:
            inp = layer(inp)
        return inp
    return checkpoint_sequential(seq, segments, inp, use_reentrant=False)


def _install_checkpoints(model: nn.Module) -> list[nn.Module]:
    """Checkpoint every block of the model's containers (flat Sequentials of layers in √n segments).

    Blocks are the composite children of `nn.Sequential`/`nn.ModuleList` containers (NAFBlocks, residual blocks);
    a Sequential of plain layers (DnCNN's body) is cut into √n segments. Forwards are patched on the instances and
    removed again after the attack.
    """
    patched: list[nn.Module] = []

    def is_leaf(m: nn.Module) -> bool:
        return next(m.children(), None) is None

    def patch(m: nn.Module, fn: Callable[..., Any]) -> None:
        m.forward = fn  # type: ignore[method-assign]
        patched.append(m)

    def visit(container: nn.Module) -> None:
        kids = list(container.children())
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and kids:
            if all(is_leaf(k) for k in kids):
                if isinstance(container, nn.Sequential) and len(kids) >= 2:
                    segments = max(1, round(math.sqrt(len(kids))))
                    patch(container, functools.partial(_segmented, container, segments))
                return
            for k in kids:
                if isinstance(k, (nn.Sequential, nn.ModuleList)):
                    visit(k)
                elif not is_leaf(k):
                    patch(k, functools.partial(_checkpointed, k.forward))
            return
        for k in kids:
            visit(k)

    visit(model)
    if not patched:
        warnings.warn("checkpoint=True: found no Sequential/ModuleList blocks to checkpoint; running without",
                      UserWarning, stacklevel=3)
    return patched


_COMPILED: dict[tuple[int, str], Callable[..., Tensor]] = {}


def _compiled(model: Callable[..., Tensor], backend: str) -> Callable[..., Tensor]:
    """`torch.compile(model)` cached per model and backend."""
    key = (id(model), backend)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(model, backend=backend, dynamic=False)
    return _COMPILED[key]


# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """A threat model, an objective and an update rule driven for `steps` iterations.

    Call it as `attack(model, x, *, ref=None, target=None, mask=None, cond=None) -> AttackResult`; `model` is any
    callable `model(y, **cond) -> Tensor` (a `robustir.models.restorer`, a bare network, a function). `cond` holds the
    model's extra inputs (noise level, blur kernel), passed through unchanged unless `cond_threats` perturbs them.

    Args:
        threat: set the image perturbation ranges over, or None to attack only `cond_threats`.
        objective: `MSE`, `L1` or `CosPGD` (with `against=` and `targeted=`).
        update: `SignStep`, `L2Step` or `AdamStep`.
        steps: number of gradient steps (forward+backward passes).
        random_start: False, True (the threat's default: uniform in the ball) or "uniform"/"normal".
        generator: the only source of randomness: one generator, or one per sample (then a sample's random start does
            not depend on the batch it is run in); None uses a fresh generator seeded with 0 (deterministic).
        cond_threats: `{name: CondThreat}` for conditioning inputs to perturb.
        track_best: keep the per-sample best iterate (one extra forward without gradient scores the final iterate).
        eval_mode: run the model in eval mode during the attack (restored afterwards).
        checkpoint: activation checkpointing of the model's blocks (large images; trades compute for memory).
        amp_dtype: autocast dtype for the forward (torch.bfloat16 / torch.float16, or a name: 'bf16', 'fp16', 'none');
            loss and update stay float32. bf16 is 2x faster on CPUs with AVX512-BF16/AMX (benchmarks/attacks.py).
        channels_last: use the channels_last memory format for 4-D inputs and the model (convolutional nets on GPU).
        compile: False, True ("inductor") or a `torch.compile` backend name, for the model's forward.
    """

    threat: ThreatT | None
    objective: MSE
    update: UpdateT
    steps: int
    random_start: bool | str = True
    generator: torch.Generator | Sequence[torch.Generator] | None = None
    _: KW_ONLY
    cond_threats: Mapping[str, CondThreat] = field(default_factory=dict)
    track_best: bool = True
    eval_mode: bool = True
    checkpoint: bool = False
    amp_dtype: torch.dtype | str | None = None
    channels_last: bool = False
    compile: bool | str = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise RobustirError(f"Attack: steps must be an integer >= 1, got {self.steps!r}")
        if self.threat is None and not self.cond_threats:
            raise RobustirError("Attack: give a threat for the image, cond_threats, or both")
        if not isinstance(self.objective, MSE):
            raise RobustirError(f"Attack: objective must be MSE, L1 or CosPGD, got {type(self.objective).__name__}")
        if not isinstance(self.update, (SignStep, L2Step, AdamStep)):
            raise RobustirError(f"Attack: update must be SignStep, L2Step or AdamStep, got {type(self.update).__name__}")
        if self.threat is not None:
            _start_kind(self.random_start, self.threat)
        if self.threat is not None and needs_random_start(self.objective) and not self.random_start:
            raise RobustirError("Attack: the untargeted objective against the model's own clean output has a zero "
                                "gradient at δ = 0 (METHODS.md §3.1); set random_start=True")
        # names as written in YAML files and on the command line ('bf16', 'fp16', 'none') become dtypes
        object.__setattr__(self, "amp_dtype", parse_amp_dtype(self.amp_dtype, "Attack: amp_dtype"))

    # -----------------------------------------------------------------------------------------------------------------

    def __call__(self, model: Callable[..., Tensor], x: Tensor, *, ref: Tensor | None = None,
                 target: Tensor | None = None, mask: Tensor | None = None,
                 cond: Mapping[str, Any] | None = None) -> AttackResult:
        """Run the attack on a batch `x` `(N, C, H, W)`; see the class docstring."""
        value_range = getattr(self.threat, "value_range", None) if self.threat is not None else None
        lo, hi = value_range if value_range is not None else (None, None)
        check_image(x, "x", value_range=None)
        if lo is not None or hi is not None:
            mn, mx = float(x.min()), float(x.max())
            if (lo is not None and mn < lo) or (hi is not None and mx > hi):
                raise RobustirError(f"x: values must lie in the threat's value_range {value_range}, got min {mn:.4g}, "
                                    f"max {mx:.4g} (noisy observations: use value_range=None)")
        x = x.detach()
        for name, t in (("ref", ref), ("target", target)):
            if t is not None:
                check_image(t, name, value_range=None)
                check_same_shape(t, x, name, "x")
        if mask is not None:
            if self.threat is None:
                raise RobustirError("mask: given, but this attack perturbs no image (threat=None)")
            mask = check_mask(mask, x)
        cond = dict(cond or {})
        unknown = set(self.cond_threats) - set(cond)
        if unknown:
            raise RobustirError(f"cond_threats name {sorted(unknown)} but cond= has only {sorted(cond)}")

        gen = self.generator if self.generator is not None else torch.Generator(device="cpu").manual_seed(0)
        n = x.shape[0]
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        forward = self._forward_fn(model)

        with frozen_model(model, eval_mode=self.eval_mode, channels_last=self.channels_last,
                          checkpointing=self.checkpoint):
            clean_out = None
            if self.objective.against == "clean_output":
                with torch.no_grad():
                    clean_out = forward(x, cond).detach()
            ref_t = reference_for(self.objective, ref=ref, target=target, clean_output=clean_out).to(x.dtype)
            variables = self._variables(x, mask, cond, gen)
            history = torch.empty(self.steps, n, device=x.device, dtype=torch.float32)
            best_score = torch.full((n,), -math.inf, device=x.device, dtype=torch.float32)
            sign = -1.0 if self.objective.targeted else 1.0

            for t in range(self.steps):
                for v in variables:
                    v.adv.requires_grad_(True)
                out = forward(self._inputs(x, variables), self._cond(cond, variables))
                if t == 0:
                    _check_output(out, ref_t)
                loss = self.objective(out.float(), ref_t)
                score = loss * sign if sign < 0 else loss
                grads = torch.autograd.grad(score.sum(), [v.adv for v in variables])
                for v in variables:
                    v.adv.requires_grad_(False)
                history[t] = loss.detach()
                if self.track_best:
                    _update_best(score.detach(), best_score, variables)
                for v, g in zip(variables, grads):
                    v.projector.mask_grad_(g)
                    v.update.step_(v.adv, g, v.state, t)
                    v.projector.project_(v.adv)
                    if isinstance(v.update, AdamStep):
                        AdamStep.sync_(v.adv, v.state)

            final_loss = None
            if self.track_best:
                with torch.no_grad():
                    out = forward(self._inputs(x, variables), self._cond(cond, variables))
                    final_loss = self.objective(out.float(), ref_t)
                _update_best(final_loss * sign, best_score, variables)

        _check_finite(history, final_loss)
        by_name = {v.name: v for v in variables}
        img = by_name.get("input")
        x_adv = img.adv if img is not None else x
        best_x = img.best if (img is not None and self.track_best) else x_adv
        fmt = torch.contiguous_format
        best_loss = best_score * sign if self.track_best else torch.full_like(best_score, math.nan)
        return AttackResult(
            x_adv=x_adv.contiguous(memory_format=fmt), delta=(x_adv - x).contiguous(memory_format=fmt),
            loss_history=history, best_x_adv=best_x.contiguous(memory_format=fmt), best_loss=best_loss,
            final_loss=final_loss,
            cond_adv={v.name: v.adv for v in variables if v.name != "input"},
            best_cond={v.name: (v.best if self.track_best else v.adv) for v in variables if v.name != "input"})

    # -----------------------------------------------------------------------------------------------------------------

    def _forward_fn(self, model: Callable[..., Tensor]) -> Callable[[Tensor, dict[str, Any]], Tensor]:
        """model(y, **cond) with the configured autocast / compile."""
        call = model
        if self.compile:
            backend = "inductor" if self.compile is True else str(self.compile)
            call = _compiled(model, backend)
        amp = self.amp_dtype
        if amp is torch.bfloat16:
            _warn_emulated_bf16(model)

        def forward(y: Tensor, cond: dict[str, Any]) -> Tensor:
            if amp is None:
                return call(y, **cond)
            with torch.autocast(device_type=y.device.type, dtype=amp):
                return call(y, **cond)

        return forward

    def _variables(self, x: Tensor, mask: Tensor | None, cond: dict[str, Any],
                   gen: torch.Generator | Sequence[torch.Generator]) -> list[_Var]:
        """The perturbed tensors: the image (name 'input') and any attacked conditioning inputs."""
        out: list[_Var] = []
        specs: list[tuple[str, Tensor, ThreatT, UpdateT, bool | str, Tensor | None]] = []
        if self.threat is not None:
            specs.append(("input", x, self.threat, self.update, self.random_start, mask))
        for name, ct in self.cond_threats.items():
            specs.append((name, _cond_tensor(cond[name], x, name), ct.threat, ct.update, ct.random_start, None))
        for name, clean, threat, update, start, m in specs:
            projector = threat.prepare(clean, m)
            kind = _start_kind(start, threat)
            adv = projector.start(kind, gen) if kind else clean.clone()
            state = update.init(adv, clean)
            out.append(_Var(name, clean, adv, projector, update, state, adv.clone()))
        return out

    @staticmethod
    def _inputs(x: Tensor, variables: list[_Var]) -> Tensor:
        for v in variables:
            if v.name == "input":
                return v.adv
        return x

    @staticmethod
    def _cond(cond: dict[str, Any], variables: list[_Var]) -> dict[str, Any]:
        if len(variables) == 1 and variables[0].name == "input":
            return cond
        merged = dict(cond)
        for v in variables:
            if v.name != "input":
                merged[v.name] = v.adv
        return merged


def _warn_emulated_bf16(model: Callable[..., Tensor]) -> None:
    """Warn once per device when bf16 autocast would run on emulated (slower than float32) kernels."""
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    device = next(params, torch.empty(0)).device
    if device.type not in _WARNED_BF16 and not bf16_native(device):
        _WARNED_BF16.add(device.type)
        warnings.warn(f"amp_dtype=bfloat16 on {device.type}: this device has no native bf16 kernels, so the attack "
                      f"will run slower than in float32", stacklevel=3)


_WARNED_BF16: set[str] = set()


def _start_kind(random_start: bool | str, threat: Any) -> str | None:
    """Resolve `random_start` to a kind name or None; one clear error for unknown values."""
    if random_start is False or random_start is None:
        return None
    if random_start is True:
        return str(threat.default_start)
    if isinstance(random_start, str) and random_start in _START_KINDS:
        return random_start
    raise RobustirError(f"random_start must be True, False or one of {_START_KINDS}, got {random_start!r}")


def _cond_tensor(value: Any, x: Tensor, name: str) -> Tensor:
    """A conditioning input as a float tensor with a leading batch dimension (a float becomes `(N,)`)."""
    n = x.shape[0]
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device).detach()
    if t.ndim == 0:
        return t.reshape(1).expand(n).clone()
    if t.ndim == 2:  # one (kh, kw) kernel for the whole batch
        return t.reshape(1, 1, *t.shape).expand(n, 1, *t.shape).clone()
    if t.shape[0] == 1 and n > 1:
        return t.expand(n, *t.shape[1:]).clone()
    if t.shape[0] != n:
        raise RobustirError(f"cond[{name!r}]: expected a leading batch dimension of {n}, got shape {tuple(t.shape)}")
    return t.clone()


def _check_output(out: Any, ref: Tensor) -> None:
    """The model must return a tensor shaped like the reference (checked once, at step 0: metadata only)."""
    if not isinstance(out, Tensor):
        raise RobustirError(f"model: step 0 returned {type(out).__name__}, expected a Tensor shaped {tuple(ref.shape)}")
    if tuple(out.shape) != tuple(ref.shape):
        raise RobustirError(f"model: step 0 returned shape {tuple(out.shape)}, expected {tuple(ref.shape)} "
                            f"(the reference's shape)")


def _update_best(score: Tensor, best_score: Tensor, variables: list[_Var]) -> None:
    """Keep, per sample, the iterate with the highest score (on device, no synchronisation)."""
    improved = score > best_score
    torch.where(improved, score, best_score, out=best_score)
    for v in variables:
        cond = improved.reshape((-1,) + (1,) * (v.adv.ndim - 1))
        torch.where(cond, v.adv, v.best, out=v.best)


def _check_finite(history: Tensor, final_loss: Tensor | None) -> None:
    """One host synchronisation after the loop: name the first step whose objective was NaN/inf."""
    bad = ~torch.isfinite(history)
    if bool(bad.any()):
        step = int(bad.any(dim=1).nonzero()[0, 0])
        samples = bad[step].nonzero().flatten().tolist()
        raise RobustirError(f"model output or objective became non-finite at step {step} (samples {samples}); "
                            f"check the model and the inputs")
    if final_loss is not None and not bool(torch.isfinite(final_loss).all()):
        raise RobustirError(f"model output became non-finite after the last step ({history.shape[0]})")

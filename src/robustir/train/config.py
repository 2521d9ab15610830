"""Training configuration: small dataclasses loaded from YAML, with one clear error per unknown or malformed key.

A config file has the sections below (every key optional except `model` and `data.train`):

```yaml
model: {type: DnCNN, in_nc: 1, out_nc: 1, nc: 32, nb: 10}   # any spec robustir.models.build accepts
data:  {train: train400, channels: 1, patch_size: 40, batch_size: 64, scales: [1, 0.9, 0.8, 0.7]}
batch: [{type: noise, sigma: 25}]                             # the batch-preparation steps (robustir.train.batch)
loss:  {type: L2}                                             # L1 | L2 | PSNR | Charbonnier
optim: {type: Adam, lr: 1.0e-3}
schedule: {type: multistep, milestones: [3000], gamma: 0.2}
train: {steps: 6000, seed: 0, out: runs/dncnn, ckpt_every: 200}
val:   {dataset: set12, every: 1000, sigma: 25}
```

A file may start from another one with `base: other.yaml` (relative to the file; chains allowed, cycles refused):
its sections are merged key by key into the base's (so `train: {steps: 30000, out: runs/x}` keeps the base's seed
and amp), except `model` and `batch`, which replace the base's whole (a spec or a pipeline is one thing).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustir.errors import RobustirError


@dataclass
class Stage:
    """One phase of a progressive-patch schedule (Restormer): `iters` steps with this patch and batch size."""

    iters: int
    patch_size: int
    batch_size: int


@dataclass
class DataConfig:
    """Training data: a dataset name or folder (`resolve_dataset`), or paired folders for deblurring.

    Attributes:
        train: dataset name (train400, bsds500-train, ...) or folder of clean images; ignored when `paired` is set.
        paired: a paired folder (GoPro layout or flat input/target, `robustir.data.PairedFolder`); inputs come from it.
        channels: 1 (gray) or 3 (RGB); images are converted on load.
        patch_size / batch_size: crop size and per-step batch (global, summed over processes).
        stages: progressive patches; overrides patch_size/batch_size while active (the last stage lasts to the end).
        scales: images are also resized by these factors before cropping (DnCNN uses 1, 0.9, 0.8, 0.7).
        augment: random flips/rotations (the 8 dihedral transforms).
        limit: use only the first `limit` images (smoke runs).
        in_memory: load every image once up front (small sets); false reads files per sample (GoPro-sized sets).
        workers: DataLoader worker processes preparing the next steps' patches (0 = in the training process).
    """

    train: str | None = None
    paired: str | None = None
    channels: int = 1
    patch_size: int = 40
    batch_size: int = 16
    stages: list[Stage] = field(default_factory=list)
    scales: list[float] = field(default_factory=lambda: [1.0])
    augment: bool = True
    limit: int | None = None
    in_memory: bool = True
    workers: int = 0


@dataclass
class LossConfig:
    """Pixel loss: type L1 | L2 | PSNR | Charbonnier, a weight, and Charbonnier's eps.

    `outputs: all` supervises every output of a multi-output network (MPRNet's stages and DWDN's two scales, as their
    official recipes do; RGDN's unrolled steps), each against the target at its scale, weighted by
    `output_weights` (in the network's output order; default 1 each); `final` scores the restorer's output only.
    """

    type: str = "L1"
    weight: float = 1.0
    eps: float = 1e-3
    outputs: str = "final"
    output_weights: list[float] | None = None


@dataclass
class OptimConfig:
    """Optimizer: Adam or AdamW."""

    type: str = "Adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, a pure function of the step (so resuming needs nothing but the step).

    Attributes:
        type: constant | cosine | multistep.
        warmup: linear warm-up steps from 0.
        eta_min: cosine floor (one period covering the whole run when `periods` is empty).
        periods / eta_mins / restart_weights: BasicSR's CosineAnnealingRestartCyclicLR (Restormer: periods
            [92000, 208000], eta_mins [3e-4, 1e-6]).
        milestones / gamma: multistep decay.
    """

    type: str = "constant"
    warmup: int = 0
    eta_min: float = 0.0
    periods: list[int] = field(default_factory=list)
    eta_mins: list[float] = field(default_factory=list)
    restart_weights: list[float] = field(default_factory=list)
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class RunConfig:
    """Run control.

    Attributes:
        steps: total optimisation steps. seed: everything random derives from (seed, step, sample).
        out: output folder (checkpoint, model weights, config copy, log).
        grad_clip: max gradient norm (0 = off). ema: EMA decay (0 = off; BasicSR uses 0.999).
        ckpt_every / log_every: in steps. channels_last: auto | on | off.
        amp: auto | off | bf16 | fp16. auto: bf16 (else fp16) on CUDA, off on CPU; bf16 on CPU pays only where the
            CPU has native bf16 kernels (AVX512-BF16/AMX; a warning says when it is emulated).
        device: auto | cpu | cuda.
        init: start from these weights instead of a random initialisation (fine-tuning): a file path, `shipped:NAME`
            or `data:REL`, anything `robustir.models.load_weights` reads, loaded strictly; ignored on resume, where
            the run's own checkpoint holds the weights.
        grow: with `init`, the model may be a deeper network of the same width (more NAFNet-family or Restormer
            blocks per stage): the init weights fill the blocks they have, the added blocks start as identities
            (their beta/gamma or project_out zeroed), so step 0 computes the init network's function
            (`robustir.models.grow.load_grown`).
        transplant: with `init`, `{from: SPEC, batches: K}`: `init` holds weights of the Baseline `SPEC` (SE
            attention) and the model is its Intermediate (attention `sca`, any activation): every other tensor is
            copied, each block's simplified attention is fitted by least squares to the Baseline's SE outputs on the
            first K training batches (`robustir.models.transplant`), then training fine-tunes.
    """

    steps: int = 1000
    seed: int = 0
    out: str = "runs/train"
    grad_clip: float = 0.0
    ema: float = 0.0
    ckpt_every: int = 500
    log_every: int = 50
    amp: str = "auto"
    channels_last: str = "auto"
    device: str = "auto"
    init: str | None = None
    grow: bool = False
    transplant: dict[str, Any] | None = None


@dataclass
class ValConfig:
    """Validation every `every` steps on `dataset` (0 = only at the end; None dataset = no validation).

    Attributes:
        prep: batch-preparation steps for validation; default: the training steps that are not `train_only`.
        crop: center-crop validation images to this size (0 = full images). limit: first N images.
        seed: seed of the validation degradations (fixed, so every validation sees the same inputs).
        quantize: round outputs to 8 bit before the metrics (the DnCNN convention).
    """

    dataset: str | None = None
    every: int = 0
    prep: list[dict[str, Any]] | None = None
    crop: int = 0
    limit: int | None = None
    seed: int = 0
    quantize: bool = True


@dataclass
class TrainConfig:
    """A whole training run."""

    model: dict[str, Any]
    data: DataConfig
    batch: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "noise", "sigma": 25}])
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: RunConfig = field(default_factory=RunConfig)
    val: ValConfig = field(default_factory=ValConfig)


_CHOICES = {
    "loss.type": ("L1", "L2", "PSNR", "Charbonnier"),
    "loss.outputs": ("final", "all"),
    "optim.type": ("Adam", "AdamW"),
    "schedule.type": ("constant", "cosine", "multistep"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
    "train.channels_last": ("auto", "on", "off"),
    "train.device": ("auto", "cpu", "cuda"),
}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value against a type annotation; raise naming the key path."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except RobustirError as exc:
                errors.append(str(exc))
        raise RobustirError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RobustirError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RobustirError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RobustirError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise RobustirError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise RobustirError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            from robustir.checks import parse_fraction

            return parse_fraction(value, where)
        raise RobustirError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise RobustirError(f"{where}: expected a string, got {value!r}")
        return value
    raise RobustirError(f"{where}: unsupported value {value!r}")


def _from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and listing the valid ones."""
    if not isinstance(raw, Mapping):
        raise RobustirError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        prefix = f"{where}." if where else ""
        raise RobustirError(f"unknown config key {prefix}{unknown[0]!s}; valid keys{' in ' + where if where else ''}: "
                            f"{', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], path)
            if path in _CHOICES and kwargs[name] not in _CHOICES[path]:
                raise RobustirError(f"{path}: expected one of {', '.join(_CHOICES[path])}, got {raw[name]!r}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RobustirError(f"config is missing the required key {path}")
    return cls(**kwargs)


def _validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks that the type conversion cannot express."""
    d = cfg.data
    if d.train is None and d.paired is None:
        raise RobustirError("data.train: give a dataset name or folder (or data.paired for paired folders)")
    if d.channels not in (1, 3):
        raise RobustirError(f"data.channels: expected 1 or 3, got {d.channels}")
    for name in ("patch_size", "batch_size"):
        if getattr(d, name) < 1:
            raise RobustirError(f"data.{name}: expected a positive integer, got {getattr(d, name)}")
    for i, s in enumerate(d.stages):
        if min(s.iters, s.patch_size, s.batch_size) < 1:
            raise RobustirError(f"data.stages[{i}]: iters, patch_size and batch_size must be positive, got {s}")
    if d.workers < 0:
        raise RobustirError(f"data.workers: expected a non-negative integer, got {d.workers}")
    if not d.scales or any(s <= 0 or s > 1 for s in d.scales):
        raise RobustirError(f"data.scales: expected factors in (0, 1], got {d.scales}")
    if "type" not in cfg.model and "net_type" not in cfg.model:
        raise RobustirError(f"model: the spec needs a 'type' key (e.g. DnCNN), got {cfg.model}")
    if not cfg.batch and d.paired is None:
        raise RobustirError("batch: expected at least one batch-preparation step, e.g. [{type: noise, sigma: 25}] "
                            "(only paired data may train on its inputs as they are)")
    for i, step in enumerate(cfg.batch):
        if not isinstance(step, Mapping) or "type" not in step:
            raise RobustirError(f"batch[{i}]: expected a mapping with a 'type' key, got {step!r}")
    if cfg.train.steps < 1:
        raise RobustirError(f"train.steps: expected a positive integer, got {cfg.train.steps}")
    if not 0.0 <= cfg.train.ema < 1.0:
        raise RobustirError(f"train.ema: expected a decay in [0, 1), got {cfg.train.ema}")
    if cfg.train.ckpt_every < 1 or cfg.train.log_every < 1:
        raise RobustirError("train.ckpt_every and train.log_every must be positive")
    if cfg.train.grow and cfg.train.init is None:
        raise RobustirError("train.grow: grows the train.init weights into a deeper model; give train.init")
    tp = cfg.train.transplant
    if tp is not None:
        if cfg.train.init is None:
            raise RobustirError("train.transplant: transplants the train.init weights; give train.init")
        if cfg.train.grow:
            raise RobustirError("train.transplant and train.grow: choose one way to start from train.init")
        if not isinstance(tp, Mapping) or set(tp) - {"from", "batches"} or not isinstance(tp.get("from"), Mapping) \
                or "type" not in tp["from"]:
            raise RobustirError(f"train.transplant: expected {{from: <the init weights' model spec with a type>, "
                                f"batches: <calibration batches>}}, got {tp!r}")
        batches = tp.get("batches", 16)
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise RobustirError(f"train.transplant.batches: expected a positive integer, got {batches!r}")
    if cfg.loss.output_weights is not None:
        if cfg.loss.outputs != "all":
            raise RobustirError("loss.output_weights: only with loss.outputs: all")
        if not cfg.loss.output_weights or any(w < 0 for w in cfg.loss.output_weights) \
                or not any(w > 0 for w in cfg.loss.output_weights):
            raise RobustirError(f"loss.output_weights: expected non-negative weights, not all zero, got "
                                f"{cfg.loss.output_weights}")
    if cfg.train.amp == "fp16" and cfg.train.device == "cpu":
        raise RobustirError("train.amp: fp16 needs CUDA (its loss scaling is CUDA-only); use bf16 on CPU")
    if cfg.optim.lr <= 0 or len(cfg.optim.betas) != 2:
        raise RobustirError(f"optim: expected lr > 0 and two betas, got lr={cfg.optim.lr}, betas={cfg.optim.betas}")
    sc = cfg.schedule
    if sc.periods and len(sc.eta_mins) not in (0, len(sc.periods)):
        raise RobustirError(f"schedule.eta_mins: expected {len(sc.periods)} values (one per period), got {sc.eta_mins}")
    if sc.periods and len(sc.restart_weights) not in (0, len(sc.periods)):
        raise RobustirError(f"schedule.restart_weights: expected {len(sc.periods)} values, got {sc.restart_weights}")
    if sc.milestones != sorted(sc.milestones):
        raise RobustirError(f"schedule.milestones: expected increasing steps, got {sc.milestones}")
    return cfg


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a nested dict (as read from YAML)."""
    return _validate(_from_dict(TrainConfig, raw, ""))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts/lists (round-trips through `config_from_dict`)."""
    return dataclasses.asdict(cfg)


_WHOLE_SECTIONS = ("model", "batch")


def _merge_base(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """`own` over `base`: mapping sections merged key by key, `model`/`batch` and non-mappings replaced whole."""
    out = dict(base)
    for key, value in own.items():
        if key not in _WHOLE_SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _read_config_file(p: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's top-level mapping with its `base:` chain merged in."""
    import yaml

    if not p.is_file():
        where = f" (the base of {chain[-1]})" if chain else ""
        raise RobustirError(f"config file not found: {p}{where}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RobustirError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RobustirError(f"config file {p}: expected a mapping at top level, got {type(raw).__name__}")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise RobustirError(f"config file {p}: base must be the path of another config file, got {base!r}")
    base_path = (p.parent / base).resolve()
    here = (*chain, p.resolve())
    if base_path in here:
        raise RobustirError(f"config file {p}: base {base!r} makes a cycle: "
                            + " -> ".join(str(c) for c in (*here, base_path)))
    return _merge_base(_read_config_file(base_path, here), raw)


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config file (and its `base:` chain), apply dotted-key overrides (`{"train.steps": 10}`), validate."""
    p = Path(path)
    raw = _read_config_file(p)
    for key, value in (overrides or {}).items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RobustirError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    try:
        return config_from_dict(raw)
    except RobustirError as exc:
        raise RobustirError(f"{p}: {exc}") from None


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML text (what is saved beside the checkpoint)."""
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)

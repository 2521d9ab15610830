"""The supervised training loop: any registered restorer, a dataset, a pluggable batch preparation, resumable.

Everything random derives from (seed, step, sample id): the data order, crops, flips and noise (see `sampling` and
`batch`), and the global torch RNG is re-seeded from (seed, step, rank) before each step (dropout and the like). With
the learning rate a pure function of the step, the optimizer/EMA state restored from the checkpoint and the RNG states
restored too, a run killed at any moment and resumed with `--resume` ends with bit-identical weights on CPU.

Files in `train.out`: `config.yaml` (the resolved config), `last.safetensors` (the resumable checkpoint, BasicSR
`params`/`params_ema` key prefixes), `model.safetensors` (plain final weights — the EMA ones when EMA is on —
loadable with `robustir.models.load_weights`), `model.json` (spec, steps, validation metrics, wall time) and
`log.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustir.data.outputs import first_missing
from robustir.errors import RobustirError
from robustir.models.probe import channel_keys, channel_mismatch
from robustir.models.registry import build, get_model_info
from robustir.models.restorer import Restorer
from robustir.train.batch import BatchPrep, PrepContext, build_batch_prep, derive_seed
from robustir.train.checkpoint import load_checkpoint, restore_rng, save_checkpoint, save_weights, write_json
from robustir.train.config import TrainConfig, config_to_dict, dump_config
from robustir.train.distributed import DistInfo, barrier, init_distributed, mean_over_ranks, shutdown, wrap_model
from robustir.train.ema import ModelEMA
from robustir.train.losses import build_loss, multi_output_loss
from robustir.train.sampling import (FileSource, ImageSource, MemorySource, PatchSampler, StepBatches, load_images,
                                     stage_at)
from robustir.train.schedule import lr_at

# Config fields that may change between a run and its resumption (they do not affect the trained weights).
_RESUME_MUTABLE = {("train", "steps"), ("train", "ckpt_every"), ("train", "log_every"), ("train", "out"),
                   ("train", "device"), ("val",), ("data", "in_memory"), ("data", "workers")}


@dataclass
class TrainingData:
    """Data for a run: in-memory clean targets (+ aligned inputs for pairs) or a lazy `source`, and val images."""

    targets: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] | None = None
    val: list[Tensor] = field(default_factory=list)
    source: ImageSource | None = None


@dataclass
class TrainResult:
    """What a finished run returns."""

    out: Path
    steps: int
    val: dict[str, float]
    wall_time_s: float
    weights: dict[str, Tensor]


def build_restorer(spec: dict[str, Any]) -> Restorer:
    """The network of `spec` in the uniform call, in training mode."""
    net = build(spec)
    info = get_model_info(net.robustir_type)  # type: ignore[attr-defined]
    return Restorer(net, info.call, name=info.name).train()


def _warn_tracked_instance_norms(model: nn.Module) -> None:
    """Warn when validation (eval mode) will normalise with statistics the training steps never use."""
    tracked = [name for name, m in model.named_modules()
               if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.track_running_stats
               and not getattr(m, "per_image", False)]
    if tracked:
        # training normalises each image by its own statistics; eval mode swaps in the running average, which
        # under-scored a DeblurGANv2 generator by up to 1.8 dB here
        warnings.warn(f"model: {len(tracked)} instance norms track running statistics ({tracked[0]}, ...): training "
                      f"normalises each image by its own, validation in eval mode by the running average, so "
                      f"validation scores another network than the one trained (DeblurGANv2: set norm_stats: "
                      f"instance in the model spec)", RuntimeWarning, stacklevel=3)


def load_training_data(cfg: TrainConfig, data_root: str | None = None) -> TrainingData:
    """Load (or, with `data.in_memory: false`, index) the training images and load the validation images."""
    d = cfg.data
    if d.paired is not None:
        from robustir.data import PairedFolder

        folder = PairedFolder(d.paired, channels=d.channels)
        n = len(folder) if d.limit is None else min(d.limit, len(folder))
        if d.in_memory:
            items = [folder[i] for i in range(n)]
            data = TrainingData(targets=[it["target"] for it in items], inputs=[it["input"] for it in items])
        else:
            pairs = folder.pairs[:n]
            data = TrainingData(source=FileSource([t for _, t in pairs], d.channels, inputs=[i for i, _ in pairs]))
    elif d.in_memory:
        data = TrainingData(targets=load_images(str(d.train), d.channels, limit=d.limit, root=data_root))
    else:
        from robustir.data import resolve_dataset

        paths = resolve_dataset(str(d.train), data_root)[: d.limit]
        data = TrainingData(source=FileSource(paths, d.channels))
    if cfg.val.dataset is not None:
        data.val = load_images(cfg.val.dataset, d.channels, limit=cfg.val.limit, root=data_root)
    return data


def _center_crop(x: Tensor, size: int) -> Tensor:
    """Center crop of a (C,H,W) image to at most size×size."""
    if size <= 0:
        return x
    h, w = x.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[:, top:top + size, left:left + size]


@torch.no_grad()
def evaluate_images(model: nn.Module, images: Sequence[Tensor], prep: BatchPrep, *, seed: int = 0,
                    quantize: bool = True, crop: int = 0, device: torch.device | str = "cpu"
                    ) -> list[dict[str, float]]:
    """PSNR/SSIM per image of `model` (uniform call) on `images` degraded by `prep`; image i's randomness is seeded
    by (seed, i), so a score never depends on which other images are evaluated with it."""
    from robustir.metrics import psnr, ssim

    was_training = model.training
    model.eval()
    rows = []
    try:
        for i, img in enumerate(images):
            clean = _center_crop(img, crop)[None].to(device)
            ctx = PrepContext(seed=seed, step=-1, sample_ids=torch.tensor([i]), training=False)
            batch = prep(clean, ctx)
            out = model(batch.inputs, sigma=batch.sigma, kernel=batch.kernel).float().clamp(0.0, 1.0)
            if quantize:
                out = torch.round(out * 255.0) / 255.0
            rows.append({"psnr": float(psnr(out, clean)[0]), "ssim": float(ssim(out, clean)[0])})
    finally:
        model.train(was_training)
    return rows


def evaluate(model: nn.Module, images: Sequence[Tensor], prep: BatchPrep, *, seed: int = 0, quantize: bool = True,
             crop: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean PSNR/SSIM of `model` over `images` degraded by `prep` (see `evaluate_images`)."""
    rows = evaluate_images(model, images, prep, seed=seed, quantize=quantize, crop=crop, device=device)
    n = max(len(rows), 1)
    return {"psnr": sum(r["psnr"] for r in rows) / n, "ssim": sum(r["ssim"] for r in rows) / n}


def _amp_context(cfg: TrainConfig, device: torch.device) -> tuple[Any, torch.amp.GradScaler | None]:
    """Autocast context factory and grad scaler: CUDA bf16 (else fp16) under auto; CPU bf16 only when asked."""
    mode = cfg.train.amp
    if mode == "off" or (device.type != "cuda" and mode == "auto"):
        return contextlib.nullcontext, None
    if device.type != "cuda":
        if mode == "fp16":
            raise RobustirError(f"train.amp: fp16 needs CUDA (its loss scaling is CUDA-only); on {device.type} use "
                                f"bf16 or off")
        from robustir.attacks.speed import bf16_native

        if not bf16_native(device):
            warnings.warn(f"train.amp: bf16 on this {device.type} is emulated (no native bf16 kernels) and will "
                          f"train slower than float32", RuntimeWarning, stacklevel=3)
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None
    use_bf16 = mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if use_bf16 else torch.float16
    scaler = None if use_bf16 else torch.amp.GradScaler("cuda")
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """channels_last memory format: on by default on CUDA only."""
    return cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")


def _section_defaults() -> dict[str, dict[str, Any]]:
    """Default values of every config section (a key added after a checkpoint was written resumes at its default)."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            if dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
    return out


def _check_resume_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made with a different model/data/recipe."""
    diffs = []
    defaults = _section_defaults()
    for section, values in current.items():
        if (section,) in _RESUME_MUTABLE:
            continue
        old = saved.get(section)
        if isinstance(values, dict) and isinstance(old, dict):
            old = {**defaults.get(section, {}), **old}
            for key, value in values.items():
                if (section, key) not in _RESUME_MUTABLE and old.get(key) != value:
                    diffs.append(f"{section}.{key}: {old.get(key)!r} -> {value!r}")
        elif old != values:
            diffs.append(f"{section}: {old!r} -> {values!r}")
    if diffs:
        raise RobustirError("cannot resume: the config differs from the checkpoint's in " + "; ".join(diffs))


def _trim_log(path: Path, through_step: int) -> None:
    """Keep the log rows of steps up to `through_step` (the resumed checkpoint); drop later and cut-short lines."""
    from robustir.data.atomic import atomic_write_text

    text = path.read_text(encoding="utf-8", errors="replace")
    kept = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # a kill cut the last line short
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
        # rows after the checkpoint were logged by the killed run and are logged again by this one
        if step <= through_step:
            kept.append(line)
    if len(kept) != len(text.splitlines()):
        atomic_write_text(path, "".join(kept))


def _make_optimizer(cfg: TrainConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or AdamW from the config."""
    o = cfg.optim
    cls = torch.optim.AdamW if o.type == "AdamW" else torch.optim.Adam
    return cls([p for p in params if p.requires_grad], lr=o.lr, betas=(o.betas[0], o.betas[1]),
               weight_decay=o.weight_decay, eps=o.eps)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar (stderr) or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, leave=True)


def train(cfg: TrainConfig, *, resume: bool = False, data: TrainingData | None = None, data_root: str | None = None,
          progress: bool = True) -> TrainResult:
    """Run (or resume) a training run described by `cfg`; see the module docstring for the files written."""
    dist_info = init_distributed(cfg.train.device)
    out = Path(cfg.train.out)
    before = _OutputState.capture(out) if dist_info.is_main else None
    try:
        result = _train(cfg, dist_info, resume=resume, data=data, data_root=data_root, progress=progress)
        barrier(dist_info)  # on success only: a Gloo peer tearing down first can abort the others at exit
        return result
    except BaseException:
        if before is not None:
            before.restore_unless_checkpointed()
        raise
    finally:
        shutdown(dist_info)


@dataclass
class _OutputState:
    """What `train.out` held before a run, so that a run failing before its first checkpoint leaves no stub."""

    out: Path
    created_from: Path | None  # the top-most folder of `out` that did not exist (removed whole on failure)
    had_checkpoint: bool
    texts: dict[str, bytes | None]  # config.yaml / log.jsonl as they were (None: absent)

    @classmethod
    def capture(cls, out: Path) -> _OutputState:
        """Record the state of `out` before the run touches it."""
        missing = first_missing(out)
        had_checkpoint = (out / "last.safetensors").exists()
        # with a checkpoint nothing is ever undone, so a long run's log is not read for nothing
        texts = {} if had_checkpoint else {name: (out / name).read_bytes() if (out / name).is_file() else None
                                           for name in ("config.yaml", "log.jsonl")}
        return cls(out, missing, had_checkpoint, texts)

    def restore_unless_checkpointed(self) -> None:
        """Undo the run's writes when it saved no checkpoint: without one there is nothing to resume, and a
        folder holding only config.yaml looks like a run that exists. Pre-existing files are kept as they were."""
        if self.had_checkpoint or (self.out / "last.safetensors").exists():
            return
        if self.created_from is not None:
            shutil.rmtree(self.created_from, ignore_errors=True)
            return
        for name, text in self.texts.items():
            path = self.out / name
            if text is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != text:
                path.write_bytes(text)


def _check_model_channels(model: Restorer, cfg: TrainConfig, data: TrainingData, device: torch.device) -> None:
    """Refuse, before anything is written, a model that cannot take the training images' channel count."""
    # images handed to `train` in memory need not follow data.channels; files are converted to it on load
    first = (data.inputs or data.targets or [None])[0]
    c = int(first.shape[0]) if first is not None else cfg.data.channels
    if c not in (1, 3):
        return
    other = channel_mismatch(model, c, size=stage_at(0, cfg.data).patch_size, device=device)
    if other is None:  # it runs, or fails for another reason, which the first step reports
        return
    keys = [k for k in channel_keys(cfg.model) if cfg.model[k] == other]
    where = ", ".join(f"model.{k}: {other}" for k in keys) if keys else "its default input channels"
    fix = f"model.{keys[0]}: {c}" if keys else f"the model's input-channel key to {c}"
    if c == cfg.data.channels:
        raise RobustirError(f"data.channels is {c} but the model ({model.name}) takes {other}-channel images "
                            f"({where}): set data.channels: {other} or {fix}")
    raise RobustirError(f"the training images have {c} channel(s) but the model ({model.name}) takes {other}-channel "
                        f"images ({where}): give {other}-channel images or set {fix}")


def _train(cfg: TrainConfig, di: DistInfo, *, resume: bool, data: TrainingData | None, data_root: str | None,
           progress: bool) -> TrainResult:
    out = Path(cfg.train.out)
    ckpt_path = out / "last.safetensors"
    if ckpt_path.exists() and not resume:
        raise RobustirError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another train.out")
    device = di.device
    seed = cfg.train.seed

    if data is None:
        data = load_training_data(cfg, data_root)
    source = data.source if data.source is not None else MemorySource(data.targets, data.inputs)
    sampler = PatchSampler(source, seed=seed, scales=cfg.data.scales, augment=cfg.data.augment)
    for st in cfg.data.stages or []:
        sampler.check_patch(st.patch_size)
    if not cfg.data.stages:
        sampler.check_patch(cfg.data.patch_size)

    torch.manual_seed(derive_seed(seed, "init", 0))  # the initial weights depend on the seed only
    model = build_restorer(cfg.model).to(device)
    _check_model_channels(model, cfg, data, device)  # before train.out is created: a mismatch would fail at step 0
    _warn_tracked_instance_norms(model)
    channels_last = _use_channels_last(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    resuming = resume and ckpt_path.exists()
    # on resume the run's own checkpoint holds the weights; the init file need not exist any more
    init_info = _init_weights(model, cfg, sampler, device) if cfg.train.init is not None and not resuming else None
    optimizer = _make_optimizer(cfg, model.parameters())
    ema = ModelEMA(model, decay=cfg.train.ema) if cfg.train.ema > 0 else None
    loss_fn = build_loss(cfg.loss.type, weight=cfg.loss.weight, eps=cfg.loss.eps)
    supervise_all = cfg.loss.outputs == "all"
    prep = build_batch_prep(cfg.batch)
    val_prep = build_batch_prep(cfg.val.prep if cfg.val.prep is not None else cfg.batch, for_eval=True,
                                where="val.prep")
    autocast, scaler = _amp_context(cfg, device)

    start, wall_before, history = 0, 0.0, {}
    cfg_dict = config_to_dict(cfg)
    if resuming:
        ck = load_checkpoint(ckpt_path)
        _check_resume_compatible(ck["state"]["config"], cfg_dict)
        model.net.load_state_dict(ck["params"], strict=True)
        if ema is not None:
            if ck["params_ema"] is None:
                raise RobustirError(f"{ckpt_path} has no params_ema but train.ema is on")
            ema.module.net.load_state_dict(ck["params_ema"], strict=True)
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and "scaler" in ck["state"]:
            scaler.load_state_dict(ck["state"]["scaler"])
        restore_rng(ck["rng_tensors"], ck["rng"])
        start = int(ck["state"]["step"])
        wall_before = float(ck["state"].get("wall_time_s", 0.0))
        history = ck["state"].get("val", {})
        init_info = ck["state"].get("init")

    ddp_model = wrap_model(model, di)
    if di.is_main:
        out.mkdir(parents=True, exist_ok=True)
        from robustir.data.atomic import atomic_write_text

        atomic_write_text(out / "config.yaml", dump_config(cfg))
    total = cfg.train.steps
    bar = _progress(total, start, progress and di.is_main)
    log_file = out / "log.jsonl"
    if di.is_main and log_file.is_file():
        _trim_log(log_file, start)
    t0 = time.perf_counter()
    t_last, samples_since = t0, 0
    last_val: dict[str, float] = history.get("last", {}) if isinstance(history, dict) else {}

    def save(step_done: int) -> None:
        if not di.is_main:
            return
        state = {"step": step_done, "config": cfg_dict, "wall_time_s": wall_before + time.perf_counter() - t0,
                 "val": {"last": last_val}, "world_size": di.world_size}
        if init_info is not None:
            state["init"] = init_info
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        save_checkpoint(ckpt_path, params=model.net.state_dict(),
                        params_ema=ema.module.net.state_dict() if ema is not None else None,
                        optimizer=optimizer.state_dict(), state=state)

    steps = StepBatches(sampler, cfg.data, start=start, total=total, rank=di.rank, world_size=di.world_size)
    loader = torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False, num_workers=cfg.data.workers,
                                         pin_memory=device.type == "cuda")
    for step, (clean, lq, ids, patch) in enumerate(loader, start=start):
        plan = stage_at(step, cfg.data)
        assert patch == plan.patch_size
        torch.manual_seed(derive_seed(seed, "step", step, di.rank))
        clean = clean.to(device)
        lq = lq.to(device) if lq is not None else None
        ctx = PrepContext(seed=seed, step=step, sample_ids=ids, model=model, loss=loss_fn)
        batch = prep(clean, ctx, inputs=lq)
        inputs, targets = batch.inputs, batch.targets
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)

        lr = lr_at(step, base_lr=cfg.optim.lr, schedule=cfg.schedule, total_steps=total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            pred = ddp_model(inputs, sigma=batch.sigma, kernel=batch.kernel, all_outputs=supervise_all)
        if supervise_all:
            per_sample = multi_output_loss(loss_fn, pred, targets, cfg.loss.output_weights)
            pred = model.final(pred)
        else:
            per_sample = loss_fn(pred.float(), targets.float())
        loss = per_sample.mean()
        if not bool(torch.isfinite(loss)):
            raise RobustirError(f"training diverged at step {step}: loss is {float(loss.detach())} (lower optim.lr, "
                                f"set train.grad_clip, or check the data)")
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model)
        done = step + 1
        samples_since += plan.batch_size

        if done % cfg.train.log_every == 0 or done == total:
            with torch.no_grad():
                mse = (pred.detach().float().clamp(0, 1) - targets).square().flatten(1).mean(1)
                batch_psnr = float(mean_over_ranks((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean(), di))
                loss_avg = float(mean_over_ranks(loss.detach(), di))
            now = time.perf_counter()
            rate = samples_since / max(now - t_last, 1e-9)
            t_last, samples_since = now, 0
            if bar is not None:
                bar.set_postfix(loss=f"{loss_avg:.4g}", psnr=f"{batch_psnr:.2f}", img_s=f"{rate:.0f}", lr=f"{lr:.2e}",
                                refresh=False)
            if di.is_main:
                row = {"step": done, "loss": loss_avg, "psnr": batch_psnr, "lr": lr, "samples_per_s": rate,
                       "patch": plan.patch_size, "batch": plan.batch_size}
                with open(log_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
        if bar is not None:
            bar.update(1)

        want_val = data.val and ((cfg.val.every and done % cfg.val.every == 0) or done == total)
        if want_val and di.is_main:
            eval_model = ema.module if ema is not None else model
            last_val = evaluate(eval_model, data.val, val_prep, seed=cfg.val.seed, quantize=cfg.val.quantize,
                                crop=cfg.val.crop, device=device)
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": done, "val": last_val}) + "\n")
            if bar is not None:
                bar.write(f"step {done}: val PSNR {last_val['psnr']:.2f} dB, SSIM {last_val['ssim']:.4f}")
        if done % cfg.train.ckpt_every == 0 or done == total:
            save(done)
        barrier(di)
    if bar is not None:
        bar.close()

    final = ema.module.net.state_dict() if ema is not None else model.net.state_dict()
    wall = wall_before + time.perf_counter() - t0
    if di.is_main:
        if start >= total and not ckpt_path.exists():
            save(total)
        save_weights(out / "model.safetensors", final, metadata={"spec": json.dumps(cfg.model), "step": str(total),
                                                                 "weights": "ema" if ema else "params"})
        write_json(out / "model.json", {"spec": cfg.model, "steps": total, "weights": "ema" if ema else "params",
                                        "val": last_val, "wall_time_s": wall, "config": cfg_dict,
                                        **({"init": init_info} if init_info is not None else {})})
    barrier(di)
    return TrainResult(out=out, steps=total, val=last_val, wall_time_s=wall, weights=final)


def _init_weights(model: Restorer, cfg: TrainConfig, sampler: PatchSampler, device: torch.device) -> dict[str, Any]:
    """Load `train.init` into `model.net` (strictly, growing it, or transplanting a Baseline); return its record."""
    from robustir.experiments.execute import file_sha256, resolve_weights
    from robustir.models import load_weights
    from robustir.models.grow import load_grown

    assert cfg.train.init is not None
    path = resolve_weights(cfg.train.init)
    assert path is not None
    info: dict[str, Any] = {"ref": cfg.train.init, "path": str(path), "sha256": file_sha256(path)}
    if cfg.train.transplant is not None:
        info["transplant"] = _transplant(model, cfg, path, sampler, device)
    elif cfg.train.grow:
        info["grown"] = load_grown(model.net, path)
    else:
        load_weights(model.net, path, strict=True)
    return info


def _transplant(model: Restorer, cfg: TrainConfig, path: Path, sampler: PatchSampler, device: torch.device
                ) -> dict[str, Any]:
    """Transplant the Baseline weights at `path` into `model`, calibrated on the run's first training batches."""
    from robustir.models import load_weights
    from robustir.models.transplant import transplant_se_to_sca

    tp = cfg.train.transplant
    assert tp is not None
    source = build_restorer(dict(tp["from"]))
    load_weights(source.net, path, strict=True)
    prep = build_batch_prep(cfg.batch, for_eval=True)
    n = int(tp.get("batches", 16))
    steps = StepBatches(sampler, cfg.data, start=0, total=n)

    def calibration() -> Iterator[Tensor]:
        for i in range(n):
            clean, lq, ids, _ = steps[i]
            ctx = PrepContext(seed=cfg.train.seed, step=i, sample_ids=ids, training=False)
            yield prep(clean.to(device), ctx, inputs=lq.to(device) if lq is not None else None).inputs

    report = transplant_se_to_sca(model, source.to(device), calibration())
    return {"from": dict(tp["from"]), **report.as_dict()}


def lr_curve(cfg: TrainConfig) -> list[float]:
    """The learning rate at every step of `cfg` (for plots and checks)."""
    return [lr_at(s, base_lr=cfg.optim.lr, schedule=cfg.schedule, total_steps=cfg.train.steps)
            for s in range(cfg.train.steps)]


"""Executing batches of jobs: loading models and data once per process, attacking, scoring, rendering artifacts.

Pure with respect to storage: `run_batch` returns results and artifact bytes; the driver decides what to write.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from robustir.errors import RobustirError
from robustir.experiments.db import JobResult
from robustir.experiments.jobs import Item, Job, derive_seed, expand_jobs
from robustir.experiments.spec import DataEntry, Experiment, ModelEntry
from robustir.models.probe import channel_keys, channel_mismatch, run_once


@dataclass
class BatchOutput:
    """One finished job: its database rows and its artifact files (relative path -> bytes)."""

    result: JobResult
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Context:
    """Everything a process needs to execute jobs of one experiment (models loaded once, by the preflight)."""

    exp: Experiment
    device: torch.device
    items: dict[str, list[Item]]
    jobs: list[Job]
    fingerprints: dict[str, str]
    config_snapshot: dict[str, Any]
    _images: dict[str, list[Tensor]] = field(default_factory=dict)
    _inputs: dict[str, list[Tensor] | None] = field(default_factory=dict)
    _kernels: dict[str, list[Tensor] | None] = field(default_factory=dict)
    _models: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device (error if CUDA is asked for but absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobustirError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks and cached per (path, size, mtime)."""
    st = Path(path).stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime)


def resolve_weights(weights: str | None) -> Path | None:
    """A weights reference -> file path: a path, `data:REL` (under the data root) or `shipped:NAME`."""
    if weights is None:
        return None
    if weights.startswith("data:"):
        from robustir.data import data_root

        path = data_root() / weights[len("data:"):]
    elif weights.startswith("shipped:"):
        from robustir.train.shipped import shipped_path

        path = shipped_path(weights[len("shipped:"):])
    else:
        path = Path(weights)
    if not path.is_file():
        raise RobustirError(f"weights file not found: {path} (from {weights!r})")
    return path


def model_fingerprint(entry: ModelEntry) -> str:
    """Hash of a model's spec, weights checksum and noise level (part of every job key)."""
    path = resolve_weights(entry.weights)
    digest = None
    if path is not None:
        digest = file_sha256(path)
    payload = repr((entry.spec if isinstance(entry.spec, str) else sorted(dict(entry.spec).items()), digest,
                    entry.sigma))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_model(entry: ModelEntry, device: torch.device) -> Any:
    """Build, load and wrap a model in the uniform restorer call, frozen in eval mode on `device`."""
    from robustir.models import build, restorer

    path = resolve_weights(entry.weights)
    net = build(entry.spec)
    if path is not None:
        from robustir.models.weights import load_weights

        load_weights(net, path)
    model = restorer(net).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if model.needs_sigma and entry.sigma is None:
        raise RobustirError(f"models.{entry.id}: {model.name} is a non-blind denoiser; give it `sigma:` (0-255)")
    return model


def _to_channels(x: Tensor, channels: int | None) -> Tensor:
    """Convert (C,H,W) between gray and RGB (ITU-R BT.601 luma for RGB -> gray)."""
    if channels is None or x.shape[0] == channels:
        return x
    if channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)
        return (x[:3] * w).sum(0, keepdim=True)
    return x[:1].expand(3, -1, -1).clone()


def preprocess(x: Tensor, data: DataEntry, *, source: str | os.PathLike | None = None) -> Tensor:
    """Channels, resize (shorter side, antialiased bicubic) and centre crop, as the dataset entry says."""
    x = _to_channels(x, data.channels)
    if data.resize is not None:
        h, w = x.shape[-2:]
        scale = data.resize / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    if data.crop is not None:
        h, w = x.shape[-2:]
        if h < data.crop or w < data.crop:
            where = "an image" if source is None else f"image {os.fspath(source)}"
            raise RobustirError(f"data.{data.id}.crop: crop {data.crop} is larger than {where} of size {h}x{w} "
                                f"(HxW)")
        top, left = (h - data.crop) // 2, (w - data.crop) // 2
        x = x[:, top:top + data.crop, left:left + data.crop]
    return x.contiguous()


def _load_kernels(spec: str | None, seed: int) -> list[Tensor] | None:
    """Kernel spec -> list of (kh, kw) kernels: levin[:i,j], kernels12[:i], motion:COUNT:SIZE, or a file/folder."""
    if spec is None:
        return None
    from robustir.degradations import levin_kernels, load_kernels, motion_kernel

    name, _, sel = spec.partition(":")
    if name == "levin":
        ks = levin_kernels()
    elif name == "kernels12":
        from robustir.data import data_root

        ks = load_kernels(data_root() / "kernels" / "kernels_12.mat")
    elif name == "motion":
        count, _, size = sel.partition(":")
        g = torch.Generator().manual_seed(derive_seed(seed, "motion-kernels"))
        return [motion_kernel(int(size or 25), intensity=0.5, generator=g) for _ in range(int(count or 1))]
    else:
        path = Path(spec)
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".npy", ".mat")) if path.is_dir() \
            else [path]
        ks = [k for f in files for k in load_kernels(f)]
        sel = ""
    if sel and sel != "all":
        try:
            idx = [int(s) - 1 for s in sel.split(",")]
            ks = [ks[i] for i in idx]
        except (ValueError, IndexError):
            raise RobustirError(f"kernel selection {spec!r}: expected 1-based indices up to {len(ks)}") from None
    return ks


def load_dataset_images(data: DataEntry) -> list[tuple[str, Tensor, Tensor | None]]:
    """The dataset's (name, clean (C,H,W), degraded input or None), preprocessed, in a stable order, up to `limit`.

    Synthetic datasets give None for the input (degraded on the fly); paired datasets (GoPro layout or
    input/target folders) give their real degraded input, preprocessed exactly like its target.
    """
    return [(name, x, y) for name, _, x, y in _load_dataset(data)]


def _load_dataset(data: DataEntry) -> list[tuple[str, str, Tensor, Tensor | None]]:
    """`load_dataset_images` plus each item's source file (the target of a pair), so errors can name the file."""
    from robustir.data import PairedFolder, load_image, resolve_dataset

    if data.paired:
        pairs = PairedFolder(data.source, split=data.split)
        items = list(zip(pairs.names, pairs.pairs))[:data.limit]
        return [(Path(name).with_suffix("").as_posix(), str(tgt), preprocess(load_image(tgt), data, source=tgt),
                 preprocess(load_image(inp), data, source=inp)) for name, (inp, tgt) in items]
    paths = resolve_dataset(data.source)
    if data.limit is not None:
        paths = paths[:data.limit]
    if not paths:
        raise RobustirError(f"data.{data.id}: no images found in {data.source!r}")
    return [(Path(p).stem, str(p), preprocess(load_image(p), data, source=p), None) for p in paths]


def prepare(exp: Experiment) -> Context:
    """Load data descriptors, fingerprint models, and expand the job list (models are loaded lazily)."""
    device = resolve_device(exp.device)
    fingerprints = {m.id: model_fingerprint(m) for m in exp.models}
    items: dict[str, list[Item]] = {}
    images: dict[str, list[Tensor]] = {}
    inputs: dict[str, list[Tensor] | None] = {}
    kernels: dict[str, list[Tensor] | None] = {}
    files: dict[str, list[str]] = {}
    for data in exp.data:
        imgs = _load_dataset(data)
        ks = _load_kernels(data.degradation.kernels, exp.seed)
        images[data.id] = [x for _, _, x, _ in imgs]
        inputs[data.id] = [y for _, _, _, y in imgs] if data.paired else None
        kernels[data.id] = ks
        files[data.id] = [f for _, f, _, _ in imgs]
        items[data.id] = [
            Item(data.id, i, name, j, tuple(x.shape), None if ks is None else tuple(ks[j].shape))
            for i, (name, _, x, _) in enumerate(imgs) for j in ([None] if ks is None else range(len(ks)))
        ]
    jobs = expand_jobs(exp, items, fingerprints, target_of=cyclic_target)
    models = _preflight(exp, device, images, kernels, files)
    snapshot = {"name": exp.name, "fingerprint": exp.fingerprint(), "seed": exp.seed, "paper": exp.paper,
                "description": exp.description,
                "models": {m.id: {"spec": m.spec, "weights": m.weights, "sigma": m.sigma, "label": m.label or m.id,
                                  "paper_label": m.paper_label or m.label or m.id,
                                  "fingerprint": fingerprints[m.id]} for m in exp.models},
                "data": {d.id: {"source": d.source, "label": d.label or d.id, "items": len(items[d.id]),
                                "paper_label": d.paper_label or d.label or d.id,
                                "noise_sigma": d.degradation.noise_sigma, "kernels": d.degradation.kernels}
                         for d in exp.data},
                "attacks": {a.id: {"preset": a.preset, "params": dict(a.params), "target": a.target,
                                   "label": a.label or a.id, "paper_label": a.paper_label or a.label or a.id}
                            for a in exp.attacks},
                "transfer": [{"source": t.source, "targets": list(t.targets)} for t in exp.transfer],
                "metrics": list(exp.metrics), "quantize": exp.quantize, "jobs": len(jobs)}
    ctx = Context(exp, device, items, jobs, fingerprints, snapshot)
    ctx._images, ctx._inputs, ctx._kernels, ctx._models = images, inputs, kernels, models
    return ctx


def _evaluated_on(exp: Experiment, model_id: str, data_id: str) -> bool:
    """Whether a model sees a dataset: it runs on it, or it is a transfer target of a source that does."""
    models = {m.id: m for m in exp.models}
    if models[model_id].runs_on(data_id) and models[model_id].craft:
        return True
    return any(model_id in t.targets and models[t.source].runs_on(data_id) for t in exp.transfer)


def _name_files(files: Sequence[str], limit: int = 5) -> str:
    """A short list of file names for an error message (the first `limit`, then how many more)."""
    shown = ", ".join(files[:limit])
    return shown if len(files) <= limit else f"{shown} and {len(files) - limit} more"


def _preflight(exp: Experiment, device: torch.device, images: dict[str, list[Tensor]],
               kernels: dict[str, list[Tensor] | None], files: dict[str, list[str]]) -> dict[str, Any]:
    """Load every model and fail early, naming model, dataset and files, when a model cannot take a dataset's images
    (channels, size, missing sigma/kernel) or a metric cannot score them; returns the loaded models."""
    metric_fns = _metric_fns()
    models: dict[str, Any] = {}
    for model_entry in exp.models:
        model = models[model_entry.id] = load_model(model_entry, device)
        for data in exp.data:
            if not _evaluated_on(exp, model_entry.id, data.id):
                continue
            ks = kernels[data.id]
            # the model is tried on a crop (cheap on large images); the kernel must fit it twice over
            size = 64 if ks is None else max(64, 2 * max(ks[0].shape))
            cond: dict[str, Any] = {}
            if model.needs_sigma:
                cond["sigma"] = float(model_entry.sigma) / 255.0
            if model.needs_kernel:
                if ks is None:
                    raise RobustirError(f"models.{model_entry.id} is a non-blind deblurrer but data.{data.id} has no "
                                        f"kernels (set degradation.kernels)")
                cond["kernel"] = ks[0].to(device)
            imgs, names = images[data.id], files[data.id]
            # Folders may mix gray and RGB images and sizes, and a job fails on its own image only after earlier jobs
            # were recorded; so every channel count and every (cropped) size the dataset holds is tried here once.
            groups: dict[tuple[int, int, int], list[int]] = {}
            for i, x in enumerate(imgs):
                groups.setdefault((x.shape[0], min(x.shape[1], size), min(x.shape[2], size)), []).append(i)
            for channels in dict.fromkeys(c for c, _, _ in groups):
                other = channel_mismatch(model, channels, size=size, device=device, cond=cond)
                if other is None:  # it runs, or fails for another reason, which the size check below names
                    continue
                with_channels = [names[i] for k in groups if k[0] == channels for i in groups[k]]
                # only a spec written out names keys the user can change; a preset's are not the user's
                spec = model_entry.spec if isinstance(model_entry.spec, dict) else {}
                keys = [f"{k}: {other}" for k in channel_keys(spec) if spec[k] == other]
                hint = "" if data.channels is not None else \
                    f"; set data.{data.id}.channels: {other} to convert every image to the channels the model takes"
                raise RobustirError(f"models.{model_entry.id} cannot restore data.{data.id} (images with {channels} "
                                    f"channel(s): {_name_files(with_channels)}): {model.name} takes {other}-channel "
                                    f"images{' (' + ', '.join(keys) + ')' if keys else ''}{hint}")
            for key, members in groups.items():
                x = imgs[members[0]]
                h, w = x.shape[-2:]
                try:
                    out = run_once(model, x[None, :, :size, :size].to(device), **cond)
                except RobustirError as exc:
                    raise RobustirError(f"models.{model_entry.id} cannot restore data.{data.id} (image(s) of "
                                        f"{h}x{w} (HxW): {_name_files([names[i] for i in members])}): "
                                        f"{exc}") from None
                ref = x[None, :, :size, :size].to(device)
                for name in exp.metrics:
                    try:
                        metric_fns[name](out.clamp(0, 1), ref)
                    except RobustirError as exc:
                        raise RobustirError(f"data.{data.id}: metrics: {name} cannot score image(s) of {h}x{w} "
                                            f"(HxW): {_name_files([names[i] for i in members])}: {exc}") from None
    return models


def cyclic_target(item: Item, items: Sequence[Item]) -> int:
    """Index of the target for a targeted attack: the next image of the same dataset with the same kernel/shape."""
    same = [i for i, it in enumerate(items) if it.kernel_index == item.kernel_index and it.shape == item.shape]
    pos = next(k for k, i in enumerate(same) if items[i] == item)
    return same[(pos + 1) % len(same)]


def observation(ctx: Context, item: Item) -> tuple[Tensor, Tensor, Tensor | None]:
    """(clean x, degraded y, kernel) for an item; the noise derives from the experiment seed and the item only."""
    from robustir.data.degrade import blur_then_noise

    deg = next(d for d in ctx.exp.data if d.id == item.dataset).degradation
    x = ctx._images[item.dataset][item.image_index][None]
    paired = ctx._inputs.get(item.dataset)
    if paired is not None:  # a real degraded input (GoPro-style pairs)
        return x, paired[item.image_index][None], None
    kernel = None if item.kernel_index is None else ctx._kernels[item.dataset][item.kernel_index]
    g = torch.Generator().manual_seed(derive_seed(ctx.exp.seed, "noise", item.dataset, item.name))
    y = blur_then_noise(x, kernel, deg.noise_sigma, generator=g, boundary=deg.boundary, clip=deg.clip)
    return x, y, kernel


def _model(ctx: Context, model_id: str) -> Any:
    if model_id not in ctx._models:
        entry = next(m for m in ctx.exp.models if m.id == model_id)
        ctx._models[model_id] = load_model(entry, ctx.device)
    return ctx._models[model_id]


def _cond(ctx: Context, model_id: str, kernels: Tensor | None) -> dict[str, Any]:
    """The model's extra inputs: noise level for non-blind denoisers, kernels for non-blind deblurrers."""
    model = _model(ctx, model_id)
    entry = next(m for m in ctx.exp.models if m.id == model_id)
    cond: dict[str, Any] = {}
    if model.needs_sigma:
        cond["sigma"] = float(entry.sigma) / 255.0
    if model.needs_kernel:
        if kernels is None:
            raise RobustirError(f"models.{model_id} is a non-blind deblurrer but its dataset has no kernels")
        cond["kernel"] = kernels
    return cond


def _png(x: Tensor) -> bytes:
    """PNG bytes of a (C,H,W) image in [0,1] (8 bit)."""
    arr = (x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy())
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _metric_fns() -> dict[str, Any]:
    """The per-image metric functions by the names experiments use (spec.VALID_METRICS)."""
    from robustir import metrics as M

    return {"psnr": M.psnr, "ssim": M.ssim, "mae": M.mae, "ncc": M.ncc}


def _scores(ctx: Context, out: Tensor, ref: Tensor) -> dict[str, Tensor]:
    out = out.clamp(0, 1)
    if ctx.exp.quantize:
        out = out.mul(255).round().div(255)
    fns = _metric_fns()
    return {name: fns[name](out, ref) for name in ctx.exp.metrics}


def run_batch(ctx: Context, jobs: Sequence[Job]) -> list[BatchOutput]:
    """Attack one batch of compatible jobs and score them on every evaluation model."""
    from robustir.attacks import preset

    t0 = time.perf_counter()
    exp = ctx.exp
    first = jobs[0]
    attack_entry = next(a for a in exp.attacks if a.id == first.attack)
    obs = [observation(ctx, j.item) for j in jobs]
    x = torch.cat([o[0] for o in obs]).to(ctx.device)
    y = torch.cat([o[1] for o in obs]).to(ctx.device)
    kernels = None
    if obs[0][2] is not None:
        kernels = torch.stack([o[2] for o in obs])[:, None].to(ctx.device)
    target = None
    if attack_entry.target is not None:
        images = ctx._images[first.item.dataset]
        target = torch.stack([images[ctx.items[first.item.dataset][j.target_index].image_index]
                              for j in jobs]).to(ctx.device)
    model = _model(ctx, first.model)
    cond = _cond(ctx, first.model, kernels)
    params = {k: v for k, v in first.params.items() if k != "eps"}
    if "eps" in first.params:
        params["eps"] = torch.tensor([float(j.params["eps"]) for j in jobs], device=ctx.device)
    generators = [torch.Generator(device="cpu").manual_seed(j.seed) for j in jobs]
    attack = preset(attack_entry.preset, generator=generators, **params)
    with torch.no_grad():
        clean_out = model(y, **cond)
    result = attack(model, y, ref=x, target=target, cond=cond)
    y_adv = result.x_adv.detach()
    attack_seconds = time.perf_counter() - t0
    per_eval: dict[str, tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor] | None,
                              dict[str, Tensor] | None]] = {}
    restored: dict[str, tuple[Tensor, Tensor]] = {}
    with torch.no_grad():
        for mid in first.eval_models:
            m = _model(ctx, mid)
            c = _cond(ctx, mid, kernels)
            clean_o = clean_out if mid == first.model else m(y, **c)
            adv_o = m(y_adv, **c)
            restored[mid] = (clean_o, adv_o)
            tgt_scores = None if target is None else (_scores(ctx, clean_o, target), _scores(ctx, adv_o, target))
            per_eval[mid] = (_scores(ctx, clean_o, x), _scores(ctx, adv_o, x),
                             *(tgt_scores or (None, None)))
    seconds = (time.perf_counter() - t0) / len(jobs)
    history = result.loss_history.detach().float().cpu()
    outputs = []
    for n, job in enumerate(jobs):
        rows = []
        for mid, (sc, sa, tc, ta) in per_eval.items():
            for name in exp.metrics:
                rows.append((mid, name, float(sc[name][n]), float(sa[name][n])))
                if tc is not None:
                    rows.append((mid, f"{name}@target", float(tc[name][n]), float(ta[name][n])))
        files: dict[str, bytes] = {}
        artifacts: dict[str, str] = {}
        if job.item.image_index < exp.save_artifacts:
            base = f"artifacts/{job.key}"
            delta = (y_adv[n] - y[n]).cpu()
            eps = float(job.params.get("eps", delta.abs().max().item() or 1.0))
            clean_o, adv_o = restored[first.model]
            pngs = {"input": y[n], "adversarial": y_adv[n], "restored_clean": clean_o[n],
                    "restored_adversarial": adv_o[n], "perturbation": 0.5 + delta / (2 * max(eps, 1e-12)),
                    "reference": x[n]}
            for name, img in pngs.items():
                files[f"{base}/{name}.png"] = _png(img.cpu())
                artifacts[name] = f"{base}/{name}.png"
            files[f"{base}/tensors.safetensors"] = safetensors_bytes(
                {"y": y[n].cpu().contiguous(), "y_adv": y_adv[n].cpu().contiguous(), "x": x[n].cpu().contiguous()})
            artifacts["tensors"] = f"{base}/tensors.safetensors"
        res = JobResult(job.key, job.model, job.item.dataset, job.item.name, job.attack, dict(job.params), job.seed,
                        seconds, rows, history[:, n].tolist(), artifacts)
        res.attack_seconds = attack_seconds / len(jobs)  # type: ignore[attr-defined]
        outputs.append(BatchOutput(res, files))
    return outputs

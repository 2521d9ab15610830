"""Deblurring checkpoints: the held-out evaluation set, the Wiener baseline, and shipping a run as checkpoint + card.

The held-out set is the one every shipped deblurring card reports: the first `n_images` CBSD68 images (disjoint from
the BSDS400 training images), centre-cropped to `crop`², each blurred circularly with each of the 8 Levin et al.
kernels and given white Gaussian noise of `sigma`/255 (seeded per (image, kernel), not clipped). Metrics are the mean
PSNR/SSIM over all (image, kernel) pairs on 8-bit-quantised outputs, plus the mean PSNR per kernel.

The baseline is the registered classical `Wiener` restorer (robustir.degradations.classical) with the true kernel under
the true (circular) boundary, x̂ = F⁻¹[conj(K)·Y / (|K|² + nsr)], with its one parameter `nsr` picked from a grid *on
the held-out set itself*: an oracle baseline, so "beats Wiener" is a conservative claim. Blind networks (NAFNet family, Restormer, DeblurGANv2) do not see
the kernel; Wiener and the non-blind networks (DWDN, RGDN) do.

Training data for these checkpoints comes from the trainer's built-in steps (see `configs/train/*deblur*.yaml`): a
`mix` of `blur` with random motion kernels and with the Levin kernels, then `noise` with sigma in [1, 2].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.train.batch import derive_seed
from robustir.train.shipped import (CHECKPOINT_DIR, load_run, shipped, shipped_card, stage_totals,
                                     training_stages)

NSR_GRID = tuple(10.0 ** (e / 4) for e in range(-20, -3))  # 1e-5 ... 1e-1 in quarter decades
BLIND_WIENER_NOTE = ("one isotropic Gaussian kernel for every pair, circular boundary, std and nsr tuned on this "
                     "set (blind to each pair's kernel)")
# Gaussian std (px) searched by the blind Wiener baseline
BLIND_STD_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


@dataclass
class DeblurSet:
    """Blurred/noisy images with their clean targets and true kernels.

    Attributes:
        clean: `(N, C, H, W)` targets. blurred: `(N, C, H, W)` inputs (blur + noise, not clipped).
        kernel: `(N, 1, k, k)` true kernels (odd k, centred, `robustir.degradations.blur` convention).
        sigma: `(N,)` noise level in [0,1] units. image_id / kernel_id: `(N,)` which image and which kernel.
        description: how the set was made (goes into the card).
    """

    clean: Tensor
    blurred: Tensor
    kernel: Tensor
    sigma: Tensor
    image_id: Tensor
    kernel_id: Tensor
    description: dict[str, Any]

    def __len__(self) -> int:
        """Number of (image, kernel) pairs."""
        return int(self.clean.shape[0])


def _center_crop(x: Tensor, size: int) -> Tensor:
    """Centre crop of a (C, H, W) image to size×size (the image must be at least that large)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise RobustirError(f"crop: the image is {h}x{w}, smaller than the requested {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top:top + size, left:left + size]


def _centre_pad(k: Tensor, size: int) -> Tensor:
    """Zero-pad a (kh, kw) kernel to (size, size) around the same centre pixel."""
    kh, kw = k.shape
    top, left = (size - kh) // 2, (size - kw) // 2
    return F.pad(k, (left, size - kw - left, top, size - kh - top))


def make_deblur_set(images: Sequence[Tensor], kernels: Sequence[Tensor], *, sigma: float = 2.0, seed: int = 0,
                    boundary: str = "circular", description: dict[str, Any] | None = None) -> DeblurSet:
    """Blur every image with every kernel (`boundary`) and add seeded Gaussian noise `sigma`/255 (0-255 scale)."""
    from robustir.degradations import add_gaussian_noise, blur

    if not images or not kernels:
        raise RobustirError(f"make_deblur_set: expected images and kernels, got {len(images)} images and "
                            f"{len(kernels)} kernels")
    if sigma < 0:
        raise RobustirError(f"sigma: expected a non-negative noise level (0-255 scale), got {sigma}")
    shape = images[0].shape
    if any(im.shape != shape for im in images):
        shapes = sorted({tuple(i.shape) for i in images})
        raise RobustirError(f"images: expected equal shapes (crop them), got {shapes}")
    ks = [torch.as_tensor(k, dtype=torch.float32) for k in kernels]
    size = max(max(k.shape) for k in ks)
    size += 1 - size % 2
    kpad = torch.stack([_centre_pad(k, size) for k in ks]).unsqueeze(1)
    clean, blurred, kernel, img_id, ker_id = [], [], [], [], []
    for i, img in enumerate(images):
        x = img[None].float()
        for j in range(len(ks)):
            y = blur(x, kpad[j, 0], boundary=boundary)
            g = torch.Generator().manual_seed(derive_seed(seed, "deblur-heldout", i, j))
            y = add_gaussian_noise(y, float(sigma), generator=g)
            clean.append(x)
            blurred.append(y)
            kernel.append(kpad[j:j + 1])
            img_id.append(i)
            ker_id.append(j)
    n = len(clean)
    return DeblurSet(clean=torch.cat(clean), blurred=torch.cat(blurred), kernel=torch.cat(kernel),
                     sigma=torch.full((n,), sigma / 255.0), image_id=torch.tensor(img_id),
                     kernel_id=torch.tensor(ker_id), description=dict(description or {}))


def check_crop(crop: int, kernels: Sequence[Tensor], name: str = "crop") -> None:
    """Refuse a crop smaller than the largest kernel (or the SSIM window): its blur would wrap onto itself."""
    from robustir.metrics.ssim import WINDOW as SSIM_WINDOW

    big = max(kernels, key=lambda k: max(k.shape[-2:]), default=None)
    k = 0 if big is None else max(int(big.shape[-2]), int(big.shape[-1]))
    need = max(SSIM_WINDOW, k)
    if crop < need:
        why = f"the {big.shape[-2]}x{big.shape[-1]} blur kernel (the largest used)" if big is not None and \
            k > SSIM_WINDOW else f"the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window of the metrics"
        raise RobustirError(f"{name}: the {crop}x{crop} crop is smaller than {why}; crops must be at least "
                            f"{need}x{need}")


def heldout_set(*, dataset: str = "cbsd68", n_images: int = 10, crop: int = 128, sigma: float = 2.0, seed: int = 0,
                root: str | Path | None = None) -> DeblurSet:
    """The shipped cards' held-out set: first `n_images` of `dataset`, centre `crop`², x 8 Levin kernels, circular.

    The set is RGB: gray images are repeated to 3 channels, with a warning and a note in the description.
    """
    import warnings

    from robustir.data import convert_channels, load_image, resolve_dataset
    from robustir.degradations import levin_kernels

    for name, value in (("n_images", n_images), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RobustirError(f"{name}: expected a positive integer, got {value!r}")
    kernels = levin_kernels(root)
    check_crop(crop, kernels)  # before the images are read: the kernel sizes alone decide it
    paths = resolve_dataset(dataset, None if root is None else str(root))[:n_images]
    if len(paths) < n_images:
        raise RobustirError(f"n_images: {dataset} has only {len(paths)} images, fewer than {n_images}")
    raw = [load_image(p) for p in paths]
    gray = [p.name for p, im in zip(paths, raw, strict=True) if im.shape[0] == 1]
    images = [convert_channels(im, 3, str(p)) for p, im in zip(paths, raw, strict=True)]
    desc = {"dataset": dataset, "images": f"first {n_images} (sorted by name)", "crop": f"centre {crop}x{crop}",
            "kernels": f"the {len(kernels)} Levin et al. (2009) kernels", "boundary": "circular",
            "noise": f"Gaussian sigma {sigma}/255, not clipped, seeded per (image, kernel) from seed {seed}",
            "pairs": n_images * len(kernels), "metrics": "mean PSNR/SSIM (RGB, 8-bit quantised output, no border crop)"}
    if gray:
        # the set (and every shipped deblurrer) is RGB; scores of replicated gray images are not comparable to
        # scores of colour ones, so the conversion must be visible wherever the numbers go
        note = (f"{len(gray)} of {n_images} images are gray ({gray[0]}{', ...' if len(gray) > 1 else ''}) and were "
                f"converted to RGB (gray channel repeated)")
        desc["channels"] = note
        warnings.warn(f"{dataset}: {note}", stacklevel=2)
    return make_deblur_set([_center_crop(im, crop) for im in images], kernels, sigma=sigma, seed=seed,
                           boundary="circular", description=desc)


# ---------------------------------------------------------------------------------------------------------- Wiener

def wiener_model(nsr: float) -> nn.Module:
    """The registered classical `Wiener` restorer (FFT, circular, constant NSR) in the uniform call."""
    from robustir.models import restorer

    return restorer({"type": "Wiener", "nsr": float(nsr)})


# ------------------------------------------------------------------------------------------------------ evaluation

def _quantize(x: Tensor) -> Tensor:
    """Clamp to [0,1] and round to 8 bits (what a saved PNG would hold)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


@torch.no_grad()
def evaluate_deblur(model: Any, data: DeblurSet, *, batch_size: int = 8, quantize: bool = True,
                    with_ssim: bool = True, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Mean PSNR/SSIM of a uniform-call restorer on `data` (kernel and sigma passed; blind models ignore them).

    Also the mean PSNR per kernel and per image (over the kernels): the held-out set's first k images are exactly
    `heldout_set(n_images=k)`, so a card's per-image numbers can be re-checked cheaply on a prefix.
    """
    from robustir.metrics import psnr, ssim

    if batch_size < 1:
        raise RobustirError(f"batch_size: expected a positive integer, got {batch_size}")
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    ps, ss = [], []
    try:
        for s in range(0, len(data), batch_size):
            sl = slice(s, s + batch_size)
            y = data.blurred[sl].to(device)
            out = model(y, sigma=data.sigma[sl].to(device), kernel=data.kernel[sl].to(device)).float().cpu()
            out = _quantize(out) if quantize else out.clamp(0.0, 1.0)
            ps.append(psnr(out, data.clean[sl]))
            if with_ssim:
                ss.append(ssim(out, data.clean[sl]))
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    p = torch.cat(ps).double()
    per_kernel = [float(p[data.kernel_id == j].mean()) for j in range(int(data.kernel_id.max()) + 1)]
    out_scores: dict[str, Any] = {"psnr": float(p.mean())}
    if with_ssim:
        out_scores["ssim"] = float(torch.cat(ss).double().mean())
    out_scores["psnr_per_kernel"] = [round(v, 3) for v in per_kernel]
    out_scores["psnr_per_image"] = [round(float(p[data.image_id == i].mean()), 4)
                                    for i in range(int(data.image_id.max()) + 1)]
    return out_scores


def identity_scores(data: DeblurSet) -> dict[str, Any]:
    """Scores of the blurred inputs themselves (the 'do nothing' reference)."""
    return evaluate_deblur(lambda y, **_: y, data)


def wiener_baseline(data: DeblurSet, *, grid: Sequence[float] = NSR_GRID) -> dict[str, Any]:
    """Wiener with the true kernel and the best `nsr` of `grid` by mean PSNR on `data` (an oracle-tuned baseline)."""
    if not grid:
        raise RobustirError("grid: expected at least one nsr value")
    psnrs = [evaluate_deblur(wiener_model(nsr), data, with_ssim=False)["psnr"] for nsr in grid]
    nsr = float(grid[max(range(len(grid)), key=psnrs.__getitem__)])
    return {**evaluate_deblur(wiener_model(nsr), data), "nsr": nsr}


def blind_wiener_baseline(data: DeblurSet, *, stds: Sequence[float] = BLIND_STD_GRID,
                          grid: Sequence[float] = NSR_GRID) -> dict[str, Any]:
    """Wiener with one isotropic Gaussian kernel for every pair, (std, nsr) best by mean PSNR on `data`.

    The classical baseline for *blind* networks: it never sees a pair's kernel, only one blur guess shared by the whole
    set, with both of its parameters tuned on the set itself (so still an oracle over the set, not per image). Kernels
    larger than the images are skipped.
    """
    from robustir.degradations import gaussian_kernel

    if not grid or not stds:
        raise RobustirError("blind_wiener_baseline: expected at least one std and one nsr value")
    h, w = data.blurred.shape[-2:]
    best: tuple[float, float, float, DeblurSet] | None = None
    for std in stds:
        k = gaussian_kernel(float(std))
        if k.shape[0] > min(h, w):
            continue
        guess = replace(data, kernel=k.expand(len(data), 1, *k.shape))
        for nsr in grid:
            p = evaluate_deblur(wiener_model(nsr), guess, with_ssim=False)["psnr"]
            if best is None or p > best[0]:
                best = (p, float(std), float(nsr), guess)
    if best is None:
        raise RobustirError(f"blind_wiener_baseline: every Gaussian kernel of stds {tuple(stds)} is larger than the "
                            f"{h}x{w} images")
    _, std, nsr, guess = best
    return {**evaluate_deblur(wiener_model(nsr), guess), "std": std, "nsr": nsr}


# ---------------------------------------------------------------------------------------------------------- shipping

def _describe_training(config: dict[str, Any]) -> tuple[str, str]:
    """Human-readable data and degradation lines for the card, from the run's config."""
    d = config.get("data", {})
    data = (f"{d.get('train')} ({d.get('channels')} channels), random {d.get('patch_size')}x{d.get('patch_size')} "
            f"crops at scales {d.get('scales', [1.0])}, batch {d.get('batch_size')}, "
            f"{'dihedral flips/rotations' if d.get('augment') else 'no augmentation'}")
    return data, json.dumps(config.get("batch", []))


def _verdict(model: dict[str, Any], wiener: dict[str, Any], blind_wiener: dict[str, Any] | None = None, *,
             steps: int, wall_time_s: float) -> str:
    """One honest line comparing a model's held-out PSNR/SSIM with the Wiener baseline's (and the blind one's)."""
    gap = model["psnr"] - wiener["psnr"]
    # a mean gap of a few tenths can come from one easy image: the per-image count shows how broad it is (a
    # caller-supplied baseline may be a bare summary without per-image scores)
    pairs = (list(zip(model["psnr_per_image"], wiener["psnr_per_image"], strict=True))
             if "psnr_per_image" in model and "psnr_per_image" in wiener else [])
    spread = f" (ahead on {sum(m > w for m, w in pairs)} of {len(pairs)} images)" if pairs else ""
    ssim_note = (f"SSIM {model['ssim']:.4f} vs Wiener {wiener['ssim']:.4f} "
                 f"({'better' if model['ssim'] > wiener['ssim'] else 'worse'})")
    if gap > 0:
        line = f"beats the oracle-tuned Wiener baseline by {gap:.2f} dB PSNR on the held-out set{spread}; {ssim_note}"
    else:
        line = (f"loses to the oracle-tuned Wiener baseline by {-gap:.2f} dB PSNR on the held-out set{spread} "
                f"({ssim_note}): NOT trained enough ({steps} steps, {wall_time_s / 60:.1f} min of training)")
    if blind_wiener is not None:
        blind_gap = model["psnr"] - blind_wiener["psnr"]
        line += (f". Against the blind classical filter (Wiener with the best single Gaussian kernel for the whole "
                 f"set, std {blind_wiener['std']:g} px): {blind_gap:+.2f} dB")
    return line


def ship_run(run_dir: str | Path, name: str, *, command: str, dest: str | Path | None = None,
             data: DeblurSet | None = None, wiener: dict[str, Any] | None = None,
             blind_wiener: dict[str, Any] | None = None, notes: str = "", root: str | Path | None = None
             ) -> dict[str, Any]:
    """Evaluate a finished run on the held-out set and write `<dest>/<name>.safetensors` + `<name>.json` (the card)."""
    from safetensors.torch import load_file

    from robustir.data.atomic import atomic_write_text
    from robustir.models import restorer
    from robustir.train.checkpoint import save_weights

    if not name or any(c in name for c in "/\\ "):
        raise RobustirError(f"name: expected a plain file stem like 'nafnet_deblur_small', got {name!r}")
    meta, config, weights_path = load_run(run_dir)
    spec = meta.get("spec") or config.get("model")
    state = load_file(str(weights_path))
    model = restorer(spec, weights=state)  # strict load: the shipped file must match the spec exactly
    stages = training_stages(run_dir, meta)  # train.init chain: every stage's steps and wall time count
    total_steps, total_wall = stage_totals(stages)
    data = data if data is not None else heldout_set(root=root)
    scores = evaluate_deblur(model, data)
    base = wiener if wiener is not None else wiener_baseline(data)
    blind = not bool(model.call.needs_kernel) if hasattr(model, "call") else True
    blind_base = None
    if blind:  # a blind network is also set against the classical filter that does not see the kernel either
        blind_base = blind_wiener if blind_wiener is not None else blind_wiener_baseline(data)
    nparams = sum(p.numel() for p in model.parameters())
    data_line, degradation = _describe_training(config)
    card = {
        "name": name,
        "spec": spec,
        "task": "deblur",
        "blind": blind,
        "parameters": int(nparams),
        "data": data_line,
        "degradation": degradation,
        "command": command,
        "seed": config.get("train", {}).get("seed"),
        "steps": total_steps,
        "wall_time_s": total_wall,
        "stages": stages,
        "weights": meta.get("weights", "params"),
        "metrics": {
            "heldout": data.description,
            "model": scores,
            "wiener": {**base, "note": "true kernel, circular boundary, nsr tuned on this set (oracle)"},
            "blurred_input": identity_scores(data),
            "psnr_gain_over_wiener": round(scores["psnr"] - base["psnr"], 3),
            **({"wiener_blind": {**blind_base, "note": BLIND_WIENER_NOTE},
                "psnr_gain_over_blind_wiener": round(scores["psnr"] - blind_base["psnr"], 3)}
               if blind_base is not None else {}),
            "training_val": meta.get("val", {}),
        },
        "verdict": _verdict(scores, base, blind_base, steps=total_steps, wall_time_s=total_wall),
        "notes": notes,
        "config": config,
    }
    out = Path(dest) if dest is not None else CHECKPOINT_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / f"{name}.safetensors", {k: v.contiguous() for k, v in state.items()},
                 metadata={"spec": json.dumps(spec), "name": name, "task": "deblur"})
    atomic_write_text(out / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card


def load_shipped(name: str, *, dest: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A shipped deblurring checkpoint as a uniform-call restorer (strict load) and its card."""
    card = shipped_card(name, dest)
    if card.get("task") != "deblur":
        raise RobustirError(f"name: shipped checkpoint {name!r} is a {card.get('task')!r} model, not a deblurrer")
    return shipped(name, folder=dest), card


def shipped_table(folder: str | Path | None = None) -> str:
    """A Markdown table of every shipped deblurring checkpoint's held-out scores beside the Wiener baseline."""
    from robustir.train.shipped import list_shipped

    rows = ["| checkpoint | kernel given | params | steps | wall time | PSNR / SSIM | Wiener (oracle nsr) "
            "| blurred input | vs Wiener | vs blind Wiener |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, card in list_shipped(folder).items():
        if card.get("task") != "deblur":
            continue
        m = card["metrics"]
        # gaps from the unrounded scores, as the verdict computes them (the card's stored gains are rounded to 3
        # decimals, and rounding those again to 2 can differ from the verdict by 0.01)
        gap = m["model"]["psnr"] - m["wiener"]["psnr"]
        blind = f"{m['model']['psnr'] - m['wiener_blind']['psnr']:+.2f} dB |" if "wiener_blind" in m else "- |"
        rows.append(f"| `{name}` | {'no' if card.get('blind', True) else 'yes'} | {card['parameters']:,} | "
                    f"{card['steps']} | {card['wall_time_s'] / 60:.1f} min | {m['model']['psnr']:.2f} / "
                    f"{m['model']['ssim']:.4f} | {m['wiener']['psnr']:.2f} / {m['wiener']['ssim']:.4f} | "
                    f"{m['blurred_input']['psnr']:.2f} / {m['blurred_input']['ssim']:.4f} | "
                    f"{gap:+.2f} dB | {blind}")
    return "\n".join(rows)

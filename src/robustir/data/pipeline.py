"""Folder-level jobs behind `robustir degrade` and `robustir score`: degrade a set of images, score restorations."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustir.data.atomic import atomic_write_text
from robustir.data.datasets import DegradedImages, ImageFolder
from robustir.data.io import load_image, save_image, save_tensors
from robustir.data.names import list_images, resolve_dataset
from robustir.errors import RobustirError

METRICS = ("psnr", "ssim", "mae", "ncc")

__all__ = ["METRICS", "DegradeSpec", "degrade_folder", "format_table", "kernel_from_spec", "match_by_name",
           "score_folders", "score_pairs", "write_csv"]


# ---------------------------------------------------------------------------------------------------------- degrade

@dataclass(frozen=True)
class DegradeSpec:
    """What `degrade_folder` does: optional blur (a fixed kernel or a fresh motion kernel per image), then noise."""

    sigma: float = 0.0
    kernel: str | None = None
    boundary: str = "circular"
    seed: int = 0


def kernel_from_spec(spec: str, root: str | os.PathLike | None = None) -> Tensor | tuple[str, int]:
    """Parse a kernel option: a file (`.mat`/`.png`/`.npy`, `FILE:N` for the N-th, 1-based), `levin:N` (1..8, the
    Levin et al. 2009 kernels from the data root), or `motion:SIZE` (returns ('motion', SIZE): one random kernel per
    image)."""
    from robustir.degradations.kernels import levin_kernels, load_kernels, validate_kernel

    text = spec.strip()
    m = re.fullmatch(r"motion:(\d+)", text, flags=re.IGNORECASE)
    if m:
        size = int(m.group(1))
        if size < 3:
            raise RobustirError(f"--kernel {spec!r}: motion kernel size must be at least 3")
        return "motion", size
    m = re.fullmatch(r"levin:(\d+)", text, flags=re.IGNORECASE)
    if m:
        kernels, source, index = levin_kernels(root), "the Levin kernels", int(m.group(1))
    else:
        m = re.fullmatch(r"(.+?):(\d+)", text)
        path, index = (Path(m.group(1)), int(m.group(2))) if m and not Path(text).exists() else (Path(text), 0)
        if not path.is_file():
            raise RobustirError(f"--kernel {spec!r}: expected a kernel file (.mat/.png/.npy, optionally FILE:N), "
                                f"'levin:N' (N = 1..8) or 'motion:SIZE'; {str(path)!r} does not exist")
        kernels, source = load_kernels(path), repr(str(path))
        if index == 0:
            if len(kernels) != 1:
                raise RobustirError(f"--kernel {spec!r}: {source} holds {len(kernels)} kernels; pick one with "
                                    f"'{path}:N' (N = 1..{len(kernels)})")
            index = 1
    if not 1 <= index <= len(kernels):
        raise RobustirError(f"--kernel {spec!r}: kernel number {index} is out of range for {source} "
                            f"(1..{len(kernels)})")
    return validate_kernel(kernels[index - 1], f"kernel {spec}")


def _degradation(spec: DegradeSpec, root: str | os.PathLike | None) -> Callable:
    from robustir.data.degrade import blur_noise, motion_blur_noise, noise

    if spec.kernel is None:
        if spec.sigma <= 0:
            raise RobustirError("degrade: nothing to do: give a noise level (--sigma) and/or a blur kernel (--kernel)")
        return noise(spec.sigma)
    kernel = kernel_from_spec(spec.kernel, root)
    if isinstance(kernel, tuple):
        return motion_blur_noise(kernel[1], sigma=spec.sigma, boundary=spec.boundary)
    return blur_noise(kernel, spec.sigma, boundary=spec.boundary)


def degrade_folder(source: str | os.PathLike, out: str | os.PathLike, spec: DegradeSpec, *,
                   root: str | os.PathLike | None = None, bits: int = 8, channels: int | None = None,
                   size: int | None = None, limit: int | None = None, progress: bool = False) -> list[str]:
    """Degrade every image of a dataset name or folder into `out`.

    Writes `out/input/<stem>.png` (degraded, clipped to [0,1] for the PNG), `out/target/<stem>.png` (the clean image
    as used), `out/tensors/<stem>.safetensors` (unclipped degraded + clean float tensors, kernel, sigma: lossless)
    and `out/degrade.json` (the settings). `out` is then a flat paired folder (`PairedFolder(out)`).

    Returns:
        The stems written, in order.
    """
    from tqdm import tqdm

    clean = ImageFolder(source, root=root, channels=channels, size=size, limit=limit)
    stems = [Path(n).stem for n in clean.names]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise RobustirError(f"degrade: several images share the name {dupes[0]!r} (different suffixes); outputs "
                            f"are named by stem, so rename them")
    data = DegradedImages(clean, _degradation(spec, root), seed=spec.seed)
    outdir = Path(out)
    for i in tqdm(range(len(data)), desc="degrade", unit="img", disable=not progress):
        item = data[i]
        stem = stems[i]
        tensors = {"input": item["input"], "target": item["target"]}
        for key in ("kernel", "sigma"):
            if key in item:
                tensors[key] = item[key]
        save_tensors(tensors, outdir / "tensors" / f"{stem}.safetensors",
                     metadata={"source": str(clean.paths[i]), "sigma": f"{spec.sigma:g}",
                               "kernel": spec.kernel or "", "seed": str(spec.seed), "index": str(i)})
        save_image(item["input"].clamp(0, 1), outdir / "input" / f"{stem}.png", bits=bits)
        save_image(item["target"], outdir / "target" / f"{stem}.png", bits=bits)
    settings = degrade_settings(source, len(data), spec, bits=bits, channels=channels, size=size)
    atomic_write_text(outdir / "degrade.json", json.dumps(settings, indent=2) + "\n")
    return stems


def degrade_settings(source: str | os.PathLike, count: int, spec: DegradeSpec, *, bits: int = 8,
                     channels: int | None = None, size: int | None = None) -> dict[str, Any]:
    """What `degrade_folder` records in `out/degrade.json` (and what tells two degraded folders apart)."""
    return {"source": os.fspath(source), "count": count, "sigma": spec.sigma, "kernel": spec.kernel,
            "boundary": spec.boundary, "seed": spec.seed, "bits": bits, "channels": channels, "size": size}


# ---------------------------------------------------------------------------------------------------------- score

def match_by_name(restored: Iterable[Path], reference: Iterable[Path], *, allow_missing: bool = False
                  ) -> list[tuple[Path, Path]]:
    """Pair restorations with references by file stem; raise on restorations without a reference and (unless
    `allow_missing`) on references without a restoration."""
    rmap, tmap = {}, {}
    for label, paths, mapping in (("restorations", restored, rmap), ("references", reference, tmap)):
        for p in paths:
            if p.stem in mapping:
                raise RobustirError(f"score: two {label} share the name {p.stem!r}: {mapping[p.stem].name} and "
                                    f"{p.name}")
            mapping[p.stem] = p
    extra = sorted(set(rmap) - set(tmap))
    if extra:
        raise RobustirError(f"score: {len(extra)} restoration(s) have no reference with the same name "
                            f"(e.g. {', '.join(extra[:3])}); references are named like "
                            f"{', '.join(sorted(tmap)[:3])}")
    missing = sorted(set(tmap) - set(rmap))
    if missing and not allow_missing:
        raise RobustirError(f"score: {len(missing)} reference(s) have no restoration (e.g. {', '.join(missing[:3])}); "
                            f"pass --allow-missing to score only the restorations present")
    return [(rmap[s], tmap[s]) for s in sorted(rmap)]


def score_pairs(pairs: list[tuple[Tensor, Tensor]], *, crop_border: int = 0, y_channel: bool = False,
                quantize: bool = False) -> list[dict[str, float]]:
    """PSNR (dB), SSIM, MAE (0-255 scale) and NCC for (restored, reference) (C, H, W) pairs, one dict per pair."""
    from robustir.metrics import mae, ncc, psnr, ssim

    rows = []
    for x, y in pairs:
        xb, yb = x.unsqueeze(0).double(), y.unsqueeze(0).double()
        opts = {"crop_border": crop_border, "y_channel": y_channel, "quantize": quantize}
        rows.append({"psnr": float(psnr(xb, yb, **opts)[0]), "ssim": float(ssim(xb, yb, **opts)[0]),
                     "mae": float(mae(xb, yb)[0]), "ncc": float(ncc(xb, yb)[0])})
    return rows


def score_folders(restored: str | os.PathLike, reference: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  crop_border: int = 0, y_channel: bool = False, quantize: bool = False,
                  allow_missing: bool = False) -> list[dict[str, float | str]]:
    """Score a folder of restorations against a folder (or named dataset) of references, matching by file name.

    Returns:
        One row per image: `{"name", "psnr", "ssim", "mae", "ncc"}`, sorted by name.
    """
    pairs = match_by_name(list_images(restored), resolve_dataset(reference, root), allow_missing=allow_missing)
    rows: list[dict[str, float | str]] = []
    for rp, tp in pairs:
        x, y = load_image(rp), load_image(tp)
        if x.shape != y.shape:
            raise RobustirError(f"score: size mismatch: restoration {str(rp)!r} is {tuple(x.shape)} (C, H, W) but "
                                f"reference {str(tp)!r} is {tuple(y.shape)}")
        row: dict[str, float | str] = {"name": rp.stem}
        try:
            row.update(score_pairs([(x, y)], crop_border=crop_border, y_channel=y_channel, quantize=quantize)[0])
        except RobustirError as exc:  # e.g. an image smaller than the SSIM window: say which one
            raise RobustirError(f"score: {str(rp)!r}: {exc}") from None
        rows.append(row)
    return rows


def _mean(rows: list[dict[str, float | str]], key: str) -> float:
    vals = [float(r[key]) for r in rows]
    return sum(vals) / len(vals) if vals else math.nan


def format_table(rows: list[dict[str, float | str]], *, columns: tuple[str, ...] = METRICS,
                 markdown: bool = False) -> str:
    """A fixed-width (or Markdown) table of per-image metrics with a mean row."""
    fmt = {"psnr": "{:.2f}", "ssim": "{:.4f}", "mae": "{:.3f}", "ncc": "{:.4f}"}
    label_cols = [k for k in rows[0] if k not in columns] if rows else ["name"]
    body = [[str(r[k]) for k in label_cols] + [fmt.get(c, "{:.4g}").format(float(r[c])) for c in columns]
            for r in rows]
    mean = ["mean"] + [""] * (len(label_cols) - 1) + [fmt.get(c, "{:.4g}").format(_mean(rows, c)) for c in columns]
    header = label_cols + [c.upper() + (" (dB)" if c == "psnr" else " (0-255)" if c == "mae" else "")
                           for c in columns]
    table = [header, *body, mean]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i < len(label_cols) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.insert(len(out) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_csv(rows: list[dict[str, float | str]], path: str | os.PathLike) -> None:
    """Write rows (full float precision) to CSV atomically."""
    if not rows:
        raise RobustirError(f"write_csv {str(path)!r}: no rows to write")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())

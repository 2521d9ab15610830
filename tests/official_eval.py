"""Shared helpers of the official-weight tests (KAIR protocol: clean uint8 image in [0,1], np.random.seed(0) per image,
x + N(0, (sigma/255)^2) unclipped, output rounded to uint8, PSNR on the 0-255 grid)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FULL_EVAL = os.environ.get("ROBUSTIR_FULL_EVAL") == "1" or torch.cuda.is_available()
FULL_EVAL_REASON = ("full BSD68 evaluation takes ~5 s per image per model on one CPU core; set ROBUSTIR_FULL_EVAL=1 "
                    "(or run with CUDA) to enable")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mean_psnr(net: torch.nn.Module, folder: Path, sigma: float = 25.0, limit: int | None = None) -> float:
    from robustir.metrics import psnr

    net = net.to(DEVICE).eval()
    files = sorted(folder.glob("*.png"))[:limit]
    assert files, f"no images in {folder}"
    scores = []
    for f in files:
        clean = np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0
        np.random.seed(0)
        noisy = clean + np.random.normal(0, sigma / 255.0, clean.shape).astype(np.float32)
        with torch.no_grad():
            out = net(torch.from_numpy(noisy)[None, None].to(DEVICE)).cpu()
        scores.append(psnr(out, torch.from_numpy(clean)[None, None], quantize=True).item())
    return float(np.mean(scores))


def weights_file(data_root: Path, name: str) -> Path:
    path = data_root / "weights" / "dncnn" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path

"""torchrun + DistributedDataParallel (Gloo on CPU): two processes with half the batch each train the same weights as
one process with the whole batch (the samples are sharded by id, the gradients averaged)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from robustir.train.config import load_config
from robustir.train.loop import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    from PIL import Image
    from safetensors.torch import load_file

    import numpy as np

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        img = np.kron(rng.random((5, 5)), np.ones((8, 8))) * 255
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")

    def config(out: str) -> Path:
        cfg = {"model": {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "R"},
               "data": {"train": str(tmp_path / "images"), "patch_size": 16, "batch_size": 4},
               "batch": [{"type": "noise", "sigma": [5, 30]}], "loss": {"type": "PSNR"},
               "optim": {"type": "AdamW", "lr": 1e-3, "betas": [0.9, 0.9]}, "schedule": {"type": "cosine"},
               "train": {"steps": 6, "seed": 3, "out": str(tmp_path / out), "ckpt_every": 3, "ema": 0.5}}
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run([*torchrun, "-m", "robustir.cli", "train", str(config("ddp")), "--no-progress"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained 6 steps") == 1, res.stdout  # the summary comes from rank 0 only
    ref = train(load_config(config("single")), progress=False)
    ddp = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    for k, v in ref.weights.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
    moved = sum(float((v - load_file(str(tmp_path / "single" / "last.safetensors"))[f"params.{k}"]).abs().sum())
                for k, v in ref.weights.items())
    assert moved > 0  # EMA weights are not the raw ones: the comparison covers the EMA path too

"""Kill a real `robustir train` subprocess (SIGKILL) twice mid-run, resume it, and get bit-identical final weights to an
uninterrupted run with the same seed; plus clear errors for bad checkpoints and incompatible resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from robustir.errors import RobustirError
from robustir.train.config import load_config
from robustir.train.loop import train

REPO = Path(__file__).resolve().parents[1]


def _write_dataset(folder: Path, n: int = 6, size: int = 40) -> None:
    """A folder of smooth random 8-bit PNGs (a real dataset on disk, read by the subprocess)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        low = rng.random((size // 8, size // 8))
        img = np.kron(low, np.ones((8, 8))) * 255
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:02d}.png")


def _config(tmp: Path, out: str, steps: int = 60) -> Path:
    cfg = {
        "model": {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 16, "nb": 5, "act_mode": "BR"},
        "data": {"train": str(tmp / "images"), "patch_size": 24, "batch_size": 8, "scales": [1.0, 0.8]},
        "batch": [{"type": "noise", "sigma": [10, 40]}],
        "loss": {"type": "Charbonnier"},
        "optim": {"type": "AdamW", "lr": 2e-3, "weight_decay": 1e-4},
        "schedule": {"type": "cosine", "eta_min": 1e-5, "warmup": 5},
        "train": {"steps": steps, "seed": 7, "out": str(tmp / out), "ckpt_every": 4, "log_every": 10, "ema": 0.95,
                  "grad_clip": 0.5},
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "robustir.cli", "train", str(cfg), "--resume", "--no-progress"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _checkpoint_step(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return int(json.loads(fh.metadata()["robustir_train_state"])["step"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


def _kill_when(proc: subprocess.Popen, ckpt: Path, at_least: int, extra_s: float) -> int:
    """SIGKILL the process once its checkpoint reaches `at_least` steps (+ `extra_s` seconds); return that step."""
    deadline = time.time() + 120
    while _checkpoint_step(ckpt) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("training made no progress")
        time.sleep(0.002)
    time.sleep(extra_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _checkpoint_step(ckpt)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _write_dataset(tmp_path / "images")
    cfg_path = _config(tmp_path, "killed")
    proc = _launch(cfg_path)
    first = _kill_when(proc, tmp_path / "killed" / "last.safetensors", 8, 0.0)  # right after a checkpoint write
    proc = _launch(cfg_path)
    second = _kill_when(proc, tmp_path / "killed" / "last.safetensors", first + 8, 0.013)  # at an arbitrary moment
    assert 8 <= first < second < 60, (first, second)
    proc = _launch(cfg_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "trained 60 steps" in out.decode()
    rows = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60  # every line parses (a line cut by the kill is dropped on resume)
    logged = [r["step"] for r in rows if "val" not in r]
    assert logged == sorted(set(logged)), "a step was logged twice across the kills"

    ref = train(load_config(_config(tmp_path, "straight")), progress=False)
    killed = load_file(str(tmp_path / "killed" / "model.safetensors"))
    assert set(killed) == set(ref.weights)
    for k, v in ref.weights.items():
        assert torch.equal(killed[k], v), f"{k} differs after kill/resume"
    full_a = load_file(str(tmp_path / "killed" / "last.safetensors"))
    full_b = load_file(str(tmp_path / "straight" / "last.safetensors"))
    for k in full_b:
        if k.startswith(("params", "optim")):
            assert torch.equal(full_a[k], full_b[k]), k


def test_resume_drops_log_rows_past_the_checkpoint(tmp_path: Path) -> None:
    """Rows a killed run logged after its last checkpoint are logged again on resume: keep one row per step."""
    _write_dataset(tmp_path / "images", n=3)
    path = _config(tmp_path, "run", steps=4)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(log_every=1, ckpt_every=4)
    path.write_text(yaml.safe_dump(cfg))
    train(load_config(path), progress=False)
    log = tmp_path / "run" / "log.jsonl"
    # as if the killed run had gone on to step 6 and was cut mid-line after its last checkpoint (step 4)
    with open(log, "a") as fh:
        fh.write('{"step": 5, "loss": -1.0}\n{"step": 6, "loss": -1.0}\nnot json\n{"step": 7, "lo')
    cfg["train"]["steps"] = 6
    path.write_text(yaml.safe_dump(cfg))
    train(load_config(path), resume=True, progress=False)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in rows)


def test_resume_errors(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "images", n=3)
    cfg = load_config(_config(tmp_path, "run", steps=4))
    train(cfg, progress=False)
    changed = load_config(_config(tmp_path, "run", steps=4), {"optim.lr": 1e-2})
    with pytest.raises(RobustirError, match=r"cannot resume: the config differs .* optim.lr: 0.002 -> 0.01"):
        train(changed, resume=True, progress=False)
    longer = load_config(_config(tmp_path, "run", steps=6))  # extending a finished run is allowed
    assert train(longer, resume=True, progress=False).steps == 6
    ckpt = tmp_path / "run" / "last.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # truncated
    with pytest.raises(RobustirError, match="is not a readable safetensors file"):
        train(longer, resume=True, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-m", "robustir.cli", "train", str(tmp_path / "run.yaml"), "--resume"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "not a readable safetensors" in res.stderr


def test_file_source_with_workers_matches_in_memory(tmp_path: Path) -> None:
    """Reading files per sample in 2 DataLoader workers trains exactly the same weights as images held in memory."""
    _write_dataset(tmp_path / "images", n=4)
    ref = train(load_config(_config(tmp_path, "memory", steps=5)), progress=False)
    lazy = load_config(_config(tmp_path, "files", steps=5), {"data.in_memory": False, "data.workers": 2})
    res = train(lazy, progress=False)
    for k, v in ref.weights.items():
        assert torch.equal(res.weights[k], v), k

"""`train.init`: fine-tuning starts from given weights (a file, `shipped:NAME`), loaded strictly before the optimizer
sees them; its path and sha256 are recorded and survive resume (which ignores the init file); a wrong architecture or
a missing file is a clear error before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robustir.errors import RobustirError
from robustir.train import config_from_dict
from robustir.train.loop import TrainingData, train
from robustir.train.shipped import shipped_card, shipped_path

TINY = {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "R"}


def _images(n: int = 4, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [F.interpolate(torch.rand(1, 1, 8, 8, generator=g), size=(size, size), mode="bilinear",
                          align_corners=False)[0] for _ in range(n)]


def _cfg(out: Path, *, model: dict = TINY, lr: float = 1e-3, steps: int = 3, init: str | None = None) -> dict:
    run = {"steps": steps, "out": str(out), "ckpt_every": 1, "log_every": 1, "device": "cpu", "seed": 5}
    if init is not None:
        run["init"] = init
    return {"model": dict(model), "data": {"train": "unused", "patch_size": 16, "batch_size": 2},
            "batch": [{"type": "noise", "sigma": 25}], "loss": {"type": "L2"},
            "optim": {"type": "Adam", "lr": lr}, "train": run}


def test_init_starts_from_the_file_and_is_recorded(tmp_path: Path) -> None:
    data = TrainingData(targets=_images())
    first = train(config_from_dict(_cfg(tmp_path / "a", steps=4)), data=data, progress=False)
    start = tmp_path / "a" / "model.safetensors"
    # an Adam step moves each weight by about lr: with lr 1e-12 the fine-tuned weights are the init weights
    tuned = train(config_from_dict(_cfg(tmp_path / "b", lr=1e-12, steps=1, init=str(start))), data=data,
                  progress=False)
    fresh = train(config_from_dict(_cfg(tmp_path / "c", lr=1e-12, steps=1)), data=data, progress=False)
    for key, value in first.weights.items():
        torch.testing.assert_close(tuned.weights[key], value, rtol=0, atol=1e-9)
    assert max(float((fresh.weights[k] - v).abs().max()) for k, v in first.weights.items()) > 1e-3
    info = json.loads((tmp_path / "b" / "model.json").read_text())["init"]
    assert info == {"ref": str(start), "path": str(start), "sha256": hashlib.sha256(start.read_bytes()).hexdigest()}
    # the trained start denoises the first batch better than the random one (logged loss before its update)
    loss = [json.loads((tmp_path / run / "log.jsonl").read_text().splitlines()[0])["loss"] for run in "bc"]
    assert loss[0] < loss[1]


def test_init_from_a_shipped_checkpoint(tmp_path: Path) -> None:
    card = shipped_card("dncnn_s25_small")
    out = tmp_path / "ft"
    cfg = _cfg(out, model=card["spec"], lr=1e-12, steps=1, init="shipped:dncnn_s25_small")
    result = train(config_from_dict(cfg), data=TrainingData(targets=_images()), progress=False)
    shipped = load_file(str(shipped_path("dncnn_s25_small")))
    assert set(result.weights) == set(shipped)
    for key, value in shipped.items():
        if key.endswith("num_batches_tracked"):  # one training step: batch norm counted one more batch
            assert int(result.weights[key]) == int(value) + 1
        elif not key.endswith(("running_mean", "running_var")):  # running statistics did move (momentum 0.1)
            torch.testing.assert_close(result.weights[key], value, rtol=0, atol=1e-9)
    assert json.loads((out / "model.json").read_text())["init"]["ref"] == "shipped:dncnn_s25_small"


def test_resume_ignores_the_init_file_but_keeps_its_record(tmp_path: Path) -> None:
    data = TrainingData(targets=_images())
    train(config_from_dict(_cfg(tmp_path / "a", steps=2)), data=data, progress=False)
    start = tmp_path / "start.safetensors"
    (tmp_path / "a" / "model.safetensors").rename(start)
    digest = hashlib.sha256(start.read_bytes()).hexdigest()
    cfg = config_from_dict(_cfg(tmp_path / "b", steps=3, init=str(start)))
    done = train(cfg, data=data, progress=False)
    start.unlink()  # resuming must not need it any more
    again = train(cfg, resume=True, data=data, progress=False)
    for key, value in done.weights.items():
        torch.testing.assert_close(again.weights[key], value, rtol=0, atol=0)
    assert json.loads((tmp_path / "b" / "model.json").read_text())["init"]["sha256"] == digest


def test_init_errors_before_anything_is_written(tmp_path: Path) -> None:
    data = TrainingData(targets=_images())
    train(config_from_dict(_cfg(tmp_path / "a", steps=1)), data=data, progress=False)
    wider = {**TINY, "nc": 12}
    with pytest.raises(RobustirError, match="model.safetensors"):
        train(config_from_dict(_cfg(tmp_path / "b", model=wider, init=str(tmp_path / "a" / "model.safetensors"))),
              data=data, progress=False)
    with pytest.raises(RobustirError, match="weights file not found"):
        train(config_from_dict(_cfg(tmp_path / "c", init=str(tmp_path / "nope.safetensors"))), data=data,
              progress=False)
    with pytest.raises(RobustirError, match="no shipped checkpoint"):
        train(config_from_dict(_cfg(tmp_path / "d", init="shipped:nope")), data=data, progress=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_training_stages_follow_the_init_chain(tmp_path: Path) -> None:
    from robustir.train.shipped import stage_totals, training_stages

    data = TrainingData(targets=_images())
    train(config_from_dict(_cfg(tmp_path / "a", steps=2)), data=data, progress=False)
    train(config_from_dict(_cfg(tmp_path / "b", steps=3, init=str(tmp_path / "a" / "model.safetensors"))), data=data,
          progress=False)
    train(config_from_dict(_cfg(tmp_path / "c", steps=1, init=str(tmp_path / "b" / "model.safetensors"))), data=data,
          progress=False)
    meta = json.loads((tmp_path / "c" / "model.json").read_text())
    stages = training_stages(tmp_path / "c", meta)
    assert [(Path(st["run"]).name, st["steps"]) for st in stages] == [("a", 2), ("b", 3), ("c", 1)]
    assert stages[0]["init"] is None
    b_weights = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert stages[2]["init"]["sha256"] == hashlib.sha256(b_weights).hexdigest()
    walls = [json.loads((tmp_path / r / "model.json").read_text())["wall_time_s"] for r in "abc"]
    steps, wall = stage_totals(stages)
    assert steps == 6 and wall == pytest.approx(sum(round(w, 1) for w in walls), abs=1e-6)
    # a start file from outside any run (a shipped checkpoint) ends the chain and is named in the first stage
    card = shipped_card("dncnn_s25_small")
    train(config_from_dict(_cfg(tmp_path / "d", model=card["spec"], steps=1, init="shipped:dncnn_s25_small")),
          data=data, progress=False)
    d_stages = training_stages(tmp_path / "d", json.loads((tmp_path / "d" / "model.json").read_text()))
    assert len(d_stages) == 1 and d_stages[0]["init"]["ref"] == "shipped:dncnn_s25_small"
    # a shipped start whose card lists its stages continues the chain: a fine-tune counts the steps that made it
    rgdn = shipped_card("rgdn_deblur_small")
    path = shipped_path("rgdn_deblur_small")
    ft = {"steps": 7, "wall_time_s": 3.0, "config": {"train": {"seed": 9}},
          "init": {"ref": "shipped:rgdn_deblur_small", "path": str(path),
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}
    ft_stages = training_stages(tmp_path / "ft", ft)
    assert ft_stages[:-1] == rgdn["stages"] and len(ft_stages) == len(rgdn["stages"]) + 1 >= 2
    assert ft_stages[-1] == {"run": str(tmp_path / "ft"), "steps": 7, "seed": 9, "wall_time_s": 3.0,
                             "init": {"ref": "shipped:rgdn_deblur_small", "sha256": ft["init"]["sha256"]}}
    assert stage_totals(ft_stages)[0] == rgdn["steps"] + 7
    with pytest.raises(RobustirError, match="'shipped:rgdn_deblur_small' .* changed since training"):
        training_stages(tmp_path / "ft", {**ft, "init": {**ft["init"], "sha256": "0" * 64}})
    # retraining a stage after its weights were used breaks the record: an error, not a wrong card
    (tmp_path / "b" / "model.safetensors").write_bytes((tmp_path / "a" / "model.safetensors").read_bytes())
    with pytest.raises(RobustirError, match="changed since training"):
        training_stages(tmp_path / "c", meta)

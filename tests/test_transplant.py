"""Transplanting a trained Baseline into an Intermediate: every tensor but the attention copied, each simplified
attention the least-squares fit of the SE outputs (checked against numpy's lstsq), the start close to the Baseline's
function; mismatched pairs are errors that leave the target unchanged; `train.transplant` does it at the start of a
run and records the fit on the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from random_weights import trained_like
from safetensors.torch import load_file, save_file

from robustir.errors import CheckpointMismatchError, RobustirError
from robustir.models import build
from robustir.models.transplant import transplant_se_to_sca
from robustir.train import config_from_dict
from robustir.train.loop import TrainingData, train

BASELINE = {"type": "Baseline", "img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1],
            "dec_blk_nums": [1, 1]}
INTERMEDIATE = {**BASELINE, "attention": "sca"}


def _batches(n: int, seed: int = 1, size: int = 24) -> list[torch.Tensor]:
    """Noise images of varied per-channel level and contrast, so the pooled features span their space."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        level, contrast = torch.rand(2, 4, 3, 1, 1, generator=g)
        out.append(level * (1 - contrast) + contrast * torch.rand(4, 3, size, size, generator=g))
    return out


def test_fit_is_the_least_squares_solution_and_everything_else_is_copied() -> None:
    source = trained_like(BASELINE)
    target = build(INTERMEDIATE)
    calib = _batches(6)
    seen: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    hooks = [m.se.register_forward_hook(
        lambda mod, a, out, name=name: seen.setdefault(name, []).append(
            (a[0].double().mean((2, 3)).numpy(), out.double().flatten(1).numpy())))
        for name, m in source.named_modules() if hasattr(m, "se")]
    with torch.no_grad():
        for x in calib:
            source(x)
    for h in hooks:
        h.remove()
    report = transplant_se_to_sca(target, source, calib)

    assert report.samples == 24 and set(report.r2) == set(seen) and len(seen) == 5
    src_state = source.state_dict()
    for k, v in target.state_dict().items():
        if ".sca." not in k:
            torch.testing.assert_close(v, src_state[k], rtol=0, atol=0)
    for name, rows in seen.items():
        p = np.concatenate([r[0] for r in rows])
        s = np.concatenate([r[1] for r in rows])
        design = np.concatenate([p, np.ones((len(p), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(design, s, rcond=None)
        conv = target.get_submodule(name).sca[1]
        weight = conv.weight.detach().double().squeeze(-1).squeeze(-1).numpy()
        fitted = p @ weight.T + conv.bias.detach().double().numpy()
        np.testing.assert_allclose(fitted, design @ coef, atol=2e-4)  # float32 weights of a fit that may be ill-posed
        resid = s - design @ coef
        r2 = 1 - (resid ** 2).sum() / ((s - s.mean(0)) ** 2).sum()
        assert report.r2[name] == pytest.approx(r2, abs=1e-6)
    assert report.as_dict()["r2_min"] == pytest.approx(min(report.r2.values()), abs=1e-6)


def test_transplanted_network_starts_near_the_baseline_function() -> None:
    source = trained_like(BASELINE)
    target = build(INTERMEDIATE)
    report = transplant_se_to_sca(target, source, _batches(8))
    x = _batches(1, seed=7, size=37)[0]  # held out, odd size (pad and crop)
    naive = build(INTERMEDIATE)
    with torch.no_grad():
        naive.load_state_dict({**naive.state_dict(), **{k: v for k, v in source.state_dict().items()
                                                       if k in naive.state_dict()}})
        ref, out, plain = source(x), target(x), naive(x)
    change = float((ref - x).abs().mean())
    err, err_plain = float((out - ref).abs().mean()), float((plain - ref).abs().mean())
    assert change > 0.05 and min(report.r2.values()) > 0.5
    assert err < 0.2 * err_plain and err < 0.1 * change  # the fit, not the copied tensors alone, gives the start


def test_relu_target_takes_the_gelu_baseline() -> None:
    source = trained_like(BASELINE)
    target = build({**INTERMEDIATE, "activation": "relu"})
    transplant_se_to_sca(target, source, _batches(3))
    torch.testing.assert_close(target.state_dict()["middle_blks.0.conv1.weight"],
                               source.state_dict()["middle_blks.0.conv1.weight"], rtol=0, atol=0)


def test_mismatched_pairs_are_errors_that_leave_the_target_unchanged() -> None:
    source = trained_like(BASELINE)
    cases = [({**INTERMEDIATE, "width": 16}, CheckpointMismatchError, "shapes differ"),
             ({**INTERMEDIATE, "middle_blk_num": 2}, CheckpointMismatchError, "middle_blks.1"),
             ({**INTERMEDIATE, "type": "NAFNet"}, CheckpointMismatchError, "shapes differ")]
    for spec, err, msg in cases:
        target = build(spec)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(err, match=msg):
            transplant_se_to_sca(target, source, _batches(1))
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(RobustirError, match="no squeeze-excitation"):
        transplant_se_to_sca(build(INTERMEDIATE), trained_like(INTERMEDIATE), _batches(1))
    with pytest.raises(RobustirError, match="no calibration inputs"):
        transplant_se_to_sca(build(INTERMEDIATE), source, [])


def _cfg(out: Path, init: str | None, transplant: object) -> dict:
    run = {"steps": 2, "out": str(out), "ckpt_every": 1, "log_every": 1, "device": "cpu", "seed": 3,
           "transplant": transplant}
    if init is not None:
        run["init"] = init
    return {"model": dict(INTERMEDIATE), "data": {"train": "unused", "channels": 3, "patch_size": 16, "batch_size": 2},
            "batch": [{"type": "noise", "sigma": 10}], "loss": {"type": "L1"}, "optim": {"type": "AdamW", "lr": 1e-3},
            "train": run}


def test_train_transplant_records_the_fit_and_resumes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = TrainingData(targets=[torch.rand(3, 24, 24, generator=g) for _ in range(3)])
    source = trained_like(BASELINE)
    start = tmp_path / "baseline.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(start))
    tp = {"from": BASELINE, "batches": 3}
    for bad, msg in [((None, tp), "give train.init"), ((str(start), {"batches": 3}), "expected \\{from"),
                     ((str(start), {"from": BASELINE, "batches": 0}), "batches: expected a positive integer"),
                     ((str(start), {"from": BASELINE, "extra": 1}), "expected \\{from")]:
        with pytest.raises(RobustirError, match=msg):
            config_from_dict(_cfg(tmp_path / "x", *bad))
    with pytest.raises(CheckpointMismatchError, match="sca"):  # a plain init cannot fill the attention
        train(config_from_dict(_cfg(tmp_path / "plain", str(start), None)), data=data, progress=False)

    train(config_from_dict(_cfg(tmp_path / "t", str(start), tp)), data=data, progress=False)
    card = json.loads((tmp_path / "t" / "model.json").read_text())
    fit = card["init"]["transplant"]
    assert fit["calibration_samples"] == 6 and fit["from"] == BASELINE and len(fit["r2"]) == 5
    assert card["init"]["ref"] == str(start)
    from robustir.train.shipped import training_stages

    assert training_stages(tmp_path / "t", card)[-1]["init"]["transplant"]["r2_min"] == fit["r2_min"]

    # a run stopped after step 1 and resumed to step 2 ends where the straight run did; the resume reads only the
    # run's own checkpoint (the Baseline file is gone) and keeps the transplant record
    moved = start.rename(tmp_path / "moved.safetensors")
    cfg = _cfg(tmp_path / "r", str(moved), tp)
    train(config_from_dict({**cfg, "train": {**cfg["train"], "steps": 1}}), data=data, progress=False)
    moved.unlink()
    resumed = train(config_from_dict(cfg), data=data, progress=False, resume=True)
    straight = load_file(str(tmp_path / "t" / "model.safetensors"))
    for k, v in straight.items():
        torch.testing.assert_close(resumed.weights[k], v, rtol=0, atol=0)
    assert json.loads((tmp_path / "r" / "model.json").read_text())["init"]["transplant"]["r2"] == fit["r2"]

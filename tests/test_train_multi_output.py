"""Deep supervision (`loss.outputs: all`): the restorer's every-output call (DWDN scales, RGDN steps, MPRNet stages,
cropped back on odd sizes), the multi-output loss against hand sums and bilinear downsampling, its config checks,
training equivalences (weights [0, 1] == final-only, bit for bit), CPU bf16 autocast in training, and resuming a
checkpoint written before the new config keys existed."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustir.errors import RobustirError
from robustir.models import restorer
from robustir.train import config_from_dict, l1_loss, l2_loss
from robustir.train.config import config_to_dict
from robustir.train.losses import multi_output_loss
from robustir.train.loop import TrainingData, _amp_context, _check_resume_compatible, train

DWDN = {"type": "DWDN", "n_feats1": 4, "n_feats": 4}
RGDN = {"type": "RGDN", "n_feature_2": 6, "num_steps": 3}
MPRNET = {"type": "MPRNet", "n_feat": 8, "scale_unetfeats": 4, "scale_orsnetfeats": 4, "num_cab": 1}


def _kernel(size: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    k = torch.rand(size, size, generator=g)
    return k / k.sum()


@pytest.mark.parametrize("spec", [DWDN, RGDN, MPRNET], ids=lambda s: s["type"])
def test_all_outputs_are_the_networks_outputs_cropped(spec: dict) -> None:
    torch.manual_seed(0)
    model = restorer(spec).eval()
    y = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))
    k = _kernel()
    with torch.no_grad():
        outs = model(y, kernel=k, all_outputs=True)
        final = model(y, kernel=k)
    expected = {"DWDN": 2, "RGDN": 3, "MPRNet": 3}[spec["type"]]
    assert len(outs) == expected
    select = model.call.select if model.call.select is not None else -1
    assert torch.equal(outs[select], final)
    if spec["type"] == "DWDN":
        # DWDN pads to 40x48 itself; the half scale of the padded run, cropped to ceil(37/2) x ceil(45/2)
        assert outs[0].shape == (2, 3, 19, 23)
        with torch.no_grad():
            raw = model.net(F.pad(y, (0, 3, 0, 3), mode="reflect"), k.expand(2, 1, 7, 7))
        torch.testing.assert_close(outs[0], raw[0][..., :19, :23], rtol=0, atol=0)
    else:
        assert all(o.shape == y.shape for o in outs)
    if spec["type"] == "RGDN":  # every unrolled step, in order
        with torch.no_grad():
            kt = k.expand(2, 1, 7, 7)
            raw = model.net(y, torch.flip(kt, dims=(-2, -1)), kt)
        for o, r in zip(outs, raw):
            torch.testing.assert_close(o, r, rtol=0, atol=0)


def test_single_output_network_gives_a_one_item_list() -> None:
    model = restorer({"type": "DnCNN", "in_nc": 3, "out_nc": 3, "nc": 8, "nb": 3}).eval()
    y = torch.rand(1, 3, 20, 21)
    with torch.no_grad():
        outs = model(y, all_outputs=True)
        assert len(outs) == 1 and torch.equal(outs[0], model(y))


def test_multi_output_loss_matches_hand_sum_and_bilinear_half_scale() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 32, 40, generator=g)
    full = torch.rand(3, 3, 32, 40, generator=g)
    half = torch.rand(3, 3, 16, 20, generator=g)
    # DWDN's official half-scale target: the sharp image bilinearly halved (== 2x2 means on even sizes)
    t_half = F.interpolate(target, scale_factor=0.5, mode="bilinear", align_corners=False)
    got = multi_output_loss(l1_loss, [half, full], target, [0.5, 2.0])
    want = 0.5 * (half - t_half).abs().flatten(1).mean(1) + 2.0 * (full - target).abs().flatten(1).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert got.shape == (3,)
    # default weights are 1 each; a zero weight drops its output
    torch.testing.assert_close(multi_output_loss(l2_loss, [full, full], target),
                               2 * (full - target).square().flatten(1).mean(1))
    torch.testing.assert_close(multi_output_loss(l2_loss, [half, full], target, [0.0, 1.0]), l2_loss(full, target))
    # odd sizes: a ceil-sized half output is scored against edge-replicated 2x2 means
    odd_t = torch.rand(1, 3, 5, 7, generator=g)
    odd_half = torch.zeros(1, 3, 3, 4)
    ref = F.avg_pool2d(F.pad(odd_t, (0, 1, 0, 1), mode="replicate"), 2)
    torch.testing.assert_close(multi_output_loss(l1_loss, [odd_half], odd_t), ref.abs().flatten(1).mean(1))
    with pytest.raises(RobustirError, match="every weight is zero"):
        multi_output_loss(l1_loss, [full], target, [0.0])
    with pytest.raises(RobustirError, match="2 weights for a network with 1 outputs"):
        multi_output_loss(l1_loss, [full], target, [1.0, 1.0])
    with pytest.raises(RobustirError, match="not the .* target at an integer scale"):
        multi_output_loss(l1_loss, [torch.rand(3, 3, 11, 20)], target)


def _cfg(out: Path, spec: dict, **loss: object) -> dict:
    return {"model": dict(spec), "data": {"train": "unused", "patch_size": 24, "batch_size": 2},
            "batch": [{"type": "blur", "kernels": "motion", "size": 7, "boundary": "circular"},
                      {"type": "noise", "sigma": 2}],
            "loss": {"type": "L1", **loss}, "optim": {"type": "Adam", "lr": 1e-3},
            "train": {"steps": 3, "out": str(out), "ckpt_every": 3, "log_every": 1, "device": "cpu"}}


def _images(n: int = 3, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bilinear",
                          align_corners=False)[0] for _ in range(n)]


def test_config_checks() -> None:
    ok = _cfg(Path("x"), DWDN, outputs="all", output_weights=[0.5, 1])
    assert config_from_dict(ok).loss.output_weights == [0.5, 1.0]
    for loss, message in [({"outputs": "some"}, "loss.outputs: expected one of final, all"),
                          ({"output_weights": [1, 1]}, "only with loss.outputs: all"),
                          ({"outputs": "all", "output_weights": [1, -1]}, "non-negative weights"),
                          ({"outputs": "all", "output_weights": [0, 0]}, "not all zero")]:
        with pytest.raises(RobustirError, match=message):
            config_from_dict(_cfg(Path("x"), DWDN, **loss))
    with pytest.raises(RobustirError, match="fp16 needs CUDA"):
        config_from_dict({**_cfg(Path("x"), DWDN), "train": {"device": "cpu", "amp": "fp16"}})


def test_wrong_weight_count_fails_at_the_first_step(tmp_path: Path) -> None:
    cfg = config_from_dict(_cfg(tmp_path / "r", DWDN, outputs="all", output_weights=[1, 1, 1]))
    with pytest.raises(RobustirError, match="3 weights for a network with 2 outputs"):
        train(cfg, data=TrainingData(targets=_images()), progress=False)


def test_zero_weight_on_the_half_scale_equals_final_only_training(tmp_path: Path) -> None:
    data = TrainingData(targets=_images())
    final = train(config_from_dict(_cfg(tmp_path / "final", DWDN)), data=data, progress=False)
    zero = train(config_from_dict(_cfg(tmp_path / "zero", DWDN, outputs="all", output_weights=[0, 1])), data=data,
                 progress=False)
    both = train(config_from_dict(_cfg(tmp_path / "both", DWDN, outputs="all")), data=data, progress=False)
    for key, value in final.weights.items():
        torch.testing.assert_close(zero.weights[key], value, rtol=0, atol=0)
    assert any(not torch.equal(both.weights[k], v) for k, v in final.weights.items())


def test_rgdn_every_step_loss_is_logged(tmp_path: Path) -> None:
    import json

    data = TrainingData(targets=_images())
    cfg = _cfg(tmp_path / "r", RGDN, outputs="all")
    cfg["loss"]["type"] = "L2"
    cfg["train"]["steps"] = 1
    train(config_from_dict(cfg), data=data, progress=False)
    first = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])
    # redo step 0 by hand: same initial weights and batch, the L2 loss summed over the three unrolled steps
    from robustir.train.batch import PrepContext, build_batch_prep, derive_seed
    from robustir.train.loop import build_restorer
    from robustir.train.sampling import MemorySource, PatchSampler, StepBatches

    c = config_from_dict(cfg)
    torch.manual_seed(derive_seed(0, "init", 0))
    model = build_restorer(c.model)
    steps = StepBatches(PatchSampler(MemorySource(data.targets, None), seed=0, scales=c.data.scales,
                                     augment=c.data.augment), c.data, start=0, total=1, rank=0, world_size=1)
    clean, _, ids, _ = next(iter(steps))
    torch.manual_seed(derive_seed(0, "step", 0, 0))
    batch = build_batch_prep(c.batch)(clean, PrepContext(seed=0, step=0, sample_ids=ids, model=model))
    with torch.no_grad():
        outs = model(batch.inputs, kernel=batch.kernel, all_outputs=True)
    want = sum(l2_loss(o, batch.targets) for o in outs).mean()
    assert first["loss"] == pytest.approx(float(want), rel=1e-5)


def test_cpu_bf16_training_runs_in_bf16_and_learns(tmp_path: Path) -> None:
    from robustir.attacks.speed import bf16_native

    cfg = config_from_dict({**_cfg(tmp_path / "bf16", RGDN), "train": {"steps": 1, "device": "cpu", "amp": "bf16",
                                                                          "out": str(tmp_path / "bf16")}})
    autocast, scaler = _amp_context(cfg, torch.device("cpu"))
    assert scaler is None
    conv = torch.nn.Conv2d(3, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with autocast():
            assert conv(torch.rand(1, 3, 8, 8)).dtype == torch.bfloat16
    # 'auto' stays float32 on CPU
    auto = config_from_dict({**_cfg(tmp_path / "a", RGDN), "train": {"device": "cpu"}})
    with _amp_context(auto, torch.device("cpu"))[0]():
        assert conv(torch.rand(1, 3, 8, 8)).dtype == torch.float32
    if not bf16_native("cpu"):
        with pytest.warns(RuntimeWarning, match="emulated"):
            _amp_context(cfg, torch.device("cpu"))
    raw = _cfg(tmp_path / "learn", {"type": "DnCNN", "in_nc": 3, "out_nc": 3, "nc": 16, "nb": 4})
    raw["batch"] = [{"type": "noise", "sigma": 25}]
    raw["optim"]["lr"] = 3e-3
    raw["train"].update(steps=40, amp="bf16", log_every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = train(config_from_dict(raw), data=TrainingData(targets=_images(4, 48)), progress=False)
    import json

    log = [json.loads(x) for x in (tmp_path / "learn" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    floats = [v for v in res.weights.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in floats)


def test_resume_accepts_a_checkpoint_from_before_new_config_keys() -> None:
    current = config_to_dict(config_from_dict(_cfg(Path("x"), DWDN)))
    saved = {s: dict(v) if isinstance(v, dict) else v for s, v in current.items()}
    del saved["loss"]["outputs"], saved["loss"]["output_weights"]
    _check_resume_compatible(saved, current)  # the missing keys read as their defaults
    changed = config_to_dict(config_from_dict(_cfg(Path("x"), DWDN, outputs="all")))
    with pytest.raises(RobustirError, match="loss.outputs: 'final' -> 'all'"):
        _check_resume_compatible(saved, changed)

"""Trainer units: config loading, losses (vs torch/skimage), schedules (vs torch), sampling and batch preparation
determinism, the pluggable batch-step hook (an FGSM replacement step checked against a hand computation), and a short
end-to-end run that learns."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustir.checks import parse_fraction
from robustir.errors import RobustirError
from robustir.train import (Batch, PrepContext, build_batch_prep, build_loss, charbonnier_loss, config_from_dict,
                            config_to_dict, l1_loss, l2_loss, load_config, lr_at, psnr_loss, register_noise_sampler,
                            register_step, select_samples)
from robustir.train.config import ScheduleConfig
from robustir.train.loop import TrainingData, build_restorer, train
from robustir.train.sampling import PatchSampler, stage_at

REPO = Path(__file__).resolve().parents[1]
TINY = {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "R"}


def tiny_config(out: Path, **sections: dict) -> dict:
    """A small valid config dict (tests override sections)."""
    cfg = {"model": dict(TINY), "data": {"train": "unused", "patch_size": 16, "batch_size": 4},
           "batch": [{"type": "noise", "sigma": 25}], "loss": {"type": "L2"}, "optim": {"type": "Adam", "lr": 1e-3},
           "train": {"steps": 10, "out": str(out), "ckpt_every": 5, "log_every": 5}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def images(n: int = 4, size: int = 32, channels: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Smooth random images (learnable structure, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        low = torch.rand(1, channels, size // 4, size // 4, generator=g)
        out.append(F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0])
    return out


# ------------------------------------------------------------------------------------------------------------ config

def test_config_roundtrip_and_defaults(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(tmp_path, schedule={"type": "cosine", "eta_min": "1/255"}))
    assert cfg.data.patch_size == 16 and cfg.optim.betas == [0.9, 0.999]
    assert cfg.schedule.eta_min == pytest.approx(1 / 255)
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize("raw, message", [
    ({"optim": {"type": "Adam", "lrr": 1}}, "unknown config key optim.lrr; valid keys in optim: type, lr"),
    ({"loss": {"type": "MSE"}}, "loss.type: expected one of L1, L2, PSNR, Charbonnier"),
    ({"train": {"steps": "many"}}, "train.steps: expected an integer"),
    ({"data": {"channels": 2}}, "data.channels: expected 1 or 3"),
    ({"schedule": {"type": "cosine", "periods": [5, 5], "eta_mins": [0.1]}}, "schedule.eta_mins: expected 2 values"),
    ({"train": {"ema": 1.5}}, "train.ema: expected a decay in [0, 1)"),
])
def test_config_errors_name_the_key(tmp_path: Path, raw: dict, message: str) -> None:
    with pytest.raises(RobustirError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(tiny_config(tmp_path, **raw))


def test_config_unknown_top_level_and_missing_model(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    raw["optimiser"] = {}
    with pytest.raises(RobustirError, match="unknown config key optimiser; valid keys: model, data, batch"):
        config_from_dict(raw)
    raw = tiny_config(tmp_path)
    del raw["model"]
    with pytest.raises(RobustirError, match="missing the required key model"):
        config_from_dict(raw)


def test_yaml_loading_overrides_and_shipped_configs(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    cfg = load_config(path, {"train.steps": 3, "optim.lr": "2e-4"})
    assert cfg.train.steps == 3 and cfg.optim.lr == pytest.approx(2e-4)
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(RobustirError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    shipped = sorted((REPO / "configs" / "train").glob("*.yaml"))
    assert shipped, "configs/train/*.yaml missing"
    from robustir.data import data_root

    have_data = data_root(required=False) is not None
    for p in shipped:
        c = load_config(p)
        try:
            build_batch_prep(c.batch)
        except RobustirError as exc:  # configs with Levin kernels read them from the data root
            if have_data or "data root" not in str(exc):
                raise
        build_restorer(c.model)


def test_base_configs_merge_section_by_section_and_refuse_cycles(tmp_path: Path) -> None:
    import yaml

    raw = tiny_config(tmp_path)
    raw["batch"] = [{"type": "noise", "sigma": 25}, {"type": "noise", "sigma": 5}]
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "sub").mkdir()
    child = {"base": "../parent.yaml", "model": {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 4, "nb": 2},
             "train": {"steps": 7}, "batch": [{"type": "noise", "sigma": 15}]}
    (tmp_path / "sub" / "child.yaml").write_text(yaml.safe_dump(child))
    (tmp_path / "grandchild.yaml").write_text("base: sub/child.yaml\noptim: {lr: 5.0e-4}\n")
    cfg = load_config(tmp_path / "grandchild.yaml", {"train.seed": 9})
    parent = load_config(tmp_path / "parent.yaml")
    assert cfg.model == child["model"]  # replaced whole: no key of the parent's spec leaks in
    assert cfg.batch == child["batch"]
    assert (cfg.train.steps, cfg.train.seed, cfg.optim.lr) == (7, 9, pytest.approx(5e-4))
    # every key the chain does not set is the parent's
    assert (cfg.optim.type, cfg.loss, cfg.data, cfg.train.out) == (parent.optim.type, parent.loss, parent.data,
                                                                  parent.train.out)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RobustirError, match="makes a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(RobustirError, match="missing.yaml \\(the base of .*orphan.yaml\\)"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "listed.yaml").write_text("base: [parent.yaml]\n")
    with pytest.raises(RobustirError, match="base must be the path of another config file"):
        load_config(tmp_path / "listed.yaml")


# ------------------------------------------------------------------------------------------------------------ losses

def test_losses_match_references() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 2, 8, 9, generator=g), torch.rand(3, 2, 8, 9, generator=g)
    for i in range(3):
        torch.testing.assert_close(l1_loss(x, y)[i], F.l1_loss(x[i], y[i]))
        torch.testing.assert_close(l2_loss(x, y)[i], F.mse_loss(x[i], y[i]))
        ref = -peak_signal_noise_ratio(y[i].double().numpy(), x[i].double().numpy(), data_range=1.0)
        assert float(psnr_loss(x, y)[i]) == pytest.approx(ref, abs=1e-4)
    # NAFNet's batch PSNRLoss: (10/ln10) * mean_b ln(MSE_b + 1e-8)
    nafnet = 10 / math.log(10) * torch.log(((x - y) ** 2).mean(dim=(1, 2, 3)) + 1e-8).mean()
    torch.testing.assert_close(psnr_loss(x, y).mean(), nafnet)
    d = (x - y).double().numpy()
    char = np.sqrt(d ** 2 + 1e-6).reshape(3, -1).mean(1)
    np.testing.assert_allclose(charbonnier_loss(x, y, 1e-3).numpy(), char, rtol=1e-5)
    torch.testing.assert_close(build_loss("L1", weight=2.0)(x, y), 2 * l1_loss(x, y))
    with pytest.raises(RobustirError, match="loss type 'SSIM' is unknown"):
        build_loss("SSIM")
    with pytest.raises(RobustirError, match="shape mismatch"):
        l1_loss(x, y[:, :1])


# ---------------------------------------------------------------------------------------------------------- schedule

def _torch_lrs(sched_factory, steps: int, lr: float = 1e-3) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sch = sched_factory(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def test_schedules_match_torch() -> None:
    cos = ScheduleConfig(type="cosine", eta_min=1e-6)
    ours = [lr_at(s, base_lr=1e-3, schedule=cos, total_steps=50) for s in range(50)]
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50, eta_min=1e-6), 50)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)
    ms = ScheduleConfig(type="multistep", milestones=[10, 30], gamma=0.2)
    ours = [lr_at(s, base_lr=1e-3, schedule=ms, total_steps=50) for s in range(50)]
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 30], gamma=0.2), 50)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # Restormer's CosineAnnealingRestartCyclicLR: constant 3e-4 over the first period, then cosine to 1e-6.
    rest = ScheduleConfig(type="cosine", periods=[92, 208], eta_mins=[3e-4, 1e-6], restart_weights=[1, 1])
    lrs = [lr_at(s, base_lr=3e-4, schedule=rest, total_steps=300) for s in range(300)]
    assert all(v == pytest.approx(3e-4) for v in lrs[:92])
    assert lrs[92] == pytest.approx(3e-4) and lrs[92 + 104] == pytest.approx(1e-6 + 0.5 * (3e-4 - 1e-6))
    assert lrs[-1] == pytest.approx(1e-6, abs=1e-7)
    warm = ScheduleConfig(type="constant", warmup=4)
    assert [lr_at(s, base_lr=1.0, schedule=warm, total_steps=9) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------- sampling

def test_stage_plan_and_sample_ids() -> None:
    cfg = config_from_dict(tiny_config(Path("x"), data={"stages": [{"iters": 3, "patch_size": 16, "batch_size": 4},
                                                                    {"iters": 2, "patch_size": 24, "batch_size": 2}]}))
    plans = [stage_at(s, cfg.data) for s in range(7)]
    assert [p.patch_size for p in plans] == [16, 16, 16, 24, 24, 24, 24]
    assert [p.first_id for p in plans] == [0, 4, 8, 12, 14, 16, 18]  # the last stage lasts to the end


def test_patch_sampler_is_a_function_of_seed_and_id() -> None:
    imgs = images(5, 32)
    a = PatchSampler(imgs, seed=3)
    b = PatchSampler(imgs, seed=3)
    ta, _ = a.batch([7, 1, 12], 16)
    tb, _ = b.batch([12], 16)
    torch.testing.assert_close(ta[2], tb[0], rtol=0, atol=0)
    assert not torch.equal(PatchSampler(imgs, seed=4).batch([7], 16)[0], a.batch([7], 16)[0])
    # within an epoch every image is visited once (sampling without replacement); track images by their mean
    c = PatchSampler([torch.full((1, 16, 16), float(i)) for i in range(5)], seed=0, augment=False)
    epoch = sorted(int(c.sample(k, 8)[0].mean()) for k in range(5, 10))
    assert epoch == [0, 1, 2, 3, 4]
    with pytest.raises(RobustirError, match="patch size 40 is larger than the smallest training image side"):
        a.check_patch(40)
    # paired crops stay aligned under the same flip/rotation
    pairs = PatchSampler(imgs, inputs=[1 - x for x in imgs], seed=0)
    t, i = pairs.batch([0, 1, 2], 8)
    torch.testing.assert_close(i, 1 - t)



def test_step_batches_iterate_to_the_last_step_and_match_the_loader() -> None:
    from robustir.train.sampling import StepBatches

    cfg = config_from_dict(tiny_config(Path("x"), data={"stages": [{"iters": 2, "patch_size": 16, "batch_size": 4},
                                                                    {"iters": 1, "patch_size": 8, "batch_size": 2}]}))
    steps = StepBatches(PatchSampler(images(5, 32), seed=1), cfg.data, start=1, total=4)
    items = list(steps)  # plain iteration stops at the last step instead of running forever
    assert len(items) == len(steps) == 3
    assert [(tuple(t.shape), p) for t, _, _, p in items] == [((4, 1, 16, 16), 16), ((2, 1, 8, 8), 8), ((2, 1, 8, 8), 8)]
    assert [ids.tolist() for _, _, ids, _ in items] == [[4, 5, 6, 7], [8, 9], [10, 11]]
    loaded = list(torch.utils.data.DataLoader(steps, batch_size=None))
    for (a, _, ia, _), (b, _, ib, _) in zip(items, loaded):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert torch.equal(ia, ib)
    with pytest.raises(IndexError, match="step index 3 out of range for 3 steps"):
        steps[3]


# ------------------------------------------------------------------------------------------------------------- batch

def _ctx(ids, seed=0, **kw) -> PrepContext:
    return PrepContext(seed=seed, step=0, sample_ids=torch.as_tensor(ids), **kw)


def test_noise_step_per_sample_and_batch_invariant() -> None:
    clean = torch.zeros(4, 1, 40, 40)
    prep = build_batch_prep([{"type": "noise", "sigma": [5, 50]}])
    b = prep(clean, _ctx([10, 11, 12, 13]))
    s255 = b.sigma * 255
    assert ((s255 >= 5) & (s255 <= 50)).all() and len(set(s255.tolist())) == 4
    std = (b.inputs - clean).flatten(1).std(1)
    torch.testing.assert_close(std, b.sigma, rtol=0.08, atol=0)
    alone = prep(clean[:1], _ctx([12]))  # sample 12 is the same whatever batch it sits in
    torch.testing.assert_close(alone.inputs[0], b.inputs[2], rtol=0, atol=0)
    fixed = build_batch_prep([{"type": "noise", "sigma": "25"}])(clean, _ctx([0, 1, 2, 3]))
    torch.testing.assert_close(fixed.sigma, torch.full((4,), 25 / 255))
    assert fixed.inputs.min() < 0  # DnCNN convention: not clipped


def test_mix_step_mixed_noise() -> None:
    clean = torch.zeros(64, 1, 8, 8)
    prep = build_batch_prep([{"type": "mix", "choices": [{"weight": 1, "steps": [{"type": "noise", "sigma": 25}]},
                                                         {"weight": 3, "steps": [{"type": "noise", "sigma": 50}]}]}])
    b = prep(clean, _ctx(range(64)))
    levels = sorted(set((b.sigma * 255).round().tolist()))
    assert levels == [25.0, 50.0]
    assert 32 <= int((b.sigma * 255 > 40).sum()) <= 60  # about 3/4 at sigma 50
    again = prep(clean[5:6], _ctx([5]))
    torch.testing.assert_close(again.inputs[0], b.inputs[5], rtol=0, atol=0)


@register_noise_sampler("test_typical_set")
def _largest_of_k(shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> torch.Tensor:
    """TS sampling as METHODS 4.5 reconstructs it: keep the largest-norm draw among K + 1 = 11."""
    draws = torch.randn((11, *shape), generator=generator) * sigma
    return draws[draws.flatten(1).norm(dim=1).argmax()]


def test_noise_sampler_hook_typical_set_mix() -> None:
    clean = torch.zeros(90, 1, 40, 40)
    prep = build_batch_prep([{"type": "mix", "choices": [
        {"weight": 2, "steps": [{"type": "noise", "sigma": 25}]},
        {"weight": 1, "steps": [{"type": "noise", "sigma": 25, "sampler": "test_typical_set"}]}]}])
    b = prep(clean, _ctx(range(90)))
    rms = b.inputs.flatten(1).square().mean(1).sqrt() * 255
    assert torch.allclose(b.sigma, torch.full((90,), 25 / 255))
    ts = rms > 25.55  # the largest of 11 chi draws sits ~1.5 standard deviations (0.44) above 25 for d = 1600
    assert 15 <= int(ts.sum()) <= 45  # about a third of the patches (TS-Pres 2 : 1)
    assert float(rms[~ts].mean()) == pytest.approx(25.0, abs=0.15)


def test_batch_prep_errors() -> None:
    with pytest.raises(RobustirError, match=r"batch\[0\]: unknown batch step 'nosie'; registered steps: .*noise"):
        build_batch_prep([{"type": "nosie"}])
    with pytest.raises(RobustirError, match=r"unknown option 'sigmas' for batch step 'noise'; valid options: sigma"):
        build_batch_prep([{"type": "noise", "sigmas": 1}])
    with pytest.raises(RobustirError, match="a range must be"):
        build_batch_prep([{"type": "noise", "sigma": [50, 5]}])
    with pytest.raises(RobustirError, match="unknown noise sampler 'typical'"):
        build_batch_prep([{"type": "noise", "sampler": "typical"}])
    assert select_samples(1, 0.5).tolist() == [True]  # a batch of one is all-replaced (FGSM recipe)
    assert select_samples(5, 0.5).tolist() == [True, True, False, False, False]


# A replacement step as the defenses will register it: FGSM on the current model with the training loss.
_CALLS: list[dict] = []


@register_step("test_fgsm", train_only=True)
def _test_fgsm(*, eps: float | str = 8 / 255, fraction: float = 0.5):
    eps = parse_fraction(eps, "eps")

    def step(batch: Batch, ctx: PrepContext) -> Batch:
        mask = select_samples(batch.size, fraction, ctx)
        y = batch.inputs.detach().clone().requires_grad_(True)
        loss = ctx.loss(ctx.model(y, sigma=batch.sigma, kernel=batch.kernel), batch.targets).sum()
        (grad,) = torch.autograd.grad(loss, y)
        _CALLS.append({"step": ctx.step, "training": ctx.training, "ids": ctx.sample_ids.tolist()})
        return batch.replace_inputs(mask, (y + eps * grad.sign()).clamp(0, 1).detach())
    return step


def test_replacement_hook_matches_hand_fgsm() -> None:
    model = build_restorer(TINY)
    clean = images(4, 16)
    clean = torch.stack(clean)
    prep = build_batch_prep([{"type": "noise", "sigma": 25}, {"type": "test_fgsm", "eps": "8/255"}])
    ctx = _ctx([0, 1, 2, 3], model=model, loss=l1_loss)
    out = prep(clean, ctx)
    noisy = build_batch_prep([{"type": "noise", "sigma": 25}])(clean, _ctx([0, 1, 2, 3])).inputs
    y = noisy.clone().requires_grad_(True)
    F.l1_loss(model(y), clean, reduction="none").flatten(1).mean(1).sum().backward()
    expected = (noisy + 8 / 255 * y.grad.sign()).clamp(0, 1)
    torch.testing.assert_close(out.inputs[:2], expected[:2], rtol=0, atol=0)
    torch.testing.assert_close(out.inputs[2:], noisy[2:], rtol=0, atol=0)
    assert out.replaced.tolist() == [True, True, False, False]
    assert build_batch_prep([{"type": "noise"}, {"type": "test_fgsm"}], for_eval=True).names == ["noise"]


# --------------------------------------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("norm_stats", ["running", "instance"])
def test_training_warns_when_eval_mode_would_swap_instance_norm_statistics(tmp_path: Path, norm_stats: str) -> None:
    from robustir.models import get_model_info

    spec = {**get_model_info("FPNMobileNet").test_spec, "norm_stats": norm_stats, "pad": "multiple"}
    raw = tiny_config(tmp_path / norm_stats, data={"channels": 3}, train={"steps": 1},
                      val={"every": 1, "quantize": False})
    raw["model"] = spec
    data = TrainingData(targets=images(4, 32, channels=3), val=images(1, 32, channels=3, seed=9))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config_from_dict(raw), data=data, progress=False)
    messages = [str(w.message) for w in caught if "instance norms track running statistics" in str(w.message)]
    assert len(messages) == (1 if norm_stats == "running" else 0)
    if messages:
        assert "norm_stats: instance" in messages[0] and "fpn.td1.1" in messages[0]


def test_training_learns_and_uses_the_hook(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from robustir.models import load_weights

    _CALLS.clear()
    data = TrainingData(targets=images(6, 32), val=images(2, 24, seed=9))
    raw = tiny_config(tmp_path / "run", batch=[{"type": "noise", "sigma": 25}, {"type": "test_fgsm", "eps": 0.01}],
                      train={"steps": 40, "ema": 0.9, "grad_clip": 1.0}, optim={"type": "AdamW", "lr": 3e-3},
                      schedule={"type": "cosine"}, val={"every": 20, "quantize": False})
    res = train(config_from_dict(raw), data=data, progress=False)
    assert len(_CALLS) == 40 and all(c["training"] for c in _CALLS)
    assert _CALLS[1]["ids"] == [4, 5, 6, 7]  # step 1 holds samples 4..7 of the run
    log = [__import__("json").loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val" in r]
    log = [r for r in log if "val" not in r]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in vals] == [20, 40] and vals[-1]["val"] == res.val
    # validation = the EMA model on the seeded noisy val images (the FGSM step is train-only and skipped there)
    from robustir.metrics import psnr
    from robustir.train.loop import evaluate

    noisy = build_batch_prep([{"type": "noise", "sigma": 25}])
    ema_model = build_restorer(TINY)
    load_weights(ema_model.net, tmp_path / "run" / "model.safetensors")
    again = evaluate(ema_model, data.val, noisy, seed=0, quantize=False)
    assert again["psnr"] == pytest.approx(res.val["psnr"], abs=1e-5)
    inputs = [noisy(v[None], _ctx([i], training=False)).inputs for i, v in enumerate(data.val)]
    noisy_psnr = float(torch.stack([psnr(y, v[None]) for y, v in zip(inputs, data.val)]).mean())
    assert res.val["psnr"] > noisy_psnr + 1.0
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    ck = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert set(weights) == {k[len("params_ema."):] for k in ck if k.startswith("params_ema.")}
    for k, v in weights.items():
        torch.testing.assert_close(v, ck[f"params_ema.{k}"], rtol=0, atol=0)
        assert not torch.equal(v, ck[f"params.{k}"])  # EMA differs from the raw weights
    net = build_restorer(TINY).net
    load_weights(net, tmp_path / "run" / "model.safetensors")
    assert (tmp_path / "run" / "config.yaml").is_file()
    with pytest.raises(RobustirError, match="pass --resume"):
        train(config_from_dict(raw), data=data, progress=False)


@pytest.mark.data
def test_blur_step_levin_matches_scipy(data_root: Path) -> None:
    from scipy.ndimage import convolve

    from robustir.degradations import levin_kernels

    clean = torch.stack(images(5, 48, channels=3))
    prep = build_batch_prep([{"type": "blur", "kernels": "levin"}, {"type": "noise", "sigma": [1, 2]}])
    out = prep(clean, _ctx([0, 1, 2, 3, 4]))
    assert out.kernel.shape == (5, 1, 27, 27)  # padded to the largest Levin kernel
    levin = [k.numpy() for k in levin_kernels()]
    for i in range(5):
        k = out.kernel[i, 0].numpy()
        padded = [np.pad(lk, [((27 - lk.shape[0]) // 2,) * 2, ((27 - lk.shape[1]) // 2,) * 2]) for lk in levin]
        assert any(np.allclose(p, k, atol=1e-7) for p in padded)  # one of the Levin kernels, centred
        ref = np.stack([convolve(clean[i, c].double().numpy(), k.astype(np.float64), mode="wrap") for c in range(3)])
        noise = (out.inputs[i] - torch.from_numpy(ref).float()).flatten()
        assert 1 / 255 * 0.8 < float(noise.std()) < 2 / 255 * 1.2  # what is left is the sigma in [1, 2] noise
        assert 1 <= float(out.sigma[i]) * 255 <= 2


def test_motion_blur_step_and_channels_last(tmp_path: Path) -> None:
    clean = torch.stack(images(3, 32))
    prep = build_batch_prep([{"type": "blur", "kernels": "motion", "size": 9, "intensity": [0.2, 0.8]}])
    a, b = prep(clean, _ctx([4, 5, 6])), prep(clean[1:2], _ctx([5]))
    torch.testing.assert_close(a.kernel[1], b.kernel[0], rtol=0, atol=0)
    torch.testing.assert_close(a.kernel.sum((1, 2, 3)), torch.ones(3))
    assert not torch.equal(a.kernel[0], a.kernel[1])
    # channels_last training (the CUDA default) works on CPU too and agrees with the contiguous run
    data = TrainingData(targets=images(4, 32))
    runs = {}
    for mode in ("off", "on"):
        raw = tiny_config(tmp_path / mode, train={"steps": 4, "channels_last": mode})
        runs[mode] = train(config_from_dict(raw), data=data, progress=False).weights
    for k in runs["off"]:
        torch.testing.assert_close(runs["on"][k], runs["off"][k], rtol=1e-4, atol=1e-5)

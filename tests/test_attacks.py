"""Attack engine: invariants, equality with the `cospgd` package and reference loops, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from cospgd import Attack as CosAttack
from torch import nn

from robustir.attacks import (
    L1,
    MSE,
    AdamStep,
    Attack,
    CondThreat,
    CosPGD,
    KernelSimplexBall,
    L2Ball,
    L2Step,
    LinfBall,
    Masked,
    SignStep,
    ZeroMean,
    preset,
)
from robustir.attacks import objectives as objectives_mod
from robustir.errors import RobustirError


def tiny_net(c: int = 3, seed: int = 0, bn: bool = False) -> nn.Module:
    """A small residual conv net (restoration-like: output shaped like the input)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(c, 8, 3, padding=1), nn.ReLU()]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, c, 3, padding=1)]
    body = nn.Sequential(*layers)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            return y - self.body(y)

    return Res().eval()


def images(n: int = 2, c: int = 3, h: int = 12, w: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, c, h, w, generator=g)
    x = (gt + 0.1 * torch.randn(n, c, h, w, generator=g)).clamp(0, 1)
    return x, gt


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------------ invariants

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_budget_and_range_per_sample(norm: str) -> None:
    net = tiny_net()
    x, gt = images(3)
    eps = torch.tensor([2.0, 4.0, 8.0]) / 255
    if norm == "linf":
        atk = Attack(LinfBall(eps), MSE(), SignStep(eps / 4), 5, True, gen())
    else:
        eps = eps * 20
        atk = Attack(L2Ball(eps), MSE(), L2Step(eps / 4), 5, True, gen())
    r = atk(net, x, ref=gt)
    d = r.x_adv - x
    size = d.abs().amax(dim=(1, 2, 3)) if norm == "linf" else torch.linalg.vector_norm(d, dim=(1, 2, 3))
    assert torch.all(size <= eps * (1 + 1e-5) + 1e-7)
    assert torch.all(size >= 0.5 * eps)  # the budget is actually used
    assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert torch.equal(r.delta, r.x_adv - x)
    assert r.loss_history.shape == (5, 3)
    # the attack raised the loss of every sample above the clean loss
    clean = ((net(x) - gt) ** 2).mean(dim=(1, 2, 3))
    assert torch.all(r.best_loss > clean)


def test_masked_threat_leaves_outside_untouched() -> None:
    net = tiny_net()
    x, gt = images(2)
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 3:8, 2:9] = 1
    for threat in (LinfBall(8 / 255), L2Ball(0.3)):
        upd = SignStep(2 / 255) if isinstance(threat, LinfBall) else L2Step(0.1)
        r = Attack(Masked(threat, mask), MSE(), upd, 4, True, gen())(net, x, ref=gt)
        assert torch.equal(r.x_adv * (1 - mask), x * (1 - mask))
        assert float((r.delta * mask).abs().max()) > 0
    # the call-time mask gives the same result as Masked(...)
    a = Attack(LinfBall(8 / 255), MSE(), SignStep(2 / 255), 3, True, gen(5))(net, x, ref=gt, mask=mask)
    b = Attack(Masked(LinfBall(8 / 255), mask), MSE(), SignStep(2 / 255), 3, True, gen(5))(net, x, ref=gt)
    assert torch.equal(a.x_adv, b.x_adv)


def test_noisy_observation_not_clipped_and_zero_mean() -> None:
    net = tiny_net(1)
    x, gt = images(2, 1)
    y = gt + 0.2 * torch.randn(gt.shape, generator=gen(3))  # leaves [0,1]
    r = preset("denoising_pgd_linf", generator=gen())(net, y, ref=gt)
    assert float(r.delta.abs().max()) <= 1 / 255 + 1e-7
    assert float(r.x_adv.min()) < 0.0 or float(r.x_adv.max()) > 1.0
    with pytest.raises(RobustirError, match="value_range"):
        preset("pgd")(net, y, ref=gt)
    r = preset("obsatk", generator=gen())(net, y, ref=gt)
    assert torch.allclose(r.delta.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-7)
    radius = (1 / 255) * (12 * 12) ** 0.5
    assert torch.all(torch.linalg.vector_norm(r.delta, dim=(1, 2, 3)) <= radius * (1 + 1e-5))


def test_batch_of_n_equals_n_runs_and_determinism() -> None:
    net = tiny_net()
    x, gt = images(3)
    eps = torch.tensor([1.0, 4.0, 12.0]) / 255
    batch = Attack(LinfBall(eps), MSE(), SignStep(eps / 4), 4, False)(net, x, ref=gt)
    for i in range(3):
        one = Attack(LinfBall(float(eps[i])), MSE(), SignStep(float(eps[i]) / 4), 4, False)(
            net, x[i:i + 1], ref=gt[i:i + 1])
        torch.testing.assert_close(batch.x_adv[i:i + 1], one.x_adv, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch.loss_history[:, i:i + 1], one.loss_history, rtol=1e-5, atol=1e-8)
    # same generator seed -> bit-identical; the global RNG is never drawn from
    state = torch.get_rng_state()
    a = preset("pgd", generator=gen(7))(net, x, ref=gt)
    b = preset("pgd", generator=gen(7))(net, x, ref=gt)
    c = preset("pgd", generator=gen(8))(net, x, ref=gt)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.loss_history, b.loss_history)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("name", ["pgd", "adam_pgd", "pgd_l2"])
def test_per_sample_generators_make_random_starts_batch_independent(name: str) -> None:
    net = tiny_net()
    x, gt = images(3)
    kw = {"steps": 3} if name != "adam_pgd" else {"steps": 3, "targeted": True}
    ref = {"target": gt} if name == "adam_pgd" else {"ref": gt}
    batch = preset(name, generator=[gen(10 + i) for i in range(3)], **kw)(net, x, **ref)
    for i in (2, 0):
        ref_i = {k: v[i:i + 1] for k, v in ref.items()}
        one = preset(name, generator=[gen(10 + i)], **kw)(net, x[i:i + 1], **ref_i)
        torch.testing.assert_close(batch.x_adv[i:i + 1], one.x_adv, rtol=0, atol=1e-6)
    # a single-sample list equals passing that generator itself
    solo = preset(name, generator=gen(10), **kw)(net, x[:1], **{k: v[:1] for k, v in ref.items()})
    assert torch.equal(solo.x_adv, preset(name, generator=[gen(10)], **kw)(
        net, x[:1], **{k: v[:1] for k, v in ref.items()}).x_adv)
    with pytest.raises(RobustirError, match="2 generators for a batch of 3"):
        preset(name, generator=[gen(1), gen(2)], **kw)(net, x, **ref)


def test_model_state_restored_and_no_param_grads() -> None:
    net = tiny_net(bn=True).train()
    net.body[2].eval()  # a module left in eval by the user stays so
    frozen = net.body[0].weight
    frozen.requires_grad_(False)
    x, gt = images(2)
    preset("pgd", steps=2, generator=gen())(net, x, ref=gt)
    assert net.training and not net.body[2].training and net.body[1].training
    assert not frozen.requires_grad
    assert all(p.requires_grad for n, p in net.named_parameters() if n != "body.0.weight")
    assert all(p.grad is None for p in net.parameters())
    # an exception inside the loop restores the flags too
    with pytest.raises(RobustirError):
        preset("pgd", steps=2)(net, x, ref=gt[:, :, :6])
    assert net.training and all(p.requires_grad for n, p in net.named_parameters() if n != "body.0.weight")


def test_best_so_far_tracking() -> None:
    net = tiny_net()
    x, gt = images(2)
    r = Attack(LinfBall(8 / 255), MSE(), SignStep(6 / 255), 6, True, gen())(net, x, ref=gt)
    top = torch.maximum(r.loss_history.max(dim=0).values, r.final_loss)
    torch.testing.assert_close(r.best_loss, top, rtol=0, atol=0)
    torch.testing.assert_close(((net(r.best_x_adv) - gt) ** 2).mean(dim=(1, 2, 3)), r.best_loss)
    torch.testing.assert_close(((net(r.x_adv) - gt) ** 2).mean(dim=(1, 2, 3)), r.final_loss)
    # targeted: best is the minimum
    target = torch.rand_like(gt)
    t = Attack(LinfBall(8 / 255), MSE(against="target", targeted=True), SignStep(1 / 255), 6, True, gen())(
        net, x, target=target)
    torch.testing.assert_close(t.best_loss, torch.minimum(t.loss_history.min(dim=0).values, t.final_loss))
    assert torch.all(t.best_loss < t.loss_history[0])


# ------------------------------------------------------------------------------------ equality with independent code

def test_step_functions_equal_cospgd_package() -> None:
    x, _ = images(2)
    g = torch.randn(x.shape, generator=gen(4))
    adv = (x + 0.02 * torch.randn(x.shape, generator=gen(5))).clamp(0, 1)
    for targeted in (False, True):
        sign = -1.0 if targeted else 1.0
        # L-inf
        ref = CosAttack.step_inf(adv.clone(), 8 / 255, g.clone(), x, 0.01, targeted)
        ours = adv.clone()
        proj = LinfBall(8 / 255).prepare(x)
        SignStep(0.01).step_(ours, g.clone() * sign, SignStep(0.01).init(ours, x), 0)
        proj.project_(ours)
        assert torch.equal(ours, ref)
        # L2
        ref = CosAttack.step_l2(adv.clone(), 0.5, g.clone(), x, 0.1, targeted)
        ours = adv.clone()
        upd = L2Step(0.1)
        upd.step_(ours, g.clone() * sign, upd.init(ours, x), 0)
        L2Ball(0.5).prepare(x).project_(ours)
        assert torch.equal(ours, ref)
    # random starts: same seed in the global RNG (package) and in our generator
    torch.manual_seed(11)
    ref = CosAttack.init_linf(x, 8 / 255)
    assert torch.equal(LinfBall(8 / 255).prepare(x).start("uniform", gen(11)), ref)
    torch.manual_seed(12)
    ref = CosAttack.init_l2(x, 0.7)
    assert torch.equal(L2Ball(0.7).prepare(x).start("uniform", gen(12)), ref)


def test_cospgd_scale_equals_package() -> None:
    g = gen(6)
    out, ref = torch.rand(1, 3, 10, 10, generator=g), torch.rand(1, 3, 10, 10, generator=g)
    for targeted in (False, True):
        pkg = CosAttack.cospgd_scale(out, ref, (out - ref) ** 2, targeted=targeted, one_hot=False).mean()
        ours = CosPGD(against="target" if targeted else "ref", targeted=targeted)(out, ref)
        assert torch.equal(ours[0], pkg)
    # per-sample: the package broadcasts (N,H,W) against (N,C,H,W), which is right only for N = 1
    outs, refs = torch.rand(2, 3, 10, 10, generator=g), torch.rand(2, 3, 10, 10, generator=g)
    batch = CosPGD()(outs, refs)
    for i in range(2):
        pkg = CosAttack.cospgd_scale(outs[i:i + 1], refs[i:i + 1], (outs[i:i + 1] - refs[i:i + 1]) ** 2,
                                     one_hot=False).mean()
        assert torch.equal(batch[i], pkg)


def _cospgd_package_loop(net: nn.Module, x: torch.Tensor, gt: torch.Tensor, eps: float, alpha: float, steps: int,
                         cos: bool, seed: int, norm: str = "inf") -> torch.Tensor:
    """The package's step functions driven as its `unet_backbones` trainer drives them (regression loss)."""
    torch.manual_seed(seed)
    images_ = CosAttack.init_linf(x, eps) if norm == "inf" else CosAttack.init_l2(x, eps)
    images_.requires_grad = True
    crit = nn.MSELoss(reduction="none")
    loss = crit(net(images_), gt)
    for _ in range(steps):
        if cos:
            loss = CosAttack.cospgd_scale(net(images_), gt, loss, one_hot=False)
        loss = loss.mean()
        loss.backward()
        step = CosAttack.step_inf if norm == "inf" else CosAttack.step_l2
        images_ = step(images_, eps, images_.grad, x, alpha, False)
        images_.requires_grad = True
        loss = crit(net(images_), gt)
    return images_.detach()


@pytest.mark.parametrize("kind", ["pgd", "cospgd", "pgd_l2"])
def test_full_attack_equals_cospgd_package_loop(kind: str) -> None:
    net = tiny_net()
    x, gt = images(1)
    if kind == "pgd_l2":
        ref = _cospgd_package_loop(net, x, gt, 0.5, 0.1, 5, False, 3, norm="two")
        ours = preset("pgd_l2", eps=0.5, alpha=0.1, rms=False, steps=5, generator=gen(3))(net, x, ref=gt)
    else:
        ref = _cospgd_package_loop(net, x, gt, 8 / 255, 0.01, 5, kind == "cospgd", 3)
        ours = preset(kind, eps=8 / 255, alpha=0.01, steps=5, generator=gen(3))(net, x, ref=gt)
    net.zero_grad()
    assert torch.equal(ours.x_adv, ref)


def test_pgd_equals_ten_line_reference_loop() -> None:
    net = tiny_net()
    x, gt = images(2)
    eps, alpha, steps = 6 / 255, 2 / 255, 5
    u = torch.rand(x.shape, generator=gen(9)).double().mul(2 * torch.tensor(eps, dtype=torch.float32).double())
    y = (x + (u - torch.tensor(eps, dtype=torch.float32).double()).float()).clamp(0, 1)
    for _ in range(steps):  # the textbook loop
        y.requires_grad_(True)
        loss = ((net(y) - gt) ** 2).mean(dim=(1, 2, 3)).sum()
        (grad,) = torch.autograd.grad(loss, y)
        y = y.detach() + alpha * grad.sign()
        y = (x + (y - x).clamp(-eps, eps)).clamp(0, 1)
    r = Attack(LinfBall(eps), MSE(), SignStep(alpha), steps, True, gen(9))(net, x, ref=gt)
    assert torch.equal(r.x_adv, y)


def test_fgsm_is_one_sign_step() -> None:
    net = tiny_net()
    x, gt = images(2)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(((net(xr) - gt) ** 2).mean(dim=(1, 2, 3)).sum(), xr)
    expected = (x + 8 / 255 * g.sign()).clamp(0, 1)
    r = preset("fgsm")(net, x, ref=gt)
    torch.testing.assert_close(r.x_adv, expected, rtol=0, atol=1e-7)
    assert r.loss_history.shape == (1, 2)


def test_adam_equals_torch_optim_adam_plus_projection() -> None:
    net = tiny_net()
    x, _ = images(2)
    eps, lr, steps = 8 / 255, 1e-2, 6
    clean = net(x).detach()
    delta = torch.randn(x.shape, generator=gen(2)).clamp(-eps, eps)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):  # the seed-001 author's loop (METHODS.md §3.2)
        loss = -((net(x + delta) - clean) ** 2).mean(dim=(1, 2, 3)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    r = Attack(LinfBall(eps), MSE(against="clean_output"), AdamStep(lr), steps, "normal", gen(2))(net, x)
    net.zero_grad()
    torch.testing.assert_close(r.x_adv, x + delta.detach(), rtol=0, atol=1e-7)


def test_cospgd_is_exactly_pgd_on_one_channel() -> None:
    net = tiny_net(1)
    x, gt = images(2, 1)
    objectives_mod._WARNED_GRAY = False
    with pytest.warns(UserWarning, match="one-channel"):
        c = preset("cospgd", generator=gen(4))(net, x, ref=gt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        c2 = preset("cospgd", generator=gen(4))(net, x, ref=gt)
    p = preset("pgd", generator=gen(4))(net, x, ref=gt)
    assert torch.equal(c.x_adv, p.x_adv) and torch.equal(c.loss_history, p.loss_history)
    assert torch.equal(c2.x_adv, p.x_adv)


def test_own_output_objective_has_zero_gradient_at_zero() -> None:
    net = tiny_net()
    x, _ = images(2)
    clean = net(x).detach()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(MSE(against="clean_output")(net(xr), clean).sum(), xr)
    assert float(g.abs().max()) == 0.0
    with pytest.raises(RobustirError, match="random_start"):
        Attack(LinfBall(8 / 255), MSE(against="clean_output"), SignStep(0.01), 5, False)
    r = preset("adam_pgd", steps=20, lr=2e-3, generator=gen())(net, x)
    assert torch.all(r.best_loss > 0) and torch.all(r.loss_history[-1] > r.loss_history[0])


def test_targeted_and_region_objectives() -> None:
    net = tiny_net()
    x, gt = images(2)
    target = x.clone()
    target[..., 4:8, 4:8] = 1.0
    region = torch.zeros(1, 1, 12, 12)
    region[..., 4:8, 4:8] = 1
    obj = MSE(against="target", targeted=True, region=region)
    r = preset("adam_pgd_targeted", steps=30, lr=5e-3, region=region, generator=gen())(net, x, target=target)
    before = obj(net(x), target)
    assert torch.all(r.best_loss < 0.95 * before)  # the tiny net moves ~10 % within 8/255
    torch.testing.assert_close(obj(net(r.best_x_adv), target), r.best_loss)
    # region mean equals the mean of the selected entries
    out = net(x).detach()
    sel = ((out - target) ** 2)[..., 4:8, 4:8].mean(dim=(1, 2, 3))
    torch.testing.assert_close(obj(out, target), sel)
    torch.testing.assert_close(L1()(out, gt), (out - gt).abs().mean(dim=(1, 2, 3)))


# ---------------------------------------------------------------------------------------------- conditioning inputs

class KernelNet(nn.Module):
    """A toy non-blind deblurrer: y + conv(y, kernel) * w, and a noise-level-conditioned denoiser."""

    def forward(self, y: torch.Tensor, *, kernel: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        n = y.shape[0]
        k = kernel.reshape(n, 1, *kernel.shape[-2:])
        blurred = torch.cat([nn.functional.conv2d(y[i:i + 1].transpose(0, 1), k[i:i + 1], padding="same")
                             .transpose(0, 1) for i in range(n)])
        s = sigma.reshape(-1, 1, 1, 1) if sigma is not None else 0.0
        return 2 * y - blurred + s * y


def test_condition_threats_kernel_and_sigma() -> None:
    x, gt = images(2, 1, 10, 10)
    k0 = torch.ones(5, 5) / 25
    atk = Attack(LinfBall(4 / 255), MSE(), SignStep(1 / 255), 4, True, gen(),
                 cond_threats={"kernel": CondThreat(KernelSimplexBall(0.01), SignStep(0.004), random_start=True),
                               "sigma": CondThreat(LinfBall(0.02, value_range=(0.0, None)), SignStep(0.01))})
    r = atk(KernelNet(), x, ref=gt, cond={"kernel": k0, "sigma": 0.1})
    k = r.cond_adv["kernel"]
    assert k.shape == (2, 1, 5, 5)
    assert float(k.min()) >= 0.0
    torch.testing.assert_close(k.sum(dim=(-2, -1)), torch.ones(2, 1), rtol=0, atol=1e-6)
    assert float((k - k0).abs().max()) <= 0.01 + 1e-6 and float((k - k0).abs().max()) > 1e-3
    s = r.cond_adv["sigma"]
    assert s.shape == (2,) and torch.all((s - 0.1).abs() <= 0.02 + 1e-7) and torch.all(s != 0.1)
    # kernel alone (no image threat): the image is unchanged
    only = Attack(None, MSE(), SignStep(0.01), 3, False,
                  cond_threats={"kernel": CondThreat(KernelSimplexBall(0.01), SignStep(0.004))})(
        KernelNet(), x, ref=gt, cond={"kernel": k0})
    assert torch.equal(only.x_adv, x) and only.best_loss.shape == (2,)
    assert torch.all(only.best_loss >= only.loss_history[0])


# ---------------------------------------------------------------------------------------------- performance options

def test_checkpoint_channels_last_amp_compile_options() -> None:
    net = tiny_net()
    x, gt = images(2, 3, 16, 16)
    base = preset("pgd", steps=3, generator=gen())(net, x, ref=gt)
    ck = preset("pgd", steps=3, generator=gen(), checkpoint=True)(net, x, ref=gt)
    assert torch.equal(base.x_adv, ck.x_adv)
    assert "forward" not in vars(net.body)  # patches removed
    cl = preset("pgd", steps=3, generator=gen(), channels_last=True)(net, x, ref=gt)
    torch.testing.assert_close(cl.x_adv, base.x_adv, rtol=0, atol=1e-6)
    assert all(p.is_contiguous() for p in net.parameters())
    bf = preset("pgd", steps=3, generator=gen(), amp_dtype=torch.bfloat16)(net, x, ref=gt)
    assert bf.x_adv.dtype == torch.float32 and float((bf.x_adv - x).abs().max()) <= 8 / 255 + 1e-7
    torch.testing.assert_close(bf.loss_history, base.loss_history, rtol=5e-2, atol=1e-3)
    comp = preset("pgd", steps=3, generator=gen(), compile="aot_eager")(net, x, ref=gt)
    torch.testing.assert_close(comp.x_adv, base.x_adv, rtol=0, atol=1e-6)


def test_amp_dtype_names_and_errors() -> None:
    from robustir.attacks.speed import bf16_native, parse_amp_dtype

    for name, dtype in (("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16), ("fp16", torch.float16),
                        ("half", torch.float16), ("none", None), ("fp32", None), (None, None),
                        (torch.bfloat16, torch.bfloat16)):
        assert parse_amp_dtype(name) is dtype
    # names as written in experiment files and on the command line give the same attack as the dtype
    net = tiny_net()
    x, gt = images(2, 3, 16, 16)
    by_name = preset("pgd", steps=2, generator=gen(), amp_dtype="bf16")
    assert by_name.amp_dtype is torch.bfloat16
    torch.testing.assert_close(by_name(net, x, ref=gt).x_adv,
                               preset("pgd", steps=2, generator=gen(), amp_dtype=torch.bfloat16)(net, x, ref=gt).x_adv,
                               rtol=0, atol=0)
    for bad in ("int8", torch.float64, 3):
        with pytest.raises(RobustirError, match="amp_dtype"):
            preset("pgd", amp_dtype=bad)
    assert isinstance(bf16_native("cpu"), bool) and bf16_native("cuda") == (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# ------------------------------------------------------------------------------------------------------- bad input

def test_bad_input_errors() -> None:
    net = tiny_net()
    x, gt = images(2)
    for eps in (0.0, -1.0, float("nan"), 2.0):
        with pytest.raises(RobustirError, match="eps"):
            LinfBall(eps)
    with pytest.raises(RobustirError, match="eps"):
        L2Ball(torch.tensor([0.5, 0.0]))
    with pytest.raises(RobustirError, match="steps"):
        Attack(LinfBall(0.1), MSE(), SignStep(0.01), 0)
    for alpha in (0.0, -0.1, float("inf")):
        with pytest.raises(RobustirError, match="step size"):
            SignStep(alpha)
    with pytest.raises(RobustirError, match="shape mismatch"):
        preset("pgd")(net, x, ref=gt[:1])
    with pytest.raises(RobustirError, match="needs target"):
        preset("adam_pgd_targeted")(net, x)
    with pytest.raises(RobustirError, match="needs ref"):
        preset("pgd")(net, x)
    with pytest.raises(RobustirError, match="binary"):
        preset("pgd")(net, x, ref=gt, mask=torch.full((1, 1, 12, 12), 0.5))
    with pytest.raises(RobustirError, match="mask"):
        preset("pgd")(net, x, ref=gt, mask=torch.ones(1, 1, 5, 5))
    with pytest.raises(RobustirError, match="one value per sample"):
        Attack(LinfBall(torch.tensor([0.1, 0.2, 0.3])), MSE(), SignStep(0.01), 2)(net, x, ref=gt)
    with pytest.raises(RobustirError, match="step 0 returned shape"):
        preset("pgd")(lambda y: y[:, :, :5], x, ref=gt)

    def nan_after_two(y: torch.Tensor, calls: list[int] = []) -> torch.Tensor:  # noqa: B006
        calls.append(1)
        return y * (float("nan") if len(calls) > 2 else 1.0)

    with pytest.raises(RobustirError, match="non-finite at step 2"):
        preset("pgd", steps=4)(nan_after_two, x, ref=gt)
    with pytest.raises(RobustirError, match="unknown attack"):
        preset("pgdd")
    with pytest.raises(RobustirError, match="unknown option"):
        preset("pgd", epsilon=0.1)
    with pytest.raises(RobustirError, match="random_start"):
        Attack(LinfBall(0.1), MSE(), SignStep(0.01), 2, "gaussian")
    with pytest.raises(RobustirError, match="ZeroMean"):
        ZeroMean(L2Ball(0.1))
    with pytest.raises(RobustirError, match="cond"):
        Attack(None, MSE(), SignStep(0.01), 2, cond_threats={"kernel": CondThreat(KernelSimplexBall(0.01),
                                                                                   SignStep(0.01))})(net, x, ref=gt)


# ------------------------------------------------------------------------------------------------------------- CLI

def test_cli_attack_writes_lossless_outputs(tmp_path) -> None:  # noqa: ANN001
    from robustir.cli import main
    from robustir.data.io import load_tensors, save_image

    src = tmp_path / "in"
    src.mkdir()
    g = gen(3)
    for i in range(2):
        save_image(torch.rand(1, 16, 16, generator=g), src / f"{i}.png")
    out = tmp_path / "out"
    code = main(["attack", "--model", "dncnn-s25", "--attack", "pgd", "--eps", "4/255", "--alpha", "1/255",
                 "--steps", "2", "--sigma", "25", "--input", str(src), "--out", str(out)])
    assert code == 0
    t = load_tensors(out / "adversarial" / "0.safetensors")
    assert set(t) == {"x_adv", "x", "gt", "delta"}
    assert float(t["delta"].abs().max()) <= 4 / 255 + 1e-7 and float(t["delta"].abs().max()) > 0
    torch.testing.assert_close(t["x_adv"] - t["x"], t["delta"])
    for sub in ("previews/0_adv.png", "restored/0_clean.png", "restored/0_adv.png", "perturbation/1.png"):
        assert (out / sub).is_file()
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("image,clean_psnr,adv_psnr") and len(lines) == 3
    assert main(["attack", "--model", "dncnn-s25", "--attack", "nope", "--input", str(src), "--out", str(out)]) == 2
    # speed options reach the attack and are recorded with the adversarial inputs
    import json

    from safetensors import safe_open

    fast = tmp_path / "fast"
    assert main(["attack", "--model", "dncnn-s25", "--eps", "4/255", "--steps", "2", "--sigma", "25", "--amp", "bf16",
                 "--channels-last", "--checkpoint", "--input", str(src), "--out", str(fast)]) == 0
    with safe_open(str(fast / "adversarial" / "0.safetensors"), "pt") as f:
        opts = json.loads(f.metadata()["options"])
    assert opts["amp_dtype"] == "bf16" and opts["channels_last"] is True and opts["checkpoint"] is True
    assert "compile" not in opts
    d = load_tensors(fast / "adversarial" / "0.safetensors")["delta"]
    assert 0 < float(d.abs().max()) <= 4 / 255 + 1e-7
    assert main(["attack", "--model", "dncnn-s25", "--amp", "int8", "--input", str(src), "--out", str(fast)]) == 2


def test_cli_attack_checks_every_input_before_writing(tmp_path, capsys) -> None:  # noqa: ANN001
    from robustir.cli import main
    from robustir.data.io import load_tensors, save_image

    src = tmp_path / "in"
    src.mkdir()
    g = gen(4)
    save_image(torch.rand(1, 16, 16, generator=g), src / "a_gray.png")
    rgb = torch.rand(3, 16, 16, generator=g)
    save_image(rgb, src / "b_rgb.png")
    base = ["attack", "--model", "dncnn-s25", "--eps", "2/255", "--steps", "1", "--sigma", "25", "--input", str(src)]
    # mixed gray/RGB folder, an RGB image for a gray model, a corrupt file: clear errors and no output folder
    assert main([*base, "--out", str(tmp_path / "mixed")]) == 2
    capsys.readouterr()
    assert main([*base, "--channels", "3", "--out", str(tmp_path / "rgb")]) == 2
    assert "--channels 3 gave the images 3 channel(s)" in capsys.readouterr().err
    (src / "c_bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    assert main([*base, "--channels", "1", "--out", str(tmp_path / "bad")]) == 2
    assert not any((tmp_path / d).exists() for d in ("mixed", "rgb", "bad"))
    (src / "c_bad.png").unlink()
    # --channels 1 converts the RGB image with BT.601 luma before noise and attack
    out = tmp_path / "ok"
    assert main([*base, "--channels", "1", "--out", str(out)]) == 0
    gt = load_tensors(out / "adversarial" / "b_rgb.safetensors")["gt"]
    luma = (torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1) * (rgb * 255).round() / 255).sum(0, keepdim=True)
    torch.testing.assert_close(gt, luma.clamp(0, 1), rtol=0, atol=1e-6)


def test_cli_attack_refuses_images_too_small_before_writing(tmp_path, capsys) -> None:  # noqa: ANN001
    import numpy as np

    from robustir.cli import main
    from robustir.data.io import save_image

    tiny, small = tmp_path / "tiny", tmp_path / "small"
    tiny.mkdir()
    small.mkdir()
    save_image(torch.rand(1, 32, 32, generator=gen(5)), tiny / "a_ok.png")
    save_image(torch.rand(1, 9, 40, generator=gen(6)), tiny / "b_thin.png")  # not the first file: the probe misses it
    save_image(torch.rand(3, 20, 20, generator=gen(7)), small / "a.png")
    kernel = np.zeros((23, 23), np.float32)
    kernel[11, 5:18] = 1 / 13
    np.save(tmp_path / "k.npy", kernel)
    base = ["attack", "--eps", "2/255", "--steps", "1"]
    assert main([*base, "--model", "dncnn-s25", "--sigma", "25", "--input", str(tiny), "--out",
                 str(tmp_path / "o1")]) == 2
    assert "b_thin.png is 9x40, smaller than the 11x11 SSIM window of the metrics" in capsys.readouterr().err
    assert main([*base, "--model", "dwdn-small", "--kernel", str(tmp_path / "k.npy"), "--input", str(small), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "a.png is 20x20, smaller than the 23x23 --kernel; images must be at least 23x23" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()

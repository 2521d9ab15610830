"""NAFNet family: parity with the official code, published shapes, local pooling, LayerNorm2d gradients, odd sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robustir.errors import RobustirError
from robustir.models import build, restorer
from robustir.models.nafnet import (AttentionPool, LayerNorm2d, NAFNet, box_mean, fast_box_mean, layer_norm_2d,
                                    local_pool_kernels)

TINY = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}


def _case(data_root: Path, name: str) -> tuple[dict, Path]:
    folder = data_root / "parity" / name
    return json.loads((folder / "case.json").read_text()), folder


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give beta/gamma (zero at construction, making every block an identity) and all weights non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("name", ["nafnet", "nafnet_local", "baseline", "baseline_local"])
def test_parity_with_official_outputs(data_root: Path, name: str) -> None:
    case, folder = _case(data_root, name)
    net = build(case["robustir_spec"]).eval()
    net.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    x = load_file(folder / "input.safetensors")["x"]
    y = load_file(folder / "output.safetensors")[case["robustir_call"]["compare"]]
    with torch.no_grad():
        out = net(x)
        wrapped = restorer(net)(x)  # the uniform call must reproduce the official test-time pad-and-crop
    assert out.shape == y.shape == x.shape
    assert (out - y).abs().max().item() <= case["atol"]
    assert torch.equal(wrapped, out)
    # the fixture input distinguishes the two: a wrong pool type or missing residual would be far off
    assert (x - y).abs().max().item() > 100 * case["atol"]


@pytest.mark.parametrize("name", ["nafnet_local", "baseline_local"])
def test_local_pool_windows_match_official_converter(data_root: Path, name: str) -> None:
    case, _ = _case(data_root, name)
    net = build(case["robustir_spec"])
    windows = {n: list(m.kernel) for n, m in net.named_modules() if isinstance(m, AttentionPool)}
    assert windows == case["pool_kernel_sizes_after_convert"]
    published = case["published_config"].get("pool_kernel_sizes_after_convert")
    if published is None:  # nafnet_local records the released windows only in its notes; they equal Baseline's
        published = [[384, 384], [192, 192], [96, 96], [48, 48], [24, 24]]
    assert [list(k) for k in local_pool_kernels((1, 3, 256, 256), 4)] == published


def test_local_differs_from_global_on_large_inputs(data_root: Path) -> None:
    case, folder = _case(data_root, "nafnet_local")
    spec = dict(case["robustir_spec"])
    local = build(spec).eval()
    spec.update(type="NAFNet")
    del spec["train_size"], spec["fast_imp"]
    glob = build(spec).eval()
    state = load_file(folder / "weights.safetensors")
    local.load_state_dict(state, strict=True)
    glob.load_state_dict(state, strict=True)
    x = load_file(folder / "input.safetensors")["x"]
    with torch.no_grad():
        assert (local(x) - glob(x)).abs().max().item() > 0.1
        small = x[..., :16, :16]  # every map no larger than its window: local pooling is the global mean
        assert torch.allclose(local(small), glob(small), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "type_"), [("nafnet", "NAFNet"), ("baseline", "Baseline")])
def test_published_config_shapes_and_count(data_root: Path, name: str, type_: str) -> None:
    case, folder = _case(data_root, name)
    published = case["published_config"]
    net = build({"type": type_, **published["kwargs"]})
    assert sum(p.numel() for p in net.parameters()) == published["num_params"]
    shapes = json.loads((folder / published["state_dict_shapes_file"]).read_text())
    shapes = shapes.get("shapes", shapes)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == shapes
    for other in published.get("other_published_configs", []):
        assert sum(p.numel() for p in build({"type": type_, **other["kwargs"]}).parameters()) == other["num_params"]


@pytest.mark.parametrize(("preset", "count"), [
    ("nafnet-gopro-w32", 17_111_907), ("baseline-gopro-w32", 17_023_875), ("intermediate-gopro-w32", 17_019_683),
    ("intermediate-relu-gopro-w32", 17_019_683), ("nafnet-gopro-w32-local", 17_111_907),
    ("baseline-gopro-w32-local", 17_023_875)])
def test_preset_parameter_counts(preset: str, count: int) -> None:
    # METHODS.md section 5 (Intermediate = Baseline with SCA; the SE->SCA swap removes c/2 parameters per block)
    assert sum(p.numel() for p in build(preset).parameters()) == count


def test_variants_differ_only_in_activation_and_attention() -> None:
    base = build({"type": "Baseline", **TINY, "dw_expand": 1})
    inter = build({"type": "Baseline", **TINY, "dw_expand": 1, "attention": "sca"})
    relu = build({"type": "Baseline", **TINY, "dw_expand": 1, "attention": "sca", "activation": "relu"})
    naf = build({"type": "NAFNet", **TINY})
    assert isinstance(base.encoders[0][0].act, nn.GELU) and hasattr(base.encoders[0][0], "se")
    assert isinstance(inter.encoders[0][0].act, nn.GELU) and hasattr(inter.encoders[0][0], "sca")
    assert isinstance(relu.encoders[0][0].act, nn.ReLU)
    assert inter.state_dict().keys() == relu.state_dict().keys()
    assert any(".sca.1." in k for k in naf.state_dict()) and not any(".se." in k for k in naf.state_dict())
    with pytest.raises(RuntimeError, match="se"):  # a Baseline checkpoint cannot load into Intermediate
        inter.load_state_dict(base.state_dict(), strict=True)
    x = torch.rand(1, 3, 16, 16)
    _randomise(inter), relu.load_state_dict(inter.state_dict())
    with torch.no_grad():
        assert (inter(x) - relu(x)).abs().max().item() > 1e-4


def _official_layernorm_backward(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor,
                                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The closed form of the official LayerNormFunction.backward (NAFNet arch_util.py), written from its maths."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + eps).sqrt()
    g = grad * weight.view(1, -1, 1, 1)
    gx = (g - y * (g * y).mean(1, keepdim=True) - g.mean(1, keepdim=True)) / (var + eps).sqrt()
    return gx, (grad * y).sum(dim=(0, 2, 3)), grad.sum(dim=(0, 2, 3))


def test_layernorm2d_gradcheck_and_official_backward() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = (1 + 0.2 * torch.randn(5, dtype=torch.float64, generator=g)).requires_grad_()
    b = (0.1 * torch.randn(5, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c, d: layer_norm_2d(a, c, d, 1e-6), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda a, c, d: layer_norm_2d(a, c, d, 1e-6), (x, w, b))
    grad = torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad(layer_norm_2d(x, w, b, 1e-6), (x, w, b), grad)
    for a, e in zip(ours, _official_layernorm_backward(x.detach(), w.detach(), grad, 1e-6)):
        assert torch.allclose(a, e, atol=1e-12, rtol=0)
    # the module equals torch's layer norm over the channel axis
    ln = LayerNorm2d(5).double()
    with torch.no_grad():
        ln.weight.copy_(w), ln.bias.copy_(b)
        ref = F.layer_norm(x.permute(0, 2, 3, 1), (5,), w, b, eps=1e-6).permute(0, 3, 1, 2)
        assert torch.allclose(ln(x), ref, atol=1e-12, rtol=0)


def test_box_mean_equals_direct_average() -> None:
    x = torch.rand(2, 3, 11, 14, dtype=torch.float64)
    out = box_mean(x, (4, 5))
    direct = F.avg_pool2d(x, (4, 5), stride=1)  # valid windows (8 x 10), then replicate-padded (1,2) x (2,2)
    assert out.shape == x.shape
    assert torch.allclose(out[..., 1:9, 2:12], direct, atol=1e-12, rtol=0)
    assert torch.allclose(out[..., 0, 2:12], direct[..., 0, :])
    assert torch.allclose(out[..., -1, -1], direct[..., -1, -1])
    const = torch.full((1, 2, 20, 30), 0.25)
    assert torch.allclose(fast_box_mean(const, (6, 6), (5, 5)), const)
    assert torch.allclose(AttentionPool((8, 8), fast_imp=True, max_ratio=(2, 2))(const), const)


@pytest.mark.parametrize("type_", ["NAFNet", "Baseline", "NAFNetLocal"])
@pytest.mark.parametrize("size", [(17, 23), (5, 9), (32, 16)])
def test_odd_sizes_forward_backward(type_: str, size: tuple[int, int]) -> None:
    spec = {"type": type_, **TINY}
    if type_ == "NAFNetLocal":
        spec["train_size"] = [1, 3, 8, 8]
    net = _randomise(build(spec))
    x = torch.rand(2, 3, *size, requires_grad=True)
    out = restorer(net)(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_checkpointing_gives_identical_gradients() -> None:
    net = _randomise(NAFNet(**TINY, train_size=(1, 3, 8, 8)))
    x = torch.rand(1, 3, 20, 20)
    grads, outs = [], []
    for flag in (False, True):
        net.checkpointing = flag
        net.zero_grad()
        xi = x.clone().requires_grad_()
        out = net(xi)
        out.square().sum().backward()
        grads.append((xi.grad, net.intro.weight.grad.clone()))
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6, rtol=0)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5, rtol=0)


def test_clear_errors() -> None:
    net = build({"type": "NAFNet", **TINY})
    with pytest.raises(RobustirError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(1, 1, 16, 16))
    with pytest.raises(RobustirError, match="same length"):
        NAFNet(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1])
    with pytest.raises(RobustirError, match="activation"):
        build({"type": "Baseline", **TINY, "activation": "swish"})
    with pytest.raises(RobustirError, match="attention"):
        build({"type": "NAFNet", **TINY, "attention": "cbam"})
    with pytest.raises(RobustirError, match="train_size"):
        NAFNet(**TINY, train_size=(16,))
    with pytest.raises(RobustirError, match="unknown keyword"):
        build({"type": "NAFNet", **TINY, "dw_expnd": 2})


def test_strict_round_trip_and_small_presets() -> None:
    for preset in ("nafnet-small", "baseline-small", "intermediate-small", "intermediate-relu-small"):
        a, b = _randomise(build(preset), seed=1), build(preset)
        b.load_state_dict(a.state_dict(), strict=True)
        x = torch.rand(1, 3, 24, 40)
        with torch.no_grad():
            assert torch.equal(a(x), b(x))

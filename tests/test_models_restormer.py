"""Restormer: parity with the official code (model and test-script pipeline), published shapes, gradients, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robustir.errors import RobustirError
from robustir.models import build, restorer
from robustir.models.restormer import Attention, LayerNorm, Restormer

TINY = {"type": "Restormer", "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 2, 2, 4]}


@pytest.fixture
def case(data_root: Path) -> tuple[dict, Path]:
    folder = data_root / "parity" / "restormer"
    return json.loads((folder / "case.json").read_text()), folder


def test_parity_model_and_test_pipeline(case: tuple[dict, Path]) -> None:
    meta, folder = case
    net = build(meta["robustir_spec"]).eval()
    net.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    inputs, outputs = load_file(folder / "input.safetensors"), load_file(folder / "output.safetensors")
    with torch.no_grad():
        y = net(inputs["x"])
        # Motion_Deblurring/test.py: reflect-pad bottom/right to x8, run, crop (the fixture stores it unclamped)
        y_pipe = restorer(net)(inputs["x_odd"])
    assert (y - outputs["y"]).abs().max().item() <= meta["atol"]
    assert y_pipe.shape == inputs["x_odd"].shape
    assert (y_pipe - outputs["y_testpipe"]).abs().max().item() <= meta["atol"]
    # zero padding instead of reflect would not reproduce the official pipeline
    with torch.no_grad():
        zero = net(F.pad(inputs["x_odd"], (0, 4, 0, 4)))[..., :20, :28]
    assert (zero - outputs["y_testpipe"]).abs().max().item() > 10 * meta["atol"]


def test_published_shapes_and_counts(case: tuple[dict, Path]) -> None:
    meta, folder = case
    published = meta["published_config"]
    net = build("restormer-gopro")
    assert sum(p.numel() for p in net.parameters()) == published["num_params"] == 26_126_644
    shapes = json.loads((folder / published["state_dict_shapes_file"]).read_text())
    shapes = shapes.get("shapes", shapes)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == shapes
    variants = {"dual-pixel": {"inp_channels": 6, "dual_pixel_task": True}, "BiasFree": {"LayerNorm_type": "BiasFree"}}
    for other in published["other_published_configs"]:
        kwargs = next(v for k, v in variants.items() if k in other["name"])
        assert sum(p.numel() for p in build({"type": "Restormer", **kwargs}).parameters()) == other["num_params"]


def test_layer_norms_match_reference() -> None:
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    ln = LayerNorm(6, "WithBias").double()
    with torch.no_grad():
        ln.body.weight.uniform_(0.5, 1.5), ln.body.bias.normal_()
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.body.weight, ln.body.bias, eps=1e-5).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), ref, atol=1e-12, rtol=0)
    bf = LayerNorm(6, "BiasFree").double()
    var = x.var(1, keepdim=True, unbiased=False)
    assert torch.allclose(bf(x), x / torch.sqrt(var + 1e-5), atol=1e-12, rtol=0)  # not centred
    assert torch.autograd.gradcheck(lambda a: ln(a), (x.clone().requires_grad_(),))


def test_attention_is_a_channel_attention() -> None:
    att = Attention(8, 2, bias=False).double()
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    perm = torch.randperm(36)
    # MDTA's attention map is C x C from global spatial dot products, so with the depthwise conv reduced to its
    # centre tap the block is pixel-permutation equivariant (a spatial attention with position mixing would not be)
    with torch.no_grad():
        att.qkv_dwconv.weight.zero_()
        att.qkv_dwconv.weight[:, :, 1, 1] = 1.0
    out = att(x).flatten(2)[..., perm]
    out_perm = att(x.flatten(2)[..., perm].reshape(1, 8, 6, 6)).flatten(2)
    assert torch.allclose(out, out_perm, atol=1e-10, rtol=0)


@pytest.mark.parametrize("size", [(13, 21), (8, 8), (3, 30)])
def test_odd_sizes_forward_backward(size: tuple[int, int]) -> None:
    net = build(TINY)
    x = torch.rand(2, 3, *size, requires_grad=True)
    out = restorer(net)(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_checkpointing_gives_identical_gradients() -> None:
    net = build(TINY)
    x = torch.rand(1, 3, 16, 24)
    grads = []
    for flag in (False, True):
        net.checkpointing = flag
        xi = x.clone().requires_grad_()
        net(xi).square().sum().backward()
        grads.append(xi.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("extra", [{}, {"LayerNorm_type": "BiasFree", "bias": True}], ids=["release", "biasfree-bias"])
def test_strip_mode_equals_whole_image(extra: dict) -> None:
    torch.manual_seed(0)
    net = build({**TINY, "num_blocks": [1, 2, 1, 1], **extra}).double()
    with torch.no_grad():  # move off the ones/zeros initialisation so every weight and bias matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(2, 3, 40, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        xi = x.clone().requires_grad_()
        net.zero_grad()
        out = net(xi)
        (out.square().sum() + out[:, :, 3:17].sum()).backward()
        return out.detach(), xi.grad, [p.grad.clone() for p in net.parameters()]

    ref_out, ref_gx, ref_gp = run()
    # 7 rows: strips that do not divide 40 and a last strip of 5; 1 row: every halo case; 25 and 64: level 1 only / off
    for rows, ckpt in [(7, False), (1, False), (5, True), (25, False), (64, False)]:
        net.strip_rows, net.checkpointing = rows, ckpt
        out, gx, gp = run()
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
        torch.testing.assert_close(gx, ref_gx, rtol=0, atol=1e-12)
        for a, b in zip(gp, ref_gp):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref_out, rtol=0, atol=1e-12)
    net.strip_rows, net.checkpointing = 0, False


def test_strip_mode_on_the_official_weights(case: tuple[dict, Path]) -> None:
    meta, folder = case
    net = build({**meta["robustir_spec"], "strip_rows": 3}).eval()
    net.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    inputs, outputs = load_file(folder / "input.safetensors"), load_file(folder / "output.safetensors")
    with torch.no_grad():
        assert (net(inputs["x"]) - outputs["y"]).abs().max().item() <= meta["atol"]


def test_clear_errors() -> None:
    net = build(TINY)
    with pytest.raises(RobustirError, match="multiples of 8"):
        net(torch.rand(1, 3, 12, 16))
    with pytest.raises(RobustirError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(1, 1, 16, 16))
    with pytest.raises(RobustirError, match="heads"):
        Restormer(dim=6, heads=[4, 2, 2, 4])
    with pytest.raises(RobustirError, match="LayerNorm_type"):
        Restormer(dim=8, LayerNorm_type="Batch")
    for bad in (-1, 2.5, True):
        with pytest.raises(RobustirError, match="strip_rows must be a non-negative integer"):
            Restormer(dim=8, strip_rows=bad)

"""SwinIR, ECNDNet, RDDCNN-B, DeamNet and CTNet: parity with the official code (fixtures), published configurations,
the uniform restorer on odd sizes, the deformable conv and CTNet's tiling against independent references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models import build, get_model_info, restorer
from robustir.models.ctnet import forward_chop
from robustir.models.rddcnn import DeformConv2d, bilinear_gather
from robustir.models.swinir import relative_position_index, shift_attention_mask, symmetric_pad_to

FIXTURES = ["swinir", "ecndnet", "rddcnn_b", "deamnet", "ctnet"]
TYPES = ["SwinIR", "ECNDNet", "RDDCNN_B", "DeamNet", "CTNet"]


def _case(data_root: Path, name: str) -> tuple[dict, Path]:
    folder = data_root / "parity" / name
    return json.loads((folder / "case.json").read_text()), folder


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_parity(data_root: Path, name: str) -> None:
    case, folder = _case(data_root, name)
    net = build(case["robustir_spec"]).eval()
    net.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    inputs = load_file(folder / "input.safetensors")
    call = case["robustir_call"]
    with torch.no_grad():
        out = net(*[inputs[a] for a in call["args"]])
    if call["select"] is not None:
        out = out[call["select"]]
    ref = load_file(folder / "output.safetensors")[call["compare"]]
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= case["atol"], f"{name}: max abs error {err:.3e} > atol {case['atol']}"
    # the comparison is meaningful: the output is far from the input (the models are residual)
    assert (ref - inputs["x"]).abs().max().item() > 100 * case["atol"]


@pytest.mark.parametrize("name", FIXTURES)
def test_published_configuration(data_root: Path, name: str) -> None:
    case, folder = _case(data_root, name)
    pub = json.loads((folder / "published_state_dict_shapes.json").read_text())
    net = build({"type": case["robustir_spec"]["type"], **pub["kwargs"]})
    assert sum(p.numel() for p in net.parameters()) == pub["num_params"] == case["published_config"]["num_params"]
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {k: list(v) for k, v in pub["shapes"].items()}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in net.state_dict().items() if v.dtype != torch.float32}
    assert dtypes == pub.get("non_float32_dtypes", {})
    alt = case.get("published_config_alternative")
    if alt is not None:
        other = build({"type": case["robustir_spec"]["type"], **alt["kwargs"]})
        assert sum(p.numel() for p in other.parameters()) == alt["num_params"]


@pytest.mark.parametrize("preset,count", [("swinir-gray-dn", 11_497_681), ("ecndnet", 519_178),
                                          ("rddcnn-b", 556_302), ("deamnet", 2_225_825),
                                          ("deamnet-real", 2_228_131)])
def test_presets_have_published_sizes(preset: str, count: int) -> None:
    assert sum(p.numel() for p in build(preset).parameters()) == count


def test_deamnet_unused_parameters_match_fixture(data_root: Path) -> None:
    case, _ = _case(data_root, "deamnet")
    net = build("deamnet")
    listed = sorted(n for n, _ in net.named_parameters() if n.startswith(net.unused_parameter_prefixes))
    assert listed == sorted(case["unused_parameters_in_official_forward"])


def test_released_style_checkpoint_loads(data_root: Path) -> None:
    """Released checkpoints come from DataParallel (`module.` prefix); they load strictly after unwrapping."""
    from robustir.models.weights import load_weights

    _, folder = _case(data_root, "rddcnn_b")
    state = load_file(folder / "weights.safetensors")
    net = build("rddcnn-b")
    small = build({"type": "RDDCNN_B", "depth": 17, "n_channels": 16})
    load_weights(small, {"module." + k: v for k, v in state.items()})
    assert torch.equal(small.dncnn[0].p_conv.weight, state["dncnn.0.p_conv.weight"])
    with pytest.raises(RobustirError):
        load_weights(net, state)  # width 16 into the width-64 network: wrongly shaped keys


@pytest.mark.parametrize("type_name", TYPES)
def test_restorer_odd_size_forward_backward(type_name: str) -> None:
    spec = get_model_info(type_name).test_spec
    assert spec is not None and spec["type"] == type_name
    net = build(spec)
    model = restorer(net)
    channels = {"SwinIR": "in_chans", "ECNDNet": "channels", "RDDCNN_B": "image_channels", "CTNet": "n_colors"}
    c = spec.get(channels.get(type_name, ""), 1)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, c, 19, 23, generator=gen).requires_grad_(True)
    out = model(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # DeamNet keeps official layers that its forward never uses (see the deamnet fixture notes)
    skip = getattr(net, "unused_parameter_prefixes", ())
    for pname, p in net.named_parameters():
        if pname.startswith(skip):
            assert p.grad is None
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_swinir_restorer_uses_official_flip_padding() -> None:
    net = build(get_model_info("SwinIR").test_spec).eval()
    x = torch.rand(1, 1, 13, 9)
    ws = net.window_size
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, (13 // ws + 1) * ws - 13),
                                                 (0, (9 // ws + 1) * ws - 9)), mode="symmetric"))
    with torch.no_grad():
        assert torch.allclose(restorer(net)(x), net(padded)[..., :13, :9], atol=1e-6)
    # symmetric padding longer than the image repeats the mirror (numpy's 'symmetric' mode)
    tiny = torch.arange(6.0).view(1, 1, 2, 3)
    ref = np.pad(tiny.numpy(), ((0, 0), (0, 0), (0, 5), (0, 6)), mode="symmetric")
    assert torch.equal(symmetric_pad_to(tiny, 7, 9), torch.from_numpy(ref))


def test_swinir_internal_pad_and_masks() -> None:
    net = build(get_model_info("SwinIR").test_spec).eval()
    x = torch.rand(1, 1, 10, 14)
    with torch.no_grad():
        # the internal reflect pad equals padding outside and cropping
        outside = net(F.pad(x, (0, 2, 0, 2), mode="reflect"))[..., :10, :14]
        assert torch.allclose(net(x), outside, atol=1e-6)
    idx = relative_position_index(3)
    # token (0,0) vs (2,2): offset (-2,-2) shifted by ws-1=2 -> (0,0) -> index 0; the diagonal is the centre entry
    assert idx[0, 8].item() == 0 and idx[8, 0].item() == 24 and set(idx.diagonal().tolist()) == {12}
    mask = shift_attention_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window lies in one region
    assert set(mask[-1].unique().tolist()) == {-100.0, 0.0}


def test_deform_conv_zero_offsets_is_plain_conv() -> None:
    layer = DeformConv2d(inc=2, outc=3, kernel_size=3, padding=1, bias=False, modulation=True)
    with torch.no_grad():
        layer.conv.weight.normal_()
        for conv in (layer.p_conv, layer.m_conv):
            conv.weight.zero_()
        layer.p_conv.bias.zero_()
        layer.m_conv.bias.fill_(30.0)  # sigmoid(30) = 1 to float precision
    x = torch.randn(2, 2, 7, 9)
    assert torch.allclose(layer(x), F.conv2d(x, layer.conv.weight, padding=1), atol=1e-5)


def test_deform_conv_matches_grid_sample_reference() -> None:
    """Independent reference: torch's grid_sample (bilinear, zeros outside) at the official sampling positions."""
    torch.manual_seed(1)
    layer = DeformConv2d(inc=2, outc=3, kernel_size=3, padding=1, bias=False, modulation=True).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.6)
    x = torch.randn(2, 2, 6, 8, dtype=torch.float64)
    offset = layer.p_conv(x)
    m = torch.sigmoid(layer.m_conv(x))
    n, (h, w) = 9, x.shape[-2:]
    samples = []
    for k in range(n):
        ki, kj = divmod(k, 3)
        py = torch.arange(h, dtype=x.dtype).view(1, h, 1) + (ki - 1) + offset[:, k]
        px = torch.arange(w, dtype=x.dtype).view(1, 1, w) + (kj - 1) + offset[:, n + k]
        grid = torch.stack((2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1), dim=-1)
        samples.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
                       * m[:, k:k + 1])
    ref = torch.einsum("bnchw,ocn->bohw", torch.stack(samples, 1), layer.conv.weight.reshape(3, 2, 9))
    assert offset.abs().max() > 1.0  # samples leave the image and land between pixels
    assert torch.allclose(layer(x), ref, atol=1e-10)
    # gradients reach both the image and the offsets
    xr = x.clone().requires_grad_(True)
    layer(xr).sum().backward()
    assert xr.grad.abs().sum() > 0 and layer.p_conv.weight.grad.abs().sum() > 0


def test_bilinear_gather_integer_positions() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    py = torch.tensor([[0.0, 2.0, -1.0, 1.5]])
    px = torch.tensor([[3.0, 0.0, 0.0, 3.5]])
    got = bilinear_gather(x, py, px)[0, 0]
    # (1.5, 3.5): half of rows 1-2 at column 3 and half of the zero outside -> (7 + 11) / 4
    assert torch.allclose(got, torch.tensor([3.0, 8.0, 0.0, 4.5]))


class _Pointwise(nn.Module):
    """A patch-size 'network' that acts pixel by pixel: any correct stitching reproduces it exactly."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-2:] == (self.patch_size, self.patch_size)
        self.calls += 1
        return torch.tanh(3 * x) + 0.5 * x


@pytest.mark.parametrize("size", [(12, 12), (13, 50), (29, 41), (7, 20), (48, 37)])
def test_ctnet_chop_stitching_is_exact_for_pointwise_nets(size: tuple[int, int]) -> None:
    net = _Pointwise(12)
    x = torch.randn(2, 3, *size)
    y = forward_chop(net, x, chunk=5)
    assert y.shape == x.shape
    assert torch.allclose(y, torch.tanh(3 * x) + 0.5 * x, atol=1e-6)


def test_ctnet_chop_on_real_net() -> None:
    net = build(get_model_info("CTNet").test_spec).eval()
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(forward_chop(net, x), net(x), atol=1e-6)  # one tile: the plain forward
        big = torch.rand(2, 1, 21, 30)
        batched = forward_chop(net, big, chunk=4)
        single = torch.cat([forward_chop(net, big[i:i + 1], chunk=64) for i in range(2)])
        assert torch.allclose(batched, single, atol=1e-6)
        # tiles are local: the top-left (patch/4)^2 corner comes from the first tile only
        assert torch.allclose(batched[..., :3, :3], net(big[..., :12, :12])[..., :3, :3], atol=1e-6)


@pytest.mark.parametrize("spec,match", [
    ({"type": "SwinIR", "upsampler": "pixelshuffle", "upscale": 2}, "upsampler"),
    ({"type": "SwinIR", "depths": [2, 2], "num_heads": [2]}, "same length"),
    ({"type": "CTNet", "pos_every": True}, "pos_every"),
    ({"type": "CTNet", "n_feats": 2, "patch_size": 12, "patch_dim": 3, "num_heads": 5}, "divisible"),
    ({"type": "DeamNet", "channels": 8}, "channels"),
    ({"type": "ECNDNet", "channels": 0}, "channels"),
    ({"type": "RDDCNN_B", "n_channels": -1}, "n_channels"),
    ({"type": "DeamNet", "width": 16}, "unknown keyword"),
])
def test_bad_constructor_arguments(spec: dict, match: str) -> None:
    with pytest.raises(RobustirError, match=match):
        build(spec)


@pytest.mark.parametrize("type_name,shape", [("SwinIR", (1, 3, 16, 16)), ("ECNDNet", (1, 2, 9, 9)),
                                             ("RDDCNN_B", (1, 3, 9, 9)), ("DeamNet", (1, 1, 20, 16)),
                                             ("DeamNet", (1, 3, 16, 16)), ("CTNet", (1, 1, 13, 12))])
def test_bad_input_shapes(type_name: str, shape: tuple[int, ...]) -> None:
    net = build(get_model_info(type_name).test_spec)
    with pytest.raises(RobustirError, match=type_name):
        net(torch.rand(*shape))

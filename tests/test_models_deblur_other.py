"""MPRNet, DeblurGANv2 (FPN-MobileNet), DWDN, RGDN: official parity, published shapes, kernel conventions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robustir.degradations import Blur, psf2otf as blur_psf2otf
from robustir.errors import RobustirError
from robustir.models import build, get_model_info, restorer
from robustir.models.deblur_kernels import batch_kernels, odd_square
from robustir.models.dwdn import median3x3, psf2otf, wiener_deconv_features
from robustir.models.rgdn import grad_data_fitting

SMALL = {
    "MPRNet": {"type": "MPRNet", "n_feat": 8, "scale_unetfeats": 4, "scale_orsnetfeats": 4, "num_cab": 1,
               "reduction": 2},
    "FPNMobileNet": {"type": "FPNMobileNet", "num_filters": 8, "num_filters_fpn": 16, "width_mult": 0.25},
    "DWDN": {"type": "DWDN", "n_feats1": 4, "n_feats": 4},
    "RGDN": {"type": "RGDN", "n_feature_2": 6, "num_steps": 2},
}
# the DeblurGANv2 generators at their registered test sizes (FPNInception kept out of SMALL: it needs 128² inputs)
GENERATORS = {kind: dict(get_model_info(kind).test_spec) for kind in ("FPNMobileNet", "FPNInception")}
CASES = ["mprnet", "deblurganv2_fpn_mobilenet", "dwdn", "rgdn"]


def _case(data_root: Path, name: str) -> tuple[dict, Path]:
    folder = data_root / "parity" / name
    return json.loads((folder / "case.json").read_text()), folder


def _fixture_net(case: dict, folder: Path, **overrides: object) -> torch.nn.Module:
    net = build({**case["robustir_spec"], **overrides}).eval()
    net.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    return net


def _lively(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw conv weights at unit gain (as the fixtures do): PyTorch's default init damps RGDN's steps to ~1e-6."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
    return net


def _kernel(size: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.rand(size, generator=g) ** 3
    return k / k.sum()


# ---------------------------------------------------------------------------------------------- parity fixtures
@pytest.mark.parametrize("name", CASES)
def test_parity_with_official_outputs(data_root: Path, name: str) -> None:
    case, folder = _case(data_root, name)
    net = _fixture_net(case, folder)
    inputs = load_file(folder / "input.safetensors")
    outputs = load_file(folder / "output.safetensors")
    call = case["robustir_call"]
    with torch.no_grad():
        out = net(*[inputs[a] for a in call["args"]])
    y = out if call["select"] is None else out[call["select"]]
    expected = outputs[call["compare"]]
    atol = case.get("atol_per_output", {}).get(call["compare"], case["atol"])
    assert y.shape == expected.shape
    assert (y - expected).abs().max().item() <= atol
    # the outputs differ from the inputs by far more than atol, so the comparison is meaningful
    assert (y - inputs["x"][..., :y.shape[-2], :y.shape[-1]]).abs().max().item() > 100 * atol


def test_mprnet_stage_outputs_and_test_pipeline(data_root: Path) -> None:
    case, folder = _case(data_root, "mprnet")
    net = _fixture_net(case, folder)
    inputs, outputs = load_file(folder / "input.safetensors"), load_file(folder / "output.safetensors")
    with torch.no_grad():
        final, stage2, stage1 = net(inputs["x"])
        piped = restorer(net)(inputs["x_odd"])  # reflect-pad bottom/right to x8, select outs[0], crop
    assert (stage2 - outputs["y_stage2"]).abs().max().item() <= case["atol"]
    assert (stage1 - outputs["y_stage1"]).abs().max().item() <= case["atol"]
    assert piped.shape == inputs["x_odd"].shape
    assert (piped - outputs["y_testpipe"]).abs().max().item() <= case["atol"]


def test_deblurganv2_predict_mode_norm_statistics(data_root: Path) -> None:
    case, folder = _case(data_root, "deblurganv2_fpn_mobilenet")
    net = _fixture_net(case, folder, norm_stats="per_image")
    x = load_file(folder / "input.safetensors")["x"]
    expected = load_file(folder / "output.safetensors")["y_train_mode"]
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        y = net(x)
    assert (y - expected).abs().max().item() <= case["atol_per_output"]["y_train_mode"]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in buffers.items())  # running stats untouched
    net.set_norm_stats("running")
    with torch.no_grad():
        y_eval = net(x)
    assert (y_eval - load_file(folder / "output.safetensors")["y"]).abs().max().item() <= case["atol"]


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_deblurganv2_instance_mode_uses_training_normalisation_in_eval(kind: str) -> None:
    spec = GENERATORS[kind]
    torch.manual_seed(0)
    net = build(spec)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from their (0, 1) start
            net(x * 0.5)
    net.eval()
    reference = build(spec).eval()
    reference.load_state_dict(net.state_dict())
    for m in reference.modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.track_running_stats = False  # PyTorch then normalises every image by its own statistics in eval mode
    net.set_norm_stats("instance")
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        y, y_ref = net(x), reference(x)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in buffers.items())
    with torch.no_grad():
        modes = {}
        for mode in ("running", "per_image"):
            net.set_norm_stats(mode)
            modes[mode] = net(x)
    assert (modes["running"] - y).abs().max() > 1e-3  # instance norms: running vs own statistics
    assert (modes["per_image"] - y).abs().max() > 1e-3  # batch norms: per-image vs running statistics
    with pytest.raises(RobustirError, match="norm_stats"):
        net.set_norm_stats("batch")


def test_deblurganv2_restorer_reproduces_predict_padding(data_root: Path) -> None:
    case, folder = _case(data_root, "deblurganv2_fpn_mobilenet")
    net = _fixture_net(case, folder)
    img = torch.rand(1, 3, 37, 64, generator=torch.Generator().manual_seed(3))
    # predict.py: (v - 0.5) / 0.5, zero-pad to ((h // 32) + 1) * 32 (a whole extra block when h is a multiple of 32)
    x = F.pad(img * 2 - 1, (0, 96 - 64, 0, 64 - 37))
    with torch.no_grad():
        ref = (net(x)[..., :37, :64] + 1) / 2
        out = restorer(net)(img)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", list(GENERATORS))
def test_deblurganv2_pad_multiple_pads_only_to_the_next_multiple_of_32(kind: str) -> None:
    spec = GENERATORS[kind]
    torch.manual_seed(0)
    nets = {pad: build({**spec, "pad": pad}).eval() for pad in ("multiple", "predict")}
    nets["predict"].load_state_dict(nets["multiple"].state_dict(), strict=True)  # not a weight: either loads
    seen: dict[str, list[tuple[int, ...]]] = {"multiple": [], "predict": []}
    for pad, net in nets.items():
        net.register_forward_pre_hook(lambda module, args, pad=pad: seen[pad].append(tuple(args[0].shape[-2:])))
    low = nets["multiple"].min_size
    img = torch.rand(1, 3, low, low + 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = restorer(nets["multiple"])(img)  # a multiple of 32 goes in as it is, as the official trainer's crops do
        assert torch.equal(out, (nets["multiple"](img * 2 - 1) + 1) / 2)
        restorer(nets["multiple"])(img[..., : low - 5, : low + 1])
        restorer(nets["predict"])(img)
    assert seen["multiple"] == [(low, low + 32)] * 3
    assert seen["predict"] == [(low + 32, low + 64)]  # predict.py adds a whole block even on a multiple of 32
    with pytest.raises(RobustirError, match="pad must be one of"):
        build({**spec, "pad": "reflect"})


def test_dwdn_does_not_modify_callers_kernel_and_normalises(data_root: Path) -> None:
    case, folder = _case(data_root, "dwdn")
    net = _fixture_net(case, folder)
    inputs = load_file(folder / "input.safetensors")
    kernel = inputs["kernel"].clone()
    with torch.no_grad():
        half, full = net(inputs["x"], kernel)
        scaled = net(inputs["x"], 3.0 * kernel)[-1]  # the model divides by the sum: scale-invariant
    assert torch.equal(kernel, inputs["kernel"])
    assert (half - load_file(folder / "output.safetensors")["y_half"]).abs().max().item() <= case["atol"]
    assert torch.allclose(scaled, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_published_parameter_count_and_state_dict_shapes(data_root: Path, name: str) -> None:
    case, folder = _case(data_root, name)
    published = json.loads((folder / "published_state_dict_shapes.json").read_text())
    preset = {"mprnet": "mprnet", "deblurganv2_fpn_mobilenet": "deblurganv2-fpn-mobilenet", "dwdn": "dwdn",
              "rgdn": "rgdn"}[name]
    net = build(preset)
    assert sum(p.numel() for p in net.parameters()) == case["published_config"]["num_params"]
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == published["shapes"]


# ---------------------------------------------------------------------------------------------- kernel conventions
@pytest.mark.parametrize("size", [(7, 7), (6, 6), (5, 8)])
def test_rgdn_data_term_is_blur_adjoint_of_residual(size: tuple[int, int]) -> None:
    """The adapter's (k, kt) make RGDN's gradient exactly A^T(Ax - y) for robustir's zero-boundary Blur."""
    k = _kernel(size, 1)
    x, y = torch.rand(2, 3, 17, 23, dtype=torch.float64), torch.rand(2, 3, 17, 23, dtype=torch.float64)
    kt = odd_square(batch_kernels(k.double(), x, "RGDN"))
    got = grad_data_fitting(x, y, torch.flip(kt, dims=(-2, -1)), kt)
    op = Blur(k.double(), boundary="zeros")
    assert torch.allclose(got, op.A_adjoint(op.A(x) - y), atol=1e-12, rtol=0)


@pytest.mark.parametrize("size", [(7, 7), (6, 6), (5, 8)])
def test_dwdn_otf_matches_blur_operator(size: tuple[int, int]) -> None:
    k = _kernel(size, 2).double()[None, None]
    x = torch.rand(1, 1, 20, 26, dtype=torch.float64)
    assert torch.allclose(psf2otf(k, (20, 26)), blur_psf2otf(k, (20, 26)), atol=1e-12, rtol=0)
    circ = torch.fft.irfft2(torch.fft.rfft2(x) * psf2otf(k, (20, 26)), s=(20, 26))
    assert torch.allclose(circ, Blur(k, boundary="circular").A(x), atol=1e-12, rtol=0)


def test_dwdn_wiener_step_inverts_blur_with_the_given_kernel() -> None:
    """Feature-space Wiener deconvolution undoes Blur(k), and the flipped kernel does markedly worse."""
    g = torch.Generator().manual_seed(4)
    x = F.avg_pool2d(torch.rand(1, 2, 52, 60, generator=g), 3, 1, 1)[..., 2:-2, 2:-2]  # smooth-ish 48x56
    k = torch.zeros(9, 9)
    k[4, 4:9] = 1.0  # one-sided motion: asymmetric, so a flip is a different blur
    k[2, 1] = 0.5
    k = k / k.sum()
    y = Blur(k, boundary="replicate").A(x)
    err = lambda z: (z - x)[..., 8:-8, 8:-8].abs().mean().item()  # noqa: E731
    kb = k[None, None]
    assert err(wiener_deconv_features(y, kb)) < 0.5 * err(y)
    assert err(wiener_deconv_features(y, kb)) < 0.5 * err(wiener_deconv_features(y, kb.flip(-2, -1)))


def test_median3x3_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")  # mirror == torch 'reflect'
    assert torch.allclose(median3x3(x), torch.from_numpy(ref), atol=0, rtol=0)


def test_odd_square_keeps_the_kernel_centre() -> None:
    k = _kernel((4, 6), 5)[None, None]
    sq = odd_square(k)
    assert sq.shape[-2:] == (7, 7)
    x = torch.rand(1, 3, 15, 16, dtype=torch.float64)
    assert torch.allclose(Blur(sq[0, 0].double(), boundary="zeros").A(x), Blur(k[0, 0].double(), boundary="zeros").A(x),
                          atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------- uniform restorer
@pytest.mark.parametrize("kind", list(SMALL))
def test_restorer_odd_size_forward_backward(kind: str) -> None:
    model = restorer(SMALL[kind])
    y = torch.rand(2, 3, 21, 27, requires_grad=True)
    kernel = _kernel((5, 5), 6) if model.needs_kernel else None
    out = model(y, kernel=kernel)
    assert out.shape == y.shape
    out.square().sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["MPRNet", "FPNMobileNet"])
def test_blind_models_ignore_the_kernel(kind: str) -> None:
    model = restorer(SMALL[kind])
    y = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(model(y), model(y, kernel=_kernel((5, 5), 7)))


@pytest.mark.parametrize("kind", ["DWDN", "RGDN"])
def test_non_blind_models_use_per_image_kernels(kind: str) -> None:
    model = restorer(_lively(build(SMALL[kind])))
    y = torch.rand(2, 3, 16, 24)
    k1, k2 = _kernel((5, 5), 8), _kernel((5, 5), 9)
    with torch.no_grad():
        both = model(y, kernel=torch.stack([k1, k2])[:, None])
        first = model(y[:1], kernel=k1)
        second = model(y[1:], kernel=k2)
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5, rtol=0)
    assert (first - model(y[:1], kernel=k2)).abs().max() > 1e-4


def test_rgdn_step_count_is_a_call_parameter() -> None:
    net = build(SMALL["RGDN"]).eval()
    y = torch.rand(1, 3, 12, 14)
    k = _kernel((5, 5), 10)[None, None]
    with torch.no_grad():
        two = net(y, k, k.flip(-2, -1))
        five = net(y, k, k.flip(-2, -1), num_steps=5)
    assert len(two) == 2 and len(five) == 5
    assert all(torch.equal(a, b) for a, b in zip(two, five[:2]))
    early = build({**SMALL["RGDN"], "num_steps": 50, "stop_epsilon": 10.0}).eval()
    early.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert len(early(y, k, k.flip(-2, -1))) == 1  # any change is below a relative tolerance of 10


@pytest.mark.parametrize("boundary", ["circular", "replicate", "reflect"])
def test_rgdn_boundary_pads_by_the_kernel_radius_and_crops(boundary: str) -> None:
    net = build(SMALL["RGDN"]).eval()
    padded = build({**SMALL["RGDN"], "boundary": boundary}).eval()
    padded.load_state_dict(net.state_dict())  # the option adds no parameters
    y = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(4))
    k = _kernel((7, 5), 11)[None, None].expand(2, 1, 7, 5)
    kt = k.flip(-2, -1)
    with torch.no_grad():
        got = padded(y, k, kt)
        ref = net(F.pad(y, (4, 4, 6, 6), mode=boundary), k, kt)
    assert len(got) == 2
    for g, r in zip(got, ref):
        assert g.shape == y.shape
        torch.testing.assert_close(g, r[..., 6:-6, 4:-4], rtol=0, atol=0)
    with pytest.raises(RobustirError, match="boundary must be one of zeros, circular, replicate, reflect"):
        build({**SMALL["RGDN"], "boundary": "wrap"})
    with pytest.raises(RobustirError, match="reflect padding by twice the kernel radius"):
        build({**SMALL["RGDN"], "boundary": "reflect"})(torch.rand(1, 3, 5, 9), k[:1], kt[:1])


def test_rgdn_circular_boundary_makes_the_data_term_exact_on_circular_blur() -> None:
    # why the option exists: padded circularly by two kernel radii, the true image zeroes the data term over the whole
    # frame of a circularly blurred image (one radius is not enough); the official zero padding leaves a residual
    # along the frame border
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    k = _kernel((9, 9), 12)
    y = Blur(k, boundary="circular")(x)
    kk = k[None, None]
    zero = grad_data_fitting(x, y, kk.flip(-2, -1), kk)
    def padded(pad: int) -> torch.Tensor:
        return grad_data_fitting(F.pad(x, (pad,) * 4, mode="circular"), F.pad(y, (pad,) * 4, mode="circular"),
                                 kk.flip(-2, -1), kk)[..., pad:-pad, pad:-pad]

    assert float(padded(8).abs().max()) < 1e-6
    assert float(padded(4)[..., :4, :].abs().mean()) > 1e-3
    assert float(zero[..., :4, :].abs().mean()) > 1e-3 and float(zero[..., 8:-8, 8:-8].abs().max()) < 1e-6


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["DWDN", "RGDN"])
def test_missing_or_oversized_kernel_is_a_clear_error(kind: str) -> None:
    model = restorer(SMALL[kind])
    y = torch.rand(1, 3, 9, 12)
    with pytest.raises(RobustirError, match="kernel"):
        model(y)
    with pytest.raises(RobustirError, match="larger than the image"):
        model(y, kernel=_kernel((11, 11), 11))
    with pytest.raises(RobustirError, match="kernel"):
        model(y, kernel=torch.ones(3, 1, 5, 5))  # 3 kernels for 1 image


@pytest.mark.parametrize("kind", list(SMALL))
def test_wrong_channel_count_is_a_clear_error(kind: str) -> None:
    model = restorer(SMALL[kind])
    kernel = _kernel((5, 5), 12) if model.needs_kernel else None
    with pytest.raises(RobustirError, match="channels|\\(N, 3, H, W\\)|\\(N, 3,"):
        model(torch.rand(1, 1, 16, 16), kernel=kernel)


def test_bad_constructor_arguments_are_clear_errors() -> None:
    with pytest.raises(RobustirError, match="pretrained"):
        build({"type": "FPNMobileNet", "pretrained": True})
    with pytest.raises(RobustirError, match="norm_layer"):
        build({"type": "FPNMobileNet", "norm_layer": "group", "width_mult": 0.25})
    with pytest.raises(RobustirError, match="num_filters_fpn must be twice num_filters"):
        build({"type": "FPNMobileNet", "num_filters": 32, "num_filters_fpn": 32, "width_mult": 0.25})
    with pytest.raises(RobustirError, match="num_filters_fpn must be twice num_filters"):
        build({"type": "FPNMobileNet", "num_filters": 9, "num_filters_fpn": 18, "width_mult": 0.25})
    with pytest.raises(RobustirError, match="share_parameter"):
        build({"type": "RGDN", "share_parameter": False})
    with pytest.raises(RobustirError, match="num_steps"):
        build({"type": "RGDN", "num_steps": 0})
    with pytest.raises(RobustirError, match="in_c"):
        build({"type": "MPRNet", "in_c": 1, "out_c": 3, "n_feat": 8})
    with pytest.raises(RobustirError, match="multiples of 8"):
        build(SMALL["MPRNet"])(torch.rand(1, 3, 12, 16))


@pytest.mark.parametrize("preset", ["mprnet-small", "deblurganv2-fpn-mobilenet-small", "dwdn-small", "rgdn-small",
                                    "deblurganv2-fpn-mobilenet-predict", "rgdn-craft10", "rgdn-eval50"])
def test_presets_build(preset: str) -> None:
    net = build(preset)
    assert sum(p.numel() for p in net.parameters()) > 0

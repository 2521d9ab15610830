"""DeblurGANv2 FPNInception: published size, backbone parity with `pretrainedmodels` 0.7.4, the official forward
(re-padding quirks written from the parity notes over the official backbone), pipeline and errors.

The `pretrainedmodels` package needs torchvision at import, which has no CPU build, so it is not a dev dependency:
install it without dependencies (`pip install --no-deps pretrainedmodels==0.7.4`) and this file loads only
`pretrainedmodels/models/inceptionresnetv2.py` (which imports torch alone) by path; those tests skip without it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models import build, get_model_info, restorer
from robustir.models.weights import load_weights

# parity notes, deblurganv2_fpn_mobilenet/case.json -> skipped_variant_fpn_inception
PUBLISHED = {"params": 60929291, "state_dict_entries": 2384, "backbone_params": 55843464}
# the official FPN's aliases of backbone modules (same notes / fpn_inception.py)
ALIASES = {"enc0": "conv2d_1a", "enc1.0": "conv2d_2a", "enc1.1": "conv2d_2b", "enc2.0": "conv2d_3b",
           "enc2.1": "conv2d_4a", "enc3.0": "mixed_5b", "enc3.1": "repeat", "enc3.2": "mixed_6a",
           "enc4.0": "repeat_1", "enc4.1": "mixed_7a"}
SMALL = dict(get_model_info("FPNInception").test_spec or {})


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _official_inception() -> ModuleType:
    """`pretrainedmodels/models/inceptionresnetv2.py` from the installed 0.7.4 distribution, imported by path."""
    try:
        dist = importlib.metadata.distribution("pretrainedmodels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pretrainedmodels 0.7.4 not installed (pip install --no-deps pretrainedmodels==0.7.4)")
    if dist.version != "0.7.4":
        pytest.skip(f"pretrainedmodels {dist.version} installed; the cross-check is for 0.7.4")
    path = Path(str(dist.locate_file("pretrainedmodels/models/inceptionresnetv2.py")))
    if not path.is_file():
        pytest.skip(f"pretrainedmodels is installed but {path} is missing")
    spec = importlib.util.spec_from_file_location("_official_inceptionresnetv2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomise(net: nn.Module, seed: int) -> None:
    """Seeded unit-gain conv weights and non-trivial norm parameters/statistics (as the parity fixtures do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                if m.weight is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, nn.Module]:
    """(our generator with the full backbone and small heads, the official backbone with the same weights)."""
    official = _official_inception().inceptionresnetv2(num_classes=1000, pretrained=None)
    torch.manual_seed(0)
    ours = build({"type": "FPNInception", "num_filters": 16, "num_filters_fpn": 32})
    _randomise(ours, seed=1)
    official.load_state_dict(ours.fpn.inception.state_dict(), strict=True)  # same names and shapes, both ways
    ours.fpn.inception.load_state_dict(official.state_dict(), strict=True)
    return ours.eval(), official.eval()


def _official_stages(off: nn.Module, x: Tensor) -> list[Tensor]:
    """enc0..enc4 as the official FPN composes the pretrainedmodels layers."""
    enc0 = off.conv2d_1a(x)
    enc1 = off.maxpool_3a(off.conv2d_2b(off.conv2d_2a(enc0)))
    enc2 = off.maxpool_5a(off.conv2d_4a(off.conv2d_3b(enc1)))
    enc3 = off.mixed_6a(off.repeat(off.mixed_5b(enc2)))
    enc4 = off.mixed_7a(off.repeat_1(enc3))
    return [enc0, enc1, enc2, enc3, enc4]


def _our_stages(fpn: nn.Module, x: Tensor) -> list[Tensor]:
    out = [fpn.enc0(x)]
    for i in (1, 2, 3, 4):
        out.append(getattr(fpn, f"enc{i}")(out[-1]))
    return out


def _input(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 1.2 - 0.6  # a normalised-image range


# ---------------------------------------------------------------------------------------------- published size
def test_published_parameter_count_and_state_dict() -> None:
    with torch.device("meta"):
        net = build("deblurganv2-fpn-inception")
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED["params"]
    assert len(state) == PUBLISHED["state_dict_entries"]
    assert sum(p.numel() for p in net.fpn.inception.parameters()) == PUBLISHED["backbone_params"]
    assert [net.fpn.lateral4.in_channels, net.fpn.lateral3.in_channels, net.fpn.lateral2.in_channels,
            net.fpn.lateral1.in_channels, net.fpn.lateral0.in_channels] == [2080, 1088, 192, 64, 32]
    assert (net.head1.block0.in_channels, net.head1.block0.out_channels, net.final.in_channels) == (256, 128, 64)
    # every fpn.enc* entry is the same tensor as its fpn.inception.* original (released checkpoints list both)
    shared = net.state_dict(keep_vars=True)
    aliased = [k for k in state if k.startswith("fpn.enc")]
    checked = 0
    for alias, original in ALIASES.items():
        for key in (k for k in aliased if k.startswith(f"fpn.{alias}.")):
            assert shared[key] is shared[f"fpn.inception.{original}.{key[len(f'fpn.{alias}.'):]}"], key
            checked += 1
    assert checked == len(aliased) > 0
    inception = [k for k in state if k.startswith("fpn.inception.")]
    assert len(state) == len(inception) + len(aliased) + 40  # 40 = td (15), lateral (5), head (8), smooth (10), final
    # layers after mixed_7a are registered (so the checkpoint loads strictly) but have no alias: unused
    unused = ("repeat_2.", "block8.", "conv2d_7b.", "last_linear.")
    assert all(any(k.startswith(f"fpn.inception.{u}") for k in inception) for u in unused)
    assert not set(ALIASES.values()) & {u.rstrip(".") for u in unused}


# ---------------------------------------------------------------------------------------------- backbone parity
def test_backbone_matches_pretrainedmodels(pair: tuple[nn.Module, nn.Module]) -> None:
    ours, official = pair
    x = _input((1, 3, 128, 160), seed=2)
    with torch.no_grad():
        mine = _our_stages(ours.fpn, x)
        ref = _official_stages(official, x)
        trunk, trunk_ref = ours.fpn.inception.features(x), official.features(x)  # includes the unused layers
    assert [tuple(t.shape[1:]) for t in mine] == [(32, 63, 79), (64, 30, 38), (192, 13, 17), (1088, 6, 8),
                                                  (2080, 2, 3)]
    for a, b in zip(mine + [trunk], ref + [trunk_ref]):
        assert a.shape == b.shape
        assert b.std() > 0.05  # a live signal, not a comparison of zeros
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_backbone_per_image_statistics_match_official_train_mode(pair: tuple[nn.Module, nn.Module]) -> None:
    ours, official = pair
    x = _input((1, 3, 128, 128), seed=3)
    buffers = {k: v.clone() for k, v in official.named_buffers()}  # train mode updates the running statistics
    ours.set_norm_stats("per_image")
    official.train()  # predict.py: train mode, one image per batch
    try:
        with torch.no_grad():
            mine = _our_stages(ours.fpn, x)
            ref = _official_stages(official, x)
    finally:
        ours.set_norm_stats("running")
        official.eval()
        official.load_state_dict(buffers, strict=False)
    assert torch.equal(ours.fpn.inception.conv2d_1a.bn.running_var, official.conv2d_1a.bn.running_var)
    for a, b in zip(mine, ref):
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


# ---------------------------------------------------------------------------------------------- full forward
def _reference_generator(net: nn.Module, official: nn.Module, x: Tensor) -> Tensor:
    """The official FPNInception forward, written from the parity notes over the pretrainedmodels backbone."""
    sd = net.state_dict()

    def conv(t: Tensor, name: str, padding: int = 0) -> Tensor:
        return F.conv2d(t, sd[f"{name}.weight"], sd.get(f"{name}.bias"), padding=padding)

    def norm(t: Tensor, name: str) -> Tensor:  # InstanceNorm2d(track_running_stats=True) in eval mode
        mean, var = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
        return (t - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)

    def up(t: Tensor, s: int) -> Tensor:
        return t.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)

    def td(t: Tensor, name: str) -> Tensor:
        return torch.relu(norm(conv(t, f"{name}.0", 1), f"{name}.1"))

    def head(t: Tensor, i: int) -> Tensor:
        return torch.relu(conv(torch.relu(conv(t, f"head{i}.block0", 1)), f"head{i}.block1", 1))

    enc0, enc1, enc2, enc3, enc4 = _official_stages(official, x)
    lat4 = F.pad(conv(enc4, "fpn.lateral4"), (1, 1, 1, 1), mode="reflect")
    lat3 = F.pad(conv(enc3, "fpn.lateral3"), (1, 1, 1, 1), mode="reflect")
    lat2 = F.pad(conv(enc2, "fpn.lateral2"), (1, 2, 1, 2), mode="reflect")
    lat1 = F.pad(conv(enc1, "fpn.lateral1"), (1, 1, 1, 1), mode="reflect")
    lat0 = F.pad(conv(enc0, "fpn.lateral0"), (0, 1, 0, 1), mode="reflect")
    map3 = td(lat3 + up(lat4, 2), "fpn.td1")
    map2 = td(lat2 + up(map3, 2), "fpn.td2")
    map1 = td(lat1 + up(map2, 2), "fpn.td3")
    cat = torch.cat([up(head(lat4, 4), 8), up(head(map3, 3), 4), up(head(map2, 2), 2), head(map1, 1)], dim=1)
    smoothed = torch.relu(norm(conv(cat, "smooth.0", 1), "smooth.1"))
    smoothed = torch.relu(norm(conv(up(smoothed, 2) + lat0, "smooth2.0", 1), "smooth2.1"))
    return torch.clamp(torch.tanh(conv(up(smoothed, 2), "final", 1)) + x, -1, 1)


def test_generator_matches_reference_forward(pair: tuple[nn.Module, nn.Module]) -> None:
    ours, official = pair
    x = _input((1, 3, 128, 160), seed=4)
    finals: list[Tensor] = []
    hook = ours.final.register_forward_hook(lambda m, i, o: finals.append(o))
    try:
        with torch.no_grad():
            out = ours(x)
            ref = _reference_generator(ours, official, x)
    finally:
        hook.remove()
    assert out.shape == x.shape
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(out, torch.clamp(torch.tanh(finals[0]) + x, -1, 1))
    assert 0.05 < (out - x).abs().mean().item()  # the residual is not negligible, so the comparison has teeth
    assert out.min() >= -1 and out.max() <= 1


# ---------------------------------------------------------------------------------------------- small model
def test_state_dict_round_trip_through_released_checkpoint_layout(tmp_path: Path) -> None:
    torch.manual_seed(5)
    a = build(SMALL).eval()
    _randomise(a, seed=6)
    torch.manual_seed(7)
    b = build(SMALL).eval()
    # released .h5 files: torch pickles {'model': DataParallel state dict}
    torch.save({"model": {f"module.{k}": v for k, v in a.state_dict().items()}}, tmp_path / "fpn_inception.h5")
    load_weights(b, tmp_path / "fpn_inception.h5")
    x = _input((2, 3, 128, 128), seed=8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    loaded = b.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in a.state_dict().items())


def test_forward_range_and_restorer_pipeline() -> None:
    torch.manual_seed(9)
    net = build(SMALL).eval()
    _randomise(net, seed=10)
    img = torch.rand(2, 3, 131, 37, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        out = restorer(net)(img)
        # predict.py: [-1,1], zero-pad bottom/right to ((h // 32) + 1) * 32; below 128 the official code cannot
        # run (1/32 maps too small to reflect-pad), so the width is raised to 128
        x = F.pad(img * 2 - 1, (0, 128 - 37, 0, 160 - 131))
        direct = net(x)
        ref = (direct[..., :131, :37] + 1) / 2
    assert direct.shape == x.shape and direct.min() >= -1 and direct.max() <= 1
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    assert (out - img).abs().mean() > 1e-3


def test_clear_errors() -> None:
    net = build(SMALL).eval()
    with pytest.raises(RobustirError, match=r"\(N, 3, H, W\)"):
        restorer(net)(torch.rand(1, 1, 40, 40))
    with pytest.raises(RobustirError, match="multiples of 32"):
        net(torch.zeros(1, 3, 128, 120))
    with pytest.raises(RobustirError, match="at least 128"):
        net(torch.zeros(1, 3, 96, 128))
    with pytest.raises(RobustirError, match="pretrained"):
        build({"type": "FPNInception", "pretrained": True})
    with pytest.raises(RobustirError, match="width_mult"):
        build({"type": "FPNInception", "width_mult": 0})
    with pytest.raises(RobustirError, match="norm_layer"):
        build({**SMALL, "norm_layer": "group"})
    with pytest.raises(RobustirError, match="output_ch"):
        build({**SMALL, "output_ch": 1})

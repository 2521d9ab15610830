"""Registry and uniform restorer: every registered type builds, runs forward/backward on odd sizes through `restorer`
with a finite non-zero input gradient; specs, presets and bad input give one clear error."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from robustir.errors import RobustirError
from robustir.models import build, get_model_info, list_models, list_presets, resolve_spec, restorer
from robustir.models.registry import ModelInfo

TYPES = sorted(r["name"] for r in list_models() if r["kind"] == "type")


def _spec(info: ModelInfo) -> dict[str, Any]:
    return dict(info.test_spec) if info.test_spec else {"type": info.name}


def _channels(net: nn.Module) -> list[int]:
    ch = getattr(net, "image_channels", None)
    return [int(ch)] if ch else [3, 1]


def _kernel() -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 6.0, 3.0], [1.0, 2.0, 1.0], [0.0, 1.0, 0.0]])
    return torch.nn.functional.pad(k, (1, 1, 0, 1)) / k.sum()  # 5x5, asymmetric


@pytest.mark.parametrize("name", TYPES)
def test_every_type_forward_backward_odd_size(name: str) -> None:
    info = get_model_info(name)
    net = build(_spec(info))
    model = restorer(net)
    assert not model.training
    kwargs: dict[str, Any] = {}
    if info.call.needs_sigma:
        kwargs["sigma"] = 25 / 255
    if info.call.needs_kernel:
        kwargs["kernel"] = _kernel()
    last: Exception | None = None
    for c in _channels(net):
        y = (0.5 + 0.2 * torch.randn(2, c, 29, 35)).clamp(0, 1).requires_grad_(True)
        try:
            out = model(y, **kwargs)
        except RobustirError as exc:  # wrong guess of the channel count: try the next one
            last = exc
            continue
        assert out.shape == y.shape
        assert torch.isfinite(out).all()
        (out.square().sum()).backward()
        assert y.grad is not None and torch.isfinite(y.grad).all()
        assert y.grad.abs().sum().item() > 0
        return
    raise AssertionError(f"{name}: no channel count worked: {last}")


def test_list_models_rows() -> None:
    rows = {r["name"]: r for r in list_models()}
    for name, task in [("DnCNN", "denoise"), ("FDnCNN", "denoise"), ("FFDNet", "denoise"), ("UNetRes", "denoise"),
                       ("DPIR", "deblur")]:
        assert rows[name]["kind"] == "type" and rows[name]["task"] == task and rows[name]["description"]
    for preset in ["dncnn-s15", "dncnn-s25", "dncnn-s50", "dncnn-b", "fdncnn", "ffdnet-gray", "ffdnet-color",
                   "drunet-gray", "drunet-color", "dpir-gray"]:
        assert rows[preset]["kind"] == "preset" and rows[preset]["task"] in ("denoise", "deblur")


def test_every_preset_resolves_and_builds_on_meta() -> None:
    for name, preset in list_presets().items():
        info, kwargs = resolve_spec(name)
        assert info.name == get_model_info(preset.spec["type"]).name
        if info.name in ("DnCNN", "FDnCNN", "FFDNet", "UNetRes", "DPIR"):
            with torch.device("meta"):
                build(name)


def test_preset_parameter_counts() -> None:
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in build(n).parameters())
                  for n in ("dncnn-s25", "dncnn-b", "dncnn-s25-bn", "fdncnn", "ffdnet-gray", "ffdnet-color",
                            "drunet-gray", "drunet-color", "dpir-gray")}
    # published counts (parity README / case.json published_config)
    assert counts == {"dncnn-s25": 555137, "dncnn-b": 665921, "dncnn-s25-bn": 557057, "fdncnn": 666497,
                      "ffdnet-gray": 485316, "ffdnet-color": 852108, "drunet-gray": 32638656,
                      "drunet-color": 32640960, "dpir-gray": 32638656}


def test_kair_net_type_spec() -> None:
    net = build({"net_type": "dncnn", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "R",
                 "init_type": "orthogonal", "init_bn_type": "uniform", "init_gain": 0.2})
    assert type(net).__name__ == "DnCNN" and len(net.state_dict()) == 6
    assert get_model_info("drunet").name == "UNetRes"
    with pytest.raises(RobustirError, match="unknown keyword 'init_type'"):
        build({"type": "DnCNN", "init_type": "orthogonal"})


def test_bad_specs() -> None:
    with pytest.raises(RobustirError, match="unknown model type 'DnCNNN'.*DnCNN"):
        build({"type": "DnCNNN"})
    with pytest.raises(RobustirError, match="unknown keyword 'channels' for model type DnCNN; valid keywords: "
                                            "in_nc, out_nc, nc, nb, act_mode"):
        build({"type": "DnCNN", "channels": 1})
    with pytest.raises(RobustirError, match="no 'type' key"):
        build({"nc": 64})
    with pytest.raises(RobustirError, match="unknown model preset 'dncnn-s26'.*dncnn-s25"):
        build("dncnn-s26")
    # near misses and shipped-checkpoint names get a pointed hint before the full list
    with pytest.raises(RobustirError, match=r"'dncnn_s25' \(did you mean 'dncnn-s25'"):
        build("dncnn_s25")
    with pytest.raises(RobustirError, match=r"'nafnet_deblur_small' \(that is a shipped checkpoint: use "
                                            r"shipped:nafnet_deblur_small\)"):
        build("nafnet_deblur_small")
    with pytest.raises(RobustirError, match=r"'NAFNet' \(that is a model type: pass a spec such as "
                                            r"'\{\"type\": \"NAFNet\"\}'"):
        build("NAFNet")
    with pytest.raises(RobustirError, match=r"unknown model preset 'zzz'; presets: "):
        build("zzz")
    with pytest.raises(RobustirError, match="act_mode"):
        build({"type": "DnCNN", "act_mode": "Q"})
    with pytest.raises(RobustirError, match="nb: expected an integer >= 2"):
        build({"type": "DnCNN", "nb": 1})
    with pytest.raises(RobustirError, match="nc must be four positive integers"):
        build({"type": "UNetRes", "nc": [4, 8]})
    with pytest.raises(RobustirError, match="downsample_mode"):
        build({"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 4, 4, 4], "nb": 1, "downsample_mode": "x"})
    with pytest.raises(RobustirError, match="in_nc .* must equal out_nc"):
        build({"type": "DnCNN", "in_nc": 3, "out_nc": 1})


def test_wrong_channel_count_for_model() -> None:
    dn = restorer(build({"type": "DnCNN", "nc": 8, "nb": 3}))
    with pytest.raises(RobustirError, match=r"DnCNN: input must have shape \(N, 1, H, W\), got \(1, 3, 16, 16\)"):
        dn(torch.rand(1, 3, 16, 16))
    ff = restorer(build({"type": "FFDNet", "in_nc": 3, "out_nc": 3, "nc": 8, "nb": 3}))
    with pytest.raises(RobustirError, match=r"FFDNet: input must have shape \(N, 3, H, W\)"):
        ff(torch.rand(1, 1, 16, 16), sigma=0.1)
    dr = restorer(build({"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 4, 4, 4], "nb": 1}))
    with pytest.raises(RobustirError, match=r"UNetRes: input \(image channels \+ noise-level map\) must have shape "
                                            r"\(N, 2, H, W\)"):
        dr(torch.rand(1, 3, 16, 16), sigma=0.1)
    with pytest.raises(RobustirError, match=r"\(N, C, H, W\)"):
        dn(torch.rand(16, 16))


def test_non_blind_models_need_sigma() -> None:
    for spec in ({"type": "FFDNet", "nc": 8, "nb": 3}, {"type": "FDnCNN", "nc": 8, "nb": 3},
                 {"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 4, 4, 4], "nb": 1},
                 {"type": "DPIR", "in_nc": 2, "out_nc": 1, "nc": [4, 4, 4, 4], "nb": 1, "iter_num": 1}):
        model = restorer(spec)
        assert model.needs_sigma
        with pytest.raises(RobustirError, match="non-blind denoiser: pass sigma="):
            model(torch.rand(1, 1, 16, 16))
        with pytest.raises(RobustirError, match="pass 25/255"):
            model(torch.rand(1, 1, 16, 16), sigma=25)
        with pytest.raises(RobustirError, match="one value or 2 values"):
            model(torch.rand(2, 1, 16, 16), sigma=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(RobustirError, match=r"sigma must be a \(1, 1, 1, 1\) tensor"):
        build({"type": "FFDNet", "nc": 8, "nb": 3})(torch.rand(1, 1, 8, 8), torch.tensor(0.1))
    with pytest.raises(RobustirError, match="multiples of 8"):
        build({"type": "UNetRes", "in_nc": 2, "out_nc": 1, "nc": [4, 4, 4, 4], "nb": 1})(torch.rand(1, 2, 12, 16))


def test_restorer_loads_weights_and_accepts_prefixed_state() -> None:
    src = build({"type": "DnCNN", "nc": 8, "nb": 3})
    wrapped = restorer(src)
    again = restorer({"type": "DnCNN", "nc": 8, "nb": 3}, weights=wrapped.state_dict())  # keys 'net.model.N.*'
    y = torch.rand(1, 1, 9, 11)
    assert torch.equal(again(y), wrapped(y))


def test_parse_spec_from_the_command_line() -> None:
    from robustir.models import parse_spec

    assert parse_spec("  dncnn-s25 ") == "dncnn-s25"
    assert parse_spec(' {"type": "Restormer", "strip_rows": 64}') == {"type": "Restormer", "strip_rows": 64}
    with pytest.raises(RobustirError, match=r"--model: not valid JSON \(Expecting ',' delimiter at character 14\)"):
        parse_spec('{"type":"RGDN"')
    # a JSON array is not a spec (and does not start with "{", so it is taken as a preset name and fails there)
    with pytest.raises(RobustirError, match="unknown model preset"):
        build(parse_spec("[1, 2]"))


def test_parse_spec_reads_a_spec_file_or_a_runs_model_json(tmp_path: Any) -> None:
    from robustir.models import parse_spec

    spec = {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3}
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    assert parse_spec(str(tmp_path / "spec.json")) == spec
    # a training run's model.json (and a shipped card) wraps the spec with provenance: the spec is taken out
    (tmp_path / "model.json").write_text(json.dumps({"spec": spec, "steps": 10, "val": {"psnr": 20.0}}), "utf-8")
    assert parse_spec(f" {tmp_path / 'model.json'} ") == spec
    # a spec whose own constructor argument happens to be called "spec" is left alone when it names its type
    assert parse_spec('{"type": "X", "spec": {"a": 1}}') == {"type": "X", "spec": {"a": 1}}
    with pytest.raises(RobustirError, match=r"--model: spec file .*missing\.json not found"):
        parse_spec(str(tmp_path / "missing.json"))
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(RobustirError, match=r"--model file .*list\.json does not hold a JSON object"):
        parse_spec(str(tmp_path / "list.json"))
    (tmp_path / "weights.json").write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8")  # a pickle named .json
    with pytest.raises(RobustirError, match=r"--model file .*weights\.json cannot be read as UTF-8 text"):
        parse_spec(str(tmp_path / "weights.json"))
    (tmp_path / "bad.json").write_text('{"type": "DnCNN",', encoding="utf-8")
    with pytest.raises(RobustirError, match=r"--model file .*bad\.json: not valid JSON"):
        parse_spec(str(tmp_path / "bad.json"))

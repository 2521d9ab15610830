"""Generic parity against the official code: every fixture in <data>/parity whose type is registered.

For each folder: strict load of `weights.safetensors` into `build(robustir_spec)`, eval, forward as `robustir_call`
says, max abs error <= the fixture's atol; and the published (released) configuration built from
`published_config.kwargs` has the exact parameter count and state-dict shapes/dtypes of the official model. Fixtures of
models that are not registered (yet) skip, naming the type. Works for the denoising and the deblurring fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from robustir.errors import RobustirError
from robustir.models import build, get_model_info, load_weights

from conftest import DATA_ROOT

PARITY = DATA_ROOT / "parity" if DATA_ROOT is not None else None
CASES = sorted(p.name for p in PARITY.iterdir() if (p / "case.json").is_file()) if PARITY and PARITY.is_dir() else []


def _case(name: str) -> dict[str, Any]:
    assert PARITY is not None
    return json.loads((PARITY / name / "case.json").read_text())


def _require_registered(case: dict[str, Any]) -> None:
    try:
        get_model_info(case["robustir_spec"]["type"])
    except RobustirError:
        pytest.skip(f"model type {case['robustir_spec']['type']!r} is not registered")


def published_spec(case: dict[str, Any]) -> dict[str, Any]:
    """The released configuration as a robustir spec: `published_config.kwargs` mapped onto `robustir_spec`'s keys.

    Keys are normalised the way the fixtures write them ('args.n_colors' -> 'n_colors', 'n_feats (hard-coded)' ->
    'n_feats', string values with a parenthesised remark keep their first word); keys that are no constructor keyword
    of the fixture spec (e.g. 'pretrained') are dropped, and width substitutions absent from the published kwargs fall
    back to the constructor defaults, which are the official values.
    """
    spec = case["robustir_spec"]
    out: dict[str, Any] = {"type": spec["type"]}
    for key, value in case["published_config"]["kwargs"].items():
        name = key.split(" (")[0].removeprefix("args.")
        if name not in spec:
            continue
        if isinstance(value, str) and isinstance(spec[name], str) and " (" in value:
            value = value.split(" (")[0]
        out[name] = value
    return out


def _build_shapes_only(spec: dict[str, Any]) -> nn.Module:
    """Build on the meta device (no memory, instant) when the constructor allows it, else on the CPU."""
    try:
        with torch.device("meta"):
            return build(spec)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return build(spec)


@pytest.mark.data
@pytest.mark.parametrize("name", CASES or ["<no parity folder>"])
def test_fixture_output_matches_official(name: str) -> None:
    if not CASES:
        pytest.skip("shared data root with parity/ not found")
    case = _case(name)
    _require_registered(case)
    folder = PARITY / name  # type: ignore[operator]
    net = build(case["robustir_spec"])
    load_weights(net, folder / "weights.safetensors", strict=True)
    net.eval()
    inputs = load_file(str(folder / "input.safetensors"))
    expected = load_file(str(folder / "output.safetensors"))[case["robustir_call"]["compare"]]
    call = case["robustir_call"]
    with torch.no_grad():
        out = net(*[inputs[a] for a in call["args"]])
    if isinstance(out, (list, tuple)):
        out = out[call["select"] if call["select"] is not None else -1]
    assert tuple(out.shape) == tuple(expected.shape)
    err = (out - expected).abs().max().item()
    assert err <= case["atol"], f"{name}: max abs error {err:.3g} > atol {case['atol']}"


@pytest.mark.data
@pytest.mark.parametrize("name", CASES or ["<no parity folder>"])
def test_published_config_count_and_shapes(name: str) -> None:
    if not CASES:
        pytest.skip("shared data root with parity/ not found")
    case = _case(name)
    _require_registered(case)
    pub = case["published_config"]
    net = _build_shapes_only(published_spec(case))
    assert sum(p.numel() for p in net.parameters()) == pub["num_params"]
    shapes_file = PARITY / name / "published_state_dict_shapes.json"  # type: ignore[operator]
    if not shapes_file.is_file():  # the *_local fixtures share their parent's shapes
        return
    published = json.loads(shapes_file.read_text())
    ours = net.state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v) for k, v in published["shapes"].items()}
    if "non_float32_dtypes" not in published:  # the deblurring fixtures record shapes only
        return
    other = published["non_float32_dtypes"]
    for key, tensor in ours.items():
        assert str(tensor.dtype).removeprefix("torch.") == other.get(key, "float32"), key


def test_published_spec_mapping() -> None:
    case = {"robustir_spec": {"type": "X", "n_colors": 3, "n_feats": 4, "norm_layer": "instance", "width_mult": 0.1},
            "published_config": {"kwargs": {"args.n_colors": 3, "n_feats (hard-coded)": 32, "pretrained": True,
                                            "norm_layer": "instance (InstanceNorm2d, affine=False)"}}}
    assert published_spec(case) == {"type": "X", "n_colors": 3, "n_feats": 32, "norm_layer": "instance"}

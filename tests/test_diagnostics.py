"""diagnostics/deblurganv2_head.py: the full-resolution ablation differs from FPNMobileNet by its branch only, and
the head-ceiling fit scores what it fits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from robustir.models import build

SCRIPT = Path(__file__).resolve().parents[1] / "diagnostics" / "deblurganv2_head.py"
SPEC = {"num_filters": 8, "num_filters_fpn": 16, "width_mult": 0.25, "norm_stats": "instance", "pad": "multiple"}


def _script():  # noqa: ANN202 - a module
    if "deblurganv2_head" not in sys.modules:
        spec = importlib.util.spec_from_file_location("deblurganv2_head", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["deblurganv2_head"] = module
    return sys.modules["deblurganv2_head"]


def test_full_resolution_ablation_equals_official_with_its_branch_cut() -> None:
    _script()
    torch.manual_seed(0)
    ablation = build({"type": "FPNMobileNetFullRes", **SPEC, "full_res": 4}).eval()
    official = build({"type": "FPNMobileNet", **SPEC}).eval()
    state = ablation.state_dict()
    official_state = {k: v for k, v in state.items() if not k.startswith("full.")}
    official_state["final.weight"] = state["final.weight"][:, :official.final.in_channels]
    official.load_state_dict(official_state)
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(ablation(x), official(x), atol=1e-4)  # the branch contributes
        ablation.final.weight[:, official.final.in_channels:] = 0
        torch.testing.assert_close(ablation(x), official(x), rtol=0, atol=1e-6)


def test_head_ceiling_scores_its_fit(data_root: Path) -> None:
    out = _script().head_ceiling(iters=40, pairs=2, root=str(data_root))
    assert out["pairs"] == 2
    assert 10 < out["blurred_psnr"] < out["head_fit_psnr"]  # 40 Adam steps already sharpen past the input
    assert 20 < out["wiener_psnr"] < 40

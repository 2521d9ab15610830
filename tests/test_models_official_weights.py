"""Official and third-party DnCNN checkpoints on Set12 and BSD68 (shared data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from official_eval import FULL_EVAL, FULL_EVAL_REASON, mean_psnr, weights_file
from robustir.models import build, load_weights


@pytest.mark.data
@pytest.mark.slow
def test_kair_dncnn25_set12(data_root: Path) -> None:
    net = load_weights(build("dncnn-s25"), weights_file(data_root, "kair_dncnn_25.pth"))
    assert abs(mean_psnr(net, data_root / "Set12") - 30.44) <= 0.05


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(not FULL_EVAL, reason=FULL_EVAL_REASON)
@pytest.mark.parametrize("name,preset,published", [("saoyan_dncnn_S-25.pth", "dncnn-s25-bn", 29.23),
                                                   ("saoyan_dncnn_B.pth", "dncnn-b-bn", 29.16)])
def test_saoyan_dncnn_bsd68(data_root: Path, name: str, preset: str, published: float) -> None:
    net = load_weights(build(preset), weights_file(data_root, name))
    assert abs(mean_psnr(net, data_root / "BSD68") - published) <= 0.1


@pytest.mark.data
@pytest.mark.slow
def test_saoyan_dncnn_match_kair_on_bsd68_subset(data_root: Path) -> None:
    """Always run (the full BSD68 tests above are opt-in): on the first 4 BSD68 images, the third-party DnCNN-S-25
    and DnCNN-B loaded through the key map score within 0.1 dB of the official KAIR DnCNN-S-25 on the same noise (their
    published BSD68 means are 29.23 / 29.23 / 29.16)."""
    kair = mean_psnr(load_weights(build("dncnn-s25"), weights_file(data_root, "kair_dncnn_25.pth")),
                      data_root / "BSD68", limit=4)
    for name, preset in (("saoyan_dncnn_S-25.pth", "dncnn-s25-bn"), ("saoyan_dncnn_B.pth", "dncnn-b-bn")):
        other = mean_psnr(load_weights(build(preset), weights_file(data_root, name)), data_root / "BSD68", limit=4)
        assert abs(other - kair) <= 0.1, (name, other, kair)

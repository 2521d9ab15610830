"""The official DnCNN on the whole of BSD68 (~4 min on one core): a file of its own so pytest-xdist runs it beside
the rest of the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from official_eval import mean_psnr, weights_file
from robustir.models import build, load_weights


@pytest.mark.data
@pytest.mark.slow
def test_kair_dncnn25_bsd68(data_root: Path) -> None:
    """The whole of BSD68 (~3-4 min on one CPU core): the official weights reproduce the published 29.23 dB."""
    net = load_weights(build("dncnn-s25"), weights_file(data_root, "kair_dncnn_25.pth"))
    assert abs(mean_psnr(net, data_root / "BSD68") - 29.23) <= 0.05

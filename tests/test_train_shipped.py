"""Shipped checkpoints: shipping a finished run (card fields, strict reload, scores reproduced), and the checkpoints in
src/robustir/checkpoints (small, loadable from their card, denoisers beat the noisy input on Set12 as the card says)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustir.errors import RobustirError
from robustir.train.batch import build_batch_prep
from robustir.train.config import config_from_dict
from robustir.train.loop import TrainingData, evaluate_images, train
from robustir.train.sampling import load_images
from robustir.train.shipped import CHECKPOINT_DIR, list_shipped, ship_denoiser, shipped, shipped_card, shipped_path


@pytest.mark.data
def test_ship_a_run_and_reload(tmp_path: Path, data_root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    imgs = [torch.nn.functional.interpolate(torch.rand(1, 1, 8, 8, generator=g), size=(32, 32), mode="bilinear")[0]
            for _ in range(4)]
    cfg = config_from_dict({"model": {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "R"},
                            "data": {"train": "set12", "patch_size": 16, "batch_size": 4},
                            "train": {"steps": 3, "out": str(tmp_path / "run")}})
    train(cfg, data=TrainingData(targets=imgs), progress=False)
    card = ship_denoiser(tmp_path / "run", "tiny_test", command="robustir train tiny.yaml", dest=tmp_path / "ship",
                         root=str(data_root), reference=False)
    for key in ("name", "spec", "task", "command", "seed", "wall_time_s", "data", "metrics", "config", "parameters"):
        assert key in card
    # Set12 at sigma 25: 20.17 dB unclipped; scored like any output (clamped to [0,1], 8-bit) it is ~20.33 dB
    assert 20.2 < card["metrics"]["noisy_input"]["psnr"] < 20.5
    assert list(list_shipped(tmp_path / "ship")) == ["tiny_test"]
    model = shipped("tiny_test", folder=tmp_path / "ship")
    set12 = load_images("set12", 1, root=str(data_root))[:2]
    rows = evaluate_images(model, set12, build_batch_prep([{"type": "noise", "sigma": 25}]), seed=0)
    assert [round(r["psnr"], 4) for r in rows] == card["metrics"]["model"]["psnr_per_image"][:2]
    with pytest.raises(RobustirError, match="no shipped checkpoint 'nope'; shipped: tiny_test"):
        shipped("nope", folder=tmp_path / "ship")


DENOISERS = {name: card for name, card in list_shipped().items() if card.get("task") == "denoise"}


def test_shipped_denoisers_exist() -> None:
    assert {"dncnn_s25_small", "ffdnet_gray_small"} <= set(DENOISERS), f"shipped: {sorted(list_shipped())}"


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_shipped_denoiser_card_matches(name: str, data_root: Path) -> None:
    card = shipped_card(name)
    assert shipped_path(name).stat().st_size < 5 * 2**20
    model = shipped(name)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    clean = load_images("set12", 1, root=str(data_root))[:1]  # Cameraman, as in the card (seed 0, image id 0)
    rows = evaluate_images(model, clean, build_batch_prep([{"type": "noise", "sigma": card["sigma"]}]),
                           seed=0)
    assert rows[0]["psnr"] == pytest.approx(card["metrics"]["model"]["psnr_per_image"][0], abs=1e-3)
    assert card["metrics"]["model"]["psnr"] > card["metrics"]["noisy_input"]["psnr"] + 6
    assert Path(CHECKPOINT_DIR / f"{name}.json").is_file()

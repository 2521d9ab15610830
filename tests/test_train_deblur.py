"""Deblurring training and shipped checkpoints: the synthetic-blur batch preparation of the shipped configs (correct,
deterministic), the Wiener baseline (vs scikit-image), the held-out set, shipping a run as checkpoint + card, and every
shipped deblurring checkpoint (strict load, card claims re-checked on a small held-out set)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from robustir.degradations import blur, gaussian_kernel, motion_kernel
from robustir.errors import RobustirError
from robustir.train import PrepContext, build_batch_prep
from robustir.train.config import load_config
from robustir.train.deblur import (CHECKPOINT_DIR, blind_wiener_baseline, evaluate_deblur, heldout_set,
                                   identity_scores, load_shipped, make_deblur_set, ship_run, shipped_table,
                                   wiener_baseline, wiener_model)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "train").glob("*deblur*.yaml"))
CARDS = sorted(p for p in CHECKPOINT_DIR.glob("*.json")
               if json.loads(p.read_text(encoding="utf-8")).get("task") == "deblur")


def smooth_images(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """Smooth random colour images (structure a deblurrer can recover)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return list(torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
                .clamp(0, 1))


def motion_kernels(n: int, size: int = 9, seed: int = 0) -> list[torch.Tensor]:
    """Random motion kernels (no data root needed)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.as_tensor(motion_kernel(size, intensity=0.5, generator=g), dtype=torch.float32) for _ in range(n)]


# ------------------------------------------------------------------------------------------------- configs and prep

@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_deblur_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)  # with its base: chain
    assert cfg.data.train == "bsds400" and cfg.data.channels == 3
    assert cfg.val.dataset == "cbsd68"


def test_deblur_batch_prep_is_blur_plus_small_noise_and_deterministic(data_root: Path) -> None:
    cfg = load_config(CONFIGS[0])
    prep = build_batch_prep(cfg.batch)
    clean = torch.stack(smooth_images(16, 48, seed=1))
    ctx = PrepContext(seed=3, step=0, sample_ids=torch.arange(100, 116))
    a, b = prep(clean, ctx), prep(clean, ctx)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.kernel, b.kernel)
    other = prep(clean, PrepContext(seed=3, step=0, sample_ids=torch.arange(200, 216)))
    assert not torch.equal(a.inputs, other.inputs)
    # every sample: a normalised odd kernel, input = circular blur of the clean patch + noise of 1..2 / 255
    assert a.kernel.shape[0] == 16 and a.kernel.shape[-1] % 2 == 1
    torch.testing.assert_close(a.kernel.sum((1, 2, 3)), torch.ones(16), atol=1e-5, rtol=0)
    for i in range(16):
        residual = a.inputs[i:i + 1] - blur(clean[i:i + 1], a.kernel[i, 0], boundary="circular")
        assert 0.8 / 255 < float(residual.std()) < 2.2 / 255
        assert 1.0 / 255 - 1e-6 <= float(a.sigma[i]) <= 2.0 / 255 + 1e-6
    # both kernel families occur: the 8 Levin kernels and random motion kernels (the mix is 50/50)
    from robustir.degradations import levin_kernels
    from robustir.train.deblur import _centre_pad

    size = a.kernel.shape[-1]
    levin = [_centre_pad(torch.as_tensor(k, dtype=torch.float32), size) for k in levin_kernels(data_root)]
    is_levin = [any(torch.allclose(a.kernel[i, 0], k) for k in levin) for i in range(16)]
    assert 0 < sum(is_levin) < 16


# ---------------------------------------------------------------------------------------------------------- Wiener

def test_baseline_wiener_matches_scikit_image() -> None:
    from skimage.restoration import wiener

    x = torch.stack(smooth_images(1, 32)).double()
    k = motion_kernels(1, size=9)[0].double()
    y = blur(x, k, boundary="circular") + 0.01 * torch.randn(1, 3, 32, 32, dtype=torch.float64)
    ours = wiener_model(3e-3)(y, kernel=k[None, None])
    for c in range(3):
        # reg = a unit impulse makes scikit-image's regularised filter the constant-NSR Wiener filter
        ref = wiener(y[0, c].numpy(), k.numpy(), balance=3e-3, reg=np.ones((1, 1)), clip=False)
        np.testing.assert_allclose(ours[0, c].numpy(), ref, atol=1e-10)
    # with a vanishing nsr it inverts a noiseless circular blur by an invertible kernel
    k2 = torch.zeros(3, 3, dtype=torch.float64)
    k2[1, 1], k2[1, 2] = 0.7, 0.3
    torch.testing.assert_close(wiener_model(1e-12)(blur(x, k2, boundary="circular"), kernel=k2[None, None]), x,
                               atol=1e-8, rtol=0)


def test_deblur_set_and_wiener_baseline() -> None:
    imgs, ks = smooth_images(2, 32), motion_kernels(3)
    d = make_deblur_set(imgs, ks, sigma=2.0, seed=5)
    assert len(d) == 6 and d.kernel.shape == (6, 1, 9, 9)
    again = make_deblur_set(imgs, ks, sigma=2.0, seed=5)
    assert torch.equal(d.blurred, again.blurred)
    noise = d.blurred - blur(d.clean, d.kernel, boundary="circular")
    assert abs(float(noise.std()) - 2 / 255) < 0.2 / 255
    base = wiener_baseline(d, grid=(1e-4, 1e-3, 1e-2))
    assert base["nsr"] in (1e-4, 1e-3, 1e-2) and len(base["psnr_per_kernel"]) == 3
    assert base["psnr"] > identity_scores(d)["psnr"] + 1.0  # deconvolution with the true kernel helps
    with pytest.raises(RobustirError, match="images"):
        make_deblur_set([imgs[0], imgs[1][:, :16]], ks)


def test_blind_wiener_finds_the_gaussian_blur_and_loses_to_the_true_kernel_on_motion() -> None:
    """The blind baseline searches one Gaussian for the whole set: exact on Gaussian blur, weaker on motion blur."""
    imgs, grid = smooth_images(2, 48, seed=1), (1e-4, 1e-3, 1e-2)
    gauss = make_deblur_set(imgs, [gaussian_kernel(1.5)], sigma=1.0, seed=2)
    blind = blind_wiener_baseline(gauss, stds=(0.5, 1.0, 1.5, 2.5), grid=grid)
    oracle = wiener_baseline(gauss, grid=grid)
    assert blind["std"] == 1.5 and blind["nsr"] == oracle["nsr"]
    assert blind["psnr"] == pytest.approx(oracle["psnr"], abs=1e-6)  # the guess is the true kernel
    assert blind["psnr"] > identity_scores(gauss)["psnr"] + 1.0
    motion = make_deblur_set(imgs, motion_kernels(3), sigma=1.0, seed=2)
    blind_m, oracle_m = blind_wiener_baseline(motion, grid=grid), wiener_baseline(motion, grid=grid)
    assert blind_m["psnr"] < oracle_m["psnr"] - 1.0  # one shared guess cannot undo three different motions
    # the guess really is applied: re-running Wiener with the chosen Gaussian reproduces the per-pair scores
    k = gaussian_kernel(blind_m["std"])
    guess = evaluate_deblur(wiener_model(blind_m["nsr"]), replace(motion, kernel=k.expand(len(motion), 1, *k.shape)),
                            with_ssim=False)
    assert guess["psnr_per_kernel"] == blind_m["psnr_per_kernel"]
    with pytest.raises(RobustirError, match="larger than the 48x48 images"):
        blind_wiener_baseline(motion, stds=(9.0,), grid=grid)
    with pytest.raises(RobustirError, match="at least one std"):
        blind_wiener_baseline(motion, stds=(), grid=grid)


def test_deblur_eval_cli_on_a_folder(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`robustir deblur-eval` on a user folder prints the library's numbers; bad sizes are refused by name."""
    from PIL import Image

    from robustir.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(smooth_images(3, 48, seed=3)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    args = ["deblur-eval", "--wiener", "--dataset", str(folder), "--n-images", "2", "--crop", "40",
            "--data-root", str(data_root)]
    assert main([*args, "--blind-wiener"]) == 0
    printed = json.loads(capsys.readouterr().out)
    data = heldout_set(dataset=str(folder), n_images=2, crop=40, root=data_root)
    assert printed["heldout"]["pairs"] == 16 and printed["heldout"]["crop"] == "centre 40x40"
    assert printed["blurred_input"]["psnr"] == pytest.approx(identity_scores(data)["psnr"], abs=1e-9)
    assert printed["wiener"]["psnr"] == pytest.approx(wiener_baseline(data)["psnr"], abs=1e-9)
    assert printed["wiener"]["psnr"] > printed["blurred_input"]["psnr"] + 1.0
    blind = blind_wiener_baseline(data)
    assert printed["wiener_blind"]["psnr"] == pytest.approx(blind["psnr"], abs=1e-9)
    assert printed["wiener_blind"]["std"] == blind["std"]
    assert printed["wiener_blind"]["psnr"] < printed["wiener"]["psnr"]
    for bad, message in ((["--crop", "0"], "--crop"), (["--n-images", "0"], "--n-images"),
                         (["--crop", "64"], "smaller than the requested 64x64 crop"),
                         (["--n-images", "4"], "has only 3 images, fewer than 4")):
        code = main([*args, *bad])
        err = capsys.readouterr().err
        assert code != 0 and message in err, (bad, err)
    for kwargs in ({"n_images": 0}, {"crop": 0}, {"crop": 2.5}):
        with pytest.raises(RobustirError, match="expected a positive integer"):
            heldout_set(dataset=str(folder), root=data_root, **{"n_images": 2, "crop": 40, **kwargs})


# -------------------------------------------------------------------------------------------------------- shipping

@pytest.mark.parametrize("spec", [
    {"type": "NAFNet", "img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1],
     "dec_blk_nums": [1, 1]},
    {"type": "RGDN", "n_feature_2": 6, "num_steps": 2},
])
def test_ship_run_writes_loadable_checkpoint_and_card(tmp_path: Path, spec: dict) -> None:
    from robustir.models import build
    from robustir.train.checkpoint import save_weights, write_json

    net = build(spec)
    run = tmp_path / "run"
    run.mkdir()
    save_weights(run / "model.safetensors", net.state_dict())
    config = {"model": spec, "data": {"train": "bsds400", "channels": 3, "patch_size": 64, "batch_size": 8,
                                      "augment": True}, "batch": [{"type": "noise", "sigma": [1, 2]}],
              "train": {"seed": 7}}
    write_json(run / "model.json", {"spec": spec, "steps": 3, "weights": "params", "val": {}, "wall_time_s": 1.5,
                                    "config": config})
    data = make_deblur_set(smooth_images(1, 32), motion_kernels(2), sigma=2.0, description={"set": "synthetic"})
    card = ship_run(run, "tiny_deblur", command="robustir train x.yaml", dest=tmp_path / "ckpt", data=data,
                    wiener={"psnr": 0.0, "ssim": 0.0, "nsr": 1e-2})
    m = card["metrics"]
    if card["blind"]:  # blind networks are also set against the blind classical filter, computed on the same data
        assert m["wiener_blind"]["psnr"] == pytest.approx(blind_wiener_baseline(data)["psnr"], abs=1e-9)
        assert m["psnr_gain_over_blind_wiener"] == pytest.approx(m["model"]["psnr"] - m["wiener_blind"]["psnr"],
                                                                 abs=1e-3)
        assert f"std {m['wiener_blind']['std']:g} px" in card["verdict"]
    else:
        assert "wiener_blind" not in m and "blind classical" not in card["verdict"]
    for key in ("name", "spec", "task", "data", "degradation", "command", "seed", "steps", "wall_time_s", "metrics",
                "notes", "config"):
        assert key in card
    assert card["seed"] == 7 and card["task"] == "deblur" and card["blind"] == (spec["type"] == "NAFNet")
    model, card2 = load_shipped("tiny_deblur", dest=tmp_path / "ckpt")
    assert card2 == json.loads(json.dumps(card))
    for (k, v), (k2, v2) in zip(net.state_dict().items(), model.net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert card["metrics"]["model"]["psnr"] == pytest.approx(evaluate_deblur(model, data)["psnr"], abs=1e-9)
    with pytest.raises(RobustirError, match="no shipped checkpoint"):
        load_shipped("missing", dest=tmp_path / "ckpt")
    with pytest.raises(RobustirError, match="no finished run"):
        ship_run(tmp_path / "empty", "x", command="c", data=data)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"")
    (broken / "model.json").write_text('{"spec": {"type": "NAFNet"', encoding="utf-8")  # cut off mid-write
    with pytest.raises(RobustirError, match=r"model\.json is not a readable model\.json"):
        ship_run(broken, "x", command="c", data=data)


# ----------------------------------------------------------------------------------------- the shipped checkpoints

@pytest.fixture(scope="module")
def heldout_prefix() -> object:
    """The first 2 images of the cards' held-out set (CBSD68 centre 128², 8 Levin kernels, sigma 2, seed 0)."""
    from robustir.data import data_root

    root = data_root(required=False)
    if root is None:
        pytest.skip("shared data root not found (set ROBUSTIR_DATA or place it at ../shared/data)")
    return heldout_set(n_images=2, root=root)


def test_readme_table_is_the_cards_table() -> None:
    # the README's table of shipped deblurrers is pasted from shipped_table(); a re-shipped card must update it
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("| checkpoint | kernel given |")
    table = readme[start:readme.index("\n\n", start)]
    assert table == shipped_table().strip("\n")
    assert len(table.splitlines()) == 2 + len(CARDS)


@pytest.mark.parametrize("card_path", CARDS, ids=[p.stem for p in CARDS])
def test_shipped_deblur_checkpoint(card_path: Path, heldout_prefix: object) -> None:
    data = heldout_prefix
    model, card = load_shipped(card_path.stem)  # strict load into the card's spec
    assert card["name"] == card_path.stem and card["task"] == "deblur"
    # small: the largest, a 15-middle-block width-16 Baseline (1.93M float32 parameters), is 7.4 MiB
    assert card_path.with_suffix(".safetensors").stat().st_size < 8 * 2**20
    m = card["metrics"]
    assert m["heldout"]["pairs"] == 80 and m["heldout"]["crop"] == "centre 128x128"
    scores = evaluate_deblur(model, data, with_ssim=False)
    # the card's numbers reproduce on this prefix of its held-out set
    np.testing.assert_allclose(scores["psnr_per_image"], m["model"]["psnr_per_image"][:2], atol=2e-3)
    wiener = evaluate_deblur(wiener_model(m["wiener"]["nsr"]), data, with_ssim=False)
    np.testing.assert_allclose(wiener["psnr_per_image"], m["wiener"]["psnr_per_image"][:2], atol=2e-3)
    # the model restores something, and its win or loss against Wiener is what the card says
    assert scores["psnr"] > identity_scores(data)["psnr"]
    gain = m["psnr_gain_over_wiener"]
    assert gain == pytest.approx(m["model"]["psnr"] - m["wiener"]["psnr"], abs=1e-3)
    # the card's verdict follows from its per-image scores (the two re-checked images above are a prefix of them;
    # a 2-image prefix is too small to decide the win itself: DWDN wins on 10 images and loses on the first 2)
    per_image_gain = np.mean(m["model"]["psnr_per_image"]) - np.mean(m["wiener"]["psnr_per_image"])
    assert per_image_gain == pytest.approx(gain, abs=1e-3)
    assert card["verdict"].startswith("beats") == (gain > 0)
    wins = sum(a > b for a, b in zip(m["model"]["psnr_per_image"], m["wiener"]["psnr_per_image"]))
    assert f"(ahead on {wins} of {len(m['model']['psnr_per_image'])} images" in card["verdict"]
    if gain <= 0:  # a loss is put down to the budget, and the verdict names it
        assert f"({card['steps']} steps, {card['wall_time_s'] / 60:.1f} min of training)" in card["verdict"]
    if card["blind"]:  # the blind classical baseline reproduces on the prefix too, and its gap is the card's
        k = gaussian_kernel(m["wiener_blind"]["std"])
        guess = evaluate_deblur(wiener_model(m["wiener_blind"]["nsr"]), replace(data, kernel=k.expand(len(data), 1,
                                                                                                      *k.shape)),
                                with_ssim=False)
        np.testing.assert_allclose(guess["psnr_per_image"], m["wiener_blind"]["psnr_per_image"][:2], atol=2e-3)
        assert m["psnr_gain_over_blind_wiener"] == pytest.approx(m["model"]["psnr"] - m["wiener_blind"]["psnr"],
                                                                 abs=1e-3)
    else:
        assert "wiener_blind" not in m

"""CLI: info, degrade, score, demo, and one-line errors (no traceback, non-zero exit)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_folders import random_image_folder, tree_bytes
from robustir.cli import main
from robustir.data import DegradedImages, load_image, load_tensors, save_image, tensors_metadata
from robustir.data.degrade import blur_noise, noise

REPO = Path(__file__).resolve().parents[1]




def test_help_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("info", "degrade", "score", "demo"):
        assert command in out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch    {torch.__version__}" in out
    assert "numpy" in out and "device" in out and "models (" in out and "attack presets" in out
    assert "set12" in out and "cbsd68" in out and "celeba_hq" in out and "skimage-gray" in out


def test_builtin_datasets_without_a_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ROBUSTIR_DATA", str(tmp_path / "empty"))
    assert main(["info"]) == 0
    listed = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ")}
    assert listed["skimage-gray"] == ["6", "images"] and listed["skimage-color"] == ["5", "images"]
    assert listed["set12"][0] == "missing"
    out = tmp_path / "out"
    assert main(["degrade", "skimage-color", "--out", str(out), "--sigma", "15", "--limit", "2", "--size", "40"]) == 0
    expected = DegradedImages("skimage-color", noise(15), seed=0, size=40)
    for i, stem in enumerate(["astronaut", "chelsea"]):
        tensors = load_tensors(out / "tensors" / f"{stem}.safetensors")
        assert tensors["input"].shape == (3, 40, 40) and torch.equal(tensors["input"], expected[i]["input"])
    assert main(["score", str(out / "target"), "skimage-gray"]) == 2  # names match no gray photo
    assert "2 restoration(s) have no reference with the same name (e.g. astronaut" in capsys.readouterr().err


def test_degrade_noise_matches_the_dataset_and_is_idempotent(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "clean", ["a.png", "b.png"], (12, 10, 3))
    out = tmp_path / "out"
    assert main(["degrade", str(src), "--out", str(out), "--sigma", "25", "--seed", "3"]) == 0
    assert "wrote 2 degraded images" in capsys.readouterr().out
    expected = DegradedImages(src, noise(25), seed=3)
    for i, stem in enumerate(["a", "b"]):
        tensors = load_tensors(out / "tensors" / f"{stem}.safetensors")
        assert torch.equal(tensors["input"], expected[i]["input"])  # lossless and unclipped
        assert float(tensors["input"].min()) < 0 or float(tensors["input"].max()) > 1
        assert torch.equal(tensors["target"], load_image(src / f"{stem}.png"))
        assert float(tensors["sigma"]) == 25
        png = load_image(out / "input" / f"{stem}.png")
        torch.testing.assert_close(png, torch.round(expected[i]["input"].clamp(0, 1) * 255) / 255, rtol=0, atol=1e-6)
        assert tensors_metadata(out / "tensors" / f"{stem}.safetensors")["seed"] == "3"
    first = tree_bytes(out)
    assert main(["degrade", str(src), "--out", str(out), "--sigma", "25", "--seed", "3"]) == 0
    assert tree_bytes(out) == first
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_degrade_kernel_file_16bit_and_gray(tmp_path: Path) -> None:
    src = random_image_folder(tmp_path / "clean", ["a.png"], (20, 16, 3))
    k = np.zeros((5, 5), np.float32)
    k[2, 1:4] = 1.0
    np.save(tmp_path / "k.npy", k)
    out = tmp_path / "out"
    assert main(["degrade", str(src), "--out", str(out), "--kernel", str(tmp_path / "k.npy"), "--sigma", "1",
                 "--bits", "16", "--channels", "gray", "--boundary", "reflect"]) == 0
    tensors = load_tensors(out / "tensors" / "a.safetensors")
    torch.testing.assert_close(tensors["kernel"], torch.from_numpy(k / 3))
    expected = DegradedImages(src, blur_noise(torch.from_numpy(k / 3), 1.0, boundary="reflect"), channels=1)[0]
    assert torch.equal(tensors["input"], expected["input"])
    png16 = load_image(out / "input" / "a.png")
    assert png16.shape == (1, 20, 16)
    assert float((png16 - tensors["input"].clamp(0, 1)).abs().max()) <= 0.5 / 65535 + 1e-7


def test_degrade_levin_and_motion_kernels(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "levin"
    assert main(["degrade", "set12", "--data-root", str(data_root), "--out", str(out), "--kernel", "levin:2",
                 "--limit", "1", "--size", "64"]) == 0
    k = load_tensors(out / "tensors" / "01.safetensors")["kernel"]
    assert k.shape == (17, 17) and abs(float(k.sum()) - 1) < 1e-5  # Levin kernel 2 is 17x17
    out = tmp_path / "motion"
    assert main(["degrade", "set12", "--data-root", str(data_root), "--out", str(out), "--kernel", "motion:9",
                 "--limit", "2", "--size", "32", "--sigma", "5"]) == 0
    k1 = load_tensors(out / "tensors" / "01.safetensors")["kernel"]
    k2 = load_tensors(out / "tensors" / "02.safetensors")["kernel"]
    assert k1.shape == (9, 9) and not torch.equal(k1, k2)  # a fresh kernel per image


@pytest.mark.parametrize("args, message", [
    (["degrade", "nosuchset", "--sigma", "25"], "unknown dataset 'nosuchset'"),
    (["degrade", "{src}", "--kernel", "{tmp}/missing.npy"], "missing.npy"),
    (["degrade", "{src}"], "nothing to do"),
    (["degrade", "{src}", "--sigma", "-3"], "sigma"),
    (["degrade", "{src}", "--kernel", "motion:1"], "at least 3"),
])
def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                 message: str) -> None:
    src = random_image_folder(tmp_path / "clean", ["a.png"], (8, 8))
    out = tmp_path / "out"
    argv = [a.format(src=src, tmp=tmp_path) for a in args] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_cli_error_in_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "robustir.cli", "score", str(tmp_path / "none"), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "none" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_file_system_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "clean", ["a.png"], (8, 8))
    (tmp_path / "afile").write_text("a file where the output folder should go")
    assert main(["degrade", str(src), "--sigma", "5", "--out", str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err  # the progress bar may come first
    assert err.strip().splitlines()[-1].startswith("error: ") and "afile" in err and "Traceback" not in err
    assert main(["degrade", str(src), "--sigma", "5"]) == 2  # missing --out: click's usage error
    assert "--out" in capsys.readouterr().err
    assert main(["degrade", str(src), "--out", str(tmp_path / "o"), "--bits", "12"]) == 2
    assert "'12' is not one of '8', '16'" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--model", "dncnn-s25"]) == 2
    assert "needs --weights" in capsys.readouterr().err
    assert main(["nosuchcommand"]) == 2
    assert "No such command" in capsys.readouterr().err
    assert main(["score", str(src), "set12", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "--data-root" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- score

def test_score_matches_scikit_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = random_image_folder(tmp_path / "ref", ["x.png", "y.png"], (24, 20, 3))
    res = tmp_path / "res"
    g = torch.Generator().manual_seed(0)
    for name in ("x", "y"):
        clean = load_image(ref / f"{name}.png")
        save_image((clean + 0.05 * torch.randn(clean.shape, generator=g)).clamp(0, 1), res / f"{name}.png")
    assert main(["score", str(res), str(ref), "--csv", str(tmp_path / "s.csv")]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["name"] for r in rows] == ["x", "y"]
    for r in rows:
        a = load_image(res / f"{r['name']}.png").permute(1, 2, 0).double().numpy()
        b = load_image(ref / f"{r['name']}.png").permute(1, 2, 0).double().numpy()
        assert abs(float(r["psnr"]) - peak_signal_noise_ratio(b, a, data_range=1.0)) < 1e-4
        ssim = structural_similarity(b, a, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert abs(float(r["ssim"]) - ssim) < 1e-5
        assert abs(float(r["mae"]) - np.abs(a - b).mean() * 255) < 1e-6
        za, zb = a - a.mean(), b - b.mean()
        assert abs(float(r["ncc"]) - (za * zb).sum() / np.sqrt((za ** 2).sum() * (zb ** 2).sum())) < 1e-6
        assert f"{float(r['psnr']):.2f}" in printed
    assert "mean" in printed


def test_score_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = random_image_folder(tmp_path / "ref", ["a.png", "b.png"], (16, 16))
    res = random_image_folder(tmp_path / "res", ["a.png", "c.png"], (16, 16))
    assert main(["score", str(res), str(ref)]) == 2
    assert "1 restoration(s) have no reference with the same name (e.g. c)" in capsys.readouterr().err
    only_a = random_image_folder(tmp_path / "only_a", ["a.png"], (16, 16))
    assert main(["score", str(only_a), str(ref)]) == 2
    assert "--allow-missing" in capsys.readouterr().err
    assert main(["score", str(only_a), str(ref), "--allow-missing"]) == 0
    capsys.readouterr()
    bad = random_image_folder(tmp_path / "bad", ["a.png"], (16, 17))
    assert main(["score", str(bad), str(ref), "--allow-missing"]) == 2
    err = capsys.readouterr().err
    assert "size mismatch" in err and "a.png" in err
    assert main(["score", str(only_a), str(ref), "--crop-border", "-1"]) == 2
    capsys.readouterr()
    # 16x16 minus 3 pixels each side is 10x10, under the SSIM window: the error names the file
    assert main(["score", str(only_a), str(ref), "--allow-missing", "--crop-border", "3"]) == 2
    assert "only_a/a.png': ssim: images must be at least 11x11 after cropping, got 10x10" in capsys.readouterr().err


def test_degrade_then_score_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "clean", ["a.png", "b.png"], (16, 16))
    out = tmp_path / "deg"
    assert main(["degrade", str(src), "--out", str(out), "--sigma", "10"]) == 0
    assert main(["score", str(out / "input"), str(out / "target")]) == 0
    rows = list(csv.DictReader((out / "input" / "scores.csv").open()))
    # sigma 10 noise (clipped, 8-bit) on random images: PSNR near 20*log10(255/10) = 28.1 dB
    assert all(26.5 < float(r["psnr"]) < 29.5 for r in rows)


# ------------------------------------------------------------------------------------------------- demo

def test_demo_runs_restores_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "48"]) == 0
    printed = capsys.readouterr().out
    assert "Wiener" in printed and "results.md" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    images = {r["image"] for r in rows}
    assert images == {"camera", "astronaut", "chelsea", "coffee"}
    by = {(r["degradation"], r["restorer"], r["image"]): float(r["psnr"]) for r in rows}
    blur_case = next(d for d, _, _ in by if d.startswith("motion"))
    for img in images:  # restoration must beat the degraded input
        assert by[(blur_case, "RichardsonLucy", img)] > by[(blur_case, "input", img)] + 1.0
        assert by[("noise-25", "skimage-TV", img)] > by[("noise-25", "input", img)] + 3.0
    mean = lambda d, r: np.mean([by[(d, r, i)] for i in images])  # noqa: E731
    assert mean(blur_case, "Wiener") > mean(blur_case, "input") + 0.5
    # the 'input' rows score exactly the degraded images the demo saved (up to 8-bit rounding of the PNGs)
    from skimage.metrics import peak_signal_noise_ratio

    clean = load_image(out / "images" / "noise-25" / "camera_clean.png").numpy()
    noisy = load_image(out / "images" / "noise-25" / "camera_degraded.png").numpy()
    assert abs(peak_signal_noise_ratio(clean, noisy, data_range=1.0) - by[("noise-25", "input", "camera")]) < 0.05
    assert (out / "images" / blur_case / "camera_Wiener.png").is_file()
    assert load_image(out / "images" / "noise-25" / "astronaut_clean.png").shape == (3, 48, 48)
    md = (out / "results.md").read_text()
    assert "## Mean over images" in md and "| degradation | restorer |" in md
    first = tree_bytes(out)
    assert main(["demo", "--out", str(out), "--size", "48"]) == 0
    assert tree_bytes(out) == first

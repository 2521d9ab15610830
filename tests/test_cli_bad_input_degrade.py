"""Bad input to `robustir degrade`, kernel .npy files and `robustir deblur-eval`: one clear error, no partial output."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_folders import random_image_folder, tree_bytes
from robustir.cli import main
from robustir.degradations import load_kernels
from robustir.errors import RobustirError
from robustir.train.deblur import check_crop, heldout_set




def _kernel_file(tmp_path: Path) -> Path:
    path = tmp_path / "box.npy"
    np.save(path, np.full((3, 3), 1 / 9))
    return path


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line (a progress bar may come first), checked to be a one-line error."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


# --------------------------------------------------------------------------------------- degrade: no partial output

def test_unreadable_image_is_reported_before_anything_is_written(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png"], (16, 16, 3))
    (src / "b.png").write_text("not an image\n")
    out = tmp_path / "work" / "out"
    assert main(["degrade", str(src), "--sigma", "25", "--out", str(out)]) == 2
    line = _error(capsys)
    assert "cannot read image" in line and "b.png" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no out, no parent folder, no staging folder

    # an existing output folder keeps exactly what it held
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    before = tree_bytes(out)
    assert main(["degrade", str(src), "--sigma", "25", "--out", str(out)]) == 2
    assert tree_bytes(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_failure_while_writing_leaves_no_partial_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import robustir.data.pipeline as pipeline

    src = random_image_folder(tmp_path / "src", ["a.png", "b.png", "c.png"], (16, 16))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"kept")
    before = tree_bytes(out)
    real, calls = pipeline.save_image, []

    def flaky(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:  # the second image: the first one is already complete on disk
            raise OSError(28, "No space left on device", str(args[1]))
        real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "save_image", flaky)
    assert main(["degrade", str(src), "--sigma", "25", "--out", str(out)]) == 2
    assert "No space left on device" in _error(capsys)
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]

    monkeypatch.setattr(pipeline, "save_image", real)
    assert main(["degrade", str(src), "--sigma", "25", "--out", str(out)]) == 0
    after = tree_bytes(out)
    assert after["notes.txt"] == b"kept"  # files that are not degrade outputs are never deleted
    for stem in "abc":
        assert {f"input/{stem}.png", f"target/{stem}.png", f"tensors/{stem}.safetensors"} <= set(after)
    assert json.loads(after["degrade.json"])["count"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_output_into_a_new_nested_folder_matches_a_direct_run(tmp_path: Path) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png", "b.png"], (16, 16, 3))
    first, second = tmp_path / "x" / "y" / "out", tmp_path / "out2"
    assert main(["degrade", str(src), "--sigma", "10", "--seed", "4", "--out", str(first)]) == 0
    second.mkdir()
    assert main(["degrade", str(src), "--sigma", "10", "--seed", "4", "--out", str(second)]) == 0
    assert tree_bytes(first) == tree_bytes(second) and len(tree_bytes(first)) == 7
    assert sorted(p.name for p in first.parent.iterdir()) == ["out"]  # no staging folder left beside it


def test_an_out_holding_another_runs_images_is_refused_unless_forced(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    both = random_image_folder(tmp_path / "both", ["a.png", "b.png"], (16, 16))
    only_a = random_image_folder(tmp_path / "only_a", ["a.png"], (16, 16))
    out = tmp_path / "out"
    assert main(["degrade", str(both), "--sigma", "25", "--out", str(out)]) == 0
    first = tree_bytes(out)
    assert main(["degrade", str(both), "--sigma", "25", "--out", str(out)]) == 0  # the same run again: fine
    assert tree_bytes(out) == first
    # b.png's pair would stay beside a's and be read as one paired folder with it
    assert main(["degrade", str(only_a), "--sigma", "15", "--out", str(out)]) == 2
    line = _error(capsys)
    assert "already holds images degraded by another run" in line and "source, count, sigma" in line
    assert "--force" in line and tree_bytes(out) == first
    (out / "notes.txt").write_text("mine")
    assert main(["degrade", str(only_a), "--sigma", "15", "--out", str(out), "--force"]) == 0
    after = tree_bytes(out)
    assert set(after) == {"notes.txt", "degrade.json", "input/a.png", "target/a.png", "tensors/a.safetensors"}
    assert json.loads(after["degrade.json"])["sigma"] == 15
    # an output folder without a degrade.json is somebody else's: refused too
    legacy = tmp_path / "legacy"
    (legacy / "input").mkdir(parents=True)
    (legacy / "input" / "x.png").write_bytes(b"?")
    assert main(["degrade", str(only_a), "--sigma", "15", "--out", str(legacy)]) == 2
    assert "input without degrade.json" in _error(capsys)


# -------------------------------------------------------------------------------------------- degrade: option checks

@pytest.mark.parametrize("sigma, message", [
    ("-3", "--sigma: expected a non-negative number, got -3"),
    ("nan", "--sigma: expected a finite number, got nan"),
    ("inf", "--sigma: expected a finite number, got inf"),
])
@pytest.mark.parametrize("with_kernel", [False, True])
def test_bad_sigma_is_named_with_or_without_a_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      sigma: str, message: str, with_kernel: bool) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png"], (16, 16))
    out = tmp_path / "out"
    kernel = ["--kernel", str(_kernel_file(tmp_path))] if with_kernel else []
    assert main(["degrade", str(src), "--sigma", sigma, *kernel, "--out", str(out)]) == 2
    line = _error(capsys)
    assert line == f"error: {message}"
    assert not out.exists()


def test_zero_sigma_without_kernel_is_still_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png"], (16, 16))
    assert main(["degrade", str(src), "--sigma", "0", "--out", str(tmp_path / "out")]) == 2
    assert "nothing to do" in _error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["0", "-4"])
def test_non_positive_size_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png"], (16, 16))
    out = tmp_path / "out"
    assert main(["degrade", str(src), "--sigma", "25", "--size", size, "--out", str(out)]) == 2
    assert _error(capsys) == f"error: --size: expected a positive image size in pixels, got {size}"
    assert not out.exists()


def test_positive_size_still_resizes(tmp_path: Path) -> None:
    from robustir.data import load_image

    src = random_image_folder(tmp_path / "src", ["a.png"], (16, 16))
    out = tmp_path / "out"
    assert main(["degrade", str(src), "--sigma", "25", "--size", "12", "--out", str(out)]) == 0
    assert tuple(load_image(out / "target" / "a.png").shape) == (1, 12, 12)
    assert json.loads((out / "degrade.json").read_text())["size"] == 12


# --------------------------------------------------------------------------------------------- kernel .npy files

def test_text_file_named_npy_is_not_a_valid_npy_file(tmp_path: Path) -> None:
    path = tmp_path / "k.npy"
    path.write_text("hello\n")
    with pytest.raises(RobustirError) as info:
        load_kernels(path)
    message = str(info.value)
    assert "is not a valid .npy array file" in message and "k.npy" in message
    assert "allow_pickle" not in message and "unsafe" not in message


def test_pickles_are_refused_without_suggesting_unsafe_loading(tmp_path: Path) -> None:
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(np.ones((3, 3))))  # a bare pickle, no .npy header
    with pytest.raises(RobustirError, match="is not a valid .npy array file") as info:
        load_kernels(raw)
    assert "allow_pickle" not in str(info.value)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([np.ones((3, 3))] * 2 + [None], dtype=object), allow_pickle=True)
    with pytest.raises(RobustirError, match=r"holds an object \(pickled\) array, which is never loaded") as info:
        load_kernels(obj)
    assert "allow_pickle" not in str(info.value)
    text = tmp_path / "str.npy"
    np.save(text, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(RobustirError, match="expected a numeric array, got dtype <U1"):
        load_kernels(text)
    good = _kernel_file(tmp_path)  # a real .npy still loads
    (k,) = load_kernels(good)
    assert torch.allclose(k, torch.full((3, 3), 1 / 9))


def test_text_npy_kernel_in_degrade_and_attack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png"], (16, 16))
    kernel = tmp_path / "k.npy"
    kernel.write_text("hello\n")
    for argv, out in ((["degrade", str(src), "--sigma", "1", "--kernel", str(kernel), "--out", str(tmp_path / "d")],
                       tmp_path / "d"),
                      (["attack", "--model", '{"type": "Wiener"}', "--kernel", str(kernel), "--input", str(src),
                        "--out", str(tmp_path / "a"), "--steps", "1"], tmp_path / "a")):
        assert main(argv) == 2
        line = _error(capsys)
        assert "is not a valid .npy array file" in line and "allow_pickle" not in line
        assert not out.exists()


# ------------------------------------------------------------------------------------------------------ deblur-eval

def test_check_crop_names_the_kernel_and_the_ssim_window() -> None:
    kernels = [torch.ones(5, 5) / 25, torch.ones(27, 21) / 567, torch.ones(9, 9) / 81]
    with pytest.raises(RobustirError, match=r"^--crop: the 16x16 crop is smaller than the 27x21 blur kernel "
                                            r"\(the largest used\); crops must be at least 27x27$"):
        check_crop(16, kernels, "--crop")
    check_crop(27, kernels, "--crop")
    with pytest.raises(RobustirError, match=r"^crop: the 8x8 crop is smaller than the 11x11 SSIM window"):
        check_crop(8, [torch.ones(3, 3) / 9])


def test_deblur_eval_refuses_crops_smaller_than_the_levin_kernels(tmp_path: Path, data_root: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "src", ["a.png"], (40, 40, 3))
    base = ["deblur-eval", "--wiener", "--dataset", str(src), "--n-images", "1", "--data-root", str(data_root)]
    assert main([*base, "--crop", "16"]) == 2
    assert _error(capsys) == ("error: --crop: the 16x16 crop is smaller than the 27x27 blur kernel (the largest "
                              "used); crops must be at least 27x27")
    assert capsys.readouterr().out == ""  # no numbers
    with pytest.raises(RobustirError, match=r"^crop: the 26x26 crop is smaller than the 27x27 blur kernel"):
        heldout_set(dataset=str(src), n_images=1, crop=26, root=data_root)


def test_deblur_eval_says_when_gray_images_become_rgb(tmp_path: Path, data_root: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    gray = random_image_folder(tmp_path / "gray", ["a.png", "b.png"], (32, 32))
    argv = ["deblur-eval", "--model", '{"type": "Wiener", "nsr": 0.01}', "--dataset", str(gray), "--n-images", "1",
            "--crop", "27", "--data-root", str(data_root)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    note = "1 of 1 images are gray (a.png) and were converted to RGB (gray channel repeated)"
    assert captured.err.strip().splitlines() == [f"warning: {gray}: {note}"]
    assert json.loads(captured.out)["heldout"]["channels"] == note
    rgb = random_image_folder(tmp_path / "rgb", ["a.png"], (32, 32, 3))
    assert main([*argv[:4], str(rgb), *argv[5:]]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "channels" not in json.loads(captured.out)["heldout"]
    with pytest.warns(UserWarning, match="converted to RGB"):
        data = heldout_set(dataset=str(gray), n_images=2, crop=27, root=data_root)
    assert data.clean.shape[1] == 3 and "2 of 2 images are gray (a.png, ...)" in data.description["channels"]

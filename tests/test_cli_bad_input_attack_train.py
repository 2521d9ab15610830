"""Bad input to `robustir attack` and `robustir train`: a clear error naming the problem, and no partial output."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from image_folders import random_image_folder, tree_bytes
from test_train import TINY, images, tiny_config

from robustir.cli import main
from robustir.errors import RobustirError
from robustir.train import config_from_dict
from robustir.train.loop import TrainingData, train

MODEL = ["--model", "shipped:dncnn_s25_small"]


def _attack(src: Path, out: Path, *extra: str, sigma: str = "25") -> int:
    return main(["attack", *MODEL, "--steps", "1", "--eps", "2/255", "--sigma", sigma, "--input", str(src),
                 "--out", str(out), *extra])


# ------------------------------------------------------------------------------------------------------------ attack

@pytest.mark.parametrize("sigma", ["-5", "nan", "inf"])
def test_attack_bad_sigma_is_refused_before_any_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       sigma: str) -> None:
    src = random_image_folder(tmp_path / "in", ["a.png"], (16, 16))
    out = tmp_path / "new" / "out"
    assert _attack(src, out, sigma=sigma) == 2
    err = capsys.readouterr().err
    assert "error: --sigma: expected a finite non-negative noise level on the 0-255 scale" in err
    assert not (tmp_path / "new").exists()


def test_attack_failing_mid_run_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = random_image_folder(tmp_path / "in", ["a.png", "b.png"], (16, 16))
    # noise this large makes the model output non-finite: the attack fails at step 0, after the checks passed
    fresh = tmp_path / "fresh" / "out"
    assert _attack(src, fresh, sigma="1e38") == 2
    assert "non-finite at step 0" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert _attack(src, kept, sigma="1e38") == 2
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # no stub folders, no staging left


def test_attack_refuses_an_out_holding_another_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = random_image_folder(tmp_path / "both", ["a.png", "b.png"], (16, 16))
    only_a = random_image_folder(tmp_path / "only_a", ["a.png"], (16, 16))
    out = tmp_path / "out"
    assert _attack(both, out) == 0
    first = tree_bytes(out)
    assert "adversarial/b.safetensors" in first and "attack.json" in first
    assert _attack(both, out) == 0  # the identical command again: same files
    assert tree_bytes(out) == first
    capsys.readouterr()
    assert _attack(only_a, out) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds the results of another attack run (settings that differ: input, images)" in err
    assert "--force" in err
    assert tree_bytes(out) == first  # refused: untouched
    (out / "notes.txt").write_text("mine")
    assert _attack(only_a, out, "--force") == 0
    # the first run's outputs are gone (b's above all), the user's own file is kept
    assert set(tree_bytes(out)) == {"notes.txt", "attack.json", "metrics.csv", "adversarial/a.safetensors",
                                     "previews/a_adv.png", "restored/a_clean.png", "restored/a_adv.png",
                                     "perturbation/a.png"}
    with open(out / "metrics.csv", newline="") as fh:
        assert [r["image"] for r in csv.DictReader(fh)] == ["a.png"]
    # results of a run without attack.json (an older robustir) are not silently mixed either
    (out / "attack.json").unlink()
    assert _attack(only_a, out) == 2
    assert "without attack.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------- train

def test_train_channel_mismatch_names_both_keys_and_writes_nothing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = random_image_folder(tmp_path / "rgb", ["a.png", "b.png"], (24, 24, 3))
    run = tmp_path / "runs" / "r"
    cfg = tiny_config(run, data={"train": str(data), "channels": 3}, train={"steps": 2})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("error: data.channels is 3 but the model (DnCNN) takes 1-channel images (model.in_nc: 1): set "
            "data.channels: 1 or model.in_nc: 3") in err
    assert not (tmp_path / "runs").exists()
    # the gray case the other way round
    gray = tiny_config(run, model={**TINY, "in_nc": 3, "out_nc": 3}, train={"steps": 2})
    with pytest.raises(RobustirError, match="data.channels is 1 but the model .* takes 3-channel images"):
        train(config_from_dict(gray), data=TrainingData(targets=images(2)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_train_failing_before_the_first_checkpoint_leaves_no_stub(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import robustir.train.loop as loop

    real_lr_at = loop.lr_at

    def lr_failing_at_step_2(step: int, **kw: object) -> float:
        if step == 2:
            raise RobustirError("boom at step 2")
        return real_lr_at(step, **kw)

    monkeypatch.setattr(loop, "lr_at", lr_failing_at_step_2)
    data = TrainingData(targets=images(2))
    run = tmp_path / "runs" / "r"
    cfg = config_from_dict(tiny_config(run, train={"steps": 4, "ckpt_every": 4, "log_every": 1}))
    with pytest.raises(RobustirError, match="boom"):
        train(cfg, data=data, progress=False)
    assert not (tmp_path / "runs").exists()  # config.yaml and log rows were written, then removed
    # a folder that existed keeps exactly its own files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "config.yaml").write_text("# an older config\n")
    cfg = config_from_dict(tiny_config(mine, train={"steps": 4, "ckpt_every": 4, "log_every": 1}))
    with pytest.raises(RobustirError, match="boom"):
        train(cfg, data=data, progress=False)
    assert tree_bytes(mine) == {"notes.txt": b"mine", "config.yaml": b"# an older config\n"}
    # after a checkpoint the run is resumable: its folder stays
    cfg = config_from_dict(tiny_config(run, train={"steps": 4, "ckpt_every": 1, "log_every": 1}))
    with pytest.raises(RobustirError, match="boom"):
        train(cfg, data=data, progress=False)
    assert (run / "last.safetensors").is_file() and (run / "config.yaml").is_file()

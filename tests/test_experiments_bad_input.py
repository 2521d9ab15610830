"""`robustir run` on bad data: images too small or of the wrong channel count fail before anything is written, naming
the data key and the files, and a database left by a run that failed before its first job never blocks a rerun."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import robustir.experiments.runner as runner
from robustir.cli import main
from robustir.errors import RobustirError
from robustir.experiments.db import ResultsDB
from robustir.experiments.runner import run_experiment
from robustir.experiments.spec import load_experiment


def _png(path: Path, h: int, w: int, channels: int = 1, seed: int = 0) -> Path:
    """Write a random 8-bit gray (channels=1) or RGB (channels=3) PNG of h x w pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w) if channels == 1 else (h, w, channels)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _exp(root: Path, source: str, *, name: str = "bad-input", metrics: tuple[str, ...] = ("psnr", "ssim", "mae"),
         **data: object) -> Path:
    """An experiment file: the shipped small gray DnCNN under one 1-step Denoising-PGD on dataset `d`."""
    spec = {
        "name": name, "seed": 0, "save_artifacts": 0,
        "models": {"dncnn": {"shipped": "dncnn_s25_small"}},
        "data": {"d": {"source": source, "degradation": {"noise_sigma": 25}, **data}},
        "attacks": {"dpgd": {"preset": "denoising_pgd_linf", "params": {"eps": "1/255", "steps": 1}}},
        "metrics": list(metrics),
    }
    tag = hashlib.sha1((repr(sorted(data.items())) + source + str(metrics)).encode()).hexdigest()[:8]
    path = root / f"{name}_{tag}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _jobs(out: Path) -> list[tuple]:
    """The recorded job rows of an output folder."""
    with ResultsDB(out / "results.sqlite") as db:
        return db.dump()["jobs"]


@pytest.mark.parametrize("h, w", [(5, 7), (1, 1)])
def test_image_too_small_for_a_metric_fails_before_anything_is_written(tmp_path: Path, h: int, w: int) -> None:
    _png(tmp_path / "small" / "tiny.png", h, w)
    out = tmp_path / "out"
    with pytest.raises(RobustirError) as info:
        run_experiment(load_experiment(_exp(tmp_path, "small"), output=str(out)), progress=False)
    msg = str(info.value)
    assert msg.startswith("data.d: metrics: ssim cannot score")
    assert str(tmp_path / "small" / "tiny.png") in msg and f"{h}x{w} (HxW)" in msg
    assert not out.exists()


def test_small_image_runs_when_no_configured_metric_needs_more(tmp_path: Path) -> None:
    _png(tmp_path / "small" / "tiny.png", 5, 7)
    out = tmp_path / "out"
    summary = run_experiment(load_experiment(_exp(tmp_path, "small", metrics=("psnr", "mae")), output=str(out)),
                             progress=False)
    assert summary.executed == 1 and len(_jobs(out)) == 1


def test_crop_larger_than_an_image_names_key_and_file(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "big.png", 24, 24)
    _png(tmp_path / "imgs" / "small.png", 5, 7)
    out = tmp_path / "out"
    with pytest.raises(RobustirError, match=r"^data\.d\.crop: crop 16 is larger than image .*small\.png of size "
                                            r"5x7 \(HxW\)$"):
        run_experiment(load_experiment(_exp(tmp_path, "imgs", crop=16), output=str(out)), progress=False)
    assert not out.exists()


def test_cli_rerun_after_fixing_data_is_not_blocked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _png(tmp_path / "small" / "tiny.png", 5, 7)
    out = tmp_path / "out"
    args = ["run", "--out", str(out), "--quiet", "--no-report"]
    assert main([*args, str(_exp(tmp_path, "small"))]) != 0
    err = capsys.readouterr().err
    assert "data.d: metrics: ssim cannot score" in err and "tiny.png" in err
    assert not out.exists()
    # a database left empty by an earlier robustir that failed before its first job (same name, another version)
    with ResultsDB(out / "results.sqlite") as db:
        db.set_meta({"fingerprint": "0123456789abcdef", "experiment": "bad-input"})
    _png(tmp_path / "fixed" / "tiny.png", 16, 16)
    assert main([*args, str(_exp(tmp_path, "fixed"))]) == 0
    assert "1 job(s) run" in capsys.readouterr().out
    assert len(_jobs(out)) == 1


def test_database_of_a_run_failing_before_its_first_job_is_removed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "imgs" / "a.png", 16, 16)
    exp = load_experiment(_exp(tmp_path, "imgs"), output=str(tmp_path / "out"))

    def broken(*args: object) -> None:
        raise RuntimeError("batch failed")

    monkeypatch.setattr(runner, "run_batch", broken)
    with pytest.raises(RuntimeError, match="batch failed"):
        run_experiment(exp, progress=False)
    assert not exp.output.exists()  # the run created the folder, so nothing of it is left
    exp.output.mkdir()
    (exp.output / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="batch failed"):
        run_experiment(exp, progress=False)
    assert sorted(p.name for p in exp.output.iterdir()) == ["notes.txt"]  # a folder it did not create is kept
    monkeypatch.undo()
    assert run_experiment(exp, progress=False).executed == 1


def test_mixed_channels_fail_before_any_job_naming_every_offending_file(tmp_path: Path) -> None:
    _png(tmp_path / "mixed" / "a.png", 24, 32, 1)
    _png(tmp_path / "mixed" / "b.png", 24, 32, 3)
    _png(tmp_path / "mixed" / "c.png", 16, 20, 3)
    out = tmp_path / "out"
    with pytest.raises(RobustirError) as info:
        run_experiment(load_experiment(_exp(tmp_path, "mixed"), output=str(out)), progress=False)
    msg = str(info.value)
    assert msg.startswith("models.dncnn cannot restore data.d (images with 3 channel(s): ")
    assert str(tmp_path / "mixed" / "b.png") in msg and str(tmp_path / "mixed" / "c.png") in msg
    assert "a.png" not in msg and "set data.d.channels" in msg
    assert not out.exists()
    # converting every image to gray, as the message suggests, runs all three
    summary = run_experiment(load_experiment(_exp(tmp_path, "mixed", channels=1), output=str(out)), progress=False)
    assert summary.executed == 3 and len(_jobs(out)) == 3

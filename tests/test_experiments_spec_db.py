"""Experiment files (validation, grids, paths) and the results database (atomic jobs, no duplicates)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from robustir.errors import RobustirError
from robustir.experiments.db import JobResult, ResultsDB
from robustir.experiments.jobs import Item, expand_jobs, plan_batches
from robustir.experiments.spec import expand_grid, load_experiment, parse_experiment

BASE = {
    "name": "t",
    "models": {"a": {"spec": {"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 8, "nb": 3, "act_mode": "R"}}},
    "data": {"d": {"source": "set12", "limit": 2, "degradation": {"noise_sigma": 25}}},
    "attacks": {"pgd": {"preset": "pgd", "params": {"eps": ["4/255", "8/255"], "steps": [1, 2]}}},
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_fractions_grids_and_relative_paths(tmp_path: Path) -> None:
    exp = load_experiment(_write(tmp_path, {**BASE, "output": "out"}))
    assert exp.output == tmp_path / "out"
    params = exp.attacks[0].params
    assert params["eps"] == pytest.approx([4 / 255, 8 / 255])
    assert params["steps"] == [1, 2]
    grid = expand_grid(params)
    assert len(grid) == 4 and grid[0] == {"eps": pytest.approx(4 / 255), "steps": 1}


@pytest.mark.parametrize("patch, message", [
    ({"attackz": {}}, "unknown key(s) 'attackz'; valid keys"),
    ({"models": {"a": {"spec": "x", "weigths": "w.pth"}}}, "unknown key(s) 'weigths'"),
    ({"models": {"a": {"spec": "x", "weights": "missing.pth"}}}, "file not found"),
    ({"attacks": {"p": {"preset": "nope"}}}, "unknown attack 'nope'"),
    ({"attacks": {"p": {"preset": "pgd", "params": {"eps": "8/0"}}}}, "division by zero"),
    ({"attacks": {"p": {"preset": "pgd", "params": {"steps": 2.5}}}}, "expected an integer"),
    ({"attacks": {"p": {"preset": "adam_pgd_targeted"}}}, "needs `target:`"),
    ({"attacks": {"p": {"preset": "pgd", "target": "cyclic"}}}, "attack is untargeted"),
    ({"metrics": ["psnr", "lpips"]}, "unknown metric 'lpips'"),
    ({"data": {"d": {"source": "set12", "channels": 2}}}, "expected 1 or 3"),
    ({"data": {"d": {"source": "set12", "degradation": {"noise_sigma": -1}}}}, "must be >= 0"),
    ({"transfer": [{"source": "a", "targets": ["zz"]}]}, "unknown model id 'zz'"),
])
def test_bad_experiment_files_name_the_key(tmp_path: Path, patch: dict, message: str) -> None:
    with pytest.raises(RobustirError, match=None) as err:
        load_experiment(_write(tmp_path, {**BASE, **patch}))
    assert message in str(err.value)
    assert "exp.yaml" in str(err.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(RobustirError, match="invalid YAML"):
        load_experiment(bad)
    with pytest.raises(RobustirError, match="not found"):
        load_experiment(tmp_path / "none.yaml")


def test_fingerprint_ignores_output_but_not_content() -> None:
    a = parse_experiment({**BASE, "output": "x"})
    b = parse_experiment({**BASE, "output": "y", "batch_size": 3})
    c = parse_experiment({**BASE, "seed": 1})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_job_keys_stable_and_batches_independent_of_progress() -> None:
    exp = parse_experiment(BASE)
    items = {"d": [Item("d", i, f"{i:02d}", None, (1, 8, 8), None) for i in range(3)]}
    jobs = expand_jobs(exp, items, {"a": "f1"})
    assert len(jobs) == 3 * 4
    assert len({j.key for j in jobs}) == len(jobs)
    again = expand_jobs(exp, items, {"a": "f1"})
    assert [j.key for j in jobs] == [j.key for j in again]
    assert [j.seed for j in jobs] == [j.seed for j in again]
    changed = expand_jobs(exp, items, {"a": "f2"})  # other weights -> other keys
    assert not {j.key for j in jobs} & {j.key for j in changed}
    batches = plan_batches(jobs, 4)
    # eps values of the same steps share a batch; the plan covers every job exactly once
    assert sorted(j.key for b in batches for j in b) == sorted(j.key for j in jobs)
    for b in batches:
        assert len({j.params["steps"] for j in b}) == 1


def _result(key: str, value: float) -> JobResult:
    return JobResult(key, "a", "d", "01", "pgd", {"eps": 0.01}, 1, 0.5,
                     [("a", "psnr", 30.0, value), ("a", "ssim", 0.9, 0.5)], [1.0, 2.0, 1.5], {"input": "x.png"})


def test_db_writes_each_job_once_and_atomically(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "r.sqlite") as db:
        assert db.write_job(_result("k1", 20.0))
        assert not db.write_job(_result("k1", 99.0))  # a re-run never duplicates or overwrites
        assert db.finished_keys() == {"k1"}
        rows = db.rows()
        assert [(r["metric"], r["attacked"]) for r in rows] == [("psnr", 20.0), ("ssim", 0.5)]
        assert rows[0]["params"] == {"eps": 0.01} and rows[0]["artifacts"] == {"input": "x.png"}
        assert db.dump()["jobs"][0][7:10] == (1.0, 1.5, 2.0)
        # a job whose metric rows fail to insert leaves nothing behind (single transaction)
        broken = _result("k2", 1.0)
        broken.metrics.append(("a", "psnr", 1.0, 1.0))  # duplicate primary key -> IntegrityError mid-transaction
        with pytest.raises(sqlite3.IntegrityError):
            db.write_job(broken)
        assert db.finished_keys() == {"k1"}
        assert len(db.rows()) == 2
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

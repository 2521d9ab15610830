"""The shipped experiment files validate and expand into the jobs the papers' tables need."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustir.experiments.execute import prepare
from robustir.experiments.spec import load_experiment

FILES = Path(__file__).resolve().parents[1] / "experiments"

# (file, expected jobs): models x items x attack grid points, transfer targets evaluated inside the source's jobs
EXPECTED = {
    "demo.yaml": 2 * 4 * 3 + 2 * (3 * 2) * 4,
    "paper000_table2.yaml": 4 * (5 * 2) * 6,
    "paper000_table2_deep.yaml": 5 * (10 * 8) * 6,
    "paper001_table1.yaml": 3 * 2 * (5 * 8) * 6,
    "paper002_table1.yaml": 1 * 12 * 1,
    "paper002_table2_normal.yaml": 1 * 12 * 2,
}


def test_every_experiment_file_is_listed() -> None:
    assert sorted(p.name for p in FILES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_file_validates_and_expands(name: str, data_root: Path, tmp_path: Path) -> None:
    exp = load_experiment(FILES / name, output=str(tmp_path))
    assert exp.paper is None or exp.paper in ("000-table2", "001-table1", "002-table1", "002-table2")
    ctx = prepare(exp)
    assert len(ctx.jobs) == EXPECTED[name]
    assert len({j.key for j in ctx.jobs}) == len(ctx.jobs)

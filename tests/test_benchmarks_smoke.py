"""The large-image benchmark runs end to end on a tiny frame (its numbers live in the README, not in tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load_large_images():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_large_images", REPO / "benchmarks" / "large_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_large_images_benchmark_rows(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bench = _load_large_images()
    out = tmp_path / "rows.json"
    # subprocess workers, strips + checkpointing, 64x40 frame (scale 0.05 of 1280x720 rounds to 64x36 -> pad to 8)
    assert bench.main(["--models", "restormer-small", "--scale", "0.05", "--steps", "1", "--strip-rows", "8",
                       "--checkpointing", "both", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["checkpointing"], r["strip_rows"]) for r in rows] == [(False, 8), (True, 8)]
    for r in rows:
        assert "error" not in r and (r["width"], r["height"]) == (64, 36) and r["steps"] == 1
        assert 0 < r["linf"] <= 8 / 255 + 1e-6 and r["peak_gib"] >= r["attack_gib"] >= 0
    table = capsys.readouterr().out
    assert "| restormer-small | PGD | True | 8 | 64x36 | 1 |" in table
    # in-process inference row; a model without a strip mode is refused
    row = bench.worker("restormer-small", False, height=36, width=64, steps=2, device="cpu", strip_rows=8,
                       inference=True)
    assert row["attack"].startswith("inference") and "linf" not in row and row["steps"] == 2
    bench_rows = bench.main(["--models", "nafnet-small", "--scale", "0.05", "--steps", "1", "--strip-rows", "8",
                             "--checkpointing", "off", "--device", "cpu"])
    assert bench_rows == 0 and "has no strip mode" in capsys.readouterr().out

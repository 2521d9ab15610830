"""Reports: aggregation from the database, published numbers beside ours, renderers, and the HTML in a real browser."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustir.errors import RobustirError
from robustir.experiments.db import JobResult, ResultsDB
from robustir.report.build import build_report, load_summary
from robustir.report.published import lookup, published
from robustir.report.tables import long_rows, per_item_tables, pivot_tables, summarize, to_latex, to_markdown

CONFIG = {
    "name": "t", "fingerprint": "f", "seed": 0, "paper": "002-table2", "jobs": 4,
    "models": {"dncnn": {"label": "DnCNN (ours)", "paper_label": "DnCNN"}},
    "data": {"set12": {"label": "Set12"}},
    "attacks": {"linf": {"label": "Denoising-PGD-Linf"}},
}


def _write_db(out: Path, with_artifacts: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with ResultsDB(out / "results.sqlite") as db:
        db.set_meta({"config": json.dumps(CONFIG), "fingerprint": "f"})
        for i, (item, clean, attacked) in enumerate((("01", 30.0, 29.0), ("02", 33.0, 31.0))):
            arts = {}
            if with_artifacts:
                for name in ("reference", "input", "adversarial", "restored_clean", "restored_adversarial",
                             "perturbation"):
                    rel = f"artifacts/j{i}/{name}.png"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(out / rel)
                    arts[name] = rel
            for steps in (5, 10):
                db.write_job(JobResult(f"j{i}s{steps}", "dncnn", "set12", item, "linf",
                                       {"eps": 1 / 255, "steps": steps}, 0, 0.1,
                                       [("dncnn", "psnr", clean, attacked - steps / 10),
                                        ("dncnn", "ssim", 0.8, 0.7)], [1.0, 2.0], arts if steps == 5 else {}))


def test_published_records_cover_the_papers() -> None:
    t2 = published("000-table2")
    assert lookup(t2, dataset="GoPro", model="NAFNet", attack="CosPGD", params={"steps": 10}, metric="psnr") == 6.68
    assert lookup(t2, dataset="GoPro", model="Restormer", attack="clean", params={}, metric="ssim") == 0.9635
    t1 = published("001-table1")
    assert lookup(t1, dataset="BSD", model="DWDN", attack="Targeted", params={"eps": 8 / 255},
                  metric="ncc@target") == 0.223
    t002 = published("002-table2")
    assert lookup(t002, dataset="Set12", model="DnCNN", attack="Denoising-PGD-L2", params={}, metric="mae",
                  item="House") == 5.0
    assert lookup(t002, dataset="Set12", model="DnCNN", attack="clean", params={}, metric="psnr") == 30.387
    assert published("no-such-table") == []


def test_summary_pivot_and_renderers(tmp_path: Path) -> None:
    _write_db(tmp_path)
    summary = load_summary(tmp_path)
    cell = next(c for k, c in summary.cells.items() if k[4] == "psnr" and k[3].params["steps"] == 10)
    assert cell.n == 2 and cell.clean == pytest.approx(31.5) and cell.attacked == pytest.approx(29.0)
    assert cell.published_clean == 30.387 and cell.published_attacked == 29.620  # paper_label maps the row
    table = pivot_tables(summary)[0]
    assert table.header[2:] == ["Denoising-PGD-Linf (steps=5)", "Denoising-PGD-Linf (steps=10)"]
    assert table.rows[0][0] == "DnCNN (ours)"
    assert table.rows[0][1].startswith("31.50 / 0.8000 [paper 30.39 / 0.8620]")
    assert "29.00 / 0.7000 [paper 29.62 / 0.8240]" == table.rows[0][3]
    items = per_item_tables(summary)
    assert "[paper 30.05 → 29.62]" in items[0].rows[0][2]  # 01 = Cameraman
    md = to_markdown(table)
    assert md.count("\n|") == 3 and "### Set12" in md
    tex = to_latex(table)
    assert r"\begin{tabular}{lccc}" in tex and r"\bottomrule" in tex
    rows = long_rows(summary)
    assert {r["metric"] for r in rows} == {"psnr", "ssim"} and all(r["images"] == 2 for r in rows)


def test_infinite_psnr_is_kept_and_shown() -> None:
    rows = [{"job_key": "k", "model": "m", "dataset": "d", "item": "a", "attack": "x", "params": {}, "seed": 0,
             "seconds": 0, "artifacts": {}, "loss_first": 0, "loss_last": 0, "loss_best": 0, "eval_model": "m",
             "metric": "psnr", "clean": math.inf, "attacked": 20.0}]
    summary = summarize(rows, {})
    assert math.isinf(next(iter(summary.cells.values())).clean)
    assert pivot_tables(summary)[0].rows[0][1] == "inf"


def _browser():  # noqa: ANN202
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("headless Chromium / chromedriver not installed (make test installs them with apt-get)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def test_html_report_in_a_real_browser(tmp_path: Path) -> None:
    _write_db(tmp_path, with_artifacts=True)
    files = build_report(tmp_path)
    driver = _browser()
    try:
        driver.get(files.html.resolve().as_uri())
        assert driver.title == "robustir: t"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        assert len(images) >= 6 + 1  # the example grid (6 panels) and at least one plot
        assert all(done and width > 0 for done, width, _ in images), images
        text = driver.find_element("tag name", "body").text
        assert "[paper 29.62 / 0.8240]" in text and "DnCNN (ours)" in text
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_report_reads_without_writing(tmp_path: Path) -> None:
    # an empty or foreign database must be refused as it is: reading never creates tables in it
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.sqlite").write_bytes(b"")
    with pytest.raises(RobustirError, match="not a robustir results database"):
        load_summary(empty)
    assert (empty / "results.sqlite").stat().st_size == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / "results.sqlite")
    conn.execute("CREATE TABLE photos (name TEXT)")
    conn.commit()
    conn.close()
    before = (foreign / "results.sqlite").read_bytes()
    with pytest.raises(RobustirError, match=r"not a robustir results database \(tables: photos\)"):
        load_summary(foreign)
    assert (foreign / "results.sqlite").read_bytes() == before
    # a real database keeps its bytes through a report read
    real = tmp_path / "real"
    with ResultsDB(real / "results.sqlite") as db:
        db.set_meta({"experiment": "x"})
    before = (real / "results.sqlite").read_bytes()
    with pytest.raises(RobustirError, match="no finished jobs"):
        load_summary(real)
    assert (real / "results.sqlite").read_bytes() == before
    assert sorted(p.name for p in real.iterdir()) == ["results.sqlite"]  # no WAL files left behind by the reader

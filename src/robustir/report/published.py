"""Published numbers of the three seed papers, as records the report matches against our results.

Sources: ../shared/METHODS.md section 6 and the text copies in ../shared/papers (002's per-image tables). A record
matches a result when the experiment names the paper table (`paper:`), and the dataset/model/attack labels and the
parameter (steps or eps in 1/255 units) agree. `attack == "clean"` records compare with the clean columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Published:
    """One published number."""

    table: str
    dataset: str
    model: str
    attack: str
    param: str | None  # "steps=5", "eps=8" (in 1/255), or None
    metric: str
    value: float
    item: str | None = None


def _paper000_table2() -> Iterator[Published]:
    rows = {  # model: [CosPGD 5, 10, 20, PGD 5, 10, 20] as (PSNR, SSIM)
        "Restormer": [(11.36, .3236), (9.05, .2242), (7.59, .1548), (11.41, .3256), (9.04, .2234), (7.58, .1543)],
        "Restormer+ADV": [(24.49, .81), (23.48, .78), (21.58, .7317), (24.5, .8079), (23.5, .7815), (21.58, .7315)],
        "Baseline": [(10.15, .2745), (8.71, .2095), (7.85, .1685), (10.15, .2745), (8.71, .2094), (7.85, .1693)],
        "Baseline+ADV": [(15.47, .5216), (13.75, .4593), (12.25, .4032), (15.47, .5215), (13.75, .4592),
                         (12.24, .4026)],
        "NAFNet": [(8.67, .2264), (6.68, .1127), (5.81, .0617), (10.27, .3179), (8.66, .2282), (5.95, .0714)],
        "NAFNet+ADV": [(17.33, .6046), (14.68, .509), (12.30, .4046), (15.76, .5228), (13.91, .4445),
                       (12.73, .3859)],
        "Intermediate": [(6.0224, .0509), (5.8166, .0366), (5.7199, .0315), (6.0225, .0509), (5.8158, .0365),
                         (5.7173, .0314)],
        "Intermediate+ADV": [(24.02, .8213), (22.01, .7775), (20.15, .7286), (24.02, .8213), (21.98, .7770),
                             (20.15, .7286)],
        "Intermediate+ReLU": [(13.87, .4093), (11.63, .3128), (10.29, .2538), (13.87, .4094), (11.62, .3127),
                              (10.29, .2542)],
        "Intermediate+ReLU+ADV": [(23.90, .8046), (22.46, .7637), (21.85, .7484), (23.91, .8046), (22.47, .7638),
                                  (21.84, .7481)],
    }
    clean = {"Restormer": (31.99, .9635), "Restormer+ADV": (30.25, .9453), "Baseline": (32.48, .9575),
             "Baseline+ADV": (30.37, .9355), "NAFNet": (32.87, .9606), "NAFNet+ADV": (29.91, .9291),
             "Intermediate": (29.93, .9289), "Intermediate+ADV": (29.00, .9154),
             "Intermediate+ReLU": (30.39, .9349), "Intermediate+ReLU+ADV": (28.49, .9072)}
    for model, vals in rows.items():
        for k, (attack, steps) in enumerate([(a, s) for a in ("CosPGD", "PGD") for s in (5, 10, 20)]):
            for metric, v in zip(("psnr", "ssim"), vals[k]):
                yield Published("000-table2", "GoPro", model, attack, f"steps={steps}", metric, v)
    for model, (p, s) in clean.items():
        yield Published("000-table2", "GoPro", model, "clean", None, "psnr", p)
        yield Published("000-table2", "GoPro", model, "clean", None, "ssim", s)


def _paper001_table1() -> Iterator[Published]:
    nets = {"[5]": "MPRNet", "[1]": "DeblurGANv2", "[8]": "DWDN", "[6]": "RGDN"}
    data = {  # (dataset, net): clean, T-src x3, T-tgt x3, U x3 as (PSNR, NCC)
        ("Faces", "[5]"): [(26.81, .976), (9.77, .409), (9.75, .408), (9.75, .408), (26.80, .986), (26.94, .987),
                           (26.94, .987), (11.29, .645), (8.88, .498), (8.582, .465)],
        ("Faces", "[1]"): [(27.13, .982), (10.26, .419), (10.09, .413), (10.081, .412), (20.57, .950), (21.66, .963),
                           (21.76, .963), (5.65, -.063), (5.36, -.137), (5.23, -.175)],
        ("Faces", "[8]"): [(22.91, .951), (19.28, .906), (17.07, .858), (15.58, .810), (11.31, .565), (12.55, .659),
                           (13.69, .728), (11.65, .593), (10.12, .511), (9.10, .456)],
        ("Faces", "[6]"): [(26.98, .981), (24.55, .961), (23.32, .954), (22.06, .934), (10.19, .452), (10.57, .496),
                           (10.95, .537), (24.13, .966), (22.67, .953), (21.43, .939)],
        ("BSD", "[5]"): [(24.41, .944), (12.52, .155), (12.30, .130), (12.27, .126), (23.15, .899), (24.14, .919),
                         (24.22, .921), (10.59, .487), (9.04, .398), (8.12, .319)],
        ("BSD", "[1]"): [(24.04, .941), (12.43, .174), (12.35, .164), (12.27, .153), (19.94, .805), (20.92, .841),
                         (21.27, .854), (5.90, .173), (5.64, .147), (5.57, .085)],
        ("BSD", "[8]"): [(21.44, .443), (21.08, .882), (19.43, .844), (18.08, .792), (13.11, .139), (14.10, .223),
                         (15.00, .311), (14.15, .607), (11.43, .478), (10.15, .416)],
        ("BSD", "[6]"): [(24.23, .943), (22.61, .921), (21.78, .907), (20.89, .887), (12.83, .106), (13.29, .166),
                         (13.75, .226), (22.08, .907), (21.11, .884), (20.22, .859)],
    }
    for (ds, ref), vals in data.items():
        model = nets[ref]
        yield Published("001-table1", ds, model, "clean", None, "psnr", vals[0][0])
        yield Published("001-table1", ds, model, "clean", None, "ncc", vals[0][1])
        for g, (attack, suffix) in enumerate([("Targeted", ""), ("Targeted", "@target"), ("Untargeted", "")]):
            for e, eps in enumerate((4, 8, 12)):
                p, n = vals[1 + 3 * g + e]
                yield Published("001-table1", ds, model, attack, f"eps={eps}", "psnr" + suffix, p)
                yield Published("001-table1", ds, model, attack, f"eps={eps}", "ncc" + suffix, n)


_SET12 = ("Cameraman", "House", "Pepper", "Fishstar", "Monarch", "Airplane", "Parrot", "Lena", "Barbara", "Ship",
          "Man", "Couple")
SET12_FILES = {f"{i + 1:02d}": name for i, name in enumerate(_SET12)}


def _paper002_table1() -> Iterator[Published]:
    # SwinIR on Set12: (Gauss PSNR, Adv PSNR, Gauss MAE, Adv MAE, Gauss SSIM, Adv SSIM)
    vals = [(30.2, 29.4, 5.2, 6.1, .87, .80), (34.2, 31.9, 3.4, 4.9, .88, .79), (31.2, 30.0, 4.9, 6.0, .89, .81),
            (29.9, 29.3, 5.9, 6.4, .88, .86), (30.8, 29.8, 4.9, 6.0, .93, .86), (29.4, 28.8, 5.5, 6.2, .88, .83),
            (29.3, 28.8, 6.0, 6.7, .86, .81), (31.4, 30.2, 4.6, 5.8, .90, .83), (30.3, 29.5, 5.6, 6.3, .89, .86),
            (29.3, 28.4, 6.1, 7.1, .84, .79), (29.0, 28.4, 6.5, 7.2, .82, .78), (29.1, 28.4, 6.4, 7.2, .85, .81)]
    for name, v in zip(_SET12, vals):
        for metric, (g, a) in zip(("psnr", "mae", "ssim"), ((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))):
            yield Published("002-table1", "Set12", "SwinIR", "clean", None, metric, g, name)
            yield Published("002-table1", "Set12", "SwinIR", "Denoising-PGD", None, metric, a, name)
    for metric, g, a in (("psnr", 30.4, 29.4), ("mae", 5.4, 6.3), ("ssim", .87, .82)):
        yield Published("002-table1", "Set12", "SwinIR", "clean", None, metric, g)
        yield Published("002-table1", "Set12", "SwinIR", "Denoising-PGD", None, metric, a)


def _paper002_table2() -> Iterator[Published]:
    # normal DnCNN, per image then average; blocks: Gaussian, Adv-Linf, Adv-L2 (assumed order, METHODS.md 4.1)
    blocks = {
        "clean": {"psnr": [30.05, 33.03, 30.81, 29.42, 30.25, 29.13, 29.44, 32.33, 29.88, 30.14, 30.05, 30.03, 30.387],
                  "ssim": [.87, .86, .88, .87, .92, .87, .87, .87, .88, .81, .82, .83, .862],
                  "mae": [5.1, 4.0, 5.2, 6.2, 5.3, 5.8, 5.7, 4.4, 5.8, 5.8, 5.8, 5.9, 5.41]},
        "Denoising-PGD-Linf": {
            "psnr": [29.62, 31.26, 30.04, 29.04, 29.78, 28.72, 29.13, 30.98, 29.17, 29.36, 29.17, 29.20, 29.620],
            "ssim": [.85, .78, .84, .86, .88, .84, .85, .80, .85, .78, .78, .79, .824],
            "mae": [5.7, 5.2, 5.9, 6.6, 5.9, 6.4, 6.2, 5.4, 6.5, 6.5, 6.6, 6.7, 6.14]},
        "Denoising-PGD-L2": {
            "psnr": [29.24, 31.58, 29.84, 28.78, 29.60, 28.65, 28.76, 30.96, 29.13, 29.27, 29.18, 29.15, 29.512],
            "ssim": [.81, .80, .83, .86, .88, .83, .82, .80, .84, .77, .78, .79, .818],
            "mae": [6.3, 5.0, 6.1, 6.9, 6.0, 6.4, 6.7, 5.4, 6.5, 6.6, 6.6, 6.7, 6.26]},
    }
    for attack, metrics in blocks.items():
        for metric, values in metrics.items():
            for name, v in zip((*_SET12, None), values):
                yield Published("002-table2", "Set12", "DnCNN", attack, None, metric, v, name)


TABLES = {"000-table2": _paper000_table2, "001-table1": _paper001_table1, "002-table1": _paper002_table1,
          "002-table2": _paper002_table2}


def published(table: str) -> list[Published]:
    """All published records of a paper table (empty for an unknown table)."""
    return list(TABLES[table]()) if table in TABLES else []


def param_tag(params: Mapping[str, Any], param: str | None) -> bool:
    """Whether a result's attack parameters match a record's `steps=N` / `eps=K` (K in 1/255) tag."""
    if param is None:
        return True
    key, _, value = param.partition("=")
    if key not in params:
        return False
    v = float(params[key]) * (255.0 if key == "eps" else 1.0)
    return abs(v - float(value)) < 0.02 * max(1.0, float(value))


def lookup(records: list[Published], *, dataset: str, model: str, attack: str, params: Mapping[str, Any],
           metric: str, item: str | None = None) -> float | None:
    """The published value for one cell of our results, or None."""
    for r in records:
        if r.dataset == dataset and r.model == model and r.attack == attack and r.metric == metric \
                and r.item == item and param_tag(params, r.param):
            return r.value
    return None

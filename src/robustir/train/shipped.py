"""Shipped CPU-trained checkpoints (`src/robustir/checkpoints/<name>.safetensors` + `<name>.json` card).

Every card holds at least `name`, `spec` (the `robustir.models.build` spec), `task`, `command`, `seed`, `wall_time_s`,
`data` and `metrics`; `shipped(name)` builds the network from the card's spec and loads the weights strictly. The demo
and the experiments use these when no official weights are present.

    model = shipped("dncnn_s25_small")            # uniform call: model(y, sigma=25/255)
    list_shipped()                                 # {name: card}

`ship_denoiser(run_dir, name, command=...)` turns a finished `robustir train` run into a shipped checkpoint, scoring it
on Set12 at the training noise level with seeded noise (one draw per image, not clipped, 8-bit-rounded outputs), next
to the noisy input and, when the official KAIR DnCNN-S-25 weights are in the data root, that model on the same noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from robustir.errors import RobustirError

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def list_shipped(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """All shipped checkpoints with a card and a weights file: `{name: card}`."""
    base = Path(folder) if folder is not None else CHECKPOINT_DIR
    out = {}
    for card in sorted(base.glob("*.json")):
        if (base / f"{card.stem}.safetensors").is_file():
            out[card.stem] = json.loads(card.read_text(encoding="utf-8"))
    return out


def shipped_card(name: str, folder: str | Path | None = None) -> dict[str, Any]:
    """The JSON card of shipped checkpoint `name`."""
    cards = list_shipped(folder)
    if name not in cards:
        raise RobustirError(f"no shipped checkpoint {name!r}; shipped: {', '.join(cards) or '(none)'}")
    return cards[name]


def training_stages(run_dir: str | Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs that produced a finished run, earliest first, following `train.init` back through run folders.

    Each stage: run folder, steps, seed, wall time, and the sha256 of the weights it started from (None: random init).
    A `shipped:NAME` start whose card lists its own stages continues the chain through them (a fine-tune of a shipped
    checkpoint counts the steps that made it). The chain stops at any other start file that is not a run's
    `model.safetensors` (a published checkpoint, an older card), which is then named in the first stage. A start file
    that changed since it was used is an error: the card would lie.
    """
    from robustir.experiments.execute import file_sha256

    stages: list[dict[str, Any]] = []
    run, current = Path(run_dir), meta
    while True:
        init = current.get("init")
        stages.append({"run": str(run), "steps": current.get("steps"),
                       "seed": current.get("config", {}).get("train", {}).get("seed"),
                       "wall_time_s": round(float(current.get("wall_time_s", math.nan)), 1),
                       "init": None if init is None else {
                           "ref": init["ref"], "sha256": init["sha256"],
                           **{k: init[k] for k in ("grown", "transplant") if init.get(k)}}})
        if init is None:
            break
        card: dict[str, Any] | None = None
        if str(init["ref"]).startswith("shipped:"):  # this checkout's file: the recorded path may be another clone's
            name = str(init["ref"]).split(":", 1)[1]
            card, start = shipped_card(name), shipped_path(name)
            chained = bool(card.get("stages"))
        else:
            start = Path(init["path"])
            chained = start.name == "model.safetensors" and (start.parent / "model.json").is_file()
        if not chained:
            break
        if not start.is_file() or file_sha256(start) != init["sha256"]:
            raise RobustirError(f"{run}: its start weights {init['ref']!r} ({start}) changed since training (sha256 "
                                f"differs); cannot describe how it was trained")
        if card is not None:
            return [dict(st) for st in card["stages"]] + stages[::-1]
        run, current = start.parent, load_run(start.parent)[0]
        if len(stages) > 100:
            raise RobustirError(f"{run_dir}: train.init chain longer than 100 runs (a cycle?)")
    return stages[::-1]


def stage_totals(stages: list[dict[str, Any]]) -> tuple[int, float]:
    """Total steps and wall time over a run's training stages."""
    return (sum(int(st["steps"] or 0) for st in stages),
            round(sum(float(st["wall_time_s"]) for st in stages), 1))


def shipped_path(name: str, folder: str | Path | None = None) -> Path:
    """The weights file of shipped checkpoint `name`."""
    shipped_card(name, folder)
    return (Path(folder) if folder is not None else CHECKPOINT_DIR) / f"{name}.safetensors"


def shipped(name: str, *, wrap: bool = True, folder: str | Path | None = None) -> nn.Module:
    """Shipped checkpoint `name` as a uniform-call restorer (or the bare network with `wrap=False`), loaded strictly."""
    from robustir.models import build, restorer
    from robustir.models.weights import load_weights

    card = shipped_card(name, folder)
    net = build(card["spec"])
    load_weights(net, shipped_path(name, folder), strict=True)
    net.eval()
    return restorer(net) if wrap else net


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """(model.json, config dict, weights path) of a finished `robustir train` run folder."""
    run = Path(run_dir)
    card, weights = run / "model.json", run / "model.safetensors"
    if not card.is_file() or not weights.is_file():
        raise RobustirError(f"run_dir: {run} has no finished run (model.json and model.safetensors expected)")
    try:
        meta = json.loads(card.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RobustirError(f"run_dir: {card} is not a readable model.json ({exc}); was the run interrupted while "
                            f"writing it?") from None
    if not isinstance(meta, dict):
        raise RobustirError(f"run_dir: {card} does not hold a JSON object")
    return meta, meta.get("config", {}), weights


def _denoise_scores(model: nn.Module, images: list, sigma: float, seed: int) -> dict[str, Any]:
    """Mean and per-image PSNR/SSIM of `model` on `images` with seeded Gaussian noise of `sigma` (0-255), 8-bit
    outputs."""
    from robustir.train.batch import build_batch_prep
    from robustir.train.loop import evaluate_images

    prep = build_batch_prep([{"type": "noise", "sigma": sigma}])
    rows = evaluate_images(model, images, prep, seed=seed, quantize=True)
    return {"psnr": round(sum(r["psnr"] for r in rows) / len(rows), 4),
            "ssim": round(sum(r["ssim"] for r in rows) / len(rows), 4),
            "psnr_per_image": [round(r["psnr"], 4) for r in rows]}


class _Identity(nn.Module):
    """The noisy input itself, as a restorer (the 'do nothing' baseline)."""

    def forward(self, y: Any, *, sigma: Any = None, kernel: Any = None) -> Any:
        """Return the input."""
        return y


def ship_denoiser(run_dir: str | Path, name: str, *, command: str, sigma: float = 25.0, dataset: str = "set12",
                  seed: int = 0, notes: str = "", dest: str | Path | None = None, root: str | None = None,
                  paper_psnr: float | None = None, reference: bool = True) -> dict[str, Any]:
    """Score a finished denoising run on `dataset` at `sigma` and write `<dest>/<name>.safetensors` + `.json`."""
    from safetensors.torch import load_file

    from robustir.data.atomic import atomic_write_text
    from robustir.models import restorer
    from robustir.train.checkpoint import save_weights
    from robustir.train.sampling import load_images

    if not name or any(c in name for c in "/\\ "):
        raise RobustirError(f"name: expected a plain file stem like 'dncnn_s25_small', got {name!r}")
    run = Path(run_dir)
    meta, config, weights_path = load_run(run)
    spec = meta["spec"]
    state = load_file(str(weights_path))
    model = restorer(spec, weights=state)
    stages = training_stages(run, meta)
    total_steps, total_wall = stage_totals(stages)
    channels = int(config["data"]["channels"])
    images = load_images(dataset, channels, root=root)
    scores = _denoise_scores(model, images, sigma, seed)
    metrics: dict[str, Any] = {
        "eval": f"{dataset}, sigma {sigma:g} (0-255), Gaussian noise seeded per image (robustir noise step, seed {seed}),"
                f" not clipped; outputs clamped and rounded to 8 bit; mean over images",
        "model": scores,
        "noisy_input": _denoise_scores(_Identity(), images, sigma, seed),
    }
    from robustir.data import data_root

    base = data_root(root, required=False)
    official = base / "weights" / "dncnn" / "kair_dncnn_25.pth" if base is not None else None
    if reference and official is not None and official.is_file() and channels == 1 and sigma == 25:
        ref = restorer({"type": "DnCNN", "in_nc": 1, "out_nc": 1, "nc": 64, "nb": 17, "act_mode": "R"},
                       weights=str(official))
        metrics["official_kair_dncnn_25_same_noise"] = _denoise_scores(ref, images, sigma, seed)
    if paper_psnr is not None:
        metrics["paper_psnr"] = paper_psnr
    d = config["data"]
    card = {
        "name": name,
        "spec": spec,
        "task": "denoise",
        "blind": not bool(model.call.needs_sigma),
        "sigma": sigma,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "data": f"{d['train']} ({d['channels']} channel(s)), random {d['patch_size']}x{d['patch_size']} crops at "
                f"scales {d['scales']}, batch {d['batch_size']}, "
                f"{'dihedral flips/rotations' if d['augment'] else 'no augmentation'}",
        "degradation": json.dumps(config["batch"]),
        "command": command,
        "seed": config["train"]["seed"],
        "steps": total_steps,
        "wall_time_s": total_wall,
        "stages": stages,
        "weights": meta.get("weights", "params"),
        "metrics": metrics,
        "notes": notes,
        "config": config,
    }
    out = Path(dest) if dest is not None else CHECKPOINT_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / f"{name}.safetensors", state, metadata={"spec": json.dumps(spec), "name": name,
                                                               "task": "denoise"})
    atomic_write_text(out / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card

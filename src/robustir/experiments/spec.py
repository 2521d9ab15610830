"""Experiment files: YAML -> validated dataclasses (unknown keys rejected, paths resolved, fractions accepted)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustir.checks import parse_fraction
from robustir.data.names import dataset_info
from robustir.errors import RobustirError

# Attack parameters that take numbers (fractions like 8/255 allowed); lists expand to grids.
_FLOAT_ATTACK_PARAMS = {"eps", "alpha", "lr"}
_INT_ATTACK_PARAMS = {"steps", "restarts"}


def _check_keys(where: str, data: Mapping[str, Any], valid: set[str], required: set[str] = frozenset()) -> None:
    """Reject unknown keys (listing the valid ones) and report missing required ones."""
    if not isinstance(data, Mapping):
        raise RobustirError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - valid)
    if unknown:
        raise RobustirError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                            f"{', '.join(sorted(valid))}")
    missing = sorted(required - set(data))
    if missing:
        raise RobustirError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")


@dataclass(frozen=True)
class ModelEntry:
    """A model under test: registry spec or preset, weights (path, `shipped:NAME` or none), noise level it is given."""

    id: str
    spec: Any
    weights: str | None = None
    sigma: float | None = None
    label: str | None = None
    craft: bool = True
    datasets: tuple[str, ...] | None = None
    paper_label: str | None = None

    def runs_on(self, data_id: str) -> bool:
        """Whether this model is evaluated on dataset `data_id` (all datasets unless `datasets:` restricts it)."""
        return self.datasets is None or data_id in self.datasets


@dataclass(frozen=True)
class Degradation:
    """How observations are made from clean images: blur with kernel(s), then Gaussian noise (sigma on 0-255)."""

    noise_sigma: float = 0.0
    kernels: str | None = None
    boundary: str = "circular"
    clip: bool = False


@dataclass(frozen=True)
class DataEntry:
    """A dataset: named or folder source, selection, preprocessing and degradation."""

    id: str
    source: str
    limit: int | None = None
    crop: int | None = None
    resize: int | None = None
    channels: int | None = None
    degradation: Degradation = field(default_factory=Degradation)
    label: str | None = None
    paper_label: str | None = None
    paired: bool = False
    split: str | None = None


@dataclass(frozen=True)
class AttackEntry:
    """One attack configuration (a preset plus parameters; list values are grid axes) before grid expansion.

    The ground truth is always passed as `ref`; whether the objective uses it or the model's own clean output is the
    preset's `against` parameter. `target: cyclic` gives targeted attacks the next image of the same dataset.
    """

    id: str
    preset: str
    params: Mapping[str, Any]
    target: str | None = None
    label: str | None = None
    paper_label: str | None = None
    datasets: tuple[str, ...] | None = None

    def runs_on(self, data_id: str) -> bool:
        """Whether this attack is run on dataset `data_id` (all datasets unless `datasets:` restricts it)."""
        return self.datasets is None or data_id in self.datasets


@dataclass(frozen=True)
class TransferEntry:
    """Craft on `source`, evaluate on each of `targets`."""

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file."""

    name: str
    path: Path | None
    seed: int
    output: Path
    models: tuple[ModelEntry, ...]
    data: tuple[DataEntry, ...]
    attacks: tuple[AttackEntry, ...]
    transfer: tuple[TransferEntry, ...]
    metrics: tuple[str, ...]
    quantize: bool
    batch_size: int
    save_artifacts: int
    device: str
    paper: str | None
    description: str

    def fingerprint(self) -> str:
        """Hash of everything that determines results (not the output folder or batch size)."""
        payload = {
            "models": [asdict(m) for m in self.models], "data": [asdict(d) for d in self.data],
            "attacks": [asdict(a) for a in self.attacks], "transfer": [asdict(t) for t in self.transfer],
            "metrics": list(self.metrics), "quantize": self.quantize, "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


VALID_METRICS = ("psnr", "ssim", "mae", "ncc")
_TOP_KEYS = {"name", "description", "seed", "output", "models", "data", "attacks", "transfer", "metrics", "quantize",
             "batch_size", "save_artifacts", "device", "paper"}
_MODEL_KEYS = {"spec", "shipped", "weights", "sigma", "label", "craft", "datasets", "paper_label"}
_DATA_KEYS = {"source", "limit", "crop", "resize", "channels", "degradation", "label", "paper_label", "paired",
              "split"}
_DEGRADATION_KEYS = {"noise_sigma", "kernels", "boundary", "clip"}
_ATTACK_KEYS = {"preset", "params", "target", "label", "paper_label", "datasets"}
_TARGET_MODES = ("cyclic",)


def _resolve_path(value: str, base: Path | None) -> str:
    """Resolve a relative path against the experiment file's folder."""
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def _as_number(value: Any, where: str, *, integer: bool) -> Any:
    """Parse a number (or 'a/b' fraction) or a list of them (a grid axis); integers where required."""
    if isinstance(value, list):
        if not value:
            raise RobustirError(f"{where}: empty list")
        return [_as_number(v, where, integer=integer) for v in value]
    v = parse_fraction(value, where)
    if integer:
        if not float(v).is_integer():
            raise RobustirError(f"{where}: expected an integer, got {value!r}")
        return int(v)
    return v


def _parse_models(raw: Any, base: Path | None) -> tuple[ModelEntry, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise RobustirError("models: expected a non-empty mapping of model id -> {spec, weights, sigma}")
    out = []
    for mid, entry in raw.items():
        if isinstance(entry, str):
            entry = {"spec": entry}
        _check_keys(f"models.{mid}", entry, _MODEL_KEYS)
        entry = dict(entry)
        if "shipped" in entry:  # a checkpoint shipped with robustir: its card gives the spec
            if "spec" in entry or "weights" in entry:
                raise RobustirError(f"models.{mid}: give either `shipped:` or `spec:`/`weights:`, not both")
            from robustir.train.shipped import shipped_card

            entry["spec"] = shipped_card(str(entry["shipped"]))["spec"]
            entry["weights"] = f"shipped:{entry['shipped']}"
        if "spec" not in entry:
            raise RobustirError(f"models.{mid}: missing required key 'spec' (or 'shipped')")
        weights = entry.get("weights")
        if weights is not None:
            weights = str(weights)
            if not weights.startswith(("shipped:", "data:")):
                weights = _resolve_path(weights, base)
                if not Path(weights).is_file():
                    raise RobustirError(f"models.{mid}.weights: file not found: {weights}")
        sigma = entry.get("sigma")
        out.append(ModelEntry(str(mid), entry["spec"], weights,
                              None if sigma is None else float(parse_fraction(sigma, f"models.{mid}.sigma")),
                              entry.get("label"), bool(entry.get("craft", True)),
                              None if entry.get("datasets") is None else tuple(map(str, entry["datasets"])),
                              entry.get("paper_label")))
    return tuple(out)


def _parse_data(raw: Any, base: Path | None) -> tuple[DataEntry, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise RobustirError("data: expected a non-empty mapping of dataset id -> {source, ...}")
    out = []
    for did, entry in raw.items():
        if isinstance(entry, str):
            entry = {"source": entry}
        _check_keys(f"data.{did}", entry, _DATA_KEYS, {"source"})
        deg_raw = entry.get("degradation") or {}
        _check_keys(f"data.{did}.degradation", deg_raw, _DEGRADATION_KEYS)
        sigma = parse_fraction(deg_raw.get("noise_sigma", 0), f"data.{did}.degradation.noise_sigma")
        if sigma < 0:
            raise RobustirError(f"data.{did}.degradation.noise_sigma: must be >= 0 (0-255 scale), got {sigma}")
        kernels = deg_raw.get("kernels")
        if kernels is not None:
            kernels = str(kernels)
            if not kernels.startswith(("levin", "kernels12", "motion")):
                kernels = _resolve_path(kernels, base)
        boundary = deg_raw.get("boundary", "circular")
        if boundary not in ("circular", "reflect", "replicate", "zeros", "valid"):
            raise RobustirError(f"data.{did}.degradation.boundary: expected circular/reflect/replicate/zeros/"
                                f"valid, got {boundary!r}")
        source = str(entry["source"])
        if dataset_info(source) is None:  # not a named dataset: a folder, relative to the experiment file
            source = _resolve_path(source, base)
        for key in ("limit", "crop", "resize", "channels"):
            v = entry.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise RobustirError(f"data.{did}.{key}: expected a positive integer, got {v!r}")
        paired = bool(entry.get("paired", False))
        if paired and entry.get("degradation"):
            raise RobustirError(f"data.{did}: a paired dataset (GoPro layout or input/target folders) brings its own "
                                f"degraded inputs; remove `degradation:`")
        if entry.get("split") is not None and not paired:
            raise RobustirError(f"data.{did}.split: only paired (GoPro-layout) datasets have splits")
        if entry.get("channels") not in (None, 1, 3):
            raise RobustirError(f"data.{did}.channels: expected 1 or 3, got {entry['channels']!r}")
        out.append(DataEntry(str(did), source, entry.get("limit"), entry.get("crop"), entry.get("resize"),
                             entry.get("channels"), Degradation(float(sigma), kernels, boundary,
                                                                bool(deg_raw.get("clip", False))),
                             entry.get("label"), entry.get("paper_label"), paired, entry.get("split")))
    return tuple(out)


def _parse_attacks(raw: Any) -> tuple[AttackEntry, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise RobustirError("attacks: expected a mapping of attack id -> {preset, params, target, label}")
    from robustir.attacks import list_presets  # late import: attacks import heavy modules

    presets = set(list_presets())
    out = []
    for aid, entry in raw.items():
        _check_keys(f"attacks.{aid}", entry, _ATTACK_KEYS, {"preset"})
        preset = entry["preset"]
        if preset not in presets:
            raise RobustirError(f"attacks.{aid}.preset: unknown attack {preset!r}; presets: "
                                f"{', '.join(sorted(presets))}")
        params = dict(entry.get("params") or {})
        for key, value in params.items():
            if key in _FLOAT_ATTACK_PARAMS or key in _INT_ATTACK_PARAMS:
                params[key] = _as_number(value, f"attacks.{aid}.params.{key}", integer=key in _INT_ATTACK_PARAMS)
        target = entry.get("target")
        targeted = bool(params.get("targeted")) or preset.endswith("_targeted")
        if target is not None and target not in _TARGET_MODES:
            raise RobustirError(f"attacks.{aid}.target: expected one of {_TARGET_MODES}, got {target!r}")
        if targeted and target is None:
            raise RobustirError(f"attacks.{aid}: a targeted attack needs `target:` (one of {_TARGET_MODES})")
        if target is not None and not targeted:
            raise RobustirError(f"attacks.{aid}: `target:` given but the attack is untargeted; use a targeted preset "
                                f"or params.targeted: true")
        _check_attack_params(str(aid), str(preset), params)
        out.append(AttackEntry(str(aid), str(preset), params, target, entry.get("label"), entry.get("paper_label"),
                               None if entry.get("datasets") is None else tuple(map(str, entry["datasets"]))))
    return tuple(out)


def _check_attack_params(aid: str, name: str, params: Mapping[str, Any]) -> None:
    """Build the attack of every grid point once, so that a bad parameter fails before any job runs."""
    from robustir.attacks import preset

    for combo in expand_grid(params):
        try:
            preset(name, **combo)
        except RobustirError as exc:
            raise RobustirError(f"attacks.{aid}.params: {exc}") from None


def expand_grid(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Expand list-valued parameters into their Cartesian product (a grid), in a stable order."""
    keys = sorted(params)
    values = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def parse_experiment(raw: Mapping[str, Any], *, path: Path | None = None, output: str | None = None) -> Experiment:
    """Validate a parsed YAML mapping into an `Experiment`."""
    base = path.parent if path is not None else None
    _check_keys("experiment", raw, _TOP_KEYS, {"models", "data"})
    models = _parse_models(raw["models"], base)
    data = _parse_data(raw["data"], base)
    attacks = _parse_attacks(raw.get("attacks"))
    model_ids = {m.id for m in models}
    data_ids = {d.id for d in data}
    for kind, entries in (("models", models), ("attacks", attacks)):
        for e in entries:
            for d in e.datasets or ():
                if d not in data_ids:
                    raise RobustirError(f"{kind}.{e.id}.datasets: unknown dataset id {d!r}; data: "
                                        f"{', '.join(sorted(data_ids))}")
    transfer = []
    for i, t in enumerate(raw.get("transfer") or []):
        _check_keys(f"transfer[{i}]", t, {"source", "targets"}, {"source", "targets"})
        names = [t["source"], *t["targets"]]
        for name in names:
            if name not in model_ids:
                raise RobustirError(f"transfer[{i}]: unknown model id {name!r}; models: {', '.join(sorted(model_ids))}")
        transfer.append(TransferEntry(str(t["source"]), tuple(map(str, t["targets"]))))
    metrics = tuple(raw.get("metrics") or ("psnr", "ssim"))
    for m in metrics:
        if m not in VALID_METRICS:
            raise RobustirError(f"metrics: unknown metric {m!r}; valid: {', '.join(VALID_METRICS)}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RobustirError(f"seed: expected an integer, got {seed!r}")
    batch_size = raw.get("batch_size", 8)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RobustirError(f"batch_size: expected a positive integer, got {batch_size!r}")
    save = raw.get("save_artifacts", 4)
    if save is True:
        save = 10**9
    if not isinstance(save, int) or save < 0:
        raise RobustirError(f"save_artifacts: expected true/false or a number of images, got {save!r}")
    device = str(raw.get("device", "auto"))
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise RobustirError(f"device: expected auto, cpu or cuda[:N], got {device!r}")
    name = str(raw.get("name") or (path.stem if path else "experiment"))
    out_raw = output or raw.get("output") or f"runs/{name}"
    out_path = Path(_resolve_path(str(out_raw), base if output is None else None))
    return Experiment(name=name, path=path, seed=seed, output=out_path, models=models, data=data, attacks=attacks,
                      transfer=tuple(transfer), metrics=metrics, quantize=bool(raw.get("quantize", False)),
                      batch_size=batch_size, save_artifacts=int(save), device=device, paper=raw.get("paper"),
                      description=str(raw.get("description", "")))


def load_experiment(path: str | Path, *, output: str | None = None) -> Experiment:
    """Read and validate an experiment YAML file."""
    p = Path(path)
    if not p.is_file():
        raise RobustirError(f"experiment file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RobustirError(f"{p}: invalid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise RobustirError(f"{p}: expected a mapping at the top level")
    try:
        return parse_experiment(raw, path=p.resolve(), output=output)
    except RobustirError as exc:
        raise RobustirError(f"{p}: {exc}") from None

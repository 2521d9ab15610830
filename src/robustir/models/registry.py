"""Model registry: official class names -> constructors, named presets, and `build(spec)`.

Registration is explicit (each model file decorates its class and `models/__init__.py` imports every model file by
name), so a model is never missing because some module was not imported.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustir.errors import RobustirError

# How a network is driven by `robustir.models.restorer`: (net, y_padded, sigma (N,) or None, kernel or None) -> Tensor.
Adapter = Callable[[nn.Module, Tensor, "Tensor | None", "Tensor | None"], Any]

# Keys of KAIR's generic `netG` section that only some networks read; ignored for KAIR-style specs (`net_type`).
KAIR_GENERIC_KEYS = frozenset({"gc", "ng", "reduction", "upsample_mode", "downsample_mode", "init_type",
                               "init_bn_type", "init_gain", "scale", "upscale"})


@dataclass(frozen=True)
class CallConvention:
    """How the uniform restorer calls a network.

    Attributes:
        pad_multiple: spatial sizes are padded up to a multiple of this before the call and cropped back after.
        pad_mode: 'reflect', 'replicate' or 'constant' (zeros).
        needs_sigma: the network needs a noise level (non-blind denoiser); the restorer raises without one.
        needs_kernel: the network needs the blur kernel (non-blind deblurrer); the restorer raises without one.
        adapter: calls the network on a padded [0,1] batch; default `net(y)`. Returns the restored batch (or a list,
            see `select`).
        select: index of the output to use when the network returns a list/tuple (e.g. MPRNet 0, DWDN -1).
    """

    pad_multiple: int = 1
    pad_mode: str = "reflect"
    needs_sigma: bool = False
    needs_kernel: bool = False
    adapter: Adapter | None = None
    select: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One registered network type."""

    name: str
    factory: Callable[..., nn.Module]
    task: str
    description: str
    call: CallConvention = field(default_factory=CallConvention)
    aliases: Mapping[str, str] = field(default_factory=dict)
    kair_names: tuple[str, ...] = ()
    test_spec: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Preset:
    """A named configuration (a full spec dict) the papers use."""

    name: str
    spec: Mapping[str, Any]
    description: str


_MODELS: dict[str, ModelInfo] = {}
_PRESETS: dict[str, Preset] = {}
_TASKS = ("denoise", "deblur")


def register_model(name: str, *, task: str, description: str, call: CallConvention | None = None,
                   aliases: Mapping[str, str] | None = None, kair_names: tuple[str, ...] = (),
                   test_spec: Mapping[str, Any] | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator registering a network under its official class name.

    `test_spec` is a tiny configuration of this type (a full spec dict) that the generic model tests build and run
    forward/backward on; without it the tests use the constructor defaults.
    """
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}")

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model type {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, factory, task, description, call or CallConvention(), dict(aliases or {}),
                                  tuple(n.lower() for n in kair_names), dict(test_spec) if test_spec else None)
        return factory

    return deco


def register_preset(name: str, spec: Mapping[str, Any], description: str) -> None:
    """Register a named configuration, e.g. `register_preset("dncnn-s25", {"type": "DnCNN", ...}, "...")`."""
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is registered twice")
    _PRESETS[name] = Preset(name, dict(spec), description)


def get_model_info(name: str) -> ModelInfo:
    """Look up a registered type by official class name (case-sensitive) or KAIR `net_type` (case-insensitive)."""
    if name in _MODELS:
        return _MODELS[name]
    low = name.lower()
    for info in _MODELS.values():
        if low in info.kair_names:
            return info
    raise RobustirError(f"unknown model type {name!r}; registered types: {', '.join(sorted(_MODELS))}")


def list_models() -> list[dict[str, str]]:
    """Registered types and presets with task and a one-line description."""
    rows = [{"name": i.name, "kind": "type", "task": i.task, "description": i.description} for i in _MODELS.values()]
    for p in _PRESETS.values():
        task = get_model_info(p.spec["type"]).task if p.spec.get("type") in _MODELS else "?"
        rows.append({"name": p.name, "kind": "preset", "task": task, "description": p.description})
    return sorted(rows, key=lambda r: (r["kind"] != "type", r["name"].lower()))


def list_presets() -> dict[str, Preset]:
    """All registered presets by name."""
    return dict(_PRESETS)


def parse_spec(text: str, option: str = "--model") -> str | dict[str, Any]:
    """A command-line model argument -> spec: a JSON object, a `.json` file holding one, or a preset name as is.

    The file may also be a training run's `model.json` or a shipped card, whose network spec sits under "spec".
    """
    t = text.strip()
    source = option
    if not t.startswith("{"):
        if not t.lower().endswith(".json"):
            return t  # a preset name, checked when resolved
        path = Path(t).expanduser()
        if not path.is_file():
            raise RobustirError(f"{option}: spec file {t} not found")
        source = f"{option} file {t}"
        try:
            t = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RobustirError(f"{source} cannot be read as UTF-8 text ({exc})") from None
        if not t.startswith("{"):
            raise RobustirError(f"{source} does not hold a JSON object")
    try:
        spec = json.loads(t)  # starts with "{": an object or an error
    except json.JSONDecodeError as exc:
        raise RobustirError(f"{source}: not valid JSON ({exc.msg} at character {exc.pos}); give a preset name or a "
                            f"spec object such as '{{\"type\": \"DnCNN\"}}'") from None
    # a run's model.json or a shipped card wraps the network spec with its provenance
    if isinstance(spec, dict) and "type" not in spec and "net_type" not in spec and isinstance(spec.get("spec"), dict):
        spec = spec["spec"]
    return spec


def _preset_hint(name: str) -> str:
    """' (did you mean ...?)' for a shipped checkpoint's name or a near-miss preset name, else ''."""
    import difflib

    if (Path(__file__).resolve().parent.parent / "checkpoints" / f"{name}.json").is_file():
        return f" (that is a shipped checkpoint: use shipped:{name})"
    if name in _MODELS:
        return f" (that is a model type: pass a spec such as '{{\"type\": \"{name}\"}}' for its official defaults)"
    close = difflib.get_close_matches(name.replace("_", "-"), list(_PRESETS), n=3, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def resolve_spec(spec: Mapping[str, Any] | str) -> tuple[ModelInfo, dict[str, Any]]:
    """Turn a spec (dict or preset name) into the registered type and validated constructor kwargs."""
    if isinstance(spec, str):
        if spec not in _PRESETS:
            raise RobustirError(f"unknown model preset {spec!r}{_preset_hint(spec)}; presets: "
                                f"{', '.join(sorted(_PRESETS))} (or pass a dict with a 'type' key)")
        spec = _PRESETS[spec].spec
    if not isinstance(spec, Mapping):
        raise RobustirError(f"model spec must be a dict or a preset name, got {type(spec).__name__}")
    kwargs = copy.deepcopy(dict(spec))
    kair = "net_type" in kwargs and "type" not in kwargs
    type_name = kwargs.pop("type", None) or kwargs.pop("net_type", None)
    if not type_name:
        raise RobustirError(f"model spec has no 'type' key: {dict(spec)}")
    info = get_model_info(str(type_name))
    params = inspect.signature(info.factory).parameters
    valid = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        target = info.aliases.get(key, key)
        if target in valid:
            out[target] = value
        elif kair and key in KAIR_GENERIC_KEYS:
            continue
        else:
            raise RobustirError(f"unknown keyword {key!r} for model type {info.name}; valid keywords: "
                                f"{', '.join(valid)}")
    return info, out


def build(spec: Mapping[str, Any] | str) -> nn.Module:
    """Build a network from an official-style spec dict (`{"type": "DnCNN", "nb": 17, ...}`) or a preset name."""
    info, kwargs = resolve_spec(spec)
    try:
        net = info.factory(**kwargs)
    except TypeError as exc:
        raise RobustirError(f"cannot build {info.name} with {kwargs}: {exc}") from None
    net.robustir_type = info.name  # type: ignore[attr-defined]
    return net

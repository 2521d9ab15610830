"""Training checkpoints: one safetensors file holding weights (`params.*`, `params_ema.*`), optimizer tensors and RNG
states, with the remaining state (step, optimizer hyper-parameters, config, wall time) as JSON metadata.

One file written atomically (temp file + fsync + rename) means a kill at any moment leaves either the previous
checkpoint or the new one, never a mix. Nothing is unpickled when reading.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustir.data.atomic import atomic_path, atomic_write_text
from robustir.errors import RobustirError

STATE_KEY = "robustir_train_state"
FORMAT = "robustir-train-checkpoint-v1"


def _plain(t: Tensor) -> Tensor:
    """A contiguous CPU copy (safetensors refuses shared or strided storage)."""
    return t.detach().to("cpu").clone().contiguous()


def optimizer_to_flat(opt_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (`optim.<param>.<name>`) and a JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{name}"] = _plain(value)
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer state dict from `optimizer_to_flat`'s two parts."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The global RNG states (torch CPU/CUDA as tensors; numpy and python as JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    meta = {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Set the global RNG states saved by `capture_rng`."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    if "numpy" in meta:
        kind, keys, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python" in meta:
        v, state, g = meta["python"]
        random.setstate((v, tuple(state), g))


def save_checkpoint(path: str | Path, *, params: dict[str, Tensor], params_ema: dict[str, Tensor] | None,
                    optimizer: dict[str, Any], state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically: weights, optimizer and RNG tensors, JSON `state` as metadata."""
    from safetensors.torch import save_file

    tensors = {f"params.{k}": _plain(v) for k, v in params.items()}
    if params_ema is not None:
        tensors.update({f"params_ema.{k}": _plain(v) for k, v in params_ema.items()})
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors.update(opt_tensors)
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    meta = {"format": FORMAT, **state, "optimizer": opt_meta, "rng": rng_meta}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(meta)})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint: `{"params", "params_ema" (or None), "optimizer", "rng_tensors", "state"}`."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise RobustirError(f"checkpoint {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw_meta = (fh.metadata() or {}).get(STATE_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise RobustirError(f"checkpoint {p} is not a readable safetensors file ({exc})") from None
    if raw_meta is None:
        raise RobustirError(f"checkpoint {p} has no robustir training state (is it a plain weights file?)")
    state = json.loads(raw_meta)
    if state.get("format") != FORMAT:
        raise RobustirError(f"checkpoint {p}: unsupported format {state.get('format')!r}, expected {FORMAT}")
    params = {k[len("params."):]: v for k, v in tensors.items() if k.startswith("params.")}
    ema = {k[len("params_ema."):]: v for k, v in tensors.items() if k.startswith("params_ema.")}
    return {
        "params": params,
        "params_ema": ema or None,
        "optimizer": optimizer_from_flat(tensors, state.pop("optimizer")),
        "rng_tensors": {k: v for k, v in tensors.items() if k.startswith("rng.")},
        "rng": state.pop("rng"),
        "state": state,
    }


def save_weights(path: str | Path, weights: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a plain state dict (official key names) as safetensors, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: _plain(v) for k, v in weights.items()}, str(tmp), metadata=metadata)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write pretty JSON atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")

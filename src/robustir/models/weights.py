"""Loading published checkpoints safely and strictly.

Checkpoints are untrusted: `.pth`/`.pt` files are read with `torch.load(weights_only=True)` (never plain pickle) and
`.safetensors` with safetensors; MatConvNet `.mat` files with h5py. Containers are unwrapped (BasicSR `params_ema` /
`params`, `state_dict`, DataParallel `module.` prefixes), known foreign layouts are renamed by
`robustir.models.convert`,
and every key and shape is validated before anything is copied, so a failed load leaves the model untouched.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustir.errors import CheckpointMismatchError, RobustirError, UnsafeCheckpointError

# Container keys tried in order when the file holds a wrapper dict rather than a state dict. EMA weights come first:
# they are what BasicSR-style trainers (and ours) evaluate with.
CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "network")
_LIST_LIMIT = 8


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LIST_LIMIT else "")


def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint file safely: safetensors, `torch.load(weights_only=True)`, or a MatConvNet `.mat` (h5py)."""
    p = Path(path)
    if not p.is_file():
        raise RobustirError(f"checkpoint {str(p)!r} does not exist or is not a file")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise RobustirError(f"checkpoint {str(p)!r} is not a readable safetensors file (truncated or corrupt?): "
                                f"{exc}") from None
    if suffix == ".mat":
        from robustir.models.convert import read_matconvnet

        return read_matconvnet(p)
    try:
        with warnings.catch_warnings():
            # a foreign pickle's protocol warning precedes the clear error below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if "unsupported global" in text or "allowed global" in text:
            raise UnsafeCheckpointError(
                f"checkpoint {str(p)!r} is unsafe: it contains pickled Python objects (for example a whole nn.Module) "
                f"rather than plain tensors, and robustir never unpickles untrusted files. Re-save it as a state dict "
                f"(torch.save(model.state_dict(), ...)) or as safetensors in a trusted environment.") from None
        # anything else the restricted unpickler rejects is not a tensor checkpoint (an image, text, a foreign pickle)
        raise RobustirError(f"checkpoint {str(p)!r} is not a PyTorch checkpoint of tensors (nor safetensors or .mat): "
                            f"the safe loader stops at {_unpickler_reason(exc)}; truncated, corrupt or another kind "
                            f"of file?") from None
    except Exception as exc:  # noqa: BLE001 (untrusted bytes: every failure becomes one clear error)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise RobustirError(f"checkpoint {str(p)!r} cannot be read (truncated or corrupt file?): "
                            f"{type(exc).__name__}{': ' + detail if detail else ''}") from None


def _unpickler_reason(exc: Exception) -> str:
    """The restricted unpickler's own one-line reason inside torch's long weights_only message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if line.lower().startswith("unsupported operand"):
            return repr(line)
    return repr(lines[-1]) if lines else type(exc).__name__


def unwrap_state_dict(obj: Any, *, key: str | None = None, source: str = "checkpoint") -> dict[str, Tensor]:
    """Extract the tensor state dict from a checkpoint object: `key` if given, else BasicSR / common containers."""
    if not isinstance(obj, Mapping):
        raise RobustirError(f"{source}: expected a state dict (a mapping of names to tensors), got "
                            f"{type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise RobustirError(f"{source}: has no key {key!r}; top-level keys: {_short([str(k) for k in obj])}")
        obj = obj[key]
    elif not all(isinstance(v, Tensor) for v in obj.values()):
        for k in CONTAINER_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping):
        raise RobustirError(f"{source}: the selected entry is a {type(obj).__name__}, not a state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad or not obj:
        raise RobustirError(f"{source}: not a state dict of tensors (non-tensor entries: {_short(bad) or 'none'}; "
                            f"pass key= to select one of: {_short([str(k) for k in obj])})")
    state = {str(k): v for k, v in obj.items()}
    # DataParallel / DistributedDataParallel prefixes (possibly nested)
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, strict: bool = True,
                     source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """Validate names and shapes against `model`; raise CheckpointMismatchError naming every problem.

    Returns (missing, unexpected) keys, which are only allowed when `strict` is False. Wrong shapes, integer or bool
    tensors for floating-point weights, NaN anywhere and infinite parameters are always errors.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    misshaped = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    wrong = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(target[k].shape)})" for k in misshaped]
    # an integer or bool tensor for a float weight would be cast silently into garbage; a NaN weight (or an infinite
    # parameter) only surfaces later as a non-finite output that does not point at the checkpoint
    params = {k for k, _ in model.named_parameters()}
    bad_dtype, non_finite = [], []
    for k, dst in target.items():
        src = state.get(k)
        if not isinstance(src, Tensor) or k in misshaped:
            continue
        if dst.is_floating_point() and not src.is_floating_point():
            bad_dtype.append(f"{k} ({str(src.dtype).removeprefix('torch.')}, model "
                             f"{str(dst.dtype).removeprefix('torch.')})")
        elif src.is_floating_point() and (not torch.isfinite(src).all() if k in params else torch.isnan(src).any()):
            non_finite.append(k)
    problems = []
    if wrong:
        problems.append(f"wrongly shaped keys: {_short(wrong)}")
    if bad_dtype:
        problems.append(f"non-floating-point tensors for floating-point weights: {_short(bad_dtype)}")
    if non_finite:
        problems.append(f"non-finite values (NaN or inf) in: {_short(non_finite)}")
    if strict and missing:
        problems.append(f"missing keys: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if not strict and len(missing) == len(target):
        problems.append(f"no key of the checkpoint matches the model (checkpoint keys: {_short(list(state))})")
    if problems:
        name = getattr(model, "robustir_type", type(model).__name__)
        raise CheckpointMismatchError(
            f"{source} does not fit the {name} model ({len(state)} checkpoint tensors, {len(target)} model tensors): "
            + "; ".join(problems) + (". Is it a checkpoint for another architecture or configuration (width, depth, "
                                     "channels, act_mode)?" if wrong or (strict and (missing or unexpected)) else
                                     ". The file is damaged or not a weight file of this model.")
            + " The model was left unchanged.")
    return missing, unexpected


def load_weights(model: nn.Module, path_or_state: str | Path | Mapping[str, Any], *, strict: bool = True,
                 key: str | None = None) -> nn.Module:
    """Load a checkpoint into `model` (in place) and return the model.

    Accepts a path (`.pth`, `.pt`, `.safetensors`, MatConvNet `.mat`) or an in-memory dict: plain state dicts (KAIR),
    `{"params"|"params_ema": ...}` (BasicSR; EMA preferred), `{"state_dict": ...}`, `module.` prefixes, and the foreign
    layouts known to `robustir.models.convert` (detected automatically). `key` selects a container entry explicitly.
    Everything is validated first; on any error the model is unchanged.
    """
    state, source = read_state_for(model, path_or_state, key=key)
    check_state_dict(model, state, strict=strict, source=source)
    copy_state(model, state)
    return model


def read_state_for(model: nn.Module, path_or_state: str | Path | Mapping[str, Any], *,
                   key: str | None = None) -> tuple[dict[str, Tensor], str]:
    """The checkpoint's state dict in `model`'s key layout (unwrapped, renamed), and a name for it in errors."""
    if isinstance(path_or_state, (str, Path)):
        source = f"checkpoint {str(path_or_state)!r}"
        obj = read_checkpoint(path_or_state)
    elif isinstance(path_or_state, Mapping):
        source, obj = "state dict", path_or_state
    else:
        raise RobustirError(f"weights: expected a file path or a state dict, got {type(path_or_state).__name__}")
    state = unwrap_state_dict(obj, key=key, source=source)
    from robustir.models.convert import adapt_state_dict

    return adapt_state_dict(state, model), source


def copy_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy the validated `state` into `model`'s tensors of the same names (keys `model` lacks are ignored)."""
    target = model.state_dict()
    with torch.no_grad():
        for k, dst in target.items():
            if k in state:
                src = state[k]
                if src.dtype != dst.dtype and not (src.is_floating_point() and dst.is_floating_point()):
                    src = src.to(dst.dtype)
                dst.copy_(src)

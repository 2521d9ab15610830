"""Growing a trained network deeper: load a shallower checkpoint, the added residual blocks starting as identities.

A NAFNet-family block is `y = x + f(x) * beta` then `y + g(y) * gamma` with `beta`, `gamma` zero at construction, so a
freshly built block is exactly the identity. A deeper network of the same width (more blocks in a stage) therefore
computes the shallower trained network's function at the start, and training continues from it with the extra
capacity instead of from scratch (the net2net idea, by construction instead of by weight surgery).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from robustir.errors import CheckpointMismatchError
from robustir.models.weights import _short, check_state_dict, copy_state, read_state_for

_SCALES = ("beta", "gamma")


def identity_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks of `model` whose output scales (`beta`, `gamma`) are all zero: identities."""
    found = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if name and all(s in params for s in _SCALES) and all(not bool(params[s].detach().any()) for s in _SCALES):
            found.append(name)
    return found


def load_grown(model: nn.Module, path_or_state: str | Path | Mapping[str, Any], *, key: str | None = None) -> list[str]:
    """Load a shallower network's checkpoint into the deeper `model`; return the added blocks (identities) by name.

    Every checkpoint tensor must exist in `model` with its shape; every model tensor the checkpoint lacks must lie in a
    whole residual block that the checkpoint lacks entirely and whose scales are zero (a fresh NAFNet-family block), so
    the loaded model computes exactly what the checkpoint's network computed. Anything else is an error naming the
    keys, and the model is left unchanged.
    """
    state, source = read_state_for(model, path_or_state, key=key)
    missing, unexpected = check_state_dict(model, state, strict=False, source=source)
    name = getattr(model, "robustir_type", type(model).__name__)
    problems = []
    if unexpected:
        problems.append(f"the checkpoint has keys the model lacks ({_short(unexpected)}), so it is not a shallower "
                        f"network of the same kind")
    added = sorted(b for b in identity_blocks(model) if any(k.startswith(b + ".") for k in missing))
    partial = [b for b in added if any(k.startswith(b + ".") for k in state)]
    if partial:
        problems.append(f"blocks only partly in the checkpoint: {_short(partial)}")
    stray = [k for k in missing if not any(k.startswith(b + ".") for b in added)]
    if stray:
        problems.append(f"missing keys outside an added identity block (a block with zero beta/gamma, as in the "
                        f"NAFNet family): {_short(stray)}")
    if not missing and not problems:
        problems.append("the checkpoint already has every key of the model: nothing to grow (use a plain init)")
    if problems:
        raise CheckpointMismatchError(f"{source} cannot grow into the {name} model: " + "; ".join(problems)
                                      + ". The model was left unchanged.")
    copy_state(model, state)
    return added


__all__ = ["identity_blocks", "load_grown"]

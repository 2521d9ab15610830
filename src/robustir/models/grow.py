"""Growing a trained network deeper: load a shallower checkpoint, the added residual blocks starting as identities.

A residual block whose branches end in a zero tensor computes the identity: a NAFNet-family block is
`y = x + f(x) * beta` then `y + g(y) * gamma` (`beta`, `gamma` zero at construction), a Restormer transformer block is
`x + attn(LN(x))` then `+ ffn(LN(x))`, each branch ending in a 1x1 `project_out` convolution. Zeroing the added blocks'
output scales (`beta`/`gamma`, or the two `project_out` layers: the zero-init residual trick) makes a deeper network of
the same width compute the shallower trained network's function at the start, and training continues from it with the
extra capacity instead of from scratch (the net2net idea). The zeroed scales still get gradients (their inputs are
not zero), so the added blocks open up from the first update.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustir.errors import CheckpointMismatchError
from robustir.models.nafnet import NAFBlock
from robustir.models.restormer import TransformerBlock
from robustir.models.weights import _short, check_state_dict, copy_state, read_state_for


def _output_scales(module: nn.Module) -> list[nn.Parameter] | None:
    """The parameters whose zeroing makes residual block `module` an identity; None when it is no such block."""
    # by class, not by parameter names: zeroing a look-alike (a norm layer's gamma/beta) would silently change the model
    if isinstance(module, NAFBlock):
        return [module.beta, module.gamma]
    if isinstance(module, TransformerBlock):
        return [*module.attn.project_out.parameters(), *module.ffn.project_out.parameters()]
    return None


def residual_blocks(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The residual blocks of `model` that can start as identities, by name, with their output scales."""
    found = {}
    for name, module in model.named_modules():
        scales = _output_scales(module) if name else None
        if scales is not None:
            found[name] = scales
    return found


def identity_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks of `model` whose output scales are all zero: identities."""
    return [name for name, scales in residual_blocks(model).items()
            if all(not bool(p.detach().any()) for p in scales)]


def load_grown(model: nn.Module, path_or_state: str | Path | Mapping[str, Any], *, key: str | None = None) -> list[str]:
    """Load a shallower network's checkpoint into the deeper `model`; return the added blocks (now identities) by name.

    Every checkpoint tensor must exist in `model` with its shape; every model tensor the checkpoint lacks must lie in a
    whole residual block that the checkpoint lacks entirely (a NAFNet-family or Restormer block). Those blocks keep
    their own initialisation except for their output scales, which are zeroed, so the loaded model computes exactly
    what the checkpoint's network computed. Anything else is an error naming the keys, and the model is left unchanged.
    """
    state, source = read_state_for(model, path_or_state, key=key)
    missing, unexpected = check_state_dict(model, state, strict=False, source=source)
    name = getattr(model, "robustir_type", type(model).__name__)
    problems = []
    if unexpected:
        problems.append(f"the checkpoint has keys the model lacks ({_short(unexpected)}), so it is not a shallower "
                        f"network of the same kind")
    blocks = residual_blocks(model)
    added = sorted(b for b in blocks if any(k.startswith(b + ".") for k in missing))
    partial = [b for b in added if any(k.startswith(b + ".") for k in state)]
    if partial:
        problems.append(f"blocks only partly in the checkpoint: {_short(partial)}")
    stray = [k for k in missing if not any(k.startswith(b + ".") for b in added)]
    if stray:
        problems.append(f"missing keys outside an added residual block (a whole NAFNet-family or Restormer block "
                        f"absent from the checkpoint): {_short(stray)}")
    if not missing and not problems:
        problems.append("the checkpoint already has every key of the model: nothing to grow (use a plain init)")
    if problems:
        raise CheckpointMismatchError(f"{source} cannot grow into the {name} model: " + "; ".join(problems)
                                      + ". The model was left unchanged.")
    copy_state(model, state)
    with torch.no_grad():
        for b in added:
            for p in blocks[b]:
                p.zero_()
    return added


__all__ = ["identity_blocks", "load_grown", "residual_blocks"]

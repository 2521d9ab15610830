"""Key maps from foreign checkpoint layouts to robustir's official-equivalent models (one function per format).

`adapt_state_dict(state, model)` is called by `load_weights` after unwrapping; it leaves checkpoints that already use
the model's names alone and recognises:

* SaoYan/DnCNN-PyTorch (`dncnn.N.*` after the `module.` prefix is stripped): bias-free convs with BatchNorm
  (PyTorch default eps 1e-5) between them, output = predicted noise. Loaded into a KAIR `DnCNN` with BN
  (`act_mode="BR"`) by adding zero conv biases and rescaling each BN weight so KAIR's eps 1e-4 gives identical
  outputs; loaded into a BN-free `DnCNN` (`act_mode="R"`, the form of KAIR's releases) by folding BN into the convs.
  Both are exact up to float rounding. The residual (`y - net(y)`) that SaoYan applies outside its network is what
  our DnCNN does inside, so outputs agree.
* MatConvNet DnCNN `.mat` files (cszn/DnCNN, BN already merged): read by `read_matconvnet` into
  `matconvnet.<i>.weight/bias` keys (convs in order) and mapped onto the model's convs in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from robustir.errors import RobustirError

SAOYAN_BN_EPS = 1e-5  # nn.BatchNorm2d default used by SaoYan/DnCNN-PyTorch


def _conv_and_bn_keys(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Prefixes of the model's Conv2d layers in order, and the BatchNorm prefix following each conv (if any)."""
    convs: list[str] = []
    bn_after: dict[str, str] = {}
    last_conv: str | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            convs.append(name)
            last_conv = name
        elif isinstance(mod, nn.BatchNorm2d) and last_conv is not None:
            bn_after[last_conv] = name
    return convs, bn_after


def _foreign_layers(state: Mapping[str, Tensor], prefix: str) -> list[tuple[int, dict[str, Tensor]]]:
    """Group `prefix<i>.<param>` keys by index i, sorted."""
    layers: dict[int, dict[str, Tensor]] = {}
    for k, v in state.items():
        idx, _, param = k[len(prefix):].partition(".")
        layers.setdefault(int(idx), {})[param] = v
    return sorted(layers.items())


def _is_indexed(state: Mapping[str, Tensor], prefix: str) -> bool:
    return bool(state) and all(k.startswith(prefix) and k[len(prefix):].partition(".")[0].isdigit() for k in state)


def convert_conv_bn_sequence(layers: list[tuple[int, dict[str, Tensor]]], model: nn.Module, *, bn_eps: float,
                             fmt: str) -> dict[str, Tensor]:
    """Map an ordered list of conv (weight[, bias]) / BN (weight, bias, running_mean, running_var) layers onto the
    model's convs (and BNs), folding BN into the conv when the model has no BN after that conv."""
    convs, bn_after = _conv_and_bn_keys(model)
    target = model.state_dict()
    seq: list[tuple[dict[str, Tensor], dict[str, Tensor] | None]] = []
    for _, params in layers:
        if "running_mean" in params:
            if not seq or seq[-1][1] is not None:
                raise RobustirError(f"{fmt} checkpoint: a BatchNorm layer without a preceding conv")
            seq[-1] = (seq[-1][0], params)
        elif "weight" in params and params["weight"].ndim == 4:
            seq.append((params, None))
        else:
            raise RobustirError(f"{fmt} checkpoint: unrecognised layer with parameters {sorted(params)}")
    if len(seq) != len(convs):
        raise RobustirError(f"{fmt} checkpoint has {len(seq)} conv layers but the {type(model).__name__} model has "
                            f"{len(convs)} (check nb / depth)")
    out: dict[str, Tensor] = {}
    for (conv, bn), name in zip(seq, convs):
        w = conv["weight"].float()
        b = conv.get("bias")
        b = torch.zeros(w.shape[0]) if b is None else b.float().reshape(-1)
        model_bn = bn_after.get(name)
        if bn is not None and model_bn is not None:
            out[f"{model_bn}.weight"] = bn["weight"].float() * torch.sqrt(
                (bn["running_var"].float() + model.get_submodule(model_bn).eps) / (bn["running_var"].float() + bn_eps))
            out[f"{model_bn}.bias"] = bn["bias"].float()
            out[f"{model_bn}.running_mean"] = bn["running_mean"].float()
            out[f"{model_bn}.running_var"] = bn["running_var"].float()
            if f"{model_bn}.num_batches_tracked" in target:
                out[f"{model_bn}.num_batches_tracked"] = bn.get("num_batches_tracked",
                                                                torch.tensor(0, dtype=torch.long))
        elif bn is not None:
            scale = bn["weight"].float() / torch.sqrt(bn["running_var"].float() + bn_eps)
            b = (b - bn["running_mean"].float()) * scale + bn["bias"].float()
            w = w * scale.reshape(-1, 1, 1, 1)
        elif model_bn is not None:
            raise RobustirError(f"{fmt} checkpoint has no BatchNorm after conv {len(out)} but the model does; build "
                                f"the model without BN (act_mode 'R')")
        out[f"{name}.weight"] = w
        if f"{name}.bias" in target:
            out[f"{name}.bias"] = b
        elif bool(b.abs().max() > 0):
            raise RobustirError(f"{fmt} checkpoint needs a conv bias at {name} but the model has none")
    return out


def convert_saoyan_dncnn(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """SaoYan/DnCNN-PyTorch `dncnn.N.*` (bias-free convs + BN eps 1e-5) -> KAIR-layout DnCNN ('BR' or folded 'R')."""
    return convert_conv_bn_sequence(_foreign_layers(state, "dncnn."), model, bn_eps=SAOYAN_BN_EPS, fmt="SaoYan DnCNN")


def convert_matconvnet(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """MatConvNet DnCNN (`matconvnet.<i>.weight/bias`, BN merged) -> KAIR-layout DnCNN (convs in order)."""
    return convert_conv_bn_sequence(_foreign_layers(state, "matconvnet."), model, bn_eps=0.0, fmt="MatConvNet")


def read_matconvnet(path: str | Path) -> dict[str, Tensor]:
    """Read a MatConvNet SimpleNN `.mat` (v7.3/HDF5) into `matconvnet.<i>.weight/bias` (torch layout, conv order).

    MATLAB stores conv filters as (kh, kw, in, out) column-major, which h5py exposes reversed as (out, in, kw, kh);
    MatConvNet's `vl_nnconv` is a correlation like `nn.Conv2d`, so only the two spatial axes need swapping.
    """
    import h5py

    p = Path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise RobustirError(f"checkpoint {str(p)!r} is not a readable MATLAB v7.3 (HDF5) file: {exc}") from None
    with f:
        if "net" not in f or "layers" not in f["net"]:
            raise RobustirError(f"checkpoint {str(p)!r}: not a MatConvNet SimpleNN model (no net.layers)")
        refs = f["net"]["layers"][()].ravel()
        out: dict[str, Tensor] = {}
        n = 0
        for ref in refs:
            layer = f[ref]
            kind = "".join(map(chr, layer["type"][()].ravel()))
            if kind == "conv":
                w_ref, b_ref = layer["weights"][()].ravel()[:2]
                w = torch.from_numpy(f[w_ref][()]).float()
                if w.ndim == 3:  # MATLAB drops the trailing singleton 'out' dimension of the last layer
                    w = w.unsqueeze(0)
                out[f"matconvnet.{n}.weight"] = w.transpose(2, 3).contiguous()
                out[f"matconvnet.{n}.bias"] = torch.from_numpy(f[b_ref][()]).float().reshape(-1)
                n += 1
            elif kind not in ("relu",):
                raise RobustirError(f"checkpoint {str(p)!r}: MatConvNet layer type {kind!r} is not supported "
                                    f"(only conv and relu, as in the BN-merged DnCNN models)")
    if not out:
        raise RobustirError(f"checkpoint {str(p)!r}: no conv layers found")
    return out


def _match_by_prefix(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """Add or strip one leading module prefix (e.g. `net.` of a saved Restorer) when that makes the key sets equal."""
    for a, b, add in ((state, target, True), (target, state, False)):
        first = next(iter(b), "")
        for cut in [i + 1 for i, ch in enumerate(first) if ch == "."]:
            prefix = first[:cut]
            if all(k.startswith(prefix) for k in b) and {prefix + k for k in a} == set(b):
                return {prefix + k if add else k[len(prefix):]: v for k, v in state.items()}
    return None


def adapt_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a foreign checkpoint layout to the model's keys; checkpoints in the model's layout pass through."""
    target = model.state_dict()
    if set(state) & set(target):
        return state
    renamed = _match_by_prefix(state, target)
    if renamed is not None:
        return renamed
    if _is_indexed(state, "dncnn."):
        return convert_saoyan_dncnn(state, model)
    if _is_indexed(state, "matconvnet."):
        return convert_matconvnet(state, model)
    return state

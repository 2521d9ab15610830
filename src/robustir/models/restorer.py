"""The uniform call convention: `model(y, *, sigma=None, kernel=None) -> Tensor` on [0,1] images of any size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.registry import CallConvention, ModelInfo, build, get_model_info


def sigma_tensor(sigma: float | Tensor, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Noise level(s) in [0,1] image units as a `(N,)` tensor (a float, a `(N,)` or `(N,1,1,1)` tensor)."""
    s = torch.as_tensor(sigma, device=device, dtype=dtype).reshape(-1)
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise RobustirError(f"sigma: expected one value or {batch} values (one per image), got {s.numel()}")
    return s


def sigma_map(sigma: Tensor, like: Tensor) -> Tensor:
    """A constant noise-level map `(N,1,H,W)` shaped like `like`, from per-image levels `(N,)`."""
    n, _, h, w = like.shape
    return sigma.reshape(n, 1, 1, 1).to(like.dtype).expand(n, 1, h, w)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "reflect") -> tuple[Tensor, tuple[int, int]]:
    """Pad the bottom/right of `x` so H and W are multiples of `multiple`; return the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"  # reflect padding cannot exceed the size; tiny images fall back to replicate
    x = F.pad(x, (0, pw, 0, ph), mode=mode) if mode != "constant" else F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


class Restorer(nn.Module):
    """Wraps a network in the uniform call `model(y, *, sigma=None, kernel=None)`.

    Pads to the network's multiple and crops back, builds noise-level inputs, selects the final output of multi-output
    networks and handles each network's kernel convention. `sigma` is in [0,1] image units (25/255 for "sigma 25").
    """

    def __init__(self, net: nn.Module, call: CallConvention, name: str = "custom") -> None:
        super().__init__()
        self.net = net
        self.call = call
        self.name = name

    @property
    def needs_sigma(self) -> bool:
        """Whether the network needs a noise level."""
        return self.call.needs_sigma

    @property
    def needs_kernel(self) -> bool:
        """Whether the network needs the blur kernel."""
        return self.call.needs_kernel

    def forward(self, y: Tensor, *, sigma: float | Tensor | None = None, kernel: Tensor | None = None,
                all_outputs: bool = False) -> Tensor | list[Tensor]:
        """Restore a `(N, C, H, W)` batch in [0,1]; `all_outputs=True` returns every output of a multi-output network.

        With `all_outputs`, the list keeps the network's own order (MPRNet's stages last-first, DWDN's scales
        coarse-first, RGDN's unrolled steps) and each entry is cropped back; a reduced-scale output is cropped by the
        same fraction, so it matches the input downsampled by its factor. Training losses on every output (deep
        supervision, as the official MPRNet and DWDN recipes do) use it; `final(outputs)` picks the restored image.
        """
        if not isinstance(y, Tensor) or y.ndim != 4:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise RobustirError(f"{self.name}: input must be an (N, C, H, W) tensor, got {shape}")
        s = None
        if self.call.needs_sigma:
            if sigma is None:
                raise RobustirError(f"{self.name} is a non-blind denoiser: pass sigma= (noise level in [0,1] units, "
                                    f"e.g. 25/255)")
            s = sigma_tensor(sigma, y.shape[0], y.device, y.dtype)
            if not torch.jit.is_tracing() and isinstance(sigma, (int, float)) and sigma > 1:
                raise RobustirError(f"{self.name}: sigma={sigma} is in [0,1] image units; for 'sigma 25' pass 25/255")
        if self.call.needs_kernel and kernel is None:
            raise RobustirError(f"{self.name} is a non-blind deblurrer: pass kernel= (a (kh, kw) or (N, 1, kh, kw) "
                                f"blur kernel)")
        xp, (h, w) = pad_to_multiple(y, self.call.pad_multiple, self.call.pad_mode)
        try:
            out = self.call.adapter(self.net, xp, s, kernel) if self.call.adapter else self.net(xp)
        except torch.cuda.OutOfMemoryError:
            raise  # the device's limit, not the input's fault: callers (tiling, batch sizing) must see it as it is
        except RuntimeError as exc:
            raise RobustirError(f"{self.name}: forward failed on input of shape {tuple(y.shape)}: {exc}") from exc
        if all_outputs:
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            return [self._crop_scaled(o, xp.shape[-2:], (h, w), y) for o in outs]
        if isinstance(out, (list, tuple)):
            out = self.final(out)
        out = out[..., :h, :w]
        if out.shape[0] != y.shape[0] or out.shape[-2:] != y.shape[-2:]:
            raise RobustirError(f"{self.name}: output shape {tuple(out.shape)} does not match input {tuple(y.shape)}")
        return out

    def final(self, outputs: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        """The restored image among a multi-output network's outputs (the convention's `select`, else the last)."""
        return outputs[self.call.select if self.call.select is not None else -1]

    def _crop_scaled(self, out: Tensor, padded: tuple[int, int], size: tuple[int, int], y: Tensor) -> Tensor:
        """Crop one output (possibly at a reduced scale of the padded input) back to the unpadded region."""
        ph, pw = padded
        oh, ow = out.shape[-2:]
        f = max(1, round(ph / oh))  # a scale-f output of an odd size holds ceil(size / f) pixels
        if out.shape[0] != y.shape[0] or -(-ph // f) != oh or -(-pw // f) != ow:
            raise RobustirError(f"{self.name}: output shape {tuple(out.shape)} is not the input {tuple(y.shape)} "
                                f"at an integer scale")
        return out[..., : -(-size[0] // f), : -(-size[1] // f)]


def restorer(spec_or_net: Mapping[str, Any] | str | nn.Module, *, weights: Any = None,
             call: CallConvention | None = None) -> Restorer:
    """Wrap a spec, preset name or network in the uniform restorer call; optionally load weights (strict)."""
    if isinstance(spec_or_net, Restorer):
        return spec_or_net
    net = spec_or_net if isinstance(spec_or_net, nn.Module) else build(spec_or_net)
    info: ModelInfo | None = None
    type_name = getattr(net, "robustir_type", None) or type(net).__name__
    try:
        info = get_model_info(type_name)
    except RobustirError:
        info = None
    conv = call or (info.call if info else CallConvention())
    if weights is not None:
        from robustir.models.weights import load_weights

        load_weights(net, weights)
    return Restorer(net, conv, name=info.name if info else type_name).eval()

"""RGDN (Gong et al., "Learning deep gradient descent optimization for image deconvolution", TNNLS 2020).

Equivalent to `donggong1/learn-optimizer-rgdn` `models/model_rgdn.py` (class `OptimizerRGDN`, registered as `RGDN`):
same parameter names, `forward(y, k, kt)` returning the estimate after every unrolled step. One step is
`x <- 0.8 x + 0.2 D(H(A^T(Ax - y)) - R(x))` with three shared ConvBlocks H (`GradAdj`), R (`CNNOptimizer`) and
D (`GradScaler`); `A x = F.conv2d(x, k)` with zero padding (a cross-correlation with `k`) and `A^T r = F.conv2d(r, kt)`.

robustir extension: `boundary` pads y by twice the kernel radius before the unrolled descent and crops every step
back, so that on an image blurred with that boundary the data term is exact over the whole frame.
The official data term zero-pads (`boundary="zeros"`, the default, exactly the official network), which models a
black world outside the frame. Measured with plain gradient steps `x -= A^T(Ax - y)` on two circularly blurred
held-out crops (CBSD68 x Levin, 128²): 10 / 50 steps reach 25.2 / 25.3 dB inside a 20-px border but only 20.6 / 18.5 dB
over the whole frame; padding y circularly by 32 px gives 24.6 / 26.5 dB over the whole frame (replicate: 23.7 /
24.4, the usual choice for real photos). Use the boundary the blur had.

The number of unrolled steps is a constructor argument and can be overridden per call (`forward(..., num_steps=50)`,
or set `net.num_steps`); paper 001 crafts attacks on 10 steps and evaluates on 50. Unlike the official code, the
kernel is not detached, so gradients also reach `k` and `kt` (forward values are unchanged).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustir.errors import RobustirError
from robustir.models.deblur_kernels import batch_kernels, odd_square
from robustir.models.registry import CallConvention, register_model, register_preset


BOUNDARIES = ("zeros", "circular", "replicate", "reflect")


class ConvBlock(nn.Module):
    """3 convs then 3 transposed convs (5x5, stride 1, no bias) with BN/ReLU: the official `ConvBlock` (`main.*`)."""

    def __init__(self, *, n_feature_2: int = 64, channels: int = 3) -> None:
        super().__init__()
        n = n_feature_2
        self.main = nn.Sequential(
            nn.Conv2d(channels, n, 5, 1, 2, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(n, n, 5, 1, 2, bias=False), nn.BatchNorm2d(n), nn.ReLU(inplace=True),
            nn.Conv2d(n, n, 5, 1, 2, bias=False), nn.BatchNorm2d(n), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(n, n, 5, 1, 2, bias=False), nn.BatchNorm2d(n), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(n, n, 5, 1, 2, bias=False), nn.BatchNorm2d(n), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(n, channels, 5, 1, 2, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        return self.main(x)


def grad_data_fitting(x: Tensor, y: Tensor, k: Tensor, kt: Tensor) -> Tensor:
    """Gradient `A^T(Ax - y)` of the data term, per image: `A = conv2d(., k)`, `A^T = conv2d(., kt)`, zero padding.

    x, y: `(N, C, H, W)`; k, kt: `(N, 1, kh, kw)` with odd sizes (one kernel per image, applied to every channel).
    """
    n = x.shape[0]
    pad = (k.shape[-2] // 2, k.shape[-1] // 2)
    # channels become the batch and images the groups, so each image gets its own kernel
    r = F.conv2d(x.transpose(0, 1), k, padding=pad, groups=n) - y.transpose(0, 1)
    return F.conv2d(r, kt, padding=(kt.shape[-2] // 2, kt.shape[-1] // 2), groups=n).transpose(0, 1)


def _rgdn_adapter(net: nn.Module, y: Tensor, sigma: Tensor | None, kernel: Tensor | None) -> list[Tensor]:
    """Uniform call -> official `(y, k, kt)`: conv2d correlates, so k = flip(blur kernel) and kt = the blur kernel."""
    # even or non-square kernels are zero-padded to odd squares around the same centre (the network needs odd sizes)
    kt = odd_square(batch_kernels(kernel, y, "RGDN"))
    return net(y, torch.flip(kt, dims=(-2, -1)), kt)


@register_model("RGDN", task="deblur",
                description="RGDN (TNNLS 2020) learned recurrent gradient descent, non-blind; (y, k, kt) -> steps",
                call=CallConvention(needs_kernel=True, adapter=_rgdn_adapter, select=-1),
                test_spec={"type": "RGDN", "n_feature_2": 6, "num_steps": 2})
class RGDN(nn.Module):
    """Recurrent gradient descent network (official `donggong1/learn-optimizer-rgdn`, class `OptimizerRGDN`).

    Args:
        num_steps: unrolled gradient steps (released test: 40; paper 001: 10 to craft, 50 to evaluate).
        use_grad_adj, use_grad_scaler, use_reg: official switches for H, D and R (all True when released).
        share_parameter: must be True (the official code only builds the shared-parameter variant).
        stop_epsilon: early stop when the relative change ||x_i - x_{i-1}|| / ||x_{i-1}|| of the whole batch falls
            below it ('inf' or math.inf: never, the official default). The official stopping rule is not in the
            stored snapshot; this is robustir's rule.
        n_feature_2: ConvBlock width (hard-coded 64 in the official code).
        boundary: robustir extension, how y is extended by twice the kernel radius before the descent: 'zeros'
            (no padding, the official behaviour), 'circular', 'replicate' or 'reflect'; the outputs are cropped back.

    `forward(y, k, kt, num_steps=None)`: y `(N, 3, H, W)`, k and kt `(N, 1, ks, ks)` odd; returns a list with the
    estimate after each step (the last is the result).
    """

    def __init__(self, *, num_steps: int = 40, use_grad_adj: bool = True, use_grad_scaler: bool = True,
                 use_reg: bool = True, share_parameter: bool = True, stop_epsilon: float | str = math.inf,
                 n_feature_2: int = 64, boundary: str = "zeros") -> None:
        super().__init__()
        if boundary not in BOUNDARIES:
            raise RobustirError(f"RGDN: boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        self.boundary = boundary
        if not share_parameter:
            raise RobustirError("RGDN: share_parameter=False is not supported (the official code builds no "
                                "unshared variant)")
        self.num_steps = _check_steps(num_steps)
        try:
            self.stop_epsilon = float(stop_epsilon)
        except (TypeError, ValueError):
            raise RobustirError(f"RGDN: stop_epsilon must be a number or 'inf', got {stop_epsilon!r}") from None
        if not self.stop_epsilon > 0:
            raise RobustirError(f"RGDN: stop_epsilon must be positive, got {stop_epsilon!r}")
        self.momen = 0.8
        self.use_grad_adj, self.use_grad_scaler, self.use_reg = use_grad_adj, use_grad_scaler, use_reg
        self.share_parameter = share_parameter
        # creation order follows the official constructor, so state_dict keys come out in the same order
        if use_reg:
            self.CNNOptimizer = ConvBlock(n_feature_2=n_feature_2)
        if use_grad_adj:
            self.GradAdj = ConvBlock(n_feature_2=n_feature_2)
        if use_grad_scaler:
            self.GradScaler = ConvBlock(n_feature_2=n_feature_2)

    def forward(self, y: Tensor, k: Tensor, kt: Tensor, num_steps: int | None = None) -> list[Tensor]:
        """Run the unrolled optimiser from x0 = y; return the estimate after every step."""
        steps = self.num_steps if num_steps is None else _check_steps(num_steps)
        if y.ndim != 4 or y.shape[1] != 3:
            raise RobustirError(f"RGDN: y must be (N, 3, H, W) (the ConvBlocks take RGB), got {tuple(y.shape)}")
        for name, t in (("k", k), ("kt", kt)):
            if t.ndim != 4 or t.shape[0] != y.shape[0] or t.shape[1] != 1:
                raise RobustirError(f"RGDN: {name} must be (N, 1, kh, kw) with N={y.shape[0]}, got {tuple(t.shape)}")
            if t.shape[-2] % 2 == 0 or t.shape[-1] % 2 == 0:
                raise RobustirError(f"RGDN: {name} must have odd sizes, got {tuple(t.shape)}")
        # two radii: the residual is exact from one radius inside the padded frame, its adjoint from two
        ph, pw = (k.shape[-2] - 1, k.shape[-1] - 1) if self.boundary != "zeros" else (0, 0)
        if ph or pw:
            if self.boundary == "reflect" and (ph >= y.shape[-2] or pw >= y.shape[-1]):
                raise RobustirError(f"RGDN: reflect padding by twice the kernel radius ({ph}, {pw}) needs an image "
                                    f"larger than that, got {tuple(y.shape[-2:])}")
            y = F.pad(y, (pw, pw, ph, ph), mode=self.boundary)
        x = y
        outputs: list[Tensor] = []
        for _ in range(steps):
            grad = grad_data_fitting(x, y, k, kt)
            direction = self.GradAdj(grad) if self.use_grad_adj else grad
            if self.use_reg:
                direction = direction - self.CNNOptimizer(x)
            step = self.GradScaler(direction) if self.use_grad_scaler else direction
            x_new = self.momen * x + (1 - self.momen) * step
            outputs.append(x_new[..., ph:x_new.shape[-2] - ph, pw:x_new.shape[-1] - pw] if ph or pw else x_new)
            if math.isfinite(self.stop_epsilon):
                change = float(torch.linalg.vector_norm(x_new - x) / torch.linalg.vector_norm(x).clamp_min(1e-12))
                if change < self.stop_epsilon:
                    break
            x = x_new
        return outputs



def _check_steps(num_steps: object) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise RobustirError(f"RGDN: num_steps must be a positive integer, got {num_steps!r}")
    return num_steps


register_preset("rgdn", {"type": "RGDN"},
                "RGDN as released (rgdn.tr; ConvBlock width 64, 1,259,136 parameters), 40 unrolled steps")
register_preset("rgdn-craft10", {"type": "RGDN", "num_steps": 10},
                "RGDN unrolled 10 steps: paper 001 crafts attacks on this unroll")
register_preset("rgdn-eval50", {"type": "RGDN", "num_steps": 50},
                "RGDN unrolled 50 steps: paper 001 evaluates (transferred) attacks on this unroll")
register_preset("rgdn-small", {"type": "RGDN", "n_feature_2": 16, "num_steps": 10},
                "RGDN with ConvBlock width 16 and 10 steps: trainable on CPU")

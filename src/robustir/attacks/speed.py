"""Speed options of the attack loop: mixed-precision dtype names and whether a device runs bf16 natively.

The options themselves (`amp_dtype`, `channels_last`, `compile`, `checkpoint`) are fields of `Attack`; this module
turns the names users write in YAML files and on the command line into them.
"""

from __future__ import annotations

import functools

import torch

from robustir.errors import RobustirError

_AMP_NAMES: dict[str, torch.dtype | None] = {
    "none": None, "fp32": None, "float32": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def parse_amp_dtype(value: torch.dtype | str | None, where: str = "amp_dtype") -> torch.dtype | None:
    """Autocast dtype from a dtype or a name ('bf16', 'fp16', 'none', ...); None means full float32."""
    if value is None or value in (torch.bfloat16, torch.float16):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value.strip().lower() in _AMP_NAMES:
        return _AMP_NAMES[value.strip().lower()]
    raise RobustirError(f"{where}: expected one of {', '.join(sorted(_AMP_NAMES))} (or torch.bfloat16 / "
                        f"torch.float16), got {value!r}")


@functools.lru_cache(maxsize=None)
def _cpu_bf16_native() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op: absent in some builds
        return False


def bf16_native(device: torch.device | str) -> bool:
    """Whether bf16 autocast runs on native kernels on `device` (else it is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_bf16_native()
    return True  # other accelerators (mps, xpu) are left to the user

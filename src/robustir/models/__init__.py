"""Restoration networks: registry, official-equivalent architectures, checkpoint loading, uniform restorer call."""

from robustir.models.registry import (CallConvention, ModelInfo, build, get_model_info, list_models, list_presets,
                                      parse_spec, register_model, register_preset,
                                      resolve_spec)
from robustir.models.restorer import Restorer, pad_to_multiple, restorer, sigma_map, sigma_tensor
from robustir.models.weights import load_weights

# Every model file is imported here by name, so registration never depends on import side effects elsewhere.
# (Model files are added below as they land.)
from robustir.models import mprnet  # noqa: F401,E402
from robustir.models import deblurganv2  # noqa: F401,E402
from robustir.models import dwdn  # noqa: F401,E402
from robustir.models import rgdn  # noqa: F401,E402
from robustir.models import dncnn  # noqa: F401,E402
from robustir.models import ffdnet  # noqa: F401,E402
from robustir.models import drunet  # noqa: F401,E402
from robustir.models import dpir  # noqa: F401,E402
from robustir.models import ecndnet  # noqa: F401,E402
from robustir.models import rddcnn  # noqa: F401,E402
from robustir.models import deamnet  # noqa: F401,E402
from robustir.models import swinir  # noqa: F401,E402
from robustir.models import ctnet  # noqa: F401,E402
from robustir.models import nafnet  # noqa: F401,E402
from robustir.models import restormer  # noqa: F401,E402
from robustir.degradations import classical  # noqa: F401,E402  (Wiener, RichardsonLucy)

__all__ = ["CallConvention", "ModelInfo", "Restorer", "build", "get_model_info", "list_models", "list_presets",
           "load_weights", "pad_to_multiple", "parse_spec", "register_model", "register_preset", "resolve_spec",
           "restorer",
           "sigma_map", "sigma_tensor"]

"""Ray backend: each task runs one batch; a worker prepares an experiment's context once and reuses it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustir.experiments.execute import BatchOutput, Context, prepare, run_batch
from robustir.experiments.jobs import Job
from robustir.experiments.spec import Experiment

_CONTEXTS: dict[str, Context] = {}


def run_batch_in_worker(exp: Experiment, jobs: Sequence[Job]) -> list[BatchOutput]:
    """Run a batch inside a Ray worker, preparing (and caching) the experiment context on first use."""
    import torch

    torch.set_num_threads(1)  # one task per core: intra-op threads would oversubscribe the worker's CPU
    key = exp.fingerprint()
    if key not in _CONTEXTS:
        _CONTEXTS[key] = prepare(exp)
    return run_batch(_CONTEXTS[key], jobs)


def remote_run_batch(ray: Any) -> Any:
    """The Ray remote version of `run_batch_in_worker` (GPU tasks ask for one GPU when the cluster has them)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(run_batch_in_worker)

"""Expanding an experiment into jobs (model x data item x attack grid point), with stable keys, seeds and batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import robustir
from robustir.experiments.spec import Experiment, expand_grid


@dataclass(frozen=True)
class Item:
    """One observation: an image of a dataset, with the blur kernel it gets (if any)."""

    dataset: str
    image_index: int
    image_name: str
    kernel_index: int | None
    shape: tuple[int, int, int]
    kernel_shape: tuple[int, int] | None

    @property
    def name(self) -> str:
        """Stable item name, e.g. `01` or `01/k3`."""
        return self.image_name if self.kernel_index is None else f"{self.image_name}/k{self.kernel_index + 1}"


@dataclass(frozen=True)
class Job:
    """One (crafting model, item, attack grid point); evaluated on the crafting model and its transfer targets."""

    key: str
    model: str
    eval_models: tuple[str, ...]
    item: Item
    attack: str
    params: Mapping[str, Any]
    seed: int
    target_index: int | None = None
    group: tuple[Any, ...] = field(default=(), compare=False)


def stable_hash(payload: Any, n: int = 20) -> str:
    """Hex digest of a JSON-serialisable payload (sorted keys), truncated to `n` characters."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from the experiment seed and identifying parts (order-independent of execution)."""
    return int(stable_hash(list(parts), 16), 16) & ((1 << 63) - 1)


def expand_jobs(exp: Experiment, items: Mapping[str, Sequence[Item]], fingerprints: Mapping[str, str],
                target_of: Callable[[Item, Sequence[Item]], int | None] | None = None) -> list[Job]:
    """All jobs of an experiment in a deterministic order.

    Args:
        exp: the experiment.
        items: dataset id -> its items (images x kernels).
        fingerprints: model id -> hash of spec + weights checksum + sigma (so changed weights give new keys).
        target_of: for targeted attacks, the index (into the dataset's items) of an item's target image.
    """
    sources = {t.source: t.targets for t in exp.transfer}
    jobs: list[Job] = []
    for model in exp.models:
        if not model.craft:  # evaluated only as a transfer target
            continue
        eval_models = (model.id, *sources.get(model.id, ()))
        for data in exp.data:
            if not model.runs_on(data.id):
                continue
            ds_items = items[data.id]
            for attack in exp.attacks:
                if not attack.runs_on(data.id):
                    continue
                for params in expand_grid(attack.params):
                    for item in ds_items:
                        tgt = None
                        if attack.target is not None:
                            tgt = target_of(item, ds_items) if target_of else None
                        payload = {
                            "code": robustir.__version__, "model": fingerprints[model.id],
                            "eval": [fingerprints[m] for m in eval_models],
                            "data": {"source": data.source, "limit": data.limit, "crop": data.crop,
                                     "resize": data.resize, "channels": data.channels,
                                     "degradation": data.degradation.__dict__},
                            "item": item.name, "attack": {"preset": attack.preset, "params": params,
                                                          "target": attack.target},
                            "target": None if tgt is None else ds_items[tgt].name, "seed": exp.seed,
                            # what a job records (so a kept job never lacks a metric or mixes quantisations)
                            # and the ids its rows carry (so a renamed model is a new job, not a mislabelled one)
                            "metrics": list(exp.metrics), "quantize": exp.quantize,
                            "ids": [model.id, data.id, attack.id, list(eval_models)],
                        }
                        key = stable_hash(payload)
                        eps_free = {k: v for k, v in params.items() if k != "eps"}
                        group = (model.id, data.id, attack.id, json.dumps(eps_free, sort_keys=True), item.shape,
                                 item.kernel_shape)
                        jobs.append(Job(key, model.id, eval_models, item, attack.id, params,
                                        derive_seed(exp.seed, key), tgt, group))
    return jobs


def plan_batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Group jobs that can share one batched attack (same model, attack config up to eps, image and kernel shape).

    The plan depends only on the full job list, never on which jobs are already finished, so a resumed run
    computes every batch exactly as an uninterrupted run does.
    """
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    batches = []
    for members in groups.values():
        for i in range(0, len(members), batch_size):
            batches.append(members[i:i + batch_size])
    return batches

"""Running an experiment: expand jobs, skip finished ones, execute batches (local or Ray), record results.

Only the driver writes: artifacts first (atomically, at paths derived from the job key), then the job's rows in one
database transaction. A kill at any moment loses at most the batches in flight; re-running recomputes exactly those
(batches are planned from the full job list, so their contents never depend on what had finished).

The database always describes the current job list exactly: recorded jobs the experiment no longer holds (a
removed model, retrained weights, another code version) are deleted before anything runs, so a report never mixes
them in. `extend=True` accepts an edited version of the same experiment (same name) in the output folder and keeps
the jobs it still holds, so adding a model, an attack or an image runs only the new jobs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

import robustir
from robustir.data.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temps
from robustir.errors import RobustirError
from robustir.experiments.db import DB_NAME, ResultsDB
from robustir.experiments.execute import BatchOutput, Context, prepare, run_batch
from robustir.experiments.jobs import Job, plan_batches
from robustir.experiments.spec import Experiment



@dataclass
class RunSummary:
    """What a run did."""

    output: Path
    total_jobs: int
    skipped: int
    executed: int
    seconds: float
    compute_seconds: float
    dropped: int = 0


def _check_output(exp: Experiment, force: bool, extend: bool) -> bool:
    """Refuse an output folder holding another experiment's results (unless `force` or `extend` for an edited version
    of the same experiment, whose still-valid jobs `_drop_stale` keeps); True when `_discard_results` must run."""
    db_path = exp.output / DB_NAME
    wal = exp.output / f"{DB_NAME}-wal"
    if not db_path.exists() or (db_path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size)):
        return False  # an empty file holds nothing to protect; anything else must be a robustir database
    with ResultsDB(db_path, read_only=True) as db:
        existing = db.get_meta("fingerprint")
        other_name = db.get_meta("experiment")
        recorded = len(db.finished_keys())
    # a database without a single job (a run that failed before its first job) holds no results to protect; its
    # metadata is overwritten and `_drop_stale` sweeps any artifact folder it left
    if recorded == 0 or existing == exp.fingerprint() or (extend and other_name == exp.name and not force):
        return False
    if not force:
        what, hint = ("another version of this experiment", "--extend to keep the jobs this version still holds, "
                      "or --force to discard them") if other_name == exp.name else \
            ("a different experiment", "or --force to discard them")
        raise RobustirError(f"output folder {exp.output} holds results of {what} ({other_name!r}, fingerprint "
                            f"{existing}); use another output folder, {hint}")
    return True


def _discard_results(out_dir: Path) -> None:
    """Delete the results database (with its WAL files) and the artifacts of an output folder."""
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "artifacts", ignore_errors=True)


def _remove_if_empty(out_dir: Path, created_dir: bool) -> None:
    """After a run that failed before recording any job, delete the database it created (and the folder, if this
    run created it and nothing else is in it), so no empty result set is left behind."""
    with ResultsDB(out_dir / DB_NAME, read_only=True) as db:
        if db.finished_keys():
            return
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        (out_dir / name).unlink(missing_ok=True)
    artifacts = out_dir / "artifacts"
    if artifacts.is_dir() and not any(artifacts.iterdir()):
        artifacts.rmdir()
    if created_dir and not any(out_dir.iterdir()):
        out_dir.rmdir()


def _drop_stale(out_dir: Path, db: ResultsDB, jobs: Sequence[Job]) -> int:
    """Delete recorded jobs whose keys `jobs` lacks, and artifact folders of such keys; returns the jobs deleted.

    Keys hash everything a job's rows depend on, ids included, so a renamed model's jobs are stale too. Artifact
    folders are swept by name, which also removes those a run killed after the deletion left behind.
    """
    wanted = {j.key for j in jobs}
    stale = db.finished_keys() - wanted
    dropped = db.drop_jobs(stale) if stale else 0
    artifacts = out_dir / "artifacts"
    for folder in artifacts.iterdir() if artifacts.is_dir() else ():
        if folder.name not in wanted:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    return dropped


def _write_outputs(out_dir: Path, db: ResultsDB, outputs: Sequence[BatchOutput], done: set[str]) -> int:
    """Write artifacts atomically, then each job's rows in its own transaction; returns the number of new jobs.

    `done` (the keys already in the database) is updated in place: a batch re-run for one unfinished job must not
    rewrite the artifacts or rows of its finished neighbours.
    """
    new = 0
    for out in outputs:
        if out.result.job_key in done:
            continue
        for rel, payload in out.files.items():
            atomic_write_bytes(out_dir / rel, payload)
        if db.write_job(out.result):
            new += 1
        done.add(out.result.job_key)
    return new


def _local_batches(ctx: Context, batches: Sequence[Sequence[Job]]) -> Iterator[list[BatchOutput]]:
    for batch in batches:
        yield run_batch(ctx, batch)


def _ray_batches(exp: Experiment, batches: Sequence[Sequence[Job]], address: str | None) -> Iterator[list[BatchOutput]]:
    """Run batches as Ray tasks; results come back to the driver in completion order."""
    try:
        import ray
    except ImportError:
        raise RobustirError("the ray backend needs Ray: pip install 'robustir[ray]'") from None
    from robustir.experiments.ray_backend import remote_run_batch

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        task = remote_run_batch(ray)
        exp_ref = ray.put(exp)
        pending = [task.remote(exp_ref, list(b)) for b in batches]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started_here:
            ray.shutdown()


def run_experiment(exp: Experiment, *, backend: str = "local", address: str | None = None, force: bool = False,
                   extend: bool = False, progress: bool = True, max_batches: int | None = None) -> RunSummary:
    """Run (or resume) an experiment into its output folder and return a summary.

    Args:
        exp: the validated experiment.
        backend: 'local' (in-process) or 'ray'.
        address: Ray cluster address (None starts a local instance).
        force: discard results of a different experiment found in the output folder.
        extend: the output folder may hold an earlier version of this experiment (same name): keep its jobs that
            this version still holds (same key: same weights, data, attack, seed and metrics), drop the rest.
        progress: show a progress bar.
        max_batches: stop after this many batches (for tests and partial runs).
    """
    if backend not in ("local", "ray"):
        raise RobustirError(f"backend must be 'local' or 'ray', got {backend!r}")
    t0 = time.perf_counter()
    discard = _check_output(exp, force, extend)
    # the preflight (data, sizes, channels, models, metrics) runs before anything is written or discarded, so a bad
    # input leaves the output folder as it was
    ctx = prepare(exp)
    jobs = ctx.jobs
    created_dir = not exp.output.exists()
    exp.output.mkdir(parents=True, exist_ok=True)
    if discard:
        _discard_results(exp.output)
    remove_stale_temps(exp.output)  # left by a run killed in the middle of an atomic write
    created_db = not (exp.output / DB_NAME).exists()
    try:
        executed, skipped, dropped, compute = _run_jobs(exp, ctx, backend, address, progress, max_batches)
    except BaseException:
        if created_db and (exp.output / DB_NAME).exists():
            # best effort: a failure of the clean-up must not hide the error that stopped the run
            with contextlib.suppress(Exception):
                _remove_if_empty(exp.output, created_dir)
        raise
    atomic_write_text(exp.output / "experiment.json", json.dumps(ctx.config_snapshot, indent=2, default=str))
    return RunSummary(exp.output, len(jobs), skipped, executed, time.perf_counter() - t0, compute, dropped)


def _run_jobs(exp: Experiment, ctx: Context, backend: str, address: str | None, progress: bool,
              max_batches: int | None) -> tuple[int, int, int, float]:
    """Record metadata, drop stale jobs, run pending batches; returns (executed, skipped, dropped, compute s)."""
    jobs = ctx.jobs
    with ResultsDB(exp.output / DB_NAME) as db:
        db.set_meta({"fingerprint": exp.fingerprint(), "experiment": exp.name, "code_version": robustir.__version__,
                     "paper": exp.paper or "",
                     # insertion order kept: reports list models and attacks in the file's order
                     "config": json.dumps(ctx.config_snapshot, default=str)})
        dropped = _drop_stale(exp.output, db, jobs)
        finished = db.finished_keys()
        batches = [b for b in plan_batches(jobs, exp.batch_size) if any(j.key not in finished for j in b)]
        if max_batches is not None:
            batches = batches[:max_batches]
        skipped = sum(j.key in finished for j in jobs)
        pending_jobs = sum(len(b) for b in batches)
        executed = 0
        compute = 0.0
        bar = tqdm(total=pending_jobs, desc=exp.name, unit="job", disable=not progress, dynamic_ncols=True)
        source = (_local_batches(ctx, batches) if backend == "local" else _ray_batches(exp, batches, address))
        try:
            for outputs in source:
                executed += _write_outputs(exp.output, db, outputs, finished)
                compute += sum(o.result.seconds for o in outputs)
                bar.update(len(outputs))
        finally:
            bar.close()
    return executed, skipped, dropped, compute

"""Crash-safe results database: SQLite in WAL mode, one transaction per finished job.

A job's rows (the job, its metrics, its loss summary and artifact paths) are written in a single transaction, so a
`kill -9` at any moment leaves either all of a job or none of it. Job keys are primary keys, so a re-run can never
duplicate a row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustir.errors import RobustirError

DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    item TEXT NOT NULL,
    attack TEXT NOT NULL,
    params TEXT NOT NULL,
    seed INTEGER NOT NULL,
    loss_first REAL, loss_last REAL, loss_best REAL,
    seconds REAL NOT NULL,
    artifacts TEXT NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    job_key TEXT NOT NULL REFERENCES jobs(job_key),
    eval_model TEXT NOT NULL,
    metric TEXT NOT NULL,
    clean REAL,
    attacked REAL,
    PRIMARY KEY (job_key, eval_model, metric)
);
CREATE TABLE IF NOT EXISTS losses (
    job_key TEXT PRIMARY KEY REFERENCES jobs(job_key),
    history TEXT NOT NULL
);
"""


@dataclass
class JobResult:
    """Everything recorded for one finished (job, image)."""

    job_key: str
    model: str
    dataset: str
    item: str
    attack: str
    params: Mapping[str, Any]
    seed: int
    seconds: float
    metrics: list[tuple[str, str, float | None, float | None]]  # (eval_model, metric, clean, attacked)
    loss_history: list[float] = field(default_factory=list)
    artifacts: Mapping[str, str] = field(default_factory=dict)


class ResultsDB:
    """The results database of one experiment output folder."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        try:
            if read_only:
                # readers (reports, output-folder checks) must never create tables in, or otherwise change, a file
                # that may not even be ours
                if not self.path.is_file():
                    raise RobustirError(f"{self.path}: no results database")
                # query_only rather than a mode=ro URI: a read-only connection cannot clean up the WAL files when it
                # closes last, and would leave results.sqlite-wal/-shm next to every database it read
                self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                self.conn.execute("PRAGMA query_only = ON")
                tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"meta", "jobs", "metrics", "losses"} <= tables:
                    self.conn.close()
                    raise RobustirError(f"{self.path}: not a robustir results database (tables: "
                                        f"{', '.join(sorted(tables)) or 'none'})")
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RobustirError(f"{self.path}: not a usable results database ({exc})") from None

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_meta(self, key: str) -> str | None:
        """A metadata value, or None."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, items: Mapping[str, str]) -> None:
        """Write metadata values in one transaction."""
        with self._transaction():
            self.conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(items.items()))

    def finished_keys(self) -> set[str]:
        """Keys of all finished jobs."""
        return {r[0] for r in self.conn.execute("SELECT job_key FROM jobs")}

    def drop_jobs(self, keys: Iterable[str]) -> int:
        """Delete these jobs and their metric and loss rows in one transaction; returns how many were deleted."""
        keys = [(k,) for k in keys]
        with self._transaction():
            self.conn.executemany("DELETE FROM metrics WHERE job_key = ?", keys)
            self.conn.executemany("DELETE FROM losses WHERE job_key = ?", keys)
            before = self.conn.total_changes
            self.conn.executemany("DELETE FROM jobs WHERE job_key = ?", keys)
            return self.conn.total_changes - before

    def _transaction(self) -> Any:
        conn = self.conn

        class _Tx:
            def __enter__(self) -> None:
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, et: object, ev: object, tb: object) -> None:
                conn.execute("COMMIT" if et is None else "ROLLBACK")

        return _Tx()

    def write_job(self, r: JobResult) -> bool:
        """Record one finished job atomically; returns False (writing nothing) if it is already recorded."""
        with self._transaction():
            if self.conn.execute("SELECT 1 FROM jobs WHERE job_key = ?", (r.job_key,)).fetchone():
                return False
            hist = [float(v) for v in r.loss_history]
            self.conn.execute(
                "INSERT INTO jobs (job_key, model, dataset, item, attack, params, seed, loss_first, loss_last, "
                "loss_best, seconds, artifacts, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.job_key, r.model, r.dataset, r.item, r.attack, json.dumps(dict(r.params), sort_keys=True),
                 r.seed, hist[0] if hist else None, hist[-1] if hist else None, max(hist) if hist else None,
                 float(r.seconds), json.dumps(dict(r.artifacts), sort_keys=True), time.time()))
            self.conn.executemany(
                "INSERT INTO metrics (job_key, eval_model, metric, clean, attacked) VALUES (?,?,?,?,?)",
                [(r.job_key, m, name, None if c is None else float(c), None if a is None else float(a))
                 for m, name, c, a in r.metrics])
            if hist:
                self.conn.execute("INSERT INTO losses (job_key, history) VALUES (?, ?)", (r.job_key, json.dumps(hist)))
        return True

    def rows(self) -> list[dict[str, Any]]:
        """All metric rows joined with their job, as dicts (the report's only data source)."""
        cur = self.conn.execute(
            "SELECT j.job_key, j.model, j.dataset, j.item, j.attack, j.params, j.seed, j.seconds, j.artifacts, "
            "j.loss_first, j.loss_last, j.loss_best, m.eval_model, m.metric, m.clean, m.attacked "
            "FROM metrics m JOIN jobs j USING (job_key) ORDER BY j.job_key, m.eval_model, m.metric")
        cols = [c[0] for c in cur.description]
        out = []
        for row in cur:
            d = dict(zip(cols, row))
            d["params"] = json.loads(d["params"])
            d["artifacts"] = json.loads(d["artifacts"])
            out.append(d)
        return out

    def loss_histories(self) -> dict[str, list[float]]:
        """Per-job loss histories (mean objective per step)."""
        return {k: json.loads(h) for k, h in self.conn.execute("SELECT job_key, history FROM losses")}

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table's rows in a canonical order, excluding wall-clock columns (for equality checks)."""
        return {
            "jobs": self.conn.execute(
                "SELECT job_key, model, dataset, item, attack, params, seed, loss_first, loss_last, loss_best, "
                "artifacts FROM jobs ORDER BY job_key").fetchall(),
            "metrics": self.conn.execute("SELECT * FROM metrics ORDER BY job_key, eval_model, metric").fetchall(),
            "losses": self.conn.execute("SELECT * FROM losses ORDER BY job_key").fetchall(),
        }


def write_many(db: ResultsDB, results: Iterable[JobResult]) -> int:
    """Write several results, one transaction each; returns how many were new."""
    return sum(db.write_job(r) for r in results)

"""The benchmark run: every (method, problem, seed, noise) fit in worker processes, resumable.

  launch.py --config=configs/srbench.py:feynman --workdir=OUT
  # a cluster job array: shard i of n (each in its own workdir), then the merge
  launch.py --config=configs/srbench.py:feynman --workdir=OUT/shard_$i \
      --config.shard_index=$i --config.shard_count=$n
  launch.py --config=configs/srbench.py:feynman --workdir=OUT/all --config.merge_from='OUT/shard_*'

Each finished fit is appended to WORKDIR/results.jsonl at once (one JSON line), so a rerun of
the same command skips what is done. WORKDIR/srbench_config.json keeps the protocol (budget,
data, method settings): a rerun or merge with another protocol is refused. `num_workers`
processes (spawned, single-threaded) run the fits; one that runs past its budget + grace is
killed and recorded as a timeout, one that raises as a failure, and the run goes on. A worker
whose sympy work (model size, symbolic solution) runs past config.symbolic_timeout is killed
too; its record keeps what was measured and says `assess_status: timeout`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import json
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import time
from typing import Any, Optional, Sequence

from absl import logging

from snip_jax import checks
from snip_jax.errors import UserError
from snip_jax.srbench import methods, problems, report, worker
from snip_jax.srbench.report import write_atomically

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "srbench_config.json"
SETUP_SECONDS = 300.0  # data generation and model loading, before a fit's clock starts
ASSESS_SLACK = 5.0  # beyond symbolic_timeout: reading the fitted model into sympy
METHOD_SECTIONS = {"operon": "operon", "gplearn": "gplearn", "polynomial": "polynomial",
                   "snip": "snip", "snip_lso": "snip"}


@dataclasses.dataclass(frozen=True)
class Task:
  """One fit: a method on a problem, with a split seed and a noise level."""

  method: str
  problem: str
  seed: int
  noise: float

  @property
  def key(self) -> tuple:
    """What identifies the task's record (see record_key)."""
    return (self.method, self.problem, self.seed, self.noise)


# ------------------------------------------------------------------------- checks


def validate_config(config, workdir: str) -> None:
  """Every setting, the problems (a CSV read in full), the shards to merge and the workdir."""
  root = checks.workdir(workdir)
  checks.at_least(1, config, "config", "num_workers", "n_rows", "shard_count")
  checks.at_least(0, config, "config", "shard_index", "data_seed")
  if config.shard_index >= config.shard_count:
    raise UserError(f"config.shard_index={config.shard_index} must be below config.shard_count"
                    f"={config.shard_count} (shards are numbered 0 to shard_count - 1)")
  for name in ("time_budget", "symbolic_timeout"):
    if not config[name] > 0:
      raise UserError(f"config.{name} must be a positive number of seconds, got {config[name]}")
  if not config.grace >= 0:
    raise UserError(f"config.grace must be >= 0 seconds, got {config.grace}")
  _check_protocol_lists(config)
  methods.check_methods(method_names(config), config.snip.model_path)
  for problem in _problems(config):
    methods.check_features(method_names(config), problem.name, len(problem.variables))
  _existing_protocol(root, protocol(config))
  read_results(root / RESULTS_FILE)
  for shard in _shard_dirs(config.merge_from):
    _existing_protocol(shard, protocol(config), required=True)
    read_results(shard / RESULTS_FILE)


def _check_protocol_lists(config) -> None:
  """Seeds are integers >= 0, noise levels numbers >= 0, rows enough for a split."""
  if not config.seeds or not all(isinstance(s, int) and s >= 0 for s in config.seeds):
    raise UserError(f"config.seeds must be integers >= 0, e.g. 0,1,2; got {config.seeds!r}")
  if not config.noise_levels or not all(
      isinstance(g, (int, float)) and g >= 0 for g in config.noise_levels):
    raise UserError("config.noise_levels must be numbers >= 0 (SRBench: 0,0.001,0.01,0.1);"
                    f" got {config.noise_levels!r}")
  if config.n_rows < problems.MIN_ROWS:
    raise UserError(f"config.n_rows={config.n_rows}: a 75/25 split needs at least"
                    f" {problems.MIN_ROWS} rows")


def protocol(config) -> dict[str, Any]:
  """What the results of a task depend on besides its key: reruns and merges must match it."""
  sections = sorted({METHOD_SECTIONS[m] for m in method_names(config) if m in METHOD_SECTIONS})
  settings = {"time_budget": float(config.time_budget), "grace": float(config.grace),
              "symbolic_timeout": float(config.symbolic_timeout), "n_rows": config.n_rows,
              "data_seed": config.data_seed, "csv": config.csv.to_dict(),
              **{name: config[name].to_dict() for name in sections}}
  return json.loads(json.dumps(settings))  # as srbench_config.json holds it (tuples: lists)


def _existing_protocol(directory: pathlib.Path, expected: dict[str, Any],
                       required: bool = False) -> None:
  """The protocol a directory's results were measured with must be `expected` (if any)."""
  path = directory / CONFIG_FILE
  if not path.exists():
    if required:
      raise UserError(f"{directory} has no {CONFIG_FILE}: it is not a benchmark workdir (did"
                      " that shard run?)")
    return
  try:
    found = json.loads(path.read_text())["protocol"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise UserError(f"{path} is unreadable ({error}); move it away to start afresh") from None
  changed = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
  for name in list(changed):
    if isinstance(expected.get(name), dict) and name not in found:
      changed.remove(name)  # a method section this directory never used
  if changed:
    raise UserError(f"{directory} holds results measured with other settings of"
                    f" {', '.join(changed)} (see {path}); use a new --workdir or the same"
                    " settings")


def method_names(config) -> list[str]:
  """The methods config.methods names (comma-separated), each once."""
  return list(dict.fromkeys(m.strip() for m in config.methods.split(",") if m.strip()))


def _problems(config) -> list[problems.Problem]:
  """The problems config.problems names (the CSV one read and checked in full)."""
  return _selected(config.problems, config.csv.path, config.csv.target)


@functools.lru_cache(maxsize=4)
def _selected(spec: str, csv_path: str, csv_target: str) -> list[problems.Problem]:
  """select_problems, once per run (a CSV is read, and its dropped rows reported, once)."""
  return problems.select_problems(spec, csv_path, csv_target)


def _shard_dirs(spec: str) -> list[pathlib.Path]:
  """The shard workdirs config.merge_from names (comma-separated paths or glob patterns)."""
  found = []
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    matches = sorted(glob.glob(part)) or [part]
    for match in matches:
      if not pathlib.Path(match).is_dir():
        raise UserError(f"config.merge_from: {match} is not a directory")
      found.append(pathlib.Path(match).absolute())
  return list(dict.fromkeys(found))


# ------------------------------------------------------------------------- results.jsonl


def read_results(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of a results.jsonl; a torn last line (a run killed mid-write) is left out."""
  if not path.exists():
    return []
  text = path.read_text(encoding="utf-8")
  lines = text.splitlines()
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      records.append(json.loads(line))
    except ValueError:
      if number == len(lines) and not text.endswith("\n"):
        logging.warning("%s: the last line is incomplete (a run stopped while writing it); it"
                        " will be measured again", path)
        break
      raise UserError(f"{path}:{number} is not a JSON line; fix or delete that line") from None
  return records


def write_results(path: pathlib.Path, records: Sequence[dict[str, Any]]) -> None:
  """Write a whole results.jsonl atomically (a temporary file, then a rename)."""
  write_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def _append(path: pathlib.Path, record: dict[str, Any]) -> None:
  """One finished fit as one line, flushed to disk before the next fit is recorded."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def record_key(record: dict[str, Any]) -> tuple:
  """The task a record is the result of."""
  return (record["method"], record["problem"], record["seed"], record["noise"])


# ------------------------------------------------------------------------- the run


def run(config, workdir: str) -> dict[str, Any]:
  """Run this shard's missing fits (or merge shard workdirs), then write the report."""
  root = pathlib.Path(workdir).absolute()
  results = root / RESULTS_FILE
  root.mkdir(parents=True, exist_ok=True)
  write_atomically(root / CONFIG_FILE, json.dumps(
      {"protocol": protocol(config), "config": config.to_dict()}, indent=1, default=str) + "\n")
  records = read_results(results)
  write_results(results, records)  # drops a torn last line before appending
  if config.merge_from:
    records = _merged(records, _shard_dirs(config.merge_from))
    write_results(results, records)
    wanted, ran = plan(config, every_shard=True), 0
  else:
    wanted = plan(config)
    done = {record_key(r) for r in records}
    ran = _run_tasks([t for t in wanted if t.key not in done], config, results)
    records = read_results(results)
  recorded = {record_key(r) for r in records}
  missing = [t for t in wanted if t.key not in recorded]
  if missing:
    logging.warning("%d of the %d planned fits have no result (unfinished shards?), e.g. %s",
                    len(missing), len(wanted), missing[0])
  outputs = report.write_report(root, records, float(config.time_budget))
  return {"results_file": str(results), "n_records": len(records), "n_run": ran,
          "n_planned": len(wanted), "n_missing": len(missing),
          "n_failed": sum(r["status"] != "ok" for r in records), **outputs}


def plan(config, every_shard: bool = False) -> list[Task]:
  """This shard's tasks: every (problem, seed, noise, method), dealt round-robin to shards."""
  tasks = [Task(m, p.name, int(s), float(g)) for p in _problems(config) for s in config.seeds
           for g in config.noise_levels for m in method_names(config)]
  return tasks if every_shard else tasks[config.shard_index::config.shard_count]


def _merged(records: list[dict], shards: Sequence[pathlib.Path]) -> list[dict]:
  """The records of this workdir and the shards, one per task (a successful one if any)."""
  by_key: dict[tuple, dict] = {}
  for record in records + [r for s in shards for r in read_results(s / RESULTS_FILE)]:
    key = record_key(record)
    if key not in by_key or (by_key[key]["status"] != "ok" and record["status"] == "ok"):
      by_key[key] = record
  logging.info("merged %d fits from %d shard workdirs", len(by_key), len(shards))
  return list(by_key.values())


def task_message(task: Task, config) -> dict[str, Any]:
  """What a worker needs for one task, as plain JSON data."""
  section = METHOD_SECTIONS.get(task.method)
  return {"method": task.method, "problem": task.problem, "seed": task.seed,
          "noise": task.noise, "options": config[section].to_dict() if section else {},
          "csv_path": config.csv.path, "csv_target": config.csv.target,
          "n_rows": config.n_rows, "data_seed": config.data_seed,
          "time_budget": float(config.time_budget)}


def _run_tasks(tasks: Sequence[Task], config, results: pathlib.Path) -> int:
  """Run `tasks` in worker processes, appending each record as it finishes; returns how many."""
  if not tasks:
    logging.info("all fits of this shard are in %s already; nothing to run", results)
    return 0
  pool = _Pool(min(config.num_workers, len(tasks)), config)
  progress = _Progress(len(tasks))
  pending = collections.deque(tasks)
  try:
    while pending or pool.busy():
      for record in pool.step(pending):
        _append(results, record)
        progress.update(record)
  finally:
    pool.close()
  return len(tasks)


class _Worker:
  """One worker process, the task it runs, what it reported so far and its deadline."""

  def __init__(self, context):
    self.connection, child_end = context.Pipe(duplex=True)
    self.process = context.Process(target=worker.worker_main, args=(child_end,), daemon=False)
    self.process.start()
    child_end.close()
    self.ready, self.message, self.partial = False, None, None
    self.phase, self.deadline = "starting", time.monotonic() + SETUP_SECONDS

  def start(self, message: dict[str, Any]) -> None:
    """Hand the worker a task; it has SETUP_SECONDS to start the fit's clock."""
    self.message, self.partial = message, None
    self.phase, self.deadline = "setup", time.monotonic() + SETUP_SECONDS
    self.connection.send_bytes(json.dumps(message).encode())

  def stop(self) -> None:
    """End the process now (it may be inside a fit)."""
    if self.process.is_alive():
      self.process.kill()
    self.process.join()
    self.connection.close()


class _Pool:
  """`size` workers; `step` hands out tasks, waits for events and enforces the deadlines."""

  def __init__(self, size: int, config):
    self.context = multiprocessing.get_context("spawn")
    self.config = config
    self.workers = [_Worker(self.context) for _ in range(size)]

  def busy(self) -> bool:
    """Whether any worker is running a task."""
    return any(w.message is not None for w in self.workers)

  def step(self, pending: collections.deque) -> list[dict[str, Any]]:
    """Start tasks on idle workers, then the records that finished or timed out meanwhile."""
    for w in self.workers:
      if w.ready and w.message is None and pending:
        w.start(task_message(pending.popleft(), self.config))
    wait = max(0.0, min(w.deadline for w in self.workers) - time.monotonic())
    ready = multiprocessing.connection.wait([w.connection for w in self.workers],
                                            timeout=min(wait, 5.0))
    finished = []
    for i, w in enumerate(self.workers):
      if w.connection in ready:
        record = self._event(w)
      elif time.monotonic() > w.deadline:
        record = self._timed_out(w)
      else:
        continue
      if record is not None:
        finished.append(record)
      if not w.process.is_alive() or w.phase == "killed":
        w.stop()
        self.workers[i] = _Worker(self.context)
    return finished

  def _event(self, w: _Worker) -> Optional[dict[str, Any]]:
    """Act on one event of a worker; the finished record, if this event finished one."""
    try:
      event = json.loads(w.connection.recv_bytes().decode())
    except (EOFError, OSError):
      w.process.join(timeout=5)
      w.phase = "killed"
      if w.message is None:
        raise RuntimeError(f"a benchmark worker died before its first task (exit code"
                           f" {w.process.exitcode})") from None
      return self._failed(w, f"the worker process died (exit code {w.process.exitcode})")
    kind = event["event"]
    if kind == "ready":
      w.ready, w.phase, w.deadline = True, "idle", float("inf")
    elif kind == "fitting":
      w.phase = "fitting"
      w.deadline = time.monotonic() + self.config.time_budget + self.config.grace
    elif kind == "fitted":
      w.phase, w.partial = "assessing", event["record"]
      w.deadline = time.monotonic() + self.config.symbolic_timeout + ASSESS_SLACK
    elif kind == "assessed":
      w.partial.update(event["part"])
    else:
      w.message, w.phase, w.deadline = None, "idle", float("inf")
      return event["record"]
    return None

  def _timed_out(self, w: _Worker) -> dict[str, Any]:
    """Kill a worker past its deadline; the record says what ran too long."""
    if w.message is None:
      raise RuntimeError(f"a benchmark worker did not start within {SETUP_SECONDS:.0f} s")
    phase, w.phase = w.phase, "killed"
    if phase == "fitting":
      limit = self.config.time_budget + self.config.grace
      return self._failed(w, f"the fit ran past budget + grace ({limit:g} s) and was killed",
                          status="timeout")
    if phase == "assessing":
      return {**w.partial, "assess_status": "timeout"}
    return self._failed(w, f"loading the data or model took over {SETUP_SECONDS:.0f} s")

  def _failed(self, w: _Worker, error: str, status: str = "failed") -> dict[str, Any]:
    """The record of a task whose worker was killed or died."""
    message, w.message = w.message, None
    if w.partial is not None:
      return {**w.partial, "assess_status": f"error: {error}"}
    return {**worker.task_key(message), "status": status, "error": error,
            "time_budget": message["time_budget"]}

  def close(self) -> None:
    """End every worker process (the run is over, or stopped)."""
    for w in self.workers:
      w.stop()


class _Progress:
  """One line per finished fit: what, its test R² and time, and the run's ETA."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.monotonic()

  def update(self, record: dict[str, Any]) -> None:
    """Log the line of one finished fit."""
    self.done += 1
    elapsed = time.monotonic() - self.start
    eta = elapsed / self.done * (self.total - self.done)
    r2 = record.get("r2_test")
    outcome = record["status"] if record["status"] != "ok" else (
        f"test R2 {r2:.4f}" if r2 is not None else "test R2 n/a (non-finite predictions)")
    seconds = record.get("fit_seconds")
    logging.info("srbench %d/%d  %s on %s (seed %d, noise %g): %s%s | %s elapsed, ETA %s",
                 self.done, self.total, record["method"], record["problem"], record["seed"],
                 record["noise"], outcome, f", {seconds:.1f} s" if seconds else "",
                 _duration(elapsed), _duration(eta))


def _duration(seconds: float) -> str:
  """Seconds as `1h02m`, `3m05s` or `12s`."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

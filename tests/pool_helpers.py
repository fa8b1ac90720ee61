"""Module-level `produce` functions for tests/test_pool.py (spawned workers import them)."""

from __future__ import annotations

import os
import random
import time


def sleepy_chunk(chunk: int, seed: int = 0, max_sleep_s: float = 0.03) -> list:
  """Deterministic values for (seed, chunk) after a random sleep, so workers finish out of order."""
  rng = random.Random(f"{seed}:{chunk}")
  time.sleep(rng.uniform(0.0, max_sleep_s))
  return [chunk] + [rng.random() for _ in range(4)]


def crash_once(chunk: int, marker_dir: str, crash_chunk: int = 3) -> list:
  """Kill the worker process the first time it sees `crash_chunk` (a marker file remembers)."""
  marker = os.path.join(marker_dir, f"crashed_{crash_chunk}")
  if chunk == crash_chunk and not os.path.exists(marker):
    with open(marker, "w", encoding="utf-8"):
      pass
    os._exit(1)
  return sleepy_chunk(chunk)


def always_crash(chunk: int, crash_chunk: int = 2) -> list:
  """Kill the worker process every time it sees `crash_chunk`."""
  if chunk == crash_chunk:
    os._exit(1)
  return sleepy_chunk(chunk)


def raise_value_error(chunk: int, bad_chunk: int = 1) -> list:
  """Raise ValueError every time on `bad_chunk`."""
  if chunk == bad_chunk:
    raise ValueError(f"bad input in chunk {chunk}")
  return sleepy_chunk(chunk)


def hang_once(chunk: int, marker_dir: str, hang_chunk: int = 2, hang_s: float = 60.0) -> list:
  """Sleep `hang_s` the first time `hang_chunk` is seen (a marker file remembers)."""
  marker = os.path.join(marker_dir, f"hung_{hang_chunk}")
  if chunk == hang_chunk and not os.path.exists(marker):
    with open(marker, "w", encoding="utf-8"):
      pass
    time.sleep(hang_s)
  return sleepy_chunk(chunk)


def record_start(chunk: int, log_dir: str) -> int:
  """Create a file named after the chunk when its production starts, then return it."""
  with open(os.path.join(log_dir, f"chunk_{chunk:06d}"), "w", encoding="utf-8"):
    pass
  return chunk


def slow_chunk(chunk: int, sleep_s: float = 30.0) -> int:
  """Sleep `sleep_s`, for tests that interrupt a waiting consumer."""
  time.sleep(sleep_s)
  return chunk


def initial_environ(chunk: int, names: tuple = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS")) -> dict:
  """The worker's environment as it was when its interpreter started (from /proc)."""
  with open("/proc/self/environ", "rb") as f:
    pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
  environ = {key.decode(): value.decode() for key, value in pairs}
  return {"chunk": chunk, **{name: environ.get(name) for name in names}}

"""Tests for snip_jax.data.pool: order, ranges, failures, timeouts, back-pressure, shutdown."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import signal
import threading
import time

import pytest

from snip_jax.data import pool as pool_lib
from tests import pool_helpers as helpers

SLEEPY = functools.partial(helpers.sleepy_chunk, seed=7)


def _inline(produce, start, end):
  """The reference stream: produce run in this process."""
  with pool_lib.ChunkPool(produce, num_workers=0, start_chunk=start, end_chunk=end) as pool:
    return list(pool)


def _assert_reaped(pids):
  """No child processes are left, alive or zombie."""
  assert multiprocessing.active_children() == []
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_inline_stream():
  stream = _inline(SLEEPY, 0, 5)
  assert [chunk for chunk, _ in stream] == [0, 1, 2, 3, 4]
  assert stream == [(c, helpers.sleepy_chunk(c, seed=7)) for c in range(5)]


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_workers_match_inline(num_workers):
  expected = _inline(SLEEPY, 0, 12)
  with pool_lib.ChunkPool(SLEEPY, num_workers=num_workers, end_chunk=12) as pool:
    pids = pool.worker_pids
    assert len(pids) == num_workers
    assert list(pool) == expected
    stats = pool.stats
  assert stats.chunks_produced == 12 and stats.chunks_yielded == 12
  assert stats.worker_restarts == 0 and stats.retries == 0
  _assert_reaped(pids)


@pytest.mark.parametrize("mp_context", ["forkserver"])  # fork: unsafe once JAX threads run
def test_other_start_methods(mp_context):
  with pool_lib.ChunkPool(SLEEPY, num_workers=2, end_chunk=6, mp_context=mp_context) as pool:
    assert list(pool) == _inline(SLEEPY, 0, 6)


def test_chunk_range():
  with pool_lib.ChunkPool(SLEEPY, num_workers=2, start_chunk=5, end_chunk=9) as pool:
    assert list(pool) == _inline(SLEEPY, 5, 9)
  with pool_lib.ChunkPool(SLEEPY, num_workers=1, start_chunk=4, end_chunk=4) as pool:
    assert list(pool) == []


def test_infinite_stream_closed_early():
  pool = pool_lib.ChunkPool(SLEEPY, num_workers=2, start_chunk=3)
  pids = pool.worker_pids
  taken = [next(pool) for _ in range(7)]
  assert taken == _inline(SLEEPY, 3, 10)
  pool.close()
  pool.close()
  _assert_reaped(pids)
  with pytest.raises(pool_lib.PoolError, match="closed"):
    next(pool)


def test_garbage_collection_shuts_down():
  pool = pool_lib.ChunkPool(SLEEPY, num_workers=2)
  next(pool)
  pids = pool.worker_pids
  del pool
  gc.collect()
  _assert_reaped(pids)


def test_crash_once_is_retried(tmp_path):
  produce = functools.partial(helpers.crash_once, marker_dir=str(tmp_path), crash_chunk=3)
  with pool_lib.ChunkPool(produce, num_workers=2, end_chunk=8) as pool:
    assert list(pool) == _inline(helpers.sleepy_chunk, 0, 8)
    stats = pool.stats
  assert (tmp_path / "crashed_3").exists()
  assert stats.worker_restarts == 1 and stats.worker_crashes == 1 and stats.retries == 1


def test_chunk_that_always_crashes_raises():
  produce = functools.partial(helpers.always_crash, crash_chunk=2)
  pool = pool_lib.ChunkPool(produce, num_workers=2, end_chunk=6, max_chunk_retries=1)
  assert [next(pool), next(pool)] == _inline(helpers.sleepy_chunk, 0, 2)
  with pytest.raises(RuntimeError, match=r"chunk 2 lost its worker process 2 times") as info:
    next(pool)
  assert info.value.chunk_index == 2
  assert pool.stats.worker_crashes == 2
  _assert_reaped(pool.worker_pids)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_produce_exception_raises_with_traceback(num_workers):
  produce = functools.partial(helpers.raise_value_error, bad_chunk=1)
  pool = pool_lib.ChunkPool(produce, num_workers=num_workers, end_chunk=4)
  assert next(pool) == (0, helpers.sleepy_chunk(0))
  with pytest.raises(pool_lib.ChunkFailedError, match=r"produce\(1\) failed on all 3") as info:
    next(pool)
  message = str(info.value)
  assert "ValueError: bad input in chunk 1" in message
  assert "raise_value_error" in message  # the traceback from the worker
  assert isinstance(info.value.__cause__, ValueError)
  assert pool.stats.chunk_errors == 3 and pool.stats.retries == 2
  assert pool.stats.worker_restarts == 0
  _assert_reaped([])


def test_hung_chunk_times_out_and_is_retried(tmp_path):
  produce = functools.partial(helpers.hang_once, marker_dir=str(tmp_path), hang_chunk=2)
  start = time.monotonic()
  with pool_lib.ChunkPool(produce, num_workers=2, end_chunk=6, chunk_timeout_s=2) as pool:
    assert list(pool) == _inline(helpers.sleepy_chunk, 0, 6)
    stats = pool.stats
  assert time.monotonic() - start < 30  # the hung worker (60 s) was not waited for
  # The hung chunk times out; a loaded machine may push another chunk past 2 s too.
  assert stats.chunk_timeouts >= 1
  assert stats.worker_restarts == stats.retries == stats.chunk_timeouts


def _started_ahead(log_dir, consumed, wanted, timeout_s=10.0):
  """Chunks started beyond `consumed`, once `wanted` of them have started (or after timeout_s)."""
  deadline = time.monotonic() + timeout_s
  while len(os.listdir(log_dir)) - consumed < wanted and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.05)  # time to overshoot, if the bound were not kept
  return len(os.listdir(log_dir)) - consumed


def test_max_pending_bounds_production(tmp_path):
  produce = functools.partial(helpers.record_start, log_dir=str(tmp_path))
  max_pending, n = 3, 10
  with pool_lib.ChunkPool(produce, num_workers=2, end_chunk=n, max_pending=max_pending) as pool:
    for consumed, (chunk, result) in enumerate(pool, start=1):
      assert chunk == result
      # While the consumer is busy, production runs ahead as far as allowed, and no further.
      allowed = min(max_pending, n - consumed)
      assert _started_ahead(tmp_path, consumed, allowed) == allowed, f"{consumed} consumed"
  assert len(os.listdir(tmp_path)) == n


def test_workers_ignore_sigint():
  with pool_lib.ChunkPool(SLEEPY, num_workers=2, end_chunk=8) as pool:
    for pid in pool.worker_pids:
      os.kill(pid, signal.SIGINT)
    assert list(pool) == _inline(SLEEPY, 0, 8)
    assert pool.stats.worker_restarts == 0


def test_keyboard_interrupt_while_waiting():
  pool = pool_lib.ChunkPool(helpers.slow_chunk, num_workers=2)
  pids = pool.worker_pids
  timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
  timer.start()
  start = time.monotonic()
  with pytest.raises(KeyboardInterrupt):
    next(pool)
  timer.join()
  assert time.monotonic() - start < 10
  _assert_reaped(pids)


def test_workers_start_with_thread_limits(monkeypatch):
  monkeypatch.setenv("OMP_NUM_THREADS", "8")
  monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
  with pool_lib.ChunkPool(helpers.initial_environ, num_workers=1, end_chunk=1) as pool:
    [(_, seen)] = list(pool)
  assert seen["OMP_NUM_THREADS"] == "1" and seen["MKL_NUM_THREADS"] == "1"
  assert os.environ["OMP_NUM_THREADS"] == "8" and "MKL_NUM_THREADS" not in os.environ


def test_invalid_arguments():
  with pytest.raises(TypeError, match="picklable"):
    pool_lib.ChunkPool(lambda c: c, num_workers=1)
  with pytest.raises(ValueError, match="num_workers"):
    pool_lib.ChunkPool(SLEEPY, num_workers=-1)
  with pytest.raises(ValueError, match="end_chunk"):
    pool_lib.ChunkPool(SLEEPY, num_workers=0, start_chunk=5, end_chunk=2)
  with pytest.raises(ValueError, match="mp_context"):
    pool_lib.ChunkPool(SLEEPY, num_workers=1, mp_context="threads")
  _assert_reaped([])

"""A deterministic, fault-tolerant process pool that streams work chunks in order.

`ChunkPool` calls a user function `produce(chunk_index)` for chunk indices
`start_chunk, start_chunk + 1, ...` in worker processes and yields
`(chunk_index, result)` in chunk order. `produce` must compute chunk `c` from `c` alone
(seed its RNG from `(seed, c)`), so the stream is the same for any number of workers
and any timing, and the same as running `produce` in-process (`num_workers=0`).

Failures are absorbed without changing the stream:

* an exception inside `produce` is sent back and the chunk is retried, up to
  `max_chunk_retries` times, then raised in the consumer as `ChunkFailedError`;
* a worker process that dies (os._exit, a segfault, SIGKILL, the OOM killer) is replaced
  by a fresh one and its chunk is queued again, counting as a retry;
* a worker that holds a chunk longer than `chunk_timeout_s` is killed and handled like a
  crash (this replaces the original SNIP's per-expression SIGALRM, which only works in a
  main thread).

Design: every worker has its own duplex pipe. The parent sends it one chunk index at a
time and remembers which chunk each worker holds; the worker answers with the pickled
result. A private pipe per worker (instead of `multiprocessing.Queue`) matters for fault
tolerance: a worker killed in the middle of writing a result corrupts only its own pipe,
which is thrown away with it, whereas a shared queue's write lock would stay held forever
and hang every other worker; there are also no queue feeder threads to hang at exit. A
scheduler thread in the parent receives results, dispatches chunks, watches process
sentinels and deadlines, and restarts workers, so workers keep producing while the
consumer is busy with earlier chunks; back-pressure comes from `max_pending`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.util
import os
import pickle
import signal
import threading
import time
import traceback
from typing import Any, Callable, Dict, Generic, Iterator, List, Mapping, Optional, Tuple, TypeVar

from absl import logging

T = TypeVar("T")

# Environment every worker process starts with: one BLAS/OpenMP thread per worker, since
# the pool already runs one worker per core. Pass `worker_env` to change it.
THREAD_LIMIT_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
}
START_METHODS = ("spawn", "forkserver", "fork")

_KILL_GRACE_S = 1.0  # time a terminated worker gets to exit before SIGKILL
_POLL_S = 0.5  # longest the scheduler or consumer sleeps without re-checking its state
_SHUTDOWN_JOIN_S = 10.0  # longest close() waits for the scheduler thread
_MAX_STARTUP_FAILURES = 3  # workers in a row that die before they are ready
_ENVIRON_LOCK = threading.Lock()
_SIGINT = {signal.SIGINT}


class ChunkFailedError(RuntimeError):
  """A chunk failed on every allowed attempt; the stream cannot go on past it."""

  def __init__(self, message: str, chunk_index: int, worker_traceback: Optional[str] = None):
    super().__init__(message)
    self.chunk_index = chunk_index
    self.worker_traceback = worker_traceback


class PoolError(RuntimeError):
  """The pool itself cannot go on: workers cannot start, or the pool is closed."""


@dataclasses.dataclass
class PoolStats:
  """Counters for logging; a snapshot, taken by `ChunkPool.stats`."""

  chunks_produced: int = 0  # results that reached the parent
  chunks_yielded: int = 0  # results handed to the consumer
  worker_restarts: int = 0  # workers replaced after dying or being killed
  worker_crashes: int = 0  # workers that died while holding a chunk
  chunk_timeouts: int = 0  # workers killed for exceeding chunk_timeout_s
  chunk_errors: int = 0  # exceptions raised by produce
  retries: int = 0  # chunks queued again after a failed attempt


# ---------------------------------------------------------------- worker process side


def _worker_main(conn, produce_bytes: bytes, env: Mapping[str, str]) -> None:
  """Worker process entry point: load `produce`, then serve chunk indices until told to stop."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)
  os.environ.update(env)
  try:
    produce = pickle.loads(produce_bytes)
  except BaseException:  # pylint: disable=broad-except
    _send_to_parent(conn, pickle.dumps(("init_error", None, traceback.format_exc())))
    return
  if not _send_to_parent(conn, pickle.dumps(("ready", None, os.getpid()))):
    return
  while True:
    try:
      chunk = conn.recv()
    except (EOFError, OSError):
      return  # the parent is gone
    if chunk is None or not _send_to_parent(conn, _run_chunk(produce, chunk)):
      return


def _run_chunk(produce: Callable[[int], Any], chunk: int) -> bytes:
  """Run produce(chunk) and pickle the reply, so pickling errors are reported like others."""
  try:
    return pickle.dumps(("ok", chunk, produce(chunk)), pickle.HIGHEST_PROTOCOL)
  except Exception as exc:  # pylint: disable=broad-except
    return pickle.dumps(("error", chunk, (traceback.format_exc(), _pickled_exception(exc))))


def _pickled_exception(exc: BaseException) -> Optional[bytes]:
  """The exception pickled, or None when it does not survive a pickle round trip."""
  try:
    data = pickle.dumps(exc)
    pickle.loads(data)
    return data
  except Exception:  # pylint: disable=broad-except
    return None


def _send_to_parent(conn, data: bytes) -> bool:
  """Send one message to the parent; False when the parent has gone away."""
  try:
    conn.send_bytes(data)
    return True
  except OSError:
    return False


# ---------------------------------------------------------------- parent side helpers


@contextlib.contextmanager
def _child_start_conditions(env: Mapping[str, str]):
  """Set `env` in os.environ and block SIGINT in this thread while a child is started.

  With the default 'spawn' start method the child is a fresh interpreter that inherits
  the environment at exec time. Setting the variables there is the only way to have them
  in place before anything in the child imports numpy: spawn re-imports the parent's
  main module (which usually imports numpy) before any code of ours runs in the child,
  and OpenBLAS/MKL/OpenMP read their thread counts when they are loaded. The parent's
  environment is restored right after the child is started. With 'fork' and
  'forkserver' the child does not exec, so this has no effect there; the worker then
  sets the same variables first thing, which works only if numpy is not yet loaded in
  the process it was forked from.

  The blocked SIGINT is inherited by the child, so a Ctrl-C during the child's start-up
  (which can take seconds) stays pending until the worker has set SIGINT to ignored.
  """
  old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
  try:
    with _ENVIRON_LOCK:
      saved = {name: os.environ.get(name) for name in env}
      os.environ.update(env)
      try:
        yield
      finally:
        for name, value in saved.items():
          if value is None:
            os.environ.pop(name, None)
          else:
            os.environ[name] = value
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _kill(process) -> None:
  """Stop a worker process: SIGTERM, then SIGKILL after a grace period; reap it."""
  if process.exitcode is None:
    process.terminate()
    process.join(_KILL_GRACE_S)
  if process.exitcode is None:
    process.kill()
    process.join()


def _describe_exit(exitcode: Optional[int]) -> str:
  """Human-readable cause of a worker's exit."""
  if exitcode is None:
    return "stopped responding"
  if exitcode < 0:
    try:
      name = signal.Signals(-exitcode).name
    except ValueError:
      name = f"signal {-exitcode}"
    hint = " (possibly the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
    return f"was killed by {name}{hint}"
  return f"exited with code {exitcode}"


def _error_message(chunk: int, attempts: int, max_retries: int, worker_traceback: str) -> str:
  """Message of the ChunkFailedError raised when produce keeps raising on a chunk."""
  last_line = worker_traceback.strip().splitlines()[-1] if worker_traceback.strip() else "?"
  return (
      f"produce({chunk}) failed on all {attempts} attempts (max_chunk_retries={max_retries}); "
      f"chunk {chunk} cannot be produced. Last error: {last_line}\n"
      f"Traceback of the last attempt:\n{worker_traceback}")


def _get_context(mp_context) -> multiprocessing.context.BaseContext:
  """The multiprocessing context named by `mp_context` (a start method name or a context)."""
  if isinstance(mp_context, str):
    if mp_context not in START_METHODS:
      raise ValueError(f"mp_context must be one of {START_METHODS} or a multiprocessing "
                       f"context, got {mp_context!r}")
    return multiprocessing.get_context(mp_context)
  if hasattr(mp_context, "Process") and hasattr(mp_context, "Pipe"):
    return mp_context
  raise ValueError(f"mp_context must be one of {START_METHODS} or a multiprocessing "
                   f"context, got {mp_context!r}")


def _pickle_produce(produce: Callable[[int], Any]) -> bytes:
  """Pickle `produce` once, with an error the user can act on if that fails."""
  try:
    return pickle.dumps(produce, pickle.HIGHEST_PROTOCOL)
  except Exception as exc:
    raise TypeError(
        f"produce must be picklable to run in worker processes (a module-level function "
        f"or a functools.partial of one, with picklable arguments); pickling {produce!r} "
        f"failed: {exc}. Use num_workers=0 to run it in this process.") from exc


@dataclasses.dataclass(eq=False)
class _Worker:
  """Parent-side record of one worker process."""

  slot: int
  process: Any
  conn: Any
  ready: bool = False
  chunk: Optional[int] = None
  deadline: Optional[float] = None
  gone: bool = False

  @property
  def name(self) -> str:
    """Name for log messages."""
    return f"worker {self.slot} (pid {self.process.pid})"


# ---------------------------------------------------------------- scheduler


class _Scheduler:
  """Owns the worker processes; its thread dispatches chunks and collects results.

  Only the scheduler thread touches workers, except for the final cleanup. The consumer
  and the scheduler share `done`, `next_consume`, `fatal`, `stopping`, `stats` and `pids`
  under `cond`.
  """

  def __init__(self, produce_bytes: bytes, num_workers: int, start_chunk: int,
               end_chunk: Optional[int], max_pending: int, chunk_timeout_s: Optional[float],
               max_chunk_retries: int, ctx, env: Mapping[str, str]):
    self._produce_bytes = produce_bytes
    self._num_workers = num_workers
    self._end = end_chunk
    self._max_pending = max_pending
    self._timeout_s = chunk_timeout_s
    self._max_retries = max_chunk_retries
    self._ctx = ctx
    self._env = dict(env)
    self.cond = threading.Condition()
    self.done: Dict[int, Tuple[str, Any]] = {}
    self.next_consume = start_chunk
    self.fatal: Optional[BaseException] = None
    self.stopping = False
    self.stats = PoolStats()
    self.pids: Dict[int, int] = {}
    self._workers: List[_Worker] = []
    self._next_fresh = start_chunk
    self._requeued: List[int] = []
    self._failures: Dict[int, int] = {}
    self._startup_failures = 0
    self._cleanup_lock = threading.Lock()
    self._cleaned = False
    self._wake_r, self._wake_w = os.pipe()
    os.set_blocking(self._wake_r, False)
    os.set_blocking(self._wake_w, False)
    self._thread = threading.Thread(target=self._run, name="ChunkPool-scheduler", daemon=True)

  def start(self) -> None:
    """Start the workers from the calling thread, then the scheduler thread."""
    try:
      for slot in range(self._num_workers):
        self._workers.append(self._start_worker(slot))
    except BaseException:
      self._terminate_workers()
      raise
    self._thread.start()

  # ---- consumer side

  def next_item(self) -> Tuple[int, Any]:
    """Block until the next chunk in order is available and return it (consumer side)."""
    with self.cond:
      while self.next_consume not in self.done:
        if self.fatal is not None:
          raise self.fatal
        if self._end is not None and self.next_consume >= self._end:
          raise StopIteration
        if self.stopping:
          raise PoolError("the ChunkPool is closed")
        if not self._thread.is_alive():
          raise PoolError("the ChunkPool scheduler thread stopped unexpectedly")
        self.cond.wait(_POLL_S)
      chunk = self.next_consume
      status, value = self.done.pop(chunk)
      self.next_consume += 1
      if status == "ok":
        self.stats.chunks_yielded += 1
    self._wake()
    if status == "failed":
      raise value
    return chunk, value

  def shutdown(self) -> None:
    """Stop the scheduler thread and the workers; safe to call more than once, from any thread."""
    with self.cond:
      self.stopping = True
      self.cond.notify_all()
    self._wake()
    if threading.current_thread() is self._thread:
      return  # the thread cleans up when it leaves its loop
    if self._thread.is_alive():
      self._thread.join(_SHUTDOWN_JOIN_S)
      if self._thread.is_alive():
        logging.warning("ChunkPool: the scheduler thread did not stop within %.0f s; "
                        "terminating the workers anyway", _SHUTDOWN_JOIN_S)
    self._terminate_workers()

  def _wake(self) -> None:
    """Interrupt the scheduler's wait so it looks at the shared state again."""
    with self.cond:
      if self._wake_w is None:
        return
      try:
        os.write(self._wake_w, b"\0")
      except BlockingIOError:
        pass  # the pipe is full, so a wake-up is already pending

  # ---- scheduler thread

  def _run(self) -> None:
    """Scheduler thread body: dispatch, wait for events, enforce deadlines, until stopped."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    try:
      while not self._is_stopping():
        self._dispatch()
        self._wait_and_handle_events()
        self._enforce_deadlines()
    except BaseException as exc:  # pylint: disable=broad-except
      if not isinstance(exc, PoolError):
        logging.exception("ChunkPool: the scheduler thread failed")
        exc = PoolError(f"the ChunkPool scheduler thread failed: {exc!r}")
      with self.cond:
        self.fatal = exc
        self.cond.notify_all()
    finally:
      self._terminate_workers()

  def _is_stopping(self) -> bool:
    """Whether shutdown was requested."""
    with self.cond:
      return self.stopping

  def _start_worker(self, slot: int) -> _Worker:
    """Start a worker process for `slot`; it is not ready until it says so."""
    with self._cleanup_lock:
      if self._cleaned:
        raise PoolError("the ChunkPool is closed")
      parent_conn, child_conn = self._ctx.Pipe(duplex=True)
      process = self._ctx.Process(
          target=_worker_main, args=(child_conn, self._produce_bytes, self._env),
          name=f"ChunkPool-worker-{slot}", daemon=True)
      try:
        with _child_start_conditions(self._env):
          process.start()
      except BaseException:
        parent_conn.close()
        raise
      finally:
        child_conn.close()
      worker = _Worker(slot, process, parent_conn)
    with self.cond:
      self.pids[slot] = process.pid
    return worker

  def _dispatch(self) -> None:
    """Give chunks to idle workers: queued retries first, then new chunks within max_pending."""
    for worker in self._workers:
      if not worker.ready or worker.chunk is not None or worker.gone:
        continue
      chunk = self._take_chunk()
      if chunk is None:
        return
      try:
        worker.conn.send(chunk)
      except OSError:
        heapq.heappush(self._requeued, chunk)  # the worker died; its sentinel will tell
        worker.gone = True
        continue
      worker.chunk = chunk
      worker.deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s

  def _take_chunk(self) -> Optional[int]:
    """The next chunk to hand out, or None if there is none or max_pending is reached."""
    if self._requeued:
      return heapq.heappop(self._requeued)
    if self._end is not None and self._next_fresh >= self._end:
      return None
    with self.cond:
      if self._next_fresh - self.next_consume >= self._max_pending:
        return None
    self._next_fresh += 1
    return self._next_fresh - 1

  def _wait_and_handle_events(self) -> None:
    """Wait for a message, a worker exit, a wake-up or the next deadline, and handle it."""
    conns = {worker.conn: worker for worker in self._workers if not worker.gone}
    sentinels = {worker.process.sentinel: worker for worker in self._workers}
    ready = multiprocessing.connection.wait(
        [*conns, *sentinels, self._wake_r], self._wait_timeout())
    if self._wake_r in ready:
      self._drain_wake_pipe()
    for obj in ready:
      if obj in conns and not conns[obj].gone and not self._receive_all(conns[obj]):
        self._retire(conns[obj])
    for obj in ready:
      if obj in sentinels and sentinels[obj] in self._workers:
        self._receive_all(sentinels[obj])
        self._retire(sentinels[obj])

  def _wait_timeout(self) -> float:
    """Seconds until the earliest chunk deadline, at most _POLL_S."""
    deadlines = [w.deadline for w in self._workers if w.deadline is not None]
    if not deadlines:
      return _POLL_S
    return min(_POLL_S, max(0.0, min(deadlines) - time.monotonic()))

  def _drain_wake_pipe(self) -> None:
    """Discard pending wake-up bytes."""
    try:
      while os.read(self._wake_r, 4096):
        pass
    except BlockingIOError:
      pass

  def _receive_all(self, worker: _Worker) -> bool:
    """Handle every message the worker has sent; False once its pipe is at end of file."""
    if worker.gone:
      return False
    try:
      while worker.conn.poll():
        self._handle_message(worker, worker.conn.recv_bytes())
    except (EOFError, OSError):
      return False
    return True

  def _handle_message(self, worker: _Worker, data: bytes) -> None:
    """Act on one message from a worker."""
    try:
      kind, chunk, payload = pickle.loads(data)
    except Exception:  # pylint: disable=broad-except
      kind, chunk = "error", worker.chunk
      payload = ("The parent could not unpickle the result:\n" + traceback.format_exc(), None)
    if kind == "ready":
      worker.ready = True
      self._startup_failures = 0
    elif kind == "init_error":
      raise PoolError(
          f"a worker process could not load `produce`; with the 'spawn' and 'forkserver' "
          f"start methods it must be importable by module name (not defined in an "
          f"interactive session). Worker traceback:\n{payload}")
    elif kind == "ok":
      self._release(worker, chunk)
      with self.cond:
        self.done[chunk] = ("ok", payload)
        self.stats.chunks_produced += 1
        self.cond.notify_all()
    else:
      self._release(worker, chunk)
      worker_traceback, exc_bytes = payload
      with self.cond:
        self.stats.chunk_errors += 1
      logging.warning("ChunkPool: produce(%d) raised in %s: %s", chunk, worker.name,
                      worker_traceback.strip().splitlines()[-1])
      self._attempt_failed(chunk, lambda attempts: self._produce_error(
          chunk, attempts, worker_traceback, exc_bytes))

  def _release(self, worker: _Worker, chunk: int) -> None:
    """Mark the worker idle after it answered for `chunk`."""
    if chunk != worker.chunk:
      raise PoolError(f"internal error: {worker.name} answered for chunk {chunk} "
                      f"but holds chunk {worker.chunk}")
    worker.chunk = None
    worker.deadline = None

  def _produce_error(self, chunk: int, attempts: int, worker_traceback: str,
                     exc_bytes: Optional[bytes]) -> ChunkFailedError:
    """The error raised in the consumer when produce keeps raising on `chunk`."""
    error = ChunkFailedError(_error_message(chunk, attempts, self._max_retries, worker_traceback),
                             chunk, worker_traceback)
    if exc_bytes is not None:
      try:
        error.__cause__ = pickle.loads(exc_bytes)
      except Exception:  # pylint: disable=broad-except
        pass
    return error

  def _attempt_failed(self, chunk: int, make_error: Callable[[int], BaseException]) -> None:
    """Queue `chunk` again, or after too many failed attempts record its error for the consumer."""
    attempts = self._failures.get(chunk, 0) + 1
    self._failures[chunk] = attempts
    if attempts > self._max_retries:
      with self.cond:
        self.done[chunk] = ("failed", make_error(attempts))
        self.cond.notify_all()
      return
    heapq.heappush(self._requeued, chunk)
    with self.cond:
      self.stats.retries += 1

  def _enforce_deadlines(self) -> None:
    """Kill workers that held their chunk longer than chunk_timeout_s."""
    now = time.monotonic()
    for worker in list(self._workers):
      if worker.deadline is None or now < worker.deadline or worker.gone:
        continue
      if worker.conn.poll():
        continue  # its answer (or its exit) arrived in time; handled on the next round
      _kill(worker.process)
      self._retire(worker, timed_out=True)

  def _retire(self, worker: _Worker, timed_out: bool = False) -> None:
    """Reap a worker that exited or was killed, queue its chunk again and replace it."""
    worker.gone = True
    if worker.process.exitcode is None:
      worker.process.join(_KILL_GRACE_S)
    _kill(worker.process)
    cause = (f"exceeded chunk_timeout_s={self._timeout_s:g} and was killed" if timed_out
             else _describe_exit(worker.process.exitcode))
    name, chunk = worker.name, worker.chunk
    self._workers.remove(worker)
    worker.conn.close()
    worker.process.close()
    if self._is_stopping():
      return
    if not worker.ready:
      self._startup_failed(name, cause)
    elif chunk is None:
      logging.warning("ChunkPool: %s %s while idle; starting a replacement", name, cause)
    else:
      self._chunk_lost(name, cause, chunk, timed_out)
    with self.cond:
      self.stats.worker_restarts += 1
    self._workers.append(self._start_worker(worker.slot))

  def _startup_failed(self, name: str, cause: str) -> None:
    """Count a worker that died before it was ready; give up after several in a row."""
    self._startup_failures += 1
    logging.warning("ChunkPool: %s %s before it was ready", name, cause)
    if self._startup_failures >= _MAX_STARTUP_FAILURES:
      raise PoolError(
          f"{self._startup_failures} worker processes in a row died before they were ready "
          f"(the last one {cause}); see their stderr. With the 'spawn' start method the "
          f"main module is imported again in every worker, so a script must create the pool "
          f"under `if __name__ == '__main__':`.")

  def _chunk_lost(self, name: str, cause: str, chunk: int, timed_out: bool) -> None:
    """Log a worker lost while holding `chunk` and count the attempt against the chunk."""
    attempts = self._failures.get(chunk, 0) + 1
    logging.warning("ChunkPool: %s %s while producing chunk %d (attempt %d of %d); "
                    "starting a replacement", name, cause, chunk, attempts,
                    self._max_retries + 1)
    with self.cond:
      if timed_out:
        self.stats.chunk_timeouts += 1
      else:
        self.stats.worker_crashes += 1
    self._attempt_failed(chunk, lambda n: ChunkFailedError(
        f"chunk {chunk} lost its worker process {n} times (the last one {cause}); giving up "
        f"(max_chunk_retries={self._max_retries}). Workers die like this on a hard crash in "
        f"produce (os._exit, a segfault in native code), when the OS kills them (e.g. out of "
        f"memory), or when chunk_timeout_s={self._timeout_s} is too short. Run the pool with "
        f"num_workers=0 and start_chunk={chunk} to reproduce it in this process.", chunk))

  def _terminate_workers(self) -> None:
    """Stop every worker (idle ones politely, busy ones with SIGTERM) and reap them; once."""
    with self._cleanup_lock:
      if self._cleaned:
        return
      self._cleaned = True
      workers, self._workers = self._workers, []
      for worker in workers:
        self._ask_to_stop(worker)
      deadline = time.monotonic() + _KILL_GRACE_S
      for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
      for worker in workers:
        _kill(worker.process)
        worker.conn.close()
        worker.process.close()
      with self.cond:
        self.pids.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_w = None

  @staticmethod
  def _ask_to_stop(worker: _Worker) -> None:
    """Tell an idle worker to exit; terminate one that is busy or still starting."""
    if worker.ready and worker.chunk is None and not worker.gone:
      try:
        worker.conn.send(None)
        return
      except OSError:
        pass
    if worker.process.exitcode is None:
      worker.process.terminate()


# ---------------------------------------------------------------- public API


class ChunkPool(Generic[T]):
  """Iterator over `(chunk_index, produce(chunk_index))` in chunk order, computed by workers.

  Args:
    produce: computes one chunk from its index, deterministically. With workers it must be
      picklable (a module-level function or a functools.partial of one) and so must its
      result.
    num_workers: worker processes; 0 runs `produce` in the calling process (for tests and
      debugging; chunk_timeout_s does not apply there).
    start_chunk: first chunk index.
    end_chunk: one past the last chunk index; None for an endless stream.
    max_pending: most chunks in flight or finished but not yet consumed (default
      2 * num_workers); bounds memory and how far production runs ahead.
    chunk_timeout_s: a worker holding a chunk longer than this is killed and replaced, and
      the chunk retried; None for no limit. Worker start-up does not count.
    max_chunk_retries: how many times a chunk is retried after produce raised, its worker
      died or it timed out, before the consumer gets a ChunkFailedError.
    mp_context: 'spawn' (default), 'forkserver', 'fork', or a multiprocessing context.
      'fork' is unsafe once the parent runs threads (this pool's scheduler, JAX).
    worker_env: environment variables every worker starts with (default
      THREAD_LIMIT_ENV: one BLAS/OpenMP thread per worker); see _child_start_conditions
      for how they reach the worker before numpy is imported.

  Use it as a context manager, or call close(); it is also closed when the stream ends,
  when the consumer gets an exception from it (KeyboardInterrupt included), when it is
  garbage collected and at interpreter exit. Workers ignore SIGINT, so Ctrl-C reaches
  only the parent. Worker processes are daemonic, so `produce` cannot start processes.
  """

  def __init__(self, produce: Callable[[int], T], num_workers: int, start_chunk: int = 0,
               end_chunk: Optional[int] = None, max_pending: Optional[int] = None,
               chunk_timeout_s: Optional[float] = None, max_chunk_retries: int = 2,
               mp_context: Any = "spawn", worker_env: Optional[Mapping[str, str]] = None):
    if max_pending is None:
      max_pending = max(1, 2 * num_workers)
    _validate(produce, num_workers, start_chunk, end_chunk, max_pending, chunk_timeout_s,
              max_chunk_retries)
    self._produce = produce
    self._end = end_chunk
    self._max_retries = max_chunk_retries
    self._next_chunk = start_chunk
    self._stats = PoolStats()
    self._closed = False
    self._exhausted = False
    self._scheduler: Optional[_Scheduler] = None
    self._finalizer = None
    if num_workers == 0:
      return
    env = THREAD_LIMIT_ENV if worker_env is None else worker_env
    self._scheduler = _Scheduler(
        _pickle_produce(produce), num_workers, start_chunk, end_chunk, max_pending,
        chunk_timeout_s, max_chunk_retries, _get_context(mp_context), env)
    logging.info("ChunkPool: starting %d workers for chunks [%d, %s), max_pending=%d",
                 num_workers, start_chunk, "inf" if end_chunk is None else end_chunk,
                 max_pending)
    self._scheduler.start()
    # Runs shutdown when the pool is garbage collected, or at exit before multiprocessing
    # terminates its daemonic children (finalizers with an exitpriority run first).
    self._finalizer = multiprocessing.util.Finalize(self, self._scheduler.shutdown,
                                                    exitpriority=10)

  def __iter__(self) -> Iterator[Tuple[int, T]]:
    """The pool is its own (single-pass) iterator."""
    return self

  def __next__(self) -> Tuple[int, T]:
    """The next `(chunk_index, result)` in chunk order; closes the pool on any exception."""
    if self._closed:
      if self._exhausted:
        raise StopIteration
      raise PoolError("the ChunkPool is closed")
    try:
      if self._scheduler is None:
        return self._next_inline()
      return self._scheduler.next_item()
    except StopIteration:
      self._exhausted = True
      self.close()
      raise
    except BaseException:
      self.close()
      raise

  def _next_inline(self) -> Tuple[int, T]:
    """Compute the next chunk in this process, retrying exceptions like the workers do."""
    chunk = self._next_chunk
    if self._end is not None and chunk >= self._end:
      raise StopIteration
    attempts = 0
    while True:
      try:
        result = self._produce(chunk)
        break
      except Exception as exc:  # pylint: disable=broad-except
        attempts += 1
        self._stats.chunk_errors += 1
        worker_traceback = traceback.format_exc()
        logging.warning("ChunkPool: produce(%d) raised: %r", chunk, exc)
        if attempts > self._max_retries:
          raise ChunkFailedError(_error_message(chunk, attempts, self._max_retries,
                                                worker_traceback), chunk,
                                 worker_traceback) from exc
        self._stats.retries += 1
    self._next_chunk += 1
    self._stats.chunks_produced += 1
    self._stats.chunks_yielded += 1
    return chunk, result

  def close(self) -> None:
    """Terminate and reap the workers; idempotent."""
    if self._closed:
      return
    self._closed = True
    if self._finalizer is not None:
      self._finalizer()

  def __enter__(self) -> "ChunkPool[T]":
    """Context manager entry: the pool itself."""
    return self

  def __exit__(self, *exc_info) -> None:
    """Context manager exit: close the pool."""
    self.close()

  @property
  def stats(self) -> PoolStats:
    """A snapshot of the pool's counters."""
    if self._scheduler is None:
      return dataclasses.replace(self._stats)
    with self._scheduler.cond:
      return dataclasses.replace(self._scheduler.stats)

  @property
  def worker_pids(self) -> List[int]:
    """Process ids of the current workers (empty inline and once closed)."""
    if self._scheduler is None:
      return []
    with self._scheduler.cond:
      return sorted(self._scheduler.pids.values())


def _validate(produce, num_workers, start_chunk, end_chunk, max_pending, chunk_timeout_s,
              max_chunk_retries) -> None:
  """Check ChunkPool's arguments, with errors that say what to pass instead."""
  if not callable(produce):
    raise TypeError(f"produce must be callable as produce(chunk_index), got {produce!r}")
  if not isinstance(num_workers, int) or num_workers < 0:
    raise ValueError(f"num_workers must be an int >= 0 (0 = run in this process), "
                     f"got {num_workers!r}")
  if not isinstance(start_chunk, int) or start_chunk < 0:
    raise ValueError(f"start_chunk must be an int >= 0, got {start_chunk!r}")
  if end_chunk is not None and (not isinstance(end_chunk, int) or end_chunk < start_chunk):
    raise ValueError(f"end_chunk must be None (endless) or an int >= start_chunk="
                     f"{start_chunk}, got {end_chunk!r}")
  if not isinstance(max_pending, int) or max_pending < 1:
    raise ValueError(f"max_pending must be an int >= 1, got {max_pending!r}")
  if chunk_timeout_s is not None and not chunk_timeout_s > 0:
    raise ValueError(f"chunk_timeout_s must be None (no limit) or > 0, got {chunk_timeout_s!r}")
  if not isinstance(max_chunk_retries, int) or max_chunk_retries < 0:
    raise ValueError(f"max_chunk_retries must be an int >= 0, got {max_chunk_retries!r}")

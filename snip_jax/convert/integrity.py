"""Checksums of saved arrays, and the one check every loader runs on what it restores.

Every training checkpoint (in its `meta`) and every converted directory (in its `config.json`)
records `checksums`: the CRC-32 of each array's bytes, keyed by its tree path
("params/encoder_f/..."). Loaders restore inside `restoring(where)` and then call
`verify_arrays`: a restore that fails, arrays that differ from their checksums and NaN/inf
values all raise the same one-line `CorruptCheckpointError`. The training loop's resume sets
such a step aside and falls back to the previous one; `init_from` and `load_pretrained` refuse
it. Saves written before checksums were recorded still load, with a warning that they are
unverified.

CRC-32 runs at ~4 GB/s on one core (zlib) over host bytes: a replicated jax.Array is read
from its first addressable shard, so each process checks its own copy.

`restoring` also keeps a failed Orbax restore to its exception. Orbax runs a restore in a fresh
event loop and closes it as soon as one read fails, while TensorStore reads of the other
arrays are still in flight; each of those then reports "Event loop is closed" (thousands of
traceback lines). Inside `restoring`, event loops let their unfinished tasks end before they
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from typing import Any, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from snip_jax.errors import UserError

CHECKSUMS_KEY = "checksums"
_DRAIN_TIMEOUT_S = 120.0  # how long a closing event loop waits for reads still in flight
_LISTED_PATHS = 3  # how many bad arrays an error names
_ERROR_CHARS = 300  # how much of a restore error (TensorStore's run to pages) a message quotes


class CorruptCheckpointError(UserError):
  """A checkpoint that does not restore, or whose arrays differ from their checksums or hold
  NaN/inf; the one-line message names it (and, for loaders, the fix)."""


def array_checksums(tree: Any) -> dict[str, str]:
  """The CRC-32 (8 hex digits) of each leaf's bytes, keyed by its tree path."""
  return {path: _crc32(array) for path, array in _host_leaves(tree)}


@contextlib.contextmanager
def restoring(where: str, fix: str = "") -> Iterator[None]:
  """Run a restore quietly (see the module doc); any error becomes a CorruptCheckpointError."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_DrainingPolicy())
  try:
    yield
  except CorruptCheckpointError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    text = f"{type(error).__name__}: {error}".split("\n", 1)[0]
    text = text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "..."
    raise CorruptCheckpointError(_message(f"{where} does not restore ({text})", fix)) from error
  finally:
    asyncio.set_event_loop_policy(previous)


def verify_arrays(tree: Any, checksums: Optional[Mapping[str, str]], where: str,
                  fix: str = "") -> None:
  """Raise CorruptCheckpointError (naming `where`, then `fix`) unless `tree` is intact.

  Each leaf must match its entry in `checksums` (None: a save without them, only warned about)
  and hold no NaN/inf.
  """
  leaves = list(_host_leaves(tree))
  problems = []
  if checksums is None:
    logging.warning("%s has no checksums (saved before they were recorded): its arrays are"
                    " not verified", where)
  else:
    changed = [path for path, array in leaves if checksums.get(path) != _crc32(array)]
    problems += _listed(changed, "differ from their saved checksums")
  non_finite = [path for path, array in leaves
                if jnp.issubdtype(array.dtype, jnp.inexact) and not np.isfinite(array).all()]
  problems += _listed(non_finite, "hold NaN/inf")
  if problems:
    raise CorruptCheckpointError(_message(f"{where} is corrupt: {'; '.join(problems)}", fix))


def _message(problem: str, fix: str) -> str:
  """The problem, then the fix if there is one."""
  return f"{problem}. {fix}" if fix else problem


def _host_leaves(tree: Any) -> Iterator[tuple[str, np.ndarray]]:
  """(path, host array) per leaf; a replicated jax.Array's first addressable copy."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and leaf.is_fully_replicated:
      leaf = leaf.addressable_data(0)
    yield jax.tree_util.keystr(path, simple=True, separator="/"), np.asarray(leaf)


def _crc32(array: np.ndarray) -> str:
  """CRC-32 of the array's bytes in C order."""
  return f"{zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8)):08x}"


def _listed(paths: list[str], what: str) -> list[str]:
  """["N arrays <what> (the first few paths)"], or [] for no paths."""
  if not paths:
    return []
  more = f", ... ({len(paths) - _LISTED_PATHS} more)" if len(paths) > _LISTED_PATHS else ""
  return [f"{len(paths)} arrays {what} ({', '.join(paths[:_LISTED_PATHS])}{more})"]


class _DrainingEventLoop(asyncio.SelectorEventLoop):
  """An event loop that lets its unfinished tasks end (their errors retrieved) when closed."""

  def close(self) -> None:
    pending = [task for task in asyncio.all_tasks(self) if not task.done()]
    if pending and not self.is_running() and not self.is_closed():
      drain = asyncio.gather(*pending, return_exceptions=True)
      with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        self.run_until_complete(asyncio.wait_for(drain, _DRAIN_TIMEOUT_S))
    super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
  """The default policy, making _DrainingEventLoops."""

  _loop_factory = _DrainingEventLoop

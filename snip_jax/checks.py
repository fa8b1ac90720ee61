"""Config and path checks shared by the jobs' validation passes; each raises UserError."""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any, Iterable

from snip_jax.errors import UserError


def at_least(minimum: int, section: Any, prefix: str, *names: str) -> None:
  """Each `section.<name>` must be an integer >= `minimum` (`prefix` names the section)."""
  for name in names:
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise UserError(f"{prefix}.{name} must be an integer >= {minimum}, got {value!r}")


def one_of(value: Any, allowed: Iterable[Any], option: str) -> None:
  """`value` (the setting `option`) must be one of `allowed`."""
  allowed = tuple(allowed)
  if value not in allowed:
    raise UserError(f"{option} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def multiple_of(value: int, divisor: int, option: str, of_what: str) -> None:
  """`value` (the setting `option`) must be a multiple of `divisor`, which `of_what` names."""
  if value % divisor:
    raise UserError(f"{option}={value} must be a multiple of {of_what} ({divisor})")


def readable(path: str, option: str, kind: str = "file", hint: str = "") -> pathlib.Path:
  """`path`, the value of `option`, as an existing readable file (or directory: `kind="dir"`)."""
  if not path:
    raise UserError(f"set {option} to a {kind}{hint and '; ' + hint}")
  found = pathlib.Path(path)
  if not found.exists():
    raise UserError(f"{option}={path} does not exist{hint and '; ' + hint}")
  if (kind == "dir") != found.is_dir():
    raise UserError(f"{option}={path} is not a {kind}")
  if not os.access(found, os.R_OK | (os.X_OK if kind == "dir" else 0)):
    raise UserError(f"{option}={path} is not readable (check its permissions)")
  return found


def workdir(path: str) -> pathlib.Path:
  """The absolute --workdir: non-empty, and a writable directory or one that can be created."""
  if not path or not str(path).strip():
    raise UserError("--workdir is empty: give the directory for the outputs, e.g."
                    " --workdir=/tmp/snip_run")
  directory = pathlib.Path(path).absolute()
  if directory.exists() and not directory.is_dir():
    raise UserError(f"--workdir={path} is an existing file, not a directory")
  existing = next(p for p in (directory, *directory.parents) if p.exists())
  if not existing.is_dir():
    raise UserError(f"--workdir={path} cannot be created: {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is not writable" if existing == directory else f"cannot be created in {existing}"
    raise UserError(f"--workdir={path} {what} (permission denied)")
  return directory


@contextlib.contextmanager
def as_user_error(*extra: type[Exception]):
  """Report a ValueError (or one of `extra`) raised inside as a user mistake (UserError)."""
  try:
    yield
  except UserError:
    raise
  except (ValueError, *extra) as error:
    raise UserError(str(error)) from error

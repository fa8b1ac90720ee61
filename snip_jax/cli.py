"""The `snip-jax` command, also `python -m snip_jax` (and `python launch.py` in a checkout).

  snip-jax --config=pretrain:runlocal --workdir=/tmp/snip_runlocal
  snip-jax --config=export:d10 --config.export.n_samples=10000 --workdir=DIR
  snip-jax --config=path/to/my_config.py:ARG --workdir=DIR

`--config=NAME:ARG` names a bundled preset (snip_jax.configs.NAME, the checkout's configs/NAME.py)
and its `get_config(ARG)`; a value with a `/` or ending in `.py` is a config file of yours.
`--help` lists the presets and jobs. Exit statuses: see snip_jax/jobs.py. Logs: this project's
lines and everyone's warnings; `--verbosity=1` (`-v 1`) adds everyone's INFO lines (Orbax, jax),
`--verbosity=2` everyone's DEBUG lines (see jobs.set_log_levels).
"""

import ast
import os
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from snip_jax import configs as presets
from snip_jax import jobs

_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")
_VERBOSITY_HELP = ("1: third-party INFO logs too (Orbax, jax), 2: DEBUG logs too; 0 (default):"
                   " ours and warnings")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A bundled preset NAME[:ARG] (see --help) or a config file path[:ARG].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs; reruns resume there.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of user mistakes too (or set"
                           " SNIP_DEBUG=1).")
flags.mark_flags_as_required(["config", "workdir"])


class _PresetOrFileParser(flags.ArgumentParser):
  """Reads --config: a bundled preset NAME[:ARG] or a config file path[:ARG]."""

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser  # ml_collections' parser of config file paths

  def parse(self, argument: str):
    return self._file_parser.parse(resolve_config(argument))

  def flag_type(self) -> str:
    return self._file_parser.flag_type()


_CONFIG_FLAG = flags.FLAGS[_CONFIG.name]
_CONFIG_FLAG.parser = _PresetOrFileParser(_CONFIG_FLAG.parser)  # DEFINE_config_file takes none


def main() -> None:
  """The console script: print --help, or run the job of sys.argv and exit with its status."""
  if any(arg in _HELP_FLAGS for arg in sys.argv[1:]):
    try:
      print(usage(), flush=True)
    except BrokenPipeError:  # `snip-jax --help | head`: the reader left early, not an error
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return
  jobs.exit_on_signals()
  app.run(_run, flags_parser=jobs.parse_flags)


def _run(argv: list[str]) -> None:
  """app.run's main: the job, then exit with its status."""
  sys.exit(jobs.main(argv, _CONFIG, _WORKDIR.value, _DEBUG.value))


def preset_names() -> list[str]:
  """The bundled presets: the config files of snip_jax.configs."""
  return sorted(path.stem for path in _presets_dir().glob("[!_]*.py"))


def resolve_config(value: str) -> str:
  """The config file --config names: a preset NAME[:ARG] becomes its path[:ARG]; paths stay."""
  name, colon, arg = value.partition(":")
  if "/" in name or name.endswith(".py"):
    return value
  if name not in preset_names():
    raise ValueError(f"no preset named {name!r}; the bundled ones are"
                     f" {', '.join(preset_names())} (or give a config file path, ending in .py)")
  return f"{_presets_dir() / name}.py{colon}{arg}"


def usage() -> str:
  """What --help prints: the call, the presets and jobs, the flags and the exit statuses."""
  preset_lines = [f"  {name:10s}{_preset_summary(name)}" for name in preset_names()]
  job_lines = [f"  {name:15s}{summary}" for name, summary in jobs.job_summaries().items()]
  flag_lines = [f"  --{name:10s}{flags.FLAGS[name].help}" for name in ("workdir", "debug")]
  flag_lines.append(f"  --{'verbosity':10s}{_VERBOSITY_HELP}")
  return "\n".join([
      "usage: snip-jax --config=NAME[:ARG] --workdir=DIR [--config.FIELD=VALUE ...] [--debug]"
      " [--verbosity=1]",
      "  (the same as python -m snip_jax, and python launch.py in a checkout)", "",
      "presets (--config=NAME:ARG; or --config=path/to/your_config.py:ARG):", *preset_lines, "",
      "jobs (each preset sets config.job; --config.job=NAME picks another):", *job_lines, "",
      "flags:", *flag_lines, "  --helpfull  every flag", "",
      "exit status: 0 done, 2 a user mistake (one `error:` line), 75 preempted (rerun to"
      " resume), 130 interrupted",
      "example: snip-jax --config=pretrain:runlocal --workdir=/tmp/snip_runlocal"])


def _presets_dir() -> pathlib.Path:
  """The folder of the bundled preset files."""
  return pathlib.Path(presets.__file__).parent


def _preset_summary(name: str) -> str:
  """The first docstring line of a preset's get_config, read without importing it (and jax)."""
  tree = ast.parse((_presets_dir() / f"{name}.py").read_text())
  functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
  docs = [ast.get_docstring(node) for node in functions if node.name == "get_config"]
  return docs[0].splitlines()[0] if docs and docs[0] else ""

"""Job dispatch for `snip-jax` (cli.py): check the config, run the job `config.job` names.

Exit statuses: 0 done; 1 the input pipeline failed (a data worker died: one `error:` line
naming the batch; rerun to resume) or a bug (a traceback); 2 a user mistake (one `error: ...`
line on stderr; the traceback only with --debug or SNIP_DEBUG=1); 75 preempted by SIGTERM (EX_TEMPFAIL of sysexits.h: not done
yet, rerun the same command to resume); 130 interrupted by SIGINT (Ctrl-C, 128 + 2).
Every job validates its config, data sources and workdir before building anything.
"""

import logging as pylogging
import os
import pathlib
import signal
import sys
import threading
import traceback
from typing import Optional

from absl import flags, logging

from snip_jax import checks
from snip_jax.errors import UserError

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130
DEBUG_ENV = "SNIP_DEBUG"
_SIGNAL_EXITS = {signal.SIGINT: (EXIT_INTERRUPTED, "interrupted (SIGINT)"),
                 signal.SIGTERM: (EXIT_PREEMPTED, "preempted (SIGTERM)")}
_EXITING = threading.Lock()  # held by the one thread that writes the line and exits


# ------------------------------------------------------------------------- the command


def main(argv: list[str], config_flag, workdir: str, debug: bool = False) -> int:
  """The command's main: run the job; returns the exit status (user mistakes: one line, 2)."""
  set_log_levels(debug)
  try:
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    return run(_load_config(config_flag), workdir)
  except KeyboardInterrupt:  # a second Ctrl-C while a job stops gracefully
    _exit_on_signal(signal.SIGINT, None)
    return EXIT_INTERRUPTED
  except Exception as error:  # pylint: disable=broad-except
    user_error = _user_error(error)
    if user_error is None and not _is_pipeline_failure(error):
      raise
    if debug or os.environ.get(DEBUG_ENV) == "1":
      traceback.print_exc()
    report_error(str(user_error or error))
    return EXIT_USER_ERROR if user_error is not None else EXIT_FAILED


def parse_flags(argv: list[str]) -> list[str]:
  """app.run's flags_parser: a bad flag or config override is one `error:` line, status 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as error:  # ml_collections: unknown field
    if "--debug" in argv or os.environ.get(DEBUG_ENV) == "1":
      traceback.print_exc()
    report_error(_flag_error_message(error, argv))
    sys.exit(EXIT_USER_ERROR)


def exit_on_signals() -> None:
  """From now on SIGINT exits at once with status 130 and SIGTERM with 75, after one line.

  Jobs that stop gracefully install their own handlers while they can (the training loop
  saves a checkpoint on SIGTERM, the export finishes its chunk). Otherwise os._exit ends the
  process: a KeyboardInterrupt unwinding through XLA compilations, the prefetch thread and
  Orbax's async threads made interpreter teardown segfault. Orbax commits a checkpoint by
  renaming a finished temporary directory, so the ones already written stay valid. A thread
  reading the signal wakeup fd acts even while the main thread is in a long native call
  (an XLA compilation), where Python handlers wait.
  """
  for signum in _SIGNAL_EXITS:
    signal.signal(signum, _exit_on_signal)
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_watch_signals, args=(read_fd,), name="exit-on-signal",
                   daemon=True).start()


def set_log_levels(debug: bool) -> None:
  """By default this project's INFO lines and everyone's warnings; more with --verbosity.

  absl's --verbosity is shifted by one: 1 shows everyone's INFO lines (absl's 0), 2 and up
  everyone's DEBUG lines (absl's 1 and up). --debug (or SNIP_DEBUG=1) shows everyone's INFO.
  """
  verbosity = logging.get_verbosity()
  if verbosity >= 1:
    logging.set_verbosity(verbosity - 1)
  if not (debug or os.environ.get(DEBUG_ENV) == "1" or verbosity >= 1):
    quiet_library_logs()


def quiet_library_logs() -> None:
  """Show only this project's INFO lines (progress, where outputs are) and everyone's warnings.

  Orbax logs ~20 INFO lines per checkpoint save and jax one per missing backend; they drown
  the progress lines. --verbosity=1, --debug or SNIP_DEBUG=1 keeps them (set_log_levels).
  """
  package_dir = os.path.dirname(os.path.abspath(__file__))

  def ours_or_warning(record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or record.pathname.startswith(package_dir)

  logging.get_absl_handler().addFilter(ours_or_warning)


def report_error(message: str) -> None:
  """Print a user mistake as one `error: ...` line on stderr."""
  sys.stderr.write(f"error: {' '.join(message.split())}\n")
  sys.stderr.flush()


def _load_config(config_flag):
  """The --config value; a config file that did not load is a user mistake."""
  try:
    config = config_flag.value
    has_job = hasattr(config, "job")  # a file that failed to load raises on first use
  except OSError as error:
    lines = str(error).strip().splitlines()
    raise UserError(f"cannot load --config: {lines[-1].strip()}") from error
  if not has_job:
    raise UserError(f"the --config file sets no job; use one of {', '.join(_JOBS)}")
  return config


def _user_error(error: Optional[BaseException]) -> Optional[UserError]:
  """The UserError `error` is or was raised from (e.g. a corpus line read by the data thread)."""
  while error is not None and not isinstance(error, UserError):
    error = error.__cause__
  return error


def _is_pipeline_failure(error: BaseException) -> bool:
  """A failed input pipeline (a data worker died): one line naming the batch, then exit 1."""
  from snip_jax.data.pipeline import DataPipelineError  # pylint: disable=g-import-not-at-top

  return isinstance(error, DataPipelineError)


def _flag_error_message(error: BaseException, argv: list[str]) -> str:
  """A flag parsing error as one line: ml_collections' unknown-field hint, no traceback."""
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError)
    error = error.args[0]
  if isinstance(error, KeyError) and error.args:
    key, *hint = str(error.args[0]).splitlines()
    names = [a.split("=")[0] for a in argv[1:] if key.strip("'\"") in a.split("=")[0].split(".")]
    return "; ".join([f"{names[0] if names else 'a config override'}: no config field {key}",
                      *hint])
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if "Traceback (most recent call last):" in lines:  # the config file raised: keep its error
    lines = [lines[0], lines[-1]]
  return " ".join(lines)


def _watch_signals(read_fd: int) -> None:
  """Exit on SIGINT/SIGTERM as soon as they arrive, unless a job is handling them itself."""
  while True:
    for signum in os.read(read_fd, 64):
      if signum in _SIGNAL_EXITS and signal.getsignal(signum) is _exit_on_signal:
        _exit_on_signal(signum, None)


def _exit_on_signal(signum: int, frame) -> None:
  """One line on stderr, then end the process now with the signal's status (no teardown)."""
  del frame
  if not _EXITING.acquire(blocking=False):
    return  # the watcher thread or the main thread is already exiting
  status, what = _SIGNAL_EXITS[signum]
  os.write(2, f"{what}: stopped at once; rerun the same command to resume from what was"
              " saved\n".encode())
  os._exit(status)


# ------------------------------------------------------------------------- jobs


def run(config, workdir: str) -> int:
  """Validate, then run the job named by `config.job`; returns 0 (done) or 75/130 (stopped)."""
  job = _JOBS.get(config.job)
  if job is None:
    raise UserError(f"unknown job {config.job!r}; this version knows: {', '.join(_JOBS)}")
  return job(config, workdir)


def _export(config, workdir: str) -> int:
  """Write (or complete) a data.prefix corpus, and its split if asked."""
  from snip_jax.data import export  # pylint: disable=g-import-not-at-top

  export.validate_config(config, workdir)
  try:
    path = export.run_export(config, workdir)
  except export.ExportInterrupted as stopped:
    logging.warning("%s", stopped)
    return EXIT_INTERRUPTED if stopped.signal_name == "SIGINT" else EXIT_PREEMPTED
  logging.info("corpus written to %s", path)
  print(f"corpus: {path}")
  return 0


def _convert(config, workdir: str) -> int:
  """Convert an original .pth into a converted directory (the workdir)."""
  from snip_jax.convert import converter  # pylint: disable=g-import-not-at-top

  checks.workdir(workdir)
  checks.readable(config.pth, "--config.pth", hint="the original .pth checkpoint to convert")
  with checks.as_user_error(FileExistsError):  # what convert_pth refuses is the .pth or workdir
    path = converter.convert_pth(config.pth, workdir, overwrite=config.overwrite)
  print(f"converted: {path}")
  return 0


def _pretrain(config, workdir: str) -> int:
  """CLIP pretraining; 75 if SIGTERM stopped it (after saving a checkpoint)."""
  from snip_jax.tasks import clip  # pylint: disable=g-import-not-at-top

  clip.validate_config(config, workdir)
  metrics = clip.train_and_evaluate(config, workdir)
  _print_run(config.job, metrics)
  return EXIT_PREEMPTED if metrics["preempted"] else 0


def _sr(config, workdir: str) -> int:
  """Symbolic-regression training (mapper and decoder on SNIP's encoder); 75 if preempted."""
  from snip_jax.tasks import sr  # pylint: disable=g-import-not-at-top

  sr.validate_config(config, workdir)
  metrics = sr.train_and_evaluate(config, workdir)
  _print_run(config.job, metrics)
  return EXIT_PREEMPTED if metrics["preempted"] else 0


def _sr_fit(config, workdir: str) -> int:
  """Symbolic regression of a CSV column (SNIPRegressor): equation, R², results.json, plot."""
  from snip_jax.tasks import sr_fit  # pylint: disable=g-import-not-at-top

  sr_fit.validate_config(config, workdir)
  results = sr_fit.run_fit(config, workdir)
  print(f"equation: {results['equation']}")
  print(f"variables: {', '.join(f'{k} = {v}' for k, v in results['variables'].items())}")
  print(f"train R2 {results['train_r2']:.4f} ({results['n_train']} rows), test R2"
        f" {results['test_r2']:.4f} ({results['n_test']} rows)")
  print(f"results: {pathlib.Path(workdir).absolute() / sr_fit.RESULTS_FILE}")
  return 0


def _srbench(config, workdir: str) -> int:
  """SRBench-style comparison of SR methods (or a merge of shards): results.jsonl, summary.md."""
  from snip_jax.srbench import runner  # pylint: disable=g-import-not-at-top

  runner.validate_config(config, workdir)
  outcome = runner.run(config, workdir)
  for row in outcome["rows"]:
    print(f"{row['group']:9s} noise {row['noise']:<6g} {row['method']:11s} {row['fits']:4d} fits"
          f"  median test R2 {row['median_r2']:.4f}  R2>0.99 {100 * row['acc_0.99']:5.1f}%")
  print(f"fits: {outcome['n_run']} run now, {outcome['n_records']} recorded"
        f" ({outcome['n_failed']} failed or timed out, {outcome['n_missing']} of"
        f" {outcome['n_planned']} planned missing)")
  print(f"results: {outcome['results_file']}\nsummary: {outcome['summary']}")
  print(f"plots: {', '.join(outcome['plots'])}")
  return 0


def _proppred(config, workdir: str) -> int:
  """Property-prediction training, then the test report; 75 if SIGTERM stopped it."""
  from snip_jax.tasks import proppred  # pylint: disable=g-import-not-at-top

  proppred.validate_config(config, workdir)
  outcome = proppred.train_and_report(config, workdir)
  _print_run(config.job, outcome["train"])
  if outcome["train"]["preempted"]:
    return EXIT_PREEMPTED
  _print_report(outcome["report"])
  return 0


def _proppred_eval(config, workdir: str) -> int:
  """The test report of a trained property-prediction workdir."""
  from snip_jax.tasks import proppred  # pylint: disable=g-import-not-at-top

  proppred.validate_report_config(config, workdir)
  _print_report(proppred.report(config, workdir))
  return 0


def _retrieval_build(config, workdir: str) -> int:
  """Build, resume or extend an equation index (encoder_f latents of deduplicated skeletons)."""
  from snip_jax.retrieval import commands  # pylint: disable=g-import-not-at-top

  commands.validate_build(config, workdir)
  summary = commands.run_build(config, workdir)
  print(f"index: {summary.directory}\nentries: {summary.n_entries} ({summary.added} new,"
        f" {summary.duplicates} duplicate skeletons skipped, {summary.consumed} equations of"
        f" this source read)")
  return 0


def _retrieval_query(config, workdir: str) -> int:
  """The nearest indexed equations of CSV datasets, constants fitted and ranked by R²."""
  from snip_jax.retrieval import commands  # pylint: disable=g-import-not-at-top

  commands.validate_query(config, workdir)
  results = commands.run_query(config, workdir)
  print(f"model: {results['model']}; index: {results['index']} ({results['n_entries']} entries)")
  for dataset in results["datasets"]:
    print(commands.format_table(dataset))
  print(f"results: {pathlib.Path(workdir).absolute() / commands.RESULTS_FILE}")
  return 0


_JOBS = {"export": _export, "convert": _convert, "pretrain": _pretrain, "sr": _sr,
         "sr_fit": _sr_fit, "srbench": _srbench, "proppred": _proppred,
         "proppred_eval": _proppred_eval, "retrieval_build": _retrieval_build,
         "retrieval_query": _retrieval_query}


def job_summaries() -> dict[str, str]:
  """{job name: the first line of what it does}, for the command's help."""
  return {name: job.__doc__.splitlines()[0] for name, job in _JOBS.items()}


def _print_run(job: str, metrics: dict) -> None:
  """How a training run ended and where its outputs are."""
  state = "preempted at" if metrics["preempted"] else "finished at"
  print(f"{job} {state} step {metrics['step']}\ncheckpoints: {metrics['checkpoint_dir']}\n"
        f"metrics: {metrics['metrics_file']}\ntensorboard: {metrics['tensorboard_dir']}\n"
        f"plots: {', '.join(metrics['plots'])}")


def _print_report(results: dict) -> None:
  """The test metrics next to the chance level, and where the results are."""
  print(f"{results['property']} ({results['variant']}) on {results['n_test']} test samples:")
  for name, value in results["metrics"].items():
    print(f"  {name:24s} {value:10.4f}   chance {results['chance'][name]:10.4f}")
  print(f"results: {results['results_file']}")
  for plot in results.get("plots", []):
    print(f"plot: {plot}")

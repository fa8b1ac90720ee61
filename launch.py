"""Command-line entry point: parse flags and an ml_collections config, run the job.

  python launch.py --config=configs/export.py:runlocal --workdir=/tmp/snip_export
  python launch.py --config=configs/export.py:d10 --config.export.n_samples=10000 --workdir=DIR

Exit status: 0 done, 2 a user mistake (one `error:` line; --debug shows the traceback),
75 preempted (SIGTERM; rerun to resume), 130 interrupted (Ctrl-C). See snip_jax/jobs.py.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from snip_jax import jobs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py:preset).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs; reruns resume there.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of user mistakes too (or set"
                           " SNIP_DEBUG=1).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  sys.exit(jobs.main(argv, _CONFIG, _WORKDIR.value, _DEBUG.value))


if __name__ == "__main__":
  jobs.exit_on_signals()
  app.run(main, flags_parser=jobs.parse_flags)

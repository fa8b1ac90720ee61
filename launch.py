"""Command-line entry point: parse flags and an ml_collections config, run the job.

  python launch.py --config=configs/export.py:runlocal --workdir=/tmp/snip_export
  python launch.py --config=configs/export.py:d10 --config.export.n_samples=10000 --workdir=DIR
"""

from absl import app, flags
from ml_collections import config_flags

from snip_jax import jobs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config file (configs/*.py:preset).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs; reruns resume there.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  jobs.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)

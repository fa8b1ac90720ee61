"""Command-line entry point: parse flags and an ml_collections config, run the job.

  python launch.py --config=configs/export.py:runlocal --workdir=/tmp/snip_export
  python launch.py --config=configs/export.py:d10 --config.export.n_samples=10000 --workdir=DIR

Exit status: 0 done, 2 a user mistake (one `error:` line; --debug shows the traceback),
75 preempted (SIGTERM; rerun to resume), 130 interrupted (Ctrl-C). See snip_jax/jobs.py.
The same command as `snip-jax` and `python -m snip_jax` (snip_jax/cli.py); --help lists presets.
"""

from snip_jax import cli

if __name__ == "__main__":
  cli.main()

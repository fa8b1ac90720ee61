"""SRBench-style evaluation: ground-truth problems, methods side by side, metrics, a report.

  launch.py --config=configs/srbench.py:runlocal --workdir=/tmp/srbench

problems.py: PMLB's Feynman and Strogatz problems (regenerated data, sympy ground truth) and
users' CSV files; methods.py: the estimators compared (Operon, gplearn, baselines, SNIP);
metrics.py: R², model size and SRBench's symbolic-solution check; runner.py: the resumable,
sharded run in worker processes; report.py: summary.md and plots. See docs/SRBENCH.md.
"""

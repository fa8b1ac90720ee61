"""Job dispatch for `launch.py`: `config.job` names the library function to run."""

from absl import logging


def run(config, workdir: str):
  """Run the job named by `config.job` with its config and workdir."""
  if config.job == "export":
    from snip_jax.data import export  # pylint: disable=g-import-not-at-top

    try:
      path = export.run_export(config, workdir)
    except export.ExportInterrupted as stopped:
      logging.warning("%s", stopped)
      raise SystemExit(1) from None
    logging.info("corpus written to %s", path)
    print(f"corpus: {path}")
    return path
  if config.job == "convert":
    from snip_jax.convert import converter  # pylint: disable=g-import-not-at-top

    if not config.pth:
      raise ValueError("set --config.pth=FILE.pth (the original checkpoint to convert)")
    path = converter.convert_pth(config.pth, workdir, overwrite=config.overwrite)
    print(f"converted: {path}")
    return path
  if config.job == "pretrain":
    from snip_jax.train import trainer  # pylint: disable=g-import-not-at-top

    metrics = trainer.train_and_evaluate(config, workdir)
    _print_run(config.job, metrics)
    return metrics
  if config.job in ("proppred", "proppred_eval"):
    from snip_jax.tasks import proppred  # pylint: disable=g-import-not-at-top

    if config.job == "proppred_eval":
      results = proppred.report(config, workdir)
    else:
      outcome = proppred.train_and_report(config, workdir)
      _print_run(config.job, outcome["train"])
      results = outcome.get("report")
    if results is not None:
      _print_report(results)
    return results
  raise ValueError(f"unknown job {config.job!r}; this version knows: export, convert, pretrain,"
                   " proppred, proppred_eval")


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

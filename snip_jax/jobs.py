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
    state = "preempted at" if metrics["preempted"] else "finished at"
    print(f"pretrain {state} step {metrics['step']}\n"
          f"checkpoints: {metrics['checkpoint_dir']}\nmetrics: {metrics['metrics_file']}\n"
          f"tensorboard: {metrics['tensorboard_dir']}\nplots: {', '.join(metrics['plots'])}")
    return metrics
  raise ValueError(f"unknown job {config.job!r}; this version knows: export, convert, pretrain")

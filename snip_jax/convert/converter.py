"""Original `.pth` checkpoints <-> converted directories (Orbax params + config.json).

A converted directory holds `params/<module>/` (one Orbax checkpoint per SNIP module, saved
one after another so the transient copies Orbax makes stay the size of one module) and
`config.json` (the model and environment configs, where the weights came from and the CRC-32
of every array, checked on loading: snip_jax.convert.integrity), which
`load_pretrained` and the training jobs start from. `export_state_dicts` goes back to the
original's per-module state_dict keys, as a `.pth` the original code reloads
(`--reload_model`) or as a `.npz`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from snip_jax import __version__
from snip_jax.convert.integrity import CHECKSUMS_KEY, array_checksums
from snip_jax.convert.pth import load_pth
from snip_jax.convert.pth_writer import save_pth
from snip_jax.model import ModelConfig, params_from_checkpoint, params_to_state_dicts
from snip_jax.symbolic.config import EnvConfig, default_env_config
from snip_jax.train.checkpoints import (CONFIG_FILE, PARAMS_DIR, load_converted,
                                        model_config_to_json)

__all__ = ["CONFIG_FILE", "PARAMS_DIR", "convert_pth", "env_config_from_params", "export_pth",
           "export_state_dicts", "load_converted", "read_pth", "save_converted"]  # load_converted lives with the workdir layout; re-exported here



def env_config_from_params(params: Mapping[str, Any]) -> EnvConfig:
  """The environment options recorded in an original checkpoint's `params`."""
  names = {f.name for f in dataclasses.fields(EnvConfig)}
  return default_env_config(**{k: v for k, v in params.items() if k in names})


def save_converted(out_dir: str | os.PathLike, model_cfg: ModelConfig, env_cfg: EnvConfig,
                   params: Any, source: Mapping[str, Any], overwrite: bool = False) -> pathlib.Path:
  """Write `params` with Orbax and the configs as JSON into `out_dir`."""
  out_dir = pathlib.Path(out_dir).absolute()
  if (out_dir / CONFIG_FILE).exists() and not overwrite:
    raise FileExistsError(f"{out_dir} already holds a converted checkpoint; pass overwrite=True"
                          " (--overwrite) or choose another directory")
  if out_dir.exists() and overwrite:
    shutil.rmtree(out_dir / PARAMS_DIR, ignore_errors=True)
  out_dir.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checksums = {}
  for module, tree in params.items():
    tree = jax.tree.map(np.asarray, tree)
    checkpointer.save(out_dir / PARAMS_DIR / module, tree)
    checksums.update(array_checksums({module: tree}))
    checkpointer.wait_until_finished()
  config = {"model": model_config_to_json(model_cfg), "env": dataclasses.asdict(env_cfg),
            "source": dict(source), "snip_jax_version": __version__, CHECKSUMS_KEY: checksums}
  (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str) + "\n")
  return out_dir


def read_pth(pth_path: str | os.PathLike, kind: Optional[str] = None
             ) -> tuple[ModelConfig, EnvConfig, Any, dict]:
  """(model config, env config, params, provenance) from an original `.pth` checkpoint.

  Reads SNIP pretraining and SR checkpoints; the params' module names tell which. kind: the
  kind required ("snip" or "sr"; None: either), else a one-line ValueError naming both.
  """
  checkpoint = load_pth(pth_path)
  if not isinstance(checkpoint, Mapping) or "params" not in checkpoint:
    raise ValueError(f"{pth_path} is not a SNIP training checkpoint: it has no 'params' entry")
  original_params = dict(checkpoint["params"])
  model_cfg, params = params_from_checkpoint(checkpoint, kind, what=str(pth_path))
  env_cfg = env_config_from_params(original_params)
  source = {"pth": str(pth_path), "epoch": checkpoint.get("epoch"),
            "n_total_iter": checkpoint.get("n_total_iter")}
  return model_cfg, env_cfg, params, source


def convert_pth(pth_path: str | os.PathLike, out_dir: str | os.PathLike,
                overwrite: bool = False) -> pathlib.Path:
  """Convert an original SNIP or SR `.pth` into a directory the JAX jobs and loaders read."""
  model_cfg, env_cfg, params, source = read_pth(pth_path)
  return save_converted(out_dir, model_cfg, env_cfg, params, source, overwrite)


def export_state_dicts(params: Any, model_cfg: ModelConfig,
                       npz_path: str | os.PathLike) -> pathlib.Path:
  """Write params as the original's state_dicts: keys `<module>/<state_dict key>` in a `.npz`.

  In PyTorch: `sd = {k.split('/', 1)[1]: torch.from_numpy(v) for k, v in np.load(f).items()
  if k.startswith('encoder_f/')}; model.encoder_f.load_state_dict(sd)`.
  """
  state_dicts = params_to_state_dicts(params, model_cfg)
  arrays = {f"{module}/{key}": np.asarray(value)
            for module, sd in state_dicts.items() for key, value in sd.items()}
  npz_path = pathlib.Path(npz_path)
  npz_path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(npz_path, **arrays)
  return npz_path


def export_pth(params: Any, model_cfg: ModelConfig, env_cfg: EnvConfig,
               pth_path: str | os.PathLike) -> pathlib.Path:
  """Write a `.pth` with the six module state_dicts and `params`, as `Trainer.save_checkpoint`.

  PyTorch SNIP reloads it with `--reload_model FILE`; `torch.load(FILE, weights_only=True)`
  and `load_pretrained(FILE)` read it too.
  """
  state_dicts = params_to_state_dicts(params, model_cfg)
  options = {**dataclasses.asdict(env_cfg), **model_config_to_json(model_cfg)}
  options.pop("dtype")
  data = {"params": options}
  data.update({module: collections.OrderedDict((k, np.asarray(v)) for k, v in sd.items())
               for module, sd in state_dicts.items()})
  return save_pth(data, pth_path)

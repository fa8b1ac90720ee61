"""Original SNIP state_dicts <-> Flax params of `SNIP` or `SNIPSR`, one tensor to one array.

The mapping is explicit and derived from the config, so every key and shape is checked:
torch Linear weights are [out, in] and become Flax kernels [in, out]; LayerNorm
weight -> scale; Embedding weight -> embedding; list index `attentions.3` -> `attentions_3`;
`glob_attn_module.0` (a Sequential's Linear) -> `glob_attn_module`. The decoder's output
projection shares its weight with `embeddings.weight` (share_inout_emb): the state_dict has
both keys, the params tree only the embedding table and `proj/bias`.

Two kinds of checkpoint: "snip" (pretraining: MODULE_NAMES) and "sr" (symbolic regression:
SR_MODULE_NAMES, whose decoder is E2E's, without pooling, bottleneck or z_projection, plus the
mapper). The kind of a checkpoint or params tree follows from its module names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from snip_jax.model.config import HEAD_HIDDEN_DIM, N_MAX_POSITIONS, ModelConfig

MODULE_NAMES = ("embedder", "encoder_y", "encoder_f", "decoder", "regressor", "classifier")
SR_MODULE_NAMES = ("embedder", "encoder_y", "decoder", "mapper")
_KIND_MODULES = {"snip": MODULE_NAMES, "sr": SR_MODULE_NAMES}
_KIND_NAMES = {"snip": "SNIP pretraining", "sr": "SNIP symbolic-regression (SR)"}
_DATA_PARALLEL_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One state_dict tensor: its key, torch shape, Flax path and whether it is a Linear weight."""

  key: str
  shape: tuple
  path: tuple
  transpose: bool = False
  alias_of: Optional[str] = None  # a tied tensor: same storage as this other key


def _linear(key: str, path: tuple, out_dim: int, in_dim: int) -> Iterator[_Entry]:
  """torch Linear(in_dim, out_dim): weight [out, in] -> kernel [in, out], bias -> bias."""
  yield _Entry(f"{key}.weight", (out_dim, in_dim), path + ("kernel",), transpose=True)
  yield _Entry(f"{key}.bias", (out_dim,), path + ("bias",))


def _layer_norm(key: str, path: tuple, dim: int) -> Iterator[_Entry]:
  """torch LayerNorm: weight -> scale, bias -> bias."""
  yield _Entry(f"{key}.weight", (dim,), path + ("scale",))
  yield _Entry(f"{key}.bias", (dim,), path + ("bias",))


def _embedding(key: str, path: tuple, n: int, dim: int) -> Iterator[_Entry]:
  """torch Embedding: weight [n, dim] -> embedding [n, dim]."""
  yield _Entry(f"{key}.weight", (n, dim), path + ("embedding",))


def _embedder_entries(cfg: ModelConfig) -> Iterator[_Entry]:
  """LinearPointEmbedder's tensors."""
  yield from _embedding("embeddings", ("embeddings",), cfg.n_float_words, cfg.emb_emb_dim)
  fan_in = cfg.tokens_per_point * cfg.emb_emb_dim
  for i in range(cfg.n_emb_layers):
    yield from _linear(f"hidden_layers.{i}", (f"hidden_layers_{i}",), cfg.embedder_hidden_dim,
                       fan_in)
    fan_in = cfg.embedder_hidden_dim
  yield from _linear("fc", ("fc",), cfg.enc_emb_dim, fan_in)


def _attention(key: str, path: tuple, dim: int) -> Iterator[_Entry]:
  """MultiHeadAttention's four projections."""
  for name in ("q_lin", "k_lin", "v_lin", "out_lin"):
    yield from _linear(f"{key}.{name}", path + (name,), dim, dim)


def _indexed(name: str, n: int) -> Iterator[tuple[str, tuple]]:
  """(torch key, Flax path) of the items of a ModuleList."""
  for i in range(n):
    yield f"{name}.{i}", (f"{name}_{i}",)


def _transformer_entries(cfg: ModelConfig, decoder: bool, with_embeddings: bool,
                         latent_heads: bool = True) -> Iterator[_Entry]:
  """A TransformerModel's tensors, in the original's registration (state_dict) order.

  latent_heads: SNIP's pooling, bottleneck and z_projection (absent from E2E's decoder).
  """
  dim = cfg.dec_emb_dim if decoder else cfg.enc_emb_dim
  n_layers = cfg.n_dec_layers if decoder else cfg.n_enc_layers
  n_hidden = cfg.n_dec_hidden_layers if decoder else cfg.n_enc_hidden_layers
  yield from _embedding("position_embeddings", ("position_embeddings",), N_MAX_POSITIONS, dim)
  if with_embeddings:
    yield from _embedding("embeddings", ("embeddings",), cfg.n_words, dim)
  yield from _layer_norm("layer_norm_emb", ("layer_norm_emb",), dim)
  for key, path in _indexed("attentions", n_layers):
    yield from _attention(key, path, dim)
  for key, path in _indexed("layer_norm1", n_layers):
    yield from _layer_norm(key, path, dim)
  for key, path in _indexed("ffns", n_layers):
    for i in range(n_hidden - 1):
      yield from _linear(f"{key}.midlin.{i}", path + (f"midlin_{i}",), 4 * dim, 4 * dim)
    yield from _linear(f"{key}.lin1", path + ("lin1",), 4 * dim, dim)
    yield from _linear(f"{key}.lin2", path + ("lin2",), dim, 4 * dim)
  for key, path in _indexed("layer_norm2", n_layers):
    yield from _layer_norm(key, path, dim)
  if decoder:
    for key, path in _indexed("layer_norm15", n_layers):
      yield from _layer_norm(key, path, dim)
    for key, path in _indexed("encoder_attn", n_layers):
      yield from _attention(key, path, dim)
    if cfg.share_inout_emb:
      yield _Entry("proj.weight", (cfg.n_words, dim), ("embeddings", "embedding"),
                   alias_of="embeddings.weight")
      yield _Entry("proj.bias", (cfg.n_words,), ("proj", "bias"))
    else:
      yield from _linear("proj", ("proj",), cfg.n_words, dim)
  if not latent_heads:
    return
  yield from _linear("glob_attn_module.0", ("glob_attn_module",), 1, dim)
  yield from _linear("bottleneck_module.fc1", ("bottleneck_module", "fc1"), cfg.latent_dim, dim)
  yield from _linear("z_projection", ("z_projection",), dim, cfg.latent_dim)


def _head_entries(cfg: ModelConfig) -> Iterator[_Entry]:
  """MLPRegressor's / MLPClassifier's tensors."""
  yield from _linear("fc1", ("fc1",), HEAD_HIDDEN_DIM, cfg.latent_dim)
  yield from _linear("fc2", ("fc2",), 1, HEAD_HIDDEN_DIM)


def _mapper_entries(cfg: ModelConfig) -> Iterator[_Entry]:
  """SNIP_E2E_MAP's tensors."""
  dim = cfg.dec_emb_dim
  yield from _linear("linear1", ("linear1",), cfg.max_src_len * dim, cfg.latent_dim)
  yield from _linear("linear2", ("linear2",), dim, dim)


def model_kind(module_names: Iterable[str]) -> str:
  """The kind of a model with these modules: "sr" if they include the mapper, else "snip"."""
  return "sr" if "mapper" in module_names else "snip"


def describe_kind(kind: str) -> str:
  """E.g. 'SNIP symbolic-regression (SR) checkpoint (embedder, encoder_y, decoder, mapper)'."""
  return f"{_KIND_NAMES[kind]} checkpoint ({', '.join(_KIND_MODULES[kind])})"


def check_kind(module_names: Iterable[str], expected: Optional[str], what: str) -> str:
  """The kind of `module_names`; a one-line ValueError if it is not `expected` (None: any)."""
  kind = model_kind(module_names)
  if expected is not None and kind != expected:
    raise ValueError(f"{what} is a {describe_kind(kind)}; expected a {describe_kind(expected)}")
  return kind


def expected_entries(cfg: ModelConfig, kind: str = "snip") -> dict[str, list[_Entry]]:
  """Per module of a `kind` ("snip" or "sr") model, the state_dict's tensors in key order."""
  points = {
      "embedder": list(_embedder_entries(cfg)),
      "encoder_y": list(_transformer_entries(cfg, decoder=False, with_embeddings=False)),
  }
  if kind == "sr":
    return {
        **points,
        "decoder": list(_transformer_entries(cfg, decoder=True, with_embeddings=True,
                                             latent_heads=False)),
        "mapper": list(_mapper_entries(cfg)),
    }
  return {
      **points,
      "encoder_f": list(_transformer_entries(cfg, decoder=False, with_embeddings=True)),
      "decoder": list(_transformer_entries(cfg, decoder=True, with_embeddings=True)),
      "regressor": list(_head_entries(cfg)),
      "classifier": list(_head_entries(cfg)),
  }


def expected_shapes(cfg: ModelConfig, kind: str = "snip") -> dict[str, dict[str, tuple]]:
  """Per module, {state_dict key: torch shape}, in the original's key order."""
  return {m: {e.key: e.shape for e in entries}
          for m, entries in expected_entries(cfg, kind).items()}


def _strip_data_parallel(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drop the `module.` prefix that torch DataParallel / DDP adds to every key."""
  return {k[len(_DATA_PARALLEL_PREFIX):] if k.startswith(_DATA_PARALLEL_PREFIX) else k: v
          for k, v in state_dict.items()}


def _set(tree: dict, path: tuple, value: Any) -> None:
  """tree[path[0]][path[1]]... = value, creating the intermediate dicts."""
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple) -> Any:
  """tree[path[0]][path[1]]..."""
  for name in path:
    tree = tree[name]
  return tree


def _leaf_paths(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple]:
  """Paths of every leaf of a nested mapping."""
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _leaf_paths(value, prefix + (name,))
    else:
      yield prefix + (name,)


def _raise_if(errors: list[str], what: str) -> None:
  """One ValueError listing every problem found, if any."""
  if errors:
    raise ValueError(f"{what}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))


def state_dicts_to_params(state_dicts: Mapping[str, Mapping[str, Any]], cfg: ModelConfig,
                          kind: Optional[str] = None) -> dict:
  """Original per-module state_dicts (arrays) -> the `params` tree of `SNIP(cfg)`/`SNIPSR(cfg)`.

  kind: "snip" or "sr"; None takes it from the module names. Keys may carry DataParallel's
  `module.` prefix. Raises ValueError naming every missing, unexpected or mis-shaped tensor.
  Leaves are float32 numpy arrays (place them with `jax.device_put`).
  """
  kind = kind or model_kind(state_dicts)
  errors = [f"unexpected module {m!r} (expected {', '.join(_KIND_MODULES[kind])})"
            for m in state_dicts if m not in _KIND_MODULES[kind]]
  params: dict = {}
  for module, entries in expected_entries(cfg, kind).items():
    if module not in state_dicts:
      errors.append(f"missing module {module!r}")
      continue
    state_dict = _strip_data_parallel(state_dicts[module])
    known = {e.key for e in entries}
    errors += [f"{module}: unexpected key {k!r} with shape {tuple(np.shape(v))}"
               for k, v in state_dict.items() if k not in known]
    tree = params.setdefault(module, {})
    for e in entries:
      if e.key not in state_dict:
        errors.append(f"{module}: missing key {e.key!r} (expected shape {e.shape})")
        continue
      array = np.asarray(state_dict[e.key], dtype=np.float32)
      if array.shape != e.shape:
        errors.append(f"{module}: key {e.key!r} has shape {array.shape}, expected {e.shape}")
      elif e.alias_of is not None:
        tied = state_dict.get(e.alias_of)
        if tied is not None and not np.array_equal(array, np.asarray(tied, dtype=np.float32)):
          errors.append(f"{module}: {e.key!r} must equal {e.alias_of!r} (share_inout_emb=True"
                        " ties them); set share_inout_emb=False to load them separately")
      else:
        # Copies: the params must not alias a (possibly memory-mapped) checkpoint.
        _set(tree, e.path, array.T.copy() if e.transpose else array.copy())
  _raise_if(errors, "state_dicts do not match the model config")
  return params


def params_to_state_dicts(params: Mapping[str, Any], cfg: ModelConfig,
                          kind: Optional[str] = None) -> dict[str, dict[str, np.ndarray]]:
  """The `params` tree of `SNIP(cfg)`/`SNIPSR(cfg)` -> original per-module state_dicts.

  kind: "snip" or "sr"; None takes it from the module names. Keys are in the original's order;
  with share_inout_emb the decoder's `proj.weight` is the same array as its
  `embeddings.weight`. Accepts the bare tree or {"params": tree}.
  """
  if set(params) == {"params"}:
    params = params["params"]
  kind = kind or model_kind(params)
  errors = []
  state_dicts = {}
  for module, entries in expected_entries(cfg, kind).items():
    if module not in params:
      errors.append(f"missing module {module!r}")
      continue
    tree = params[module]
    state_dict = {}
    for e in entries:
      try:
        array = np.asarray(_get(tree, e.path), dtype=np.float32)
      except (KeyError, TypeError):
        errors.append(f"{module}: missing param {'/'.join(e.path)} (for {e.key!r})")
        continue
      array = array.T if e.transpose else array
      if array.shape != e.shape:
        errors.append(f"{module}: param {'/'.join(e.path)} gives {e.key!r} shape {array.shape},"
                      f" expected {e.shape}")
        continue
      state_dict[e.key] = state_dict[e.alias_of] if e.alias_of else np.ascontiguousarray(array)
    used = {e.path for e in entries}
    errors += [f"{module}: unexpected param {'/'.join(p)}" for p in _leaf_paths(tree)
               if p not in used]
    state_dicts[module] = state_dict
  errors += [f"unexpected module {m!r}" for m in params if m not in _KIND_MODULES[kind]]
  _raise_if(errors, "params do not match the model config")
  return state_dicts


def params_from_checkpoint(checkpoint: Mapping[str, Any], kind: Optional[str] = None,
                           what: str = "checkpoint", **cfg_overrides) -> tuple[ModelConfig, dict]:
  """An original checkpoint (its `params` and module state_dicts) -> (config, params).

  kind: the kind required ("snip" or "sr"), None for either; the params tree's module names
  tell which it was. A checkpoint of the other kind raises a one-line ValueError naming
  `what` (e.g. the file).
  """
  kind = check_kind(checkpoint, kind, what)
  names = _KIND_MODULES[kind]
  missing = [k for k in ("params",) + names if k not in checkpoint]
  if missing:
    raise ValueError(f"{what} lacks {', '.join(missing)}: expected a file written by the"
                     " original Trainer.save_checkpoint")
  cfg = ModelConfig.from_params(checkpoint["params"], **cfg_overrides)
  return cfg, state_dicts_to_params({m: checkpoint[m] for m in names}, cfg, kind)

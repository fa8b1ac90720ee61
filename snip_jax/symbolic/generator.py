"""Random functions with the original SNIP generator's sampling semantics.

One attempt (the original's `_gen_expr`) samples binary trees with the unary-binary tree
distribution, inserts unaries, adds prefactors, relabels variables, then draws datapoints;
any rejection starts a new attempt. The distributions match the original; the random stream
does not (every draw comes from the `numpy.random.Generator` passed in, never a global RNG).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
from typing import Optional

import numpy as np

from snip_jax.symbolic import datapoints as datapoints_lib
from snip_jax.symbolic import properties
from snip_jax.symbolic.config import BASE_OPERATORS, MATH_CONSTANTS, EnvConfig
from snip_jax.symbolic.datapoints import Rejected
from snip_jax.symbolic.trees import ARITY, Expression, Node, is_integer_text, is_number
from snip_jax.symbolic.tokenizers import encode_prefix

_UNARY_OPERATORS = frozenset(name for name, arity in ARITY.items() if arity == 1)


@dataclasses.dataclass
class Sample:
  """One generated training sample (the original's `expr` dict, typed)."""

  tree: Expression
  tree_encoded: list[str]
  skeleton_tree_encoded: list[str]
  x: np.ndarray  # [n_points, d_in] float64
  y: np.ndarray  # [n_points, d_out] float64
  infos: dict[str, int]
  target_property: Optional[float] = None
  predict: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

  @property
  def prefix(self) -> str:
    return self.tree.prefix()


# ---------------------------------------------------------------------------------------------
# Tables derived from the config (cached: EnvConfig is frozen and hashable)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tables:
  unaries: tuple[str, ...]
  unary_cum: tuple[float, ...]
  binaries: tuple[str, ...]
  binary_cum: tuple[float, ...]
  tree_counts: tuple[tuple[int, ...], ...]
  constants: tuple[str, ...]
  unary_set: frozenset
  binary_set: frozenset


@functools.lru_cache(maxsize=32)
def _tables(cfg: EnvConfig) -> _Tables:
  ratios = {}
  for item in cfg.operators_to_downsample.split(","):
    if item:
      name, _, ratio = item.rpartition("_")
      ratios[name] = float(ratio)
  unaries = tuple(o for o, a in BASE_OPERATORS.items() if a == 1) + cfg.extra_unaries
  binaries = tuple(o for o, a in BASE_OPERATORS.items() if a == 2) + cfg.extra_binaries
  # Sized like the original (not by the largest tree it can draw): see _sample_binary_tree.
  max_ops = 2 * cfg.max_binary_ops_per_dim * cfg.max_input_dimension
  constants = tuple(str(i) for i in range(-cfg.max_int, cfg.max_int + 1) if i != 0)
  return _Tables(
      unaries=unaries,
      unary_cum=_cumulative([ratios.get(o, 1.0) for o in unaries]),
      binaries=binaries,
      binary_cum=_cumulative([ratios.get(o, 1.0) for o in binaries]),
      tree_counts=_binary_tree_counts(max_ops),
      constants=constants + tuple(MATH_CONSTANTS) + cfg.extra_constant_list,
      unary_set=frozenset(unaries),
      binary_set=frozenset(binaries),
  )


def _cumulative(weights: list[float]) -> tuple[float, ...]:
  total = sum(weights)
  if total <= 0:
    raise ValueError("operators_to_downsample gives every operator of one arity probability 0")
  out, acc = [], 0.0
  for w in weights:
    acc += w / total
    out.append(acc)
  return tuple(out)


def _binary_tree_counts(max_ops: int) -> tuple[tuple[int, ...], ...]:
  """D[n][e]: number of binary trees with n operators grown from e empty leaves.

  D[0][e] = 1, D[n][0] = 0, D[n][e] = D[n][e-1] + D[n-1][e+1] (Lample & Charton, 2019).
  """
  size = 2 * max_ops + 1
  counts = [[0] + [1] * (size - 1)]
  for n in range(1, size):
    row = [0]
    for e in range(1, size - n):
      row.append(row[e - 1] + counts[n - 1][e + 1])
    counts.append(row)
  return tuple(tuple(r) for r in counts)


def _pick(rng: np.random.Generator, options: tuple[str, ...], cumulative: tuple[float, ...]):
  index = bisect.bisect_right(cumulative, rng.random() * cumulative[-1])
  return options[min(index, len(options) - 1)]


# ---------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------


def generate_float(rng: np.random.Generator, cfg: EnvConfig) -> str:
  """A prefactor `sign * mantissa * 10**exponent`, written like the original (`47.900000000000006`)."""
  sign = -1.0 if rng.random() < 0.5 else 1.0
  mantissa = float(rng.integers(1, 10 ** cfg.float_precision))
  half = (cfg.float_precision + 1) // 2
  exponent = int(rng.integers(-cfg.max_exponent_prefactor - half,
                              cfg.max_exponent_prefactor - half + 1))
  return repr(sign * (mantissa * 10 ** exponent))


def _sample_binary_tree(rng, n_ops: int, tables: _Tables) -> tuple[Node, list[Node]]:
  """Uniform-over-shapes binary tree with `n_ops` operators; returns (root, empty leaves).

  The original sizes its tree-count table by 2 * max_binary_ops_per_dim *
  max_input_dimension, so a draw that needs `n_ops + n_empty >= 2 * that + 1` indexes past
  it; the IndexError is swallowed and the attempt retried. At max_input_dimension=1 this
  rejects every tree with 4 binary operators; reproduced here as a rejection.
  """
  counts = tables.tree_counts
  if n_ops and n_ops + 1 >= len(counts[0]):
    raise Rejected("tree sampler out of range")
  root = Node("")
  empty = [root]
  next_empty, n_empty = 0, 1
  while n_ops > 0:
    denom = counts[n_ops][n_empty]
    u = rng.random() * denom
    acc, pos = 0.0, n_empty - 1
    for k in range(n_empty):
      acc += counts[n_ops - 1][n_empty - k + 1]
      if u < acc:
        pos = k
        break
    next_empty += pos
    node = empty[next_empty]
    node.value = _pick(rng, tables.binaries, tables.binary_cum)
    node.children = [Node(""), Node("")]
    empty.extend(node.children)
    next_empty += 1
    n_empty += 1 - pos
    n_ops -= 1
    if n_ops and n_ops + n_empty >= len(counts[0]):
      raise Rejected("tree sampler out of range")
  leaves = [n for n in empty if not n.children]
  return root, leaves


def _fill_leaves(rng, leaves: list[Node], input_dimension: int, cfg: EnvConfig, tables: _Tables):
  """Leaves in random order: first one of each variable, then random variables/constants."""
  order = rng.permutation(len(leaves))
  used = 0
  for i in order:
    leaf = leaves[i]
    if cfg.prob_rand > 0 and rng.random() < cfg.prob_rand:
      leaf.value = "rand"
    elif used < input_dimension:
      leaf.value = f"x_{used}"
      used += 1
    elif cfg.prob_const > 0 and rng.random() < cfg.prob_const:
      leaf.value = tables.constants[int(rng.integers(len(tables.constants)))]
    else:
      leaf.value = f"x_{int(rng.integers(input_dimension))}"


def _subtree_sizes(root: Node) -> dict[int, int]:
  sizes: dict[int, int] = {}

  def visit(node: Node) -> int:
    size = 1 + sum(visit(c) for c in node.children)
    sizes[id(node)] = size
    return size

  visit(root)
  return sizes


def _add_unaries(rng, root: Node, n_unaries: int, cfg: EnvConfig, tables: _Tables) -> Node:
  """Wrap random eligible subtrees (non-root, fewer than max_unary_depth nodes) in unaries.

  The original draws a unary above every eligible subtree and then keeps a random
  `n_unaries` of them; drawing the kept ones only gives the same distribution.
  """
  sizes = _subtree_sizes(root)
  slots = []  # (parent, child index)
  stack = [root]
  while stack:
    node = stack.pop()
    for i, child in enumerate(node.children):
      if sizes[id(child)] < cfg.max_unary_depth:
        slots.append((node, i))
      stack.append(child)
  if n_unaries < len(slots):
    keep = rng.permutation(len(slots))[:n_unaries]
    slots = [slots[i] for i in sorted(keep)]
  for parent, i in slots:
    op = _pick(rng, tables.unaries, tables.unary_cum)
    parent.children[i] = Node(op, [parent.children[i]])
  return root


def _add_prefactors(rng, root: Node, cfg: EnvConfig, tables: _Tables) -> Node:
  """`reduce_num_constants` prefactors: a*f+b around unaries, a*t on terms of sums, a root affine."""
  changed = [False]

  def const() -> Node:
    return Node(generate_float(rng, cfg))

  def scaled(node: Node) -> Node:
    changed[0] = True
    return Node("mul", [const(), node])

  def visit(node: Node) -> Node:
    value = node.value
    if value in ("add", "sub"):
      node.children = [
          visit(c) if c.value in ("add", "sub") else scaled(visit(c)) for c in node.children
      ]
    elif value in tables.unary_set and node.children[0].value not in ("add", "sub"):
      changed[0] = True
      inner = visit(node.children[0])
      node.children = [Node("add", [const(), Node("mul", [const(), inner])])]
    else:
      node.children = [visit(c) for c in node.children]
    return node

  root = visit(root)
  if not changed[0]:
    root = Node("mul", [const(), root])
  return Node("add", [const(), root])


def _add_linear_transformations(rng, root: Node, targets, cfg: EnvConfig) -> Node:
  """`reduce_num_constants=False`: replace each target node t by a + b * t."""

  def visit(node: Node) -> Node:
    node.children = [visit(c) for c in node.children]
    if node.value in targets:
      a, b = Node(generate_float(rng, cfg)), Node(generate_float(rng, cfg))
      return Node("add", [a, Node("mul", [b, node])])
    return node

  return visit(root)


def _relabel_variables(expr: Expression) -> int:
  """Rename the used variables to x_0..x_{k-1} in index order; returns k."""
  active = expr.variables()
  mapping = {old: f"x_{j}" for j, old in enumerate(active)}
  stack = list(expr.nodes)
  while stack:
    node = stack.pop()
    if node.value in mapping:
      node.value = mapping[node.value]
    stack.extend(node.children)
  return len(active)


def sample_expression(rng, cfg: EnvConfig, input_dimension: int, n_unary: Optional[int]):
  """One tree attempt: (expression, drawn input dimension, unary counts, binary counts).

  Raises Rejected for the original's tree-level rejections.
  """
  tables = _tables(cfg)
  output_dimension = int(rng.integers(cfg.min_output_dimension, cfg.max_output_dimension + 1))
  trees = []
  for _ in range(output_dimension):
    low = cfg.min_binary_ops_per_dim * input_dimension
    high = cfg.max_binary_ops_offset + cfg.max_binary_ops_per_dim * input_dimension
    n_binary = int(rng.integers(low, high))
    n_unaries = (int(rng.integers(cfg.min_unary_ops, cfg.max_unary_ops + 1))
                 if n_unary is None else n_unary)
    if cfg.enforce_dim and n_binary + 1 < input_dimension and output_dimension == 1:
      # Fewer leaves than variables: the original builds this tree and rejects it later.
      raise Rejected("bad input dimension")
    root, leaves = _sample_binary_tree(rng, n_binary, tables)
    _fill_leaves(rng, leaves, input_dimension, cfg, tables)
    root = _add_unaries(rng, root, n_unaries, cfg, tables)
    if cfg.reduce_num_constants:
      root = _add_prefactors(rng, root, cfg, tables)
    else:
      root = _add_linear_transformations(rng, root, {f"x_{i}" for i in range(input_dimension)} | {"rand"}, cfg)
      root = _add_linear_transformations(rng, root, tables.unary_set, cfg)
    trees.append(root)
  expr = Expression(trees)
  if cfg.required_operators:
    infix = expr.infix()
    if any(op not in infix for op in cfg.required_operators.split(",") if op):
      raise Rejected("missing required operator")
  return expr, output_dimension, tables


def _check_tree(expr: Expression, drawn_dimension: int, cfg: EnvConfig) -> int:
  """Relabel variables and apply the original's tree rejections; returns the input dimension."""
  input_dimension = _relabel_variables(expr)
  if input_dimension == 0 or (cfg.enforce_dim and drawn_dimension > input_dimension):
    raise Rejected("bad input dimension")
  if cfg.operators_to_not_repeat:
    prefix = expr.prefix()
    for op in cfg.operators_to_not_repeat.split(","):
      if op and prefix.count(op) > 1:
        raise Rejected("ops repeated")
  return input_dimension


def to_skeleton(prefix: list[str], unaries: frozenset) -> list[str]:
  """The original's `function_to_skeleton`: float constants become `CONSTANT`.

  A unary directly above a float constant is dropped with it. Integers stay. The original
  edits the list while enumerating it, which skips the element after each dropped unary;
  this walk does the same so skeletons match token for token.
  """
  out = list(prefix)
  i = 0
  while i < len(out):
    token = out[i]
    if not token.startswith("CONSTANT") and is_number(token) and not is_integer_text(token):
      out[i] = "CONSTANT"
      while i > 0 and out[i - 1] in unaries:
        del out[i - 1]
    i += 1
  return out


def skeleton(expr: Expression) -> str:
  """`expr` as skeleton prefix text (`to_skeleton` over every unary): the key under which
  equations that differ only in their constants share an index entry or a refinement."""
  return ",".join(to_skeleton(expr.prefix_list(), _UNARY_OPERATORS))


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


def _attempt(rng, cfg: EnvConfig, train: bool, input_dimension: int, n_unary: Optional[int]):
  """One of the original's `_gen_expr` tries; returns a Sample or raises Rejected."""
  expr, output_dimension, tables = sample_expression(rng, cfg, input_dimension, n_unary)
  d_in = _check_tree(expr, input_dimension, cfg)
  prefix = expr.prefix_list()
  if len(prefix) * cfg.max_len > cfg.max_eval_work:
    raise Rejected("work budget exceeded")
  distribution = "gaussian" if rng.random() < 0.5 else "uniform"
  n_centroids = int(rng.integers(1, cfg.max_centroids))
  sigmas = () if train else cfg.sigmas
  n_predict = 0 if train else cfg.n_prediction_points
  sets = datapoints_lib.generate_datapoints(
      rng, expr, cfg, d_in, distribution, n_centroids, cfg.max_len, n_predict, sigmas)
  x, y = sets.pop("fit")
  gamma = float(rng.uniform(0.0, cfg.train_noise_gamma)) if train else cfg.eval_noise_gamma
  if gamma > 0:
    y = y + datapoints_lib.output_noise(rng, gamma, y, [y] + [v[1] for v in sets.values()])
  tree_encoded = encode_prefix(prefix, cfg)
  skeleton_encoded = encode_prefix(to_skeleton(prefix, tables.unary_set), cfg)
  infos = {
      "n_input_points": int(x.shape[0]),
      "n_unary_ops": sum(1 for t in prefix if t in tables.unary_set),
      "n_binary_ops": sum(1 for t in prefix if t in tables.binary_set),
      "d_in": d_in,
      "d_out": output_dimension,
      "input_distribution_type": 0 if distribution == "gaussian" else 1,
      "n_centroids": n_centroids,
  }
  return Sample(tree=expr, tree_encoded=tree_encoded, skeleton_tree_encoded=skeleton_encoded,
                x=x, y=y, infos=infos, predict=sets)


# The original retries forever; an unsatisfiable configuration should fail loudly instead.
MAX_ATTEMPTS_PER_SAMPLE = 20_000


def generate_sample(rng: np.random.Generator, env_cfg: EnvConfig, *, train: bool = True,
                    stats: Optional[collections.Counter] = None) -> Sample:
  """One training sample: retries attempts until one is accepted (the original's `gen_expr`).

  `stats`, if given, counts attempts (`attempts`, `accepted`) and rejections by reason.
  With `env_cfg.is_proppred`, `target_property` holds the `property_type` label.
  """
  cfg = env_cfg
  input_dimension = n_unary = None
  if not train or cfg.use_controller:
    n_unary = int(rng.integers(cfg.min_unary_ops, cfg.max_unary_ops + 1))
    input_dimension = int(rng.integers(cfg.min_input_dimension, cfg.max_input_dimension + 1))
  reasons: collections.Counter = collections.Counter()
  for _ in range(MAX_ATTEMPTS_PER_SAMPLE):
    dim = input_dimension
    if dim is None:
      dim = int(rng.integers(cfg.min_input_dimension, cfg.max_input_dimension + 1))
    if stats is not None:
      stats["attempts"] += 1
    try:
      sample = _attempt(rng, cfg, train, dim, n_unary)
    except Rejected as reason:
      reasons[str(reason)] += 1
      if stats is not None:
        stats[str(reason)] += 1
      continue
    if cfg.is_proppred:
      sample.target_property = properties.compute_property(
          cfg.property_type, sample.x, sample.y, rng)
    if stats is not None:
      stats["accepted"] += 1
    return sample
  raise RuntimeError(
      f"no sample accepted in {MAX_ATTEMPTS_PER_SAMPLE} attempts (input_dimension={input_dimension},"
      f" unary ops={n_unary}); rejections: {dict(reasons)}. The options cannot be satisfied"
      " together, e.g. required_operators needs unaries but min_unary_ops is 0.")


__all__ = ["Sample", "generate_sample", "generate_float", "sample_expression", "to_skeleton",
           "skeleton",
           "Rejected", "ARITY"]

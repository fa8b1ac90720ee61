"""snip-jax: SNIP (Symbolic-Numeric Integrated Pre-training) in JAX/Flax."""

__version__ = "0.1.0"  # the one place; pyproject.toml reads it


def load_pretrained(path, **kwargs):
  """A released `.pth` or a converted directory, ready to embed points and equations."""
  from snip_jax.pretrained import load_pretrained as _load  # pylint: disable=g-import-not-at-top

  return _load(path, **kwargs)


def __getattr__(name):
  """`snip_jax.SNIPRegressor`, imported on first use (it pulls in JAX and scikit-learn)."""
  if name == "SNIPRegressor":
    from snip_jax.sr.regressor import SNIPRegressor  # pylint: disable=g-import-not-at-top

    return SNIPRegressor
  raise AttributeError(f"module 'snip_jax' has no attribute {name!r}")

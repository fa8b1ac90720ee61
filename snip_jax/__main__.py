"""`python -m snip_jax`: the `snip-jax` command (snip_jax/cli.py)."""

from snip_jax import cli

if __name__ == "__main__":
  cli.main()

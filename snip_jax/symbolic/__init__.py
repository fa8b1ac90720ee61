"""Symbolic environment: random functions, datapoints, tokenizers and property labels.

Pure functions over numpy; every random draw comes from the `rng` argument.
"""

from snip_jax.symbolic import properties
from snip_jax.symbolic.config import EnvConfig, default_env_config
from snip_jax.symbolic.datapoints import Rejected
from snip_jax.symbolic.generator import Sample, generate_sample, to_skeleton
from snip_jax.symbolic.tokenizers import (SPECIAL_WORDS, Vocab, build_vocab, decode_floats,
                                          decode_prefix, encode_floats, encode_prefix,
                                          float_token_ids)
from snip_jax.symbolic.infix import from_sympy, parse_infix
from snip_jax.symbolic.trees import Expression, Node, parse_prefix

__all__ = [
    "EnvConfig", "default_env_config", "Sample", "generate_sample", "to_skeleton", "Rejected",
    "SPECIAL_WORDS", "Vocab", "build_vocab", "encode_floats", "decode_floats",
    "encode_prefix", "decode_prefix", "float_token_ids", "Expression", "Node",
    "parse_prefix", "parse_infix", "from_sympy", "properties",
]

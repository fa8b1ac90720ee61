"""SNIP model in Flax linen: modules, config and conversion from original checkpoints."""

from snip_jax.model.config import ModelConfig
from snip_jax.model.modules import (SNIP, LinearPointEmbedder, MLPClassifier, MLPRegressor,
                                    TransformerDecoder, TransformerEncoder, clip_logits,
                                    clip_loss, decoder_loss, decoder_target_mask, dummy_inputs,
                                    init_params)
from snip_jax.model.state_dict import (MODULE_NAMES, expected_shapes, params_from_checkpoint,
                                       params_to_state_dicts, state_dicts_to_params)

__all__ = [
    "ModelConfig", "SNIP", "LinearPointEmbedder", "TransformerEncoder", "TransformerDecoder",
    "MLPRegressor", "MLPClassifier", "clip_logits", "clip_loss", "decoder_loss",
    "decoder_target_mask", "dummy_inputs", "init_params", "MODULE_NAMES", "expected_shapes",
    "params_from_checkpoint", "params_to_state_dicts", "state_dicts_to_params",
]

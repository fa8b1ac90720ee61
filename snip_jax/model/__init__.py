"""SNIP model in Flax linen: modules, config and conversion from original checkpoints."""

from snip_jax.model.config import ModelConfig
from snip_jax.model.modules import (SNIP, SNIPSR, LinearPointEmbedder, Mapper, MLPClassifier,
                                    MLPRegressor, SRDecoder, TransformerDecoder,
                                    TransformerEncoder, clip_logits, clip_loss, decoder_loss,
                                    decoder_token_accuracy,
                                    decoder_target_mask, dummy_inputs, init_params)
from snip_jax.model.state_dict import (MODULE_NAMES, SR_MODULE_NAMES, check_kind, describe_kind,
                                       expected_shapes,
                                       model_kind, params_from_checkpoint, params_to_state_dicts,
                                       state_dicts_to_params)

__all__ = [
    "ModelConfig", "SNIP", "SNIPSR", "LinearPointEmbedder", "TransformerEncoder",
    "TransformerDecoder", "SRDecoder", "Mapper", "MLPRegressor", "MLPClassifier", "clip_logits",
    "clip_loss", "decoder_loss", "decoder_token_accuracy", "decoder_target_mask",
    "dummy_inputs", "init_params",
    "MODULE_NAMES", "SR_MODULE_NAMES", "check_kind", "describe_kind", "expected_shapes", "model_kind",
    "params_from_checkpoint", "params_to_state_dicts", "state_dicts_to_params",
]

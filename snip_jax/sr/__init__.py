"""Symbolic regression with SNIP: latent-space search around the encoder's latent."""

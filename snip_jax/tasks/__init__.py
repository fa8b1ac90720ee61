"""Downstream tasks built on the pretrained SNIP encoders."""

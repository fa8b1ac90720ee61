"""Conversion of original (PyTorch) SNIP checkpoints into this project's formats, without torch."""

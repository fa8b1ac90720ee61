"""The bundled presets: one ml_collections config file per job, `snip-jax --config=NAME:ARG`.

In the checkout this is configs/; the wheel ships it as snip_jax.configs.
"""

"""Convert original SNIP checkpoints.

  python -m snip_jax.convert --pth snip-10dmax.pth --out ckpt/snip-10dmax
  python -m snip_jax.convert --from_dir ckpt/snip-10dmax --to_npz snip-10dmax_state_dicts.npz
  python -m snip_jax.convert --from_dir ckpt/snip-10dmax --to_pth snip-10dmax_from_jax.pth
"""

from absl import app, flags

from snip_jax.convert import converter

_PTH = flags.DEFINE_string("pth", None, "Original .pth checkpoint to convert.")
_OUT = flags.DEFINE_string("out", None, "Directory for the converted checkpoint.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing converted checkpoint.")
_FROM_DIR = flags.DEFINE_string("from_dir", None, "Converted directory to export back.")
_TO_NPZ = flags.DEFINE_string("to_npz", None, "Write the original state_dict keys to this .npz.")
_TO_PTH = flags.DEFINE_string("to_pth", None, "Write a .pth the original code can reload.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _PTH.value and _OUT.value:
    print(f"converted: {converter.convert_pth(_PTH.value, _OUT.value, _OVERWRITE.value)}")
  elif _FROM_DIR.value and (_TO_NPZ.value or _TO_PTH.value):
    model_cfg, env_cfg, params = converter.load_converted(_FROM_DIR.value)
    if _TO_NPZ.value:
      print(f"state_dicts: {converter.export_state_dicts(params, model_cfg, _TO_NPZ.value)}")
    if _TO_PTH.value:
      print(f"checkpoint: {converter.export_pth(params, model_cfg, env_cfg, _TO_PTH.value)}")
  else:
    raise app.UsageError("use --pth FILE --out DIR, or --from_dir DIR with --to_npz and/or"
                         " --to_pth FILE")


if __name__ == "__main__":
  app.run(main)

"""Convert original SNIP checkpoints.

  python -m snip_jax.convert --pth snip-10dmax.pth --out ckpt/snip-10dmax
  python -m snip_jax.convert --from_dir ckpt/snip-10dmax --to_npz snip-10dmax_state_dicts.npz
"""

from absl import app, flags

from snip_jax.convert import converter

_PTH = flags.DEFINE_string("pth", None, "Original .pth checkpoint to convert.")
_OUT = flags.DEFINE_string("out", None, "Directory for the converted checkpoint.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing converted checkpoint.")
_FROM_DIR = flags.DEFINE_string("from_dir", None, "Converted directory to export back.")
_TO_NPZ = flags.DEFINE_string("to_npz", None, "Write the original state_dict keys to this .npz.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _PTH.value and _OUT.value:
    print(f"converted: {converter.convert_pth(_PTH.value, _OUT.value, _OVERWRITE.value)}")
  elif _FROM_DIR.value and _TO_NPZ.value:
    model_cfg, _, params = converter.load_converted(_FROM_DIR.value)
    print(f"state_dicts: {converter.export_state_dicts(params, model_cfg, _TO_NPZ.value)}")
  else:
    raise app.UsageError("use --pth FILE --out DIR, or --from_dir DIR --to_npz FILE")


if __name__ == "__main__":
  app.run(main)

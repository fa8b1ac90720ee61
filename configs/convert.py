"""Convert an original SNIP `.pth` into a converted directory (the workdir).

  python launch.py --config=configs/convert.py --config.pth=snip-10dmax.pth --workdir=ckpt/snip-10dmax
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The convert job (no ARG); set --config.pth to the original .pth."""
  del arg
  config = ml_collections.ConfigDict()
  config.job = "convert"
  config.pth = ""
  config.overwrite = False
  config.lock()
  return config

"""Exports a trained U-Net as a bioimage.io model package (ONNX weights) for Fiji, ilastik, napari, ...:

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --split=val,test   # the report first
  python export.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --output=vnc_unet.zip

The package's tiles are `eval.window` pixels; its test input is the centre window of the first slice
of --input (default data.root/testing.tif). bioimageio.core's model test runs on the package before it
is written (--validate=False skips it). An existing --output is kept unless --overwrite is given. The
licence is the training data's, read from a LICENSE or README file beside it, or --license. What goes
in the package: unet_jax/export/bioimage.py.
"""

import json

from absl import flags
from ml_collections import config_flags

from unet_jax.cli import common as cli
from unet_jax.config import check as config_check

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Config file (file.py:variant).")
flags.DEFINE_string("workdir", None, "Training directory holding the checkpoint (eval.checkpoint).")
flags.DEFINE_string("output", None, "The package to write, a .zip file.")
flags.DEFINE_string("input", None, "TIFF whose first slice gives the test input (default data.root/testing.tif).")
flags.DEFINE_string("report", None, "evaluate.py's report.json (default <workdir>/report/report.json).")
flags.DEFINE_string("author", "unet-jax", "Author named in the package.")
flags.DEFINE_string("license", None, "SPDX licence of the weights (default: the training data's, read from a "
                    "LICENSE or README beside it; refused when it states none).")
flags.DEFINE_bool("validate", True, "Run bioimageio.core's model test on the package before writing it.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output (otherwise refused, the file left as it is).")
flags.mark_flags_as_required(["workdir", "output"])


def export(config) -> None:
  cli.prepare(config, config_check.INFERENCE_SECTIONS, forward_only=True)
  from unet_jax.export import bioimage  # pylint: disable=g-import-not-at-top  (after the device flags)
  summary = bioimage.build_package(config, FLAGS.workdir, FLAGS.output, FLAGS.input, FLAGS.report,
                                   FLAGS.author, FLAGS.license, FLAGS.overwrite, FLAGS.validate)
  print(json.dumps(summary, indent=2))


def main(argv: list[str]) -> None:
  del argv
  cli.run(lambda: export(FLAGS.config), "no package was written")


r"""Shows how a trained U-Net arrived at each mitochondrion, and which filters did it:

  python explain.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --split=test --slice=2 \
      --object=cases --output_dir=docs/example_explain

--object: a predicted mitochondrion's id N (1..n within the slice), a pixel y,x (the component under
it, or the missed true one), a box y0,x0,y1,x1, 'all' (all predicted foreground), 'every' (each
predicted one) or 'cases' (one found, one false positive, one missed); several joined by ';'.
Any TIFF stack: --input=stack.tif [--mask=truth.tif] --slice=Z. A multi-class model explains the objects
of one class, --class_index=C (components of its label map; the score is that class's probability summed
over the object). Methods and settings: unet_jax/explain/explanation.py and config.explain; output: panels,
filter CSVs, explain.json, explain.md.
"""

import os

from absl import flags
from ml_collections import config_flags

from unet_jax.cli import common as cli
from unet_jax.config import check as config_check

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Config file (file.py:variant).")
flags.DEFINE_string("workdir", None, "Training directory holding the checkpoint.")
flags.DEFINE_string("split", "test", "Split holding the slice: test, val or train.")
flags.DEFINE_integer("slice", 0, "Slice (page) index within the split or the --input stack.")
flags.DEFINE_string("object", None, "What to explain: N | y,x | y0,x0,y1,x1 | all | every | cases (';' joins).")
flags.DEFINE_string("input", None, "Explain a slice of this TIFF stack instead of a split.")
flags.DEFINE_string("mask", None, "With --input: its ground-truth mask TIFF.")
flags.DEFINE_string("output_dir", None, "Output folder (default <workdir>/explain_<split or input>_z<slice>).")
flags.DEFINE_bool("filters", True, "Rank every filter (per object and by validation Dice) and picture the top ones.")
flags.DEFINE_bool("sanity", True, "Run the cascading model-randomisation check per object.")
flags.DEFINE_integer("class_index", None, "With a multi-class model (model.num_classes > 1): the class whose objects "
                     "are explained, 0..K-1.")
flags.mark_flags_as_required(["workdir", "object"])


def explain(config) -> None:
  cli.prepare(config, (*config_check.INFERENCE_SECTIONS, "explain"), forward_only=False)  # gradients: training kernels
  from unet_jax.explain import explanation  # pylint: disable=g-import-not-at-top  (after the device flags)
  name = os.path.splitext(os.path.basename(FLAGS.input))[0] if FLAGS.input else FLAGS.split
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, f"explain_{name}_z{FLAGS.slice}")
  doc = explanation.explain(config, FLAGS.workdir, output_dir, FLAGS.object, FLAGS.split, FLAGS.slice,
                            FLAGS.input, FLAGS.mask, FLAGS.filters, FLAGS.sanity, cli.command_line(),
                            FLAGS.class_index)
  for o in doc["objects"]:
    print(f"{o['title']}: score {o['score']:.3f}, IG completeness error {o['ig_blurred']['completeness_error']:.2%}, "
          f"deletion check {'passed' if o['deletion']['passed'] else 'FAILED'}")
  print(f"report: {os.path.join(output_dir, 'explain.md')}")


def main(argv: list[str]) -> None:
  del argv
  cli.run(lambda: explain(FLAGS.config), "earlier results are kept as they were")


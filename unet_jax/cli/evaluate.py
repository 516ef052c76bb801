r"""Scores trained U-Nets on labelled stacks and writes a report (report.json, report.md, PNGs, CSVs):

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc_flips --split=val,test \
      --report_dir=docs/example_report

Several checkpoints and splits in one run: --workdir=runs/a,runs/b --split=val,test. Choose the
threshold on the val split (never test): --config.eval.select_threshold=True. What is measured:
unet_jax/reports/evaluation.py; the definitions are listed at the end of report.md.

Segment any TIFF stack (2D image or Z pages), streamed page by page, with or without ground truth:

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --input=stack.tif \
      --output_dir=out/ [--mask=truth.tif] [--config.eval.tta=flips]

writes out/probabilities.tif (float16; --probabilities=float32|uint8), out/segmentation.tif (u8 0/255,
exactly the stored probabilities >= the threshold a report uses: unet_jax/inference/predictor.py) and
out/summary.json, each atomically.

Segment an OME-Zarr volume larger than memory, chunk by chunk (eval.chunk voxels; resumable: rerun the
same command after an interruption), into out/segmentation.ome.zarr (probabilities, labels/mask,
labels/instances, with the input's axes and voxel size; unet_jax/inference/chunked.py):

  python evaluate.py --config=configs/unet2d.py:vnc --workdir=runs/vnc --input=vol.ome.zarr --output_dir=out/

The blocks run on a Dask LocalCluster of one single-threaded worker process per core (its dashboard's
address is printed); --scheduler=tcp://host:8786 uses a running Dask cluster (SLURM, Kubernetes: see
docs/usage/segmenting.md), --scheduler=synchronous runs them in this process. Input and output may be
fsspec URLs: --input=s3://bucket/vol.ome.zarr --output_dir=s3://bucket/out (credentials and endpoint
from the AWS_* environment variables or ~/.aws).

A multi-class model (model.num_classes > 1) writes its class map instead of the mask: segmentation.tif (u8 class
ids, beside (Z, K, H, W) probabilities.tif) or labels/classes in the OME-Zarr (beside K-channel probabilities);
--mask is then a label map, scored per class.

Inputs at another voxel size than the model was trained at (its OME-Zarr scale, TIFF resolution or ImageJ
spacing, or --voxel_size_nm=9.2,9.2) are resampled to the model's and the outputs back onto the input's
grid (unet_jax/inference/magnification.py); one line says what was done, summary.json keeps it.
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from unet_jax.cli import common as cli
from unet_jax.config import check as config_check
from unet_jax.errors import InputError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Config file (file.py:variant).")
flags.DEFINE_list("workdir", None, "Training directories holding the checkpoints (comma-separated).")
flags.DEFINE_list("split", ["test"], "Splits to score (comma-separated): test, val, train.")
flags.DEFINE_string("report_dir", None, "Where to write the report (default <first workdir>/report).")
flags.DEFINE_bool("save_predictions", True, "Write each thresholded prediction as prediction.tif (u8 0/255; "
                  "a multi-class model's label map as labels.tif, u8 class ids).")
flags.DEFINE_string("input", None, "Segment this TIFF stack (unet_jax/inference/segment.py) or OME-Zarr volume "
                    "(*.zarr, unet_jax/inference/chunked.py) instead of scoring splits.")
flags.DEFINE_string("mask", None, "With --input: its ground-truth mask (TIFF or OME-Zarr), to score the segmentation.")
flags.DEFINE_string("output_dir", None, "With --input: output folder (default <workdir>/segment_<input name>).")
flags.DEFINE_enum("probabilities", "float16", ["float32", "float16", "uint8"],
                  "With --input: probability dtype (the mask = these stored values >= eval.threshold).")
flags.DEFINE_string("scheduler", "local", "With an OME-Zarr --input: where its blocks run: 'local' (a Dask "
                    "LocalCluster on this machine), 'synchronous' (this process) or a Dask scheduler's address "
                    "(tcp://host:8786).")
flags.DEFINE_list("voxel_size_nm", None, "With --input: its voxel size in nm, y,x or z,y,x (overrides the OME-Zarr "
                  "scale or TIFF resolution); at another than the model's the input is resampled to it and the "
                  "outputs back onto the input's grid.")
flags.DEFINE_integer("workers", 0, "With --scheduler=local: worker processes (0: one per core), one thread each.")
flags.mark_flags_as_required(["workdir"])


def segment(config) -> None:
  """evaluate.py --input: one TIFF stack streamed page by page, or an OME-Zarr volume chunk by chunk."""
  from unet_jax.inference import chunked, cluster, segment as streamed  # pylint: disable=g-import-not-at-top  (after the device flags)
  from unet_jax.inference import magnification
  from unet_jax.io import stacks, stores
  voxel = magnification.check_voxel_size(FLAGS.voxel_size_nm, "--voxel_size_nm") if FLAGS.voxel_size_nm else None
  name = os.path.splitext(os.path.basename(FLAGS.input.rstrip("/")))[0]
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir[0], f"segment_{name}")
  if stores.is_remote(FLAGS.input) or stacks.is_zarr(FLAGS.input):
    cluster.check_scheduler(FLAGS.scheduler)
    summary = chunked.segment_file(config, FLAGS.workdir[0], FLAGS.input, output_dir, FLAGS.mask, FLAGS.probabilities,
                                   scheduler=FLAGS.scheduler, workers=FLAGS.workers, voxel_size_nm=voxel)
  else:
    summary = streamed.segment_file(config, FLAGS.workdir[0], FLAGS.input, output_dir, FLAGS.mask, FLAGS.probabilities,
                                    voxel_size_nm=voxel)
  print(json.dumps(summary, indent=2))


def score(config) -> None:
  """evaluate.py: the report of every workdir on every split."""
  from unet_jax.reports import evaluation  # pylint: disable=g-import-not-at-top  (after the device flags)
  report_dir = FLAGS.report_dir or os.path.join(FLAGS.workdir[0], "report")
  if config.model.num_classes > 1:  # label maps: per-class Dice/IoU (unet_jax/reports/class_report.py)
    from unet_jax.reports import class_report  # pylint: disable=g-import-not-at-top
    report = class_report.evaluate_classes(config, FLAGS.workdir, report_dir, FLAGS.split, FLAGS.save_predictions,
                                           cli.command_line())
    for run in report["runs"]:
      mean = run["intervals"]["mean_dice"]
      bounds = f" [{mean['low']:.4f}, {mean['high']:.4f}]" if mean["low"] is not None else ""
      print(f"{run['run']} {run['split']} (step {run['step']}): mean dice {run['mean_dice']:.4f}{bounds} over "
            f"{run['shape'][0]} slices, per class " + ", ".join(
                f"{name} {d:.4f}" for name, d in zip(report["class_names"], run["dice"])))
    print(f"report: {os.path.join(report_dir, 'class_report.md')}")
    return
  report = evaluation.evaluate(config, FLAGS.workdir, report_dir, FLAGS.split, FLAGS.save_predictions,
                               cli.command_line())
  level = f"{100 * config.eval.confidence_level:g} %"
  for run in report["runs"]:
    interval = lambda k: (f" [{run['pixel_intervals'][k]['low']:.4f}, {run['pixel_intervals'][k]['high']:.4f}]"
                          if k in run.get("pixel_intervals", {}) else "")
    print(f"{run['run']} {run['split']} (step {run['step']}, threshold {run['threshold']['value']:g}, {level} "
          f"intervals over {run['shape'][0]} slices): "
          + ", ".join(f"{k} {run['pixel'][k]:.4f}{interval(k)}" for k in ("dice", "iou", "precision", "recall")))
  print(f"report: {os.path.join(report_dir, 'report.md')}")


def evaluate(config) -> None:
  if FLAGS.voxel_size_nm and not FLAGS.input:
    raise InputError("--voxel_size_nm goes with --input (the stack it describes); the splits are at data.voxel_size_nm")
  if FLAGS.mask and not FLAGS.input:
    raise InputError("--mask goes with --input (the stack it labels); to score the data set's splits use --split")
  cli.prepare(config, config_check.INFERENCE_SECTIONS, forward_only=True)
  (segment if FLAGS.input else score)(config)


def main(argv: list[str]) -> None:
  del argv
  cli.run(lambda: evaluate(FLAGS.config), "earlier results are kept as they were")


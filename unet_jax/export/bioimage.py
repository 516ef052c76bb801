"""A trained U-Net as a bioimage.io model package (spec 0.5), for Fiji/deepImageJ, ilastik, napari, ...

The package holds the network as ONNX weights (`onnx_export`, sigmoid included), its input and
output axes with the pixel size in nanometres, the preprocessing that maps the raw EM values to
[0, 1] as training did (`stacks` normalisation, e.g. uint8 / 255), a test input
(a window of a raw EM slice) with the JAX model's output on it, a cover from the evaluation
report, and a README with the training data and scores. The ONNX weights are checked
against JAX before packaging, and `validate_package` runs bioimageio.core's model test (offline).

A K-class model (model.num_classes > 1) is exported the same way with one output channel per class (named by
`data.class_names`, else class_0 ...), the model's softmax or per-class sigmoids in the ONNX graph, its scores
per class from evaluate.py's class_report.json and from its own output's argmax label map, and a cover drawn
from the test input and that label map.

The package states what it is, not what unet-jax's pipeline around it is:
- its scores and threshold are those of its own output, one pass of the network per window (no
  test-time augmentation, no calibration), measured at export on the report's splits with the
  threshold chosen for that output (`package_scores`); the report's numbers (with TTA, calibration)
  are quoted apart, as the pipeline's;
- its licence is the training data's, read from a LICENSE or README file beside the data
  (`data_license`), or given; never guessed.

  summary = build_package(config, "runs/vnc", "vnc_unet.zip")
"""

import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
from typing import Any

import flax.serialization
import jax
import numpy as np
import tifffile
from matplotlib import colormaps
from PIL import Image

from unet_jax.errors import InputError
from unet_jax.inference import engines, onnx_export, predictor as predictor_lib
from unet_jax.inference.predictor import choose_threshold, Predictor
from unet_jax.io import data, outputs, stacks
from unet_jax.network.model import build_model
from unet_jax.scores import classes, metrics

TOLERANCE = 1e-4  # max |ONNX Runtime - JAX| probability on the test input, checked before packaging
INPUT_ID, OUTPUT_ID, CLASS_OUTPUT_ID = "raw", "mitochondria", "classes"  # CLASS_: a K-class model's output
INSTALL = "pip install bioimageio.core==0.11.0 bioimageio.spec==0.5.12.0"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "LICENCE.md", "COPYING",
                 "README.md", "README.txt", "README")  # beside the training data, read in this order
GENERATED_DATA_LICENSE = "CC-BY-4.0"  # weights trained on generated data only (no third party's terms)
CITATIONS = (
    ("Ronneberger, Fischer, Brox (2015). U-Net: Convolutional networks for biomedical image segmentation. "
     "MICCAI.", "10.1007/978-3-319-24574-4_28"),
)


def read_report(report_path: str, step: int) -> dict[str, Any]:
  """The evaluate.py report at `report_path` (report.json), checked to score checkpoint `step`."""
  if not os.path.isfile(report_path):
    raise InputError(f"no evaluation report at {report_path}; run evaluate.py with the same --config and --workdir "
                     "first (or pass --report=path/to/report.json)")
  with open(report_path) as f:
    report = json.load(f)
  runs = [r for r in report.get("runs", []) if r.get("step") == step]
  if not runs:
    steps = sorted({r.get("step") for r in report.get("runs", [])})
    raise InputError(f"{report_path} scores checkpoint step(s) {steps}, not the exported step {step}; rerun evaluate.py")
  return {**report, "runs": runs}


def test_window(image_path: str, window: tuple[int, int]) -> tuple[np.ndarray, float, float]:
  """(the centre `window` of the first slice of `image_path` as stored, offset, scale).

  (raw - offset) / scale is the [0, 1] image the model was trained on (`stacks` normalisation of the
  whole stack, e.g. uint8 / 255), which the package states as its preprocessing.
  """
  with stacks.StackReader(image_path) as reader:
    page = reader.raw(0)
    offset, scale = stacks.scaling(reader.dtype, *stacks.value_range(reader.read_raw(), image_path),
                                   reader.stored_bits)
  if any(s < w for s, w in zip(page.shape, window)):
    raise InputError(f"{image_path}: slice {page.shape} is smaller than the export window {window}; "
                     "use a larger image or a smaller --config.eval.window")
  top, left = ((s - w) // 2 for s, w in zip(page.shape, window))
  return page[top:top + window[0], left:left + window[1]], offset, scale


def _require_bioimageio() -> tuple[Any, Any]:
  """(bioimageio.spec, bioimageio.spec.model.v0_5), or a one-line InputError saying how to install them."""
  try:
    import bioimageio.spec as spec  # pylint: disable=g-import-not-at-top
    from bioimageio.spec.model import v0_5  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError(f"exporting a bioimage.io package needs bioimageio.spec and bioimageio.core: {INSTALL}") from e
  return spec, v0_5


def check_output(output: str, overwrite: bool) -> None:
  """Refuses, before any work, an `output` that is not a .zip file name, is a folder, exists (unless
  `overwrite`) or lies where no file can be made. The probe's own OSError (no permission, a read-only
  disk) is raised as such, for the entry point to say in one line."""
  if not output.endswith(".zip"):
    raise InputError(f"--output must be a .zip file, got {output!r}")
  if os.path.isdir(output):
    raise InputError(f"--output {output!r} is a folder, not a file; give the package's file name, e.g. "
                     f"{os.path.join(output, 'model.zip')}")
  if os.path.lexists(output) and not overwrite:
    raise InputError(f"--output {output!r} already exists; pass --overwrite to replace it, or choose another name")
  existing = os.path.dirname(os.path.abspath(output))
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise InputError(f"--output {output!r} cannot be made: {existing!r} is a file, not a folder; choose another path")
  with tempfile.TemporaryFile(dir=existing):  # proves the folder writable, leaving nothing behind
    pass


def _spdx(license_id: str) -> str | None:
  """`license_id` if it is an SPDX licence identifier bioimage.io accepts, else None."""
  _, v0_5 = _require_bioimageio()
  try:
    return str(v0_5.LicenseId(license_id))
  except ValueError:
    return None


_CC_SHORT = re.compile(r"\bCC[ -]?(BY(?:[ -](?:NC|SA|ND))*)[ -]v?(\d\.\d)\b", re.IGNORECASE)  # CC BY-NC-SA 3.0
_CC_LONG = re.compile(r"Creative Commons (Attribution(?:[ -](?:Non-?Commercial|Share-?Alike|No-?Deriv(?:ative)?s))*)"
                      r"(?: International)?(?: Licen[cs]e)?,? (?:version |v)?(\d\.\d)", re.IGNORECASE)
_CC_WORD = re.compile(r"Attribution|Non-?Commercial|Share-?Alike|No-?Deriv(?:ative)?s", re.IGNORECASE)
_CC_CODES = {"attribution": "BY", "noncommercial": "NC", "sharealike": "SA", "noderivs": "ND", "noderivatives": "ND"}
_NAMED = ((re.compile(r"\bCC0\b"), "CC0-1.0"),
          (re.compile(r"\bMIT Licen[cs]e\b|\bLicen[cs]ed? (?:under )?(?:the )?MIT\b|\bLicen[cs]e: *MIT\b",
                      re.IGNORECASE), "MIT"),
          (re.compile(r"Apache Licen[cs]e,? (?:Version |v)?2\.0", re.IGNORECASE), "Apache-2.0"),
          (re.compile(r"\bBSD[ -]3[ -]Clause", re.IGNORECASE), "BSD-3-Clause"),
          (re.compile(r"\bBSD[ -]2[ -]Clause", re.IGNORECASE), "BSD-2-Clause"))
_SPDX_LIKE = re.compile(r"\b[A-Za-z][A-Za-z0-9.+]*-[A-Za-z0-9.+-]*\d[A-Za-z0-9.+-]*")  # GPL-3.0-only, CC-BY-4.0


def licenses_in(text: str) -> list[str]:
  """The SPDX ids a licence file or README states, in order of appearance: Creative Commons in short
  ('CC BY-NC-SA 3.0') or long form ('Creative Commons Attribution 4.0'), CC0, MIT, Apache 2.0, BSD, or an
  SPDX id written as such (GPL-3.0-only) on a line about the licence."""
  found = []
  for line in text.splitlines():
    for match in _CC_SHORT.finditer(line):
      found.append("CC-" + "-".join(re.split(r"[ -]", match.group(1).upper())) + "-" + match.group(2))
    for match in _CC_LONG.finditer(line):
      codes = [_CC_CODES[w.lower().replace("-", "")] for w in _CC_WORD.findall(match.group(1))]
      found.append("CC-" + "-".join(codes) + "-" + match.group(2))
    found += [spdx for pattern, spdx in _NAMED if pattern.search(line)]
    if re.search(r"licen[cs]|spdx", line, re.IGNORECASE):
      found += [token for token in _SPDX_LIKE.findall(line) if _spdx(token)]
  return [f for f in dict.fromkeys(found) if _spdx(f)]


def data_license(data_config: Any, given: str | None = None) -> tuple[str, str]:
  """(the package's SPDX licence id, where it comes from): `given` (--license), else what a LICENSE or
  README file in the data folder states (the weights keep the training data's terms). Generated data
  (data.name='synthetic') has no terms to keep: GENERATED_DATA_LICENSE. Anything else is refused in one
  line rather than guessed."""
  if given:
    if not _spdx(given):
      raise InputError(f"--license={given!r} is not an SPDX licence id bioimage.io accepts (e.g. CC-BY-4.0, "
                       "CC-BY-NC-SA-3.0, MIT; https://spdx.org/licenses/)")
    return given, "--license"
  if data_config.name == "synthetic":
    return GENERATED_DATA_LICENSE, "unet-jax's default for generated training data, which has no terms to keep"
  root = os.path.abspath(data_config.root)
  for name in LICENSE_FILES:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8", errors="replace") as f:
      found = licenses_in(f.read(200_000))
    if len(found) > 1:
      raise InputError(f"{path} names several licences ({', '.join(found)}); pass --license=SPDX-ID with the one "
                       "that covers the training data")
    if found:
      return found[0], path
  raise InputError(f"cannot tell the training data's licence: no LICENSE or README in {root!r} states one; pass "
                   "--license=SPDX-ID with the data's terms (the weights keep them), e.g. --license=CC-BY-4.0")


def package_scores(config: Any, predictor: Predictor, split_names: list[str]) -> dict[str, Any]:
  """What the package's own output gives: the network's raw probabilities from one pass per window
  (sliding windows with `eval`'s window, overlap and blending; no TTA, no calibration), the threshold the
  config's policy chooses for them (with `eval.select_threshold` the best candidate on val; else the
  predictor's threshold carried to raw probabilities, `raw_threshold`), and the pixel scores at it of
  each of `split_names` (train, val, test). {'threshold': {...}, 'scores': {split: pixel scores}}."""
  plain_eval = config.eval.copy_and_resolve_references()
  plain_eval.tta, plain_eval.calibrate = "none", False
  plain = Predictor.create(predictor.model, predictor.variables, plain_eval, predictor.step)
  splits = data.load_splits(config.data)
  names = [n for n in dict.fromkeys(["val", *split_names]) if n in splits]
  probs = {n: plain.raw_probabilities(splits[n].image) for n in names}
  if plain_eval.select_threshold:
    threshold = choose_threshold(plain_eval, probs["val"], splits["val"].mask)
    threshold = {"value": threshold["value"], "source": "the val split's best candidate for one pass per window"}
  else:
    threshold = {"value": predictor.raw_threshold, "source": f"eval.threshold ({predictor.threshold['source']}), "
                 "on the network's own probabilities"}
  scores = {n: metrics.pixel_scores(probs[n] >= threshold["value"], splits[n].mask) for n in names
            if n in split_names}
  return {"threshold": threshold, "scores": scores, "window": list(plain.settings["window"]),
          "overlap": float(plain.settings["overlap"]), "blend": plain.settings["blend"]}


def class_names(config: Any) -> list[str]:
  """One channel name per class of a K-class model: `data.class_names`, else class_0, class_1, ..."""
  return list(config.data.get("class_names", ())) or [f"class_{c}" for c in range(config.model.num_classes)]


def class_package_scores(config: Any, predictor: Predictor, split_names: list[str]) -> dict[str, Any]:
  """`package_scores` of a K-class model: the per-class scores (classes.class_scores) of the argmax label map of
  the network's own probabilities (one pass per window, no TTA, no calibration) on each of `split_names`."""
  plain_eval = config.eval.copy_and_resolve_references()
  plain_eval.tta, plain_eval.calibrate = "none", False
  plain = Predictor.create(predictor.model, predictor.variables, plain_eval, predictor.step)
  k = predictor.num_classes
  splits = data.load_splits(config.data, k)
  scores = {n: classes.class_scores(plain.label_map(plain.raw_probabilities(splits[n].image)), splits[n].mask, k)
            for n in dict.fromkeys(split_names) if n in splits}
  return {"scores": scores, "window": list(plain.settings["window"]), "overlap": float(plain.settings["overlap"]),
          "blend": plain.settings["blend"]}


def class_cover(raw: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """The package's cover u8[H, 2W, 3]: the test input (grey) beside its label map (one tab10/tab20 colour per class)."""
  grey = raw.astype(np.float32)
  grey = np.round(255 * (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-12)).astype(np.uint8)
  palette = colormaps["tab10" if num_classes <= 10 else "tab20"].resampled(max(num_classes, 2))
  colours = np.round(255 * palette(np.arange(num_classes))[:, :3]).astype(np.uint8)
  return np.concatenate([np.repeat(grey[..., None], 3, -1), colours[labels]], axis=1)


def _pipeline(config: Any) -> str:
  """How evaluate.py ran the network, in words (TTA and calibration)."""
  tta = {"none": "one pass", "flips": "mean of 4 flips", "dihedral": "mean of 8 flips/rotations"}.get(
      config.eval.tta, config.eval.tta)
  return f"{tta} per window{', calibrated' if config.eval.calibrate else ''}"


def data_label(data_config: Any) -> str:
  """A short name of the training data: data.name, or the folder's name for data.name='folder'."""
  return os.path.basename(os.path.normpath(data_config.root)) if data_config.name == "folder" else data_config.name


def readme(config: Any, report: dict[str, Any], step: int, window: tuple[int, int], own: dict[str, Any],
           license_id: str, license_source: str) -> str:
  """README.md of the package: what the model does, its training data and licence, the scores of its own
  output (`package_scores`) and apart the report's, how to validate it."""
  voxel = tuple(config.data.voxel_size_nm)
  threshold = own["threshold"]["value"]
  cells = lambda p: f"{p['dice']:.4f} | {p['iou']:.4f} | {p['precision']:.4f} | {p['recall']:.4f}"
  rows = [f"| {split} | {cells(p)} | {threshold:g} |" for split, p in own["scores"].items()]
  quoted = [f"| {r['split']} | {cells(r['pixel'])} | {r['threshold']['value']:g} |" for r in report["runs"]]
  source = (f"the training data's, stated in its {os.path.basename(license_source)}" if os.path.isabs(license_source)
            else f"from {license_source}")
  return "\n".join([
      "# Mitochondria U-Net (unet-jax)", "",
      "Segments mitochondria in electron microscopy, one 2D slice at a time: the output is the probability of",
      f"mitochondrion per pixel; threshold it at {threshold:g} for a mask.", "",
      "## Training data", "",
      f"- data: `{data_label(config.data)}` from `{config.data.root or 'generated (synthetic)'}`",
      f"- pixel size (z, y, x): {voxel[0]:g} x {voxel[1]:g} x {voxel[2]:g} nm; evaluate.py --input resamples inputs at "
      "another pixel size to this one (unet_jax_predictor.json records it); other tools should resample first",
      f"- checkpoint of training step {step} (`eval.checkpoint={config.eval.checkpoint}`), batches of "
      f"{config.train.batch_size} patches of {config.train.patch_size} px",
      f"- network: 2D U-Net, depth {config.model.depth}, {config.model.base_features} base features, "
      f"{config.model.norm} normalisation; tiles of {window[0]} x {window[1]} px",
      f"- licence: {license_id} ({source})", "",
      "## Validation", "",
      f"Pixel scores of this package's own output, measured at export: one pass of the network per {window[0]} x "
      f"{window[1]} window (sliding windows, overlap {own['overlap']:g}, {own['blend']} blending; no test-time "
      f"augmentation, no calibration), thresholded at {threshold:g} ({own['threshold']['source']}):", "",
      "| split | Dice | IoU | precision | recall | threshold |", "|---|---|---|---|---|---|", *rows, "",
      f"unet-jax's own pipeline (evaluate.py, {report.get('created', '')}) runs this checkpoint as "
      f"{_pipeline(config)}, which this package does not do; it scored, at its threshold on its probabilities:", "",
      "| split | Dice | IoU | precision | recall | threshold |", "|---|---|---|---|---|---|", *quoted, "",
      "To validate on your own annotated stack: segment it with this model, threshold the probabilities, and",
      "compute Dice and IoU against your mask (unet-jax: `python evaluate.py --input=stack.tif --mask=mask.tif`).", "",
      "## Preprocessing", "",
      "Raw values are mapped to [0, 1] as in training (`scale_linear` in rdf.yaml, e.g. uint8 / 255).", "",
  ])


def class_readme(config: Any, report: dict[str, Any], step: int, window: tuple[int, int], own: dict[str, Any],
                 license_id: str, license_source: str) -> str:
  """README.md of a K-class model's package: its classes, training data and licence, the per-class Dice of its own
  output's argmax label map (`class_package_scores`) and apart the report's."""
  voxel, names = tuple(config.data.voxel_size_nm), class_names(config)
  header = ["| split | mean Dice | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  row = lambda split, s: f"| {split} | {s['mean_dice']:.4f} | " + " | ".join(f"{d:.4f}" for d in s["dice"]) + " |"
  source = (f"the training data's, stated in its {os.path.basename(license_source)}" if os.path.isabs(license_source)
            else f"from {license_source}")
  output = "one softmax over the classes" if config.model.output == "softmax" else "one sigmoid per class"
  return "\n".join([
      f"# {len(names)}-class U-Net (unet-jax)", "",
      f"Segments electron microscopy into {len(names)} classes, one 2D slice at a time: the output has one channel "
      f"per class ({', '.join(names)}), the class probabilities ({output}); the class map is their argmax.", "",
      "## Training data", "",
      f"- data: `{data_label(config.data)}` from `{config.data.root}`, label maps from `{config.data.labels_root}`",
      f"- pixel size (z, y, x): {voxel[0]:g} x {voxel[1]:g} x {voxel[2]:g} nm; other tools should resample inputs at "
      "another pixel size to this one first",
      f"- checkpoint of training step {step} (`eval.checkpoint={config.eval.checkpoint}`)",
      f"- network: 2D U-Net, depth {config.model.depth}, {config.model.base_features} base features, "
      f"{config.model.norm} normalisation; tiles of {window[0]} x {window[1]} px",
      f"- licence: {license_id} ({source})", "",
      "## Validation", "",
      f"Per-class Dice of this package's own output, measured at export: the argmax of one pass of the network per "
      f"{window[0]} x {window[1]} window (sliding windows, overlap {own['overlap']:g}, {own['blend']} blending; no "
      "test-time augmentation, no calibration):", "",
      *header, *(row(split, s) for split, s in own["scores"].items()), "",
      f"unet-jax's own pipeline (evaluate.py, {report.get('created', '')}) scored this checkpoint as "
      f"{_pipeline(config)} per window:", "",
      *header, *(row(r["split"], r) for r in report["runs"]), "",
      "## Preprocessing", "",
      "Raw values are mapped to [0, 1] as in training (`scale_linear` in rdf.yaml, e.g. uint8 / 255).", "",
  ])


def with_training_voxel_size(predictor: Predictor, config: Any, workdir: str) -> Predictor:
  """`predictor` carrying `data.voxel_size_nm`, the pixel size the package states (rdf.yaml's input axes, its
  README, unet_jax_predictor.json); InputError when the workdir recorded another at training."""
  voxel = tuple(float(v) for v in config.data.voxel_size_nm)
  if predictor.voxel_size_nm and not np.allclose(predictor.voxel_size_nm, voxel):
    recorded = ",".join(f"{v:g}" for v in predictor.voxel_size_nm)
    raise InputError(f"{workdir} was trained at voxel size ({recorded}) nm but the config says data.voxel_size_nm="
                     f"{voxel}; give --config.data.voxel_size_nm=\"({recorded})\" so the package states the size "
                     "it was trained at")
  return dataclasses.replace(predictor, voxel_size_nm=voxel)


def build_package(config: Any, workdir: str, output: str, image_path: str | None = None,
                  report_path: str | None = None, author: str = "unet-jax",
                  license_id: str | None = None, overwrite: bool = False, validate: bool = False) -> dict[str, Any]:
  """Writes the bioimage.io package of `workdir`'s checkpoint (`eval.checkpoint`) to `output` (.zip).

  The test input is the centre `eval.window` of the first slice of `image_path` (default: the
  config's data.root/testing.tif); the report defaults to workdir/report/report.json; the licence
  (an SPDX id) to the training data's (`data_license`). An existing `output` is refused unless
  `overwrite`; with `validate`, bioimageio.core's model test must pass first. The package replaces
  `output` only when complete (and tested), so a failed export leaves an earlier one as it was.
  Returns a summary with the ONNX-vs-JAX difference on the test input and the package's own scores.
  """
  spec, v0_5 = _require_bioimageio()
  if config.model.ndim != 2:
    raise InputError(f"bioimage.io export supports 2D models (model.ndim=2), got model.ndim={config.model.ndim}")
  check_output(output, overwrite)
  license_id, license_source = data_license(config.data, license_id)
  model = build_model(config.model)
  onnx_export.check_exportable(model, "bioimage.io export")
  if model.in_channels != 1:
    raise InputError("bioimage.io export supports single-slice models; set model.context_slices=0")
  predictor = with_training_voxel_size(Predictor.load(config, workdir), config, workdir)
  window = predictor.settings["window"]
  model.check_input((1, *window, 1))
  variables, step, k = predictor.variables, predictor.step, model.num_classes
  report_path = report_path or os.path.join(workdir, "report", "report.json" if k == 1 else "class_report.json")
  report = read_report(report_path, step)
  covers = [os.path.join(os.path.dirname(report_path), p) for r in report["runs"]
            for p in r.get("files", {}).get("overlays", [])] if k == 1 else []
  if k == 1 and (not covers or not os.path.isfile(covers[0])):
    raise InputError(f"{report_path} lists no overlay picture to use as the cover; rerun evaluate.py")
  image_path = image_path or os.path.join(config.data.root, "testing.tif")
  if not os.path.isfile(image_path):
    raise InputError(f"no test image at {image_path}; pass --input=slice.tif (raw EM of the training kind)")

  raw, offset, scale = test_window(image_path, window)
  image = ((raw.astype(np.float32) - np.float32(offset)) / np.float32(scale))[None, ..., None]  # f32[1, H, W, 1]
  expected = np.asarray(jax.jit(engines.forward(model, "xla"))(variables, image))
  proto = onnx_export.export_onnx(model, variables, image.shape)
  ort = onnx_export.require("onnxruntime", "bioimage.io export")
  onnx_output = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
      None, {onnx_export.INPUT_NAME: image})[0]
  difference = float(np.abs(onnx_output - expected).max())
  if difference > TOLERANCE:
    raise InputError(f"ONNX Runtime differs from JAX by {difference:.2e} > {TOLERANCE} on the test input; "
                     "the conversion is wrong for this model, do not ship it")

  splits = [r["split"] for r in report["runs"]]
  own = package_scores(config, predictor, splits) if k == 1 else class_package_scores(config, predictor, splits)
  with tempfile.TemporaryDirectory() as tmp:
    path = lambda name: os.path.join(tmp, name)
    with open(path("weights.onnx"), "wb") as f:
      f.write(proto.SerializeToString())
    np.save(path("test_input.npy"), raw[None, ..., None])
    np.save(path("test_output.npy"), expected)
    tifffile.imwrite(path("sample_input.tif"), raw)  # the same window, as pictures for the website
    if k == 1:
      tifffile.imwrite(path("sample_output.tif"), expected[0, ..., 0])
      shutil.copy(covers[0], path("cover.png"))
    else:  # (K, H, W): one page per class
      tifffile.imwrite(path("sample_output.tif"), np.moveaxis(expected[0], -1, 0), photometric="minisblack")
      Image.fromarray(class_cover(raw, predictor.label_map(expected[0]), k)).save(path("cover.png"))
    with open(path(predictor_lib.PACKAGE_VARIABLES), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))
    with open(path(predictor_lib.PACKAGE_SETTINGS), "w") as f:
      json.dump(predictor.package_record(config), f, indent=1)
    with open(path("README.md"), "w") as f:
      f.write((readme if k == 1 else class_readme)(config, report, step, window, own, license_id, license_source))
    descr = _describe(v0_5, config, own, step, window, raw.dtype, (offset, scale), author, license_id, path)
    package = spec.save_bioimageio_package(descr, output_path=path("package.zip"))
    summary = {"output": output, "workdir": workdir, "step": int(step), "window": list(window),
               "test_input": image_path, "input_dtype": str(raw.dtype), "license": license_id,
               "license_source": license_source, "max_abs_onnx_minus_jax": difference, "tolerance": TOLERANCE,
               "threshold": predictor.threshold, "temperature": predictor.temperature,
               "raw_threshold": predictor.raw_threshold, "num_classes": k, "package": own}
    if validate:
      summary["bioimageio_test"] = validate_package(str(package))
      if summary["bioimageio_test"]["status"] != "passed":
        raise InputError(f"bioimageio.core's model test did not pass: {summary['bioimageio_test']}; no package "
                         "was written")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with outputs.atomic_path(output) as partial:
      shutil.copyfile(package, partial)
  return summary


def _describe(v0_5: Any, config: Any, own: dict[str, Any], step: int, window: tuple[int, int],
              dtype: np.dtype, normalization: tuple[float, float], author: str, license_id: str, path: Any) -> Any:
  """The v0.5 ModelDescr of the files under `path(name)`; its numbers are the package's own (`package_scores`,
  `class_package_scores` for a K-class model, whose output has one channel per class)."""
  k = config.model.num_classes
  voxel_y, voxel_x = (float(v) for v in tuple(config.data.voxel_size_nm)[1:])
  space = lambda axis_id, size, scale, cls: cls(id=v0_5.AxisId(axis_id), size=size, scale=scale, unit="nanometer")
  offset, scale = normalization
  to_float = v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))
  preprocessing = [to_float]
  if (offset, scale) != (0.0, 1.0):  # raw values already in [0, 1] (floats) need none; the spec refuses a no-op
    preprocessing += [v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=1.0 / scale, offset=-offset / scale)),
                      to_float]
  ref = lambda axis_id: v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(axis_id))
  inputs = [v0_5.InputTensorDescr(
      id=v0_5.TensorId(INPUT_ID), description="raw EM slice, one channel",
      axes=[v0_5.BatchAxis(size=1), space("y", window[0], voxel_y, v0_5.SpaceInputAxis),
            space("x", window[1], voxel_x, v0_5.SpaceInputAxis), v0_5.ChannelAxis(channel_names=["em"])],
      test_tensor=v0_5.FileDescr(source=path("test_input.npy")),
      sample_tensor=v0_5.FileDescr(source=path("sample_input.tif")),
      data=v0_5.IntervalOrRatioDataDescr(type=str(dtype)), preprocessing=preprocessing)]
  if k == 1:
    threshold = own["threshold"]["value"]
    output_id, channels = OUTPUT_ID, ["mitochondria"]
    meaning = f"mitochondrion probability; threshold at {threshold:g}"
    scores = "; ".join(f"{split} Dice {p['dice']:.3f}, IoU {p['iou']:.3f}" for split, p in own["scores"].items())
    name, summary = "mitochondria", f"thresholded at {threshold:g}: {scores}"
    tags = ["mitochondria", "electron-microscopy", "semantic-segmentation", "unet", "2d", "jax", "onnx"]
  else:
    output_id, channels = CLASS_OUTPUT_ID, class_names(config)
    kind = "softmax" if config.model.output == "softmax" else "one sigmoid each"
    meaning = f"{k} class probabilities, one channel per class ({kind}); the class map is their argmax"
    scores = "; ".join(f"{split} mean Dice {s['mean_dice']:.3f}" for split, s in own["scores"].items())
    name, summary = f"{k} classes", f"as a label map (argmax): {scores}"
    tags = ["electron-microscopy", "semantic-segmentation", "multi-class", "unet", "2d", "jax", "onnx"]
  outputs = [v0_5.OutputTensorDescr(
      id=v0_5.TensorId(output_id), description=meaning,
      axes=[v0_5.BatchAxis(size=1), space("y", ref("y"), voxel_y, v0_5.SpaceOutputAxis),
            space("x", ref("x"), voxel_x, v0_5.SpaceOutputAxis), v0_5.ChannelAxis(channel_names=channels)],
      test_tensor=v0_5.FileDescr(source=path("test_output.npy")),
      sample_tensor=v0_5.FileDescr(source=path("sample_output.tif")),
      data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
  return v0_5.ModelDescr(
      name=f"unet-jax {name} {data_label(config.data)}",
      description=(f"2D U-Net for {name} in EM, trained on {data_label(config.data)} "
                   f"({voxel_y:g} nm pixels), checkpoint step {step}. Its output (one pass per window) "
                   f"{summary}.")[:1024],
      authors=[v0_5.Author(name=author)],
      cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in CITATIONS],
      license=v0_5.LicenseId(license_id),
      documentation=v0_5.FileDescr(source=path("README.md")), covers=[v0_5.FileDescr(source=path("cover.png"))],
      tags=tags,
      inputs=inputs, outputs=outputs,
      attachments=[v0_5.FileDescr(source=path(predictor_lib.PACKAGE_VARIABLES)),
                   v0_5.FileDescr(source=path(predictor_lib.PACKAGE_SETTINGS))],
      weights=v0_5.WeightsDescr(onnx=v0_5.OnnxWeightsDescr(source=path("weights.onnx"),
                                                           opset_version=onnx_export.OPSET)),
      version="0.1.0",
      config={"unet_jax": {"step": int(step), "window": list(window),
                           "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}})


def validate_package(package: str) -> dict[str, Any]:
  """bioimageio.core's model test of `package` (runs the test input through ONNX Runtime): {status, details}."""
  _require_bioimageio()
  from bioimageio.core import test_model  # pylint: disable=g-import-not-at-top
  summary = test_model(package)
  failed = [d.name for d in summary.details if d.status == "failed"]
  return {"status": summary.status, "failed_checks": failed}

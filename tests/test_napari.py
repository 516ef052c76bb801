"""The napari widgets, headless (Qt offscreen; pytest-xvfb's display gives napari's canvas OpenGL): each
shows exactly what the library computes for the same array and model."""

import json
import os
import zipfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tifffile  # pylint: disable=g-import-not-at-top

napari = pytest.importorskip("napari", reason="the napari plugin's tests need napari (pip install .[napari])")
pytest.importorskip("pytestqt", reason="the napari plugin's tests need pytest-qt (pip install .[napari])")
if not os.environ.get("DISPLAY"):
  pytest.skip("napari's canvas needs OpenGL from an X display: install Xvfb and pytest-xvfb (see .ci/run)",
              allow_module_level=True)

import jax  # pylint: disable=g-import-not-at-top

from configs import unet2d  # pylint: disable=g-import-not-at-top
from test_inference import save_random_checkpoint  # pylint: disable=g-import-not-at-top,g-bad-import-order
from test_multiclass import toy_stack  # pylint: disable=g-import-not-at-top,g-bad-import-order
from unet_jax.explain import explanation  # pylint: disable=g-import-not-at-top
from unet_jax.export import bioimage  # pylint: disable=g-import-not-at-top
from unet_jax.inference import segment  # pylint: disable=g-import-not-at-top
from unet_jax.inference.predictor import Predictor  # pylint: disable=g-import-not-at-top
from unet_jax.io import checkpoint, data, runlog  # pylint: disable=g-import-not-at-top
from unet_jax.network.model import abstract_variables, build_model  # pylint: disable=g-import-not-at-top
from unet_jax.reports import evaluation  # pylint: disable=g-import-not-at-top
from unet_jax.training import trainer  # pylint: disable=g-import-not-at-top
from unet_jax.viewer import layers, widgets  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHEAP_CONFIG = '''
from configs import unet2d  # importable: pytest puts the repository root on the path (pyproject.toml)

def get_config():
  c = unet2d.get_config("tiny")
  c.explain.ig_steps = c.explain.ig_max_steps = 8
  c.explain.sanity_steps = 2
  c.explain.deletion_points = 4
  c.explain.gallery_layers = ("bottleneck",)  # explain.py's filter pictures, cheap
  c.explain.gallery_filters = c.explain.gallery_patches = 1
  c.explain.actmax_px, c.explain.actmax_steps = 32, 2
  return c
'''
WIDER_CONFIG = CHEAP_CONFIG.replace("return c", "c.model.base_features = 8\n  return c")  # does not fit the model
CLASSES_CONFIG = '''
from configs import unet2d

def get_config():
  c = unet2d.get_config("tiny")
  c.data.name, c.data.labels_root = "folder", "labels"  # label maps (not read: the model is given)
  c.model.num_classes, c.model.output = 3, "softmax"
  return c
'''


def write_config(folder, name: str, text: str) -> str:
  """A config file `name` in `folder` holding `text`; returns its path (what the widgets' config field takes)."""
  path = str(folder / name)
  with open(path, "w") as f:
    f.write(text)
  return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """(config spec, workdir, image u8[Z, H, W], truth u8[Z, H, W] in {0, 1}): the tiny model trained once."""
  root = tmp_path_factory.mktemp("napari")
  spec = write_config(root, "cheap.py", CHEAP_CONFIG)
  config = layers.load_config(spec)
  config.train.eval_every = config.train.checkpoint_every = config.train.steps
  workdir = str(root / "run")
  trainer.train_and_evaluate(config, workdir)
  test = data.load_splits(config.data)["test"]
  return spec, workdir, np.round(test.image * 255).astype(np.uint8), test.mask


def run(qtbot, widget) -> None:
  """Runs a widget's work in its thread worker and waits for it."""
  widget.start()
  qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=300_000)


def dock(viewer, widget_type):
  widget = widget_type(viewer)
  viewer.window.add_dock_widget(widget)
  widget.reset_choices()
  return widget


def segmented(viewer, qtbot, model, model_path=None):
  """The Segment widget run on the image as layer 'em' (added if missing) with the workdir or `model_path`."""
  spec, workdir, image, _ = model
  if "em" not in viewer.layers:
    viewer.add_image(image, name="em", scale=(50.0, 4.6, 4.6))
  seg = dock(viewer, widgets.SegmentWidget)
  seg.config.value, seg.model.value, seg.image.value = spec, model_path or workdir, viewer.layers["em"]
  run(qtbot, seg)
  assert not seg.status.value.startswith("error"), seg.status.value
  return seg


def segment_layers(viewer) -> dict[str, np.ndarray]:
  """Copies of the probabilities, mask and objects layers of 'em'."""
  return {kind: np.array(viewer.layers[f"em {kind}"].data) for kind in ("probabilities", "mask", "objects")}


@pytest.mark.slow
def test_segmenting_a_layer_equals_evaluate_input(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, image, _ = model
  viewer = make_napari_viewer()
  seg = segmented(viewer, qtbot, model)
  predictor = layers.load_model(spec, workdir)[1]
  assert (f"objects of {predictor.min_size} voxels or more, per-section profiles of {predictor.min_area} pixels or "
          "more;") in seg.status.value  # the 2D objects' rule
  tifffile.imwrite(tmp_path / "em.tif", image)
  out = tmp_path / "out"
  summary = segment.segment_file(layers.load_config(spec), workdir, str(tmp_path / "em.tif"), str(out),
                                 probability_dtype="float32", progress=False, voxel_size_nm=(50.0, 4.6, 4.6))
  assert summary["voxel_size"]["factors"] == [1.0, 4.6 / 5.0, 4.6 / 5.0]  # the layer's 4.6 nm, the model's 5 nm
  np.testing.assert_array_equal(viewer.layers["em probabilities"].data, tifffile.imread(out / "probabilities.tif"))
  np.testing.assert_array_equal(viewer.layers["em mask"].data * 255, tifffile.imread(out / "segmentation.tif"))
  assert viewer.layers["em mask"].data.any()
  assert tuple(viewer.layers["em probabilities"].scale) == (50.0, 4.6, 4.6)
  assert viewer.layers["em probabilities"].metadata["unet_jax"]["model"] == workdir == summary["workdir"]


@pytest.mark.slow
def test_overlay_and_tables_count_as_the_report(make_napari_viewer, qtbot, model):
  spec, workdir, _, truth = model
  viewer = make_napari_viewer()
  segmented(viewer, qtbot, model)
  viewer.add_labels(truth, name="truth")
  score = dock(viewer, widgets.ScoreWidget)
  score.prediction.value, score.truth.value = viewer.layers["em probabilities"], viewer.layers["truth"]
  run(qtbot, score)
  config, predictor = layers.load_model(spec, workdir)
  probs = viewer.layers["em probabilities"].data
  report = layers.scores(probs, truth, predictor, config, (50.0, 4.6, 4.6))
  overlay = viewer.layers["em probabilities errors"].data
  assert np.sum(overlay == layers.FP) == report["pixel"]["fp"] and np.sum(overlay == layers.FN) == report["pixel"]["fn"]
  table = score.scores.value
  assert len(table["data"]) == sum(len(rows) for rows in report["instances"].values())
  first = dict(zip(table["columns"], table["data"][0]))
  row = report["instances"]["2d"][0]
  assert (first["true"], first["predicted"], first["found"]) == (row["n_true"], row["n_pred"], row["found"])
  assert float(first["F1"]) == pytest.approx(row["f1"], abs=5e-5)
  errors = score.errors.value["data"]
  assert len(errors) == row["spurious"] + row["missed"]
  if errors:
    score._centre(0)  # pylint: disable=protected-access  (what clicking the first row does)
    o = score.error_rows[0]
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (o["y"] * 4.6, o["x"] * 4.6), rtol=1e-5)
    assert viewer.dims.point[0] == pytest.approx(round(o["z"]) * 50.0, abs=25.0)


@pytest.mark.slow
def test_review_edits_are_saved_and_read_by_the_data_loader(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, image, truth = model
  viewer = make_napari_viewer()
  segmented(viewer, qtbot, model)
  viewer.add_labels(truth, name="truth")
  review = dock(viewer, widgets.ReviewWidget)
  review.prediction.value, review.labels.value = viewer.layers["em probabilities"], viewer.layers["em objects"]
  review.truth.value = viewer.layers["truth"]
  run(qtbot, review)
  config, predictor = layers.load_model(spec, workdir)
  probs = viewer.layers["em probabilities"].data
  expected = evaluation.stack_scores(probs, truth, predictor.threshold_value, predictor.min_size, config.eval,
                                     (50.0, 4.6, 4.6), min_area=predictor.min_area)[0]
  listed = expected["review"]["2d"]["list"]
  assert [r["label"] for r in review.rows] == [r["label"] for r in listed] and listed
  doubtful = review.rows[0]["label"]
  review.decide("deleted", 0)
  if len(review.rows) > 1:
    review.decide("accepted", 1)
    assert review.rows[1]["status"] == "accepted"
  assert not np.any(viewer.layers["em objects"].data == doubtful)
  tifffile.imwrite(tmp_path / "em.tif", image)
  for name in ("mask.tif", "mask.ome.zarr"):
    review.path.value = str(tmp_path / name)
    review.save()
    assert review.status.value.startswith("saved"), review.status.value
    split = data.load_pair(str(tmp_path / "em.tif"), str(tmp_path / name))
    np.testing.assert_array_equal(split.mask, viewer.layers["em objects"].data > 0)


@pytest.mark.slow
def test_explanation_layers_equal_explain_py(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, image, _ = model
  viewer = make_napari_viewer()
  segmented(viewer, qtbot, model)
  why = dock(viewer, widgets.ExplainWidget)
  why.prediction.value, why.object.value = viewer.layers["em probabilities"], "1"
  why.rank_filters.value = False  # ranking every filter of every block costs minutes on 2 cores
  viewer.dims.set_current_step(0, 1)
  run(qtbot, why)
  assert not why.status.value.startswith("error"), why.status.value
  tifffile.imwrite(tmp_path / "em.tif", image)
  doc = explanation.explain(layers.load_config(spec), workdir, str(tmp_path / "explain"), "1", z=1,
                            input_path=str(tmp_path / "em.tif"), rank_filters=False, sanity_checks=True)
  [obj] = doc["objects"]
  ig = viewer.layers["pred_1 ig_black"]
  assert float(np.sum(ig.data)) == pytest.approx(obj["ig_black"]["sum"], rel=1e-4, abs=1e-5)
  assert ig.data.shape[-2:] == (obj["crop"][2] - obj["crop"][0], obj["crop"][3] - obj["crop"][1])
  assert "pred_1 cam_bottleneck" in viewer.layers or any(n.startswith("pred_1 cam_") for n in map(str, viewer.layers))
  checks = why.checks.value["data"]
  assert len(checks) == 1 + len(obj["randomisation"])
  assert checks[1][1] == f"{obj['randomisation'][0]['spearman']:.2f} / {obj['randomisation'][0]['spearman_abs']:.2f}"
  assert not why.filters.value["data"]


@pytest.mark.slow  # a viewer takes seconds to start
def test_a_wrong_layer_is_a_message_in_the_viewer(make_napari_viewer):
  viewer = make_napari_viewer()
  viewer.add_image(np.zeros((2, 3, 8, 8), np.uint8), name="4d")
  seg = dock(viewer, widgets.SegmentWidget)
  seg.image.value = viewer.layers["4d"]
  seg.config.value = os.path.join(ROOT, "configs", "unet2d.py:tiny")
  seg.start()
  assert seg.status.value == "error: layer '4d' has shape (2, 3, 8, 8); give a grey 2D image (H, W) or a stack (Z, H, W)"
  assert seg.worker is None
  score = dock(viewer, widgets.ScoreWidget)
  score.prediction.value = viewer.layers["4d"]
  score.start()
  assert score.status.value == ("error: choose a probabilities layer made by the Segment widget (it knows its "
                                "model)")


@pytest.mark.slow
def test_a_model_that_does_not_fit_is_a_message_in_the_viewer(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, image, _ = model
  viewer = make_napari_viewer()
  viewer.add_image(image, name="em")
  seg = dock(viewer, widgets.SegmentWidget)
  seg.model.value, seg.image.value = workdir, viewer.layers["em"]
  seg.config.value = os.path.join(ROOT, "configs", "unet2d.py:lucchi")  # a bigger model than the one trained
  run(qtbot, seg)
  assert seg.status.value.startswith("error: checkpoint step") and "does not fit the configured model" in seg.status.value
  assert "em probabilities" not in viewer.layers
  seg.config.value, seg.image.value = spec, viewer.layers["em"]
  viewer.add_image(np.zeros((2, 3, 8, 8), np.uint8), name="4d")
  seg.reset_choices()
  seg.image.value = viewer.layers["4d"]
  run(qtbot, seg)
  assert seg.status.value.startswith("error: layer '4d' has shape (2, 3, 8, 8)")


@pytest.mark.slow
def test_segmenting_with_a_package_equals_its_workdir(make_napari_viewer, qtbot, model, tmp_path):
  """export.py's package of the workdir, as its .zip and unpacked, segments the layer as the workdir does, and
  as `evaluate.py --input` does with that package."""
  spec, workdir, image, _ = model
  config = layers.load_config(spec)
  tifffile.imwrite(tmp_path / "em.tif", image)
  evaluation.evaluate(config, [workdir], str(tmp_path / "report"), ["test"])
  package = str(tmp_path / "unet.zip")
  bioimage.build_package(config, workdir, package, str(tmp_path / "em.tif"), str(tmp_path / "report" / "report.json"))
  with zipfile.ZipFile(package) as z:
    z.extractall(tmp_path / "unpacked")
  viewer = make_napari_viewer()
  segmented(viewer, qtbot, model)
  expected = segment_layers(viewer)
  assert expected["mask"].any()
  for path in (package, str(tmp_path / "unpacked")):
    seg = segmented(viewer, qtbot, model, path)
    for kind, array in segment_layers(viewer).items():
      np.testing.assert_array_equal(array, expected[kind], err_msg=f"{kind} of {path}")
    assert viewer.layers["em probabilities"].metadata["unet_jax"]["model"] == path
    assert seg.status.value.startswith(f"step {Predictor.load(config, workdir).step}, ")
  segment.segment_file(config, str(tmp_path / "unpacked"), str(tmp_path / "em.tif"), str(tmp_path / "out"),
                       probability_dtype="float32", progress=False, voxel_size_nm=(50.0, 4.6, 4.6))
  np.testing.assert_array_equal(expected["probabilities"], tifffile.imread(tmp_path / "out" / "probabilities.tif"))


@pytest.mark.slow
def test_a_multi_class_model_gives_class_layers_equal_to_evaluate_input(make_napari_viewer, qtbot, tmp_path):
  spec = write_config(tmp_path, "classes.py", CLASSES_CONFIG)
  config = layers.load_config(spec)
  save_random_checkpoint(config, str(tmp_path / "run"))
  image = np.round(toy_stack(2, 64, seed=3)[0] * 255).astype(np.uint8)
  viewer = make_napari_viewer()
  viewer.add_image(image, name="em", scale=(50.0, 4.6, 4.6))
  seg = dock(viewer, widgets.SegmentWidget)
  seg.config.value, seg.model.value, seg.image.value = spec, str(tmp_path / "run"), viewer.layers["em"]
  run(qtbot, seg)
  assert seg.status.value.startswith("step 3, 3 classes"), seg.status.value
  tifffile.imwrite(tmp_path / "em.tif", image, photometric="minisblack")
  segment.segment_file(config, str(tmp_path / "run"), str(tmp_path / "em.tif"), str(tmp_path / "out"),
                       probability_dtype="float32", progress=False)
  expected = np.moveaxis(tifffile.imread(tmp_path / "out" / "probabilities.tif"), 1, -1)  # (Z, K, H, W) -> K last
  shown = np.stack([viewer.layers[f"em class {c} probabilities"].data for c in range(3)], axis=-1)
  np.testing.assert_array_equal(shown, expected)
  classes = viewer.layers["em classes"]
  np.testing.assert_array_equal(classes.data, tifffile.imread(tmp_path / "out" / "segmentation.tif"))
  np.testing.assert_array_equal(classes.data, Predictor.load(config, str(tmp_path / "run")).label_map(shown))
  assert len(np.unique(classes.data)) > 1 and tuple(classes.scale) == (50.0, 4.6, 4.6)
  assert "em mask" not in viewer.layers and "em probabilities" not in viewer.layers
  score = dock(viewer, widgets.ScoreWidget)
  score.prediction.value = viewer.layers["em class 1 probabilities"]
  score.start()
  assert score.status.value.startswith("error: layer 'em class 1 probabilities' comes from a 3-class model;")


@pytest.mark.slow
def test_the_filter_table_is_explain_py_ranking(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, image, _ = model
  viewer = make_napari_viewer()
  segmented(viewer, qtbot, model)
  why = dock(viewer, widgets.ExplainWidget)
  why.prediction.value, why.object.value = viewer.layers["em probabilities"], "1"
  why.sanity.value = False
  viewer.dims.set_current_step(0, 1)
  run(qtbot, why)
  assert not why.status.value.startswith("error"), why.status.value
  tifffile.imwrite(tmp_path / "em.tif", image)
  doc = explanation.explain(layers.load_config(spec), workdir, str(tmp_path / "explain"), "1", z=1,
                            input_path=str(tmp_path / "em.tif"), rank_filters=True, sanity_checks=False)
  [obj] = doc["objects"]
  table = why.filters.value
  assert list(table["columns"]) == ["layer", "channel", "score_drop", "estimate"]
  assert [row[:2] for row in table["data"]] == [[r["layer"], r["channel"]] for r in obj["top_filters"]]
  np.testing.assert_allclose([row[2:] for row in table["data"]],
                             [[r["score_drop"], r["estimate"]] for r in obj["top_filters"]], rtol=1e-5, atol=1e-6)
  assert len(table["data"]) == layers.load_config(spec).explain.top_k


@pytest.mark.slow
def test_fine_tune_button_trains_from_the_model_on_corrected_slices(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, _, _ = model
  splits = data.load_splits(layers.load_config(spec).data)
  corrected = tmp_path / "corrected"  # a data folder as Review's Save writes masks (u8 0/255)
  corrected.mkdir()
  stacked = lambda *names: [np.concatenate([getattr(splits[n], kind) for n in names]) for kind in ("image", "mask")]
  for stem, names in (("training", ("train", "val")), ("testing", ("test",))):
    em, mask = stacked(*names)
    tifffile.imwrite(corrected / f"{stem}.tif", np.round(em * 255).astype(np.uint8), photometric="minisblack")
    layers.save_mask(mask, str(corrected / f"{stem}_groundtruth.tif"), (50.0, 4.6, 4.6))
  viewer = make_napari_viewer()
  tune = dock(viewer, widgets.FineTuneWidget)
  assert tune.steps.value == 100  # a short run by default
  tune.config.value, tune.init_from.value, tune.data_root.value = spec, workdir, str(corrected)
  tune.workdir.value, tune.steps.value = str(tmp_path / "tuned"), 3
  run(qtbot, tune)
  assert tune.status.value.startswith(f"trained to step 3 in {tmp_path / 'tuned'}: val Dice "), tune.status.value
  [start] = [r for r in runlog.records(runlog.log_path(str(tmp_path / "tuned"))) if r.get("event") == "start"]
  assert start["init_from"] == workdir and start["step"] == 0
  target = abstract_variables(build_model(layers.load_config(spec).model))
  before = checkpoint.restore_variables(workdir, target)[0]["params"]
  after, step = checkpoint.restore_variables(str(tmp_path / "tuned"), target, "latest")
  assert step == 3
  assert not jax.tree.all(jax.tree.map(np.array_equal, before, after["params"]))
  tune.config.value = write_config(tmp_path, "wider.py", WIDER_CONFIG)
  tune.workdir.value = str(tmp_path / "wider")
  run(qtbot, tune)
  assert tune.status.value.startswith(f"error: train.init_from={workdir!r}: ")
  assert "does not fit the configured model" in tune.status.value and "Traceback" not in tune.status.value
  assert not os.path.exists(runlog.log_path(str(tmp_path / "wider")))

"""The napari widgets, headless (Qt offscreen; pytest-xvfb's display gives napari's canvas OpenGL): each
shows exactly what the library computes for the same array and model."""

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tifffile  # pylint: disable=g-import-not-at-top

napari = pytest.importorskip("napari", reason="the napari plugin's tests need napari (pip install .[napari])")
pytest.importorskip("pytestqt", reason="the napari plugin's tests need pytest-qt (pip install .[napari])")
if not os.environ.get("DISPLAY"):
  pytest.skip("napari's canvas needs OpenGL from an X display: install Xvfb and pytest-xvfb (see .ci/run)",
              allow_module_level=True)

from configs import unet2d  # pylint: disable=g-import-not-at-top
from unet_jax.explain import explanation  # pylint: disable=g-import-not-at-top
from unet_jax.inference import segment  # pylint: disable=g-import-not-at-top
from unet_jax.io import data  # pylint: disable=g-import-not-at-top
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
  return c
'''


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """(config spec, workdir, image u8[Z, H, W], truth u8[Z, H, W] in {0, 1}): the tiny model trained once."""
  root = tmp_path_factory.mktemp("napari")
  spec = str(root / "cheap.py")
  with open(spec, "w") as f:
    f.write(CHEAP_CONFIG)
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


def segmented(viewer, qtbot, model):
  spec, workdir, image, _ = model
  viewer.add_image(image, name="em", scale=(50.0, 4.6, 4.6))
  seg = dock(viewer, widgets.SegmentWidget)
  seg.config.value, seg.model.value, seg.image.value = spec, workdir, viewer.layers["em"]
  run(qtbot, seg)
  assert not seg.status.value.startswith("error"), seg.status.value
  return seg


@pytest.mark.slow
def test_segmenting_a_layer_equals_evaluate_input(make_napari_viewer, qtbot, model, tmp_path):
  spec, workdir, image, _ = model
  viewer = make_napari_viewer()
  segmented(viewer, qtbot, model)
  tifffile.imwrite(tmp_path / "em.tif", image)
  out = tmp_path / "out"
  summary = segment.segment_file(layers.load_config(spec), workdir, str(tmp_path / "em.tif"), str(out),
                                 probability_dtype="float32", progress=False)
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
    np.testing.assert_allclose(viewer.camera.center[-2:], (o["y"] * 4.6, o["x"] * 4.6), rtol=1e-5)
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
  from unet_jax.reports import evaluation  # pylint: disable=g-import-not-at-top
  expected = evaluation.stack_scores(probs, truth, predictor.threshold_value, config.eval, (50.0, 4.6, 4.6))[0]
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

"""napari dock widgets: segment, score, review, explain and fine-tune from the viewer.

Thin on purpose: each widget reads its layers, runs a function of unet_jax/viewer/layers.py (which calls
the library) in a napari thread worker with a progress bar, and shows the result as layers and tables.
Whatever goes wrong (a wrong layer, a model that does not fit the image, a bad config) is one line in
the widget's status and a napari error notification, never a traceback.
"""

import threading
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, create_widget, Label, LineEdit, ProgressBar, PushButton, \
    SpinBox, Table
from napari.qt.threading import thread_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.explain import explanation
from unet_jax.reports import uncertainty
from unet_jax.training import trainer
from unet_jax.viewer import layers

META = "unet_jax"  # layer.metadata key: {'config', 'model', 'image', 'dims', 'classes'} of the layers Segment adds
DEFAULT_CONFIG = "configs/unet2d.py:vnc"
OBJECTS = ("2D", "3D")  # connected components per slice or across slices, as the report's 2d / 3d tables


class Cancelled(Exception):
  """Raised inside a worker when its Cancel button was pressed."""


def one_line(error: BaseException) -> str:
  """An error as the status line shows it: InputError's own message, anything else with its type."""
  text = " ".join(str(error).split())
  return text if isinstance(error, (InputError, Cancelled)) else f"{type(error).__name__}: {text}"


class _Progress(QObject):
  """Carries (done, total) from a worker thread to the widget's progress bar on the GUI thread."""
  step = Signal(int, int)


class Panel(Container):
  """A widget's shared parts: status line, progress bar, Run/Cancel, and a worker runner."""

  def __init__(self, viewer: napari.viewer.Viewer, cancellable: bool = False):
    super().__init__()
    self.viewer = viewer
    self.status = Label(value="")
    self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
    self.run_button = PushButton(text="Run")
    self.cancel_button = PushButton(text="Cancel", visible=cancellable, enabled=False)
    self.run_button.changed.connect(self.start)
    self.cancel_button.changed.connect(self.cancel)
    self._cancel = threading.Event()
    self._signal = _Progress()
    self._signal.step.connect(self._show_progress)
    self.worker: Any = None

  def controls(self) -> list[Any]:
    return [self.run_button, self.cancel_button, self.progress, self.status]

  def fail(self, error: BaseException) -> None:
    """Shows `error` on one line, in the status and as a napari notification."""
    self.status.value = f"error: {one_line(error)}"
    self.progress.visible = False
    (show_info if isinstance(error, Cancelled) else show_error)(self.status.value)

  def report(self, done: int, total: int) -> None:
    """Called from the worker: moves the progress bar, or stops the work when Cancel was pressed."""
    if self._cancel.is_set():
      raise Cancelled("cancelled")
    self._signal.step.emit(done, total)

  def _show_progress(self, done: int, total: int) -> None:
    self.progress.max = max(total, 1)
    self.progress.value = min(done, total)

  def start(self) -> None:
    """Checks the inputs on the GUI thread (`prepare`), then runs `work` in a thread worker."""
    try:
      work = self.prepare()
    except InputError as e:
      self.fail(e)
      return
    self._cancel.clear()
    self.status.value = "running..."
    self.progress.value, self.progress.visible = 0, True
    self.run_button.enabled, self.cancel_button.enabled = False, True
    # errored connected here, so the worker does not also re-raise the error into Qt's event loop
    self.worker = thread_worker(work, connect={"returned": self._done, "errored": self.fail,
                                               "finished": self._finished})()

  def cancel(self) -> None:
    self._cancel.set()

  def _finished(self) -> None:
    self.run_button.enabled, self.cancel_button.enabled = True, False

  def _done(self, result: Any) -> None:
    try:
      self.show(result)
    except InputError as e:
      self.fail(e)
      return
    self.progress.visible = False

  def prepare(self) -> Callable[[], Any]:
    """The work to run in the worker (raises InputError for wrong inputs)."""
    raise NotImplementedError

  def show(self, result: Any) -> None:
    """Shows what the work returned (on the GUI thread)."""
    raise NotImplementedError

  def model_of(self, layer: Any) -> dict[str, Any]:
    """The model settings Segment stored on one of its layers (of a binary model)."""
    if layer is None or META not in layer.metadata:
      raise InputError("choose a probabilities layer made by the Segment widget (it knows its model)")
    meta = layer.metadata[META]
    if meta.get("classes", 1) > 1:
      raise InputError(f"layer {layer.name!r} comes from a {meta['classes']}-class model; scores, review and "
                       "explanations here take a binary model's probabilities (per-class scores: evaluate.py --split)")
    return meta

  def put_layer(self, kind: str, name: str, data: np.ndarray, **kwargs: Any) -> Any:
    """Adds a layer, or replaces the data and settings of the one of that name."""
    if name in self.viewer.layers:
      layer = self.viewer.layers[name]
      layer.data = data
      for key, value in kwargs.items():
        setattr(layer, key, value)
      return layer
    return getattr(self.viewer, f"add_{kind}")(data, name=name, **kwargs)

  def centre_on(self, layer: Any, point: tuple[float, float, float]) -> None:
    """Moves the view to the voxel `point` (z, y, x) of `layer` (a 2D layer ignores z)."""
    world = layer.data_to_world(point[-layer.ndim:])
    if layer.ndim == 3:
      self.viewer.dims.set_point(0, world[0])
    self.viewer.scene.camera.center = tuple(world[-2:])


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """magicgui Table data from rows of one shape."""
  columns = list(rows[0]) if rows else []
  return {"data": [[r[c] for c in columns] for r in rows], "index": list(range(len(rows))), "columns": columns}


def _squeezed(array: np.ndarray, ndim: int) -> np.ndarray:
  return array[0] if ndim == 2 else array


class SegmentWidget(Panel):
  """Model + image layer -> probabilities, mask and objects layers, as `evaluate.py --input` computes them;
  for a K-class model, K class probability layers and the class map (`Predictor.label_map`)."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__(viewer, cancellable=True)
    self.config = LineEdit(value=DEFAULT_CONFIG, label="config (file.py:variant)")
    self.model = LineEdit(value="", label="model (workdir or package)")
    self.image = create_widget(annotation=napari.layers.Image, label="image")
    self.objects = ComboBox(choices=OBJECTS, value=OBJECTS[0], label="objects")
    self.extend([self.config, self.model, self.image, self.objects, *self.controls()])

  def prepare(self) -> Callable[[], Any]:
    layer = self.image.value
    if not isinstance(layer, napari.layers.Image):
      raise InputError("choose an Image layer to segment")
    if layer.rgb:
      raise InputError(f"layer {layer.name!r} is RGB; segment a grey image or stack")
    spec, path, data = self.config.value, self.model.value, np.asarray(layer.data)
    layers.check_shape(data.shape, layer.name)
    layers.check_model_path(path)
    dims = 2 if self.objects.value == OBJECTS[0] else 3
    voxel = layers.layer_voxel_size(layer.scale)  # resampled to the model's voxel size where they differ

    def work() -> dict[str, Any]:
      config, predictor = layers.load_model(spec, path)
      predictor = predictor.on_input(voxel, f"layer {layer.name!r} scale")
      stack = layers.image_stack(data, layer.name)
      k = predictor.num_classes
      probs = np.empty(stack.shape if k == 1 else (*stack.shape, k), np.float32)
      self.report(0, len(stack))
      for z, page in enumerate(layers.calibrated_slices(predictor, stack)):
        probs[z] = page
        self.report(z + 1, len(stack))
      result = {"layer": layer, "probs": probs, "dims": dims, "summary": predictor.summary(),
                "meta": {"config": spec, "model": path, "image": layer.name, "dims": dims, "classes": k}}
      if k > 1:
        return {**result, "class_map": predictor.label_map(probs)}
      return {**result, "mask": predictor.segment(probs),
              "labels": layers.object_labels(probs, predictor, config, dims)}

    return work

  def show(self, r: dict[str, Any]) -> None:
    layer, ndim = r["layer"], r["layer"].ndim
    common = {"scale": layer.scale, "translate": layer.translate, "metadata": {META: r["meta"]}}
    if "class_map" in r:
      self._show_classes(r, common)
      return
    self.put_layer("image", f"{layer.name} probabilities", _squeezed(r["probs"], ndim), colormap="magma",
                   blending="additive", contrast_limits=(0.0, 1.0), **common)
    self.put_layer("labels", f"{layer.name} mask", _squeezed(r["mask"].astype(np.uint8), ndim), **common)
    self.put_layer("labels", f"{layer.name} objects", _squeezed(r["labels"], ndim), **common)
    s = r["summary"]
    area = f", per-section profiles of {s['min_area']} pixels or more" if r["dims"] == 2 else ""
    self.status.value = (f"step {s['step']}, threshold {s['threshold']:g} ({s['threshold_source']}), temperature "
                         f"{s['temperature']:.3g}: {int(r['labels'].max())} objects of {s['min_size']} voxels or more"
                         f"{area}; {s['voxel_size']['note']}")

  def _show_classes(self, r: dict[str, Any], common: dict[str, Any]) -> None:
    """A K-class model's layers: each class's probabilities (hidden until chosen) and the class map."""
    layer, ndim, k = r["layer"], r["layer"].ndim, r["meta"]["classes"]
    for c in range(k):
      self.put_layer("image", f"{layer.name} class {c} probabilities", _squeezed(r["probs"][..., c], ndim),
                     colormap="magma", blending="additive", contrast_limits=(0.0, 1.0), visible=False, **common)
    self.put_layer("labels", f"{layer.name} classes", _squeezed(r["class_map"], ndim), **common)
    pixels = np.bincount(r["class_map"].ravel(), minlength=k)
    self.status.value = (f"step {r['summary']['step']}, {k} classes (the most probable per pixel); pixels per class: "
                         + ", ".join(f"{c}: {n}" for c, n in enumerate(pixels)))


class ScoreWidget(Panel):
  """Probabilities + ground truth -> FP (red) / FN (blue) overlay, the report's instance scores, error objects."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__(viewer)
    self.prediction = create_widget(annotation=napari.layers.Image, label="probabilities")
    self.truth = create_widget(annotation=napari.layers.Labels, label="ground truth")
    self.objects = ComboBox(choices=OBJECTS, value=OBJECTS[0], label="objects")
    self.scores = Table(value=_table([]))
    self.errors = Table(value=_table([]))
    self.errors.native.cellClicked.connect(self._centre)
    self.extend([self.prediction, self.truth, self.objects, *self.controls(), Label(value="instance scores"),
                 self.scores, Label(value="errors (click to centre)"), self.errors])
    self.error_rows: list[dict[str, Any]] = []

  def prepare(self) -> Callable[[], Any]:
    meta = self.model_of(self.prediction.value)
    truth_layer = self.truth.value
    if not isinstance(truth_layer, napari.layers.Labels):
      raise InputError("choose the ground-truth Labels layer")
    prediction = self.prediction.value
    probs = layers.as_stack(prediction.data, prediction.name).astype(np.float32)
    truth = layers.truth_mask(truth_layer.data, probs.shape, truth_layer.name)
    dims = 2 if self.objects.value == OBJECTS[0] else 3

    def work() -> dict[str, Any]:
      config, predictor = layers.load_model(meta["config"], meta["model"])
      self.report(0, 2)
      pred = predictor.segment(probs)
      scores = layers.scores(probs, truth, predictor, config, layers.voxel_size(prediction.scale, config))
      self.report(1, 2)
      return {"overlay": layers.error_overlay(pred, truth), "scores": scores,
              "objects": layers.error_objects(pred, truth, predictor, config, dims)}

    return work

  def show(self, r: dict[str, Any]) -> None:
    prediction = self.prediction.value
    colours = DirectLabelColormap(color_dict={layers.FP: "red", layers.FN: "blue", None: "transparent"})
    self.put_layer("labels", f"{prediction.name} errors", _squeezed(r["overlay"], prediction.ndim),
                   scale=prediction.scale, translate=prediction.translate, colormap=colours)
    self.scores.value = _table(layers.score_rows(r["scores"]))
    self.error_rows = r["objects"]
    self.errors.value = _table(self.error_rows)
    p = r["scores"]["pixel"]
    self.status.value = f"pixels: Dice {p['dice']:.4f}, {p['fp']} FP (red), {p['fn']} FN (blue)"

  def _centre(self, row: int, _column: int = 0) -> None:
    o = self.error_rows[row]
    self.centre_on(self.prediction.value, (o["z"], o["y"], o["x"]))


class ReviewWidget(Panel):
  """The report's review list (least confident objects first): centre, accept, delete, save the corrected mask."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__(viewer)
    self.prediction = create_widget(annotation=napari.layers.Image, label="probabilities")
    self.labels = create_widget(annotation=napari.layers.Labels, label="objects to edit")
    self.truth = create_widget(annotation=napari.layers.Labels, label="ground truth (optional)",
                               options={"nullable": True})
    self.objects = ComboBox(choices=OBJECTS, value=OBJECTS[0], label="objects")
    self.top_k = SpinBox(value=0, min=0, max=100000, label="list length (0: eval.review_top_k)")
    self.table = Table(value=_table([]))
    self.table.native.cellClicked.connect(self._centre)
    self.accept_button, self.delete_button = PushButton(text="Accept"), PushButton(text="Delete")
    self.accept_button.changed.connect(lambda: self.decide("accepted"))
    self.delete_button.changed.connect(lambda: self.decide("deleted"))
    self.path = LineEdit(value="corrected_mask.tif", label="save as (.tif or .ome.zarr)")
    self.save_button = PushButton(text="Save mask")
    self.save_button.changed.connect(self.save)
    self.extend([self.prediction, self.labels, self.truth, self.objects, self.top_k, *self.controls(), self.table,
                 Container(widgets=[self.accept_button, self.delete_button], layout="horizontal"), self.path,
                 self.save_button])
    self.rows: list[dict[str, Any]] = []
    self.voxel: tuple[float, float, float] = (1.0, 1.0, 1.0)

  def prepare(self) -> Callable[[], Any]:
    meta = self.model_of(self.prediction.value)
    if not isinstance(self.labels.value, napari.layers.Labels):
      raise InputError("choose the objects Labels layer to edit (Segment's '... objects')")
    prediction, truth_layer = self.prediction.value, self.truth.value
    probs = layers.as_stack(prediction.data, prediction.name).astype(np.float32)
    truth = None if truth_layer is None else layers.truth_mask(truth_layer.data, probs.shape, truth_layer.name)
    image_layer = self.viewer.layers[meta["image"]] if meta["image"] in self.viewer.layers else None
    image = None if image_layer is None else np.asarray(image_layer.data)
    dims, top_k = 2 if self.objects.value == OBJECTS[0] else 3, self.top_k.value

    def work() -> dict[str, Any]:
      config, predictor = layers.load_model(meta["config"], meta["model"])
      voxel = layers.voxel_size(prediction.scale, config)
      unc = None
      if config.eval.uncertainty == "tta":  # the report's per-pixel disagreement over the dihedral transforms
        if image is None:
          raise InputError(f"eval.uncertainty='tta' needs the image layer {meta['image']!r}; add it back or set "
                           "eval.uncertainty='none' in the config")
        unc = uncertainty.tta_probabilities(predictor, layers.image_stack(image, meta["image"]))[1]
      self.report(1, 2)
      labels = layers.object_labels(probs, predictor, config, dims)
      rows = layers.review_list(probs, labels, truth, predictor, config, voxel, dims,
                                top_k or config.eval.review_top_k, unc)
      return {"labels": labels, "rows": rows, "voxel": voxel}

    return work

  def show(self, r: dict[str, Any]) -> None:
    layer = self.labels.value
    layer.data = _squeezed(r["labels"], layer.ndim).astype(layer.data.dtype if layer.data.dtype.kind in "iu"
                                                          else np.int32)
    self.voxel = r["voxel"]
    self.rows = [{"status": "", **row} for row in r["rows"]]
    self._refresh_table()
    self.status.value = f"{len(self.rows)} objects to review, least confident first"

  def _refresh_table(self) -> None:
    shown = lambda v: f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else v)
    self.table.value = _table([{k: shown(v) for k, v in row.items()} for row in self.rows])

  def _selected_row(self) -> int | None:
    rows = sorted({i.row() for i in self.table.native.selectedIndexes()})
    return rows[0] if rows else None

  def decide(self, status: str, row: int | None = None) -> None:
    """Marks object `row` (default: the selected one) accepted, or deleted from the objects layer."""
    row = self._selected_row() if row is None else row
    if row is None or not 0 <= row < len(self.rows):
      self.fail(InputError("select an object of the review list first"))
      return
    if status == "deleted":
      layer = self.labels.value
      data = np.asarray(layer.data)
      data[data == self.rows[row]["label"]] = 0
      layer.data = data
    self.rows[row]["status"] = status
    self._refresh_table()

  def save(self) -> None:
    """Writes the objects layer (as edited) as a 0/255 mask the data loader reads (TIFF or OME-Zarr)."""
    layer = self.labels.value
    if not isinstance(layer, napari.layers.Labels):
      self.fail(InputError("choose the objects Labels layer to save"))
      return
    try:
      kind = layers.save_mask(np.asarray(layer.data), self.path.value, self.voxel)
    except (InputError, OSError) as e:
      self.fail(e)
      return
    self.status.value = f"saved {self.path.value} ({kind}, 0/255)"

  def _centre(self, row: int, _column: int = 0) -> None:
    o = self.rows[row]
    self.centre_on(self.labels.value, (o["centroid_z_px"], o["centroid_y_px"], o["centroid_x_px"]))


class ExplainWidget(Panel):
  """One object of the current slice explained as `explain.py` explains it: IG and Grad-CAM maps as layers,
  the top filters and the sanity check as tables."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__(viewer, cancellable=True)
    self.prediction = create_widget(annotation=napari.layers.Image, label="probabilities")
    self.truth = create_widget(annotation=napari.layers.Labels, label="ground truth (optional)",
                               options={"nullable": True})
    self.object = LineEdit(value="1", label="object (id, y,x or box)")
    self.rank_filters = CheckBox(value=True, label="rank filters")
    self.sanity = CheckBox(value=True, label="sanity check")
    self.filters = Table(value=_table([]))
    self.checks = Table(value=_table([]))
    self.extend([self.prediction, self.truth, self.object, self.rank_filters, self.sanity, *self.controls(),
                 Label(value="top filters"), self.filters, Label(value="sanity checks"), self.checks])

  def current_slice(self, ndim: int) -> int:
    return int(self.viewer.dims.current_step[0]) if ndim == 3 else 0

  def prepare(self) -> Callable[[], Any]:
    meta = self.model_of(self.prediction.value)
    if meta["image"] not in self.viewer.layers:
      raise InputError(f"the image layer {meta['image']!r} that was segmented is gone; add it back")
    image_layer, truth_layer = self.viewer.layers[meta["image"]], self.truth.value
    data = np.asarray(image_layer.data)
    z = self.current_slice(image_layer.ndim)
    truth = None
    if truth_layer is not None:
      truth = layers.truth_mask(truth_layer.data, layers.as_stack(data, image_layer.name).shape, truth_layer.name)
      truth = truth[z].astype(bool)
    spec, rank, sanity = self.object.value, self.rank_filters.value, self.sanity.value

    def work() -> dict[str, Any]:
      config, predictor = layers.load_model(meta["config"], meta["model"])
      image = layers.image_stack(data, image_layer.name)[z]
      total = explanation.explain_steps(predictor.model, config.explain, rank, sanity)
      done = [0]

      def step(_name: str) -> None:
        done[0] += 1
        self.report(done[0], total)

      self.report(0, total)
      target, result, top = layers.explain_object(config, predictor, image, truth, spec, rank, sanity, step)
      return {"target": target, "result": result, "top": top, "z": z, "layer": image_layer}

    return work

  def show(self, r: dict[str, Any]) -> None:
    layer, target, result = r["layer"], r["target"], r["result"]
    y0, x0 = target.box[:2]
    offset = (r["z"], y0, x0)[-layer.ndim:]
    translate = np.asarray(layer.translate) + np.asarray(offset) * np.asarray(layer.scale)
    for name, values in result["maps"].items():
      if name.startswith(("ig_", "cam_")):
        values = np.asarray(values, np.float32)
        limit = float(np.abs(values).max()) or 1.0
        self.put_layer("image", f"{target.name} {name}", values[None] if layer.ndim == 3 else values,
                       scale=layer.scale, translate=translate, colormap="twilight_shifted",
                       contrast_limits=(-limit, limit), blending="additive", opacity=0.7)
    self.filters.value = _table(r["top"])
    checks = [{"check": "deletion (attribution vs random AUC)",
               "result": f"{result['deletion']['auc']['attribution']:.4g} vs {result['deletion']['auc']['random']:.4g}",
               "passed": "yes" if result["deletion"]["passed"] else "NO"}]
    checks += [{"check": f"randomised to {row['stage']} (Spearman, signed / magnitude)",
                "result": f"{row['spearman']:.2f} / {row['spearman_abs']:.2f}", "passed": ""}
               for row in result.get("randomisation", [])]
    self.checks.value = _table(checks)
    self.status.value = f"{target.title}: score {result['score']:.4g}"


class FineTuneWidget(Panel):
  """Trains from a model's weights (`train.init_from`) in a worker: a short run on corrected masks."""

  def __init__(self, viewer: napari.viewer.Viewer):
    super().__init__(viewer, cancellable=True)
    self.config = LineEdit(value=DEFAULT_CONFIG, label="config (file.py:variant)")
    self.init_from = LineEdit(value="", label="start from (workdir or package)")
    self.data_root = LineEdit(value="", label="data folder (empty: the config's)")
    self.workdir = LineEdit(value="runs/finetuned", label="new workdir")
    self.steps = SpinBox(value=100, min=1, max=1_000_000, label="steps")
    self.extend([self.config, self.init_from, self.data_root, self.workdir, self.steps, *self.controls()])

  def prepare(self) -> Callable[[], Any]:
    config = layers.load_config(self.config.value)
    config.train.init_from = self.init_from.value
    if not config.train.init_from:
      raise InputError("give the model to start from (a workdir, or a package made by export.py: its .zip or "
                       "folder)")
    config.train.steps, config.train.budget_minutes = self.steps.value, 0.0
    if self.data_root.value:
      config.data.name, config.data.root = "folder", self.data_root.value
    config_check.validate(config)
    workdir, steps = self.workdir.value, config.train.steps

    def work() -> dict[str, Any]:
      self.report(0, steps)
      stop = lambda step, _scores: self._cancel.is_set() or self.report(step, steps)  # True: stop after this checkpoint
      return trainer.train_and_evaluate(config, workdir, on_eval=stop)

    return work

  def show(self, result: dict[str, Any]) -> None:
    self.status.value = (f"trained to step {result['step']} in {self.workdir.value}: val Dice "
                         f"{result.get('dice', float('nan')):.4f}")

"""Screenshots of the napari plugin's five widgets at work on a VNC testing slice, for docs/napari.md:

  xvfb-run -a python scripts/napari_screenshots.py --model=runs/fine_tune/base --out=docs/images/napari

Opens a napari viewer on the X display `xvfb-run -a` starts (Qt's xcb platform: with QT_QPA_PLATFORM=offscreen,
as the tests run, the widgets draw but napari's OpenGL canvas came out black in the screenshots), adds testing slice --slice of ../shared/data/vnc as the layer `em` and its ground truth as
`truth`, docks Segment, Score, Review, Why and Fine-tune, runs the first four in turn with the trained model
--model (a workdir, e.g. the base run of benchmarks/fine_tune.py) and fills in Fine-tune's form without running
it. After each widget it saves the window (the widgets are tabs on the right, that one in front) as OUT/<widget>.png,
downscaled and reduced to 256 colours until the file is under --max_kb.

The widgets read a config file: this script writes OUT_CONFIG (default runs/napari_screenshots/vnc.py), the
`vnc` variant with the model's last checkpoint (`eval.checkpoint='latest'`, the weights fine-tuning starts
from) and a 128-pixel explanation crop with 8-step randomisation maps (the 1024-pixel default window would
take many minutes per object on a 2-core CPU). Run it from the repository root (the config imports `configs`).
"""

import os
import sys
import time
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")  # on Xvfb's display; Qt's offscreen platform drew a black canvas

import numpy as np  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top
from PIL import Image  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''"""The VNC config of the napari screenshots (written by scripts/napari_screenshots.py)."""

import importlib.util

_spec = importlib.util.spec_from_file_location("unet2d", {unet2d!r})
unet2d = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(unet2d)


def get_config():
  c = unet2d.get_config("vnc")
  c.eval.checkpoint = "latest"  # the weights benchmarks/fine_tune.py fine-tunes from
  c.explain.crop = 128  # pixels around the object explained (default: the 1024-pixel window)
  c.explain.sanity_steps = 8
  return c
'''

flags.DEFINE_string("model", "runs/fine_tune/base", "Trained workdir (or export.py package) the widgets use.")
flags.DEFINE_string("data", "../shared/data/vnc", "Folder of testing.tif and testing_groundtruth.tif.")
flags.DEFINE_integer("slice", 0, "Testing slice shown.")
flags.DEFINE_string("object", "1", "Object the Why widget explains (an id of the slice's predicted objects).")
flags.DEFINE_string("out", "docs/images/napari", "Folder of the PNGs.")
flags.DEFINE_string("out_config", "runs/napari_screenshots/vnc.py", "Config file written for the widgets.")
flags.DEFINE_string("tune_data", "runs/fine_tune/corrected", "Data folder shown in the Fine-tune form.")
flags.DEFINE_integer("max_kb", 300, "Largest PNG size in KB.")
flags.DEFINE_integer("width", 1800, "Window width, pixels.")
flags.DEFINE_integer("height", 1000, "Window height, pixels.")
flags.DEFINE_integer("timeout", 1800, "Seconds one widget's run may take.")
FLAGS = flags.FLAGS


def wait(panel: Any, timeout: float) -> None:
  """Runs the Qt event loop until `panel`'s worker has finished; exits on an error or after `timeout` seconds."""
  from qtpy.QtWidgets import QApplication  # pylint: disable=g-import-not-at-top
  start = time.time()
  while not panel.run_button.enabled:
    QApplication.processEvents()
    time.sleep(0.05)
    if time.time() - start > timeout:
      sys.exit(f"{type(panel).__name__} did not finish in {timeout} s")
  QApplication.processEvents()
  if panel.status.value.startswith("error"):
    sys.exit(f"{type(panel).__name__}: {panel.status.value}")
  print(f"{type(panel).__name__}: {panel.status.value} ({time.time() - start:.0f} s)", flush=True)


def settle(seconds: float = 1.0) -> None:
  """Lets Qt lay out and draw for `seconds`."""
  from qtpy.QtWidgets import QApplication  # pylint: disable=g-import-not-at-top
  end = time.time() + seconds
  while time.time() < end:
    QApplication.processEvents()
    time.sleep(0.02)


def save_png(rgba: np.ndarray, path: str, max_kb: int) -> tuple[int, int, int]:
  """Writes the screenshot u8[H, W, 4] as a 256-colour PNG, downscaled until it is under `max_kb`;
  returns (width, height, bytes)."""
  image = Image.fromarray(np.asarray(rgba)[..., :3])
  scale = 1.0
  while True:
    size = (round(image.width * scale), round(image.height * scale))
    small = image.resize(size, Image.Resampling.LANCZOS) if scale < 1.0 else image
    small.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)
    if os.path.getsize(path) <= max_kb * 1024 or scale < 0.3:
      return (*size, os.path.getsize(path))
    scale *= 0.85


def main(argv: list[str]) -> None:
  del argv
  if not os.environ.get("DISPLAY"):
    sys.exit("napari's canvas needs OpenGL from an X display: run under `xvfb-run -a`")
  import napari  # pylint: disable=g-import-not-at-top
  import tifffile  # pylint: disable=g-import-not-at-top
  from unet_jax.viewer import widgets  # pylint: disable=g-import-not-at-top

  args = FLAGS
  os.makedirs(os.path.dirname(os.path.abspath(args.out_config)), exist_ok=True)
  with open(args.out_config, "w") as f:
    f.write(CONFIG.replace("{unet2d!r}", repr(os.path.join(ROOT, "configs", "unet2d.py"))))
  spec = args.out_config  # no variant: the file's get_config()
  os.makedirs(args.out, exist_ok=True)
  image = tifffile.imread(os.path.join(args.data, "testing.tif"))[args.slice]
  truth = (tifffile.imread(os.path.join(args.data, "testing_groundtruth.tif"))[args.slice] > 0).astype(np.uint8)

  viewer = napari.Viewer(title="unet-jax", show=True)
  viewer.add_image(image, name="em", scale=(4.6, 4.6))
  docks: dict[str, Any] = {}
  panels: dict[str, Any] = {}
  for name, kind in (("Segment", widgets.SegmentWidget), ("Score", widgets.ScoreWidget),
                     ("Review", widgets.ReviewWidget), ("Why", widgets.ExplainWidget),
                     ("Fine-tune", widgets.FineTuneWidget)):
    panels[name] = kind(viewer)
    docks[name] = viewer.window.add_dock_widget(panels[name], name=name, area="right", tabify=bool(docks))
    docks[name].setMinimumWidth(440)
  viewer.window.resize(args.width, args.height)

  def shoot(name: str, visible: tuple[str, ...]) -> None:
    docks[name].raise_()  # the docks are tabs: bring this one to the front
    for layer in viewer.layers:
      layer.visible = layer.name in visible
    settle()
    path = os.path.join(args.out, name.lower().replace("-", "_") + ".png")
    width, height, size = save_png(viewer.screenshot(canvas_only=False, flash=False), path, args.max_kb)
    print(f"wrote {path} ({width} x {height}, {size // 1024} KB)", flush=True)

  seg = panels["Segment"]
  seg.reset_choices()
  seg.config.value, seg.model.value, seg.image.value = spec, args.model, viewer.layers["em"]
  viewer.reset_view()
  seg.start()
  wait(seg, args.timeout)
  shoot("Segment", ("em", "em probabilities", "em objects"))

  viewer.add_labels(truth, name="truth", scale=(4.6, 4.6), opacity=0.4)
  score = panels["Score"]
  score.reset_choices()
  score.prediction.value, score.truth.value = viewer.layers["em probabilities"], viewer.layers["truth"]
  score.start()
  wait(score, args.timeout)
  shoot("Score", ("em", "em probabilities errors"))

  review = panels["Review"]
  review.reset_choices()
  review.prediction.value, review.labels.value = viewer.layers["em probabilities"], viewer.layers["em objects"]
  review.truth.value = viewer.layers["truth"]
  review.start()
  wait(review, args.timeout)
  if review.rows:
    review.table.native.selectRow(0)
    review._centre(0)  # pylint: disable=protected-access  (what clicking the first row does)
    viewer.camera.zoom *= 3
  shoot("Review", ("em", "em objects"))

  why = panels["Why"]
  why.reset_choices()
  why.prediction.value, why.truth.value, why.object.value = viewer.layers["em probabilities"], None, args.object
  why.rank_filters.value = False  # ranking every filter by validation Dice costs minutes more on 2 cores
  why.start()
  wait(why, args.timeout)
  maps = [layer for layer in viewer.layers if " ig_black" in layer.name]
  if maps:
    viewer.reset_view()
    centre = maps[0].data_to_world(np.asarray(maps[0].data.shape[-2:]) / 2)
    viewer.camera.center = tuple(centre[-2:])
    viewer.camera.zoom *= 4
  shoot("Why", ("em", *(layer.name for layer in maps)))

  tune = panels["Fine-tune"]
  tune.config.value, tune.init_from.value, tune.data_root.value = spec, args.model, args.tune_data
  tune.workdir.value, tune.steps.value = "runs/fine_tune/tuned_in_napari", 100
  viewer.reset_view()
  shoot("Fine-tune", ("em", "em objects"))
  viewer.close()


if __name__ == "__main__":
  app.run(main)

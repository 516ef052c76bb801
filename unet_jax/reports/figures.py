"""Report pictures (PNG): prediction-vs-truth overlays, a montage, intensity histograms, training curves,
reliability diagrams, uncertainty maps and class maps.

Overlay colours (the seed's): true positives green, false positives red, false negatives blue,
blended over the grey EM image; true negatives keep their grey. Class maps tint each class
but 0 (the rest, e.g. cytoplasm, keeps the grey) with its colour of matplotlib's tab10 (tab20
beyond 10 classes). Pictures are downscaled so that their longest side is at most `max_px`
pixels, which keeps a report folder small enough to commit.
Plots use matplotlib's object API (Figure.savefig), not pyplot: no GUI backend, no global state.
"""

import math
import os
from typing import Any, Sequence

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from skimage import transform

from unet_jax.errors import InputError
from unet_jax.io import runlog

TP_RGB = (0, 255, 0)
FP_RGB = (255, 0, 0)
FN_RGB = (0, 0, 255)
LEGEND = (("true positive", TP_RGB), ("false positive", FP_RGB), ("false negative", FN_RGB))


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """RGB u8[H, W, 3]: grey `image` f32[H, W] in [0, 1] with TP/FP/FN pixels tinted by `alpha`."""
  if not image.shape == pred.shape == truth.shape or image.ndim != 2:
    raise InputError(f"overlay needs 2D image, prediction and truth of one shape, got "
                     f"{image.shape}, {pred.shape}, {truth.shape}")
  pred, truth = pred.astype(bool), truth.astype(bool)
  grey = np.repeat(np.clip(image, 0.0, 1.0)[..., None] * 255.0, 3, axis=-1)
  colour = np.zeros_like(grey)
  colour[pred & truth] = TP_RGB
  colour[pred & ~truth] = FP_RGB
  colour[~pred & truth] = FN_RGB
  tinted = np.where((pred | truth)[..., None], (1.0 - alpha) * grey + alpha * colour, grey)
  return np.round(tinted).astype(np.uint8)


def class_colours(num_classes: int) -> np.ndarray:
  """RGB u8[K, 3] of classes 0..K-1: tab10's colours (tab20's beyond 10 classes, repeated beyond 20)."""
  palette = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"].colors
  return np.round(np.array([palette[c % len(palette)] for c in range(num_classes)]) * 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """RGB u8[H, W, 3]: grey `image` f32[H, W] in [0, 1] with the pixels of each class id > 0 of `labels` i[H, W]
  tinted by `alpha` with its row of `colours` u8[K, 3]; class 0 keeps the grey."""
  if image.shape != labels.shape or image.ndim != 2:
    raise InputError(f"a class overlay needs a 2D image and label map of one shape, got {image.shape}, {labels.shape}")
  grey = np.repeat(np.clip(image, 0.0, 1.0)[..., None] * 255.0, 3, axis=-1)
  tinted = np.where((labels > 0)[..., None], (1.0 - alpha) * grey + alpha * np.asarray(colours, np.float64)[labels],
                    grey)
  return np.round(tinted).astype(np.uint8)


def save_class_panels(path: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, names: Sequence[str],
                      max_px: int, title: str = "") -> None:
  """One slice of a class map as one PNG: the true and the predicted classes in colour, then each class > 0's
  true positives, false positives and false negatives (`overlay`); every panel at most `max_px` on a side.

  `image` f32[H, W] in [0, 1], `truth` and `pred` class ids i[H, W]; `names` one per class.
  """
  colours = class_colours(len(names))
  panels = [("truth", label_overlay(image, truth, colours)), ("prediction", label_overlay(image, pred, colours))]
  panels += [(f"{names[c]}: TP / FP / FN", overlay(image, pred == c, truth == c)) for c in range(1, len(names))]
  columns = len(panels) if len(panels) <= 3 else min(3, math.ceil(len(panels) / 2))  # 4 panels: 2 x 2
  rows = math.ceil(len(panels) / columns)
  side, margin = max_px / 100 * 0.75, 0.4  # inches per panel at 100 dpi; for the title, and for the legend
  height = (side + 0.3) * rows + 2 * margin  # 0.3: each panel's title
  fig = Figure(figsize=(side * columns, height))
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax in axes:
    ax.axis("off")
  for ax, (name, panel) in zip(axes, panels):
    ax.imshow(downscale(panel, max_px), interpolation="nearest")
    ax.set_title(name, fontsize=9)
  handles = [Patch(color=colours[c] / 255, label=f"{c} {n}") for c, n in enumerate(names) if c]
  handles += [Patch(color=np.array(c) / 255, label=n) for n, c in LEGEND]
  fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False, fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, margin / height, 1, 1 - margin / height))
  fig.savefig(path, dpi=100)


def downscale(picture: np.ndarray, max_px: int) -> np.ndarray:
  """`picture` [H, W(, C)] resized (anti-aliased) so that max(H, W) <= max_px; same dtype."""
  h, w = picture.shape[:2]
  factor = max(h, w) / max_px
  if factor <= 1:
    return picture
  shape = (max(1, round(h / factor)), max(1, round(w / factor))) + picture.shape[2:]
  resized = transform.resize(picture.astype(np.float32), shape, anti_aliasing=True, preserve_range=True)
  return np.round(resized).astype(picture.dtype) if np.issubdtype(picture.dtype, np.integer) else resized


def save_image(path: str, rgb: np.ndarray) -> None:
  """Writes an RGB u8[H, W, 3] picture as PNG, pixel for pixel."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  matplotlib.image.imsave(path, rgb)


def _legend(fig: Figure) -> None:
  fig.legend(handles=[Patch(color=np.array(c) / 255, label=n) for n, c in LEGEND],
             loc="lower center", ncol=3, frameon=False)


def save_montage(path: str, panels: Sequence[np.ndarray], titles: Sequence[str], columns: int = 4) -> None:
  """A grid of RGB panels with titles and the overlay colour legend, as one PNG."""
  if not panels:
    raise InputError("a montage needs at least one panel")
  columns = min(columns, len(panels))
  rows = math.ceil(len(panels) / columns)
  fig = Figure(figsize=(3.2 * columns, 3.4 * rows + 0.4))
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax in axes:
    ax.axis("off")
  for ax, panel, title in zip(axes, panels, titles):
    ax.imshow(panel, interpolation="nearest")
    ax.set_title(title, fontsize=9)
  _legend(fig)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=100)


def save_intensity_histogram(path: str, image: np.ndarray, mask: np.ndarray, bins: int = 64) -> None:
  """Normalised intensity histograms of mitochondria (mask) vs the rest of `image` in [0, 1]."""
  image, mask = np.asarray(image), np.asarray(mask).astype(bool)
  fig = Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  edges = np.linspace(0.0, 1.0, bins + 1)
  for values, name, colour in ((image[mask], "mitochondria", "tab:orange"), (image[~mask], "rest", "tab:gray")):
    if values.size:
      ax.hist(values, edges, density=True, histtype="step", linewidth=1.5, color=colour,
              label=f"{name} ({values.size:,} px, mean {values.mean():.3f})")
  ax.set_xlabel("normalised intensity")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def save_reliability_diagram(path: str, curves: dict[str, dict[str, Any]], title: str = "",
                             observed: str = "observed fraction of mitochondrion") -> None:
  """Observed foreground fraction against mean probability per bin, one line per curve, and pixel counts.

  `curves` maps a legend label (e.g. 'before, ECE 0.031') to reliability bins with 'mean_prob',
  'fraction' and 'count' per bin (calibration.reliability_bins or its JSON lists; empty bins None/NaN);
  `observed` names the y axis.
  """
  fig = Figure(figsize=(5, 6))
  top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
  for label, bins in curves.items():
    mean = np.array(bins["mean_prob"], np.float64)
    fraction = np.array(bins["fraction"], np.float64)
    full = np.asarray(bins["count"]) > 0
    top.plot(mean[full], fraction[full], marker="o", markersize=3, label=label)
    bottom.plot(mean[full], np.asarray(bins["count"])[full], marker="o", markersize=3)
  top.set_ylabel(observed)
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.legend(fontsize=8, loc="upper left")
  top.grid(alpha=0.3)
  top.set_title(title, fontsize=9)
  bottom.set_yscale("log")
  bottom.set_xlabel("predicted probability (bin mean)")
  bottom.set_ylabel("pixels")
  bottom.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def save_uncertainty_panels(path: str, overlay_rgb: np.ndarray, maps: Sequence[tuple[str, np.ndarray]],
                            max_px: int, vmax: float = 0.25) -> None:
  """The error overlay u8[H, W, 3] next to uncertainty maps f32[H, W] (colour bar 0 to `vmax`), as one PNG.

  `maps` pairs a title with a map; every panel is downscaled to at most `max_px` on its longest side.
  One fixed scale for every slice and run, so pictures compare; values above `vmax` show its colour.
  """
  panels = 1 + len(maps)
  fig = Figure(figsize=(3.6 * panels, 3.9))
  axes = fig.subplots(1, panels, squeeze=False).ravel()
  axes[0].imshow(downscale(overlay_rgb, max_px), interpolation="nearest")
  axes[0].set_title("errors (TP green, FP red, FN blue)", fontsize=9)
  for ax, (title, values) in zip(axes[1:], maps):
    shown = ax.imshow(downscale(np.asarray(values, np.float32), max_px), cmap="magma", vmin=0.0, vmax=vmax,
                      interpolation="nearest")
    ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, extend="max")
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def save_training_curves(path: str, log_path: str) -> None:
  """Loss and validation Dice against step and against training minutes, as one PNG."""
  train, val = runlog.read(log_path)
  fig = Figure(figsize=(9, 6))
  axes = fig.subplots(2, 2, sharey="row")
  for row, (records, key, name) in enumerate(((train, "loss", "training loss"), (val, "val_dice", "val Dice"))):
    for col, x in enumerate(("step", "minutes")):
      ax = axes[row, col]
      ax.plot([r[x] for r in records], [r[key] for r in records], marker="." if row else None)
      ax.set_xlabel("step" if x == "step" else "training minutes")
      ax.set_ylabel(name)
      ax.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(log_path))))
  fig.tight_layout()
  fig.savefig(path, dpi=100)

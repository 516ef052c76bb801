"""Morphometry of mitochondria: size, shape and position of each instance, CSV tables, summaries.

Physical sizes use the voxel size (z, y, x) in nm (config.data.voxel_size_nm). A 2D instance (one
slice) is a slab one section thick, so its volume is its area times the section thickness. The
equivalent cube side is the cube root of the volume, in nm and in in-plane pixels (divided by the
x pixel size): 13 million nm^3 is a cube of 235 nm, 48 px at 4.9 nm per pixel.
Positions are in voxels (z, y, x); bounding boxes are [start, end) as in numpy slicing.
"""

import csv
import os
from typing import Any, Sequence

import numpy as np
from skimage import measure as skmeasure

from unet_jax.errors import InputError

SUMMARY_COLUMNS = ("volume_nm3", "cube_side_px", "max_area_nm2")


def measure(labels: np.ndarray, voxel_size_nm: Sequence[float]) -> dict[str, np.ndarray]:
  """Columns of one row per instance of `labels` i32[Z, H, W] (labels > 0, gaps allowed: one row per label present).

  label, voxels, volume_nm3, cube_side_nm, cube_side_px, slices (number of slices it spans),
  max_area_px, mean_area_px (over those slices), max_area_nm2, centroid_{z,y,x}_px,
  bbox_{z,y,x}{0,1} (voxels, end exclusive).
  """
  if len(voxel_size_nm) != 3 or min(voxel_size_nm) <= 0:
    raise InputError(f"voxel_size_nm must be three positive sizes (z, y, x) in nm, got {voxel_size_nm!r}")
  vz, vy, vx = (float(v) for v in voxel_size_nm)
  if labels.ndim != 3:
    raise InputError(f"morphometry needs labels [Z, H, W], got shape {labels.shape}")
  if labels.size and labels.min() < 0:
    raise InputError(f"labels must be >= 0 (0 = background), found {labels.min()}")
  props = skmeasure.regionprops_table(labels, properties=("label", "area", "centroid", "bbox"))
  n = int(labels.max(initial=0))
  areas = np.stack([np.bincount(s.ravel(), minlength=n + 1) for s in labels])[:, props["label"]]  # [Z, rows]
  slices = np.count_nonzero(areas, axis=0)
  voxels = props["area"].astype(np.int64)
  volume = voxels * vz * vy * vx
  side = np.cbrt(volume)
  table = {"label": props["label"].astype(np.int64), "voxels": voxels, "volume_nm3": volume,
           "cube_side_nm": side, "cube_side_px": side / vx, "slices": slices,
           "max_area_px": areas.max(0, initial=0), "mean_area_px": voxels / np.maximum(slices, 1),
           "max_area_nm2": areas.max(0, initial=0) * vy * vx}
  for i, axis in enumerate("zyx"):
    table[f"centroid_{axis}_px"] = props[f"centroid-{i}"]
  for i, axis in enumerate("zyx"):
    table[f"bbox_{axis}0"] = props[f"bbox-{i}"].astype(np.int64)
    table[f"bbox_{axis}1"] = props[f"bbox-{i + 3}"].astype(np.int64)
  return table


def summarize(table: dict[str, np.ndarray], columns: Sequence[str] = SUMMARY_COLUMNS) -> dict[str, dict[str, Any]]:
  """Count, mean, std, min, quartiles and max of each column (None values when there are no rows)."""
  out = {}
  for name in columns:
    values = np.asarray(table[name], np.float64)
    if not values.size:
      out[name] = {"count": 0, **dict.fromkeys(("mean", "std", "min", "q25", "median", "q75", "max"))}
      continue
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    out[name] = {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
                 "min": float(values.min()), "q25": float(q25), "median": float(median),
                 "q75": float(q75), "max": float(values.max())}
  return out


def write_csv(path: str, table: dict[str, np.ndarray]) -> None:
  """Writes the columns of `table` as a CSV with a header row (floats to 6 significant digits)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  columns = [np.asarray(v) for v in table.values()]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(table.keys())
    for row in zip(*columns):
      writer.writerow(f"{v:.6g}" if isinstance(v, np.floating) else v for v in row)

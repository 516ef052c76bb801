"""The explanation report: one PNG panel per object, filter pictures, CSV rankings, explain.json, explain.md.

Pictures use matplotlib's object API (no GUI, no global state), saved as 256-colour PNGs. A panel is
laid out in pixels from the crop's size: every map shows each crop pixel on at least one screen pixel
(small crops enlarged by a whole factor to MIN_MAP_PX), all text is FONT_PT points or more, and the
deletion curves' legend sits below their plot, clear of every map. Attribution maps are drawn with a
diverging colour map centred on 0 (red: raises the object's score, blue: lowers it), each scaled to its
own 99th percentile of magnitude; Grad-CAM maps (>= 0) with a sequential one. The object's outline is
drawn on the input.
"""

import io
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from unet_jax.explain import probe
from unet_jax.network.model import UNet
from unet_jax.scores import morphometry

DPI = 100  # pixels per inch of the saved PNGs; panel sizes below are in these pixels
FONT_PT = 9  # the smallest text size of every picture (titles, ticks, labels, legend)
MIN_MAP_PX = 180  # a map's shorter on-screen side at least (whole-factor enlargement of small crops)
LINE_PX = math.ceil(1.4 * FONT_PT * DPI / 72)  # one line of FONT_PT text
GAP_PX, MARGIN_PX = 16, 10  # between cells, around the panel
PLOT_PX = {"width": 340, "height": 150, "left": 80, "bottom": 2 * LINE_PX + 12}  # the deletion plot's cell


def _save(fig: Figure, path: str) -> None:
  """Writes `fig` as a 256-colour PNG (a third of the size of matplotlib's RGBA PNG)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=DPI, format="png")
  buffer.seek(0)
  Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def _show(ax: Any, picture: np.ndarray, title: str, kind: str = "grey", outline: np.ndarray | None = None) -> None:
  """Draws a map on `ax`: 'grey' (image in [0, 1]), 'prob' ([0, 1]), 'signed' (centred on 0) or 'positive'."""
  if kind == "signed":
    limit = float(np.percentile(np.abs(picture), 99)) or 1.0
    ax.imshow(picture, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
  elif kind == "positive":
    ax.imshow(picture, cmap="inferno", vmin=0, vmax=float(picture.max()) or 1.0, interpolation="nearest")
  else:
    ax.imshow(picture, cmap="gray" if kind == "grey" else "viridis", vmin=0, vmax=1, interpolation="nearest")
  if outline is not None and outline.any():
    ax.contour(outline.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
  ax.set_title(title, fontsize=FONT_PT)
  ax.axis("off")


def save_object_panel(path: str, title: str, crop: dict[str, np.ndarray], result: dict[str, Any]) -> None:
  """One object's panel (`object_panel`) as a PNG."""
  _save(object_panel(title, crop, result), path)


def object_panel(title: str, crop: dict[str, np.ndarray], result: dict[str, Any]) -> Figure:
  """One object's panel: input, probability, truth, the attribution maps, deletion curves, randomisation.

  Laid out in pixels (module docstring): maps of the crop f32[h, w] at a whole zoom >= 1, titles above
  them, the deletion plot with its axis labels and, below it, its legend.
  """
  maps = result["maps"]
  first = [(crop["image"], "input", "grey"), (crop["prob"], "probability", "prob")]
  if crop.get("truth") is not None:
    first.append((crop["truth"].astype(float), "ground truth", "prob"))
  first += [(maps[k], {"ig_black": "IG, black baseline", "ig_blurred": "IG, blurred baseline",
                       "smoothgrad": "SmoothGrad"}.get(k, f"Grad-CAM {k[4:]}"),
             "positive" if k.startswith("cam_") else "signed") for k in maps]
  stages = result.get("randomisation_maps", {})
  deletion = result["deletion"]
  h, w = crop["image"].shape
  zoom = max(1, math.ceil(MIN_MAP_PX / min(h, w)))
  map_w, map_h, title_h = w * zoom, h * zoom, 2 * LINE_PX + 6
  legend_h = len(deletion["curves"]) * LINE_PX + 12
  plot_w = max(map_w, PLOT_PX["width"])
  rows = [max(map_h, PLOT_PX["height"] + PLOT_PX["bottom"] + legend_h)] + ([map_h] if stages else [])
  top = MARGIN_PX + 2 * LINE_PX  # below the panel's title
  width = 2 * MARGIN_PX + max(len(first) * (map_w + GAP_PX) + plot_w, (len(stages) + 1) * (map_w + GAP_PX) - GAP_PX)
  height = top + sum(title_h + r + GAP_PX for r in rows) - GAP_PX + MARGIN_PX
  fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
  box = lambda x, y, w_px, h_px: fig.add_axes((x / width, 1 - (y + h_px) / height, w_px / width, h_px / height))
  map_box = lambda column, y: box(MARGIN_PX + column * (map_w + GAP_PX), y, map_w, map_h)
  for column, (picture, name, kind) in enumerate(first):
    _show(map_box(column, top + title_h), picture, name, kind, crop["object"] if name == "input" else None)
  x = MARGIN_PX + len(first) * (map_w + GAP_PX)
  plot_h = rows[0] - PLOT_PX["bottom"] - legend_h
  ax = box(x + PLOT_PX["left"], top + title_h, plot_w - PLOT_PX["left"], plot_h)
  for name, curve in deletion["curves"].items():
    ax.plot(np.linspace(0, 1, len(curve)), curve, label=f"{name} (AUC {deletion['auc'][name]:.3g})")
  ax.set_title("deletion curve", fontsize=FONT_PT)
  ax.set_xlabel("fraction removed", fontsize=FONT_PT)
  ax.set_ylabel("object score", fontsize=FONT_PT)
  ax.tick_params(labelsize=FONT_PT)
  fig.legend(*ax.get_legend_handles_labels(), loc="upper left", fontsize=FONT_PT, frameon=False,
             bbox_to_anchor=(x / width, 1 - (top + title_h + plot_h + PLOT_PX["bottom"]) / height))
  if stages:
    y = top + title_h + rows[0] + GAP_PX + title_h
    _show(map_box(0, y), maps["ig_blurred"], "trained", "signed")
    spearman = {r["stage"]: r["spearman"] for r in result["randomisation"]}
    for column, (stage, picture) in enumerate(stages.items(), 1):
      _show(map_box(column, y), picture, f"random to {stage}\nSpearman {spearman[stage]:.2f}", "signed")
  fig.suptitle(title, fontsize=FONT_PT + 2, y=1 - MARGIN_PX / height, va="top")
  return fig


def save_kernels(path: str, kernels: np.ndarray) -> None:
  """The first layer's kernels f32[C, k, k] as a row of small images (one shared grey scale per kernel)."""
  fig = Figure(figsize=(0.6 * len(kernels) + 0.2, 0.9))
  axes = fig.subplots(1, len(kernels), squeeze=False)[0]
  for c, (ax, kernel) in enumerate(zip(axes, kernels)):
    limit = float(np.abs(kernel).max()) or 1.0
    ax.imshow(kernel, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(str(c), fontsize=FONT_PT)
    ax.axis("off")
  fig.tight_layout()
  _save(fig, path)


def save_gallery(path: str, pictures: dict[str, Any]) -> None:
  """Per top filter of each gallery layer: its maximising image, then its most activating patches."""
  rows = [(layer, int(c), info["maximising"][i], info["patches"][i], info["activations"][i])
          for layer, info in pictures["layers"].items() for i, c in enumerate(info["channels"])]
  columns = 1 + max(len(r[3]) for r in rows)
  side = max(max(len(r[2]), *(len(p) for p in r[3])) for r in rows)  # the largest picture, pixels
  cell = (max(side, 96) + LINE_PX + GAP_PX) / DPI  # inches: every picture at >= 1 pixel per pixel
  fig = Figure(figsize=(cell * columns, cell * len(rows)))
  axes = fig.subplots(len(rows), columns, squeeze=False)
  for (layer, channel, image, patches, values), row in zip(rows, axes):
    _show(row[0], image, f"{layer}/{channel}")
    for ax, patch, value in zip(row[1:], patches, values):
      _show(ax, patch, f"{value:.2g}")
    for ax in row[1 + len(patches):]:
      ax.axis("off")
  fig.tight_layout()
  _save(fig, path)


def _filter_tables(model: UNet, results: Sequence[tuple[Any, dict[str, Any]]], dataset: dict[str, Any]
                   ) -> dict[str, dict[str, np.ndarray]]:
  """{block: columns}: channel, val Dice drop (when ranked), each object's exact and estimated score drop."""
  tables = {}
  for layer in probe.block_names(model):
    table = {"channel": np.arange(probe.block_channels(model, layer))}
    if "dice" in dataset:
      table["val_dice_drop"] = np.asarray(dataset["dice"]["layers"][layer])
    for target, result in results:
      table[f"{target.name}_score_drop"] = result["filters"][layer]["exact"]
      table[f"{target.name}_estimate"] = result["filters"][layer]["estimate"]
    tables[layer] = table
  return tables


def top_filters(model: UNet, result: dict[str, Any], k: int) -> list[dict[str, Any]]:
  """The k filters of the whole network whose zeroing lowers the object score most."""
  rows = [{"layer": layer, "channel": c, "score_drop": float(f["exact"][c]), "estimate": float(f["estimate"][c])}
          for layer, f in result["filters"].items() for c in range(len(f["exact"]))]
  return sorted(rows, key=lambda r: -r["score_drop"])[:k]


def _markdown(doc: dict[str, Any]) -> str:
  """explain.md from the explain.json document."""
  target = doc.get("class")
  decision = (f"class {target['index']} ({target['name']}) of the argmax label map" if target
              else f"threshold {doc['threshold']:g}, objects of {doc['min_size']} pixels or more")
  score = f"probability of class {target['index']}" if target else "logits"
  lines = [f"# How the network arrived at each {target['name'] if target else 'mitochondrion'}", "",
           f"Model `{doc['workdir']}` (step {doc['step']}), {doc['source']}, {decision}. "
           f"Command: `{doc['command']}`", "",
           f"Each object's score is the sum of its pixels' {score}; every map explains that number on a crop "
           "centred on the object. Red: raises the score, blue: lowers it.", ""]
  lines += ["## Objects", "", "| object | status | pixels | crop (y0, x0, y1, x1) | score | IG completeness error "
            "(black / blurred; steps) | deletion AUC (attribution / random) | deletion check |", "|---|---|---|---|---|---|---|---|"]
  for o in doc["objects"]:
    d = o["deletion"]
    lines.append(f"| [{o['title']}]({o['panel']}) | {o['status'] or '-'} | {o['pixels']} | {tuple(o['crop'])} | "
                 f"{o['score']:.4g} | {o['ig_black']['completeness_error']:.2%} / "
                 f"{o['ig_blurred']['completeness_error']:.2%}; {o['ig_black']['steps']} / {o['ig_blurred']['steps']} | "
                 f"{d['auc']['attribution']:.4g} / "
                 f"{d['auc']['random']:.4g} | {'passed' if d['passed'] else 'FAILED'} |")
  with_sanity = [o for o in doc["objects"] if "randomisation" in o]
  if with_sanity:
    stages = [r["stage"] for r in with_sanity[0]["randomisation"]]
    lines += ["", "## Sanity check: cascading randomisation (Adebayo et al. 2018)", "",
              "Spearman rank correlation between the trained model's IG map (blurred baseline) and the map "
              "after re-initialising the weights from the head down to each stage, of the signed maps / of "
              "their magnitudes. It should fall towards 0.", "",
              "| object | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for o in with_sanity:
      lines.append(f"| {o['name']} | " + " | ".join(f"{r['spearman']:.2f} / {r['spearman_abs']:.2f}"
                                                  for r in o["randomisation"]) + " |")
  with_filters = [o for o in doc["objects"] if "top_filters" in o]
  if with_filters:
    lines += ["", "## Which filters did it", "",
              "Exact: the drop in the object score when the channel is zeroed; estimate: gradient x "
              "activation summed over the block's output (first-order). Spearman: rank correlation of the "
              "two over a block's channels. Full tables: `filters_<block>.csv`.", ""]
    for o in with_filters:
      lines += [f"### {o['title']}", "", "| block | channel | exact drop | estimate |", "|---|---|---|---|"]
      lines += [f"| {r['layer']} | {r['channel']} | {r['score_drop']:.4g} | {r['estimate']:.4g} |"
                for r in o["top_filters"]]
      lines += ["", "Spearman (exact vs estimate) per block: " + ", ".join(
          f"{k} {v:.2f}" for k, v in o["filter_spearman"].items()), ""]
  dataset = doc.get("dataset", {})
  if "dice" in dataset:
    dice = dataset["dice"]
    lines += [f"### Validation Dice ({dice['source']}, {dice['tiles']} tiles of {dice['tile_px']} px: "
              f"Dice {dice['dice']:.4f})", "", "Top filters per block by the drop in Dice when zeroed:", "",
              "| block | top filters (channel: Dice drop) |", "|---|---|"]
    lines += [f"| {layer} | " + ", ".join(f"{c['channel']}: {c['dice_drop']:.4f}" for c in top) + " |"
              for layer, top in dice["top"].items()]
  if "pictures" in dataset:
    lines += ["", "## What the top filters see", "",
              f"First-layer kernels: ![kernels]({dataset['pictures']['kernels']})", "",
              f"Top filters (by {dataset['ranking_by']}) of {', '.join(dataset['pictures']['layers'])}: the image "
              "that maximises each (gradient ascent with jitter and blur), then the patches where it fires most "
              f"(with the activation): ![gallery]({dataset['pictures']['gallery']})"]
  lines += ["", "## Cost", "", "Seconds on this run's machine (compilation included):", "",
            "| method | seconds per object |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in doc["seconds"]["per_object"].items()]
  lines += [f"| {k} (once per run) | {v:.1f} |" for k, v in doc["seconds"]["per_run"].items()]
  return "\n".join(lines) + "\n"


def write(output_dir: str, model: UNet, config: Any, workdir: str, step: int, source: str, image: np.ndarray,
          probs: np.ndarray, truth: np.ndarray | None, decisions: dict[str, Any],
          results: Sequence[tuple[Any, dict[str, Any]]], dataset: dict[str, Any], run_seconds: dict[str, float],
          command: str | None, target_class: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes the panels, pictures, CSVs, explain.json and explain.md; returns the JSON document.

  `decisions` is the predictor's `summary()`: its threshold, where it came from, its minimum object size and its
  temperature. A K-class
  model's objects are those of `target_class` {'index', 'name'}, `probs` and `truth` that class's probability
  f32[H, W] and mask.
  """
  os.makedirs(output_dir, exist_ok=True)
  k = config.explain.top_k
  doc: dict[str, Any] = {"workdir": workdir, "step": int(step), "source": source,
                         "threshold": decisions["threshold"], "threshold_source": decisions["threshold_source"],
                         "min_size": decisions["min_size"], "temperature": decisions["temperature"],
                         "command": command or "", "objects": [], "dataset": {}}
  if target_class:
    doc["class"] = target_class
  for target, result in results:
    y0, x0, y1, x1 = target.box
    crop = {"image": image[y0:y1, x0:x1], "prob": probs[y0:y1, x0:x1], "object": target.pixels[y0:y1, x0:x1],
            "truth": None if truth is None else truth[y0:y1, x0:x1]}
    panel = f"panel_{target.name}.png"
    save_object_panel(os.path.join(output_dir, panel), target.title, crop, result)
    entry = {"name": target.name, "title": target.title, "status": target.status, "panel": panel,
             "pixels": int(target.pixels.sum()), "crop": [y0, x0, y1, x1], "score": result["score"],
             "ig_black": result["ig_black"], "ig_blurred": result["ig_blurred"],
             "deletion": result["deletion"], "seconds": result["seconds"]}
    if "randomisation" in result:
      entry["randomisation"] = result["randomisation"]
    if "filters" in result:
      entry["top_filters"] = top_filters(model, result, k)
      entry["filter_spearman"] = {layer: f["spearman"] for layer, f in result["filters"].items()}
    doc["objects"].append(entry)
  if "dice" in dataset:
    dice = dataset["dice"]
    doc["dataset"]["dice"] = {
        "source": dice["source"], "tiles": dice["tiles"], "tile_px": dice["tile_px"], "dice": dice["dice"],
        "top": {layer: [{"channel": int(c), "dice_drop": float(drops[c])}
                        for c in np.argsort(-drops, kind="stable")[:k]]
                for layer, drops in dice["layers"].items()}}
  if "pictures" in dataset:
    pictures = dataset["pictures"]
    save_kernels(os.path.join(output_dir, "kernels.png"), pictures["kernels"])
    save_gallery(os.path.join(output_dir, "gallery.png"), pictures)
    doc["dataset"]["ranking_by"] = dataset["ranking_by"]
    doc["dataset"]["pictures"] = {"kernels": "kernels.png", "gallery": "gallery.png", "layers": {
        layer: {"channels": info["channels"].tolist(), "activations": info["activations"].tolist()}
        for layer, info in pictures["layers"].items()}}
  if results and "filters" in results[0][1]:
    for layer, table in _filter_tables(model, results, dataset).items():
      morphometry.write_csv(os.path.join(output_dir, f"filters_{layer}.csv"), table)
  per_object: dict[str, float] = {}
  for _, result in results:
    for name, seconds in result["seconds"].items():
      per_object[name] = per_object.get(name, 0.0) + seconds / len(results)
  doc["seconds"] = {"per_object": per_object, "per_run": dict(run_seconds)}
  with open(os.path.join(output_dir, "explain.json"), "w") as f:
    json.dump(doc, f, indent=1, default=float)
  with open(os.path.join(output_dir, "explain.md"), "w") as f:
    f.write(_markdown(doc))
  return doc

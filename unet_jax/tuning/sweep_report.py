"""What a sweep leaves in its folder: the results table (CSV and Markdown) and Optuna's plots.

Rewritten after every trial, so they are current while a sweep runs and after it stops. The value
of a trial is its best validation Dice (the split the trainer validates on; never the test split).
"""

import csv
import io
import os
from typing import Any

import matplotlib
import optuna
from optuna.trial import TrialState

matplotlib.use("Agg")  # the plots are files; Optuna draws them with pyplot
from matplotlib import pyplot  # pylint: disable=g-import-not-at-top,g-bad-import-order
from optuna.visualization import matplotlib as plots  # pylint: disable=g-import-not-at-top,g-bad-import-order

from unet_jax.io import outputs

TABLE_CSV = "results.csv"
TABLE_MD = "results.md"
HISTORY_PNG = "optimization_history.png"
IMPORTANCE_PNG = "param_importances.png"


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def rows(study: optuna.Study) -> tuple[list[str], list[list[Any]]]:
  """(header, one row per trial in number order): number, state, val Dice, steps, minutes, params, workdir."""
  trials = study.get_trials(deepcopy=False)
  names = sorted({name for t in trials for name in t.params})
  header = ["trial", "state", "val_dice", "steps", "minutes", *names, "workdir"]
  table = [[t.number, t.state.name, t.value, t.user_attrs.get("steps"), t.user_attrs.get("minutes"),
            *(t.params.get(name) for name in names), t.user_attrs.get("workdir", "")] for t in trials]
  return header, table


def markdown(study: optuna.Study) -> str:
  """The table as Markdown, with a first line naming the best complete trial."""
  header, table = rows(study)
  complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  best = max(complete, key=lambda t: t.value, default=None)
  lines = [f"Best by validation Dice: trial {best.number} ({best.value:.4f})" if best else "No complete trial yet.",
           "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table]
  return "\n".join(lines) + "\n"


def _save_plot(axes: Any, path: str) -> None:
  figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
  figure.set_size_inches(8, 5)
  figure.tight_layout()
  with outputs.atomic_path(path) as tmp:
    figure.savefig(tmp, format="png", dpi=100)
  pyplot.close(figure)


def has_importances(study: optuna.Study) -> bool:
  """Importances need at least two complete trials and a parameter that took two values among them."""
  complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  names = {name for t in complete for name in t.params}
  return len(complete) >= 2 and any(len({repr(t.params.get(n)) for t in complete}) > 1 for n in names)


def write(study: optuna.Study, folder: str) -> list[str]:
  """Writes the table and the plots that the trials so far allow into `folder`; returns the paths."""
  header, table = rows(study)
  text = io.StringIO()
  csv.writer(text).writerows([header, *table])
  written = [os.path.join(folder, TABLE_CSV), os.path.join(folder, TABLE_MD)]
  for path, content in zip(written, (text.getvalue(), markdown(study))):
    with outputs.atomic_path(path) as tmp, open(tmp, "w") as f:
      f.write(content)
  if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
    return written
  _save_plot(plots.plot_optimization_history(study, target_name="val Dice"), os.path.join(folder, HISTORY_PNG))
  written.append(os.path.join(folder, HISTORY_PNG))
  if has_importances(study):
    _save_plot(plots.plot_param_importances(study, target_name="val Dice"), os.path.join(folder, IMPORTANCE_PNG))
    written.append(os.path.join(folder, IMPORTANCE_PNG))
  return written

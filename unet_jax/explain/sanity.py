"""Do the explanations mean something? Cascading model randomisation (Adebayo et al. 2018).

Weights are re-initialised stage by stage from the head downwards (head; dec0 with up0; dec1 with
up1; ...; bottleneck; enc{depth-1}; ...; enc0), cumulatively, with the model's own initialiser
(fresh BatchNorm statistics too). An attribution map that explains the network must change as
the network is destroyed: the Spearman rank correlation between the trained model's map and each
randomised model's map should fall. A map that stays put (an edge detector, say) explains the
image, not the model.
"""

from typing import Any, Callable

import jax
import numpy as np
from scipy import stats

from unet_jax.network.model import init_variables, UNet


def randomisation_stages(model: UNet) -> list[tuple[str, tuple[str, ...]]]:
  """[(stage name, parameter collections' top-level names)], from the head downwards."""
  stages = [("head", ("head",))]
  stages += [(f"dec{i}", (f"dec{i}", f"up{i}")) for i in range(model.depth)]
  stages += [("bottleneck", ("bottleneck",))]
  stages += [(f"enc{i}", (f"enc{i}",)) for i in reversed(range(model.depth))]
  return stages


def cascading_randomisation(model: UNet, variables: Any, key: jax.Array) -> list[tuple[str, Any]]:
  """[(stage, variables)]: `variables` with every stage up to and including that one re-initialised."""
  fresh = init_variables(model, key)
  current = jax.tree.map(lambda x: x, variables)
  out = []
  for stage, names in randomisation_stages(model):
    current = {collection: {**tree, **{n: fresh[collection][n] for n in names if n in fresh.get(collection, {})}}
               for collection, tree in current.items()}
    out.append((stage, current))
  return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation of two maps of one shape (0 when either is constant)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return 0.0
  return float(stats.spearmanr(a, b).statistic)


def randomisation_test(model: UNet, variables: Any, explain: Callable[[Any], np.ndarray],
                       key: jax.Array) -> list[dict[str, Any]]:
  """[{'stage', 'spearman', 'spearman_abs', 'map'}] of `explain(variables) -> f32[H, W]` per stage.

  'spearman' compares signed maps, 'spearman_abs' their magnitudes, each with the trained model's.
  """
  reference = np.asarray(explain(variables))
  rows = []
  for stage, randomised in cascading_randomisation(model, variables, key):
    current = np.asarray(explain(randomised))
    rows.append({"stage": stage, "spearman": rank_correlation(reference, current),
                 "spearman_abs": rank_correlation(np.abs(reference), np.abs(current)), "map": current})
  return rows

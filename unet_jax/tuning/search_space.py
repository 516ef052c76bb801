"""A sweep's search space: a config file of config overrides given as distributions (sweep.py --space).

The file's `get_config()` returns an ml_collections ConfigDict shaped like the training config,
whose leaves are distributions of the fields they replace:

    space.optim.learning_rate = ("log_float", 1e-4, 3e-3)   # log-uniform
    space.optim.warmup_steps = ("int", 10, 300)             # ("int", low, high[, step]); "log_int" too
    space.train.fg_fraction = ("float", 0.3, 0.9)           # ("float", low, high[, step])
    space.model.base_features = ("categorical", (16, 24, 32))
    space.augment.preset = ("categorical", ("flips", "full"))  # augment.PRESETS, applied before the others

Choices are None, bool, int, float, str, or tuples of them for tuple fields (e.g. augment.scale_range:
("categorical", ((0.8, 1.2), (0.9, 1.1)))). Optuna keeps only plain values (its storage gives tuples back
as lists, which no longer equal the file's choices, and its importances hash them), so a tuple choice is
handed to Optuna as its text, '(0.8, 1.2)', and turned back into the tuple when a config is made
(`configure`); a resumed study then compares equal to its unchanged file.
Everything is checked before any trial: the file loads, every name is a field of the config (or
augment.preset), every distribution is well formed, and every value a sampler can draw is, alone, a
valid config (`config_check.validate`, the model's size rules included): each choice, each value of
an int or stepped float range (the SUPPORT_LIMIT smallest and the high bound when there are more:
they cover every rule periodic in 2**model.depth), both bounds of a continuous one. Then combinations
of the parameters' values (all of them, or JOINT_LIMIT drawn with a fixed seed when there are more)
are checked together, so values that only fail in company are refused too.
"""

import ast
import copy
import importlib.util
import itertools
import math
import os
from typing import Any, Sequence

import ml_collections
import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from unet_jax.config import check as config_check
from unet_jax.errors import InputError
from unet_jax.training import augment

PRESET = "augment.preset"  # not a field: the augmentation preset (augment.PRESETS), applied before the fields
KINDS = ("float", "log_float", "int", "log_int", "categorical")
SUPPORT_LIMIT = 256  # values of one parameter checked one by one (2**model.depth <= 256)
JOINT_LIMIT = 256  # combinations of the parameters' values checked together
Space = dict[str, BaseDistribution]


def plain(choice: Any) -> Any:
  """A choice as Optuna keeps it: a tuple (or list) as its text '(0.8, 1.2)', anything else as it is."""
  return repr(tuple(choice)) if isinstance(choice, (tuple, list)) else choice


def field_value(value: Any, current: Any) -> Any:
  """A sampled `value` for a field now holding `current`: a tuple field's choice text back as the tuple."""
  if isinstance(value, str) and isinstance(current, (tuple, list)):
    try:
      return tuple(ast.literal_eval(value))
    except (ValueError, SyntaxError, TypeError):
      return value  # the config check names the field and what it takes
  return value


def _distribution(spec: Any) -> BaseDistribution:
  """An Optuna distribution from a spec tuple (see the module docstring); ValueError when malformed."""
  if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in KINDS:
    raise ValueError(f"it must be a tuple (KIND, ...) with KIND one of {KINDS}")
  kind, *args = spec
  if kind == "categorical":
    if len(args) != 1 or not isinstance(args[0], (tuple, list)) or not args[0]:
      raise ValueError("it must be ('categorical', (choice, ...)) with at least one choice")
    return CategoricalDistribution(tuple(plain(c) for c in args[0]))
  log = kind.startswith("log_")
  if len(args) not in (2, 3) or (log and len(args) == 3):
    raise ValueError(f"it must be ({kind!r}, low, high{'' if log else '[, step]'})")
  if kind.endswith("int"):
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
      raise ValueError("an int distribution's bounds and step must be integers")
    return IntDistribution(*args[:2], log=log, step=args[2] if len(args) == 3 else 1)
  if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
    raise ValueError("a float distribution's bounds and step must be numbers")
  return FloatDistribution(*map(float, args[:2]), log=log, step=float(args[2]) if len(args) == 3 else None)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
  """{'section.field': spec} of a nested ConfigDict of specs."""
  leaves = {}
  for name, value in node.items():
    path = f"{prefix}{name}"
    leaves.update(_leaves(value, path + ".") if isinstance(value, ml_collections.ConfigDict) else {path: value})
  return leaves


def configure(config: ml_collections.ConfigDict, params: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the sampled `params` ({'section.field': value}) set, the preset first."""
  config = copy.deepcopy(config)
  if PRESET in params:
    augment.apply_preset(config, params[PRESET])
  for path, value in params.items():
    if path == PRESET:
      continue
    *parents, name = path.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    try:
      node[name] = field_value(value, node.get(name))
    except TypeError as e:
      raise InputError(f"config field {path}={value!r} is invalid: {e}") from None
  return config


def support(distribution: BaseDistribution) -> tuple[Any, ...]:
  """The values of `distribution` whose configs are checked: every choice; every value of an int or
  stepped float range (the SUPPORT_LIMIT smallest and the high bound when there are more); both
  bounds of a continuous range (the config's rules on floats are intervals)."""
  if isinstance(distribution, CategoricalDistribution):
    return distribution.choices
  if isinstance(distribution, IntDistribution) or distribution.step is not None:
    low, high, step = distribution.low, distribution.high, distribution.step
    count = int(round((high - low) / step)) + 1
    values = [low + i * step for i in range(min(count, SUPPORT_LIMIT))] + [high]
    if isinstance(distribution, FloatDistribution):
      values = [float(np.round(v, 12)) for v in values]
    return tuple(dict.fromkeys(values))
  return distribution.low, distribution.high


def _listing(values: Sequence[Any], limit: int = 8) -> str:
  """'33-35, 37-39' for runs of consecutive integers, else the values' reprs; at most `limit` items."""
  items, i = [], 0
  while i < len(values):
    j = i
    while (isinstance(values[i], int) and j + 1 < len(values) and isinstance(values[j + 1], int)
           and values[j + 1] == values[j] + 1):
      j += 1
    items.append(f"{values[i]}-{values[j]}" if j > i + 1 else ", ".join(map(repr, values[i:j + 1])))
    i = j + 1
  text = ", ".join(items[:limit])
  return text + (", ..." if len(items) > limit else "")


def _refusal(config: ml_collections.ConfigDict, params: dict[str, Any]) -> str | None:
  """Why `config` with `params` set is not a valid config, or None."""
  try:
    config_check.validate(configure(config, params))
  except InputError as e:
    return str(e)
  return None


def _check_support(path: str, config: ml_collections.ConfigDict, name: str, distribution: BaseDistribution) -> None:
  """Raises InputError naming every value of `name` that the sampler can draw and the config refuses."""
  refused = [(value, _refusal(config, {name: value})) for value in support(distribution)]
  bad = [(value, reason) for value, reason in refused if reason]
  if bad:
    more = (f" (refused: {_listing([v for v, _ in bad])} of the values it can draw; narrow the space"
            f"{' or give the range a step' if not isinstance(distribution, CategoricalDistribution) else ''} "
            "so that every value is allowed)") if len(bad) > 1 else ""
    raise InputError(f"search space file {path}: {name} value {bad[0][0]!r} is not allowed: {bad[0][1]}{more}")


def _check_combinations(path: str, config: ml_collections.ConfigDict, space: Space) -> None:
  """Raises InputError for a combination of allowed values that the config refuses, naming the fewest
  parameters that still fail together (the others at the base config's values)."""
  names = list(space)
  if len(names) < 2:
    return
  values = [support(space[n]) for n in names]
  total = math.prod(len(v) for v in values)
  if total <= JOINT_LIMIT:
    combinations = itertools.product(*values)
  else:
    rng = np.random.default_rng(0)
    combinations = ([v[i] for v, i in zip(values, rng.integers(0, [len(v) for v in values]))]
                    for _ in range(JOINT_LIMIT))
  for combination in combinations:
    params = dict(zip(names, combination))
    reason = _refusal(config, params)
    if reason is None:
      continue
    for name in list(params):  # drop each parameter that is not needed for the failure
      fewer = {k: v for k, v in params.items() if k != name}
      fewer_reason = _refusal(config, fewer)
      if fewer_reason is not None:
        params, reason = fewer, fewer_reason
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    raise InputError(f"search space file {path}: the combination {shown} is not allowed: {reason} (each value "
                     "alone is); narrow the space so that every combination of its values is allowed")


def _is_field(config: ml_collections.ConfigDict, path: str) -> bool:
  node = config
  for name in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return False
    node = node[name]
  return not isinstance(node, ml_collections.ConfigDict)


def _read(path: str) -> ml_collections.ConfigDict:
  """The ConfigDict returned by `get_config()` of the file at `path`."""
  if not os.path.isfile(path):
    raise InputError(f"search space file {path} not found; give --space=configs/sweeps/NAME.py")
  try:
    spec = importlib.util.spec_from_file_location(f"search_space_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    space = module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (whatever a user's file raises: one line)
    where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
    raise InputError(f"search space file {path} could not be read{where}: {type(e).__name__}: "
                     f"{' '.join(str(e).split())}") from None
  if not isinstance(space, ml_collections.ConfigDict):
    raise InputError(f"search space file {path}: get_config() must return an ml_collections.ConfigDict, "
                     f"got {type(space).__name__}")
  return space


def load(path: str, config: ml_collections.ConfigDict) -> Space:
  """{'section.field': distribution} of the space file at `path`, checked against `config`."""
  leaves = _leaves(_read(path))
  if not leaves:
    raise InputError(f"search space file {path} names no field; add e.g. space.optim.learning_rate = "
                     "('log_float', 1e-4, 3e-3)")
  space = {}
  for name, spec in leaves.items():
    if name != PRESET and not _is_field(config, name):
      raise InputError(f"search space file {path}: {name} is not a field of the config; names are "
                       f"section.field as in the config file (or {PRESET})")
    try:
      space[name] = _distribution(spec)
    except ValueError as e:
      raise InputError(f"search space file {path}: {name}={spec!r} is not a distribution: {e}") from None
    _check_support(path, config, name, space[name])
  _check_combinations(path, config, space)
  return space


def base_params(config: ml_collections.ConfigDict, space: Space) -> dict[str, Any]:
  """The base config's own value of every name in `space` (the preset: the one whose fields it matches), so
  a sweep can try the incumbent recipe first; an error when the base lies outside the space."""
  params = {}
  for name, d in space.items():
    if name == PRESET:
      value = next((p for p in d.choices if configure(config, {PRESET: p}).augment == config.augment), None)
    else:
      value = config
      for part in name.split("."):
        value = value[part]
    if isinstance(d, CategoricalDistribution):  # the choice itself (a tuple's text)
      value = next((c for c in d.choices if field_value(c, value) == value), value)
    inside = (value in d.choices if isinstance(d, CategoricalDistribution)
              else value is not None and d.low <= value <= d.high)
    if not inside:
      raise InputError(f"the base config's {name}={value!r} is outside the search space ({d}); widen the space "
                       "or drop --enqueue_base")
    params[name] = value
  return params


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
  """The trial's values of every name in `space` (fixed ones, e.g. of a retried trial, kept)."""
  params = {}
  for name, d in space.items():
    if isinstance(d, CategoricalDistribution):
      params[name] = trial.suggest_categorical(name, d.choices)
    elif isinstance(d, IntDistribution):
      params[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    else:
      params[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
  return params

"""One check of a whole config before anything is loaded or compiled: every field's type and range.

Each entry point calls `validate(config, sections)` first, so a bad value fails in seconds with one
line that names the field, the value and what is allowed, instead of minutes later while tracing.
Tools that only run a trained network validate ('data', 'model', 'eval') and ignore `train`/`optim`.
Blocks that a config lacks (e.g. no `optim` in an inference-only config) are skipped; a field missing
from a block that is present is an error.
"""

import math
from typing import Any, Callable, Sequence

from unet_jax.errors import InputError
from unet_jax.inference import engines, onnx_export, windows
from unet_jax.io import data
from unet_jax.network import anisotropy, model, volumes
from unet_jax.reports import uncertainty
from unet_jax.training import augment, losses, optim

SECTIONS = ("run", "distributed", "data", "model", "train", "optim", "augment", "eval", "explain")
INFERENCE_SECTIONS = ("run", "data", "model", "eval")

Rule = tuple[str, Callable[[Any], bool], str]  # (field, accepts value, what is allowed)

# Sane maximums: values past them crash a run after it started (int32 step counters and seeds, float
# overflow in the budget) or only ever come from a typo.
MAX_SEED = 2**31 - 1  # PRNG seeds are 32-bit: larger ones would silently repeat smaller ones
MAX_STEPS = 10**8  # step counters are int32; 1e8 steps is months of training at the fastest step times
MAX_MINUTES = 7 * 24 * 60  # a week: budgets and time limits; a budget's step count stays within MAX_STEPS
MAX_BATCH = 4096
MAX_PIXELS = 16384  # a patch, window or picture side


def _int(lo: int, hi: float = math.inf) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _num(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
  def accepts(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return False
    return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
  return accepts


def _one_of(*values: Any) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, type(values[0])) and v in values


def _is(kind: type) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, kind)


def _seq(item: Callable[[Any], bool], lengths: Sequence[int] = ()) -> Callable[[Any], bool]:
  return lambda v: (isinstance(v, (tuple, list)) and len(v) > 0 and (not lengths or len(v) in lengths)
                    and all(item(x) for x in v))


def _empty_or(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
  """() (the field's "not set") or a value `rule` accepts."""
  return lambda v: v in ((), []) or rule(v)


def _range(lo_open_zero: bool = True) -> Callable[[Any], bool]:
  """(low, high) with 0 < low <= high."""
  return lambda v: _seq(_num(0.0, lo_open=lo_open_zero), (2,))(v) and v[0] <= v[1]


def _int_or_ints(lo: int, hi: float = math.inf) -> Callable[[Any], bool]:
  return lambda v: _int(lo, hi)(v) or _seq(_int(lo, hi), (2, 3))(v)


def _rules(section: str) -> list[Rule]:
  """The field rules of one section; names of valid choices come from the modules that use them."""
  if section == "run":
    return [("seed", _int(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
            ("host_devices", _int(0, 1024), "an integer in [0, 1024] (0: one XLA host device per core)")]
  if section == "distributed":
    return [("distributed.coordinator", _is(str), "'' (one process), 'auto' or 'host:port'"),
            ("distributed.num_processes", _int(1, 65536), "an integer in [1, 65536]"),
            ("distributed.process_id", _int(0, 65535), "an integer in [0, 65535]")]
  if section == "data":
    return [("data.name", _one_of(*data.DATASETS), f"one of {data.DATASETS}"),
            ("data.root", _is(str), "a folder path"),
            ("data.url", _is(str), "a URL ending in '/' ('' for the official Lucchi address)"),
            ("data.val_fraction", _num(0.0, 1.0, True, True), "a number in (0, 1)"),
            ("data.val_slices", _int(0, 100000), "an integer >= 0 (0: data.val_fraction decides)"),
            ("data.final_fit", _is(bool), "True or False"),
            ("data.labels_root", _is(str), "'' (binary masks) or a folder of training_labels.tif, testing_labels.tif"),
            ("data.voxel_size_nm", _seq(_num(0.0, lo_open=True), (3,)), "three positive sizes (z, y, x) in nm"),
            ("data.class_names", _empty_or(_seq(_is(str))), "() or one name per class"),
            ("data.synthetic.seed", _int(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
            ("data.synthetic.shape", _seq(_int(16, MAX_PIXELS), (2, 3)),
             f"2 or 3 sizes in [16, {MAX_PIXELS}] ((H, W) or (D, H, W))"),
            ("data.synthetic.train_slices", _int(2, 10000),
             "an integer in [2, 10000] (training and validation slices)"),
            ("data.synthetic.test_slices", _int(1, 10000), "an integer in [1, 10000]"),
            ("data.synthetic.test_shape", _empty_or(_seq(_int(16, MAX_PIXELS), (2,))),
             f"() (the training shape) or 2 sizes in [16, {MAX_PIXELS}]"),
            ("data.synthetic.ndim", _one_of(2, 3), "2 or 3")]
  if section == "model":
    return [("model.ndim", _one_of(2, 3), "2 or 3"),
            ("model.depth", _int(1, 8), "an integer in [1, 8]"),
            ("model.base_features", _int(1, 1024), "an integer in [1, 1024]"),
            ("model.norm", _one_of(*model.NORMS), f"one of {model.NORMS}"),
            ("model.upsample", _one_of(*model.UPSAMPLES), f"one of {model.UPSAMPLES}"),
            ("model.dtype", _one_of(*model.DTYPES), f"one of {tuple(model.DTYPES)}"),
            ("model.voxel_size_nm", _seq(_num(0.0, lo_open=True), (2, 3)), "positive sizes (z, y, x) in nm"),
            ("model.kernel_sizes", _is((tuple, list)), "() (derived from the voxel size) or one kernel per level"),
            ("model.pool_factors", _is((tuple, list)), "() (derived from the voxel size) or one factor per level"),
            ("model.context_slices", _int(0, 8), "an integer in [0, 8] (2.5D: neighbours on each side)"),
            ("model.num_classes", _int(1, 256), "an integer in [1, 256] (1: binary)"),
            ("model.output", _one_of(*model.OUTPUTS), f"one of {model.OUTPUTS}")]
  if section == "train":
    return [("train.steps", _int(1, MAX_STEPS), f"an integer in [1, {MAX_STEPS}] (step counters are 32-bit)"),
            ("train.batch_size", _int(1, MAX_BATCH), f"an integer in [1, {MAX_BATCH}] (a multiple of the devices)"),
            ("train.patch_size", _int_or_ints(1, MAX_PIXELS),
             f"a size in [1, {MAX_PIXELS}] or one per axis, divisible by 2**model.depth"),
            ("train.fg_fraction", _num(0.0, 1.0), "a number in [0, 1]"),
            ("train.loss", _one_of(*losses.LOSSES), f"one of {tuple(losses.LOSSES)}"),
            ("train.smooth", _num(0.0, 1e6, lo_open=True), "a number in (0, 1e6]"),
            ("train.boundary_weight", _num(0.0, 100.0), "a number in [0, 100]"),
            ("train.boundary_width", _int(1, 64), "pixels in [1, 64]"),
            ("train.class_weights", _empty_or(_seq(_num(0.0, 1e6))),
             "() or one weight in [0, 1e6] per class"),
            ("train.class_sampling", _empty_or(_seq(_num(0.0, 1e6))),
             "() or one centre weight in [0, 1e6] per class"),
            ("train.log_every", _int(1, MAX_STEPS), f"an integer in [1, {MAX_STEPS}]"),
            ("train.eval_every", _int(1, MAX_STEPS), f"an integer in [1, {MAX_STEPS}]"),
            ("train.checkpoint_every", _int(1, MAX_STEPS), f"an integer in [1, {MAX_STEPS}]"),
            ("train.keep_checkpoints", _int(1, 1000), "an integer in [1, 1000] (something to resume from)"),
            ("train.prefetch", _int(0, 64), "an integer in [0, 64] (0: no background sampling)"),
            ("train.max_minutes", _num(0.0, MAX_MINUTES), f"minutes in [0, {MAX_MINUTES}] (a week; 0: no limit)"),
            ("train.budget_minutes", _num(0.0, MAX_MINUTES),
             f"minutes in [0, {MAX_MINUTES}] (a week; 0: train.steps steps)"),
            ("train.budget_measure_steps", _int(2, 1000), "an integer in [2, 1000]"),
            ("train.budget_retime", _is(bool), "True or False"),
            ("train.schedule_lengths", _empty_or(_seq(_seq(_int(1, MAX_STEPS), (2,)))),
             "() or ((step, length), ...) as a budgeted run's budget events log them"),
            ("train.ema_decay", _num(0.0, 1.0, hi_open=True), "a number in [0, 1) (0: no weight average)"),
            ("train.tensorboard", _is(bool), "True or False"),
            ("train.init_from", _is(str), "a workdir or a package made by export.py ('' for fresh weights)"),
            ("train.consistency_weight", _num(0.0, 1e6), "a number in [0, 1e6] (0: no unlabelled training)"),
            ("train.unlabeled", lambda v: isinstance(v, (tuple, list)) and all(isinstance(p, str) and p for p in v),
             "a tuple of paths of unlabelled TIFF/OME-Zarr stacks (() for none)"),
            ("train.unlabeled_batch", _int(1, MAX_BATCH),
             f"an integer in [1, {MAX_BATCH}] (a multiple of the devices)"),
            ("train.consistency_rampup_steps", _int(0, MAX_STEPS), f"an integer in [0, {MAX_STEPS}] (0: no ramp-up)"),
            ("train.consistency_noise", _num(0.0, 1.0), "a number in [0, 1] (0: no noise)"),
            ("train.pseudo_label_threshold", lambda v: v == 0 or _num(0.5, 1.0, hi_open=True)(v),
             "0 (off) or a probability in [0.5, 1)")]
  if section == "optim":
    return [("optim.name", _one_of(*optim.OPTIMIZERS), f"one of {optim.OPTIMIZERS}"),
            ("optim.learning_rate", _num(0.0, 10.0, lo_open=True), "a number in (0, 10]"),
            ("optim.weight_decay", _num(0.0, 1.0), "a number in [0, 1]"),
            ("optim.schedule", _one_of(*optim.SCHEDULES), f"one of {optim.SCHEDULES}"),
            ("optim.warmup_steps", _int(0, MAX_STEPS), f"an integer in [0, {MAX_STEPS}]"),
            ("optim.final_lr_fraction", _num(0.0, 1.0), "a number in [0, 1]"),
            ("optim.grad_clip", _num(0.0, 1e6), "a number in [0, 1e6] (0: off)")]
  if section == "augment":
    probs = [(f"augment.{name}", _num(0.0, 1.0), "a probability in [0, 1]") for name in augment.PROB_FIELDS]
    return probs + [
        ("augment.flips", _is(bool), "True or False"),
        ("augment.rotate_degrees", _num(0.0, 180.0), "degrees in [0, 180]"),
        ("augment.scale_range", _range(), "(low, high) with 0 < low <= high"),
        ("augment.shear_degrees", _num(0.0, 90.0, hi_open=True), "degrees in [0, 90)"),
        ("augment.elastic_alpha", _num(0.0, 1000.0), "pixels in [0, 1000]"),
        ("augment.elastic_sigma", _num(0.0, float(MAX_PIXELS), lo_open=True), f"pixels in (0, {MAX_PIXELS}]"),
        ("augment.brightness", _num(0.0, 1.0), "a number in [0, 1]"),
        ("augment.contrast", _range(), "(low, high) with 0 < low <= high"),
        ("augment.gamma", _range(), "(low, high) with 0 < low <= high"),
        ("augment.noise_std", _num(0.0, 1.0), "a number in [0, 1]"),
        ("augment.blur_sigma", _num(0.0, 16.0), "pixels in [0, 16]"),
        ("augment.elastic_z", _is(bool), "True or False"),
        ("augment.misalign_pixels", _int(0, 64), "pixels in [0, 64]"),
        ("augment.section_brightness", _num(0.0, 1.0), "a number in [0, 1]"),
        ("augment.section_contrast", _range(), "(low, high) with 0 < low <= high")]
  if section == "eval":
    return [("eval.window", _int_or_ints(1, MAX_PIXELS), f"a size in [1, {MAX_PIXELS}] or one per axis"),
            ("eval.overlap", _num(0.0, 1.0, hi_open=True), "a fraction in [0, 1)"),
            ("eval.blend", _one_of(*windows.BLENDS), f"one of {windows.BLENDS}"),
            ("eval.sigma", _num(0.0, 10.0, lo_open=True), "a fraction of the window in (0, 10]"),
            ("eval.tta", _one_of(*windows.TTAS), f"one of {windows.TTAS}"),
            ("eval.val_tta", _one_of("", *windows.TTAS), f"'' (eval.tta) or one of {windows.TTAS}"),
            ("eval.batch_size", _int(1, MAX_BATCH), f"an integer in [1, {MAX_BATCH}]"),
            ("eval.threshold", _num(0.0, 1.0, True, True), "a probability in (0, 1)"),
            ("eval.checkpoint", _one_of("best", "latest"), "'best' or 'latest'"),
            ("eval.select_threshold", _is(bool), "True or False"),
            ("eval.threshold_candidates", _seq(_num(0.0, 1.0, True, True)), "probabilities in (0, 1)"),
            ("eval.min_size", _int(0), "voxels >= 0"),
            ("eval.min_area", _int(0), "pixels >= 0"),
            ("eval.select_min_size", _is(bool), "True or False"),
            ("eval.min_size_candidates", _seq(_int(0)), "voxel counts >= 0"),
            ("eval.iou_thresholds", _seq(_num(0.0, 1.0, lo_open=True)), "numbers in (0, 1]"),
            ("eval.report_slices", _int(1, 1000), "an integer in [1, 1000]"),
            ("eval.figure_px", _int(32, MAX_PIXELS), f"pixels in [32, {MAX_PIXELS}]"),
            ("eval.engine", _one_of(*engines.ENGINES), f"one of {engines.ENGINES}"),
            ("eval.chunk", _seq(_int(1, 65536), (3,)), "three block sizes (z, y, x) in [1, 65536], in voxels"),
            ("eval.confidence_level", _num(0.0, 1.0, True, True), "a probability in (0, 1)"),
            ("eval.bootstrap_resamples", _int(1000, 10**6), "an integer in [1000, 1000000]"),
            ("eval.bootstrap_seed", _int(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
            ("eval.calibration_bins", _int(2, 1000), "an integer in [2, 1000]"),
            ("eval.calibrate", _is(bool), "True or False"),
            ("eval.uncertainty", _one_of(*uncertainty.SOURCES), f"one of {uncertainty.SOURCES}"),
            ("eval.review_top_k", _int(1), "an integer >= 1"),
            ("eval.object_classes", _empty_or(_seq(_int(0, 255))), "() or class ids in [0, 255]")]
  if section == "explain":
    layers = lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v)
    return [("explain.seed", _int(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
            ("explain.crop", _int(0), "pixels >= 0 (0: eval.window)"),
            ("explain.batch_size", _int(1), "an integer >= 1"),
            ("explain.ig_steps", _int(2), "an integer >= 2"),
            ("explain.ig_max_steps", _int(2), "an integer >= explain.ig_steps"),
            ("explain.ig_tolerance", _num(0.0, 1.0, True, True), "a fraction in (0, 1)"),
            ("explain.blur_sigma", _num(0.0, lo_open=True), "pixels > 0"),
            ("explain.smoothgrad_samples", _int(0), "an integer >= 0 (0: off)"),
            ("explain.smoothgrad_noise", _num(0.0, 1.0), "a fraction in [0, 1]"),
            ("explain.cam_layers", layers, "block names: enc0.., bottleneck, dec.."),
            ("explain.deletion_points", _int(3), "an integer >= 3"),
            ("explain.sanity_steps", _int(2), "an integer >= 2"),
            ("explain.dice_tiles", _int(0), "an integer >= 0 (0: all tiles)"),
            ("explain.top_k", _int(1), "an integer >= 1"),
            ("explain.gallery_layers", layers, "block names: enc0.., bottleneck, dec.."),
            ("explain.gallery_filters", _int(1), "an integer >= 1"),
            ("explain.gallery_patches", _int(1), "an integer >= 1"),
            ("explain.actmax_px", _int(1), "pixels, a multiple of the model's size factor"),
            ("explain.actmax_steps", _int(1), "an integer >= 1")]
  raise InputError(f"unknown config section {section!r}; sections are {SECTIONS}")


def _get(config: Any, path: str) -> Any:
  value = config
  for name in path.split("."):
    value = value[name]
  return value


def _present(config: Any, section: str) -> bool:
  return section == "run" or section in config


def _cross_checks(config: Any, sections: Sequence[str]) -> list[str]:
  """Problems between fields (each field alone being valid)."""
  problems = []
  if "distributed" in sections and _present(config, "distributed"):
    d = config.distributed
    if d.process_id >= d.num_processes:
      problems.append(f"distributed.process_id={d.process_id} must be below distributed.num_processes="
                      f"{d.num_processes}")
  ndim = config.model.ndim if _present(config, "model") else None
  sizes = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * ndim
  if "eval" in sections and _present(config, "eval") and ndim and len(sizes(config.eval.window)) != ndim:
    problems.append(f"eval.window={config.eval.window!r} must be one size or {ndim} sizes for a {ndim}D model")
  if "model" in sections and ndim:
    anisotropy.model_plan(config.model)  # raises, naming the field, for bad kernel_sizes / pool_factors
    base = config.model.base_features
    if config.model.norm == "group" and base % model.GROUPS:
      problems.append(f"model.norm='group' needs model.base_features divisible by its {model.GROUPS} groups (level l "
                      f"has base_features * 2**l channels), got model.base_features={base}; use a multiple of "
                      f"{model.GROUPS} (e.g. {-(-base // model.GROUPS) * model.GROUPS}) or --config.model.norm=batch")
  if "model" in sections and ndim:
    problems += _class_checks(config, sections)
  if "train" in sections and _present(config, "train") and ndim:
    volumes.check_config(config)  # the dimensions of model, data, patch and window agree
    patch, factors = sizes(config.train.patch_size), anisotropy.model_plan(config.model).size_factors
    if len(patch) != ndim or any(p % f for p, f in zip(patch, factors)):  # 3D plans may pool some axes less
      problems.append(f"train.patch_size={config.train.patch_size!r} must be one size or {ndim} sizes, each "
                      f"divisible by 2**model.depth={2 ** config.model.depth} on its pooled axes, times "
                      f"model.space_to_depth in-plane ({'x'.join(map(str, factors))} per axis)")
  if "eval" in sections and _present(config, "eval") and _present(config, "model"):
    k, e = config.model.get("context_slices", 0), config.eval
    if k and (e.engine != "xla" or e.uncertainty != "none"):
      problems.append(f"model.context_slices={k} (2.5D) runs with eval.engine='xla' and eval.uncertainty='none' "
                      f"only, got {e.engine!r} and {e.uncertainty!r}")
  if "eval" in sections and _present(config, "eval") and _present(config, "model") and config.eval.engine == "onnx":
    if config.model.norm not in onnx_export.ONNX_NORMS or config.model.dtype not in onnx_export.ONNX_DTYPES:
      problems.append(f"eval.engine='onnx' needs model.norm 'batch' or 'none' and model.dtype 'float32' (got "
                      f"{config.model.norm!r}, {config.model.dtype!r}); use --config.eval.engine=xla for this model")
  if {"data", "eval"} <= set(sections) and _present(config, "data") and _present(config, "eval"):
    e = config.eval
    if config.data.final_fit and (e.select_threshold or e.select_min_size or e.checkpoint != "latest"):
      problems.append("data.final_fit=True trains on the val slices, so they cannot choose a checkpoint, a "
                      "threshold or a minimum object size: set --config.eval.checkpoint=latest "
                      "--config.eval.select_threshold=False --config.eval.select_min_size=False and "
                      "--config.eval.threshold and --config.eval.min_size to the values a run without final_fit "
                      "chose on val")
  if {"train", "optim"} <= set(sections) and _present(config, "train") and _present(config, "optim"):
    t, o = config.train, config.optim
    if t.consistency_weight and not (t.unlabeled and t.ema_decay):
      problems.append(f"train.consistency_weight={t.consistency_weight} needs unlabelled stacks (train.unlabeled="
                      f"{tuple(t.unlabeled)!r}) and a teacher (train.ema_decay={t.ema_decay}, e.g. 0.99); set both")
    if t.pseudo_label_threshold and not t.consistency_weight:
      problems.append(f"train.pseudo_label_threshold={t.pseudo_label_threshold} is part of the consistency loss: set "
                      "train.consistency_weight > 0 too")
    lengths = [tuple(p) for p in t.schedule_lengths]
    if lengths and (t.budget_minutes or any(a[0] >= b[0] for a, b in zip(lengths, lengths[1:]))
                    or any(s > n for s, n in lengths)
                    or lengths[-1][1] != t.steps):
      problems.append(f"train.schedule_lengths={tuple(lengths)} replays a budgeted run by step count: its steps must "
                      "rise, each length be at least its step and the last equal train.steps, with "
                      f"train.budget_minutes=0 (now steps={t.steps}, budget_minutes={t.budget_minutes}); copy "
                      "them from the run's budget events")
    if t.budget_minutes and o.warmup_steps < t.budget_measure_steps:
      problems.append(f"train.budget_minutes needs optim.warmup_steps ({o.warmup_steps}) >= "
                      f"train.budget_measure_steps ({t.budget_measure_steps}), so the measured steps do not "
                      "depend on the run's length")
  return problems


def _class_checks(config: Any, sections: Sequence[str]) -> list[str]:
  """Problems of a multi-class model (model.num_classes > 1) with fields made for one class."""
  k, problems = config.model.num_classes, []
  train = config.train if _present(config, "train") and "train" in sections else {}
  e = config.eval if "eval" in sections and _present(config, "eval") else {}
  if k == 1:
    if config.model.output == "softmax":
      problems.append("model.output='softmax' needs model.num_classes > 1 (a softmax over one class is constant); "
                      "use --config.model.output=sigmoid")
    for block, name in ((train, "train.class_sampling"), (e, "eval.object_classes")):
      if block.get(name.split(".")[1], ()):
        problems.append(f"{name} is for multi-class models (model.num_classes > 1); set it to () for a binary model")
    return problems
  if train.get("boundary_weight", 0.0):
    problems.append(f"train.boundary_weight={train.boundary_weight} weighs the edges of a binary mask; set it to 0 "
                    f"for model.num_classes={k}")
  for name in ("class_weights", "class_sampling"):
    weights = train.get(name, ())
    if weights and (len(weights) != k or not sum(weights) > 0):
      problems.append(f"train.{name}={tuple(weights)!r} must be () or {k} weights (model.num_classes) with a "
                      "positive sum")
  names = config.data.get("class_names", ()) if "data" in sections and _present(config, "data") else ()
  if names and len(names) != k:
    problems.append(f"data.class_names has {len(names)} names for model.num_classes={k}; give {k} or ()")
  if "eval" in sections and _present(config, "eval"):
    objects = tuple(e.get("object_classes", ()))
    if any(c >= k for c in objects) or len(set(objects)) != len(objects):
      problems.append(f"eval.object_classes={objects!r} must be distinct class ids below model.num_classes={k}")
    if e.select_threshold or e.select_min_size or e.uncertainty != "none":
      problems.append(f"model.num_classes={k} predicts label maps by argmax, without threshold or size choice or "
                      "uncertainty maps: set --config.eval.select_threshold=False --config.eval.select_min_size=False "
                      "--config.eval.uncertainty=none")
  if "data" in sections and _present(config, "data") and (config.data.name == "synthetic" or not config.data.labels_root):
    problems.append(f"model.num_classes={k} needs integer label maps: data.name='folder' or 'lucchi' with "
                    "--config.data.labels_root set to a folder of training_labels.tif and testing_labels.tif")
  return problems


def validate(config: Any, sections: Sequence[str] = SECTIONS) -> None:
  """Raises InputError naming the first invalid field of `sections` (see the module docstring)."""
  for section in sections:
    if not _present(config, section):
      continue
    for path, accepts, allowed in _rules(section):
      try:
        value = _get(config, path)
      except (KeyError, AttributeError):
        raise InputError(f"config field {path} is missing; add it (allowed: {allowed})") from None
      if not accepts(value):
        raise InputError(f"config field {path}={value!r} is invalid: it must be {allowed}")
  problems = _cross_checks(config, sections)
  if problems:
    raise InputError(problems[0])

"""3D U-Net on EM volumes, and its 2D / 2.5D twins on the same data: overrides of configs/unet2d.py.

  python train.py --config=configs/unet3d.py --workdir=runs/syn3d            # generated isotropic volume, offline
  python train.py --config=configs/unet3d.py:iso --workdir=runs/iso3d        # the same with branching tubes
  python train.py --config=configs/unet3d.py:vnc --workdir=runs/vnc3d        # ../shared/data/vnc, 50 x 4.6 x 4.6 nm
  python train.py --config=configs/unet3d.py:lucchi --workdir=runs/lucchi3d  # EPFL Lucchi, 5 nm isotropic
  python evaluate.py --config=configs/unet3d.py:vnc --workdir=runs/vnc3d --config.eval.select_threshold=True
  python train.py --config=configs/unet3d.py:vnc,mode=2.5d --workdir=runs/vnc25d  # 2D model, 2k + 1 slices in
  python train.py --config=configs/unet3d.py:tiny --workdir=/tmp/tiny3d      # seconds; for tests (tiny_iso: tubes)

The argument is VARIANT[,mode=3d|2.5d|2d][,aug=full|flips|none]. The training stack is the volume
(its last data.val_slices sections validate: a real contiguous volume at least one window deep; the
2D / 2.5D twins validate on the same sections) and the test stack the test volume. Kernels
and pooling per level are derived from data.voxel_size_nm (unet_jax/network/anisotropy.py, printed at the
start of training): VNC gets in-plane (1, 3, 3) kernels and (1, 2, 2) pooling until its voxels are
within 2x of isotropic, behind a 2x2 space-to-depth stem in every mode (model.space_to_depth=2). Override
with --config.model.kernel_sizes / --config.model.pool_factors, or --config.model.in_plane=True for 1x3x3
kernels and 1x2x2 pooling everywhere (the 2D network section by section: a diagnostic,
benchmarks/in_plane_3d.py). 3D models use GroupNorm: BatchNorm's statistics would come from one or two
patches per device.
mode=2d and mode=2.5d keep the data, budget, val sections and evaluation (the 3D window's in-plane size,
its overlap, XLA, no TTA) and swap in the 2D variant's network (width, normalisation), patches and
schedule (2.5D: the `context_slices` neighbours on each side as input channels, with the 3D section
artefacts applied to those sections), for the 2D vs 2.5D vs 3D comparison (docs/results/dimensions.md).
The 2D variant of `iso` is `synthetic`'s, of `tiny_iso` `tiny`'s.
"""

import importlib.util
import os

import ml_collections

try:
  from configs import unet2d
except ModuleNotFoundError:  # loaded by path from another folder (unet-jax --config=/path/configs/unet3d.py)
  _spec = importlib.util.spec_from_file_location("unet2d", os.path.join(os.path.dirname(__file__), "unet2d.py"))
  unet2d = importlib.util.module_from_spec(_spec)
  _spec.loader.exec_module(unet2d)

VARIANTS = ("synthetic", "iso", "vnc", "lucchi", "tiny", "tiny_iso")
MODES = ("3d", "2.5d", "2d")
FLAT_VARIANT = {"iso": "synthetic", "tiny_iso": "tiny"}  # the configs/unet2d.py variant a 3D variant starts from


def parse_arg(arg: str) -> tuple[str, str, str | None]:
  """'vnc,mode=2.5d,aug=flips' -> ('vnc', '2.5d', 'flips'); an empty variant is 'synthetic'."""
  variant, *options = arg.split(",")
  pairs = dict(o.split("=", 1) for o in options if "=" in o)
  variant = variant or "synthetic"
  if (len(pairs) != len(options) or set(pairs) - {"mode", "aug"} or variant not in VARIANTS
      or pairs.get("mode", "3d") not in MODES):
    raise ValueError(f"config argument {arg!r}: use VARIANT[,mode=MODE][,aug=PRESET] with VARIANT one of "
                     f"{VARIANTS} and MODE one of {MODES}")
  return variant, pairs.get("mode", "3d"), pairs.get("aug")


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
  """The config for `arg` = VARIANT[,mode=MODE][,aug=PRESET] (see the module docstring)."""
  variant, mode, aug = parse_arg(arg)
  c = flat_config(variant, aug)
  VARIANT_OVERRIDES[variant](c)
  if mode != "3d":
    two_d(c, variant, context_slices=1 if mode == "2.5d" else 0)
  return c


def flat_config(variant: str, aug: str | None = None) -> ml_collections.ConfigDict:
  """The 2D config a variant starts from. VNC: its data and evaluation with the base training recipe (the
  one docs/results/dimensions.md was measured with), not the 2D VNC recipe its sweep chose."""
  suffix = f",aug={aug}" if aug else ""
  if variant != "vnc":
    return unet2d.get_config(FLAT_VARIANT.get(variant, variant) + suffix)
  c = unet2d.get_config("lucchi" + suffix)
  unet2d.vnc_data(c)
  return c


def retype(block: ml_collections.ConfigDict, name: str, value: object) -> None:
  """Sets a field to a value of another type (an int size becomes a per-axis tuple and back)."""
  del block[name]
  block[name] = value


def volume(c: ml_collections.ConfigDict) -> None:
  """What every 3D variant shares: a 3D model and the EM section artefacts."""
  c.model.ndim = 3
  c.model.norm = "group"  # per-example statistics: a 3D batch holds 1-2 patches per device, too few for BatchNorm
  c.data.synthetic.ndim = 3  # a coherent volume, not independent slices
  c.augment.misalign_prob = 0.2  # sections from a random one on (or one alone) shifted in-plane
  c.augment.misalign_pixels = 4
  c.augment.section_intensity_prob = 0.3  # per-section brightness/contrast
  c.augment.missing_section_prob = 0.1  # one section blanked or duplicated
  c.eval.batch_size = 2  # 3D windows are large
  c.eval.overlap = 0.5  # 3D windows are smaller than the volume, whatever the 2D variant chose
  c.eval.engine = "xla"
  c.eval.uncertainty = "none"  # 8 dihedral passes of every 3D window would dominate evaluation time
  c.eval.tta = "none"  # the same for the prediction (2D and 2.5D twins too: every mode is scored alike)
  c.eval.select_min_size = True  # spurious small components, not split objects, limit the 3D instance F1


def synthetic(c: ml_collections.ConfigDict) -> None:
  """An isotropic generated volume (unet_jax/io/synthetic.py): 96 + 48 slices of 160^2, minutes on a CPU."""
  volume(c)
  c.data.synthetic.shape = (160, 160)
  c.data.synthetic.train_slices = 96
  c.data.val_slices = 32  # the last 32 validate: one window deep
  c.data.synthetic.test_slices = 48
  c.data.synthetic.mito_spacing = 60.0  # one mitochondrion per 60^3 voxels (denser than the 2D default of 90)
  c.train.steps = 300
  c.train.batch_size = 2
  retype(c.train, "patch_size", (16, 64, 64))  # 66k voxels: XLA's CPU 3x3x3 convolutions are slow
  c.train.eval_every = 50
  c.train.checkpoint_every = 50
  c.optim.warmup_steps = 30
  retype(c.eval, "window", (32, 96, 96))


def iso(c: ml_collections.ConfigDict) -> None:
  """`synthetic` with truly 3D mitochondria: branching tubes in random directions, crossing sections at every
  angle (unet_jax/io/synthetic.py), in isotropic 5 nm voxels: the data on which 3D context should pay. Tested
  on 96 slices of 320^2."""
  synthetic(c)
  c.data.synthetic.objects = "tubes"  # ellipsoids | tubes
  c.data.synthetic.mito_spacing = 35.0  # a tube per 35^3 voxels at most (tubes stay 3 voxels apart): ~7 % foreground
  # A test volume 4x the training one: 119 tubes (3D components of its mask), so that one tube moves the 3D
  # instance F1 by under 0.01 (the 48 x 160^2 one it replaces held 21: too few to tell the modes apart).
  c.data.synthetic.test_slices = 96
  c.data.synthetic.test_shape = (320, 320)
  c.data.voxel_size_nm = (5.0, 5.0, 5.0)  # isotropic: 3x3x3 kernels and 2x2x2 pooling at every level


def vnc(c: ml_collections.ConfigDict) -> None:
  """VNC ssTEM: 8 training sections (+ 2 validation) and 4 test sections of 1024^2 at 50 x 4.6 x 4.6 nm."""
  volume(c)
  c.augment.elastic_z = False  # 50 nm sections: no interpolation (nor blur) across them
  c.data.val_slices = 4  # sections 6-9 validate (a real 4-section volume, one window deep); 0-5 train
  c.train.batch_size = 2  # 2 x 4 x 256^2 voxels = the 2D recipe's 8 x 256^2 pixels per step
  retype(c.train, "patch_size", (4, 256, 256))  # z divisible by the plan's z pooling (4 with the stem)
  retype(c.eval, "window", (4, 256, 256))
  # Every mode's network at half the in-plane resolution behind a pixel-shuffle stem and head (the 2D `vnc`
  # recipe's): about 3.3x cheaper steps for 2D, 2.5D and 3D alike (docs/results/dimensions.md).
  c.model.space_to_depth = 2


def lucchi(c: ml_collections.ConfigDict) -> None:
  """Lucchi FIB-SEM, isotropic 5 nm: 165 + 165 sections of 768 x 1024."""
  volume(c)
  c.train.batch_size = 2
  retype(c.train, "patch_size", (32, 128, 128))
  retype(c.eval, "window", (32, 128, 128))


def tiny(c: ml_collections.ConfigDict) -> None:
  """A few seconds of everything, for tests: a 20 x 32 x 32 volume, depth 2, 4 features."""
  volume(c)
  c.data.synthetic.shape = (32, 32)
  c.data.synthetic.train_slices = 20
  c.data.val_slices = 8  # the last 8 validate: one window deep
  c.model.base_features = 8  # GroupNorm's 8 groups need widths divisible by 8
  c.data.synthetic.test_slices = 8
  c.train.batch_size = 2
  retype(c.train, "patch_size", (8, 16, 16))
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  c.train.checkpoint_every = 3
  retype(c.eval, "window", (8, 16, 16))


def tiny_iso(c: ml_collections.ConfigDict) -> None:
  """`tiny` with the tubes of `iso`: seconds, for tests and smoke runs of benchmarks/compare_dims.py."""
  tiny(c)
  c.data.synthetic.objects = "tubes"
  c.data.synthetic.mito_spacing = 35.0


def two_d(c: ml_collections.ConfigDict, variant: str, context_slices: int) -> None:
  """The 2D (context_slices = 0) or 2.5D twin of a 3D variant: same data (val sections included) and evaluation
  (windows of the 3D window's in-plane size at its overlap, on XLA), the 2D variant's network (width,
  normalisation), patches and schedule."""
  twin = flat_config(variant)
  c.model.ndim = 2
  c.model.context_slices = context_slices
  c.model.norm, c.model.base_features = twin.model.norm, twin.model.base_features
  for field in ("batch_size", "patch_size", "steps", "log_every", "eval_every", "checkpoint_every"):
    retype(c.train, field, twin.train[field])
  c.optim.warmup_steps = twin.optim.warmup_steps
  retype(c.eval, "window", tuple(c.eval.window[1:]))  # not the 2D variant's (VNC: 1024^2 on ONNX Runtime)
  c.eval.batch_size = twin.eval.batch_size
  if not context_slices:  # 2.5D keeps the section artefacts: its 2k + 1 channels are sections
    for name in ("misalign_prob", "section_intensity_prob", "missing_section_prob"):
      c.augment[name] = 0.0


VARIANT_OVERRIDES = {"synthetic": synthetic, "iso": iso, "vnc": vnc, "lucchi": lucchi, "tiny": tiny,
                     "tiny_iso": tiny_iso}

"""2D U-Net for mitochondria segmentation; variants select the data set.

  python train.py --config=configs/unet2d.py --workdir=runs/lucchi          # EPFL Lucchi (downloads)
  python train.py --config=configs/unet2d.py:vnc --workdir=runs/vnc         # ../shared/data/vnc
  python train.py --config=configs/unet2d.py:synthetic --workdir=runs/syn   # no data needed
  python train.py --config=configs/unet2d.py:tiny --workdir=/tmp/tiny       # seconds; for tests

Override any field on the command line, e.g. --config.train.steps=500 --config.data.root=/data.
"""

import ml_collections

VARIANTS = ("lucchi", "vnc", "synthetic", "tiny")


def get_config(variant: str = "lucchi") -> ml_collections.ConfigDict:
  """Returns the config for `variant` (one of VARIANTS)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.host_devices = 0  # CPU only: number of XLA host devices for data parallelism (0: one per core)

  # Several processes/hosts as one system (unet_jax/distributed.py); every process gets the same
  # flags except process_id.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ""  # "host:port" of process 0; "auto": from SLURM/MPI/...; "": one process
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = variant if variant != "tiny" else "synthetic"
  c.data.root = {"lucchi": "data/lucchi", "vnc": "../shared/data/vnc"}.get(variant, "")
  c.data.url = "https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/%20ElectronMicroscopy_Hippocampus/"
  c.data.val_fraction = 0.2  # last slices of the training stack, for validation and tuning
  c.data.voxel_size_nm = {"lucchi": (5.0, 5.0, 5.0), "vnc": (50.0, 4.6, 4.6)}.get(variant, (5.0, 5.0, 5.0))
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.seed = 0
  c.data.synthetic.shape = (64, 64) if variant == "tiny" else (384, 384)
  c.data.synthetic.train_slices = 5 if variant == "tiny" else 20
  c.data.synthetic.test_slices = 2 if variant == "tiny" else 4
  c.data.synthetic.ndim = 2

  c.model = ml_collections.ConfigDict()
  c.model.ndim = 2
  c.model.depth = 2 if variant == "tiny" else 4  # poolings; patch sizes must divide by 2**depth
  c.model.base_features = 4 if variant == "tiny" else 16  # doubles per level
  c.model.norm = "batch"  # batch | group | none
  c.model.upsample = "resize"  # resize (1x1 conv + linear resize; faster on CPU) | transpose
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16

  c.train = ml_collections.ConfigDict()
  c.train.steps = {"tiny": 20, "synthetic": 500, "vnc": 1200}.get(variant, 3000)
  c.train.batch_size = 8  # global, split over devices
  c.train.patch_size = {"tiny": 32, "synthetic": 128}.get(variant, 256)
  c.train.fg_fraction = 0.5  # fraction of patches centred on a foreground pixel
  c.train.loss = "log_dice"  # log_dice | seed_log_dice | dice | bce | bce_dice
  c.train.smooth = 1.0  # Dice smoothing; keeps empty patches finite
  c.train.log_every = 5 if variant == "tiny" else 50
  c.train.eval_every = {"tiny": 10, "synthetic": 100}.get(variant, 200)
  c.train.checkpoint_every = 10 if variant == "tiny" else 100
  c.train.keep_checkpoints = 3
  c.train.prefetch = 2  # batches sampled ahead in a background thread
  c.train.max_minutes = 45.0 if variant == "vnc" else 0.0  # stop (and checkpoint) after this many minutes; 0 = no limit

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"  # cosine | constant (both with linear warm-up)
  c.optim.warmup_steps = 2 if variant == "tiny" else 100
  c.optim.final_lr_fraction = 0.01
  c.optim.grad_clip = 1.0  # global-norm clipping; 0 = off

  # Per-example augmentation in the jitted train step (unet_jax/augment.py; its docstring lists the
  # overrides for the "flips" and "none" ablations). Each transform fires with its *_prob; 0 = off.
  c.augment = ml_collections.ConfigDict()
  c.augment.flips = True  # one of the 8 dihedral flips/90-degree rotations, uniformly
  c.augment.rotate_prob = 0.5  # rotate in the (H, W) plane by an angle uniform in +-rotate_degrees
  c.augment.rotate_degrees = 180.0  # 180: any angle
  c.augment.scale_prob = 0.5  # zoom by a factor log-uniform in scale_range (> 1 magnifies)
  c.augment.scale_range = (0.8, 1.2)
  c.augment.shear_prob = 0.3  # shear in the (H, W) plane by an angle uniform in +-shear_degrees
  c.augment.shear_degrees = 10.0
  c.augment.elastic_prob = 0.3  # smooth random displacement, in the same resampling as the affine
  c.augment.elastic_alpha = 3.0  # displacement std (pixels) at the control points
  c.augment.elastic_sigma = 32.0  # control-point spacing (pixels); larger = smoother
  c.augment.brightness_prob = 0.5  # add an offset uniform in +-brightness
  c.augment.brightness = 0.1
  c.augment.contrast_prob = 0.5  # scale deviations from the patch mean by a factor uniform in contrast
  c.augment.contrast = (0.8, 1.2)
  c.augment.gamma_prob = 0.5  # image ** g, g log-uniform in gamma
  c.augment.gamma = (0.8, 1.25)
  c.augment.noise_prob = 0.3  # add Gaussian noise, std uniform in [0, noise_std]
  c.augment.noise_std = 0.03
  c.augment.blur_prob = 0.2  # Gaussian blur, sigma uniform in [0, blur_sigma] pixels
  c.augment.blur_sigma = 1.0
  if variant == "tiny":  # flips only: every other transform adds seconds to each test's compile
    for name in [k for k in c.augment if k.endswith("_prob")]:
      c.augment[name] = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.window = 32 if variant == "tiny" else 256
  c.eval.overlap = 0.5
  c.eval.blend = "gaussian"  # gaussian | constant
  c.eval.sigma = 0.125  # gaussian blending: sigma as a fraction of the window
  c.eval.tta = "none"  # test-time augmentation, averaged: none | flips (4) | dihedral (8 flips/rotations)
  c.eval.batch_size = 8
  c.eval.threshold = 0.5
  c.eval.checkpoint = "best"  # best | latest
  # evaluate.py's report (unet_jax/evaluation.py):
  c.eval.select_threshold = False  # True: use the candidate of best Dice on the val split (never test)
  c.eval.threshold_candidates = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
  c.eval.min_size = 100 if variant in ("lucchi", "vnc") else 20  # drop predicted components < this many voxels
  c.eval.iou_thresholds = (0.5, 0.75)  # instance matching; AP at 0.75 is MitoEM's AP-75
  c.eval.report_slices = 4  # pictures: this many evenly spaced overlays, and the worst in a montage
  c.eval.figure_px = 512  # longest side of report pictures, in pixels
  # Error bars, calibration and uncertainty in the report (intervals, calibration, uncertainty modules):
  c.eval.confidence_level = 0.95  # of every interval, in (0, 1)
  c.eval.bootstrap_resamples = 1000  # percentile bootstrap over slices (pixel scores) / objects (instances)
  c.eval.bootstrap_seed = 0  # the same seed gives the same intervals
  c.eval.calibration_bins = 15  # equal-width probability bins of the reliability diagram and ECE
  c.eval.calibrate = False  # True: apply the temperature fitted on the val split (workdir/calibration.json)
  c.eval.uncertainty = "tta"  # none | tta: per-pixel disagreement of the 8 dihedral transforms (8x inference)
  c.eval.review_top_k = 20  # length of the review list of least confident predicted mitochondria
  return c

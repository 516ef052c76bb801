"""2D U-Net for mitochondria segmentation: a base config (Lucchi) and one override block per variant.

  python train.py --config=configs/unet2d.py --workdir=runs/lucchi          # EPFL Lucchi (downloads)
  python train.py --config=configs/unet2d.py:vnc --workdir=runs/vnc         # ../shared/data/vnc
  python train.py --config=configs/unet2d.py:synthetic --workdir=runs/syn   # no data needed
  python train.py --config=configs/unet2d.py:tiny --workdir=/tmp/tiny       # seconds; for tests
  python train.py --config=configs/unet2d.py:vnc,aug=flips --workdir=...   # augmentation preset: full | flips | none | zoom | scale | lowres
  python train.py --config=configs/unet2d.py:vnc,fit=final --workdir=...   # the last run: val slices train too (final_fit)
  python train.py --config=configs/unet2d.py:vnc_classes --workdir=runs/vc  # VNC, five classes (softmax)

Override any field on the command line, e.g. --config.train.steps=500 --config.data.root=/data.
Every field is checked before anything runs (unet_jax/config/check.py).
"""

import ml_collections

from unet_jax.training import augment

VARIANTS = ("lucchi", "vnc", "vnc_classes", "synthetic", "tiny")
FITS = ("val", "final")  # fit=val: hold the val slices out (the default); fit=final: train on them too


def parse_arg(arg: str) -> tuple[str, dict[str, str]]:
  """'vnc,aug=flips' -> ('vnc', {'aug': 'flips'}); an empty variant is 'lucchi'."""
  variant, *options = arg.split(",")
  pairs = dict(o.split("=", 1) for o in options if "=" in o)
  if (len(pairs) != len(options) or set(pairs) - {"aug", "fit"} or (variant or "lucchi") not in VARIANTS
      or pairs.get("fit", "val") not in FITS):
    raise ValueError(f"config argument {arg!r}: use VARIANT[,aug=PRESET][,fit=FIT] with VARIANT one of {VARIANTS}, "
                     f"PRESET one of {tuple(augment.PRESETS)} and FIT one of {FITS}")
  return variant or "lucchi", pairs


def get_config(arg: str = "lucchi") -> ml_collections.ConfigDict:
  """The config for `arg` = VARIANT[,aug=PRESET][,fit=FIT] (see the module docstring)."""
  variant, options = parse_arg(arg)
  c = base_config()
  VARIANT_OVERRIDES[variant](c)
  augment.apply_preset(c, options.get("aug", DEFAULT_PRESET.get(variant, "full")))
  if options.get("fit") == "final":
    final_fit(c)
  return c


def final_fit(c: ml_collections.ConfigDict) -> None:
  """The last run of a recipe tuned on its val slices: they train too, so nothing is chosen on them.

  The latest checkpoint, threshold 0.5 and the configured minimum sizes are fixed in advance, as measured
  against the val-chosen ones in docs/results/cross-validation.md. Override eval.threshold / eval.min_size
  with the values a run with val chose, if preferred.
  """
  c.data.final_fit = True
  c.eval.checkpoint = "latest"
  c.eval.select_threshold = False
  c.eval.select_min_size = False
  c.eval.threshold = 0.5


def base_config() -> ml_collections.ConfigDict:
  """The Lucchi recipe; every variant starts from it."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.host_devices = 0  # CPU only: number of XLA host devices for data parallelism (0: one per core)

  # Several processes/hosts as one system (unet_jax/training/distributed.py); every process gets the same
  # flags except process_id.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ""  # "host:port" of process 0; "auto": from SLURM/MPI/...; "": one process
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "lucchi"  # lucchi (downloads when missing) | folder (any folder with the four files) | synthetic
  c.data.root = "data/lucchi"  # folder of training.tif, training_groundtruth.tif, testing.tif, testing_groundtruth.tif
  c.data.url = ""  # where to download Lucchi from; "": the official EPFL address (unet_jax/io/download.py)
  c.data.val_fraction = 0.2  # last slices of the training stack, for validation and tuning
  c.data.val_slices = 0  # > 0: exactly this many last slices validate instead (3D: at least eval.window's depth)
  c.data.final_fit = False  # True: the val slices go back into training (the final fit of a tuned recipe); val
  # scores become in-sample, so evaluate the latest checkpoint at a threshold chosen on a tuning run's val split
  c.data.voxel_size_nm = (5.0, 5.0, 5.0)  # (z, y, x); morphometry in nm
  c.data.labels_root = ""  # model.num_classes > 1: folder of training_labels.tif, testing_labels.tif (class ids)
  c.data.class_names = ()  # model.num_classes > 1: one name per class for reports (() = the class ids)
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.seed = 0
  c.data.synthetic.shape = (384, 384)
  c.data.synthetic.train_slices = 20
  c.data.synthetic.test_slices = 4
  c.data.synthetic.test_shape = ()  # the test slices' (H, W); () = shape
  c.data.synthetic.ndim = 2

  c.model = ml_collections.ConfigDict()
  c.model.ndim = 2
  c.model.depth = 4  # poolings; patch sizes must divide by 2**depth
  c.model.base_features = 16  # doubles per level
  c.model.norm = "batch"  # batch | group | none
  c.model.upsample = "resize"  # resize (1x1 conv + linear resize; faster on CPU) | transpose
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  # Per-level kernels and pooling (unet_jax/network/anisotropy.py): () = derived from the voxel size (3 and 2
  # on every axis for isotropic voxels), else depth + 1 kernels / depth factors, one tuple per level.
  c.model.voxel_size_nm = c.data.get_ref("voxel_size_nm")  # follows data.voxel_size_nm
  c.model.kernel_sizes = ()  # e.g. ((1, 3, 3),) * 3 + ((3, 3, 3),) * 2 for VNC in 3D
  c.model.pool_factors = ()  # e.g. ((1, 2, 2),) * 3 + ((2, 2, 2),)
  c.model.space_to_depth = 1  # s > 1: the network runs at 1/s the in-plane resolution on s*s pixels per input
  # channel and returns s*s logits per pixel, back at full resolution (a pixel-shuffle stem and head; ~s^2x cheaper)
  c.model.context_slices = 0  # 2.5D (2D models): k neighbouring slices on each side as 2k + 1 input channels
  c.model.in_plane = False  # 3D only: 1x3x3 kernels, 1x2x2 pooling everywhere (the 2D network per section; a diagnostic)
  c.model.num_classes = 1  # 1: binary mitochondria (one sigmoid); K > 1: integer label maps with classes 0..K-1
  c.model.output = "sigmoid"  # sigmoid (one per class) | softmax (over the classes; K > 1 only)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 3000
  c.train.batch_size = 8  # global, split over devices
  c.train.patch_size = 256  # an int or one size per axis; divisible by 2**model.depth
  c.train.fg_fraction = 0.5  # fraction of patches centred on a foreground pixel
  c.train.loss = "log_dice"  # log_dice | log_one_minus_dice (the original code's ln(1 - Dice)) | dice | bce | bce_dice
  c.train.smooth = 1.0  # Dice smoothing; keeps empty patches finite
  c.train.boundary_weight = 0.0  # > 0: pixels within boundary_width px of a mask edge weigh 1 + this in the loss
  c.train.boundary_width = 2  # pixels, in the plane (binary models)
  c.train.class_sampling = ()  # model.num_classes > 1: one weight per class; patches are centred on a pixel of a
  # class drawn with these probabilities (normalised), e.g. to favour rare classes; replaces fg_fraction (() = off)
  c.train.class_weights = ()  # model.num_classes > 1: one weight per class for Dice and cross-entropy (() = equal)
  c.train.log_every = 50
  c.train.eval_every = 200
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 3
  c.train.prefetch = 2  # batches sampled ahead in a background thread
  c.train.budget_minutes = 0.0  # > 0: time the first steps, then fit the run (and its cosine schedule) into this many minutes
  c.train.budget_measure_steps = 10  # steps timed for the budget (after compiling); within optim.warmup_steps
  c.train.budget_retime = False  # True: time the steps again at each validation and refit the length to the minutes left
  c.train.schedule_lengths = ()  # ((step, length), ...) a budgeted run logged: replays its schedule by step count
  c.train.max_minutes = 0.0  # stop (and checkpoint) after this many minutes; 0 = no limit
  c.train.ema_decay = 0.0  # > 0: validate, checkpoint and run an EMA of the weights with this decay (e.g. 0.99); 0 = off
  c.train.tensorboard = True  # TensorBoard summaries (loss, learning rate, validation scores, slices) in workdir/tensorboard
  c.train.init_from = ""  # fine-tuning: start from this workdir's eval.checkpoint or this export.py package ("" = fresh weights)
  # Mean teacher on unlabelled images of the same tissue (unet_jax/training/consistency.py); off while
  # consistency_weight = 0.
  c.train.consistency_weight = 0.0  # > 0: weight of the teacher-student consistency loss; needs train.unlabeled
  # and train.ema_decay > 0 (the teacher is the EMA of the weights)
  c.train.unlabeled = ()  # stacks without masks (TIFF/OME-Zarr), e.g. ('../shared/data/vnc/unlabeled.tif',)
  c.train.unlabeled_batch = 4  # unlabelled patches per step (global; a multiple of the devices)
  c.train.consistency_rampup_steps = 500  # weight * exp(-5 (1 - step / this)^2) until then; 0: full from the start
  c.train.consistency_noise = 0.03  # std of the Gaussian noise added to each view (images in [0, 1]); 0 = none
  c.train.pseudo_label_threshold = 0.0  # in [0.5, 1): also cross-entropy against the teacher's labels where it
  # is at least this confident; 0 = off

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"  # cosine | constant (both with linear warm-up)
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.01
  c.optim.grad_clip = 1.0  # global-norm clipping; 0 = off

  # Per-example augmentation in the jitted train step (unet_jax/training/augment.py). Each transform fires
  # with its *_prob; 0 = off. Presets (augment.PRESETS) via the config argument: VARIANT,aug=flips.
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
  c.augment.lowres_prob = 0.0  # shrink the (H, W) plane by a factor uniform in lowres_range and enlarge it back
  # (image only): the interpolation blur of an input at another pixel size resampled onto the model's grid
  c.augment.lowres_range = (1.0, 2.0)  # factors >= 1; 2: half the resolution
  # 3D patches only (unet_jax/training/sections.py): EM section artefacts; off here, on in configs/unet3d.py.
  c.augment.elastic_z = True  # elastic displacement along z too; False keeps anisotropic sections unmixed
  c.augment.misalign_prob = 0.0  # shift the sections from a random one on (or it alone) in-plane, mask too
  c.augment.misalign_pixels = 4  # largest shift per axis, pixels
  c.augment.section_intensity_prob = 0.0  # every section its own brightness and contrast
  c.augment.section_brightness = 0.05  # offset uniform in +-section_brightness
  c.augment.section_contrast = (0.9, 1.1)  # factor about the section mean, uniform in this range
  c.augment.missing_section_prob = 0.0  # one section blanked (0) or duplicated from its neighbour

  c.eval = ml_collections.ConfigDict()
  c.eval.window = 256  # an int or one size per axis
  c.eval.overlap = 0.5
  c.eval.blend = "gaussian"  # gaussian | constant
  c.eval.sigma = 0.125  # gaussian blending: sigma as a fraction of the window
  c.eval.tta = "none"  # test-time augmentation, averaged: none | flips (4) | dihedral (8 flips/rotations)
  c.eval.val_tta = ""  # TTA of the validations during training ("": eval.tta); none: 8x cheaper than dihedral
  c.eval.batch_size = 8
  c.eval.engine = "xla"  # xla | onnx (ONNX Runtime for the forward pass; pick by benchmarks/inference_engines.py)
  c.eval.chunk = (32, 1024, 1024)  # (z, y, x) voxels per block of chunked OME-Zarr segmentation; memory grows with it, not the volume
  c.eval.threshold = 0.5
  c.eval.checkpoint = "best"  # best | latest
  # evaluate.py's report (unet_jax/reports/evaluation.py):
  c.eval.select_threshold = False  # True: use the candidate of best Dice on the val split (never test)
  c.eval.threshold_candidates = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
  c.eval.min_size = 100  # drop predicted components < this many voxels
  c.eval.min_area = 100  # 2D objects: also drop profiles < this many pixels in their section (fragments, specks)
  c.eval.select_min_size = False  # True: the min_size candidate of best instance F1 on the val split (never test)
  c.eval.min_size_candidates = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)  # voxels
  c.eval.iou_thresholds = (0.5, 0.75)  # instance matching; AP at 0.75 is MitoEM's AP-75
  c.eval.report_slices = 4  # pictures: this many evenly spaced overlays, and the worst in a montage
  c.eval.figure_px = 512  # longest side of report pictures, in pixels
  # Error bars, calibration and uncertainty in the report (intervals, calibration, uncertainty modules):
  c.eval.confidence_level = 0.95  # of every interval, in (0, 1)
  c.eval.bootstrap_resamples = 1000  # percentile bootstrap over slices (pixel scores) / objects (instances)
  c.eval.bootstrap_seed = 0  # the same seed gives the same intervals
  c.eval.calibration_bins = 15  # equal-width probability bins of the reliability diagram and ECE
  c.eval.calibrate = False  # True: apply the temperature fitted on the val split (workdir/calibration.json)
  c.eval.uncertainty = "none"  # none | tta: per-pixel disagreement of the 8 dihedral transforms (8x inference)
  c.eval.review_top_k = 20  # length of the review list of least confident predicted mitochondria
  c.eval.object_classes = ()  # model.num_classes > 1: classes also scored per object (components matched by IoU)

  # explain.py (unet_jax/explain/explanation.py): how the network arrived at each object, which filters did it.
  c.explain = ml_collections.ConfigDict()
  c.explain.seed = 0
  c.explain.crop = 0  # side of the crop around each object, pixels (0: eval.window); grown to cover the object
  c.explain.batch_size = 8  # network inputs per call (path points, noisy copies, channel masks)
  c.explain.ig_steps = 64  # integrated-gradients points (midpoint rule), >= 2 ...
  c.explain.ig_max_steps = 512  # ... doubled up to this many until the completeness error < ig_tolerance
  c.explain.ig_tolerance = 0.01  # completeness error |sum(IG) - (F(x) - F(b))| / |F(x) - F(b)|, in (0, 1)
  c.explain.blur_sigma = 8.0  # blurred baseline (and deletion fill): Gaussian sigma in pixels, > 0
  c.explain.smoothgrad_samples = 0  # SmoothGrad noisy copies, >= 0 (0: off)
  c.explain.smoothgrad_noise = 0.1  # SmoothGrad noise std, a fraction of the crop's intensity range
  c.explain.cam_layers = ("bottleneck", "dec1")  # Seg-Grad-CAM blocks: enc0..enc{depth-1}, bottleneck, dec*
  c.explain.deletion_points = 21  # points of each deletion curve, >= 3
  c.explain.sanity_steps = 16  # IG points per model in the randomisation test, >= 2
  c.explain.dice_tiles = 8  # validation tiles (eval.window px) for each filter's Dice drop (0: all tiles)
  c.explain.top_k = 5  # filters listed per object and per block in explain.md
  c.explain.gallery_layers = ("enc1", "bottleneck", "dec1")  # blocks whose top filters are pictured
  c.explain.gallery_filters = 3  # top filters pictured per gallery block
  c.explain.gallery_patches = 6  # most activating validation patches per pictured filter
  c.explain.actmax_px = 96  # activation-maximisation image side, a multiple of 2**model.depth
  c.explain.actmax_steps = 128  # gradient-ascent steps
  return c


def vnc(c: ml_collections.ConfigDict) -> None:
  """Drosophila VNC ssTEM (../shared/data/vnc): 10 + 4 slices of 1024^2, anisotropic voxels."""
  vnc_data(c)
  # The recipe the sweep chose by val Dice (docs/results/default-recipe.md: configs/sweeps/recipe_local.py, trial 3;
  # with DEFAULT_PRESET's flips-only augmentation): BCE + Dice, more foreground-centred patches, a higher
  # learning rate with a shorter warm-up.
  c.train.loss = "bce_dice"
  c.train.fg_fraction = 0.657
  c.optim.learning_rate = 0.003275
  c.optim.warmup_steps = 70
  # The network at half the in-plane resolution behind a pixel-shuffle stem and head: about 4.5x the steps per
  # minute on the CPU, better Dice at equal minutes (docs/results/cross-validation.md).
  c.model.space_to_depth = 2


def vnc_data(c: ml_collections.ConfigDict) -> None:
  """VNC's data, budget and evaluation, without its training recipe (configs/unet3d.py builds on this)."""
  c.data.name = "folder"
  c.data.root = "../shared/data/vnc"
  c.data.voxel_size_nm = (50.0, 4.6, 4.6)
  c.train.budget_minutes = 45.0  # the run's length is fitted to 45 minutes on whatever machine runs it
  # The fastest inference at equal val Dice on 1024^2 slices (docs/results/inference.md): one window per
  # slice, ONNX Runtime; benchmarks/window_choice.py.
  c.eval.window = 1024
  c.eval.overlap = 0.0
  c.eval.engine = "onnx"
  c.eval.select_threshold = True  # validations and evaluate.py score at the val split's best threshold
  # (the thresholds runs chose, and why: docs/results/default-recipe.md, docs/results/accuracy.md)
  c.eval.select_min_size = True  # objects: membrane bits and vesicle clusters form small spurious components
  c.eval.tta = "dihedral"  # mean of the 8 flips/rotations, chosen on val: docs/results/default-recipe.md;
  # 8x the forward (timings: docs/results/inference.md)


def vnc_classes(c: ml_collections.ConfigDict) -> None:
  """VNC's images with five-class labels (../shared/data/vnc_classes): cytoplasm, membrane, glia, mitochondria,
  synapse; one softmax, log-Dice averaged over the classes, argmax label maps."""
  vnc_data(c)
  c.data.labels_root = "../shared/data/vnc_classes"
  c.data.class_names = ("cytoplasm", "membrane", "glia/extracellular", "mitochondria", "synapse")
  c.model.num_classes = 5
  c.model.output = "softmax"
  c.train.loss = "bce_dice"  # cross-entropy + (1 - mean soft Dice): rare classes (synapse, 0.7 %) still pull
  c.eval.engine = "xla"  # eval.engine='onnx' runs K-class models too; threshold choice is binary-only
  c.eval.select_threshold = False
  c.eval.select_min_size = False
  c.eval.tta = "none"
  c.eval.object_classes = (3, 4)  # mitochondria and synapses are objects: per-object scores and review lists


def synthetic(c: ml_collections.ConfigDict) -> None:
  """Generated EM-like slices (unet_jax/io/synthetic.py): no data needed, minutes on a CPU."""
  c.data.name = "synthetic"
  c.data.root = ""
  c.train.steps = 500
  c.train.patch_size = 128
  c.train.eval_every = 100
  c.eval.min_size = 20
  c.eval.min_area = 20


def tiny(c: ml_collections.ConfigDict) -> None:
  """A few seconds of everything, for tests; flips-only augmentation (its default preset)."""
  synthetic(c)
  c.data.synthetic.shape = (64, 64)
  c.data.synthetic.train_slices = 5
  c.data.synthetic.test_slices = 2
  c.model.depth = 2
  c.model.base_features = 4
  c.train.steps = 20
  c.train.patch_size = 32
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  c.optim.warmup_steps = 2
  c.eval.window = 32


DEFAULT_PRESET = {"tiny": "flips", "vnc": "flips", "vnc_classes": "flips"}  # augmentation preset without ,aug=; VNC's chosen by the sweep
VARIANT_OVERRIDES = {"lucchi": lambda c: None, "vnc": vnc, "vnc_classes": vnc_classes, "synthetic": synthetic, "tiny": tiny}

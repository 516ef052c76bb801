"""Mean-teacher training on unlabelled EM: a few labelled slices, many unlabelled ones of the same tissue.

The teacher is the EMA of the student's weights (`train.ema_decay`: the average that is validated and run).
Each unlabelled patch gets one geometric augmentation (the `augment` block), then two views that differ by
independent photometry (the `augment` block's, plus Gaussian noise of std `train.consistency_noise`) and, with
`augment.flips`, one of the 8 dihedral flips/rotations for the student's view, undone on the student's output;
so both predictions lie in the same frame, pixel for pixel (each network normalises with its own batch's
BatchNorm statistics; the running statistics come from the labelled batch only). The student learns to agree
with the teacher: the squared difference of their probabilities and, with `train.pseudo_label_threshold`, the
cross-entropy against the teacher's confident pixels. Its weight ramps up as exp(-5 (1 - t)^2), t = step /
`train.consistency_rampup_steps` (Laine & Aila; Tarvainen & Valpola), while the teacher is still poor.

Like `losses.py`, the loss is a function of batch sums, so the sums are added over devices and the
data-parallel gradient is the single-device one. Unlabelled batches depend only on (seed, step, example), on
a stream apart from the labelled one, so a resumed run sees the batches it would have.
"""

from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unet_jax.io.data import Split
from unet_jax.network.model import class_probabilities
from unet_jax.training import augment
from unet_jax.training.losses import Sums
from unet_jax.training.sampling import PatchSampler

STREAM = 1  # the unlabelled batches' seed sequence is [seed, step, example, STREAM]; the labelled one has 3 entries


def rampup_weight(step: jax.Array, weight: float, rampup_steps: int) -> jax.Array:
  """The consistency weight at `step`: weight * exp(-5 (1 - t)^2) with t = min(step / rampup_steps, 1)."""
  if not rampup_steps:
    return jnp.asarray(weight, jnp.float32)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
  return weight * jnp.exp(-5.0 * (1.0 - t) ** 2)


def undo_dihedral(x: jax.Array, index: jax.Array, spatial_axes: tuple[int, int]) -> jax.Array:
  """The inverse of `augment.dihedral(., index)`: a rotation by -k quarter turns, or a reflection (its own inverse)."""
  return augment.dihedral(x, jnp.where(index < 4, (4 - index) % 4, index), spatial_axes)


def example_views(key: jax.Array, image: jax.Array, config: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(teacher view, student view, student's dihedral index) of one unlabelled patch f32[*spatial, C]."""
  geometry_key, teacher_key, student_key, flip_key = jax.random.split(key, 4)
  mask = jnp.zeros((*image.shape[:-1], 1), jnp.float32)
  base, _ = augment.augment_geometry(geometry_key, image, mask, config.augment)

  def view(k: jax.Array) -> jax.Array:
    photometry_key, noise_key = jax.random.split(k)
    x = augment.augment_intensity(photometry_key, base, config.augment)
    if config.train.consistency_noise:
      x = jnp.clip(x + config.train.consistency_noise * jax.random.normal(noise_key, x.shape, x.dtype), 0.0, 1.0)
    return x

  index = jax.random.randint(flip_key, (), 0, 8) if config.augment.flips else jnp.zeros((), jnp.int32)
  spatial = base.ndim - 1
  student = augment.dihedral(view(student_key), index, (spatial - 2, spatial - 1))
  return view(teacher_key), student, index


def views(keys: jax.Array, images: jax.Array, config: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`example_views` vmapped: teacher and student views f32[U, *spatial, C], dihedral indices i32[U]."""
  return jax.vmap(lambda k, x: example_views(k, x, config))(keys, images)


def to_teacher_frame(student_logits: jax.Array, index: jax.Array) -> jax.Array:
  """Student logits f32[U, *spatial, K] of the flipped/rotated views, moved back to the teacher's frame."""
  spatial = student_logits.ndim - 2
  return jax.vmap(lambda x, i: undo_dihedral(x, i, (spatial - 2, spatial - 1)))(student_logits, index)


def consistency_sums(student_logits: jax.Array, teacher_logits: jax.Array, output: str = "sigmoid",
                     pseudo_label_threshold: float = 0.0) -> Sums:
  """Sums over the unlabelled batch of logits f32[U, *spatial, K] in one frame (the teacher's held constant).

  'squared': sum of (p_student - p_teacher)^2 over pixels and classes, 'values': their count. With a
  threshold, 'pseudo': the cross-entropy of the student against the teacher's label on pixels (or, for
  per-class sigmoids, pixel-classes) whose teacher probability is at least that confident, 'confident':
  their count.
  """
  teacher = jax.lax.stop_gradient(class_probabilities(teacher_logits, output))
  student = class_probabilities(student_logits, output)
  sums = {"squared": jnp.sum((student - teacher) ** 2), "values": jnp.asarray(student.size, jnp.float32)}
  if not pseudo_label_threshold:
    return sums
  if output == "softmax":
    confident = (jnp.max(teacher, -1) >= pseudo_label_threshold).astype(jnp.float32)
    labels = jax.nn.one_hot(jnp.argmax(teacher, -1), teacher.shape[-1], dtype=jnp.float32)
    cross_entropy = -jnp.sum(jax.nn.log_softmax(student_logits, -1) * labels, -1)
  else:
    confident = (jnp.maximum(teacher, 1.0 - teacher) >= pseudo_label_threshold).astype(jnp.float32)
    cross_entropy = optax.sigmoid_binary_cross_entropy(student_logits, (teacher >= 0.5).astype(jnp.float32))
  return {**sums, "pseudo": jnp.sum(confident * cross_entropy), "confident": jnp.sum(confident)}


def consistency_loss(s: Sums) -> jax.Array:
  """Mean squared probability difference, plus the mean pseudo-label cross-entropy when the sums hold one."""
  loss = s["squared"] / s["values"]
  if "pseudo" in s:
    loss = loss + s["pseudo"] / jnp.maximum(s["confident"], 1.0)
  return loss


def make_samplers(stacks: Sequence[np.ndarray], patch_shape: tuple[int, ...], context_slices: int = 0,
                  ) -> list[PatchSampler]:
  """One patch sampler per unlabelled stack f32[Z, H, W] (no mask: every patch at a uniform origin)."""
  return [PatchSampler.create(Split(s, np.broadcast_to(np.uint8(0), s.shape)), patch_shape, 0.0, context_slices)
          for s in stacks]


def unlabeled_batches(samplers: Sequence[PatchSampler], batch_size: int, seed: int, start_step: int,
                      process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
  """This process's part of the global unlabelled batches f32[U, *patch, C] for steps start_step, ...

  Example i of step k depends only on (seed, k, i): its stack is drawn in proportion to the stacks'
  voxels, then its patch; process p gets examples as in `sampling.batches`.
  """
  sizes = np.array([s.split.image.size for s in samplers], np.float64)
  local = batch_size // process_count
  step = start_step
  while True:
    images = []
    for i in range(process_index * local, (process_index + 1) * local):
      rng = np.random.default_rng([seed, step, i, STREAM])
      images.append(samplers[rng.choice(len(samplers), p=sizes / sizes.sum())].sample(rng, 1)["image"])
    yield np.concatenate(images)
    step += 1

"""Integrated gradients, SmoothGrad, Seg-Grad-CAM and deletion curves on a U-Net and on a toy model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet2d
from unet_jax.errors import InputError
from unet_jax.explain import attribution, probe, sanity
from unet_jax.network import anisotropy
from unet_jax.network.model import init_variables, UNet

REGION = (slice(8, 16), slice(20, 30))


class RegionModel(nn.Module):
  """Every pixel's logit is a nonlinear function of the pixels in REGION only."""
  depth: int = 0

  def plan(self) -> anisotropy.Plan:
    """No pooling: any size fits (the probe pads to the plan's size factors)."""
    return anisotropy.Plan(((1, 1),), ())

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    s = jnp.sum(jnp.tanh(3.0 * x[:, REGION[0], REGION[1], :]) ** 2, axis=(1, 2, 3))
    return jnp.broadcast_to(s[:, None, None, None], x.shape)


def _unet_with_statistics(seed: int = 0) -> tuple[UNet, dict]:
  """A small U-Net whose BatchNorm statistics are not the identity (so F is not homogeneous)."""
  model = UNet(depth=2, base_features=4)
  variables = init_variables(model, jax.random.PRNGKey(seed))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
  shift = lambda tree: jax.tree.map(lambda s: s + 0.1 * jax.random.normal(next(keys), s.shape), tree)
  params = {k: ({**v, **{n: shift(v[n]) for n in v if n.startswith("norm")}} if k[:3] in ("enc", "dec", "bot") else v)
            for k, v in variables["params"].items()}
  return model, {"params": params, "batch_stats": shift(variables["batch_stats"])}


def _image_and_object(shape=(40, 36)):
  image = jax.random.uniform(jax.random.PRNGKey(7), shape)
  weights = jnp.zeros(shape).at[12:22, 10:20].set(1.0)
  return image, weights


@pytest.mark.slow
@pytest.mark.parametrize("kind", attribution.BASELINES)
def test_integrated_gradients_complete_on_unet_at_default_steps(kind):
  model, variables = _unet_with_statistics()
  image, weights = _image_and_object()
  steps = unet2d.get_config("tiny").explain.ig_steps
  base = attribution.baseline(image, kind, 4.0)
  attr, score, base_score = attribution.integrated_gradients(model, variables, image, weights, base, steps)
  direct = float(probe.object_scores(model, variables, image[None], weights)[0])
  assert score == pytest.approx(direct, rel=1e-5)
  assert abs(score - base_score) > 1e-3  # a non-trivial path
  assert attribution.completeness_error(attr, score, base_score) < 0.01
  # A single gradient times (x - b) is not integrated gradients: it misses completeness here.
  grad = np.asarray(attribution.input_gradients(model, variables, image[None], weights)[0])
  assert attribution.completeness_error(np.asarray(image - base) * grad, score, base_score) > 0.01


def test_toy_model_attributes_only_its_region():
  model, variables = RegionModel(), {}
  image = jax.random.uniform(jax.random.PRNGKey(0), (32, 40))
  weights = jnp.ones((32, 40))
  inside = np.zeros((32, 40), bool)
  inside[REGION] = True
  attr, score, base_score = attribution.integrated_gradients(model, variables, image, weights, jnp.zeros_like(image))
  assert np.all(attr[~inside] == 0.0) and np.all(attr[inside] > 0.0)
  assert attribution.completeness_error(attr, score, base_score) < 0.01
  smooth = attribution.smoothgrad(model, variables, image, weights, jax.random.PRNGKey(1), samples=4)
  assert np.all(smooth[~inside] == 0.0) and np.any(smooth[inside] != 0.0)
  base = jnp.zeros_like(image)  # the baseline the attributions were computed from
  by_attr = attribution.deletion_curve(model, variables, image, weights, base, attribution.most_attributed_first(attr))
  random = attribution.deletion_curve(model, variables, image, weights, base,
                                      np.random.default_rng(0).permutation(image.size))
  assert by_attr[0] == pytest.approx(score, rel=1e-5) and by_attr[-1] == pytest.approx(random[-1], rel=1e-5)
  assert attribution.curve_area(by_attr) < attribution.curve_area(random)


@pytest.mark.slow
def test_seg_grad_cam_matches_its_definition():
  model, variables = _unet_with_statistics()
  image, weights = _image_and_object((32, 32))
  cam = np.asarray(attribution.seg_grad_cam(model, variables, image, weights, "dec1"))
  opposite = np.asarray(attribution.seg_grad_cam(model, variables, image, -weights, "dec1"))
  # By hand: the gradient w.r.t. dec1's output through an additive perturbation, channel means, ReLU.
  _, features = probe.logits_edited(model, variables, image[None])
  delta = jnp.zeros(features["dec1"].shape)
  grad = jax.grad(lambda d: probe.object_scores(model, variables, image[None], weights,
                                                {"dec1": lambda a: a + d})[0])(delta)[0]
  coarse = np.maximum(np.einsum("hwc,c->hw", features["dec1"][0], grad.mean((0, 1))), 0.0)
  assert cam.shape == (32, 32) and min(cam.min(), opposite.min()) >= 0.0 and max(cam.max(), opposite.max()) > 0.0
  np.testing.assert_allclose(cam, jax.image.resize(coarse, (32, 32), "linear"), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_randomisation_lowers_the_correlation_and_goes_head_first():
  model, variables = _unet_with_statistics()
  image, weights = _image_and_object()
  stages = sanity.cascading_randomisation(model, variables, jax.random.PRNGKey(3))
  assert [s for s, _ in stages] == ["head", "dec0", "dec1", "bottleneck", "enc1", "enc0"]
  changed = lambda v, name: not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(v["params"][name]), jax.tree.leaves(variables["params"][name])))
  head_only, after_dec0 = stages[0][1], stages[1][1]
  assert changed(head_only, "head") and not changed(head_only, "dec0") and not changed(head_only, "enc0")
  assert changed(after_dec0, "dec0") and changed(after_dec0, "up0") and not changed(after_dec0, "dec1")
  assert all(changed(stages[-1][1], n) for n in variables["params"])
  base = attribution.baseline(image, "blurred", 4.0)
  explain = lambda v: attribution.integrated_gradients(model, v, image, weights, base, 16)[0]
  rows = sanity.randomisation_test(model, variables, explain, jax.random.PRNGKey(3))
  reference = explain(variables)
  assert sanity.rank_correlation(reference, explain(variables)) == pytest.approx(1.0)
  assert rows[-1]["spearman"] < 0.5


@pytest.mark.slow
def test_bad_layer_and_baseline_are_one_line_errors_listing_valid_choices():
  model, variables = _unet_with_statistics()
  image, weights = _image_and_object((32, 32))
  with pytest.raises(InputError) as e:
    attribution.seg_grad_cam(model, variables, image, weights, "enc7")
  message = str(e.value)
  assert "\n" not in message and "enc0, enc1, bottleneck, dec1, dec0" in message
  with pytest.raises(InputError, match="valid baselines: black, blurred"):
    attribution.baseline(image, "white", 1.0)


@pytest.mark.slow
def test_steps_are_doubled_until_complete():
  model, variables = _unet_with_statistics()
  image, weights = _image_and_object()
  base = attribution.baseline(image, "blurred", 4.0)
  coarse = attribution.integrated_gradients(model, variables, image, weights, base, 2)
  assert attribution.completeness_error(*coarse) > 0.01
  attr, score, base_score, steps = attribution.integrated_gradients_to_tolerance(
      model, variables, image, weights, base, steps=2, max_steps=256, tolerance=0.01)
  assert steps > 2 and attribution.completeness_error(attr, score, base_score) < 0.01
  assert attribution.integrated_gradients_to_tolerance(model, variables, image, weights, base, 2, 3)[3] == 2

"""Instances: connected components (2D vs 3D, size filter), one-to-one matching, instance scores, AP."""

import numpy as np
import pytest

from unet_jax.errors import InputError
from unet_jax.scores import instances


def _scores(true_mask, pred_mask, thresholds=(0.5, 0.75), dims=2):
  true_labels = instances.label_instances(true_mask, dims)
  pred_labels = instances.label_instances(pred_mask, dims)
  ov = instances.overlaps(true_labels, pred_labels)
  rows = instances.instance_scores(ov, thresholds, np.ones(ov.n_pred))
  return {r["iou_threshold"]: r for r in rows}


def test_2d_and_3d_components():
  mask = np.zeros((3, 8, 8), bool)
  mask[0, 1:4, 1:4] = True
  mask[1, 2:5, 2:5] = True  # overlaps slice 0 in (y, x): one 3D object, two 2D objects
  mask[2, 6:8, 6:8] = True  # not under slice 1's square: its own object in 3D too
  mask[2, 0, 0] = mask[2, 1, 1] = True  # touch at a corner only: two objects (face connectivity)
  labels_2d = instances.label_instances(mask, 2)
  labels_3d = instances.label_instances(mask, 3)
  assert labels_2d.max() == 5
  assert len(np.unique(labels_2d[0])) == 2 and len(np.unique(labels_2d[2])) == 4  # unique across slices
  assert labels_3d.max() == 4
  assert labels_3d[0, 2, 2] == labels_3d[1, 3, 3] != 0
  np.testing.assert_array_equal(labels_2d > 0, mask)


def test_min_size_drops_small_components_and_renumbers():
  mask = np.zeros((1, 10, 10), bool)
  mask[0, 0:2, 0:2] = True  # 4 px
  mask[0, 5:8, 5:8] = True  # 9 px
  labels = instances.label_instances(mask, 2, min_size=5)
  assert labels.max() == 1 and np.count_nonzero(labels) == 9
  assert instances.label_instances(mask, 2, min_size=4).max() == 2  # min_size itself is kept


def test_min_size_counts_volume_components_for_2d_objects_too():
  """A tube's 4 px profile in one section belongs to a 28-voxel object and stays; a 9-voxel speck goes, in 2D and 3D."""
  mask = np.zeros((5, 12, 12), bool)
  mask[:, 1:3, 1:3] = True  # a tube through every section: 4 px per section, 20 voxels
  mask[2, 1:3, 3:7] = True  # widened in one section: 12 px there, 28 voxels in all
  mask[1:4, 8:11, 8:9] = True  # a speck: 3 px per section, 9 voxels
  for dims, kept in ((2, 5), (3, 1)):
    labels = instances.label_instances(mask, dims, min_size=10)
    assert labels.max() == kept and not labels[:, 8:11, 8].any() and labels[:, 1, 1].all()
  assert instances.label_instances(mask, 2, min_size=9).max() == 8  # 9 itself is kept


def test_min_area_drops_a_kept_objects_fragments_from_2d_objects_only():
  """A 40-voxel object whose edge reaches 1 px into the next section: in 2D that pixel is no object of its own."""
  mask = np.zeros((2, 10, 10), bool)
  mask[0, 1:5, 1:9] = True  # 32 px in section 0
  mask[1, 2, 2] = True  # the fragment, 6-connected to it
  mask[1, 6:9, 6:9] = True  # 9 px, its own volume component
  assert instances.label_instances(mask, 2, min_size=10).max() == 2  # the fragment alone survives the volume filter
  labels = instances.label_instances(mask, 2, min_size=10, min_area=5)
  assert labels.max() == 1 and labels[0, 1, 1] == 1 and not labels[1].any()
  area_only = instances.label_instances(mask, 2, min_area=5)
  assert area_only.max() == 2 and area_only[1, 7, 7]
  three_d = instances.label_instances(mask, 3, min_size=10, min_area=5)  # a 3D object keeps its fragment
  assert three_d.max() == 1 and three_d[1, 2, 2] == 1


def test_bad_dims_and_shapes():
  with pytest.raises(InputError, match="dims"):
    instances.label_instances(np.zeros((1, 4, 4)), 4)
  with pytest.raises(InputError, match="stack"):
    instances.label_instances(np.zeros((4, 4)), 2)
  with pytest.raises(InputError, match="without gaps"):
    instances.overlaps(np.array([0, 2]), np.array([0, 1]))


def test_matching_counts_at_both_thresholds():
  truth = np.zeros((1, 20, 40), bool)
  pred = np.zeros_like(truth)
  truth[0, 1:5, 1:5] = pred[0, 1:5, 1:5] = True  # A: found exactly, IoU 1
  truth[0, 8:12, 1:11] = True
  pred[0, 8:12, 1:7] = True  # B: IoU 24 / 40 = 0.6
  truth[0, 15:19, 20:24] = True  # C: missed
  pred[0, 1:4, 30:35] = True  # D: spurious
  s = _scores(truth, pred)
  assert (s[0.5]["found"], s[0.5]["missed"], s[0.5]["spurious"]) == (2, 1, 1)
  assert (s[0.75]["found"], s[0.75]["missed"], s[0.75]["spurious"]) == (1, 2, 2)
  assert s[0.5]["precision"] == pytest.approx(2 / 3) and s[0.5]["recall"] == pytest.approx(2 / 3)
  assert s[0.5]["f1"] == pytest.approx(2 / 3)
  assert s[0.5]["mean_matched_iou"] == pytest.approx(0.8)
  assert s[0.5]["pq"] == pytest.approx(1.6 / 3)  # (1 + 0.6) / (2 + 1/2 + 1/2)
  assert s[0.75]["pq"] == pytest.approx(1 / 3)  # 1 / (1 + 1 + 1)
  assert s[0.5]["n_true"] == 3 and s[0.5]["n_pred"] == 3


def test_split_mitochondrion():
  truth = np.zeros((1, 6, 12), bool)
  truth[0, 1:5, 1:11] = True  # 40 px
  pred = np.zeros_like(truth)
  pred[0, 1:5, 1:7] = True  # 24 px: IoU 0.6
  pred[0, 1:5, 8:11] = True  # 12 px: IoU 0.3
  s = _scores(truth, pred)
  assert (s[0.5]["found"], s[0.5]["missed"], s[0.5]["spurious"]) == (1, 0, 1)
  assert (s[0.75]["found"], s[0.75]["missed"], s[0.75]["spurious"]) == (0, 1, 2)
  assert s[0.75]["mean_matched_iou"] is None and s[0.75]["pq"] == 0.0


def test_merged_mitochondria():
  truth = np.zeros((1, 6, 13), bool)
  truth[0, 1:5, 1:6] = truth[0, 1:5, 7:12] = True  # two of 20 px, a column apart
  pred = np.zeros_like(truth)
  pred[0, 1:5, 1:12] = True  # one of 44 px over both: IoU 20 / 44 each
  s = _scores(truth, pred, thresholds=(0.4, 0.5))
  assert (s[0.5]["found"], s[0.5]["missed"], s[0.5]["spurious"]) == (0, 2, 1)
  assert (s[0.4]["found"], s[0.4]["missed"], s[0.4]["spurious"]) == (1, 1, 0)  # one-to-one
  assert s[0.4]["mean_matched_iou"] == pytest.approx(20 / 44)


def test_matching_is_optimal_not_greedy():
  # t0-p0 0.5, t0-p1 0.4, t1-p0 0.45: greedy by IoU takes t0-p0 and stops at 1 match; optimal has 2.
  ov = instances.Overlaps(2, 2, np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0.5, 0.4, 0.45]))
  t, p, iou = instances.match(ov, 0.3)
  assert sorted(zip(t.tolist(), p.tolist())) == [(0, 1), (1, 0)]
  np.testing.assert_allclose(sorted(iou), [0.4, 0.45])
  t, p, _ = instances.match(ov, 0.5)
  assert list(zip(t.tolist(), p.tolist())) == [(0, 0)]


def test_matching_prefers_larger_total_iou_among_equal_counts():
  ov = instances.Overlaps(2, 2, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([0.9, 0.3, 0.3, 0.8]))
  t, p, iou = instances.match(ov, 0.2)
  assert sorted(zip(t.tolist(), p.tolist())) == [(0, 0), (1, 1)]
  assert iou.sum() == pytest.approx(1.7)


def test_average_precision_hand_computed():
  # 2 true; ranked predictions: hit (t0), spurious, hit (t1). Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
  ov = instances.Overlaps(2, 3, np.array([0, 1]), np.array([0, 2]), np.array([0.8, 0.9]))
  ap = instances.average_precision(ov, np.array([0.9, 0.8, 0.7]), 0.75)
  assert ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
  # Ranked the other way the spurious one comes first: precision 1/2, 2/3 -> interpolated 2/3 everywhere.
  assert instances.average_precision(ov, np.array([0.8, 0.9, 0.7]), 0.75) == pytest.approx(2 / 3)
  # At 0.85 only t1 can be found: recall reaches 1/2, so AP = 51/101 * precision.
  assert instances.average_precision(ov, np.array([0.9, 0.8, 0.7]), 0.85) == pytest.approx(51 / 101 / 3)


def test_average_precision_edge_cases():
  perfect = instances.Overlaps(1, 1, np.array([0]), np.array([0]), np.array([1.0]))
  assert instances.average_precision(perfect, np.array([0.5]), 0.75) == 1.0
  assert instances.average_precision(instances.Overlaps(0, 1, *(np.zeros(0),) * 3), np.ones(1), 0.5) is None
  assert instances.average_precision(instances.Overlaps(1, 0, *(np.zeros(0),) * 3), np.ones(0), 0.5) == 0.0
  with pytest.raises(InputError, match="one score per"):
    instances.average_precision(perfect, np.ones(2), 0.5)


def test_empty_stacks_score_perfectly():
  s = _scores(np.zeros((2, 5, 5), bool), np.zeros((2, 5, 5), bool))
  assert s[0.5]["found"] == 0 and s[0.5]["f1"] == 1.0 and s[0.5]["pq"] == 1.0 and s[0.5]["ap"] is None


def test_mean_inside():
  labels = np.array([[0, 1, 1, 2]])
  np.testing.assert_allclose(instances.mean_inside(np.array([[9.0, 0.2, 0.4, 0.9]]), labels), [0.3, 0.9])
  assert instances.mean_inside(np.zeros((2, 2)), np.zeros((2, 2), int)).shape == (0,)


@pytest.mark.parametrize("dims", instances.DIMS)
@pytest.mark.parametrize("iou", [0.3, 0.5])
@pytest.mark.parametrize("min_area", [0, 3])
def test_f1_by_min_size_is_the_f1_of_the_filtered_prediction(dims, iou, min_area):
  """One labelling serves every size: each F1 equals the one scored after dropping the small components."""
  rng = np.random.default_rng(0)
  truth = rng.random((4, 32, 32)) > 0.75
  pred = truth ^ (rng.random(truth.shape) > 0.9)  # flipped pixels: split, merged and small spurious parts
  sizes = [0, 2, 3, 5, 8, 40]
  expected = []
  for size in sizes:
    ov = instances.overlaps(instances.label_instances(truth, dims),
                            instances.label_instances(pred, dims, size, min_area))
    expected.append(instances.instance_scores(ov, [iou], np.ones(ov.n_pred))[0]["f1"])
  np.testing.assert_allclose(instances.f1_by_min_size(truth, pred, dims, sizes, iou, min_area), expected)
  assert len(set(expected)) > 2  # the sizes matter here, so the comparison means something

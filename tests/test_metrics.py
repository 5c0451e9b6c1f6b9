"""zsfinercam.evaluation.metrics on hand-made maps, masks and scorers with known answers."""
import math

import numpy as np
import pytest

from zsfinercam.evaluation import metrics as M

# A 4x4 map whose peak is at (row 1, col 2), and a mask over rows 0-1, cols 2-3.
MAP = np.array([[0, 1, 2, 0],
                [0, 1, 9, 3],
                [0, 0, 0, 0],
                [4, 0, 0, 0]], dtype=float)
MASK = np.zeros((4, 4), bool)
MASK[0:2, 2:4] = True


def test_pointing_game_hit_miss_and_tolerance():
    assert M.pointing_game(MAP, MASK) is True
    far = np.zeros((4, 4), bool)
    far[3, 0] = True
    assert M.pointing_game(MAP, far) is False
    # peak (1, 2) to (3, 0): distance sqrt(8) = 2.83
    assert M.pointing_game(MAP, far, tolerance=2.8) is False
    assert M.pointing_game(MAP, far, tolerance=2.9) is True


def test_pointing_game_ties_take_first_in_row_major_order():
    tied = np.zeros((2, 2))
    tied[0, 1] = tied[1, 0] = 1.0
    left = np.array([[False, False], [True, False]])
    right = np.array([[False, True], [False, False]])
    assert M.pointing_game(tied, right) is True
    assert M.pointing_game(tied, left) is False


def test_energy_in_mask_exact_and_negative_values_ignored():
    # inside: 2 + 0 + 9 + 3 = 14; total: 1 + 2 + 1 + 9 + 3 + 4 = 20
    assert M.energy_in_mask(MAP, MASK) == pytest.approx(14 / 20)
    signed = MAP.copy()
    signed[2, :] = -100.0  # negative evidence does not count as energy
    assert M.energy_in_mask(signed, MASK) == pytest.approx(14 / 20)
    assert math.isnan(M.energy_in_mask(np.zeros((4, 4)), MASK))


def test_boxes_from_masks_and_maps():
    assert M.mask_to_bbox(MASK) == (2, 0, 4, 2)
    assert M.mask_to_bbox(np.zeros((3, 3), bool)) is None
    # normalised map >= 0.4 keeps 9 (1.0) and 4 (0.44): two blobs; the largest-blob
    # protocol keeps one of equal size -> the first label found (row-major), the 9.
    assert M.map_to_bbox(MAP, 0.4, largest_component=False) == (0, 1, 3, 4)
    assert M.map_to_bbox(MAP, 0.3) == (2, 1, 4, 2)  # 9 and 3 (0.33) form the largest blob


def test_box_iou_known_values():
    assert M.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert M.box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert M.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert M.box_iou(None, (0, 0, 1, 1)) == 0.0


def test_mask_iou_and_iou_at_threshold():
    a = np.array([[1, 1, 0], [0, 0, 0]], bool)
    b = np.array([[0, 1, 1], [0, 0, 0]], bool)
    assert M.mask_iou(a, b) == pytest.approx(1 / 3)
    assert M.mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    # threshold 0.3 -> pixels {9, 3, 4}; mask has 4 pixels of which 2 selected: 2 / 5
    assert M.iou_at_threshold(MAP, MASK, 0.3) == pytest.approx(2 / 5)
    # box of the largest blob (2, 1, 4, 2) vs mask box (2, 0, 4, 2): 2 / 4
    assert M.iou_at_threshold(MAP, MASK, 0.3, kind="box") == pytest.approx(0.5)


def test_threshold_of_constant_map_is_empty():
    assert not M.threshold_map(np.ones((3, 3)), 0.5).any()
    assert M.map_to_bbox(np.ones((3, 3))) is None


def test_rank_correlation_and_random_map():
    a = np.arange(16.0).reshape(4, 4)
    assert M.rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)
    assert M.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert M.rank_correlation(a, a ** 3) == pytest.approx(1.0)  # monotone: ranks agree
    # ties get average ranks: [0, 0, 1] vs [1, 2, 3] -> ranks [0.5, 0.5, 2] vs [0, 1, 2]
    assert M.rank_correlation([[0, 0, 1]], [[1, 2, 3]]) == pytest.approx(np.sqrt(3) / 2)
    np.testing.assert_array_equal(M.random_map((5, 5), seed=3), M.random_map((5, 5), seed=3))
    assert abs(M.rank_correlation(M.random_map((64, 64), 0), a.repeat(16, 0).repeat(16, 1))) < 0.05


def test_redraw_matrices_redraws_matrices_only():
    torch = pytest.importorskip("torch")
    from zsfinercam.backends.base import redraw_matrices

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    redraw_matrices(model.parameters(), seed=1)
    assert not torch.allclose(model[0].weight, before["0.weight"])
    assert torch.equal(model[0].bias, before["0.bias"])
    assert torch.equal(model[1].weight, before["1.weight"])


# --- perturbation metrics --------------------------------------------------------------
# A 2x2 one-channel image whose "probability" is the sum of its pixels; only pixel (0, 0)
# is bright, so removing it first kills the score at once.
IMAGE = np.array([[1.0, 0.0], [0.0, 0.0]])
GOOD = np.array([[4.0, 3.0], [2.0, 1.0]])  # ranks the bright pixel first
BAD = GOOD[::-1, ::-1].copy()  # ranks it last


def pixel_sum(batch):
    return batch.sum(axis=(1, 2, 3))


def test_deletion_and_insertion_auc_exact():
    # deletion, 4 steps: scores 1, 0, 0, 0, 0 -> area 0.25 * (1 + 0) / 2
    assert M.deletion_auc(IMAGE, GOOD, pixel_sum, steps=4, fill="zero") == pytest.approx(0.125)
    assert M.deletion_auc(IMAGE, BAD, pixel_sum, steps=4, fill="zero") == pytest.approx(0.875)
    # insertion from zeros: scores 0, 1, 1, 1, 1
    assert M.insertion_auc(IMAGE, GOOD, pixel_sum, steps=4, fill="zero") == pytest.approx(0.875)
    assert M.insertion_auc(IMAGE, BAD, pixel_sum, steps=4, fill="zero") == pytest.approx(0.125)


def test_perturbation_curve_mean_fill_and_class_column():
    def two_classes(batch):
        s = pixel_sum(batch)
        return np.stack([s, 1 - s], axis=1)

    x, y = M.perturbation_curve(IMAGE, GOOD, two_classes, target=0, steps=2, fill="mean")
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0])
    # mean fill is 0.25 per pixel: after 2 pixels: 0.25 + 0.25 + 0 + 0; after 4: 1.0
    np.testing.assert_allclose(y, [1.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="target"):
        M.perturbation_curve(IMAGE, GOOD, two_classes, steps=2)


def test_token_grid_map_is_resized_to_the_image():
    image = np.zeros((4, 4, 1))
    image[0:2, 0:2] = 1.0
    grid = np.array([[1.0, 0.0], [0.0, 0.0]])  # 2x2 map on a 4x4 image
    x, y = M.perturbation_curve(image, grid, pixel_sum, steps=4, fill="zero")
    assert y[1] == pytest.approx(0.0)  # the first quarter removed is exactly the bright block


def test_relative_drop_exact():
    # class 0 reads the left column, class 1 the right column (probabilities as sums)
    image = np.array([[0.4, 0.3], [0.2, 0.1]])

    def columns(batch):
        return np.stack([batch[:, :, 0, 0].sum(1), batch[:, :, 1, 0].sum(1)], axis=1)

    left_first = np.array([[9.0, 1.0], [8.0, 2.0]])
    # top 50 % = the left column, zero fill: c drops 0.6, d drops 0 -> RD = 0.6
    assert M.relative_drop(image, left_first, columns, 0, 1, top_percent=50, fill="zero") == pytest.approx(0.6)
    assert M.confidence_drops(image, left_first, columns, 1, 0, 50, "zero") == pytest.approx((0.0, 0.6))
    # mean fill 0.25: left column becomes 0.5 (drop 0.1) -> RD = 0.1
    assert M.relative_drop(image, left_first, columns, 0, [1], top_percent=50) == pytest.approx(0.1)


def test_fill_blur_keeps_a_constant_image():
    img = np.full((8, 8, 3), 0.7)
    np.testing.assert_allclose(M.fill_image(img, "blur"), img, atol=1e-6)
    np.testing.assert_allclose(M.fill_image(img, 0.5), np.full_like(img, 0.5))


@pytest.mark.parametrize("call, message", [
    (lambda: M.energy_in_mask(np.zeros((2, 2)), np.zeros((3, 3), bool)), "does not match"),
    (lambda: M.energy_in_mask(np.zeros(4), np.zeros(4, bool)), "2-D"),
    (lambda: M.pointing_game(np.ones((2, 2)), np.zeros((2, 2), bool)), "empty"),
    (lambda: M.threshold_map(np.ones((2, 2)), 1.5), r"\[0, 1\]"),
    (lambda: M.iou_at_threshold(MAP, MASK, kind="poly"), "'mask' or 'box'"),
    (lambda: M.fill_image(IMAGE, "noise"), "valid"),
    (lambda: M.perturbation_curve(IMAGE, GOOD, pixel_sum, mode="flip"), "deletion"),
    (lambda: M.relative_drop(IMAGE, GOOD, pixel_sum, 0, 1, top_percent=0), r"\(0, 100\]"),
    (lambda: M.energy_in_mask(np.array([[np.nan, 1.0]]), np.ones((1, 2), bool)), "NaN"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()

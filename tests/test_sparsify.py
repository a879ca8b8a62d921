import numpy as np
import pytest

from dynsparse.golden.sparsify import (
    LEARNED_OFFSETS, adaptive_keep, channel_ranking, fit_predictor, interpolate, interpolate_float, planes,
    predictor_features, quantise_predictor, scores, sparsification_metadata, sparsify, top_k_mask,
)
from dynsparse.golden.weightstream import ENCODINGS, Selection, encode_stream, stream_size
from dynsparse.golden.weighttrain import LAYERS, quantise, train_dense


@pytest.fixture(scope="module")
def trained():
    q, _ = quantise(train_dense(seed=0, epochs=2))
    return q


# --- criteria and selection ----------------------------------------------------------------------------

def test_magnitude_keeps_largest_and_breaks_ties_by_index():
    w = np.array([[3, -3, 3], [1, 0, -3]])
    np.testing.assert_array_equal(sparsify(w, keep=2), [[True, True, False], [False, False, False]])
    np.testing.assert_array_equal(sparsify(w, keep=5), [[True, True, True], [True, False, True]])
    np.testing.assert_array_equal(sparsify(w, threshold=3), np.abs(w) >= 3)
    np.testing.assert_array_equal(sparsify(w, threshold=3.5), np.zeros(w.shape, bool))


def test_sparsity_rounds_the_dropped_count_half_up():
    w = np.arange(10).reshape(2, 5)
    assert sparsify(w, sparsity=0.25).sum() == 7          # drop floor(2.5 + 0.5) = 3
    assert sparsify(w, sparsity=0.24).sum() == 8          # drop floor(2.4 + 0.5) = 2
    assert sparsify(w, sparsity=0.0).all() and not sparsify(w, sparsity=1.0).any()
    np.testing.assert_array_equal(sparsify(w, sparsity=0.3), w >= 3)


def test_masks_are_nested(trained):
    w = trained["conv2"]
    previous = np.zeros(w.shape, bool)
    for keep in range(0, w.size + 1, 37):
        mask = sparsify(w, keep=keep)
        assert mask.sum() == keep and not (previous & ~mask).any()
        previous = mask


def test_gradient_criterion_is_taylor_saliency():
    w = np.array([[100, 2, -50]])
    g = np.array([[0.001, 10.0, -0.5]])
    np.testing.assert_allclose(scores(w, "gradient", gradients=g), [[0.1, 20.0, 25.0]])
    np.testing.assert_array_equal(sparsify(w, criterion="gradient", gradients=g, keep=2), [[False, True, True]])
    with pytest.raises(ValueError, match=r"^the gradient criterion needs gradients$"):
        sparsify(w, criterion="gradient", keep=1)
    with pytest.raises(ValueError, match=r"^gradients must have the weights' shape \(1, 3\), not \(3,\)$"):
        scores(w, "gradient", gradients=np.ones(3))


def test_channel_criterion_drops_the_channel_a_kept_one_explains():
    rng = np.random.default_rng(1)
    base = rng.integers(-40, 41, (1, 2, 3, 3))
    other = rng.integers(-40, 41, (1, 2, 3, 3))
    # channel 1 = 2 × channel 0 (|ρ| = 1) and has the larger norm; channel 2 is unrelated
    w = np.concatenate([base, 2 * base, other, (base + other) // 2 + 1])
    order = channel_ranking(w)
    assert order[0] == 1 and order[-1] == 0
    mask = sparsify(w, criterion="channel", keep=2 * 18)
    assert mask[order[:2]].all() and not mask[order[2:]].any()
    # a partial channel keeps its largest entries
    mask = sparsify(w, criterion="channel", keep=18 + 4)
    partial = w[order[1]].ravel()
    kept = mask[order[1]].ravel()
    assert kept.sum() == 4 and np.abs(partial[kept]).min() >= np.abs(partial[~kept]).max()


def test_channel_ranking_of_constant_rows():
    w = np.array([[5, 5, 5], [1, 2, 3], [2, 4, 6], [0, 0, 0]])
    # largest norm first: [5 5 5] (ρ = 0 with all), then [2 4 6] (norm), [1 2 3] has ρ = 1 with it, [0 0 0] ρ = 0
    assert channel_ranking(w).tolist() == [0, 2, 3, 1]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("method", ("zero", "learned"))
def test_adaptive_budget_is_the_largest_that_fits(trained, encoding, method):
    w = trained["conv1"]          # 72 entries: every k checked
    score = np.abs(w).astype(float)
    sizes = [stream_size(top_k_mask(score, k), encoding, method) for k in range(w.size + 1)]
    assert all(b > a for a, b in zip(sizes, sizes[1:]))            # strictly increasing
    for budget in range(sizes[0], sizes[-1] + 3, 7):
        k = adaptive_keep(score, budget, encoding=encoding, interpolation=method)
        assert sizes[k] <= budget and (k == w.size or sizes[k + 1] > budget)
        mask = sparsify(w, budget=budget, encoding=encoding, interpolation=method)
        assert mask.sum() == k
    with pytest.raises(ValueError, match=rf"^budget must be at least {sizes[0]} bytes"):
        adaptive_keep(score, sizes[0] - 1, encoding=encoding, interpolation=method)


def test_rle_size_grows_with_every_kept_entry_across_escapes():
    rng = np.random.default_rng(4)
    score = rng.random((1, 3000))
    sizes = [stream_size(top_k_mask(score, k), "rle") for k in range(0, 60)]
    assert sizes[1] - sizes[0] > 2                                     # the first entry brings its escapes
    assert all(b > a for a, b in zip(sizes, sizes[1:]))
    k = adaptive_keep(score, 150, encoding="rle")
    assert stream_size(top_k_mask(score, k), "rle") <= 150 < stream_size(top_k_mask(score, k + 1), "rle")


def test_selection_errors():
    w = np.array([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"^give exactly one of sparsity, keep, threshold, budget, not \['sparsity', 'keep'\]$"):
        sparsify(w, sparsity=0.5, keep=1)
    with pytest.raises(ValueError, match=r"^give exactly one of sparsity, keep, threshold, budget, not none$"):
        sparsify(w)
    with pytest.raises(ValueError, match=r"^sparsity must be a finite number in \[0.0, 1.0\], not 1.5$"):
        sparsify(w, sparsity=1.5)
    with pytest.raises(TypeError, match=r"^sparsity must be a real number, not '0.5'$"):
        sparsify(w, sparsity="0.5")
    with pytest.raises(ValueError, match=r"^keep must be an integer in \[0, 4\], not 5$"):
        sparsify(w, keep=5)
    with pytest.raises(TypeError, match=r"^keep must be an integer in \[0, 4\], not 1.0$"):
        sparsify(w, keep=1.0)
    with pytest.raises(TypeError, match=r"^budget must be an integer number of bytes, not 100.0$"):
        sparsify(w, budget=100.0)
    with pytest.raises(ValueError, match=r"^criterion must be one of none, magnitude, gradient, channel, not 'size'$"):
        sparsify(w, criterion="size", keep=1)
    with pytest.raises(ValueError, match=r"^criterion must be one of magnitude, gradient, channel, not 'none'$"):
        sparsify(w, criterion="none", keep=1)
    with pytest.raises(ValueError, match=r"^weights must be a 2-D matrix or a 4-D C_out × C_in × K × K tensor, "
                                         r"not shape \(2, 2, 3, 2\)$"):
        sparsify(np.zeros((2, 2, 3, 2)), keep=1)
    with pytest.raises(ValueError, match=r"^gradients belong to the gradient criterion, not magnitude$"):
        sparsify(w, gradients=w, keep=1)


def test_metadata():
    assert sparsification_metadata(sparsity=0.75)[1:] == (Selection.SPARSITY, 750000)
    assert sparsification_metadata(threshold=1.0)[1:] == (Selection.THRESHOLD, 0x3F800000)
    assert sparsification_metadata(budget=512)[1:] == (Selection.BUDGET, 512)
    assert sparsification_metadata(keep=3)[1:] == (Selection.MASK, 0)


# --- interpolation ---------------------------------------------------------------------------------------

def test_planes():
    assert planes((4, 3, 5, 5)) == (12, 5, 5)
    assert planes((10, 256)) == (1, 10, 256)


def test_linear_rule_by_hand():
    w = np.array([[89, 35, 3], [-59, -49, -117], [-108, -123, -83]]).reshape(1, 1, 3, 3)
    m = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 1]], bool).reshape(1, 1, 3, 3)
    expected = [[89, 89, -117],                 # (0,1): left only; (0,2): no left/right sent, down -117
                [-9, -117, -117],               # (1,0): up 89, down -108 -> (-19 + 1) >> 1 = -9 (-9.5 rounds up)
                [-108, -123, -83]]
    np.testing.assert_array_equal(interpolate(w, m, "linear")[0, 0], expected)
    np.testing.assert_array_equal(interpolate(w, m, "zero")[0, 0], np.where(m[0, 0], w[0, 0], 0))
    f = interpolate_float(w, m, "linear")[0, 0]
    assert f[1, 0] == -9.5 and f[0, 1] == 89


def test_linear_means_round_half_up_and_prefer_the_row():
    w = np.array([[4, 0, 7, 0, -7, 0, -4], [9, 9, 9, 9, 9, 9, 100]])
    m = np.array([[1, 0, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0]], bool)
    out = interpolate(w, m, "linear")
    # (4 + 7) / 2 = 5.5 -> 6; (7 - 7) / 2 = 0; (-7 - 4) / 2 = -5.5 -> -5; row 1 has no sent row neighbour: up
    np.testing.assert_array_equal(out, [[4, 6, 7, 0, -7, -5, -4], [4, 0, 7, 0, -7, 0, -4]])
    # nothing sent around: 0
    np.testing.assert_array_equal(interpolate(np.full((3, 3), 50), np.zeros((3, 3), bool), "linear"), 0)


def test_learned_rule_by_hand():
    w = np.zeros((1, 1, 3, 3), np.int64)
    m = np.zeros((1, 1, 3, 3), bool)
    w[0, 0, 0, 0], m[0, 0, 0, 0] = 10, True        # up-left of the centre: offset (-1, -1), coefficient 0
    w[0, 0, 1, 2], m[0, 0, 1, 2] = -7, True        # right of the centre: offset (0, 1), coefficient 4
    c = np.array([3, 0, 0, 0, 5, 0, 0, 0])
    out = interpolate(w, m, "learned", coefficients=c, shift=2)[0, 0]
    # centre: (3·10 + 5·(-7) + 2) >> 2 = (-5 + 2) >> 2 = -1   (-1.25 -> -1)
    assert out[1, 1] == -1
    # (0, 1): its sent neighbours (0, 0) and (1, 2) sit at offsets (0, -1) and (1, 1), coefficients 0: (0 + 2) >> 2
    assert out[0, 1] == 0
    big = interpolate(np.full((1, 3), 127), np.array([[True, False, True]]), "learned",
                      coefficients=np.array([0, 0, 0, 127, 127, 0, 0, 0]), shift=0)
    assert big[0, 1] == 127                      # 2 · 127 · 127 saturates
    neg = interpolate(np.array([[-3, 0]]), np.array([[True, False]]), "learned",
                      coefficients=np.array([0, 0, 0, 1, 0, 0, 0, 0]), shift=1)
    assert neg[0, 1] == -1                       # -1.5 rounds half up to -1
    assert LEARNED_OFFSETS[3] == (0, -1)


def test_integer_against_float(trained):
    for name in LAYERS:
        w = trained[name]
        mask = sparsify(w, sparsity=0.6)
        lin = interpolate(w, mask, "linear") - interpolate_float(w, mask, "linear")
        assert np.abs(lin).max() <= 0.5
        c, shift = quantise_predictor(fit_predictor(w, mask))
        ref = interpolate_float(w, mask, "learned", coefficients=c.astype(float) / (1 << shift))
        got = interpolate(w, mask, "learned", coefficients=c, shift=shift)
        inside = np.abs(ref) <= 127
        assert np.abs(got - ref)[inside].max() <= 0.5


def test_fit_predictor_recovers_a_linear_rule():
    rng = np.random.default_rng(9)
    true = np.array([0.25, -0.5, 0.125, 1.0, 0.75, 0.0, -0.25, 0.5])
    w = rng.normal(0, 20, (6, 5, 7, 7))
    mask = rng.random(w.shape) < 0.6
    predicted = predictor_features(w, mask) @ true
    w = np.where(mask, w, predicted.reshape(w.shape))
    np.testing.assert_allclose(fit_predictor(w, mask, ridge=0.0), true, atol=1e-9)
    q, shift = quantise_predictor(true)
    assert shift == 6 and q.tolist() == [16, -32, 8, 64, 48, 0, -16, 32]
    q, shift = quantise_predictor(np.array([1.5, -0.1, 0, 0, 0, 0, 0, 0]))
    assert shift == 6 and q[0] == 96


def test_interpolation_errors():
    w = np.zeros((2, 2), np.int64)
    m = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match=r"^coefficients must be integers in \[-127, 127\], not \[128, 0, 0, 0, 0, 0, 0, 0\]$"):
        interpolate(w, m, "learned", coefficients=[128, 0, 0, 0, 0, 0, 0, 0], shift=1)
    with pytest.raises(ValueError, match=r"^shift must be an integer in \[0, 15\], not -1$"):
        interpolate(w, m, "learned", coefficients=np.zeros(8, int), shift=-1)
    with pytest.raises(ValueError, match=r"^interpolation must be one of zero, linear, learned, not 'cubic'$"):
        interpolate(w, m, "cubic")
    with pytest.raises(ValueError, match=r"^mask must hold only 0/1 or booleans$"):
        interpolate(w, np.full((2, 2), 2), "zero")


def test_trained_stream_reconstruction_matches_golden(trained):
    from dynsparse.golden.sparsify import reconstruct
    from dynsparse.golden.weightstream import parse_stream
    w = trained["dense"]
    mask = sparsify(w, sparsity=0.8)
    c, shift = quantise_predictor(fit_predictor(w, mask))
    stream = parse_stream(encode_stream(w, mask, encoding="csr", interpolation="learned", coefficients=c, shift=shift))
    np.testing.assert_array_equal(reconstruct(stream), interpolate(w, mask, "learned", coefficients=c, shift=shift))

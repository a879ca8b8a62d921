import numpy as np
import pytest

from dynsparse.golden import weighttrain as wt
from dynsparse.golden.sparsify import planes, top_k_mask


@pytest.fixture(scope="module")
def data():
    return wt.load_digits_split(0)


@pytest.fixture(scope="module")
def dense():
    return wt.train_dense(seed=0, epochs=3)


def perturbed_model(seed=0):
    rng = np.random.default_rng(seed)
    params = wt.init_model(seed)
    for name in ("conv1_b", "conv2_b", "dense_b"):     # away from the ReLU kinks of zero biases on blank borders
        params[name] = rng.normal(0, 0.3, params[name].shape)
    return params


def test_split_is_fixed_and_disjoint(data):
    x, y, xt, yt = data
    assert x.shape == (1347, 8, 8) and xt.shape == (450, 8, 8) and 0 <= x.min() and x.max() <= 1
    again = wt.load_digits_split(0)
    np.testing.assert_array_equal(again[3], yt)
    assert set(np.unique(y)) == set(range(10))


def test_gradients_against_finite_differences(data):
    x, y, _, _ = data
    params = perturbed_model()
    _, grads = wt.loss_and_gradients(params, x[:12], y[:12])
    rng = np.random.default_rng(3)
    for name in ("conv1", "conv2", "dense", "conv1_b", "conv2_b", "dense_b"):
        for _ in range(3):
            index = tuple(int(rng.integers(s)) for s in params[name].shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][index] += 1e-6
            minus[name][index] -= 1e-6
            numeric = (wt.loss_and_gradients(plus, x[:12], y[:12])[0]
                       - wt.loss_and_gradients(minus, x[:12], y[:12])[0]) / 2e-6
            assert abs(numeric - grads[name][index]) < 1e-7, (name, index)


@pytest.mark.parametrize("method", ("zero", "linear", "learned"))
def test_sparse_gradients_against_finite_differences(data, method):
    """Task loss on m·w + (1 − m)·interp(w), plus L1 and the reconstruction loss, all through interp."""
    x, y, _, _ = data
    params = perturbed_model(1)
    rng = np.random.default_rng(4)
    masks = {name: top_k_mask(np.abs(params[name]), params[name].size // 3) for name in wt.LAYERS}
    if method == "learned":
        for name in wt.LAYERS:
            params["coef_" + name] = rng.normal(0, 0.2, 8)
    l1, recon = 1e-3, 0.5

    def total(p):
        effective, extra = {}, 0.0
        for name in wt.LAYERS:
            effective[name], guess, _, _ = wt._effective(p[name], masks[name], method, p.get("coef_" + name))
            ws = p[name].reshape(planes(p[name].shape))
            dropped = ~masks[name].reshape(ws.shape)
            extra += recon / 3 * np.sum((dropped * (guess - ws)) ** 2) / np.sum(ws * ws)
            extra += l1 / p[name].size * np.abs(p[name]).sum()
        return wt.loss_and_gradients(p, x[:12], y[:12], effective)[0] + extra

    grads = wt._sparse_step_gradients(params, masks, method, x[:12], y[:12], l1, recon)
    names = wt.LAYERS + (tuple("coef_" + n for n in wt.LAYERS) if method == "learned" else ())
    for name in names:
        for _ in range(4):
            index = tuple(int(rng.integers(s)) for s in params[name].shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][index] += 1e-6
            minus[name][index] -= 1e-6
            numeric = (total(plus) - total(minus)) / 2e-6
            assert abs(numeric - grads[name][index]) < 1e-7, (name, index)


def test_quantise():
    params = {"conv1": np.array([[[[0.5, -1.0, 0.25]]]]), "conv2": np.zeros((1, 1, 1, 1)) + 2.0,
              "dense": np.array([[0.3, -0.6]])}
    q, scales = wt.quantise(params)
    np.testing.assert_array_equal(q["conv1"].ravel(), [64, -127, 32])   # 63.5 rounds half up
    assert scales["conv1"] == 1.0 / 127 and q["conv2"].ravel()[0] == 127 and q["dense"].dtype == np.int8
    np.testing.assert_allclose(wt.dequantise(q, scales)["dense"], [[0.3, -0.6]], atol=0.6 / 127)


def test_dense_training_learns(dense, data):
    _, _, xt, yt = data
    q, scales = wt.quantise(dense)
    assert wt.accuracy(dense, xt, yt) > 0.85
    assert wt.accuracy(dense, xt, yt, wt.dequantise(q, scales)) > 0.85
    again = wt.train_dense(seed=0, epochs=1)
    np.testing.assert_array_equal(again["conv1"], wt.train_dense(seed=0, epochs=1)["conv1"])


def test_sparsity_aware_training_beats_pruning_after_training(dense, data):
    _, _, xt, yt = data
    q, _ = wt.quantise(dense)
    density = 0.25
    post_masks = {name: top_k_mask(np.abs(q[name]), wt._keep(q[name].size, density)) for name in wt.LAYERS}
    post, _ = wt.reconstructed_accuracy(dense, post_masks, "zero", xt, yt)
    tuned, masks, coefficients = wt.train_sparse(dense, density=density, method="zero", epochs=3)
    for name in wt.LAYERS:
        assert masks[name].sum() == wt._keep(dense[name].size, density)
    aware, details = wt.reconstructed_accuracy(tuned, masks, "zero", xt, yt)
    print(f"density {density}: pruned after training {post:.4f}, sparsity-aware {aware:.4f}")
    assert coefficients == {} and aware > post + 0.05
    q_tuned, rebuilt, _, _ = details["conv2"]
    np.testing.assert_array_equal(rebuilt, np.where(masks["conv2"], q_tuned, 0))


def test_learned_coefficients_are_trained(dense, data):
    _, _, xt, yt = data
    tuned, masks, coefficients = wt.train_sparse(dense, density=0.5, method="learned", epochs=1)
    assert set(coefficients) == set(wt.LAYERS) and all(c.shape == (8,) for c in coefficients.values())
    accuracy, details = wt.reconstructed_accuracy(tuned, masks, "learned", xt, yt, coefficients=coefficients)
    _, _, c, shift = details["dense"]
    assert c.dtype == np.int8 and 0 <= shift <= 15 and 0.1 < accuracy <= 1

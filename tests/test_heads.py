"""Seed 004 host side: distributions, sampling, training, ranking, resampling, export (golden/heads.py)."""

import json

import numpy as np
import pytest

from dynsparse.golden import heads as H
from dynsparse.golden.sparseconv import sparse_conv


# --- distributions ---------------------------------------------------------------------------------

def test_offset_pmfs():
    n = 5
    o = np.arange(-n, n + 1)
    normal = H.OffsetDistribution("normal", scale=2.0).pmf(n)
    expected = np.exp(-o ** 2 / 8.0)
    np.testing.assert_allclose(normal, expected / expected.sum())
    t = H.OffsetDistribution("student-t", scale=1.0, dof=2.0).pmf(n)
    expected = (1 + o ** 2 / 2.0) ** -1.5
    np.testing.assert_allclose(t, expected / expected.sum())
    np.testing.assert_allclose(H.OffsetDistribution("uniform").pmf(n), np.full(2 * n + 1, 1 / (2 * n + 1)))
    laplace = H.OffsetDistribution("gennorm", scale=1.5, shape=1.0).pmf(n)
    expected = np.exp(-np.abs(o) / 1.5)
    np.testing.assert_allclose(laplace, expected / expected.sum())
    for p in (normal, t, laplace):
        np.testing.assert_allclose(p, p[::-1])
    # heavier tails: student-t with the same scale puts more mass at the window's edges
    assert t[0] > H.OffsetDistribution("normal", scale=1.0).pmf(n)[0]
    assert H.OffsetDistribution().pmf(0).tolist() == [1.0]


@pytest.mark.parametrize("kwargs, error, text", [
    ({"kind": "cauchy"}, ValueError, "cauchy"),
    ({"scale": 0.0}, ValueError, "offset scale"),
    ({"scale": "2"}, TypeError, "offset scale"),
    ({"dof": -1.0}, ValueError, "degrees of freedom"),
    ({"shape": 100.0}, ValueError, "gennorm shape"),
])
def test_offset_distribution_errors(kwargs, error, text):
    with pytest.raises(error, match=text):
        H.OffsetDistribution(**kwargs)
    with pytest.raises(ValueError, match="reach n"):
        H.OffsetDistribution().pmf(H.REACH_MAX + 1)


def test_tap_counts():
    rng = np.random.default_rng(0)
    assert H.TapCount("constant", 3).sample(rng, 5, 10).tolist() == [3] * 5
    assert H.TapCount("constant", 30).sample(rng, 2, 10).tolist() == [10, 10]      # clipped to F
    k = H.TapCount("poisson", 4.0).sample(rng, 20000, 1000)
    assert k.min() >= 1 and abs(k.mean() - 4.0) < 0.05
    k = H.TapCount("uniform", 2, high=5).sample(rng, 2000, 100)
    assert set(k.tolist()) == {2, 3, 4, 5}
    with pytest.raises(ValueError, match="tap-count distribution"):
        H.TapCount("binomial")
    with pytest.raises(ValueError, match="tap count k"):
        H.TapCount("constant", 0)
    with pytest.raises(TypeError, match="largest tap count"):
        H.TapCount("uniform", 2)
    with pytest.raises(ValueError, match="largest tap count"):
        H.TapCount("uniform", 4, high=3)
    with pytest.raises(ValueError, match="only a uniform"):
        H.TapCount("constant", 2, high=3)


@pytest.mark.parametrize("dims", [1, 2])
def test_space_indices(dims):
    space = H.HeadSpace(dims, 3, 2)
    assert space.side == 5 and space.candidates == 3 * 5 ** dims
    c, oy, ox = space.coordinates()
    np.testing.assert_array_equal(space.index(c, oy, ox), np.arange(space.candidates))
    assert np.abs(ox).max() == 2 and (np.abs(oy).max() == (2 if dims == 2 else 0))
    with pytest.raises(ValueError, match=r"offset lies outside \[-2, 2\]"):
        space.index([0], [0], [3])
    with pytest.raises(ValueError, match="channel"):
        space.index([3], [0], [0])
    if dims == 1:
        with pytest.raises(ValueError, match="row offset 0"):
            space.index([0], [1], [0])
    with pytest.raises(ValueError, match="offset dimensions"):
        H.HeadSpace(3, 1, 1)
    with pytest.raises(ValueError, match="reach n"):
        H.HeadSpace(1, 1, 8)


def test_sampling_follows_the_distribution():
    space = H.HeadSpace(2, 2, 3)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("normal", scale=1.2))
    rng = np.random.default_rng(1)
    mask = dist.sample_mask(rng, 6000, H.TapCount("constant", 1))
    assert (mask.sum(axis=1) == 1).all()
    freq = mask.sum(axis=0) / mask.sum()
    np.testing.assert_allclose(freq, dist.grid(), atol=0.01)
    # k distinct taps per head, never more than the grid holds
    mask = dist.sample_mask(rng, 50, H.TapCount("constant", 7))
    assert (mask.sum(axis=1) == 7).all()
    with pytest.raises(ValueError, match="tap count k"):
        dist.sample(rng, space.candidates + 1)
    full = dist.sample(rng, space.candidates)
    assert full.tolist() == list(range(space.candidates))


def test_fit_recovers_the_shape():
    rng = np.random.default_rng(2)
    n = 7
    for true in (H.OffsetDistribution("gennorm", scale=2.0, shape=2.0),
                 H.OffsetDistribution("gennorm", scale=1.5, shape=1.0)):
        offsets = rng.choice(np.arange(-n, n + 1), size=20000, p=true.pmf(n))
        fitted = H.fit_offsets(offsets, n)
        assert np.abs(fitted.pmf(n) - true.pmf(n)).max() < 0.01, fitted
    wide = H.fit_offsets(rng.integers(-n, n + 1, 20000), n)
    assert wide.pmf(n).min() > 0.8 / (2 * n + 1)                       # nearly uniform
    with pytest.raises(ValueError, match=r"\[-3, 3\]"):
        H.fit_offsets([0, 4], 3)
    with pytest.raises(ValueError, match="at least one"):
        H.fit_offsets([], 3)


def test_empirical_and_fitted_sources():
    space = H.HeadSpace(1, 2, 3)
    mask = np.zeros((2, space.candidates), bool)
    mask[0, space.index([0, 0], [0, 0], [-1, 1])] = True
    mask[1, space.index([0], [0], [1])] = True
    emp = H.TapDistribution.empirical(space, mask, smoothing=1.0)
    np.testing.assert_allclose(emp.channel, [4 / 5, 1 / 5])
    np.testing.assert_allclose(emp.col, np.array([1, 1, 2, 1, 3, 1, 1]) / 10)
    fit = H.TapDistribution.fitted(space, mask)
    np.testing.assert_allclose(fit.channel, [4 / 5, 1 / 5])
    assert fit.col.argmax() in (2, 3, 4) and abs(fit.col.sum() - 1) < 1e-12


# --- the model -------------------------------------------------------------------------------------

def test_patches_by_hand():
    x = np.arange(2 * 2 * 5, dtype=float).reshape(2, 2, 5)
    space = H.HeadSpace(1, 2, 1)
    P = H.patches(x, space)
    assert P.shape == (2, 6, 5)
    np.testing.assert_array_equal(P[1, space.index(1, 0, -1)], [0, 15, 16, 17, 18])
    np.testing.assert_array_equal(P[1, space.index(1, 0, 1)], [16, 17, 18, 19, 0])
    img = np.arange(12, dtype=float).reshape(1, 1, 3, 4)
    P = H.patches(img, H.HeadSpace(2, 1, 1))
    up_left = P[0, H.HeadSpace(2, 1, 1).index(0, -1, -1)].reshape(3, 4)
    np.testing.assert_array_equal(up_left, [[0, 0, 0, 0], [0, 0, 1, 2], [0, 4, 5, 6]])
    with pytest.raises(ValueError, match=r"\[N, 2, L\]"):
        H.patches(np.zeros((1, 3, 5)), space)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    space = H.HeadSpace(1, 2, 2)
    P = H.patches(rng.normal(size=(6, 2, 7)), space)
    y = rng.integers(0, 3, 6)
    mask = H.TapDistribution.from_offsets(space, H.OffsetDistribution("uniform")).sample_mask(
        rng, 4, H.TapCount("constant", 3))
    params = H.init_params(mask, 3, seed=4)
    params["b"] = rng.normal(size=4) * 0.1
    _, grads = H.loss_and_gradients(params, mask, P, y, l2=1e-3)
    eps = 1e-6
    for name in ("w", "b", "out", "out_b"):
        flat = params[name].reshape(-1)
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            if name == "w" and not mask.reshape(-1)[i]:
                continue
            old = flat[i]
            flat[i] = old + eps
            up, _ = H.loss_and_gradients(params, mask, P, y, l2=1e-3)
            flat[i] = old - eps
            down, _ = H.loss_and_gradients(params, mask, P, y, l2=1e-3)
            flat[i] = old
            assert grads[name].reshape(-1)[i] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)
    assert (grads["w"][~mask] == 0).all()


@pytest.fixture(scope="module")
def amp():
    x_train, y_train, x_test, y_test, dims, channels, scale = H.load_task("amp")
    space = H.HeadSpace(dims, channels, 4)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("normal", scale=2.0))
    mask = dist.sample_mask(np.random.default_rng(0), 8, H.TapCount("constant", 3))
    P_train = H.patches(x_train * scale, space)
    params, mask, _ = H.train(P_train, y_train, mask, 2, seed=0, epochs=12)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, space=space, scale=scale,
                params=params, mask=mask, P_train=P_train, P_test=H.patches(x_test * scale, space), dist=dist)


def test_training_on_real_peptides(amp):
    logits, _, _ = H.forward(amp["params"], amp["mask"], amp["P_test"])
    assert amp["x_train"].shape[1:] == (8, 48)
    assert H.accuracy(logits, amp["y_test"]) > 0.8          # 8 heads of 3 taps; chance is 0.5
    assert (amp["mask"].sum(axis=1) == 3).all()
    assert (amp["params"]["w"][~amp["mask"]] == 0).all()


# --- ranking and resampling ------------------------------------------------------------------------

def test_ranking_finds_dead_and_duplicate_heads(amp):
    params = {name: value.copy() for name, value in amp["params"].items()}
    mask = amp["mask"].copy()
    params["w"][1], params["b"][1] = 0.0, -1.0                         # dead: ReLU never opens
    mask[5], params["w"][5], params["b"][5] = mask[4], params["w"][4] * 2, params["b"][4] * 2   # a copy
    ranking = H.rank_heads(params, mask, amp["P_train"])
    assert ranking["entropy"][1] == 0 and ranking["score"][1] == 0
    assert ranking["independence"][4] < 1e-9 and ranking["independence"][5] < 1e-9
    assert (ranking["entropy"] <= 4 + 1e-9).all()
    assert ranking["outgoing"].max() == pytest.approx(1.0)
    costly = H.rank_heads(params, mask, amp["P_train"], cost=0.5)
    np.testing.assert_allclose(costly["score"], ranking["score"] - 0.5)    # every head has 3 taps

    policy = H.ResamplePolicy(drop=0.25, similarity=0.99, source="initial")
    rng = np.random.default_rng(5)
    new_params, new_mask, info = H.resample(params, mask, ranking, policy, initial=amp["dist"],
                                            taps=H.TapCount("constant", 3), rng=rng)
    assert info["dropped"][1] == "dead"
    assert info["dropped"].get(4) == "similar" or info["dropped"].get(5) == "similar"
    assert len(info["dropped"]) == 2
    for h in info["dropped"]:
        assert (new_params["out"][:, h] == 0).all() and new_mask[h].sum() == 3
    kept = [h for h in range(8) if h not in info["dropped"]]
    np.testing.assert_array_equal(new_mask[kept], mask[kept])
    np.testing.assert_array_equal(new_params["out"][:, kept], params["out"][:, kept])
    for source in ("best", "fitted"):
        _, m, _ = H.resample(params, mask, ranking, H.ResamplePolicy(source=source, drop=0.5), initial=amp["dist"],
                             taps=H.TapCount("constant", 3), rng=rng)
        assert (m.sum(axis=1) == 3).all()


def test_prune_keeps_one_tap():
    mask = np.array([[1, 1, 1, 0], [0, 1, 0, 0]], bool)
    params = {"w": np.array([[0.1, -1.0, 0.5, 0.0], [0, 0.001, 0, 0]])}
    np.testing.assert_array_equal(H.prune_taps(params, mask, 0.3), [[0, 1, 1, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(H.prune_taps(params, mask, 0.0), mask)


def test_training_with_resampling_and_cost(amp):
    taps = H.TapCount("constant", 3)
    mask = amp["dist"].sample_mask(np.random.default_rng(0), 8, taps)
    policy = H.ResamplePolicy(every=2, until=0.7, drop=0.25, source="fitted", cost=0.2, prune=0.4)
    params, mask, history = H.train(amp["P_train"], amp["y_train"], mask, 2, seed=0, epochs=8,
                                    policy=policy, initial=amp["dist"], taps=taps)
    steps = [row for row in history if "dropped" in row]
    assert [row["epoch"] for row in steps] == [2, 4]
    assert history[-1]["connections"] == mask.sum() < 8 * 3          # pruning took taps away
    logits, _, _ = H.forward(params, mask, amp["P_test"])
    assert H.accuracy(logits, amp["y_test"]) > 0.75
    with pytest.raises(ValueError, match="initial tap distribution"):
        H.train(amp["P_train"], amp["y_train"], mask, 2, policy=policy)
    with pytest.raises(ValueError, match="resampling source"):
        H.ResamplePolicy(source="rl")


# --- export and the integer model ------------------------------------------------------------------

def test_int8_model_matches_float(amp):
    export = H.quantise(amp["params"], amp["mask"], amp["space"], amp["x_train"], input_scale=amp["scale"])
    logits_int, _ = H.forward_int(export, amp["x_test"])
    logits, _, _ = H.forward(amp["params"], amp["mask"], amp["P_test"])
    agree = np.mean(np.argmax(logits_int, 1) == np.argmax(logits, 1))
    assert agree >= 0.97
    assert abs(H.accuracy(logits_int, amp["y_test"]) - H.accuracy(logits, amp["y_test"])) <= 0.03
    assert np.abs(export["weight"]).max() == 127


def test_tap_lists_match_the_engine_model_1d(amp):
    """The engine's golden model on the exported tap lists gives the integer model's accumulators."""
    export = H.quantise(amp["params"], amp["mask"], amp["space"], amp["x_train"], input_scale=amp["scale"])
    acc = H.head_accumulators(export, amp["x_test"][:3])
    for i in range(3):
        frame = amp["x_test"][i].T[None].astype(np.int8)                      # [1, L, C]
        lists = H.tap_lists(export, height=1, width=frame.shape[1])
        engine, counters = sparse_conv(frame, lists, kernel_size=amp["space"].side)
        np.testing.assert_array_equal(engine[0].T, acc[i])
        # zero padding: taps that read beyond the sequence cost no MAC
        assert counters["performed"] + counters["padding"] == 48 * int(export["count"].sum())


def test_tap_lists_match_the_engine_model_2d():
    x_train, y_train, x_test, y_test, dims, channels, scale = H.load_task("digits")
    space = H.HeadSpace(dims, channels, 3)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("student-t", scale=1.0, dof=1.5))
    mask = dist.sample_mask(np.random.default_rng(2), 6, H.TapCount("poisson", 4.0))
    params, mask, _ = H.train(H.patches(x_train[:300] * scale, space), y_train[:300], mask, 10, epochs=2)
    export = H.quantise(params, mask, space, x_train[:300], input_scale=scale)
    acc = H.head_accumulators(export, x_test[:2])
    for i in range(2):
        frame = x_test[i, 0].astype(np.uint8)
        engine, _ = sparse_conv(frame, H.tap_lists(export, height=8, width=8), kernel_size=space.side)
        np.testing.assert_array_equal(engine.reshape(64, -1).T, acc[i])


def _good_export():
    space = H.HeadSpace(1, 2, 2)
    mask = np.zeros((2, space.candidates), bool)
    mask[0, [0, 3]] = mask[1, [7]] = True
    params = {"w": np.where(mask, 0.5, 0.0), "b": np.zeros(2), "out": np.ones((2, 2)), "out_b": np.zeros(2)}
    return H.quantise(params, mask, space, np.ones((1, 2, 6), np.int64), input_scale=1 / 127)


@pytest.mark.parametrize("change, error, text", [
    (lambda e: e.update(ox=np.array([[3, 0], [0, 0]])), ValueError, r"offset lies outside \[-2, 2\]"),
    (lambda e: e.update(ci=np.array([[0, 2], [0, 0]])), ValueError, "channel"),
    (lambda e: e.update(weight=np.array([[128, 1], [1, 0]])), ValueError, r"\[-127, 127\]"),
    (lambda e: e.update(count=np.array([3, 1])), ValueError, "tap count"),
    (lambda e: e.update(ci=e["ci"] * 0, ox=e["ox"] * 0), ValueError, "same tap twice"),
    (lambda e: e.pop("bias"), ValueError, "'bias'"),
    (lambda e: e.update(version=2), ValueError, "version"),
    (lambda e: e.update(oy=np.array([[1, 0], [0, 0]])), ValueError, "row offset 0"),
])
def test_bad_exports_are_rejected(change, error, text):
    export = _good_export()
    H.check_export(export)
    change(export)
    with pytest.raises(error, match=text):
        H.check_export(export)
    with pytest.raises(TypeError, match="dict"):
        H.check_export([1, 2])


# --- the study -------------------------------------------------------------------------------------

def test_find_a_by_hand():
    curve = {1: 0.5, 2: 0.7, 3: 0.8, 4: 0.9}
    assert H.find_a(curve) == (2, pytest.approx(0.675))     # ¾ · 0.9 = 0.675, first reached at k = 2
    assert H.find_a(curve, chance=0.4) == (3, pytest.approx(0.775))     # 0.4 + ¾ · 0.5
    assert H.find_a({1: 0.1, 2: 0.2}) == (2, pytest.approx(0.15))


def test_study_command(tmp_path, capsys):
    out = tmp_path / "heads"
    assert H.main(["--tasks", "amp", "--reach", "2", "--ks", "1,2", "--seeds", "0", "--heads", "4",
                   "--epochs", "2", "--out", str(out)]) == 0
    results = json.loads((out / "study.json").read_text())
    assert len(results["sweep"]) == 3 * 2 and len(results["resampling"]) == len(H.STUDY_POLICIES)
    text = (out / "study.md").read_text()
    assert "| k | normal σ=1 | student-t ν=1.5 s=0.5 | uniform |" in text
    assert "E[l_a] ≥ ¾ E[l_n]" in text
    assert (out / "study.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        H.main(["--tasks", "imagenet", "--out", str(out)])
    assert "task must be one of" in capsys.readouterr().err

import re

import numpy as np
import pytest
from scipy.signal import correlate

from dynsparse.golden import masklearn
from dynsparse.golden.masklearn import (
    block_relevance, export_mask, image_filter_task, load_mask, mask_learning_report, mask_words,
    masked_conv2d, masked_conv2d_backward, normalise_relevance, padding_keep, skipped_padding,
    threshold_mask, train, update_threshold,
)
from dynsparse.golden.padmask import block_map, mask_length


MODES = ("zero", "replicate", "reflect")
NUMPY_MODE = {"zero": "constant", "replicate": "edge", "reflect": "reflect"}


def reference_conv(frames, weights, pad_mode, keep=None):
    """Loop-free reference with scipy: correlate each padded channel with each kernel."""
    r = weights.shape[2] // 2
    n, height, width, c_in = frames.shape
    out = np.zeros((n, height, width, weights.shape[0]))
    for i in range(n):
        for ci in range(c_in):
            padded = np.pad(frames[i, :, :, ci], r, mode=NUMPY_MODE[pad_mode])
            if keep is not None:
                padded = padded * keep
            for co in range(weights.shape[0]):
                out[i, :, :, co] += correlate(padded, weights[co, ci], mode="valid")
    return out


@pytest.fixture
def problem():
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(2, 7, 9, 2))
    weights = rng.normal(size=(3, 2, 5, 5))
    bias = rng.normal(size=3)
    bits = mask_length(9, 7, kernel_size=5, block_size=3)
    mask = (rng.random(bits) < 0.5).astype(np.uint8)
    mask[:2] = (0, 1)
    return frames, weights, bias, mask


@pytest.mark.parametrize("pad_mode", MODES)
def test_all_included_is_plain_padded_conv(problem, pad_mode):
    frames, weights, bias, _ = problem
    out = masked_conv2d(frames, weights, bias, pad_mode=pad_mode, block_size=3)
    np.testing.assert_allclose(out, reference_conv(frames, weights, pad_mode) + bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pad_mode", MODES)
def test_all_excluded_is_zero_padding(problem, pad_mode):
    frames, weights, _, mask = problem
    out = masked_conv2d(frames, weights, pad_mode=pad_mode, mask=np.zeros_like(mask), block_size=3)
    np.testing.assert_allclose(out, reference_conv(frames, weights, "zero"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pad_mode", MODES)
def test_partial_mask_zeroes_excluded_blocks(problem, pad_mode):
    frames, weights, _, mask = problem
    blocks = block_map(9, 7, kernel_size=5, block_size=3)
    keep = np.where(blocks >= 0, mask[np.maximum(blocks, 0)], 1)
    out = masked_conv2d(frames, weights, pad_mode=pad_mode, mask=mask, block_size=3)
    np.testing.assert_allclose(out, reference_conv(frames, weights, pad_mode, keep), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(padding_keep(9, 7, kernel_size=5, pad_mode=pad_mode, mask=mask, block_size=3),
                                  keep * (1 if pad_mode != "zero" else (blocks < 0)))


@pytest.mark.parametrize("pad_mode", MODES)
def test_gradients_against_finite_differences(problem, pad_mode):
    frames, weights, bias, mask = problem
    rng = np.random.default_rng(2)
    target = rng.normal(size=(2, 7, 9, 3))

    def loss(frames=frames, weights=weights, bias=bias):
        out = masked_conv2d(frames, weights, bias, pad_mode=pad_mode, mask=mask, block_size=3)
        return 0.5 * np.sum((out - target) ** 2)

    out = masked_conv2d(frames, weights, bias, pad_mode=pad_mode, mask=mask, block_size=3)
    grads = masked_conv2d_backward(out - target, frames, weights, pad_mode=pad_mode, mask=mask, block_size=3)
    step = 1e-6
    for name, value in (("weights", weights), ("bias", bias), ("frames", frames)):
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[index] += step
            minus[index] -= step
            numeric[index] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * step)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("pad_mode", ("replicate", "reflect"))
def test_fed_gradient_of_excluded_position(problem, pad_mode):
    # The slope of the loss if a masked-out position fed value v instead of 0.
    frames, weights, bias, mask = problem
    r = 2
    blocks = block_map(9, 7, kernel_size=5, block_size=3)
    py, px = np.argwhere((blocks >= 0) & (mask[np.maximum(blocks, 0)] == 0))[0]
    rng = np.random.default_rng(3)
    target = rng.normal(size=(2, 7, 9, 3))
    out = masked_conv2d(frames, weights, bias, pad_mode=pad_mode, mask=mask, block_size=3)
    fed = masked_conv2d_backward(out - target, frames, weights, pad_mode=pad_mode, mask=mask,
                                 block_size=3)["fed"]
    expected = 0.0
    for ky in range(5):
        for kx in range(5):
            y, x = py - ky, px - kx
            if 0 <= y < 7 and 0 <= x < 9:
                expected += (out - target)[0, y, x] @ weights[:, 1, ky, kx]
    assert fed[0, py, px, 1] == pytest.approx(expected, rel=1e-12)
    assert blocks[py, px] >= 0 and (py < r or px < r or py >= 7 + r or px >= 9 + r)


def test_relevance_geometry():
    # A loss reading one padding pixel only: only that pixel's block scores.
    kernel_size, block_size = 3, 4
    blocks = block_map(10, 8, kernel_size=kernel_size, block_size=block_size)
    fed = np.zeros((1, 10, 12, 1))
    for py, px in ((0, 5), (4, 11), (9, 0)):
        fed[0, py, px, 0] = -2.0
        raw = block_relevance(fed, kernel_size=kernel_size, block_size=block_size)
        expected = np.zeros(mask_length(10, 8, kernel_size=3, block_size=4))
        expected[blocks[py, px]] = 2.0 / np.sum(blocks == blocks[py, px])
        np.testing.assert_allclose(raw, expected)
        np.testing.assert_array_equal(normalise_relevance(raw), expected > 0)
        fed[0, py, px, 0] = 0.0


def test_relevance_from_a_loss_on_one_padding_pixel():
    # End to end: L = v at one padded position through one kernel tap.
    frames = np.random.default_rng(4).normal(size=(1, 6, 6, 1))
    weights = np.zeros((1, 1, 3, 3))
    weights[0, 0, 0, 0] = 1.0                       # out[y, x] = fed[y, x]
    grad_out = np.zeros((1, 6, 6, 1))
    grad_out[0, 0, 3, 0] = 1.0                      # L = out[0, 3] = fed[0, 3]: top padding, column 2
    fed = masked_conv2d_backward(grad_out, frames, weights, pad_mode="replicate",
                                 mask=np.zeros(mask_length(6, 6, kernel_size=3), np.uint8))["fed"]
    raw = block_relevance(fed, kernel_size=3)
    assert np.flatnonzero(raw).tolist() == [block_map(6, 6, kernel_size=3)[0, 3]]


def test_normalise_relevance():
    np.testing.assert_allclose(normalise_relevance([0.5, 2.0, 1.0]), [0.25, 1.0, 0.5])
    np.testing.assert_array_equal(normalise_relevance([0.0, 0.0]), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"^raw relevance must be a 1-D array of finite non-negative numbers$"):
        normalise_relevance([1.0, -1.0])


def test_threshold_mask():
    np.testing.assert_array_equal(threshold_mask([0.2, 0.5, 0.7], 0.5), [0, 0, 1])
    with pytest.raises(ValueError, match=r"^threshold must be a finite number in \[0\.0, 1\.0\], not 1\.5$"):
        threshold_mask([0.1], 1.5)


def test_update_threshold_sign_and_averages():
    relevance = np.array([0.9, 0.8, 0.1, 0.3])
    mask = np.array([0, 0, 1, 1])                   # the excluded blocks are the more relevant ones
    new, avg_out, avg_in = update_threshold(relevance, mask, 0.5, lr=0.5)
    assert (avg_out, avg_in) == pytest.approx((0.85, 0.2))
    assert new == pytest.approx(0.5 + 0.65 * 0.5)   # formula: threshold rises, fewer blocks pass it
    new, _, _ = update_threshold(relevance, mask, 0.5, lr=0.5, rule="prose")
    assert new == pytest.approx(0.5 - 0.65 * 0.5)
    new, _, _ = update_threshold(relevance, 1 - mask, 0.5, lr=0.1)
    assert new == pytest.approx(0.5 - 0.065)


def test_update_threshold_clamps():
    relevance, mask = np.array([1.0, 0.0]), np.array([0, 1])
    assert update_threshold(relevance, mask, 0.9, lr=1.0)[0] == 1.0
    assert update_threshold(relevance, 1 - mask, 0.1, lr=1.0)[0] == 0.0
    assert update_threshold(relevance, mask, 0.9, lr=1.0, rule="prose")[0] == pytest.approx(0.0)


def test_update_threshold_empty_groups():
    relevance = np.array([0.4, 0.6])
    new, avg_out, avg_in = update_threshold(relevance, np.array([1, 1]), 0.3, lr=1.0)
    assert new == 0.3 and np.isnan(avg_out) and avg_in == pytest.approx(0.5)
    new, avg_out, avg_in = update_threshold(relevance, np.array([0, 0]), 0.7, lr=1.0)
    assert new == 0.7 and avg_out == pytest.approx(0.5) and np.isnan(avg_in)


def test_update_threshold_errors():
    with pytest.raises(ValueError, match=r"^threshold learning rate must be a finite number >= 0\.0, not -1\.0$"):
        update_threshold([0.1], [1], 0.5, lr=-1)
    with pytest.raises(TypeError, match=r"^threshold must be a real number, not '0\.5'$"):
        update_threshold([0.1], [1], "0.5", lr=1)
    with pytest.raises(ValueError, match=r"^threshold rule must be one of formula, prose, not 'sign'$"):
        update_threshold([0.1], [1], 0.5, lr=1, rule="sign")
    with pytest.raises(ValueError, match=r"^mask and relevance must be 1-D of the same length"):
        update_threshold([0.1, 0.2], [1], 0.5, lr=1)


def test_skipped_padding_counts():
    # 4×4 frame, K=3, B=4: top/bottom 2 blocks (6 columns), left/right 1 block.
    mask = np.array([1, 0, 1, 1, 0, 1], np.uint8)
    counts = skipped_padding(mask, 4, 4, kernel_size=3, block_size=4)
    # Per axis, 4 · 3 output/tap pairs of which 2 fall outside the frame.
    assert counts["padding"] == 16 * 9 - 10 * 10 and counts["total"] == 16 * 9
    fed_reads = 0
    blocks = block_map(4, 4, kernel_size=3)
    for y in range(4):
        for x in range(4):
            for ky in range(3):
                for kx in range(3):
                    bit = blocks[y + ky, x + kx]
                    fed_reads += bit >= 0 and mask[bit] == 0
    assert counts["skipped"] == fed_reads


def test_mask_words():
    mask = np.zeros(40, np.uint8)
    mask[[0, 31, 32, 39]] = 1
    assert mask_words(mask) == [0x80000001, 0x81]
    assert mask_words(np.zeros(0, np.uint8)) == []


def test_mask_band_writes():
    # 6×5 frame, K=3, B=4: top/bottom 2 blocks each (8 columns), left/right 2 blocks (5 rows).
    mask = np.array([1, 0, 0, 1, 1, 1, 0, 1], np.uint8)
    assert masklearn.mask_band_writes(mask, 6, 5, kernel_size=3) == [
        (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (2, 0, 1), (2, 1, 1), (3, 0, 0), (3, 1, 1)]


GEOMETRY = dict(kernel_size=5, block_size=4)


def test_export_load_round_trip(tmp_path):
    bits = mask_length(100, 30, **GEOMETRY)
    mask = (np.random.default_rng(5).random(bits) < 0.5).astype(np.uint8)
    path = tmp_path / "mask.txt"
    export_mask(mask, path, width=100, height=30, **GEOMETRY)
    lines = path.read_text().splitlines()
    assert lines[0] == "dynsparse-padmask 1"
    assert lines[1] == f"width=100 height=30 kernel_size=5 block_size=4 bits={bits}"
    assert [int(line, 16) for line in lines[2:]] == mask_words(mask)
    np.testing.assert_array_equal(load_mask(path, 100, 30, **GEOMETRY), mask)


@pytest.mark.parametrize("text, message", [
    ("", r"^padding mask file must start with 'dynsparse-padmask 1', not ''$"),
    ("padmask 1\n", r"^padding mask file must start with 'dynsparse-padmask 1', not 'padmask 1'$"),
    ("dynsparse-padmask 2\n", r"^padding mask file format version 2 is not supported \(this module reads version 1\)$"),
    ("dynsparse-padmask 1\n", r"^padding mask file line 2 must read 'width=W height=H kernel_size=K block_size=B bits=N', not ''$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5\n",
     r"^padding mask file line 2 must read .*, not 'width=16 height=16 kernel_size=5'$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=3 block_size=4 bits=18\n0003ffff\n",
     r"^padding mask file is for a 16×16 frame with K=3 and blocks of 4, not 16×16 with K=5 and blocks of 4$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5 block_size=4 bits=17\n0001ffff\n",
     r"^padding mask file declares 17 bits, a 16×16 frame with K=5 and blocks of 4 has 18$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5 block_size=4 bits=18\n",
     r"^padding mask file must hold 1 words of 32 bits after its header, not 0$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5 block_size=4 bits=18\n0003ffff\n00000000\n",
     r"^padding mask file must hold 1 words of 32 bits after its header, not 2$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5 block_size=4 bits=18\n0003fffg\n",
     r"^padding mask file line 3 must be 8 hexadecimal digits, not '0003fffg'$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5 block_size=4 bits=18\n3ffff\n",
     r"^padding mask file line 3 must be 8 hexadecimal digits, not '3ffff'$"),
    ("dynsparse-padmask 1\nwidth=16 height=16 kernel_size=5 block_size=4 bits=18\n0007ffff\n",
     r"^padding mask file line 3 sets bits past the mask's 18 bits$"),
    ("dynsparse-padmask 1\r\nwidth=16 height=16 kernel_size=5 block_size=4 bits=18\r\n0003ffff\r\n",
     r"^padding mask file must start with 'dynsparse-padmask 1', not 'dynsparse-padmask 1\\r'$"),
])
def test_load_bad_files(tmp_path, text, message):
    path = tmp_path / "mask.txt"
    path.write_bytes(text.encode())
    with pytest.raises(ValueError, match=message):
        load_mask(path, 16, 16, **GEOMETRY)


def test_load_truncated_and_binary_files(tmp_path):
    path = tmp_path / "mask.txt"
    export_mask(np.ones(18, np.uint8), path, width=16, height=16, **GEOMETRY)
    text = path.read_bytes()
    path.write_bytes(text[:-5])
    with pytest.raises(ValueError, match=r"^padding mask file line 3 must be 8 hexadecimal digits, not '0003'$"):
        load_mask(path, 16, 16, **GEOMETRY)
    path.write_bytes(text[:30])
    with pytest.raises(ValueError, match=r"^padding mask file line 2 must read"):
        load_mask(path, 16, 16, **GEOMETRY)
    path.write_bytes(b"\xff\xfe" + text)
    with pytest.raises(ValueError, match=r"^padding mask file must be ASCII text, byte 0 is 0xff$"):
        load_mask(path, 16, 16, **GEOMETRY)


def test_export_checks_the_mask(tmp_path):
    with pytest.raises(ValueError, match=r"^padding mask must have 18 bits for a 16×16 frame"):
        export_mask(np.ones(17, np.uint8), tmp_path / "mask.txt", width=16, height=16, **GEOMETRY)


def test_conv_parameter_errors(problem):
    frames, weights, bias, _ = problem
    with pytest.raises(ValueError, match=r"^padding mode must be one of zero, replicate, reflect, not 'wrap'$"):
        masked_conv2d(frames, weights, pad_mode="wrap")
    with pytest.raises(ValueError, match=r"^weights must have shape \[C_out, C_in, K, K\] with K odd, not \(3, 2, 4, 4\)$"):
        masked_conv2d(frames, weights[:, :, :4, :4], pad_mode="zero")
    with pytest.raises(ValueError, match=r"^weights take 2 input channels, the frames have 1$"):
        masked_conv2d(frames[..., 0], weights, pad_mode="zero")
    with pytest.raises(ValueError, match=r"^reflect padding needs a frame of at least 3×3 pixels, not 2×9$"):
        masked_conv2d(frames[:, :2], weights, pad_mode="reflect")
    with pytest.raises(ValueError, match=r"^padding mask must have \d+ bits for a 9×7 frame"):
        masked_conv2d(frames, weights, pad_mode="reflect", mask=[1, 0])


def test_train_parameter_errors():
    task = image_filter_task(train_crops=4, test_crops=4)
    with pytest.raises(ValueError, match=r"^mask must be 'learned' or a 0/1 array, not 'all'$"):
        train(task, pad_mode="replicate", mask="all", epochs=1)
    with pytest.raises(ValueError, match=r"^epoch count must be an integer >= 0, not -1$"):
        train(task, pad_mode="replicate", epochs=-1)
    with pytest.raises(ValueError, match=r"^pad modes to learn a mask for must be replicate or reflect, not 'zero'$"):
        mask_learning_report(pad_modes=("zero",))


def test_task_targets_use_context_outside_the_crop():
    task = image_filter_task(train_crops=8, test_crops=8, seed=3)
    # Inside, the targets are the filters applied to the crop itself.
    inner = masked_conv2d(task["train_x"], task["filters"], pad_mode="zero")
    np.testing.assert_allclose(inner[:, 2:-2, 2:-2], task["train_y"][:, 2:-2, 2:-2], atol=1e-12)
    assert not np.allclose(inner[:, :2], task["train_y"][:, :2])


@pytest.fixture(scope="module")
def small_report():
    return mask_learning_report(pad_modes=("replicate",), train_crops=128, test_crops=64, epochs=12)


def test_learning_run_measurements(small_report):
    entry = small_report["modes"]["replicate"]
    # Excluding every block is zero padding, to the last bit of the training run.
    assert entry["excluded"] == small_report["zero"]
    # Padding from the image beats zeros on real images: the mask matters.
    assert entry["included"] < entry["excluded"]
    for rule, result in entry["rules"].items():
        learned = result["learned"]
        assert len(learned["history"]) == 12
        np.testing.assert_array_equal(learned["mask"], threshold_mask(learned["relevance"], learned["threshold"]))
        assert result["skipped"] == skipped_padding(learned["mask"], 16, 16, kernel_size=5)
        thresholds = [step["threshold"] for step in learned["history"]]
        assert all(0.0 <= value <= 1.0 for value in thresholds)
        # Relevance is at most 1, so a threshold of 1 excludes every block, and with no block
        # included the rule has no step to take: the state is final.
        if 1.0 in thresholds:
            first = thresholds.index(1.0)
            assert thresholds[first:] == [1.0] * (12 - first)
            assert not any(step["mask"].any() for step in learned["history"][first:])
    # Measured on this configuration (seeded, so deterministic); docs/padmask.md shows that other
    # learning rates can end anywhere between all included and all excluded.
    formula = entry["rules"]["formula"]
    assert formula["loss"] < entry["excluded"]
    # A layer trained with its padding loses more by dropping it than a layer trained without.
    assert formula["same_weights"]["excluded"] > entry["excluded"]


def test_main_writes_mask_files_and_picture(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(masklearn, "mask_learning_report",
                        lambda **kwargs: _small(**kwargs))
    assert masklearn.main(["--epochs", "2", "--mask-dir", str(tmp_path), "--image",
                           str(tmp_path / "padmask.png")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\| replicate \| formula \| \d\.\d{6} \|", out, re.M)
    for name in ("replicate_formula", "reflect_prose"):
        mask = load_mask(tmp_path / f"{name}.mask", 16, 16, **GEOMETRY)
        assert mask.size == 18
    assert (tmp_path / "padmask.png").stat().st_size > 1000


def _small(**kwargs):
    kwargs.update(train_crops=16, test_crops=8)
    return mask_learning_report(**kwargs)

"""`dynsparse bench --suite heads`: cycles follow the listed taps, not the window."""

import json

import numpy as np

from dynsparse.golden.images import real_image
from dynsparse.sim.heads_bench import HEADS_BENCH_BEGIN, HEADS_BENCH_END, heads_case, run_heads_bench


def test_cycles_follow_taps_not_reach():
    frame = real_image("camera", size=(12, 12))[:, :, None]
    small = heads_case(frame, 2, reach=1, k=4, heads=8, lanes=2)
    large = heads_case(frame, 2, reach=7, k=4, heads=8, lanes=2)
    assert large["dense_cycles"] > 20 * small["dense_cycles"]              # (15 / 3)² = 25× the taps
    assert large["sparse_cycles"] <= small["sparse_cycles"]               # same taps; more fall in padding
    # interior positions: 8 heads × 4 taps over 2 lanes = 16 steps; padding only removes work
    assert large["sparse_cycles"] <= 16 * 144 + 20
    assert small["performed"] + small["padding_skipped"] == 144 * 8 * 4
    assert small["ideal"] == 9 / 4 and large["ideal"] == 225 / 4


def test_one_dimensional_rows():
    rng = np.random.default_rng(0)
    frame = rng.integers(-128, 128, (2, 20, 3)).astype(np.int8)
    row = heads_case(frame, 1, reach=3, k=2, heads=4, lanes=4)
    assert row["dense_taps"] == 4 * 3 * 7 and row["listed_taps"] == 8
    assert row["dense_cycles"] > 8 * row["sparse_cycles"]


def test_bench_writes_its_section(tmp_path):
    docs = tmp_path / "docs"
    (docs / "images").mkdir(parents=True)
    (docs / "heads.md").write_text(f"# x\n\n{HEADS_BENCH_BEGIN}\nold\n{HEADS_BENCH_END}\ntail\n")
    results = run_heads_bench(reaches=(1, 2), ks=(2,), lanes=(2,), heads=4, out=tmp_path / "bench", docs=docs,
                              log=lambda *_: None)
    text = (docs / "heads.md").read_text()
    assert "old" not in text and text.endswith("tail\n") and "| 2 | 5² | 2 | 2 |" in text
    assert json.loads((tmp_path / "bench" / "heads.json").read_text())["rows"] == results["rows"]
    assert (docs / "images" / "heads_bench.png").stat().st_size > 10_000

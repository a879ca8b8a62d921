"""The benchmark's figures on a small crop: consistent with each other and with the models."""

import numpy as np
import pytest

from dynsparse.cli import main
from dynsparse.sim.bench import bench_image, filter_bank


def test_bench_figures_are_consistent():
    rows, frame, skip_maps = bench_image("camera", thresholds=(0, 64, 511), lanes=(8, 2), tile_sizes=(1, 4),
                                         max_side=24, log=lambda *_: None)
    assert frame.shape == (24, 24) and len(rows) == 6
    weights = filter_bank()
    for row in rows:
        assert row["dense_macs"] == 24 * 24 * weights.size
        assert row["performed_macs"] + row["skipped_pruned"] + row["skipped_zero"] + \
            row["skipped_padding"] == row["dense_macs"]
        # back to back, plus the pipeline's fill (latency 8, less the first cycle)
        assert row["lanes"]["8"]["dense_cycles"] == 24 * 24 * 9 + 7
        assert row["lanes"]["2"]["dense_cycles"] == 24 * 24 * 4 * 9 + 7
        assert row["lanes"]["8"]["dense_lane_busy"] == 24 * 24 * 9 / (24 * 24 * 9 + 7)
        for figures in row["lanes"].values():
            assert figures["sparse_cycles"] <= figures["dense_cycles"]
            assert figures["fraction_of_ideal"] <= 1.0 + 1e-12
            compact = figures["compact"]
            assert compact["sparse_cycles"] <= compact["dense_cycles"]
            assert compact["fraction_of_rate_bounded_ideal"] <= 1.0 + 1e-12
        # the compact engine: a beat a cycle, its latency 7
        assert row["lanes"]["8"]["compact"]["dense_cycles"] == 24 * 24 * 9 + 6
        assert row["lanes"]["2"]["compact"]["dense_cycles"] == 24 * 24 * 4 * 9 + 6
        # the packed engine: the window's reach (25) is taken first; the last flush is given
        # FLUSH_TO_EMIT (5) beats later, offered 3 cycles after its beat
        assert row["lanes"]["8"]["packed"]["dense_cycles"] == 25 + 1 + 24 * 24 * 9 + 5 + 3 - 1
        assert row["lanes"]["2"]["packed"]["dense_cycles"] == 25 + 1 + 24 * 24 * 4 * 9 + 5 + 3 - 1
        for figures in row["lanes"].values():
            packed = figures["packed"]
            assert packed["sparse_cycles"] <= packed["dense_cycles"]
            assert packed["fraction_of_rate_bounded_ideal"] <= 1.0 + 1e-12
    everything = [row for row in rows if row["prune_threshold"] == 511]
    assert all(row["performed_macs"] == 0 for row in everything)
    # empty positions: one a cycle, each given out 3 cycles after it was accepted
    assert all(row["lanes"]["8"]["sparse_cycles"] == 24 * 24 + 3 for row in everything)
    # on the compact engine an empty position is one beat
    assert all(row["lanes"]["8"]["compact"]["sparse_cycles"] == 24 * 24 + 6 for row in everything)
    # on the packed engine a pixel and an emit a beat, the emits from the window's reach on
    assert all(row["lanes"][lane]["packed"]["sparse_cycles"] == 24 * 24 + 25 + 3
               for row in everything for lane in ("8", "2"))
    assert np.all(skip_maps[511] == 1.0)
    # zero padding: the border's padding taps are skipped at threshold 0
    assert rows[0]["skipped_padding"] > 0


@pytest.mark.parametrize("args,message", [
    (["--image", "lena"], r"unknown image 'lena'"),
    (["--threshold", "512"], r"prune threshold must be in \[0, 511\] \(UQ1\.8\), not 512"),
    (["--lanes", "0"], r"lane count must be in \[1, 8\] \(the layer has 8 output channels\), not 0"),
    (["--tile-size", "3"], r"tile size must be a power of two in \[1, 64\], not 3"),
])
def test_bench_cli_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_weight_bench_writes_json_and_the_docs_section(tmp_path):
    import json
    import shutil
    from pathlib import Path
    from dynsparse.sim.bench import WEIGHT_BENCH_BEGIN, WEIGHT_BENCH_END, run_weight_bench
    docs = tmp_path / "docs"
    (docs / "images").mkdir(parents=True)
    shutil.copy(Path(__file__).parent.parent / "docs" / "weightstream.md", docs / "weightstream.md")
    before = (docs / "weightstream.md").read_text()
    record = run_weight_bench(out=tmp_path / "bench", docs=docs, log=lambda *_: None, quick=True)
    data = json.loads((tmp_path / "bench" / "weightstream.json").read_text())
    assert data["sizes"] == record["sizes"] and len(data["sizes"]) == 11
    for row in data["sizes"]:
        for encoding in ("bitmask", "rle", "csr", "csc"):
            assert abs(row[encoding] / row[encoding + "_analytic"] - 1) <= 0.05
    assert {row["method"] for row in data["accuracy"]} == {"zero", "linear", "learned"}
    after = (docs / "weightstream.md").read_text()
    # only the generated part changed; the text around it is kept
    assert before.split(WEIGHT_BENCH_BEGIN)[0] == after.split(WEIGHT_BENCH_BEGIN)[0]
    assert before.split(WEIGHT_BENCH_END)[1] == after.split(WEIGHT_BENCH_END)[1]
    assert record["markdown"] in after and (docs / "images" / "weightstream.png").exists()


def test_weight_bench_needs_the_markers(tmp_path):
    from dynsparse.sim.bench import run_weight_bench
    (tmp_path / "docs" / "images").mkdir(parents=True)
    (tmp_path / "docs" / "weightstream.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="has no .* section to update"):
        run_weight_bench(out=tmp_path / "bench", docs=tmp_path / "docs", log=lambda *_: None, quick=True)

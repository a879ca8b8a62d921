"""cocotb testbench: WeightReconstructor (MaskDecoder + Interpolator) against golden.sparsify.reconstruct.

Good streams of every encoding × interpolation (and a corrupted one after each) are sent
back to back, so the decoder works on the next stream while the interpolator streams the
previous tensor; then tensors at the interpolator's line-buffer limit (two rows of
``max_entries // 2``, one row of ``max_entries``). The weights are collected under each
output stall pattern and compared with the golden reconstruction, and nothing more may
come out.
"""

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from dynsparse.golden.sparsify import reconstruct
from dynsparse.golden.weightstream import StreamError, parse_stream
from dynsparse.hdl.reconstructor import WeightReconstructor
from dynsparse.sim.maskdecoder_io import corrupt, decoder_result, random_tensor_stream, tensor_stream
from dynsparse.sim.packing import unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = WeightReconstructor(**PARAMS["block"])
MAX_ENTRIES = BLOCK.max_entries
WEIGHT_LAYOUT = BLOCK.o_stream.payload.shape()


@cocotb.test()
@cocotb.parametrize(sink=STALL_PATTERNS)
async def weights_under_stalls(dut, sink):
    seed = 900 + STALL_PATTERNS.index(sink)
    dut._log.info("seed %d", seed)
    rng = np.random.default_rng(seed)
    streams, good = [], []
    for encoding in ("bitmask", "rle", "csr", "csc"):
        for interpolation in ("zero", "linear", "learned"):
            data = random_tensor_stream(rng, MAX_ENTRIES, encoding=encoding, interpolation=interpolation, small=64)
            streams.append(data)
            good.append(reconstruct(parse_stream(data)).ravel())
            _, bad = corrupt(rng, data)
            streams.append(bad)
            if decoder_result(bad, MAX_ENTRIES)[0] == StreamError.OK:
                good.append(reconstruct(parse_stream(bad)).ravel())
    for shape in ((2, MAX_ENTRIES // 2), (1, MAX_ENTRIES)):
        for interpolation in ("linear", "learned"):
            data = tensor_stream(rng.integers(-127, 128, shape), rng.random(shape) < 0.3, "bitmask", interpolation, rng)
            streams.append(data)
            good.append(reconstruct(parse_stream(data)).ravel())
    words = [byte | (position == len(data) - 1) << 8 for data in streams for position, byte in enumerate(data)]
    tb = TB(dut)
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    cocotb.start_soon(source.send(words, seed=seed))
    total = sum(len(g) for g in good)
    received = await receiver.receive(total, pattern=sink, seed=seed + 1, timeout_cycles=40 * total + 20 * len(words))
    await receiver.expect_idle(200)
    fields = unpack(WEIGHT_LAYOUT, received)
    offset = 0
    for number, weights in enumerate(good):
        part = slice(offset, offset + len(weights))
        np.testing.assert_equal(fields["data"][part], weights, err_msg=f"tensor {number} (seed {seed})")
        np.testing.assert_equal(fields["index"][part], np.arange(len(weights)))
        assert fields["first"][part][0] == 1 and fields["first"][part].sum() == 1
        assert fields["last"][part][-1] == 1 and fields["last"][part].sum() == 1
        offset += len(weights)
    await ReadOnly()
    ok, bad = int(dut.streams_ok.value), int(dut.streams_bad.value)
    assert ok == len(good) and ok + bad == len(streams), (ok, bad)
    await RisingEdge(tb.clock)
    dut._log.info("%d streams, %d tensors, %d weights exact", len(streams), len(good), total)

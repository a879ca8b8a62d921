"""cocotb testbench: the convolution board design, driven through its UART pins by the host API.

The host API that talks to a real board (:class:`dynsparse.boards.protocol.HostLink`:
``write_weights``, ``write_padding_mask``, ``configure_conv``, ``run_conv``,
``engine_counters``) runs in a bridge thread against the simulated
:class:`~dynsparse.boards.top.ConvBoard`; the images are crops of scikit-image's
real images, and results and counters are compared with the golden chain
``density_map → tap_densities → tap_lists → sparse_conv → requantize``.
"""

import numpy as np

import cocotb
from cocotb.triggers import ClockCycles

from dynsparse.boards.protocol import PROTOCOL_VERSION, Command, Design, ProtocolError, Register, Status
from dynsparse.boards.top import ConvBoard
from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import dense_tap_lists, requantize, sparse_conv, tap_densities, tap_lists
from dynsparse.golden.sparsify import reconstruct, sparsify
from dynsparse.golden.weightstream import StreamError, encode_stream, parse_stream
from dynsparse.sim.bench import FILTER_BANK
from dynsparse.sim.tb.streams import params
from dynsparse.sim.tb.uart import in_thread, start_board


PARAMS = params()
BOARD = ConvBoard(**PARAMS["block"])
K = BOARD.pipeline.kernel_size
C_OUT = BOARD.pipeline.out_channels
LANES = BOARD.pipeline.lanes
BLOCK_SIZE = PARAMS["block"].get("block_size", 4)


def golden(frame, weights, *, ref_std, threshold, pad_mode, mask, dense, multiplier, shift):
    """int8 results ``[H, W, C_out]`` and counters of one frame, from the golden models."""
    height, width = frame.shape
    pixels = frame[:, :, None]
    if dense:
        lists = dense_tap_lists(weights, (height, width))
    else:
        density = density_map(pixels, kernel_size=3, inv_ref_var=inv_ref_var(ref_std))
        lists = tap_lists(weights, tap_densities(density, kernel_size=K), prune_threshold=threshold)
    acc, counters = sparse_conv(pixels, lists, kernel_size=K, pad_mode=pad_mode, mask=mask,
                                block_size=BLOCK_SIZE, lanes=LANES, dense=dense)
    return requantize(acc, multiplier=multiplier, shift=shift), counters


async def check_frame(host, frame, weights, *, ref_std=16.0, threshold=64, pad_mode="zero", mask=None,
                      dense=False, multiplier=300, shift=12, write_weights=True):
    """Configure the engine, convolve ``frame`` on the board, compare results and counters with golden
    (``weights``: the weights the board holds; written first unless ``write_weights`` is False)."""
    height, width = frame.shape
    if write_weights:
        await in_thread(host.write_weights, weights)
    await in_thread(host.configure_conv, prune_threshold=threshold, multiplier=multiplier, shift=shift,
                    dense=dense, pad_mode=pad_mode, inv_ref_var=inv_ref_var(ref_std))
    if mask is not None:
        await in_thread(host.write_padding_mask, mask, width, height, block_size=BLOCK_SIZE)
    result = await in_thread(host.run_conv, frame)
    expected, counters = golden(frame, weights, ref_std=ref_std, threshold=threshold, pad_mode=pad_mode,
                                mask=mask, dense=dense, multiplier=multiplier, shift=shift)
    np.testing.assert_equal(result, expected)
    measured = await in_thread(host.engine_counters)
    assert measured["errors"] == 0, measured
    assert {name: measured[name] for name in ("cycles", "performed", "pruned", "zero", "padding")} == \
        {name: counters[name] for name in ("cycles", "performed", "pruned", "zero", "padding")}, \
        (measured, counters)
    status = await in_thread(host.status)
    assert status["errors"] == 0, status
    return measured, counters


async def expect_status(call, status, *args):
    try:
        await in_thread(call, *args)
    except ProtocolError as error:
        assert error.status == status, error
    else:
        raise AssertionError(f"{call.__name__}{args} was accepted, expected {status.name}")


@cocotb.test()
async def ping_registers_and_errors(dut):
    """PING describes the design; registers read back; bad addresses and values get error replies."""
    _, _, host = await start_board(dut, BOARD)
    info = await in_thread(host.ping)
    assert info["version"] == PROTOCOL_VERSION and info["design"] == Design.CONV, info
    assert (info["kernel_size"], info["channels"], info["results_per_pixel"], info["result_bytes"]) == \
        (K, 1, C_OUT, 1), info
    await in_thread(host.write_register, Register.PRUNE_THRESHOLD, 300)
    assert await in_thread(host.read_register, Register.PRUNE_THRESHOLD) == 300
    # WEIGHT_DATA increments WEIGHT_ADDR, and wraps to 0 after the last weight
    await in_thread(host.write_register, Register.WEIGHT_ADDR, 5)
    for value in (3, -4 & 0xFFFFFFFF):
        await in_thread(host.write_register, Register.WEIGHT_DATA, value)
    assert await in_thread(host.read_register, Register.WEIGHT_ADDR) == 7
    await in_thread(host.write_register, Register.WEIGHT_ADDR, BOARD.weight_count - 1)
    await in_thread(host.write_register, Register.WEIGHT_DATA, 1)
    assert await in_thread(host.read_register, Register.WEIGHT_ADDR) == 0
    bad_values = [(Register.PRUNE_THRESHOLD, 512), (Register.WEIGHT_DATA, 128),
                  (Register.WEIGHT_DATA, -128 & 0xFFFFFFFF), (Register.WEIGHT_ADDR, BOARD.weight_count),
                  (Register.REQUANT_SHIFT, 48), (Register.REQUANT_MULTIPLIER, 1 << 16), (Register.DENSE, 2),
                  (Register.PAD_MASK, 1 << 20), (Register.PAD_MASK, BOARD.mask_band_sizes[0]),
                  (Register.PAD_MODE, 3)]
    for register, value in bad_values:
        await expect_status(host.write_register, Status.BAD_VALUE, register, value)
    for register in (Register.PERFORMED, Register.ENGINE_ERRORS, 0x2F, 0x7F):
        await expect_status(host.write_register, Status.BAD_REGISTER, register, 0)
    for register in (Register.WEIGHT_DATA, Register.PAD_MASK, 0x27, 0xFF):
        await expect_status(host.read_register, Status.BAD_REGISTER, register)
    assert await in_thread(host.read_register, Register.PRUNE_THRESHOLD) == 300
    status = await in_thread(host.status)
    assert status["bad_commands"] == len(bad_values) + 8, status


@cocotb.test()
@cocotb.parametrize(image=("camera", "hubble_deep_field"))
async def real_image_through_the_engine(dut, image):
    """A real crop, random weights and padding mask: results and counters equal golden."""
    _, _, host = await start_board(dut, BOARD)
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))
    rng = np.random.default_rng(11 + len(image))
    weights = rng.integers(-127, 128, (C_OUT, 1, K, K))
    mask = (rng.random(mask_length(width, height, kernel_size=K, block_size=BLOCK_SIZE)) < 0.5).astype(np.uint8)
    measured, counters = await check_frame(host, frame, weights, ref_std=12.0, threshold=64,
                                           pad_mode="zero" if image == "camera" else "replicate", mask=mask)
    assert measured["pruned"] > 0 and measured["performed"] < counters["dense"], measured
    dut._log.info("%s: %s of %d MACs performed", image, measured, counters["dense"])


@cocotb.test()
async def dense_mode(dut):
    """Dense mode, reflect padding: every tap performed, results equal golden; the next frame sparse."""
    _, _, host = await start_board(dut, BOARD)
    height, width = PARAMS["frame"]
    frame = real_image("text", size=(height, width))
    weights = np.random.default_rng(5).integers(-127, 128, (C_OUT, 1, K, K))
    measured, counters = await check_frame(host, frame, weights, dense=True, pad_mode="reflect",
                                           multiplier=200, shift=11)
    assert measured["pruned"] == 0 and measured["padding"] == 0, measured
    await check_frame(host, frame[:6, :8], weights, threshold=200, pad_mode="replicate", multiplier=200,
                      shift=11)


async def expect_stream_error(host, stream, message, **kwargs):
    try:
        await in_thread(host.load_weight_stream, stream, **kwargs)
    except ProtocolError as error:
        assert message in str(error), error
    else:
        raise AssertionError(f"a stream was loaded, expected {message}")


@cocotb.test()
async def compressed_weights(dut):
    """WEIGHT_STREAM: compressed weights decoded, rebuilt and loaded on the board, then convolved exactly;
    bad streams (CRC, shape, size, an abandoned one) are rejected with their code and change nothing."""
    pins, _, host = await start_board(dut, BOARD)
    # a smaller frame than the other tests: this test is about the weights, and every frame's
    # pixels and results cross the UART
    frame = real_image("camera", size=(6, 8))
    # real filters (sobel, laplacian, gaussian, …), half of each kernel dropped and rebuilt linearly
    bank = np.stack([FILTER_BANK[name] for name in list(FILTER_BANK)[:C_OUT]])[:, None].astype(np.int64)
    stream = encode_stream(bank, sparsify(bank, sparsity=0.5), encoding="rle", interpolation="linear",
                           criterion="magnitude")
    status = await in_thread(host.load_weight_stream, stream, chunk=16)       # several packets
    assert (status["code"], status["loads"], status["streams_ok"]) == (0, 1, 1), status
    linear = reconstruct(parse_stream(stream))
    assert not np.array_equal(linear, bank * sparsify(bank, sparsity=0.5))   # interpolation did something
    await check_frame(host, frame, linear, threshold=32, write_weights=False)

    # random weights, a quarter sent, the rest predicted by a learned predictor, bitmask in one packet
    rng = np.random.default_rng(23)
    weights = rng.integers(-127, 128, (C_OUT, 1, K, K))
    stream = encode_stream(weights, sparsify(weights, sparsity=0.75), encoding="bitmask",
                           interpolation="learned", coefficients=rng.integers(-40, 41, 8), shift=6)
    status = await in_thread(host.load_weight_stream, stream)
    assert (status["code"], status["loads"]) == (0, 2), status
    learned = reconstruct(parse_stream(stream))
    await check_frame(host, frame, learned, threshold=0, pad_mode="replicate", write_weights=False)

    # bad streams: each rejected, the weights stay the learned ones
    corrupt = bytearray(encode_stream(bank, np.ones(bank.shape, bool), encoding="csc"))
    corrupt[40] ^= 0x04
    await expect_stream_error(host, bytes(corrupt), f"BAD_CRC ({StreamError.BAD_CRC.value})")
    narrow = np.ones((C_OUT - 1, 1, K, K), np.int64)
    await expect_stream_error(host, encode_stream(narrow, np.ones(narrow.shape, bool), encoding="bitmask"),
                              "nothing was loaded")
    large = rng.integers(-127, 128, (C_OUT, 1, K + 2, K + 2))             # more entries than the board holds
    await expect_stream_error(host, encode_stream(large, np.ones(large.shape, bool), encoding="bitmask"),
                              f"BAD_HEADER ({StreamError.BAD_HEADER.value})", chunk=50)
    # a stream abandoned after its first packet: the decoder's watchdog ends it (TRUNCATED)
    await in_thread(host._command, Command.WEIGHT_STREAM, b"\x00" + stream[:20])
    await ClockCycles(pins.clock, 2 * BOARD.reconstructor.timeout_cycles)
    status = await in_thread(host.weight_stream_status)
    assert (status["code"], status["streams_bad"], status["loads"]) == (StreamError.TRUNCATED, 3, 2), status
    # a malformed packet: no flags byte, or flags other than bit 0
    await expect_status(host._command, Status.BAD_LENGTH, Command.WEIGHT_STREAM, b"\x01")
    await expect_status(host._command, Status.BAD_VALUE, Command.WEIGHT_STREAM, b"\x02" + stream[:4])
    await check_frame(host, frame, learned, threshold=0, pad_mode="replicate", write_weights=False)
    # the next good stream loads
    status = await in_thread(host.load_weight_stream, encode_stream(bank, np.ones(bank.shape, bool), encoding="csr"))
    assert (status["code"], status["loads"], status["streams_ok"], status["streams_bad"]) == (0, 3, 4, 3), status
    await check_frame(host, frame, bank, threshold=64, write_weights=False)

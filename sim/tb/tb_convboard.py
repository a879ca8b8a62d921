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

from dynsparse.boards.protocol import Design, ProtocolError, Register, Status
from dynsparse.boards.top import ConvBoard
from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import dense_tap_lists, requantize, sparse_conv, tap_densities, tap_lists
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
                      dense=False, multiplier=300, shift=12):
    """Configure the engine, convolve ``frame`` on the board, compare results and counters with golden."""
    height, width = frame.shape
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
    assert info["version"] == 2 and info["design"] == Design.CONV, info
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
    await check_frame(host, frame, weights, threshold=200, pad_mode="replicate", multiplier=200, shift=11)

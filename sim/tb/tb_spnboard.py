"""cocotb testbench: the encoding-loop board design, driven through its UART pins by the host API.

The host API of a real board (:class:`dynsparse.boards.protocol.HostLink`: ``write_spn_parameters``,
``configure_spn``, ``run_spn``, ``spn_errors``) runs in a bridge thread against the simulated
:class:`~dynsparse.boards.top.SPNBoard`; real peptides go in, and scales, windows, embedding and
logit are compared with :func:`dynsparse.golden.spn.forward_int`.
"""

import numpy as np

import cocotb

from dynsparse.boards.protocol import PROTOCOL_VERSION, Design, ProtocolError, Register, Status
from dynsparse.boards.top import SPNBoard
from dynsparse.golden import spn as golden
from dynsparse.sim.tb.peptides import varied
from dynsparse.sim.tb.streams import params
from dynsparse.sim.tb.uart import in_thread, start_board


PARAMS = params()
BOARD = SPNBoard(**PARAMS["block"])
LOOP = BOARD.loop
LENGTH = PARAMS["length"]
CONFIG = golden.SPNConfig(length=LENGTH, iterations=LOOP.iterations, channels=LOOP.channels,
                          spn_channels=LOOP.spn_channels, conv_kernel=LOOP.kernel_size)


def make_export(adaptive=True):
    """An untrained model quantised on real peptides, its scales moved off 1.0."""
    sequences = golden.load_dataset("AMPvsTM")[0][:40]
    x = golden.encode(sequences, length=LENGTH).astype(np.float64) / 127
    export = golden.quantise(golden.init_params(CONFIG, seed=3), CONFIG, x, adaptive=adaptive)[0]
    return varied(export, [[0.3, 0.9], [0.6, 0.1]][:LOOP.iterations]) if adaptive else export


async def check_map(host, export, codes):
    got = await in_thread(host.run_spn, codes, iterations=LOOP.iterations)
    logits, trace = golden.forward_int(dict(export, length=np.int64(codes.shape[1])), codes[None])
    assert (got["scale_codes"] == trace["scale_codes"][0]).all(), (got, trace["scale_codes"])
    assert (got["kernel_sizes"] == trace["kernel_sizes"][0]).all(), (got, trace["kernel_sizes"])
    assert list(got["embedding"]) == list(trace["pooled"][0].sum(axis=(1, 2))), got
    assert got["logit"] == int(logits[0]), got
    sizes = [tuple(int(v) for v in k) for k in trace["kernel_sizes"][0]]
    # from the link's frame start: the map's codes arrive at the UART's pace, the run follows
    assert got["cycles"] > LOOP.sequence_cycles(golden.HEIGHT, codes.shape[1], sizes,
                                                adaptive=bool(int(export["adaptive"]))), got
    return got


@cocotb.test()
async def peptides_through_the_link(dut):
    """PING names the design; the parameters load through the registers; real peptides give the
    integer model's words; the fixed-kernel model with max pooling on the same board."""
    _, _, host = await start_board(dut, BOARD)
    info = await in_thread(host.ping)
    assert info["version"] == PROTOCOL_VERSION and info["design"] == Design.SPN, info
    assert info["results_per_pixel"] == 4 * LOOP.words, info
    export = make_export()
    await in_thread(host.write_spn_parameters, LOOP.parameter_writes(export))
    sequences = golden.load_dataset("AMPvsTM")[0][120:122]
    codes = golden.encode(sequences, length=LENGTH).astype(np.int64)
    for x in codes:
        got = await check_map(host, export, x)
        dut._log.info("peptide: %s", got)
    # the host API encodes a sequence itself
    got = await in_thread(host.run_peptide, sequences[0], length=LENGTH, iterations=LOOP.iterations)
    logits, _ = golden.forward_int(export, codes[:1])
    assert got["logit"] == int(logits[0]), got
    assert await in_thread(host.spn_errors) == []

    fixed = make_export(adaptive=False)
    fixed["pool_max"] = np.int64(1)
    await in_thread(host.write_spn_parameters, LOOP.parameter_writes(fixed))
    await in_thread(host.configure_spn, pool_max=True, adaptive=False)
    got = await check_map(host, fixed, codes[0])
    assert (got["scale_codes"] == golden.SCALE_ONE).all(), got


@cocotb.test()
async def bad_values_and_sizes(dut):
    """Bad register values get BAD_VALUE; a map longer than the board takes gets BAD_FRAME_SIZE
    and changes nothing; a parameter write outside the regions raises bad_param; the next map
    is exact."""
    _, _, host = await start_board(dut, BOARD)
    export = make_export()
    await in_thread(host.write_spn_parameters, LOOP.parameter_writes(export))
    for register, value in ((Register.SPN_POOL_MAX, 2), (Register.SPN_ADAPTIVE, 7),
                            (Register.SPN_PARAM_ADDR, 1 << 20)):
        try:
            await in_thread(host.write_register, register, value)
        except ProtocolError as error:
            assert error.status == Status.BAD_VALUE, error
        else:
            raise AssertionError(f"{register.name} = {value} was accepted")
    try:
        await in_thread(host.run_spn, np.zeros((golden.HEIGHT, LOOP.max_length + 1), np.int64),
                        iterations=LOOP.iterations)
    except ProtocolError as error:
        assert error.status == Status.BAD_FRAME_SIZE, error
    else:
        raise AssertionError("an over-long map was accepted")
    await in_thread(host.write_register, Register.SPN_PARAM_ADDR, (3 << (len(LOOP.param_addr) - 2)) | 5)
    await in_thread(host.write_register, Register.SPN_PARAM_DATA, 1)
    assert await in_thread(host.spn_errors) == ["bad_param"]
    await in_thread(host.clear_errors)
    x = golden.encode(golden.load_dataset("AMPvsTM")[0][7:8], length=LENGTH).astype(np.int64)[0]
    await check_map(host, export, x)
    assert await in_thread(host.spn_errors) == []

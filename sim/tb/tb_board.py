"""cocotb testbench: the whole board design, driven through its UART pins by the host API.

The same :class:`dynsparse.boards.protocol.HostLink` that talks to a real
board over a serial port talks here to the simulated design over
:class:`~dynsparse.sim.tb.uart.PinTransport`; results are checked against
the golden density model on real images.
"""

import numpy as np

import cocotb

from dynsparse.boards.protocol import (PROTOCOL_VERSION, Command, Design, ProtocolError, ReplyParser, Register, Status,
                                       encode_command, encode_run_frame)
from dynsparse.boards.top import DensityBoard
from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.sim.tb.streams import params
from dynsparse.sim.tb.uart import collect, in_thread, start_board


PARAMS = params()
BOARD = DensityBoard(**PARAMS["block"])


async def start(dut):
    return await start_board(dut, BOARD)


@cocotb.test()
async def ping_and_registers(dut):
    """PING, register writes and reads, read-only and unknown registers refused."""
    _, _, host = await start(dut)
    info = await in_thread(host.ping)
    assert info["build_info"] == (Design.DENSITY, BOARD.pipeline.kernel_size, 1, 1, 2), info
    await in_thread(host.write_register, Register.WIDTH, 12)
    assert await in_thread(host.read_register, Register.WIDTH) == 12
    assert await in_thread(host.read_register, Register.ID) == int.from_bytes(b"DSPS", "little")
    for register in (Register.FRAMES, 0x7F):
        try:
            await in_thread(host.write_register, register, 1)
        except ProtocolError as error:
            assert error.status == Status.BAD_REGISTER, error
        else:
            raise AssertionError(f"write to register {register} accepted")


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"))
async def real_image_through_the_board(dut, image):
    """A crop of a real image in through the UART, its density map out, equal to golden."""
    _, _, host = await start(dut)
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))
    inv = inv_ref_var(16.0)
    await in_thread(host.write_register, Register.INV_REF_VAR, inv)
    result = await in_thread(host.run_frame, frame)
    expected = density_map(frame[:, :, None], kernel_size=BOARD.pipeline.kernel_size, inv_ref_var=inv)
    np.testing.assert_equal(result, expected)
    status = await in_thread(host.status)
    assert status["frames"] >= 1 and status["errors"] == 0, status
    assert status["cycles"] >= height * width, status


@cocotb.test()
async def interrupted_frame_is_recovered(dut):
    """The host stops mid-frame: the device completes it, ends with TIMEOUT, and the next frame is exact."""
    pins, transport, host = await start(dut)
    height, width = PARAMS["frame"]
    await in_thread(host.write_register, Register.WIDTH, width)
    await in_thread(host.write_register, Register.HEIGHT, height)
    await in_thread(host.write_register, Register.INV_REF_VAR, inv_ref_var(16.0))
    parser = ReplyParser()
    parser.expect(Command.RUN_FRAME)
    await pins.send(encode_run_frame() + bytes(range(width)))      # one row, then silence
    items = await collect(transport, parser, 2, seconds=0.5)
    assert len(items) == 2, items
    header, trailer = items
    assert header.status == Status.OK
    assert len(trailer.data) == 2 * height * width and trailer.status == Status.TIMEOUT, trailer.status
    status = await in_thread(host.status)
    assert "frame_timeout" in status["error_names"], status
    await in_thread(host.clear_errors)
    frame = real_image("camera", size=(height, width))
    result = await in_thread(host.run_frame, frame)
    np.testing.assert_equal(result, density_map(frame[:, :, None], kernel_size=BOARD.pipeline.kernel_size,
                                                inv_ref_var=inv_ref_var(16.0)))


@cocotb.test()
async def malformed_commands_get_error_replies(dut):
    """Garbage, a bad CRC and an unknown command: each an error reply, never a hang."""
    pins, transport, host = await start(dut)
    parser = ReplyParser()
    packet = bytearray(encode_command(Command.PING))
    packet[-1] ^= 0xFF
    statuses = []
    # One command at a time, as the host API does: the device answers before it reads on.
    for data, command in ((b"\x00\x13\x37" + bytes(packet), Command.PING), (encode_command(0x77), 0x77),
                          (encode_command(Command.READ_REG, b"\x01\x02"), Command.READ_REG)):
        parser.expect(command)
        await pins.send(data)
        statuses += [item.status for item in await collect(transport, parser, 1, seconds=0.05)]
    assert statuses == [Status.BAD_CRC, Status.UNKNOWN_COMMAND, Status.BAD_LENGTH], statuses
    info = await in_thread(host.ping)
    assert info["version"] == PROTOCOL_VERSION

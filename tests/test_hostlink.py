"""HostLink in amaranth.sim, driven and checked with the host-side protocol code."""

import collections
import itertools
import random
import struct

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.sim import Simulator
from amaranth.lib.wiring import connect

from dynsparse.boards.protocol import (
    DEVICE_ID, Command, FrameResult, Register, Reply, ReplyParser, Status, crc8, encode_command,
    encode_ping, encode_read_register, encode_run_frame, encode_weight_stream, encode_write_register,
)
from dynsparse.hdl.hostlink import HostLink, crc8_next
from dynsparse.hdl.uart import UARTReceiver, UARTTransmitter
from dynsparse.sim.pysim import run_simulation
from dynsparse.sim.stalls import stall_pattern


TIMEOUT = 64
BUILD_INFO = (0, 3, 2, 2, 2)      # density design, K 3, 2 channels, 2 results of 2 bytes per pixel


def make_dut(**overrides):
    parameters = dict(channels=2, max_width=8, max_height=6, min_width=2, timeout_cycles=TIMEOUT,
                      pixel_buffer=16)
    parameters.update(overrides)
    return HostLink(**parameters)


def model_result(byte):
    return byte * 3 + 1


class Bench:
    """Host script on ``rx``, reply parser on ``tx``, a pipeline model between ``pixel`` and ``result``.

    The model answers each pixel byte ``b`` with ``3·b + 1`` after ``latency``
    cycles; ``drop_results`` makes it fall silent after that many results.
    """

    def __init__(self, dut, *, rx="none", tx="none", pipe="none", seed=0, latency=4,
                 drop_results=None, link=None, host_tx=None, host_rx=None):
        self.dut = dut
        self.link = dut if link is None else link          # the HostLink inside ``dut``
        self.host_tx = dut.rx if host_tx is None else host_tx
        self.host_rx = dut.tx if host_rx is None else host_rx
        self.patterns = {"rx": rx, "tx": tx, "pipe": pipe}
        self.seed = seed
        self.latency = latency
        self.drop_results = drop_results
        self.parser = ReplyParser()
        self.items = []
        self.tx_bytes = bytearray()
        self.pixels = []            # (data, first, last) taken by the model
        self.log = {"clear_pulses": 0}
        # results per pixel byte, and their mask (the model gives 3·b + 1 + r for result r)
        self.fanout = self.link.results_per_pixel // self.link.channels
        self.result_mask = (1 << 8 * self.link.result_bytes) - 1

    # ---- host-side steps, used inside a testbench ----
    async def send(self, ctx, data, *, command=None):
        if command is not None:
            self.parser.expect(command)
        allow = stall_pattern(self.patterns["rx"], seed=self.seed + len(self.tx_bytes))
        for value in data:
            while not next(allow):
                ctx.set(self.host_tx.valid, 0)
                await ctx.tick()
            ctx.set(self.host_tx.valid, 1)
            ctx.set(self.host_tx.payload, value)
            await ctx.tick().until(self.host_tx.ready)
        ctx.set(self.host_tx.valid, 0)

    async def command(self, ctx, packet):
        """Send a packet, wait for its reply and return it."""
        count = len(self.items)
        await self.send(ctx, packet, command=packet[1])
        await self.wait_items(ctx, count + 1)
        return self.items[count]

    async def wait_items(self, ctx, count):
        while len(self.items) < count:
            await ctx.tick()

    async def read(self, ctx, register):
        reply = await self.command(ctx, encode_read_register(register))
        assert reply.status == Status.OK and reply.crc_ok, reply
        return struct.unpack("<I", reply.payload)[0]

    async def write(self, ctx, register, value, status=Status.OK):
        reply = await self.command(ctx, encode_write_register(register, value))
        assert reply == Reply(status, b"", True)

    async def run_frame(self, ctx, frame, *, stop_after=None):
        """RUN_FRAME with ``frame`` [H, W, C]; ``stop_after`` pixel bytes, the host falls silent."""
        height, width, _ = frame.shape
        await self.write(ctx, Register.WIDTH, width)
        await self.write(ctx, Register.HEIGHT, height)
        count = len(self.items)
        pixels = frame.tobytes()[:stop_after]
        await self.send(ctx, encode_run_frame() + pixels, command=Command.RUN_FRAME)
        await self.wait_items(ctx, count + 2)
        header, result = self.items[count:count + 2]
        size = frame.size * self.fanout * self.link.result_bytes
        assert header == Reply(Status.OK, struct.pack("<I", size), True)
        assert isinstance(result, FrameResult)
        dtype = "<u2" if self.link.result_bytes == 2 else np.uint8
        return np.frombuffer(result.data, dtype=dtype).reshape(height, width, -1), result

    # ---- simulation processes ----
    async def tx_sink(self, ctx):
        allow = stall_pattern(self.patterns["tx"], seed=self.seed + 1)
        while True:
            ready = next(allow)
            ctx.set(self.host_rx.ready, ready)
            _, _, valid, payload, clear = await ctx.tick().sample(
                self.host_rx.valid, self.host_rx.payload, self.link.clear_errors)
            self.log["clear_pulses"] += clear
            if ready and valid:
                self.tx_bytes.append(payload)
                self.items += self.parser.feed(bytes([payload]))

    async def pipeline(self, ctx):
        ready_pattern = stall_pattern(self.patterns["pipe"], seed=self.seed + 2)
        valid_pattern = stall_pattern(self.patterns["pipe"], seed=self.seed + 3)
        queue = collections.deque()
        cycle = produced = 0
        offering = None
        while True:
            ready = next(ready_pattern)
            ctx.set(self.link.pixel.ready, ready)
            if offering is None and queue and queue[0][0] <= cycle and next(valid_pattern) and \
                    (self.drop_results is None or produced < self.drop_results):
                offering = queue.popleft()
            ctx.set(self.link.result.valid, offering is not None)
            if offering is not None:
                ctx.set(self.link.result.payload, {"data": offering[1], "last": offering[2]})
            _, _, p_valid, p_payload, r_ready = await ctx.tick().sample(
                self.link.pixel.valid, self.link.pixel.payload, self.link.result.ready)
            if ready and p_valid:
                data, first, last = p_payload.data, p_payload.first, p_payload.last
                self.pixels.append((data, first, last))
                if first:
                    self.log["first_pixel"] = cycle
                for r in range(self.fanout):
                    queue.append((cycle + self.latency, (model_result(data) + r) & self.result_mask,
                                  last and r == self.fanout - 1))
            if offering is not None and r_ready:
                if offering[2]:
                    self.log["last_result"] = cycle
                offering = None
                produced += 1
            cycle += 1

    def run(self, script, *, deadline=60_000):
        async def host(ctx):
            await script(ctx, self)
            # Nothing more may come out.
            count = len(self.tx_bytes)
            await ctx.tick().repeat(5 * TIMEOUT)
            assert len(self.tx_bytes) == count, f"unexpected bytes {self.tx_bytes[count:].hex()}"

        run_simulation(self.dut, [host], processes=self.processes(), deadline_cycles=deadline)

    def processes(self):
        """The background processes around the DUT."""
        return [self.tx_sink, self.pipeline]


PATTERNS = [("none", "none", "none"), ("fixed", "fixed", "fixed"),
            ("random", "random", "random"), ("none", "random", "fixed")]


def test_defaults():
    # Defaults fit a 640×480 frame, its FIFO a block RAM.
    dut = HostLink()
    assert (dut.pixel_buffer, dut.min_width, dut.max_width) == (1024, 1, 640)


@pytest.mark.parametrize("rx,tx,pipe", PATTERNS)
def test_ping(rx, tx, pipe):
    bench = Bench(make_dut(), rx=rx, tx=tx, pipe=pipe, seed=11)

    async def script(ctx, bench):
        reply = await bench.command(ctx, encode_ping())
        assert reply == Reply(Status.OK, b"DSPS\x03" + bytes(BUILD_INFO), True)

    bench.run(script)


def test_registers():
    dut = make_dut()
    bench = Bench(dut, rx="random", tx="random", seed=5)

    async def script(ctx, bench):
        assert await bench.read(ctx, Register.ID) == DEVICE_ID
        assert await bench.read(ctx, Register.WIDTH) == 0
        assert await bench.read(ctx, Register.PIXEL_CREDIT) == 16
        await bench.write(ctx, Register.WIDTH, 7)
        await bench.write(ctx, Register.HEIGHT, 6)
        await bench.write(ctx, Register.INV_REF_VAR, 0xFFABCDEF)
        await bench.write(ctx, Register.PAD_MODE, 2)
        await bench.write(ctx, Register.PAD_MODE, 3, status=Status.BAD_VALUE)
        assert await bench.read(ctx, Register.WIDTH) == 7
        assert await bench.read(ctx, Register.HEIGHT) == 6
        assert await bench.read(ctx, Register.INV_REF_VAR) == 0xABCDEF
        assert await bench.read(ctx, Register.PAD_MODE) == 2
        assert (ctx.get(dut.width), ctx.get(dut.height)) == (7, 6)
        assert (ctx.get(dut.inv_ref_var), ctx.get(dut.pad_mode)) == (0xABCDEF, 2)
        # Out of range: the register keeps the value, the port shows 0.
        await bench.write(ctx, Register.WIDTH, 9)
        assert await bench.read(ctx, Register.WIDTH) == 9
        assert ctx.get(dut.width) == 0
        # Read-only, write-only and unknown addresses.
        for register in (Register.ID, Register.CYCLES, Register.ERRORS, 0x30):
            await bench.write(ctx, register, 1, status=Status.BAD_REGISTER)
        for register in (Register.CONTROL, 0x05, 0xFF):
            reply = await bench.command(ctx, encode_read_register(register))
            assert reply == Reply(Status.BAD_REGISTER, b"", True)
        assert await bench.read(ctx, Register.BAD_COMMANDS) == 8

    bench.run(script)


def test_bad_packets_counters_and_clear():
    dut = make_dut()
    bench = Bench(dut, rx="fixed", tx="random", seed=9)

    async def script(ctx, bench):
        packet = bytearray(encode_ping())
        packet[-1] ^= 0x40
        assert await bench.command(ctx, bytes(packet)) == Reply(Status.BAD_CRC, b"", True)
        assert await bench.command(ctx, encode_command(0x7F, b"xyz")) == \
            Reply(Status.UNKNOWN_COMMAND, b"", True)
        # A known command with the wrong length: the payload and CRC are consumed first.
        assert await bench.command(ctx, encode_command(Command.PING, b"\xA5\xA5")) == \
            Reply(Status.BAD_LENGTH, b"", True)
        assert await bench.command(ctx, encode_command(Command.READ_REG)) == \
            Reply(Status.BAD_LENGTH, b"", True)
        assert await bench.command(ctx, encode_command(Command.WRITE_REG, bytes(4))) == \
            Reply(Status.BAD_LENGTH, b"", True)
        assert await bench.command(ctx, encode_command(Command.RUN_FRAME, b"\x00")) == \
            Reply(Status.BAD_LENGTH, b"", True)
        # Garbage before the magic is skipped and counted.
        await bench.send(ctx, b"\x00\x5A\xFF\x13")
        reply = await bench.command(ctx, encode_ping())
        assert reply.status == Status.OK
        ctx.set(dut.uart_errors, 0b10)
        ctx.set(dut.pipeline_errors, 0b10101)
        await ctx.tick()
        ctx.set(dut.uart_errors, 0)
        assert await bench.read(ctx, Register.IGNORED_BYTES) == 4
        assert await bench.read(ctx, Register.BAD_COMMANDS) == 6
        assert await bench.read(ctx, Register.ERRORS) == (1 << 11) | (1 << 9) | 0b10101
        assert bench.log["clear_pulses"] == 0
        await bench.write(ctx, Register.CONTROL, 1)
        assert bench.log["clear_pulses"] == 1
        ctx.set(dut.pipeline_errors, 0)
        assert await bench.read(ctx, Register.ERRORS) == 0
        assert await bench.read(ctx, Register.IGNORED_BYTES) == 0
        assert await bench.read(ctx, Register.BAD_COMMANDS) == 0
        await bench.write(ctx, Register.CONTROL, 0)
        assert bench.log["clear_pulses"] == 1

    bench.run(script)


def test_command_timeout():
    bench = Bench(make_dut(), seed=3)

    async def script(ctx, bench):
        count = len(bench.items)
        await bench.send(ctx, encode_write_register(Register.WIDTH, 3)[:5], command=Command.PING)
        await bench.wait_items(ctx, count + 1)
        assert bench.items[count] == Reply(Status.TIMEOUT, b"", True)
        assert await bench.read(ctx, Register.WIDTH) == 0
        assert await bench.read(ctx, Register.ERRORS) == 1 << 10
        assert (await bench.command(ctx, encode_ping())).status == Status.OK

    bench.run(script)


@pytest.mark.parametrize("rx,tx,pipe", PATTERNS)
def test_run_frame(rx, tx, pipe):
    seed = 100 + len(rx) * 3 + len(tx) + len(pipe)
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((5, 7, 2), (1, 2, 2))]
    bench = Bench(make_dut(), rx=rx, tx=tx, pipe=pipe, seed=seed)

    async def script(ctx, bench):
        for number, frame in enumerate(frames, 1):
            start = len(bench.pixels)
            results, trailer = await bench.run_frame(ctx, frame)
            np.testing.assert_equal(results, model_result(frame.astype(np.int64)),
                                    err_msg=f"seed {seed}")
            assert trailer.status == Status.OK and trailer.crc_ok
            assert trailer.data and crc8(trailer.data) == bench.tx_bytes[-1]
            pixels = bench.pixels[start:]
            assert [p[0] for p in pixels] == list(frame.tobytes())
            assert [(p[1], p[2]) for p in pixels] == \
                [(i == 0, i == frame.size - 1) for i in range(frame.size)]
            assert await bench.read(ctx, Register.FRAMES) == number
            assert await bench.read(ctx, Register.CYCLES) == \
                bench.log["last_result"] - bench.log["first_pixel"]
        assert await bench.read(ctx, Register.ERRORS) == 0

    bench.run(script)


@pytest.mark.parametrize("channels", [1, 3])
def test_run_frame_channels(channels):
    frame = np.random.default_rng(channels).integers(0, 256, size=(6, 7, channels), dtype=np.uint8)
    bench = Bench(make_dut(channels=channels), pipe="random", seed=6)

    async def script(ctx, bench):
        results, trailer = await bench.run_frame(ctx, frame)
        assert trailer.status == Status.OK and trailer.crc_ok
        np.testing.assert_equal(results, model_result(frame.astype(np.int64)))

    bench.run(script)


def test_run_frame_bad_size():
    bench = Bench(make_dut(), seed=4)

    async def script(ctx, bench):
        for width, height in ((0, 3), (3, 0), (9, 2), (2, 7), (1 << 16 | 3, 2), (1, 2)):
            await bench.write(ctx, Register.WIDTH, width)
            await bench.write(ctx, Register.HEIGHT, height)
            assert await bench.command(ctx, encode_run_frame()) == \
                Reply(Status.BAD_FRAME_SIZE, b"", True)
        assert bench.pixels == []
        for shape in ((6, 8, 2), (1, 2, 2)):
            results, trailer = await bench.run_frame(ctx, np.full(shape, 7, dtype=np.uint8))
            assert trailer.status == Status.OK and (results == 22).all()

    bench.run(script)


@pytest.mark.parametrize("tx,pipe", [("none", "none"), ("random", "random")])
def test_interrupted_frame(tx, pipe):
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, size=(4, 6, 2), dtype=np.uint8)
    sent = 19
    bench = Bench(make_dut(), tx=tx, pipe=pipe, seed=21)

    async def script(ctx, bench):
        results, trailer = await bench.run_frame(ctx, frame, stop_after=sent)
        expected = model_result(np.frombuffer(frame.tobytes()[:sent] + bytes(frame.size - sent),
                                              dtype=np.uint8).astype(np.int64))
        np.testing.assert_equal(results.ravel(), expected)
        assert trailer.status == Status.TIMEOUT and trailer.crc_ok
        assert [p[0] for p in bench.pixels] == list(expected // 3)
        assert bench.pixels[-1][2] == 1
        assert await bench.read(ctx, Register.ERRORS) == 1 << 12
        assert await bench.read(ctx, Register.FRAMES) == 1
        assert (await bench.command(ctx, encode_ping())).status == Status.OK
        results, trailer = await bench.run_frame(ctx, frame)
        assert trailer.status == Status.OK
        np.testing.assert_equal(results, model_result(frame.astype(np.int64)))

    bench.run(script)


def test_results_stop():
    frame = np.arange(24, dtype=np.uint8).reshape(3, 4, 2)
    bench = Bench(make_dut(), seed=2, drop_results=10)

    async def script(ctx, bench):
        results, trailer = await bench.run_frame(ctx, frame)
        expected = np.where(np.arange(24) < 10, model_result(np.arange(24)), 0)
        np.testing.assert_equal(results.ravel(), expected)
        assert trailer.status == Status.TIMEOUT and trailer.crc_ok
        assert await bench.read(ctx, Register.ERRORS) == 1 << 12
        assert (await bench.command(ctx, encode_ping())).status == Status.OK

    bench.run(script)


def test_run_frame_results_per_pixel():
    """Three one-byte results per pixel (as the conv design's int8 results), one channel."""
    frame = np.random.default_rng(12).integers(0, 256, size=(5, 6, 1), dtype=np.uint8)
    dut = make_dut(channels=1, results_per_pixel=3, result_bytes=1, pixel_buffer=4)
    bench = Bench(dut, tx="random", pipe="random", seed=13)

    async def script(ctx, bench):
        assert (await bench.command(ctx, encode_ping())).payload == b"DSPS\x03" + bytes([0, 3, 1, 3, 1])
        for _ in range(2):
            results, trailer = await bench.run_frame(ctx, frame)
            assert trailer.status == Status.OK and trailer.crc_ok
            expected = (model_result(frame.astype(np.int64)) + np.arange(3)) & 0xFF
            np.testing.assert_equal(results, expected)

    bench.run(script)


class WithRegisters(Elaboratable):
    """HostLink and a model of a design's registers: 0x20 rw (values < 100), 0x21 ro (0xC0FFEE)."""

    def __init__(self):
        self.link = make_dut()
        self.reg20 = Signal(32)
        self.writes = Signal(8)
        self.frames = Signal(8)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        with m.Switch(link.reg_addr):
            with m.Case(0x20):
                m.d.comb += [link.reg_readable.eq(1), link.reg_writable.eq(1),
                             link.reg_value_ok.eq(link.reg_value < 100), link.reg_rdata.eq(self.reg20)]
            with m.Case(0x21):
                m.d.comb += [link.reg_readable.eq(1), link.reg_rdata.eq(0xC0FFEE)]
        with m.If(link.reg_write):
            m.d.sync += [self.reg20.eq(link.reg_value), self.writes.eq(self.writes + 1)]
        with m.If(link.frame_start):
            m.d.sync += self.frames.eq(self.frames + 1)
        return m


def test_design_registers():
    dut = WithRegisters()
    bench = Bench(dut, link=dut.link, host_tx=dut.link.rx, host_rx=dut.link.tx, rx="random", tx="fixed", seed=14)

    async def script(ctx, bench):
        await bench.write(ctx, 0x20, 42)
        assert await bench.read(ctx, 0x20) == 42
        assert await bench.read(ctx, 0x21) == 0xC0FFEE
        await bench.write(ctx, 0x20, 100, status=Status.BAD_VALUE)
        await bench.write(ctx, 0x21, 1, status=Status.BAD_REGISTER)
        await bench.write(ctx, 0x22, 1, status=Status.BAD_REGISTER)
        reply = await bench.command(ctx, encode_read_register(0x22))
        assert reply == Reply(Status.BAD_REGISTER, b"", True)
        assert await bench.read(ctx, 0x20) == 42
        # the link's own registers are not the design's
        await bench.write(ctx, Register.WIDTH, 3)
        assert await bench.read(ctx, Register.WIDTH) == 3
        assert ctx.get(dut.writes) == 1
        assert await bench.read(ctx, Register.BAD_COMMANDS) == 4
        frame = np.full((2, 3, 2), 5, np.uint8)
        for number in (1, 2):
            await bench.run_frame(ctx, frame)
            assert ctx.get(dut.frames) == number

    bench.run(script)


class OverUART(Elaboratable):
    """HostLink behind its UARTs, and the host's UARTs on the other end of the two lines."""

    def __init__(self, divisor):
        self.link = make_dut()
        self.device_rx = UARTReceiver(divisor=divisor)
        self.device_tx = UARTTransmitter(divisor=divisor)
        self.host_tx = UARTTransmitter(divisor=divisor)
        self.host_rx = UARTReceiver(divisor=divisor)

    def elaborate(self, platform):
        m = Module()
        for name in ("link", "device_rx", "device_tx", "host_tx", "host_rx"):
            m.submodules[name] = getattr(self, name)
        connect(m, self.device_rx.o_stream, self.link.rx)
        connect(m, self.link.tx, self.device_tx.i_stream)
        m.d.comb += [
            self.device_rx.rx.eq(self.host_tx.tx),
            self.host_rx.rx.eq(self.device_tx.tx),
            self.link.uart_errors.eq(Cat(self.device_rx.error, self.device_rx.overrun)),
        ]
        return m


def test_over_uart():
    dut = OverUART(divisor=4)
    frame = np.arange(16, dtype=np.uint8).reshape(2, 4, 2) * 13     # fits the 16-byte credit
    bench = Bench(dut, link=dut.link, host_tx=dut.host_tx.i_stream,
                  host_rx=dut.host_rx.o_stream, pipe="random", seed=8)

    async def script(ctx, bench):
        reply = await bench.command(ctx, encode_ping())
        assert reply == Reply(Status.OK, b"DSPS\x03" + bytes(BUILD_INFO), True)
        results, trailer = await bench.run_frame(ctx, frame)
        assert trailer.status == Status.OK and trailer.crc_ok
        np.testing.assert_equal(results, model_result(frame.astype(np.int64)))
        assert await bench.read(ctx, Register.ERRORS) == 0

    bench.run(script, deadline=40_000)


def test_crc8_logic_matches_host():
    crc, byte = Signal(8), Signal(8)
    out = Signal(8)
    m = Module()
    m.d.comb += out.eq(crc8_next(crc, byte))
    rng = random.Random(0)
    cases = [(c, b) for c in (0, 0x80, 0xFF) for b in range(256)] + \
        [(rng.randrange(256), rng.randrange(256)) for _ in range(200)]

    async def bench(ctx):
        for c, b in cases:
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(out) == crc8(bytes([b]), c), (c, b)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_parameter_errors():
    with pytest.raises(ValueError, match=r"^channel count must be an integer in \[1, 255\], not 0$"):
        make_dut(channels=0)
    with pytest.raises(ValueError, match=r"^maximum width must be an integer >= 1, not 0$"):
        make_dut(max_width=0)
    with pytest.raises(TypeError, match=r"^maximum height must be an integer >= 1, not 2\.5$"):
        make_dut(max_height=2.5)
    with pytest.raises(ValueError, match=r"^minimum width must be an integer in \[1, 8\], not 9$"):
        make_dut(min_width=9)
    with pytest.raises(ValueError, match=r"^minimum height must be an integer in \[1, 6\], not 0$"):
        make_dut(min_height=0)
    with pytest.raises(ValueError, match=r"^timeout must be an integer >= 16, not 15$"):
        make_dut(timeout_cycles=15)
    with pytest.raises(ValueError, match=r"^pixel buffer depth must be an integer >= 2, not 1$"):
        make_dut(pixel_buffer=1)
    for value in (0, 3, True):
        with pytest.raises(ValueError, match=rf"^result bytes must be 1 or 2, not {value!r}$"):
            make_dut(result_bytes=value)
    with pytest.raises(ValueError, match=r"^results per pixel must be an integer in \[1, 255\], not 256$"):
        make_dut(results_per_pixel=256)
    with pytest.raises(ValueError, match=r"^design code must be an integer in \[0, 255\], not -1$"):
        make_dut(design=-1)
    with pytest.raises(TypeError, match=r"^kernel size must be an integer in \[1, 255\], not '3'$"):
        make_dut(kernel_size="3")
    with pytest.raises(TypeError, match=r"^weight_stream must be a bool, not 1$"):
        make_dut(weight_stream=1)
    with pytest.raises(ValueError, match=r"^frame of 65536×65536 pixels, 1 bytes and 1×2 result bytes each, "
                                         r"must have fewer than 2\*\*32 bytes$"):
        make_dut(max_width=65536, max_height=65536, channels=1)


def test_verilog():
    text = verilog.convert(HostLink(channels=3, max_width=640, max_height=480,
                                    timeout_cycles=600_000, results_per_pixel=8, result_bytes=1),
                           name="hostlink")
    assert "module hostlink" in text


class StreamBench(Bench):
    """:class:`Bench` with a sink on ``stream`` that takes bytes by ``pattern`` (``"never"``: none)."""

    def __init__(self, dut, *, pattern="none", **kwargs):
        super().__init__(dut, **kwargs)
        self.stream_pattern = pattern
        self.received = []          # (byte, last) taken from `stream`

    async def stream_sink(self, ctx):
        allow = (itertools.repeat(False) if self.stream_pattern == "never"
                 else stall_pattern(self.stream_pattern, seed=self.seed + 5))
        while True:
            ready = next(allow)
            ctx.set(self.link.stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(self.link.stream.valid, self.link.stream.payload)
            if ready and valid:
                self.received.append((payload.data, payload.last))

    def processes(self):
        return super().processes() + [self.stream_sink]


@pytest.mark.parametrize("rx,sink", [("none", "none"), ("fixed", "random"), ("random", "fixed")])
def test_weight_stream_packets(rx, sink):
    """WEIGHT_STREAM: a packet's bytes leave on `stream` only once its CRC is checked, all of them
    before the reply; `last` on the final byte of a packet with flags bit 0; bad packets forward nothing."""
    rng = random.Random(len(rx) + 7 * len(sink))
    bench = StreamBench(make_dut(weight_stream=True), rx=rx, tx="random", pattern=sink, seed=len(rx + sink))
    chunks = [bytes(rng.randrange(256) for _ in range(size)) for size in (200, 3, 254, 1)]

    async def script(ctx, bench):
        expected = []
        for index, chunk in enumerate(chunks):
            last = index in (1, 3)
            assert await bench.command(ctx, encode_weight_stream(chunk, last=last)) == Reply(Status.OK, b"", True)
            expected += [(byte, int(last and i == len(chunk) - 1)) for i, byte in enumerate(chunk)]
            assert bench.received == expected            # every byte taken before the reply
        bad = bytearray(encode_weight_stream(b"\x11\x22\x33", last=True))
        bad[-1] ^= 1
        assert await bench.command(ctx, bytes(bad)) == Reply(Status.BAD_CRC, b"", True)
        assert await bench.command(ctx, encode_command(Command.WEIGHT_STREAM, b"\x01")) == \
            Reply(Status.BAD_LENGTH, b"", True)
        assert await bench.command(ctx, encode_command(Command.WEIGHT_STREAM, b"\x80\x01")) == \
            Reply(Status.BAD_VALUE, b"", True)
        assert bench.received == expected
        assert await bench.read(ctx, Register.BAD_COMMANDS) == 3

    bench.run(script, deadline=200_000)


def test_weight_stream_disabled_and_stuck():
    """Without `weight_stream` the command is unknown; a design that takes no byte gets TIMEOUT."""
    async def unknown(ctx, bench):
        assert await bench.command(ctx, encode_weight_stream(b"\x01\x02", last=True)) == \
            Reply(Status.UNKNOWN_COMMAND, b"", True)
        assert bench.received == []
    StreamBench(make_dut(), seed=1).run(unknown)

    async def stuck(ctx, bench):
        assert await bench.command(ctx, encode_weight_stream(b"\x01\x02", last=True)) == \
            Reply(Status.TIMEOUT, b"", True)
        assert await bench.read(ctx, Register.ERRORS) == 1 << 10
        assert (await bench.command(ctx, encode_ping())).status == Status.OK
    StreamBench(make_dut(weight_stream=True), pattern="never", seed=2).run(stuck)

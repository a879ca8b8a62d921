"""cocotb testbench: MaskDecoder against the golden weight-stream parser.

``streams_under_stalls`` sends good streams of every encoding and interpolation, some bad
ones and a stream the watchdog must abandon, under each input stall pattern, and reads the
good bank back after every stream. ``fuzz`` sends ``params["fuzz"]`` corrupted streams
(or ``DYNSPARSE_FUZZ`` from the environment), each followed by a good stream: every
corrupted one must get the golden parser's code, none may hang, every good one must come
back exact. It logs the count and the per-code tally.
"""

import os
import time
from collections import Counter

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from dynsparse.golden.weightstream import StreamError
from dynsparse.sim.maskdecoder_io import corrupt, decoder_result, expected_entries, random_tensor_stream
from dynsparse.sim.stalls import STALL_PATTERNS, stall_pattern
from dynsparse.sim.tb.streams import TB, params


PARAMS = params()
MAX_ENTRIES = PARAMS["block"]["max_entries"]
TIMEOUT = PARAMS["block"]["timeout_cycles"]


class Driver:
    """Feeds byte strings to ``i_stream`` and reads the good bank back, cycle by cycle."""

    def __init__(self, dut, clock):
        self.dut, self.clock = dut, clock
        dut.i_stream__valid.value = 0
        dut.i_stream__payload.value = 0
        dut.rd_addr.value = 0
        dut.hold.value = 0
        self.cycles = 0

    async def cycle(self):
        await RisingEdge(self.clock)
        self.cycles += 1

    async def send(self, data, *, pattern="none", seed=0, gap=0):
        """Send one stream; returns the decoder's code. ``gap`` idle cycles after the first byte."""
        dut = self.dut
        allow = stall_pattern(pattern, seed=seed)
        decided = False
        deadline = self.cycles + 4 * len(data) + gap + 8 * MAX_ENTRIES + 200
        for position, byte in enumerate(data):
            if position == 1 and gap:
                dut.i_stream__valid.value = 0
                for _ in range(gap):
                    await ReadOnly()
                    decided |= bool(dut.done.value)
                    await self.cycle()
                if decided:
                    break
            while not next(allow):
                dut.i_stream__valid.value = 0
                await self.cycle()
            dut.i_stream__valid.value = 1
            dut.i_stream__payload.value = byte | (position == len(data) - 1) << 8
            while True:
                await ReadOnly()
                taken = bool(dut.i_stream__ready.value)
                await self.cycle()
                if taken:
                    break
                assert self.cycles < deadline, f"byte {position} not taken by cycle {self.cycles}"
        dut.i_stream__valid.value = 0
        while not decided:
            await ReadOnly()
            decided = bool(dut.done.value)
            await self.cycle()
            assert self.cycles < deadline, "no decision: the decoder hangs"
        while True:
            await ReadOnly()
            busy = bool(dut.busy.value)
            code = int(dut.error.value)
            if not busy:
                break
            await self.cycle()
            assert self.cycles < deadline, "still busy: the decoder hangs"
        await self.cycle()
        return StreamError(code)

    async def read_back(self, entries):
        """``(values, sent)`` of entries 0 … entries-1 of the good bank (one read per cycle, pipelined)."""
        dut = self.dut
        values, sent = np.zeros(entries, np.int64), np.zeros(entries, np.int64)
        dut.rd_addr.value = 0
        for entry in range(entries):
            await self.cycle()                      # the read port takes rd_addr = entry
            dut.rd_addr.value = min(entry + 1, MAX_ENTRIES - 1)
            await ReadOnly()
            values[entry] = dut.rd_data.value.to_signed()
            sent[entry] = int(dut.rd_sent.value)
        await self.cycle()
        return values, sent

    async def check(self, data, **kwargs):
        """Send ``data`` and check the code and, if good, the buffer; returns the code."""
        expected, parsed = decoder_result(data, MAX_ENTRIES)
        code = await self.send(data, **kwargs)
        assert code == expected, f"{code.name}, expected {expected.name}: {data.hex()}"
        if code == StreamError.OK:
            want_values, want_sent = expected_entries(parsed)
            values, sent = await self.read_back(len(want_values))
            np.testing.assert_equal(sent, want_sent, err_msg=f"mask of {data.hex()}")
            np.testing.assert_equal(values, want_values, err_msg=f"values of {data.hex()}")
        return code


async def start(dut):
    tb = TB(dut)
    driver = Driver(dut, tb.clock)
    await tb.reset()
    return driver


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS)
async def streams_under_stalls(dut, src):
    """Every encoding × interpolation, bad streams between them, a watchdog abort, under stalls."""
    seed = 700 + STALL_PATTERNS.index(src)
    dut._log.info("seed %d", seed)
    rng = np.random.default_rng(seed)
    driver = await start(dut)
    for encoding in ("bitmask", "rle", "csr", "csc"):
        for interpolation in ("zero", "linear", "learned"):
            good = random_tensor_stream(rng, MAX_ENTRIES, encoding=encoding, interpolation=interpolation, small=64)
            await driver.check(good, pattern=src, seed=seed)
            _, bad = corrupt(rng, good)
            await driver.check(bad, pattern=src, seed=seed + 1)
    good = random_tensor_stream(rng, MAX_ENTRIES, encoding="rle", small=64)
    code = await driver.send(good, gap=TIMEOUT + 5)
    assert code == StreamError.TRUNCATED, code.name
    await driver.check(good, pattern=src, seed=seed)
    ok, bad = int(dut.streams_ok.value), int(dut.streams_bad.value)
    dut._log.info("streams ok %d, bad %d", ok, bad)
    assert ok + bad == 26


@cocotb.test()
async def fuzz(dut):
    """Corrupted streams, each followed by a good one."""
    count = int(os.environ.get("DYNSPARSE_FUZZ", PARAMS.get("fuzz", 100)))
    seed = int(os.environ.get("DYNSPARSE_FUZZ_SEED", 1))
    dut._log.info("fuzz: %d corrupted streams, seed %d", count, seed)
    rng = np.random.default_rng(seed)
    driver = await start(dut)
    tally, kinds = Counter(), Counter()
    began = time.monotonic()
    for number in range(count):
        good = random_tensor_stream(rng, MAX_ENTRIES, small=64)
        kind, bad = corrupt(rng, good)
        kinds[kind] += 1
        code = await driver.check(bad)
        tally[code.name] += 1
        assert await driver.check(good) == StreamError.OK
    seconds = time.monotonic() - began
    flagged = count - tally["OK"]
    dut._log.info("fuzz: %d corrupted streams through the RTL, %d flagged with the golden parser's code, "
                  "%d still valid (decoded exactly), %d good streams after them exact; no hang; "
                  "%d cycles, %.1f s", count, flagged, tally["OK"], count, driver.cycles, seconds)
    dut._log.info("fuzz tally by code: %s", dict(sorted(tally.items())))
    dut._log.info("fuzz tally by corruption: %s", dict(sorted(kinds.items())))
    print(f"FUZZ RESULT count={count} flagged={flagged} still_valid={tally['OK']} tally={dict(sorted(tally.items()))}")

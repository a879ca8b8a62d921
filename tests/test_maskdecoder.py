"""MaskDecoder (amaranth.sim): every encoding and interpolation against the golden parser,
real trained weights, stalls, every error code, the watchdog, recovery, parameters."""

import struct
from collections import Counter

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from dynsparse.golden.sparsify import sparsify
from dynsparse.golden.weightstream import Interpolation, StreamError, encode_stream
from dynsparse.golden.weighttrain import quantise, train_dense
from dynsparse.hdl.maskdecoder import MaskDecoder
from dynsparse.sim.maskdecoder_io import corrupt, decoder_result, expected_entries, random_tensor_stream
from dynsparse.sim.stalls import stall_pattern


MAX_ENTRIES = 256


def decode_streams(dut, streams, *, pattern="none", seed=0, read_back=True, gaps=None, deadline=None):
    """Send every byte string of ``streams`` (``last`` on its final byte) and return, per stream,
    ``(code, values, sent, cycles)``: the decoder's error code, the good bank read back after
    the stream (flat matrix view, ``N`` entries, or None for a bad stream) and the cycles from
    its first byte's transfer to ``done`` (both included). ``gaps[i]`` idle cycles inside stream ``i`` after its
    first byte (to fire the watchdog)."""
    results = []

    async def bench(ctx):
        for number, data in enumerate(streams):
            allow = stall_pattern(pattern, seed=seed + number)
            start, decided = None, False
            for position, byte in enumerate(data):
                while not next(allow):
                    ctx.set(dut.i_stream.valid, 0)
                    await ctx.tick()
                if gaps and gaps[number] and position == 1:
                    ctx.set(dut.i_stream.valid, 0)
                    for _ in range(gaps[number]):
                        await ctx.tick()
                        decided |= bool(ctx.get(dut.done))
                    if decided:
                        break                 # the watchdog abandoned the stream: send no more of it
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, {"data": byte, "last": position == len(data) - 1})
                await ctx.tick().until(dut.i_stream.ready)
                if start is None:
                    start = cycle[0]          # the cycle after the first byte's transfer
            ctx.set(dut.i_stream.valid, 0)
            while not decided and not ctx.get(dut.done):
                await ctx.tick()
            done_cycle = cycle[0]
            code = ctx.get(dut.error)
            cycles = done_cycle - start + 1     # first byte's cycle … the cycle `done` is high
            values = sent = None
            while ctx.get(dut.busy):
                await ctx.tick()
            if (read_back == "always" and ctx.get(dut.tensor.valid)) or (read_back is True and code == 0):
                entries = ctx.get(dut.tensor.entries)
                values, sent = np.zeros(entries, np.int64), np.zeros(entries, np.int64)
                for entry in range(entries):
                    ctx.set(dut.rd_addr, entry)
                    await ctx.tick()
                    values[entry], sent[entry] = ctx.get(dut.rd_data), ctx.get(dut.rd_sent)
            results.append((code, values, sent, cycles))

    cycle = [0]

    async def counter(ctx):
        async for _ in ctx.tick():
            cycle[0] += 1

    total = sum(len(s) for s in streams)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_testbench(counter, background=True)
    limit = deadline or 8 * total + 4 * MAX_ENTRIES * len(streams) + 2000 * len(streams) + sum(gaps or [0])
    while sim.advance():
        if cycle[0] > limit:
            raise AssertionError(f"simulation did not finish within {limit} cycles")
    return results


def check(dut, streams, results, message=""):
    for number, (data, (code, values, sent, _)) in enumerate(zip(streams, results)):
        expected, parsed = decoder_result(data, dut.max_entries)
        assert code == expected, f"stream {number}: {StreamError(code).name}, expected {expected.name} {message}"
        if code == StreamError.OK and values is not None:
            want_values, want_sent = expected_entries(parsed)
            np.testing.assert_equal(sent, want_sent, err_msg=f"stream {number} mask {message}")
            np.testing.assert_equal(values, want_values, err_msg=f"stream {number} values {message}")


@pytest.fixture(scope="module")
def trained():
    """Real int8 weights of the digits CNN (2 epochs: fast, still trained)."""
    q, _ = quantise(train_dense(seed=0, epochs=2))
    return q


@pytest.mark.parametrize("encoding", ["bitmask", "rle", "csr", "csc"])
def test_random_tensors(encoding):
    rng = np.random.default_rng(["bitmask", "rle", "csr", "csc"].index(encoding))
    dut = MaskDecoder(max_entries=MAX_ENTRIES, timeout_cycles=64)
    streams = [random_tensor_stream(rng, MAX_ENTRIES, encoding=encoding, interpolation=interpolation,
                                    density=density)
               for interpolation in ("zero", "linear", "learned")
               for density in (0.0, 0.1, 0.6, 1.0)]
    check(dut, streams, decode_streams(dut, streams), f"({encoding})")


@pytest.mark.parametrize("pattern", ["fixed", "random"])
def test_stalls(pattern):
    rng = np.random.default_rng(7)
    dut = MaskDecoder(max_entries=MAX_ENTRIES, timeout_cycles=64)
    streams = [random_tensor_stream(rng, MAX_ENTRIES, encoding=encoding) for encoding in ("bitmask", "rle", "csr", "csc")]
    check(dut, streams, decode_streams(dut, streams, pattern=pattern, seed=11), f"(stalls {pattern}, seed 11)")


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_trained_weights(trained, layer):
    """The digits CNN's int8 layers, magnitude masks, every encoding and interpolation."""
    weights = trained[layer].astype(np.int64)
    dut = MaskDecoder(max_entries=2048 if layer == "conv2" else 128, timeout_cycles=64)
    rng = np.random.default_rng(3)
    streams = []
    for encoding, interpolation, sparsity in (("bitmask", "zero", 0.5), ("rle", "linear", 0.9),
                                              ("csr", "learned", 0.75), ("csc", "zero", 0.9)):
        mask = sparsify(weights, criterion="magnitude", sparsity=sparsity)
        extra = {}
        if interpolation == "learned":
            extra = {"coefficients": rng.integers(-127, 128, 8), "shift": 7}
        streams.append(encode_stream(weights, mask, encoding=encoding, interpolation=interpolation, **extra))
    results = decode_streams(dut, streams)
    check(dut, streams, results, f"({layer})")


def test_long_rle_runs_and_escapes():
    """Gaps of 255 and more (escape codes), a run ending exactly at N, the widest fields."""
    dut = MaskDecoder(max_entries=1024, timeout_cycles=64)
    mask = np.zeros((1, 1000), bool)
    mask[0, [0, 254, 255, 511, 766, 767, 999]] = True
    weights = np.arange(1000).reshape(1, 1000) % 255 - 127
    streams = [encode_stream(weights, mask, encoding=e) for e in ("rle", "bitmask", "csr", "csc")]
    check(dut, streams, decode_streams(dut, streams))


def one_of_each_error():
    """A hand-made stream for every error code (and a good one between them)."""
    rng = np.random.default_rng(5)
    weights = rng.integers(-127, 128, (5, 5))
    mask = np.zeros((5, 5), bool)
    mask[[0, 0, 2, 3], [1, 4, 0, 4]] = True      # 25 entries: the last mask byte has 7 padding bits
    good = encode_stream(weights, mask, encoding="csr")

    def with_crc(body):
        import zlib
        return body + struct.pack("<I", zlib.crc32(body))

    def patched(data, at, value, crc=True):
        body = bytearray(data[:-4])
        body[at:at + len(value)] = value
        return with_crc(bytes(body)) if crc else bytes(body) + data[-4:]

    bitmask = encode_stream(weights, mask, encoding="bitmask")
    rle = encode_stream(weights, mask, encoding="rle")
    learned = encode_stream(weights, mask, encoding="bitmask", interpolation="learned",
                            coefficients=np.arange(8) - 4, shift=3)
    long_row = np.zeros((1, 600), bool)
    long_row[0, 10] = True
    single = encode_stream(np.full((1, 600), 5), long_row, encoding="rle")
    # codes 10, 255: a value, then an escape that stays inside N (L = 4 + 2 + 1, in range)
    dangling = with_crc(single[:28] + struct.pack("<II", 7, 2) + bytes([10, 255, 5]))
    cases = {
        StreamError.BAD_MAGIC: b"DSWX" + good[4:],
        StreamError.BAD_VERSION: patched(good, 4, b"\x02"),
        StreamError.BAD_HEADER: patched(good, 6, b"\x10"),
        StreamError.BAD_LENGTH: patched(good, 28, struct.pack("<I", 99)),
        StreamError.TRUNCATED: good[:-1],
        StreamError.OVERLONG: good + b"\x00",
        StreamError.BAD_CRC: good[:-1] + bytes([good[-1] ^ 1]),
        StreamError.BAD_PREDICTOR: patched(learned, 32 + 8, b"\x10"),
        StreamError.BAD_PADDING: patched(bitmask, 32 + 3, bytes([bitmask[35] | 0x80])),
        StreamError.COUNT_MISMATCH: patched(good, 32, b"\x01"),
        StreamError.RUN_PAST_END: patched(rle, 36 + 3, b"\xf0"),
        StreamError.DANGLING_ESCAPE: dangling,
        StreamError.INDEX_OUT_OF_RANGE: patched(good, 32 + 6, b"\x05"),
        StreamError.NON_MONOTONIC: patched(good, 32 + 6 + 1, b"\x00"),
        StreamError.BAD_VALUE: patched(good, len(good) - 5, b"\x80"),
    }
    return good, cases


def test_every_error_code_then_good_stream():
    good, cases = one_of_each_error()
    dut = MaskDecoder(max_entries=1024, timeout_cycles=64)
    streams = [good]
    for code, data in cases.items():
        assert decoder_result(data, 1024)[0] == code, code.name
        streams += [data, good]
    results = decode_streams(dut, streams)
    check(dut, streams, results)
    assert {StreamError(r[0]) for r in results} == set(StreamError)


def test_capacity_is_bad_header():
    rng = np.random.default_rng(2)
    data = encode_stream(rng.integers(-127, 128, (3, 100)), np.ones((3, 100), bool), encoding="bitmask")
    dut = MaskDecoder(max_entries=256, timeout_cycles=64)
    results = decode_streams(dut, [data])
    assert results[0][0] == StreamError.BAD_HEADER


def test_watchdog_and_recovery():
    """A stream that stops is abandoned after timeout_cycles (TRUNCATED); the next decodes."""
    rng = np.random.default_rng(4)
    good = random_tensor_stream(rng, MAX_ENTRIES, encoding="rle")
    dut = MaskDecoder(max_entries=MAX_ENTRIES, timeout_cycles=40)
    results = decode_streams(dut, [good, good, good], gaps=[0, 45, 0])
    assert [r[0] for r in results] == [0, StreamError.TRUNCATED, 0]
    check(dut, [good], results[:1])
    check(dut, [good], results[2:])


def test_bad_stream_keeps_last_good_tensor():
    """A stream found bad (here only by its CRC, after every value was written) is never committed."""
    rng = np.random.default_rng(8)
    first = random_tensor_stream(rng, MAX_ENTRIES, encoding="csr", density=0.5)
    second = random_tensor_stream(rng, MAX_ENTRIES, encoding="bitmask", density=0.5)
    bad_crc = second[:-1] + bytes([second[-1] ^ 0x40])
    dut = MaskDecoder(max_entries=MAX_ENTRIES, timeout_cycles=64)
    results = decode_streams(dut, [first, bad_crc, second[:-3], second + b"\x00", second], read_back="always")
    assert [r[0] for r in results] == [0, StreamError.BAD_CRC, StreamError.TRUNCATED, StreamError.OVERLONG, 0]
    want_first = expected_entries(decoder_result(first, MAX_ENTRIES)[1])
    for code, values, sent, _ in results[:4]:
        np.testing.assert_equal(values, want_first[0])
        np.testing.assert_equal(sent, want_first[1])
    check(dut, [second], results[4:])


def test_throughput_one_byte_per_clock():
    """Without stalls a stream of B bytes takes B + 2 cycles plus the prefill cycles before its
    values (bitmask 2, RLE 1, CSR/CSC 7; none when kept = 0): one byte, so one value, per clock
    at any density. The clear that follows is not in the count (docs/maskdecoder.md)."""
    rng = np.random.default_rng(9)
    dut = MaskDecoder(max_entries=MAX_ENTRIES, timeout_cycles=64)
    for encoding, prefill in (("bitmask", 2), ("rle", 1), ("csr", 7), ("csc", 7)):
        for density in (0.0, 0.05, 0.5, 1.0):
            data = random_tensor_stream(rng, MAX_ENTRIES, encoding=encoding, density=density)
            (code, *_, cycles), = decode_streams(dut, [data], read_back=False)
            kept = struct.unpack_from("<I", data, 20)[0]
            assert code == 0
            assert cycles == len(data) + 2 + (prefill if kept else 0), (encoding, density, cycles, len(data))


def test_fuzz_amaranth_sim():
    """Corrupted streams, each followed by a good one: the right code, exact good tensors."""
    rng = np.random.default_rng(12)
    dut = MaskDecoder(max_entries=128, timeout_cycles=32)
    streams, tally = [], Counter()
    for _ in range(60):
        good = random_tensor_stream(rng, 128)
        kind, data = corrupt(rng, good)
        streams += [data, good]
        tally[decoder_result(data, 128)[0].name] += 1
    check(dut, streams, decode_streams(dut, streams))
    print(f"{len(streams) // 2} corrupted streams through the RTL (amaranth.sim): {dict(tally)}")


def test_properties():
    dut = MaskDecoder(max_entries=100, timeout_cycles=10)
    assert (dut.max_entries, dut.timeout_cycles, dut.words, dut.read_latency) == (100, 10, 13, 1)
    with pytest.raises(AttributeError):
        dut.max_entries = 3


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_entries": 7}, ValueError, r"^maximum entry count must be an integer in \[8, 16777216\], not 7$"),
    ({"max_entries": 2**24 + 1}, ValueError, r"^maximum entry count must be an integer in \[8, 16777216\], not 16777217$"),
    ({"max_entries": 64.0}, TypeError, r"^maximum entry count must be an integer in \[8, 16777216\], not 64\.0$"),
    ({"timeout_cycles": 1}, ValueError, r"^watchdog timeout must be an integer in \[2, 4294967295\], not 1$"),
    ({"timeout_cycles": "9"}, TypeError, r"^watchdog timeout must be an integer in \[2, 4294967295\], not '9'$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        MaskDecoder(**{"max_entries": 64, "timeout_cycles": 100, **kwargs})


def test_verilog():
    assert "module maskdecoder" in verilog.convert(MaskDecoder(max_entries=64), name="maskdecoder")


def test_fuzz_golden_parser_many():
    """The fuzz's generator through the golden parser alone (60,000 corrupted streams): every
    one gets a code and only StreamFormatError is ever raised; all 16 codes occur."""
    rng = np.random.default_rng(2027)
    tally = Counter()
    for _ in range(60_000):
        good = random_tensor_stream(rng, 320, small=64)
        _, data = corrupt(rng, good)
        code, parsed = decoder_result(data, 320)
        assert (parsed is not None) == (code == StreamError.OK)
        tally[code.name] += 1
    print(f"60000 corrupted streams through the golden parser: {dict(sorted(tally.items()))}")
    assert set(tally) == {code.name for code in StreamError}


def test_divide_by_255():
    """The RLE length bound's (N − k) // 255 as a multiply-shift is exact for every N ≤ 2**24."""
    from dynsparse.hdl.maskdecoder import _DIV255
    values = np.concatenate([np.arange(0, 1 << 17), np.random.default_rng(1).integers(0, 1 << 24, 1 << 18),
                             [(1 << 24) - 1, 1 << 24]]).astype(object)
    assert ((values * _DIV255) >> 32 == values // 255).all()


@pytest.mark.cocotb
def test_fuzz_on_verilator():
    """1,000 corrupted streams (each followed by a good one) through the generated Verilog on
    Verilator (sim/tb/tb_maskdecoder.py::fuzz): every one gets the golden parser's code, none
    hangs, every good stream after one is exact. Prints the count and the tally per code.
    DYNSPARSE_FUZZ=<n> runs another count (10,000: a few minutes, docs/maskdecoder.md)."""
    import os
    from pathlib import Path
    from dynsparse.sim.blocks import run_block_testbench
    from dynsparse.sim.runner import simulator_available
    if not simulator_available("verilator"):
        pytest.skip("verilator not installed")
    count = int(os.environ.get("DYNSPARSE_FUZZ", 1_000))
    results = run_block_testbench("maskdecoder", "verilator", testcase="fuzz",
                                  extra_env={"DYNSPARSE_FUZZ": str(count), "DYNSPARSE_FUZZ_SEED": "2026"})
    log = Path(results).with_name("fuzz.log").read_text(errors="replace")
    lines = [line.split("fuzz", 1)[1] for line in log.splitlines() if "fuzz: " in line or "fuzz tally" in line]
    print("\n".join("fuzz" + line for line in lines))
    assert any(f"{count} corrupted streams through the RTL" in line for line in lines)

"""hdl.crc: the one-byte-per-clock CRC-32 XOR network against zlib.crc32."""

import random
import zlib

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dynsparse.hdl.crc import (CRC32_INIT, CRC32_RESIDUE, CRC32_XOR_OUT, crc32_byte_terms, crc32_next,
                               crc32_update_byte)
from dynsparse.sim.pysim import run_simulation


class CRCRegister(wiring.Component):
    """A CRC-32 register that takes one byte per clock while ``en`` is high (test fixture)."""
    byte: In(8)
    en: In(1)
    clear: In(1)
    crc: Out(32)

    def elaborate(self, platform):
        m = Module()
        register = Signal(32, init=CRC32_INIT)
        with m.If(self.clear):
            m.d.sync += register.eq(CRC32_INIT)
        with m.Elif(self.en):
            m.d.sync += register.eq(crc32_next(register, self.byte))
        m.d.comb += self.crc.eq(register ^ CRC32_XOR_OUT)
        return m


def test_reference_matches_zlib():
    rng = random.Random(1)
    for length in (0, 1, 2, 7, 100):
        data = bytes(rng.randrange(256) for _ in range(length))
        register = CRC32_INIT
        for byte in data:
            register = crc32_update_byte(register, byte)
        assert register ^ CRC32_XOR_OUT == zlib.crc32(data)


def test_terms_are_linear():
    """XORing the listed bits reproduces the bitwise update for random registers and bytes."""
    rng = random.Random(2)
    for _ in range(200):
        register, byte = rng.getrandbits(32), rng.getrandbits(8)
        expected = crc32_update_byte(register, byte)
        got = 0
        for bit, (register_bits, data_bits) in enumerate(crc32_byte_terms()):
            value = sum(register >> i & 1 for i in register_bits) + sum(byte >> i & 1 for i in data_bits)
            got |= (value & 1) << bit
        assert got == expected


@pytest.mark.parametrize("lengths", [(0, 1, 5, 36, 300)])
def test_gateware_one_byte_per_clock(lengths):
    dut = CRCRegister()
    rng = random.Random(3)
    messages = [bytes(rng.randrange(256) for _ in range(n)) for n in lengths]

    async def bench(ctx):
        for message in messages:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for byte in message:
                ctx.set(dut.en, 1)
                ctx.set(dut.byte, byte)
                await ctx.tick()
            ctx.set(dut.en, 0)
            assert ctx.get(dut.crc) == zlib.crc32(message), message.hex()

    run_simulation(dut, [bench], deadline_cycles=2000)


def test_residue_after_the_stored_crc():
    """The register run over a message and then its CRC (little-endian) ends at CRC32_RESIDUE,
    whatever the message; any other 4 bytes in the CRC's place end elsewhere."""
    rng = random.Random(3)
    for length in (0, 1, 5, 31, 200):
        data = bytes(rng.randrange(256) for _ in range(length))
        good = data + zlib.crc32(data).to_bytes(4, "little")
        register = CRC32_INIT
        for byte in good:
            register = crc32_update_byte(register, byte)
        assert register == CRC32_RESIDUE
        for flip in range(32):
            bad = bytearray(good)
            bad[length + flip // 8] ^= 1 << (flip % 8)
            register = CRC32_INIT
            for byte in bad:
                register = crc32_update_byte(register, byte)
            assert register != CRC32_RESIDUE

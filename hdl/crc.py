"""CRC-32 (IEEE 802.3, ``zlib.crc32``) one byte per clock, as an XOR network.

The reflected CRC-32 register update for one input byte is linear over
GF(2) in the 32 register bits and the 8 data bits. :func:`crc32_byte_terms`
finds, in Python at elaboration time, which of those 40 bits each new
register bit is the XOR of (by pushing unit vectors through the bitwise
reference :func:`crc32_update_byte`); :func:`crc32_next` builds that XOR
network. No table, no loop in hardware: one level of XOR trees per byte.
"""

from functools import lru_cache, reduce

from amaranth.hdl import Cat, Value


__all__ = ["CRC32_POLY", "CRC32_INIT", "CRC32_XOR_OUT", "CRC32_RESIDUE", "crc32_update_byte",
           "crc32_byte_terms", "crc32_next"]

#: The reflected IEEE 802.3 polynomial (0x04C11DB7 bit-reversed).
CRC32_POLY = 0xEDB88320
#: Register value before the first byte, and the value XORed into the register at the end.
CRC32_INIT = 0xFFFFFFFF
CRC32_XOR_OUT = 0xFFFFFFFF
#: Register value after a message followed by its own CRC (4 bytes, little-endian): the same for
#: every message, and reached only when those 4 bytes are the message's CRC (the register update
#: is a bijection of the last 4 bytes). A receiver can run the register over the stored CRC too
#: and compare with this constant instead of capturing the stored bytes.
CRC32_RESIDUE = 0xDEBB20E3


def crc32_update_byte(register, byte):
    """Bitwise reference: the reflected CRC-32 register after shifting in ``byte`` (LSB first)."""
    register ^= byte
    for _ in range(8):
        register = (register >> 1) ^ (CRC32_POLY if register & 1 else 0)
    return register


@lru_cache(maxsize=None)
def crc32_byte_terms():
    """For each of the 32 new register bits, the register bits and data bits it XORs together.

    Returns a tuple of 32 ``(register_bits, data_bits)`` pairs of index tuples.
    """
    terms = []
    for out_bit in range(32):
        register_bits = tuple(i for i in range(32) if crc32_update_byte(1 << i, 0) >> out_bit & 1)
        data_bits = tuple(i for i in range(8) if crc32_update_byte(0, 1 << i) >> out_bit & 1)
        terms.append((register_bits, data_bits))
    return tuple(terms)


def crc32_next(register, byte):
    """The 32-bit register value after ``byte`` (an Amaranth expression), given ``register``.

    ``register`` holds the running value (start at :data:`CRC32_INIT`); the CRC of the bytes
    so far is ``register ^ CRC32_XOR_OUT``.
    """
    register, byte = Value.cast(register), Value.cast(byte)
    bits = []
    for register_bits, data_bits in crc32_byte_terms():
        inputs = [register[i] for i in register_bits] + [byte[i] for i in data_bits]
        bits.append(reduce(lambda a, b: a ^ b, inputs))
    return Cat(*bits)

"""Streams for the MaskDecoder tests: good ones, corrupted ones, and what the decoder must say.

Shared by the :mod:`amaranth.sim` tests (``tests/test_maskdecoder.py``) and the cocotb
testbench (``sim/tb/tb_maskdecoder.py``). The expected result of a byte string is the golden
parser's (:func:`dynsparse.golden.weightstream.parse_stream`), with the one capacity rule of
the hardware: a stream whose header passes the golden field checks but describes more than
``max_entries`` entries is ``BAD_HEADER`` (docs/maskdecoder.md).
"""

import math
import struct
import zlib

import numpy as np

from ..golden.sparsify import LEARNED_OFFSETS
from ..golden.weightstream import (HEADER_SIZE, PREDICTOR_SIZE, Encoding, Interpolation, StreamError,
                                   StreamFormatError, encode_stream, field_width, parse_stream)


__all__ = ["decoder_result", "expected_entries", "random_tensor_stream", "tensor_stream", "corrupt",
           "CORRUPTIONS"]

#: Codes the golden parser decides from the header alone, before the capacity rule applies.
_HEADER_CODES = (StreamError.BAD_MAGIC, StreamError.BAD_VERSION, StreamError.BAD_HEADER)


def decoder_result(stream_bytes, max_entries):
    """``(code, WeightStream or None)`` the decoder must give for ``stream_bytes``."""
    try:
        parsed, code = parse_stream(stream_bytes), StreamError.OK
    except StreamFormatError as error:
        parsed, code = None, error.code
    if code in _HEADER_CODES or (code == StreamError.TRUNCATED and len(stream_bytes) < HEADER_SIZE):
        return code, parsed
    if math.prod(struct.unpack_from("<4H", stream_bytes, 12)) > max_entries:
        return StreamError.BAD_HEADER, None
    return code, parsed


def expected_entries(parsed):
    """Flat ``(values, sent)`` of the matrix view the decoder's buffer must hold (dropped = 0)."""
    return parsed.values.ravel().astype(np.int64), parsed.mask.ravel().astype(np.int64)


def tensor_stream(weights, mask, encoding, interpolation, rng):
    """The stream of ``weights`` under ``mask``; learned interpolation gets random coefficients."""
    extra = {}
    if Interpolation[interpolation.upper()] == Interpolation.LEARNED:
        extra = {"coefficients": rng.integers(-127, 128, len(LEARNED_OFFSETS)), "shift": int(rng.integers(0, 16))}
    return encode_stream(weights, mask, encoding=encoding, interpolation=interpolation, **extra)


def random_tensor_stream(rng, max_entries, *, encoding=None, interpolation=None, density=None, small=None):
    """A good stream of a random tensor (2-D or 4-D, ``N <= max_entries``) with a random mask.

    When ``max_entries >= 300``, 15 % are a single long row (256 … 700 entries) at low density,
    for RLE escapes; ``small`` caps the other tensors' size (default ``max_entries``)."""
    small = max_entries if small is None else min(small, max_entries)
    encoding = encoding or ("bitmask", "rle", "csr", "csc")[rng.integers(4)]
    interpolation = interpolation or ("zero", "linear", "learned")[rng.integers(3)]
    for _ in range(100):
        if max_entries >= 300 and rng.random() < 0.15:
            # a long row: RLE escapes, and runs that stay inside N after an escape
            shape = (1, int(rng.integers(256, min(max_entries, 700) + 1)))
            density = rng.choice([0.005, 0.01, 0.03]) if density is None else density
        elif rng.random() < 0.5:
            shape = (int(rng.integers(1, 9)), int(rng.integers(1, 4)), *(2 * [int(rng.choice([1, 3, 5]))]))
        else:
            shape = (int(rng.integers(1, 40)), int(rng.integers(1, 70)))
        if math.prod(shape) <= (max_entries if shape[0] == 1 and len(shape) == 2 and shape[1] >= 256 else small):
            break
    weights = rng.integers(-127, 128, shape)
    density = rng.choice([0.0, 0.02, 0.1, 0.5, 0.9, 1.0]) if density is None else density
    mask = rng.random(shape) < density
    return tensor_stream(weights, mask, encoding, interpolation, rng)


def _with_crc(body):
    return body + struct.pack("<I", zlib.crc32(body))


def _payload_fault(rng, data):
    """Change the payload's structure and recompute the CRC (structural error codes)."""
    body = bytearray(data[:-4])
    encoding, interpolation = Encoding(body[5]), Interpolation(body[7])
    dims = struct.unpack_from("<4H", body, 12)
    kept = struct.unpack_from("<I", body, 20)[0]
    rows, cols = dims[0], math.prod(dims[1:]) if body[8] == 4 else dims[1]
    start = HEADER_SIZE + (PREDICTOR_SIZE if interpolation == Interpolation.LEARNED else 0)
    values_start = len(body) - kept
    kind = rng.integers(6)
    if kind == 0 and kept:                                    # a value of -128
        body[values_start + int(rng.integers(kept))] = 0x80
    elif kind == 1 and interpolation == Interpolation.LEARNED:  # predictor shift or reserved byte
        body[HEADER_SIZE + 8 + int(rng.integers(4))] = int(rng.integers(16, 256))
    elif kind == 2 and values_start > start:                  # an index-section byte changed
        at = start + int(rng.integers(values_start - start))
        body[at] = int(rng.integers(256))
    elif kind == 3 and values_start > start:                  # an index-section bit flipped
        at = start + int(rng.integers(values_start - start))
        body[at] ^= 1 << int(rng.integers(8))
    elif kind == 4 and encoding == Encoding.RLE and values_start > start + 4:   # a code turned into an escape
        codes = values_start - start - 4
        body[start + 4 + (codes - 1 if rng.random() < 0.5 else int(rng.integers(codes)))] = 255
    elif kind == 5 and encoding in (Encoding.CSR, Encoding.CSC) and kept:       # an index set to a random value
        major, minor = (rows, cols) if encoding == Encoding.CSR else (cols, rows)
        pw, iw = field_width(kept), field_width(minor - 1)
        at = start + (major + 1) * pw + int(rng.integers(kept)) * iw
        body[at:at + iw] = int(rng.integers(0, min(2 * minor + 2, 256 ** iw))).to_bytes(iw, "little")
    elif len(body) > start:                                   # any payload bit flipped
        body[start + int(rng.integers(len(body) - start))] ^= 1 << int(rng.integers(8))
    return _with_crc(bytes(body))


def _bit_flip(rng, data):
    at = int(rng.integers(len(data)))
    return data[:at] + bytes([data[at] ^ (1 << int(rng.integers(8)))]) + data[at + 1:]


def _header_field(rng, data):
    body = bytearray(data[:-4])
    at = int(rng.integers(4, HEADER_SIZE))
    body[at] = int(rng.choice([0, 1, 2, 3, 4, 5, 8, 255, int(rng.integers(256))]))
    return _with_crc(bytes(body))


#: name -> function(rng, good stream bytes) -> corrupted bytes
CORRUPTIONS = {
    "bit flip": _bit_flip,
    "truncated": lambda rng, d: d[:int(rng.integers(1, len(d)))],
    "extended": lambda rng, d: d + bytes(rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8)),
    "header byte": lambda rng, d: (bytearray(d[:4]) + bytes([int(rng.integers(256))]) + d[5:]
                                   if rng.random() < 0.1 else
                                   (lambda at: d[:at] + bytes([int(rng.integers(256))]) + d[at + 1:])(
                                       int(rng.integers(0, HEADER_SIZE)))),
    "header field, CRC fixed": _header_field,
    "random bytes": lambda rng, d: bytes((b ^ int(rng.integers(1, 256))) if rng.random() < 4 / len(d) else b
                                         for b in d),
    "garbage": lambda rng, d: bytes(rng.integers(0, 256, int(rng.integers(1, 80))).astype(np.uint8)),
    "garbage with magic": lambda rng, d: b"DSWT" + bytes(rng.integers(0, 256, int(rng.integers(0, 80))).astype(np.uint8)),
    "payload fault, CRC fixed": _payload_fault,
}


def corrupt(rng, data):
    """``(kind, corrupted bytes)``: one of :data:`CORRUPTIONS`, payload faults twice as often."""
    names = list(CORRUPTIONS) + ["payload fault, CRC fixed"] * 2
    kind = names[int(rng.integers(len(names)))]
    return kind, bytes(CORRUPTIONS[kind](rng, data))

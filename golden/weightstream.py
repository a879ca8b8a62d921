"""The compressed weight stream of seed 002: encodings, the binary format, its parser.

A stream carries one int8 tensor (weights symmetric in ``[-127, 127]``) of
which only the entries of a *mask* are sent; the receiver rebuilds the others
with the interpolation method the header names (:mod:`dynsparse.golden.sparsify`).
``docs/weightstream.md`` documents the format byte by byte; in short::

    offset  size  field
         0     4  magic b"DSWT"
         4     1  version (1)
         5     1  encoding         0 bitmask, 1 rle, 2 csr, 3 csc
         6     1  value width      bits per value, 8
         7     1  interpolation    0 zero, 1 linear, 2 learned
         8     1  ndim             2 (matrix) or 4 (C_out × C_in × K × K)
         9     1  criterion        0 none, 1 magnitude, 2 gradient, 3 channel
        10     1  selection        0 mask, 1 sparsity, 2 threshold, 3 budget
        11     1  reserved, 0
        12     8  dims, 4 × u16    (rows, cols, 1, 1) or (C_out, C_in, K, K)
        20     4  kept, u32        entries the mask keeps
        24     4  parameter, u32   sparsity in ppm, threshold as float32 bits, or budget in bytes
        28     4  payload length, u32
        32     L  payload          [predictor, 12 bytes, learned only] index section, values
      32+L     4  CRC-32 (IEEE, zlib.crc32) of bytes 0 … 32+L-1, u32

All integers are little-endian. The *matrix view* of a tensor is ``rows =
dims[0]`` by ``cols = dims[1]·dims[2]·dims[3]``, entry ``(r, c)`` at flat index
``i = r·cols + c`` (a weight ``[co, ci, ky, kx]`` sits at row ``co``, column
``(ci·K + ky)·K + kx``: NumPy's C order). Index sections:

- **bitmask**: ``ceil(N/8)`` bytes, bit ``i % 8`` (LSB first) of byte ``i // 8``
  is the mask of flat index ``i``; the bits past ``N`` are 0.
- **rle**: ``u32`` code count ``C``, then ``C`` code bytes. A code ``b < 255``
  skips ``b`` dropped entries and then keeps one (the next value); ``255``
  skips 255 dropped entries and keeps nothing. Dropped entries after the last
  kept one are implied by ``N``.
- **csr**: ``rows + 1`` pointers of ``pw`` bytes, then ``kept`` column indices
  of ``iw`` bytes, strictly increasing within a row.
- **csc**: the same on the transposed matrix: ``cols + 1`` pointers, row indices.

``pw`` holds ``0 … kept`` and ``iw`` holds ``0 … minor - 1``; a width is 1
byte for values up to 255, 2 up to 65535, else 4. Values are int8, one byte
each, in flat order (column-major for csc).

:func:`parse_stream` checks a byte string in a fixed order and stops at the
first fault with a :class:`StreamError` code (:class:`StreamFormatError`);
it raises nothing else on any byte string.
"""

import enum
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np


__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "CRC_SIZE", "PREDICTOR_SIZE", "PREDICTOR_TAPS", "MAX_ENTRIES",
    "RLE_ESCAPE", "Encoding", "Interpolation", "Criterion", "Selection", "StreamError",
    "StreamFormatError", "Header", "WeightStream", "matrix_shape", "field_width", "index_section",
    "encode_stream", "parse_stream", "parse_header", "stream_size", "analytic_size", "rle_escapes",
    "ENCODINGS", "size_table", "annotate_stream", "main",
]

MAGIC = b"DSWT"
VERSION = 1
HEADER_SIZE = 32
CRC_SIZE = 4
#: Learned predictor block: 8 int8 coefficients, a u8 shift, 3 reserved bytes.
PREDICTOR_SIZE = 12
PREDICTOR_TAPS = 8
#: Largest ``N`` a stream may describe (keeps every buffer of a parser bounded).
MAX_ENTRIES = 1 << 24
RLE_ESCAPE = 255
VALUE_MAX = 127
_HEADER = struct.Struct("<4sBBBBBBBBHHHHIII")


class Encoding(enum.IntEnum):
    BITMASK = 0
    RLE = 1
    CSR = 2
    CSC = 3


class Interpolation(enum.IntEnum):
    ZERO = 0
    LINEAR = 1
    LEARNED = 2


class Criterion(enum.IntEnum):
    NONE = 0
    MAGNITUDE = 1
    GRADIENT = 2
    CHANNEL = 3


class Selection(enum.IntEnum):
    MASK = 0
    SPARSITY = 1
    THRESHOLD = 2
    BUDGET = 3


ENCODINGS = tuple(e.name.lower() for e in Encoding)


class StreamError(enum.IntEnum):
    """Fault codes of a stream, shared with the gateware's ``MaskDecoder``.

    The parser checks in this order and reports the first fault: magic,
    version, header present, header fields, payload length against the
    header, file length, CRC, then the payload (predictor, index section,
    values).
    """
    OK = 0
    BAD_MAGIC = 1          # bytes 0..3 are not b"DSWT"
    BAD_VERSION = 2        # byte 4 is not 1
    BAD_HEADER = 3         # a header field out of its range (encoding, width, ndim, dims, kept > N, ...)
    BAD_LENGTH = 4         # payload length field disagrees with what the header (or the RLE code count) implies
    TRUNCATED = 5          # fewer bytes than header + payload + CRC
    OVERLONG = 6           # more bytes than header + payload + CRC
    BAD_CRC = 7            # CRC-32 mismatch
    BAD_PREDICTOR = 8      # learned predictor: shift > 15 or a reserved byte not 0
    BAD_PADDING = 9        # bitmask: a bit past N is set
    COUNT_MISMATCH = 10    # mask population, RLE value codes or pointer ends differ from `kept`
    RUN_PAST_END = 11      # an RLE run reaches past entry N - 1
    DANGLING_ESCAPE = 12   # the last RLE code is an escape (skips without keeping)
    INDEX_OUT_OF_RANGE = 13  # a CSR/CSC index >= the minor dimension
    NON_MONOTONIC = 14     # pointers decrease, or indices of a row/column not strictly increasing
    BAD_VALUE = 15         # a value of -128


class StreamFormatError(ValueError):
    """A stream the parser rejects; ``code`` is a :class:`StreamError`, ``offset`` the byte at fault (or None)."""

    def __init__(self, code, message, offset=None):
        self.code = StreamError(code)
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.code.name}{where}: {message}")


@dataclass(frozen=True)
class Header:
    encoding: Encoding
    interpolation: Interpolation
    criterion: Criterion
    selection: Selection
    shape: tuple
    kept: int
    parameter: int
    payload_length: int
    value_bits: int = 8
    version: int = VERSION

    @property
    def entries(self):
        return math.prod(self.shape)

    @property
    def matrix_shape(self):
        return matrix_shape(self.shape)

    def parameter_value(self):
        """The sparsification parameter in its own unit (fraction, float threshold, bytes, or None)."""
        if self.selection == Selection.SPARSITY:
            return self.parameter / 1e6
        if self.selection == Selection.THRESHOLD:
            return struct.unpack("<f", struct.pack("<I", self.parameter))[0]
        if self.selection == Selection.BUDGET:
            return self.parameter
        return None


@dataclass
class WeightStream:
    """A parsed stream.

    Members
    -------
    header : Header
    mask : bool array, the tensor's shape
        True where the entry was sent.
    values : int8 array, the tensor's shape
        The sent values; 0 where the mask is False.
    coefficients : int8 array [8] or None
        Learned predictor coefficients (:data:`PREDICTOR_TAPS`), neighbourhood order of
        :data:`dynsparse.golden.sparsify.LEARNED_OFFSETS`.
    shift : int or None
        Right shift of the learned predictor.
    """
    header: Header
    mask: np.ndarray
    values: np.ndarray
    coefficients: np.ndarray = None
    shift: int = None


def matrix_shape(shape):
    """``(rows, cols)`` of the matrix view of a 2-D matrix or a 4-D ``C_out × C_in × K × K`` tensor."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 4:
        return shape[0], shape[1] * shape[2] * shape[3]
    raise ValueError(f"shape must have 2 or 4 dimensions, not {shape}")


def field_width(max_value):
    """Bytes of an index or pointer field holding ``0 … max_value``: 1, 2 or 4."""
    return 1 if max_value <= 0xFF else 2 if max_value <= 0xFFFF else 4


def _check_enum(kind, value):
    if isinstance(value, str):
        try:
            return kind[value.upper()]
        except KeyError:
            names = ", ".join(e.name.lower() for e in kind)
            raise ValueError(f"{kind.__name__.lower()} must be one of {names}, not {value!r}") from None
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(e.name.lower() for e in kind)
        raise ValueError(f"{kind.__name__.lower()} must be one of {names}, not {value!r}") from None


def _check_tensor(weights, mask):
    weights = np.asarray(weights)
    if weights.ndim not in (2, 4):
        raise ValueError(f"weights must be a 2-D matrix or a 4-D C_out × C_in × K × K tensor, not shape {weights.shape}")
    if weights.ndim == 4 and weights.shape[2] != weights.shape[3]:
        raise ValueError(f"4-D weights must have square K × K kernels, not shape {weights.shape}")
    if weights.size == 0 or max(weights.shape) > 0xFFFF or weights.size > MAX_ENTRIES:
        raise ValueError(f"every dimension must be in [1, 65535] and the size at most {MAX_ENTRIES}, "
                         f"not shape {weights.shape}")
    if not np.issubdtype(weights.dtype, np.integer):
        raise TypeError(f"weights must be integers (int8 values), not {weights.dtype}")
    wide = weights.astype(np.int64)
    if np.abs(wide).max() > VALUE_MAX:
        raise ValueError(f"weights must lie in [-127, 127], not [{wide.min()}, {wide.max()}]")
    mask = np.asarray(mask)
    if mask.shape != weights.shape:
        raise ValueError(f"mask must have the weights' shape {weights.shape}, not {mask.shape}")
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must hold only 0/1 or booleans")
        mask = mask.astype(bool)
    return wide, mask


def _rle_codes(flat_mask):
    """RLE code bytes of a flat boolean mask."""
    kept = np.flatnonzero(flat_mask)
    gaps = np.diff(np.concatenate(([-1], kept))) - 1
    escapes = gaps // RLE_ESCAPE
    codes = np.full(int(escapes.sum()) + kept.size, RLE_ESCAPE, np.uint8)
    # each kept entry's code sits after its escapes
    ends = np.cumsum(escapes + 1) - 1
    codes[ends] = gaps % RLE_ESCAPE
    return codes


def rle_escapes(flat_mask):
    kept = np.flatnonzero(np.asarray(flat_mask).ravel())
    gaps = np.diff(np.concatenate(([-1], kept))) - 1
    return int((gaps // RLE_ESCAPE).sum())


def _pack(values, width):
    return np.asarray(values, dtype=f"<u{width}").tobytes()


def index_section(mask, encoding):
    """Index-section bytes and the values' flat order for a 2-D boolean matrix mask."""
    encoding = _check_enum(Encoding, encoding)
    rows, cols = mask.shape
    kept = int(mask.sum())
    if encoding == Encoding.BITMASK:
        return np.packbits(mask.ravel(), bitorder="little").tobytes(), np.flatnonzero(mask.ravel())
    if encoding == Encoding.RLE:
        codes = _rle_codes(mask.ravel())
        return struct.pack("<I", codes.size) + codes.tobytes(), np.flatnonzero(mask.ravel())
    major = mask if encoding == Encoding.CSR else mask.T
    pointers = np.concatenate(([0], np.cumsum(major.sum(axis=1))))
    _, minor = np.nonzero(major)
    pw, iw = field_width(kept), field_width(major.shape[1] - 1)
    order = np.flatnonzero(major.ravel())
    if encoding == Encoding.CSC:
        order = (order % rows) * cols + order // rows
    return _pack(pointers, pw) + _pack(minor, iw), order


def encode_stream(weights, mask, *, encoding, interpolation="zero", criterion="none", selection="mask",
                  parameter=0, coefficients=None, shift=None):
    """Encode the kept entries of an int8 tensor as a stream (bytes).

    Parameters
    ----------
    weights : integer array, 2-D or 4-D ``C_out × C_in × K × K``, values in [-127, 127]
    mask : bool or 0/1 array of the same shape; True = sent
    encoding : Encoding or name
    interpolation : Interpolation or name; ``learned`` needs ``coefficients`` (8 int8) and ``shift`` (0..15)
    criterion, selection : metadata, see :class:`Criterion`, :class:`Selection`
    parameter : int, u32 — sparsity in ppm, threshold as float32 bits, or budget in bytes
    """
    wide, mask = _check_tensor(weights, mask)
    encoding = _check_enum(Encoding, encoding)
    interpolation = _check_enum(Interpolation, interpolation)
    criterion = _check_enum(Criterion, criterion)
    selection = _check_enum(Selection, selection)
    if isinstance(parameter, bool) or not isinstance(parameter, (int, np.integer)):
        raise TypeError(f"parameter must be an integer (u32), not {parameter!r}")
    if not 0 <= parameter <= 0xFFFFFFFF:
        raise ValueError(f"parameter must be in [0, 2^32 - 1], not {parameter!r}")
    predictor = b""
    if interpolation == Interpolation.LEARNED:
        if coefficients is None or shift is None:
            raise ValueError("learned interpolation needs coefficients and shift")
        coefficients = np.asarray(coefficients)
        if (coefficients.shape != (PREDICTOR_TAPS,) or not np.issubdtype(coefficients.dtype, np.integer)
                or np.abs(coefficients.astype(np.int64)).max() > VALUE_MAX):
            raise ValueError(f"coefficients must be {PREDICTOR_TAPS} integers in [-127, 127], not {coefficients!r}")
        if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or not 0 <= shift <= 15:
            raise ValueError(f"shift must be an integer in [0, 15], not {shift!r}")
        predictor = coefficients.astype(np.int8).tobytes() + bytes([int(shift), 0, 0, 0])
    elif coefficients is not None or shift is not None:
        raise ValueError(f"coefficients and shift belong to learned interpolation, not {interpolation.name.lower()}")
    rows, cols = matrix_shape(wide.shape)
    matrix_mask = mask.reshape(rows, cols)
    index, order = index_section(matrix_mask, encoding)
    values = wide.ravel()[order].astype(np.int8).tobytes()
    payload = predictor + index + values
    dims = wide.shape if wide.ndim == 4 else (*wide.shape, 1, 1)
    header = _HEADER.pack(MAGIC, VERSION, encoding, 8, interpolation, wide.ndim, criterion, selection, 0,
                          *dims, order.size, int(parameter), len(payload))
    body = header + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _fail(code, message, offset=None):
    raise StreamFormatError(code, message, offset)


def _rle_length_bounds(entries, kept):
    """(smallest, largest) RLE index section: 4 + codes, codes in [kept, kept + (N - kept) // 255]."""
    return 4 + kept, 4 + kept + (entries - kept) // RLE_ESCAPE


def _expected_index_length(encoding, rows, cols, kept):
    if encoding == Encoding.BITMASK:
        return -(-(rows * cols) // 8)
    if encoding == Encoding.CSR:
        return (rows + 1) * field_width(kept) + kept * field_width(cols - 1)
    if encoding == Encoding.CSC:
        return (cols + 1) * field_width(kept) + kept * field_width(rows - 1)
    raise AssertionError(encoding)


def parse_header(data):
    """Check the 32-byte header and the payload length it states; return a :class:`Header`.

    Checks magic, version, header present, fields, payload length (in that
    order); the file length and CRC are checked by :func:`parse_stream`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a stream must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if data[:4] != MAGIC[:len(data)]:
        _fail(StreamError.BAD_MAGIC, f"magic is {data[:4]!r}, not {MAGIC!r}", 0)
    if len(data) < 5:
        _fail(StreamError.TRUNCATED, f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte header", len(data))
    if data[4] != VERSION:
        _fail(StreamError.BAD_VERSION, f"version {data[4]}, this parser reads version {VERSION}", 4)
    if len(data) < HEADER_SIZE:
        _fail(StreamError.TRUNCATED, f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte header", len(data))
    (_, version, encoding, value_bits, interpolation, ndim, criterion, selection, reserved,
     d0, d1, d2, d3, kept, parameter, payload_length) = _HEADER.unpack_from(data)
    checks = (
        (5, encoding in set(Encoding), f"encoding {encoding} (0..3)"),
        (6, value_bits == 8, f"value width {value_bits} bits (8)"),
        (7, interpolation in set(Interpolation), f"interpolation {interpolation} (0..2)"),
        (8, ndim in (2, 4), f"ndim {ndim} (2 or 4)"),
        (9, criterion in set(Criterion), f"criterion {criterion} (0..3)"),
        (10, selection in set(Selection), f"selection {selection} (0..3)"),
        (11, reserved == 0, f"reserved byte {reserved} (0)"),
        (12, min(d0, d1, d2, d3) >= 1, f"dims {(d0, d1, d2, d3)} (each >= 1)"),
        (16, (ndim != 2 or d2 == d3 == 1) and (ndim != 4 or d2 == d3),
         f"dims {(d0, d1, d2, d3)} (a matrix has dims 2 and 3 equal to 1, a tensor square kernels)"),
        (12, d0 * d1 * d2 * d3 <= MAX_ENTRIES, f"size {d0 * d1 * d2 * d3} (at most {MAX_ENTRIES})"),
        (20, kept <= d0 * d1 * d2 * d3, f"kept {kept} (at most N = {d0 * d1 * d2 * d3})"),
    )
    for offset, good, text in checks:
        if not good:
            _fail(StreamError.BAD_HEADER, f"bad field: {text}", offset)
    encoding, interpolation = Encoding(encoding), Interpolation(interpolation)
    shape = (d0, d1) if ndim == 2 else (d0, d1, d2, d3)
    rows, cols = matrix_shape(shape)
    fixed = (PREDICTOR_SIZE if interpolation == Interpolation.LEARNED else 0) + kept
    if encoding == Encoding.RLE:
        low, high = _rle_length_bounds(rows * cols, kept)
        if not fixed + low <= payload_length <= fixed + high:
            _fail(StreamError.BAD_LENGTH, f"payload length {payload_length}, an RLE payload of this header "
                                          f"has {fixed + low} … {fixed + high} bytes", 28)
    else:
        expected = fixed + _expected_index_length(encoding, rows, cols, kept)
        if payload_length != expected:
            _fail(StreamError.BAD_LENGTH, f"payload length {payload_length}, this header needs {expected}", 28)
    return Header(encoding=encoding, interpolation=interpolation, criterion=Criterion(criterion),
                  selection=Selection(selection), shape=shape, kept=kept, parameter=parameter,
                  payload_length=payload_length, value_bits=value_bits, version=version)


def _unpack(data, offset, count, width):
    return np.frombuffer(data, dtype=f"<u{width}", count=count, offset=offset).astype(np.int64)


def _parse_compressed(data, offset, header, major_count, minor_count):
    """CSR (major = rows) or CSC (major = cols): boolean [major, minor] mask and the end offset."""
    kept = header.kept
    pw, iw = field_width(kept), field_width(minor_count - 1)
    pointers = _unpack(data, offset, major_count + 1, pw)
    if pointers[0] != 0 or pointers[-1] != kept:
        _fail(StreamError.COUNT_MISMATCH, f"pointers run {pointers[0]} … {pointers[-1]}, not 0 … {kept}", offset)
    steps = np.diff(pointers)
    if (steps < 0).any():
        bad = int(np.flatnonzero(steps < 0)[0])
        _fail(StreamError.NON_MONOTONIC, f"pointer {bad + 1} ({pointers[bad + 1]}) below pointer {bad} "
                                         f"({pointers[bad]})", offset + (bad + 1) * pw)
    offset += (major_count + 1) * pw
    indices = _unpack(data, offset, kept, iw)
    major = np.repeat(np.arange(major_count), steps)
    bad_range = indices >= minor_count
    # strictly increasing within a line: each entry after the first of its line exceeds the one before
    same_line = np.concatenate(([False], major[1:] == major[:-1]))
    bad_order = same_line & (indices <= np.concatenate(([-1], indices[:-1])))
    for position in np.flatnonzero(bad_range | bad_order)[:1]:
        if bad_range[position]:
            _fail(StreamError.INDEX_OUT_OF_RANGE, f"index {indices[position]} of entry {position} "
                                                  f"(at most {minor_count - 1})", offset + position * iw)
        _fail(StreamError.NON_MONOTONIC, f"index {indices[position]} of entry {position} does not exceed "
                                         f"the one before it in line {major[position]}", offset + position * iw)
    mask = np.zeros((major_count, minor_count), bool)
    mask[major, indices] = True
    return mask, offset + kept * iw


def parse_stream(data):
    """Parse and check a stream; return a :class:`WeightStream` or raise :class:`StreamFormatError`.

    Raises
    ------
    TypeError
        If ``data`` is not bytes-like.
    StreamFormatError
        For every malformed byte string; ``error.code`` names the first fault.
    """
    header = parse_header(data)
    data = bytes(data)
    total = HEADER_SIZE + header.payload_length + CRC_SIZE
    if len(data) < total:
        _fail(StreamError.TRUNCATED, f"{len(data)} bytes, the header announces {total}", len(data))
    if len(data) > total:
        _fail(StreamError.OVERLONG, f"{len(data)} bytes, the header announces {total}", total)
    stored = struct.unpack_from("<I", data, total - CRC_SIZE)[0]
    computed = zlib.crc32(data[:total - CRC_SIZE])
    if stored != computed:
        _fail(StreamError.BAD_CRC, f"CRC-32 0x{stored:08x}, the bytes give 0x{computed:08x}", total - CRC_SIZE)
    offset = HEADER_SIZE
    coefficients = shift = None
    if header.interpolation == Interpolation.LEARNED:
        coefficients = np.frombuffer(data, np.int8, PREDICTOR_TAPS, offset).copy()
        shift = data[offset + PREDICTOR_TAPS]
        if shift > 15 or any(data[offset + PREDICTOR_TAPS + 1:offset + PREDICTOR_SIZE]):
            _fail(StreamError.BAD_PREDICTOR, f"predictor shift {shift} (0..15) or reserved bytes not 0",
                  offset + PREDICTOR_TAPS)
        offset += PREDICTOR_SIZE
    rows, cols = header.matrix_shape
    entries, kept = rows * cols, header.kept
    if header.encoding == Encoding.BITMASK:
        nbytes = -(-entries // 8)
        bits = np.unpackbits(np.frombuffer(data, np.uint8, nbytes, offset), bitorder="little")
        if bits[entries:].any():
            _fail(StreamError.BAD_PADDING, f"bits past entry {entries - 1} are set", offset + nbytes - 1)
        if int(bits.sum()) != kept:
            _fail(StreamError.COUNT_MISMATCH, f"the mask keeps {int(bits.sum())} entries, the header says {kept}",
                  offset)
        flat_mask = bits[:entries].astype(bool)
        order = np.flatnonzero(flat_mask)
        offset += nbytes
    elif header.encoding == Encoding.RLE:
        count = struct.unpack_from("<I", data, offset)[0]
        fixed = header.payload_length - (offset - HEADER_SIZE) - 4 - kept
        if count != fixed:
            _fail(StreamError.BAD_LENGTH, f"{count} RLE codes, the payload length leaves room for {fixed}", offset)
        offset += 4
        codes = np.frombuffer(data, np.uint8, count, offset).astype(np.int64)
        value_codes = codes != RLE_ESCAPE
        # position of each code's kept entry: everything skipped before it plus one per earlier value
        skipped = np.cumsum(codes)
        positions = skipped + np.cumsum(value_codes) - 1
        if count and not value_codes[-1]:
            last_end = skipped[-1] + np.count_nonzero(value_codes)
            if last_end > entries:
                _fail(StreamError.RUN_PAST_END, f"the runs reach entry {last_end - 1}, past {entries - 1}",
                      offset + count - 1)
            _fail(StreamError.DANGLING_ESCAPE, "the last code is an escape", offset + count - 1)
        over = np.flatnonzero(value_codes & (positions >= entries))
        if over.size:
            _fail(StreamError.RUN_PAST_END, f"code {over[0]} keeps entry {positions[over[0]]}, past {entries - 1}",
                  offset + int(over[0]))
        if np.count_nonzero(value_codes) != kept:
            _fail(StreamError.COUNT_MISMATCH, f"{np.count_nonzero(value_codes)} value codes, the header says {kept}",
                  offset)
        order = positions[value_codes]
        flat_mask = np.zeros(entries, bool)
        flat_mask[order] = True
        offset += count
    else:
        if header.encoding == Encoding.CSR:
            mask, offset = _parse_compressed(data, offset, header, rows, cols)
            order = np.flatnonzero(mask.ravel())
        else:
            mask_t, offset = _parse_compressed(data, offset, header, cols, rows)
            order = np.flatnonzero(mask_t.ravel())
            order = (order % rows) * cols + order // rows
        flat_mask = np.zeros(entries, bool)
        flat_mask[order] = True
    values = np.frombuffer(data, np.int8, kept, offset)
    low = np.flatnonzero(values == -128)
    if low.size:
        _fail(StreamError.BAD_VALUE, f"value {low[0]} is -128 (values lie in [-127, 127])", offset + int(low[0]))
    flat_values = np.zeros(entries, np.int8)
    flat_values[order] = values
    return WeightStream(header=header, mask=flat_mask.reshape(header.shape),
                        values=flat_values.reshape(header.shape), coefficients=coefficients, shift=shift)


# --- sizes ----------------------------------------------------------------------------------------

def stream_size(mask, encoding, interpolation="zero"):
    """Exact bytes of the stream of ``mask`` (2-D or 4-D), header and CRC included."""
    mask = np.asarray(mask, bool)
    encoding = _check_enum(Encoding, encoding)
    interpolation = _check_enum(Interpolation, interpolation)
    rows, cols = matrix_shape(mask.shape)
    kept = int(mask.sum())
    fixed = HEADER_SIZE + CRC_SIZE + kept + (PREDICTOR_SIZE if interpolation == Interpolation.LEARNED else 0)
    if encoding == Encoding.RLE:
        return fixed + 4 + kept + rle_escapes(mask)
    return fixed + _expected_index_length(encoding, rows, cols, kept)


def _expected_rle_escapes(entries, kept):
    """E[Σ floor(gap / 255)] over the ``kept`` gaps before kept entries, positions uniformly random.

    A gap before a given kept entry is ``>= g`` with probability ``C(N - g, k) / C(N, k)``.
    """
    if kept == 0:
        return 0.0
    log_total = math.lgamma(entries + 1) - math.lgamma(kept + 1) - math.lgamma(entries - kept + 1)
    expected, g = 0.0, RLE_ESCAPE
    while entries - g >= kept:
        m = entries - g
        expected += math.exp(math.lgamma(m + 1) - math.lgamma(kept + 1) - math.lgamma(m - kept + 1) - log_total)
        g += RLE_ESCAPE
    return kept * expected


def analytic_size(shape, kept, encoding, interpolation="zero"):
    """Bytes of a stream from the shape and kept count alone (float).

    Exact for bitmask, CSR and CSC; for RLE the expectation when the kept
    entries sit at uniformly random positions. See docs/weightstream.md.
    """
    encoding = _check_enum(Encoding, encoding)
    interpolation = _check_enum(Interpolation, interpolation)
    rows, cols = matrix_shape(shape)
    fixed = HEADER_SIZE + CRC_SIZE + kept + (PREDICTOR_SIZE if interpolation == Interpolation.LEARNED else 0)
    if encoding == Encoding.RLE:
        return fixed + 4 + kept + _expected_rle_escapes(rows * cols, kept)
    return float(fixed + _expected_index_length(encoding, rows, cols, kept))


def annotate_stream(data):
    """Lines ``offset  hex bytes  meaning`` of a valid stream, field by field (the worked example of the docs)."""
    stream = parse_stream(data)
    header = stream.header
    rows, cols = header.matrix_shape
    lines = []

    def field(offset, size, text):
        chunk = data[offset:offset + size]
        shown = chunk[:64]
        for start in range(0, max(len(shown), 1), 16):
            piece = shown[start:start + 16].hex(" ")
            if start + 16 >= len(shown) and size > len(shown):
                piece += " …"
            lines.append(f"{offset + start:5d}  {piece:<50}  {text if start == 0 else ''}".rstrip())
        return offset + size

    dims = header.shape if len(header.shape) == 4 else (*header.shape, 1, 1)
    at = field(0, 4, f"magic {MAGIC!r}")
    at = field(at, 1, f"version {header.version}")
    at = field(at, 1, f"encoding {int(header.encoding)} ({header.encoding.name.lower()})")
    at = field(at, 1, f"value width {header.value_bits} bits")
    at = field(at, 1, f"interpolation {int(header.interpolation)} ({header.interpolation.name.lower()})")
    at = field(at, 1, f"ndim {len(header.shape)}")
    at = field(at, 1, f"criterion {int(header.criterion)} ({header.criterion.name.lower()})")
    at = field(at, 1, f"selection {int(header.selection)} ({header.selection.name.lower()})")
    at = field(at, 1, "reserved")
    at = field(at, 8, f"dims {dims} (u16 each)")
    at = field(at, 4, f"kept {header.kept}")
    at = field(at, 4, f"parameter {header.parameter} ({header.parameter_value()})")
    at = field(at, 4, f"payload length {header.payload_length}")
    if header.interpolation == Interpolation.LEARNED:
        at = field(at, PREDICTOR_TAPS, f"coefficients {stream.coefficients.tolist()}")
        at = field(at, 4, f"shift {stream.shift}, 3 reserved bytes")
    kept = header.kept
    if header.encoding == Encoding.BITMASK:
        at = field(at, -(-rows * cols // 8), f"mask, {rows * cols} bits, LSB first")
    elif header.encoding == Encoding.RLE:
        count = struct.unpack_from("<I", data, at)[0]
        at = field(at, 4, f"code count {count}")
        at = field(at, count, "run codes")
    else:
        major, minor = (rows, cols) if header.encoding == Encoding.CSR else (cols, rows)
        pw, iw = field_width(kept), field_width(minor - 1)
        at = field(at, (major + 1) * pw, f"{major + 1} pointers, {pw} byte(s) each")
        at = field(at, kept * iw, f"{kept} indices, {iw} byte(s) each")
    at = field(at, kept, f"{kept} int8 values")
    field(at, CRC_SIZE, f"CRC-32 0x{struct.unpack_from('<I', data, at)[0]:08x}")
    return lines


# --- the benchmark table --------------------------------------------------------------------------

DENSITIES = (0.05, 0.10, 0.15, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90)


def size_table(layers, densities=DENSITIES):
    """Bytes on the wire per encoding at each density, summed over ``layers`` ({name: int8 tensor}).

    Each layer is masked by magnitude at the density (ties by flat index) and
    encoded with zero interpolation. Returns rows of
    ``{density, kept, dense, <encoding>: bytes, <encoding>_analytic: bytes}``.
    """
    from .sparsify import sparsify
    rows = []
    dense = sum(w.size for w in layers.values())
    for density in densities:
        row = {"density": density, "dense": dense, "kept": 0}
        for name in ENCODINGS:
            row[name] = 0
            row[name + "_analytic"] = 0.0
        for weights in layers.values():
            mask = sparsify(weights, criterion="magnitude", sparsity=1 - density)
            row["kept"] += int(mask.sum())
            for name in ENCODINGS:
                stream = encode_stream(weights, mask, encoding=name)
                row[name] += len(stream)
                row[name + "_analytic"] += analytic_size(weights.shape, int(mask.sum()), name)
        rows.append(row)
    return rows


def main(argv=None):
    """``python -m dynsparse.golden.weightstream``: the size table of docs/weightstream.md."""
    import argparse
    from .weighttrain import benchmark_report
    parser = argparse.ArgumentParser(prog="python -m dynsparse.golden.weightstream",
                                     description="Bytes on the wire per encoding, reconstruction error and "
                                                 "accuracy per interpolation method, on a trained model.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", default="docs/images/weightstream.png", help="plot to write ('' for none)")
    parser.add_argument("--out", default="build/weightstream", help="folder for the exported weights")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for tests)")
    args = parser.parse_args(argv)
    print(benchmark_report(seed=args.seed, image=args.image or None, out=args.out, quick=args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

import re
import struct
import zlib

import numpy as np
import pytest

from dynsparse.cli import main
from dynsparse.golden.sparsify import fit_predictor, interpolate, quantise_predictor, reconstruct, sparsify
from dynsparse.golden.weightstream import (
    ENCODINGS, HEADER_SIZE, MAGIC, MAX_ENTRIES, Encoding, Interpolation, StreamError, StreamFormatError,
    analytic_size, encode_stream, field_width, parse_header, parse_stream, rle_escapes, size_table, stream_size,
)
from dynsparse.golden.weighttrain import LAYERS, quantise, train_dense


METHODS = ("zero", "linear", "learned")


@pytest.fixture(scope="module")
def trained():
    """int8 weights of the digits CNN after a short training run (fixed seed)."""
    q, _ = quantise(train_dense(seed=0, epochs=2))
    return q


def predictor_for(weights, mask, method):
    if method != "learned":
        return {}
    coefficients, shift = quantise_predictor(fit_predictor(weights.astype(np.int64), mask))
    return {"coefficients": coefficients, "shift": shift}


def round_trip(weights, mask, encoding, method="zero", **kw):
    predictor = predictor_for(weights, mask, method)
    data = encode_stream(weights, mask, encoding=encoding, interpolation=method, **predictor, **kw)
    stream = parse_stream(data)
    np.testing.assert_array_equal(stream.mask, mask)
    np.testing.assert_array_equal(stream.values, np.where(mask, weights, 0))
    assert stream.header.shape == weights.shape
    assert stream.header.kept == mask.sum()
    assert len(data) == stream_size(mask, encoding, method)
    np.testing.assert_array_equal(reconstruct(stream), interpolate(weights, mask, method, **predictor))
    return data, stream


def random_cases():
    rng = np.random.default_rng(5)
    cases = []
    for shape in ((1, 1), (3, 5), (8, 4, 3, 3), (6, 2, 5, 5), (1, 300), (300, 1), (4, 1, 1, 1)):
        weights = rng.integers(-127, 128, shape)
        for density in (0.0, 0.03, 0.5, 1.0):
            cases.append((weights, rng.random(shape) < density))
    return cases


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_random(encoding, method):
    for weights, mask in random_cases():
        round_trip(weights, mask, encoding, method)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_trained(trained, encoding, method):
    for name in LAYERS:
        for density in (0.05, 0.3, 0.9):
            mask = sparsify(trained[name], sparsity=1 - density)
            round_trip(trained[name], mask, encoding, method)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_long_runs_past_the_escape(encoding):
    weights = np.zeros((3, 2000), np.int64)
    mask = np.zeros(weights.shape, bool)
    for r, c in ((0, 0), (0, 254), (0, 255 + 254 + 1), (0, 1999), (2, 1020), (2, 1999)):
        mask[r, c] = True
        weights[r, c] = -127 if c % 2 else 127
    data, _ = round_trip(weights, mask, encoding)
    if encoding == "rle":
        # flat 0, 254, 510, 1999, 5020, 5999: gaps 0, 253, 255, 1488, 3020, 978 -> escapes 0 + 0 + 1 + 5 + 11 + 3
        assert rle_escapes(mask) == 20
        count = struct.unpack_from("<I", data, HEADER_SIZE)[0]
        assert count == 6 + 20
        codes = data[HEADER_SIZE + 4:HEADER_SIZE + 4 + count]
        assert codes[:4] == bytes([0, 253, 255, 0])


def test_hand_checked_bytes():
    weights = np.array([[5, 0, -3], [0, 0, 127]])
    mask = weights != 0
    data = encode_stream(weights, mask, encoding="csr", criterion="magnitude", selection="threshold",
                         parameter=0x3F800000)
    header = (b"DSWT" + bytes([1, 2, 8, 0, 2, 1, 2, 0]) + struct.pack("<4H", 2, 3, 1, 1)
              + struct.pack("<3I", 3, 0x3F800000, 3 + 3 + 3))
    payload = bytes([0, 2, 3]) + bytes([0, 2, 2]) + bytes([5, 0xFD, 127])
    assert data == header + payload + struct.pack("<I", zlib.crc32(header + payload))
    csc = encode_stream(weights, mask, encoding="csc")
    # column pointers 0 1 1 3, row indices 0 0 1, values in column order 5 -3 127
    assert csc[HEADER_SIZE:-4] == bytes([0, 1, 1, 3, 0, 0, 1, 5, 0xFD, 127])
    bitmask = encode_stream(weights, mask, encoding="bitmask")
    assert bitmask[HEADER_SIZE:-4] == bytes([0b100101, 5, 0xFD, 127])
    rle = encode_stream(weights, mask, encoding="rle")
    assert rle[HEADER_SIZE:-4] == struct.pack("<I", 3) + bytes([0, 1, 2, 5, 0xFD, 127])


def test_four_d_matrix_view():
    weights = np.arange(2 * 3 * 3 * 3).reshape(2, 3, 3, 3) % 200 - 100
    mask = np.zeros(weights.shape, bool)
    mask[1, 2, 0, 1] = True
    data = encode_stream(weights, mask, encoding="csr")
    # row 1, column (2·3 + 0)·3 + 1 = 19
    assert data[HEADER_SIZE:-4] == bytes([0, 0, 1, 19, weights[1, 2, 0, 1] & 0xFF])


def test_field_widths():
    assert [field_width(v) for v in (0, 255, 256, 65535, 65536)] == [1, 1, 2, 2, 4]
    weights = np.ones((2, 300), np.int64)
    mask = np.ones(weights.shape, bool)
    data = encode_stream(weights, mask, encoding="csr")
    assert len(data) == 36 + 3 * 2 + 600 * 2 + 600       # kept 600 -> 2-byte pointers; 300 columns -> 2-byte indices


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sizes_against_analytic(trained, encoding):
    """Bitmask, CSR, CSC: analytic = exact; RLE: within 5 % of its expectation on the trained weights."""
    for name in LAYERS:
        for density in (0.05, 0.1, 0.2, 0.5, 0.9):
            mask = sparsify(trained[name], sparsity=1 - density)
            exact = len(encode_stream(trained[name], mask, encoding=encoding))
            analytic = analytic_size(mask.shape, int(mask.sum()), encoding)
            if encoding == "rle":
                assert abs(exact / analytic - 1) < 0.05
            else:
                assert exact == analytic
    rows = size_table(trained, densities=(0.05, 0.5))
    assert rows[0]["kept"] < rows[1]["kept"] and rows[0][encoding] < rows[1][encoding]


def test_rle_expected_escapes_monte_carlo():
    rng = np.random.default_rng(3)
    entries, kept = 4000, 6
    measured = []
    for _ in range(400):
        mask = np.zeros(entries, bool)
        mask[rng.choice(entries, kept, replace=False)] = True
        measured.append(rle_escapes(mask))
    expected = analytic_size((1, entries), kept, "rle") - (36 + 4 + 2 * kept)
    assert abs(np.mean(measured) - expected) < 0.06 * expected
    assert expected > 5


def test_encoder_parameter_errors():
    w = np.zeros((2, 2), np.int64)
    m = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match=r"^encoding must be one of bitmask, rle, csr, csc, not 'zip'$"):
        encode_stream(w, m, encoding="zip")
    with pytest.raises(ValueError, match=r"weights must lie in \[-127, 127\], not \[-128, 0\]"):
        encode_stream(np.array([[-128, 0]]), np.ones((1, 2), bool), encoding="csr")
    with pytest.raises(TypeError, match=r"weights must be integers \(int8 values\), not float64"):
        encode_stream(w.astype(float), m, encoding="csr")
    with pytest.raises(ValueError, match=r"weights must be a 2-D matrix or a 4-D"):
        encode_stream(np.zeros(4, np.int64), np.ones(4, bool), encoding="csr")
    with pytest.raises(ValueError, match=r"mask must have the weights' shape \(2, 2\), not \(2, 3\)"):
        encode_stream(w, np.ones((2, 3), bool), encoding="csr")
    with pytest.raises(ValueError, match=r"learned interpolation needs coefficients and shift"):
        encode_stream(w, m, encoding="csr", interpolation="learned")
    with pytest.raises(ValueError, match=r"shift must be an integer in \[0, 15\], not 16"):
        encode_stream(w, m, encoding="csr", interpolation="learned", coefficients=np.zeros(8, int), shift=16)
    with pytest.raises(ValueError, match=r"parameter must be in \[0, 2\^32 - 1\], not -1"):
        encode_stream(w, m, encoding="csr", parameter=-1)
    with pytest.raises(TypeError, match=r"a stream must be bytes, not str"):
        parse_stream("DSWT")


# --- malformed streams -----------------------------------------------------------------------------

def recrc(body):
    """A stream with a correct CRC around header + payload ``body``."""
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def code_of(data):
    try:
        parse_stream(data)
    except StreamFormatError as error:
        return error.code
    return StreamError.OK


def forged(weights, mask, encoding, method="zero", edit=None):
    """Encode, let ``edit(bytearray body)`` change header/payload, recompute the CRC."""
    data = encode_stream(weights, mask, encoding=encoding, interpolation=method,
                         **predictor_for(weights, mask, method))
    body = bytearray(data[:-4])
    edit(body)
    return recrc(body)


@pytest.fixture
def small():
    weights = np.array([[5, 0, -3, 0, 0], [0, 0, 127, 0, 9], [1, 2, 3, 4, 5]])
    return weights, weights != 0


def test_header_codes(small):
    weights, mask = small
    good = encode_stream(weights, mask, encoding="bitmask")
    assert code_of(good) == StreamError.OK
    assert code_of(b"") == StreamError.TRUNCATED
    assert code_of(b"DSW") == StreamError.TRUNCATED
    assert code_of(b"DSX") == StreamError.BAD_MAGIC
    assert code_of(b"XSWT" + good[4:]) == StreamError.BAD_MAGIC
    assert code_of(good[:4] + b"\x02" + good[5:]) == StreamError.BAD_VERSION
    assert code_of(good[:20]) == StreamError.TRUNCATED
    assert code_of(good[:-1]) == StreamError.TRUNCATED
    assert code_of(good + b"\0") == StreamError.OVERLONG
    assert code_of(good[:-1] + bytes([good[-1] ^ 1])) == StreamError.BAD_CRC
    for offset, value in ((5, 4), (6, 16), (7, 3), (8, 3), (9, 4), (10, 4), (11, 1)):
        assert code_of(forged(weights, mask, "bitmask", edit=lambda b: b.__setitem__(offset, value))) \
            == StreamError.BAD_HEADER, offset
    # dims: zero, matrix with K != 1, size past MAX_ENTRIES, kept > N
    for edit in (lambda b: struct.pack_into("<H", b, 12, 0), lambda b: struct.pack_into("<H", b, 16, 3),
                 lambda b: (b.__setitem__(8, 4), struct.pack_into("<4H", b, 12, 65535, 65535, 9, 9)),
                 lambda b: struct.pack_into("<I", b, 20, 16)):
        assert code_of(forged(weights, mask, "bitmask", edit=edit)) == StreamError.BAD_HEADER
    assert MAX_ENTRIES == 1 << 24
    assert code_of(forged(weights, mask, "csr", edit=lambda b: struct.pack_into("<I", b, 28, 7))) \
        == StreamError.BAD_LENGTH
    with pytest.raises(StreamFormatError, match=r"^BAD_HEADER at byte 5: bad field: encoding 4 \(0\.\.3\)$"):
        parse_header(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(5, 4)))


def test_payload_codes(small):
    weights, mask = small
    P = HEADER_SIZE
    # bitmask: 15 entries -> 2 mask bytes, bit 15 is padding
    assert code_of(forged(weights, mask, "bitmask", edit=lambda b: b.__setitem__(P + 1, b[P + 1] | 0x80))) \
        == StreamError.BAD_PADDING
    assert code_of(forged(weights, mask, "bitmask", edit=lambda b: b.__setitem__(P, b[P] ^ 0x02))) \
        == StreamError.COUNT_MISMATCH
    assert code_of(forged(weights, mask, "bitmask", edit=lambda b: b.__setitem__(P + 2, 0x80))) \
        == StreamError.BAD_VALUE
    # rle: codes 0 1 3 1 0 0 0 0 0 (9 kept)
    rle = encode_stream(weights, mask, encoding="rle")
    assert rle[P:P + 4 + 9] == struct.pack("<I", 9) + bytes([0, 1, 4, 1, 0, 0, 0, 0, 0])
    assert code_of(forged(weights, mask, "rle", edit=lambda b: b.__setitem__(P + 4 + 8, 1))) \
        == StreamError.RUN_PAST_END
    assert code_of(forged(weights, mask, "rle", edit=lambda b: b.__setitem__(P + 4 + 8, 255))) \
        == StreamError.RUN_PAST_END
    assert code_of(forged(weights, mask, "rle", edit=lambda b: struct.pack_into("<I", b, P, 8))) \
        == StreamError.BAD_LENGTH
    # a dangling escape in a long row: 1 × 600, one kept entry at 0
    long_w, long_m = np.zeros((1, 600), np.int64), np.zeros((1, 600), bool)
    long_m[0, 0] = long_w[0, 0] = 1
    long_m[0, 300] = long_w[0, 300] = 2

    assert encode_stream(long_w, long_m, encoding="rle")[P:P + 7] == struct.pack("<I", 3) + bytes([0, 255, 44])

    def three_values(b):
        b[P + 4 + 1], b[P + 4 + 2] = 44, 44
    assert code_of(forged(long_w, long_m, "rle", edit=three_values)) == StreamError.COUNT_MISMATCH

    def dangling_only(b):
        b[P + 4 + 1], b[P + 4 + 2] = 44, 255
    assert code_of(forged(long_w, long_m, "rle", edit=dangling_only)) == StreamError.DANGLING_ESCAPE
    # csr: pointers 0 2 4 9, indices 0 2 | 2 4 | 0 1 2 3 4
    csr = encode_stream(weights, mask, encoding="csr")
    assert csr[P:P + 13] == bytes([0, 2, 4, 9, 0, 2, 2, 4, 0, 1, 2, 3, 4])
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(P, 1))) == StreamError.COUNT_MISMATCH
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(P + 3, 8))) == StreamError.COUNT_MISMATCH
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(P + 1, 5))) == StreamError.NON_MONOTONIC
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(P + 5, 5))) \
        == StreamError.INDEX_OUT_OF_RANGE
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(P + 5, 0))) == StreamError.NON_MONOTONIC
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(P + 11, 2))) == StreamError.NON_MONOTONIC
    assert code_of(forged(weights, mask, "csc", edit=lambda b: b.__setitem__(P + 6 + 1, 3))) \
        == StreamError.INDEX_OUT_OF_RANGE
    assert code_of(forged(weights, mask, "csr", edit=lambda b: b.__setitem__(len(b) - 1, 0x80))) \
        == StreamError.BAD_VALUE
    # learned predictor: shift 16, a reserved byte
    assert code_of(forged(weights, mask, "csr", "learned", edit=lambda b: b.__setitem__(P + 8, 16))) \
        == StreamError.BAD_PREDICTOR
    assert code_of(forged(weights, mask, "csr", "learned", edit=lambda b: b.__setitem__(P + 10, 1))) \
        == StreamError.BAD_PREDICTOR


# --- fuzz ---------------------------------------------------------------------------------------------

def expected_code(data):
    """The documented check order, written out again from docs/weightstream.md, for a corrupted stream."""
    if data[:4] != MAGIC[:len(data)]:
        return StreamError.BAD_MAGIC
    if len(data) < 5:
        return StreamError.TRUNCATED
    if data[4] != 1:
        return StreamError.BAD_VERSION
    if len(data) < 32:
        return StreamError.TRUNCATED
    enc, width, interp, ndim, crit, sel, res = data[5:12]
    dims = struct.unpack_from("<4H", data, 12)
    kept, _, length = struct.unpack_from("<3I", data, 20)
    n = dims[0] * dims[1] * dims[2] * dims[3]
    shape_ok = (ndim == 2 and dims[2] == dims[3] == 1) or (ndim == 4 and dims[2] == dims[3])
    if not (enc <= 3 and width == 8 and interp <= 2 and ndim in (2, 4) and crit <= 3 and sel <= 3 and res == 0
            and min(dims) >= 1 and shape_ok and n <= 1 << 24 and kept <= n):
        return StreamError.BAD_HEADER
    rows, cols = dims[0], n // dims[0]
    fixed = (12 if interp == 2 else 0) + kept
    w = lambda v: 1 if v < 256 else 2 if v < 65536 else 4     # noqa: E731
    if enc == 1:
        length_ok = fixed + 4 + kept <= length <= fixed + 4 + kept + (n - kept) // 255
    else:
        index = {0: -(-n // 8), 2: (rows + 1) * w(kept) + kept * w(cols - 1),
                 3: (cols + 1) * w(kept) + kept * w(rows - 1)}[enc]
        length_ok = length == fixed + index
    if not length_ok:
        return StreamError.BAD_LENGTH
    if len(data) < 32 + length + 4:
        return StreamError.TRUNCATED
    if len(data) > 32 + length + 4:
        return StreamError.OVERLONG
    return StreamError.BAD_CRC


def test_fuzz_corrupted_streams(trained):
    rng = np.random.default_rng(2026)
    bases = []
    for encoding in ENCODINGS:
        for method in METHODS:
            for name, density in (("conv2", 0.3), ("dense", 0.05), ("conv1", 0.9)):
                w = trained[name]
                mask = sparsify(w, sparsity=1 - density)
                bases.append(encode_stream(w, mask, encoding=encoding, interpolation=method,
                                           **predictor_for(w, mask, method)))
    wide = np.zeros((1, 3000), np.int64)
    wide[0, [7, 1500, 2999]] = (3, -4, 5)
    bases.append(encode_stream(wide, wide != 0, encoding="rle"))
    counts = {}
    for trial in range(12000):
        base = bases[trial % len(bases)]
        kind = trial % 6
        data = bytearray(base)
        if kind == 0:                                   # one bit flipped
            position = int(rng.integers(len(data)))
            data[position] ^= 1 << int(rng.integers(8))
        elif kind == 1:                                 # truncated
            data = data[:int(rng.integers(len(data)))]
        elif kind == 2:                                 # extended
            data += rng.integers(0, 256, int(rng.integers(1, 40))).astype(np.uint8).tobytes()
        elif kind == 3:                                 # a header byte set to a random value
            position = int(rng.integers(5, HEADER_SIZE))
            value = int(rng.integers(256))
            if data[position] == value:
                value ^= 0x40
            data[position] = value
        elif kind == 4:                                 # a few random bytes anywhere
            for position in rng.integers(0, len(data), int(rng.integers(2, 5))):
                data[int(position)] ^= int(rng.integers(1, 256))
        else:                                           # random bytes, sometimes behind the magic
            junk = rng.integers(0, 256, int(rng.integers(0, 80))).astype(np.uint8).tobytes()
            data = bytearray((MAGIC + b"\x01" if trial % 12 == 5 else b"") + junk)
        data = bytes(data)
        expected = expected_code(data)
        try:
            parse_stream(data)
            got = StreamError.OK
        except StreamFormatError as error:
            got = error.code
        assert got == expected, (trial, kind, data[:40].hex())
        counts[expected.name] = counts.get(expected.name, 0) + 1
    print(f"fuzz: {sum(counts.values())} corrupted streams, every one rejected with the expected code: {counts}")
    assert sum(counts.values()) == 12000 and "OK" not in counts


def rle_walk(codes, entries, kept):
    """The RLE rules of docs/weightstream.md, one code at a time."""
    position = values = 0
    for code in map(int, codes):
        if code == 255:
            position += 255
            continue
        position += code
        if position >= entries:
            return StreamError.RUN_PAST_END
        position += 1
        values += 1
    if len(codes) and codes[-1] == 255:
        return StreamError.RUN_PAST_END if position > entries else StreamError.DANGLING_ESCAPE
    return StreamError.COUNT_MISMATCH if values != kept else StreamError.OK


def test_fuzz_forged_payloads(trained):
    """Payload faults behind a valid CRC: the structural checks alone must catch them."""
    rng = np.random.default_rng(7)
    w = trained["conv2"]
    counts = {}
    for trial in range(600):
        density = (0.1, 0.4, 0.8)[trial % 3]
        mask = sparsify(w, sparsity=1 - density)
        kept = int(mask.sum())
        encoding = ("bitmask", "rle", "csr", "csc")[trial // 3 % 4]
        body = bytearray(encode_stream(w, mask, encoding=encoding)[:-4])
        values = len(body) - kept
        index_start = HEADER_SIZE + (4 if encoding == "rle" else 0)
        kind = trial // 12 % 3
        if kind == 0:                                   # a value set to -128
            position = values + int(rng.integers(kept))
            body[position] = 0x80
            expected = StreamError.BAD_VALUE
        elif encoding == "bitmask":                     # a mask bit flipped: the population changes
            position = index_start + int(rng.integers(values - index_start))
            body[position] ^= 1 << int(rng.integers(8))
            expected = StreamError.COUNT_MISMATCH       # 1152 entries: no padding bits
        elif encoding == "rle":                         # a run lengthened to the end, or a value code made an escape
            codes = np.frombuffer(bytes(body[index_start:values]), np.uint8).astype(int)
            if kind == 1:
                delta = w.size - int(np.flatnonzero(mask.ravel())[-1])
                j = int(np.flatnonzero(codes + delta <= 254)[0])
                body[index_start + j] = codes[j] + delta
            else:
                j = int(rng.integers(len(codes)))
                body[index_start + j] = 255
            expected = rle_walk(np.frombuffer(bytes(body[index_start:values]), np.uint8), w.size, kept)
        else:
            lines = 16 if encoding == "csr" else 72
            pw, iw = field_width(kept), 1
            indices = index_start + (lines + 1) * pw
            if kind == 1:                               # an index past the minor dimension
                entry = int(rng.integers(kept))
                body[indices + entry * iw] = int(rng.integers(72 if encoding == "csr" else 16, 256))
                expected = StreamError.INDEX_OUT_OF_RANGE
            else:                                       # two neighbouring indices of one line swapped
                ptr = np.frombuffer(bytes(body[index_start:indices]), f"<u{pw}")
                line = int(np.flatnonzero(np.diff(ptr) >= 2)[0])
                a = indices + int(ptr[line]) * iw
                body[a], body[a + 1] = body[a + 1], body[a]
                expected = StreamError.NON_MONOTONIC
        got = code_of(recrc(body))
        assert got == expected, (trial, encoding, kind)
        counts[expected.name] = counts.get(expected.name, 0) + 1
    print(f"forged payloads: {counts}")


# --- CLI ------------------------------------------------------------------------------------------------

def test_cli_compress_and_inspect(trained, tmp_path, capsys):
    weights = tmp_path / "conv2.npy"
    np.save(weights, trained["conv2"])
    out = tmp_path / "conv2.dsw"
    assert main(["compress", str(weights), "-o", str(out), "--encoding", "rle", "--sparsity", "0.75",
                 "--interpolation", "linear"]) == 0
    assert "kept 288 of 1152 (density 0.250)" in capsys.readouterr().out
    stream = parse_stream(out.read_bytes())
    assert stream.header.encoding == Encoding.RLE and stream.header.interpolation == Interpolation.LINEAR
    np.testing.assert_array_equal(stream.mask, sparsify(trained["conv2"], sparsity=0.75))
    assert stream.header.parameter_value() == 0.75
    rebuilt = tmp_path / "rebuilt.npy"
    assert main(["inspect", str(out), "--rebuild", str(rebuilt)]) == 0
    text = capsys.readouterr().out
    assert "CRC-32 OK" in text and "kept           288 of 1152 (density 0.2500)" in text
    assert f"{len(out.read_bytes()) / 1152:.4f} × dense int8" in text
    np.testing.assert_array_equal(np.load(rebuilt), reconstruct(stream))
    # a byte budget: the largest stream that fits
    assert main(["compress", str(weights), "-o", str(out), "--encoding", "csr", "--budget", "500"]) == 0
    assert 500 - 2 <= len(out.read_bytes()) <= 500
    assert main(["compress", str(weights), "-o", str(out), "--criterion", "gradient", "--gradients",
                 str(weights), "--threshold", "100", "--interpolation", "learned"]) == 0
    assert parse_stream(out.read_bytes()).coefficients is not None


def test_cli_errors(tmp_path, capsys, trained):
    weights = tmp_path / "w.npy"
    np.save(weights, trained["dense"])
    stream = tmp_path / "w.dsw"
    main(["compress", str(weights), "-o", str(stream), "--sparsity", "0.5"])
    data = stream.read_bytes()
    (tmp_path / "short.dsw").write_bytes(data[:50])
    (tmp_path / "flip.dsw").write_bytes(data[:40] + bytes([data[40] ^ 4]) + data[41:])
    (tmp_path / "text.npy").write_text("not numpy")
    np.save(tmp_path / "float.npy", np.zeros((2, 2)))
    np.save(tmp_path / "big.npy", np.full((2, 2), 128))
    np.save(tmp_path / "flat.npy", np.zeros(4, np.int8))
    cases = [
        (["inspect", str(tmp_path / "missing.dsw")], r"missing\.dsw: no such file"),
        (["inspect", str(tmp_path / "short.dsw")], r"corrupt weight stream: TRUNCATED at byte 50: .*\(error code 5\)"),
        (["inspect", str(tmp_path / "flip.dsw")], r"corrupt weight stream: BAD_CRC .*\(error code 7\)"),
        (["inspect", str(weights)], r"corrupt weight stream: BAD_MAGIC at byte 0"),
        (["compress", str(tmp_path / "missing.npy")], r"missing\.npy: no such file"),
        (["compress", str(tmp_path / "text.npy")], r"text\.npy: not a \.npy file"),
        (["compress", str(tmp_path / "float.npy")], r"weights must be integers \(int8 values\), not float64"),
        (["compress", str(tmp_path / "big.npy")], r"weights must lie in \[-127, 127\], not \[128, 128\]"),
        (["compress", str(tmp_path / "flat.npy")], r"weights must be a 2-D matrix or a C_out × C_in × K × K tensor"),
        (["compress", str(weights), "--sparsity", "1.5"], r"sparsity must be a finite number in \[0.0, 1.0\], not 1.5"),
        (["compress", str(weights), "--budget", "10"], r"budget must be at least 356 bytes \(an empty stream of this shape\), not 10"),
        (["compress", str(weights), "--criterion", "gradient"], r"--gradients FILE goes with --criterion gradient"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("dynsparse: error: ") and re.search(message, err), (argv, err)
        assert "Traceback" not in err


def test_benchmark_command(tmp_path, capsys):
    """`python -m dynsparse.golden.weightstream --quick`: tables, exported weights, plot."""
    from dynsparse.golden.weightstream import main as benchmark_main
    image = tmp_path / "weightstream.png"
    assert benchmark_main(["--quick", "--image", str(image), "--out", str(tmp_path / "w")]) == 0
    text = capsys.readouterr().out
    assert image.stat().st_size > 10_000
    for name in LAYERS:
        q = np.load(tmp_path / "w" / f"{name}.npy")
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max() == 127
        assert np.load(tmp_path / "w" / f"{name}_grad.npy").shape == q.shape
    rows = [line.split(" | ") for line in text.splitlines() if re.match(r"\| 0\.\d\d \| \d+ \| \d+ \(", line)]
    assert len(rows) == 11
    for cells in rows:
        sizes = dict(zip(ENCODINGS, (int(c.split()[0]) for c in cells[2:6])))
        assert cells[6].rstrip(" |") == min(sizes, key=sizes.get)
    assert "Largest deviation from the analytic size: 0.00 %" in text
    assert "| 0.25 | learned |" in text and "CRC-32" in text

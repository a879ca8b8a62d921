"""Host side of the link protocol, pure Python: CRC, encoders, parser, host API."""

import random
import struct

import numpy as np
import pytest

from dynsparse.golden.sparsify import reconstruct, sparsify
from dynsparse.golden.weightstream import StreamFormatError, encode_stream, parse_stream
from dynsparse.boards.protocol import (
    COMMAND_MAGIC, DEVICE_ID, DEVICE_MAGIC, PROTOCOL_VERSION, Command, Design, FrameResult, pad_mask_word,
    HostLink, LinkTimeout, LinkUnavailable, ProtocolError, Register, Reply, ReplyParser,
    SerialTransport, Status, crc8, encode_command, encode_frame_result, encode_ping,
    encode_read_register, encode_reply, encode_run_frame, encode_weight_stream, encode_write_register,
)


def test_crc8_check_value():
    assert crc8(b"123456789") == 0xF4
    assert crc8(b"") == 0
    assert crc8(b"6789", crc8(b"12345")) == 0xF4


def test_device_id_spells_magic():
    assert DEVICE_ID == 0x53505344
    assert DEVICE_ID.to_bytes(4, "little") == DEVICE_MAGIC


def test_encoders():
    assert encode_ping() == bytes([0xA5, 0x01, 0x00, crc8(b"\x01\x00")])
    packet = encode_write_register(Register.WIDTH, 0x12345678)
    assert packet == bytes([0xA5, 0x02, 0x05, 0x01, 0x78, 0x56, 0x34, 0x12]) + \
        bytes([crc8(packet[1:-1])])
    assert encode_read_register(Register.CYCLES)[:4] == bytes([0xA5, 0x03, 0x01, 0x10])
    assert encode_run_frame()[:3] == bytes([0xA5, 0x04, 0x00])
    assert encode_reply(Status.OK, b"ab") == bytes([0x5A, 0, 2, 0x61, 0x62, crc8(b"\x00\x02ab")])


def test_payload_too_long():
    with pytest.raises(ValueError, match=r"^payload must be at most 255 bytes, not 256$"):
        encode_command(Command.PING, bytes(256))


def test_parser_round_trip_and_fragments():
    rng = random.Random(1)
    replies = [(Status.OK, b"DSPS\x01\x03\x01\x02"), (Status.BAD_CRC, b""),
               (Status.OK, struct.pack("<I", 0xDEADBEEF)), (Status.BAD_FRAME_SIZE, b"")]
    results = np.array([1, 2, 0xFFFF, 0x1234], dtype=np.uint16)
    stream = b"\x00\x17" + b"".join(encode_reply(s, p) for s, p in replies) + \
        encode_reply(Status.OK, struct.pack("<I", 8)) + encode_frame_result(results)
    for trial in range(20):
        parser = ReplyParser()
        for command in (Command.PING, Command.PING, Command.READ_REG, Command.RUN_FRAME,
                        Command.RUN_FRAME):
            parser.expect(command)
        items = []
        position = 0
        while position < len(stream):
            size = rng.randint(1, 5) if trial else 1
            items += parser.feed(stream[position:position + size])
            position += size
        assert items[:4] == [Reply(s, p, True) for s, p in replies]
        assert items[4] == Reply(Status.OK, struct.pack("<I", 8), True)
        assert items[5] == FrameResult(results.astype("<u2").tobytes(), Status.OK, True)
        assert parser.ignored == 2


def test_parser_flags_bad_crc_and_unknown_status():
    packet = bytearray(encode_reply(Status.OK, b"\x01"))
    packet[-1] ^= 1
    items = ReplyParser().feed(bytes(packet) + encode_reply(0x42))
    assert items == [Reply(Status.OK, b"\x01", False), Reply(0x42, b"", True)]
    bad = bytearray(encode_frame_result([5]))
    bad[-1] ^= 0xFF
    parser = ReplyParser()
    parser.expect(Command.RUN_FRAME)
    assert parser.feed(encode_reply(Status.OK, struct.pack("<I", 2)) + bytes(bad))[1] == \
        FrameResult(b"\x05\x00", Status.OK, False)


# -------- host API against a model of the device ------------------------------------------------

class FakeDevice:
    """A Python model of the device behind a transport, checking the host's pixel credit."""

    def __init__(self, *, channels=1, credit=8, status_override=None, silent=False, version=PROTOCOL_VERSION,
                 design=Design.DENSITY, results_per_pixel=None, result_bytes=2, kernel_size=3):
        self.channels = channels
        self.credit = credit
        self.version, self.design, self.kernel_size = version, design, kernel_size
        self.results_per_pixel = channels if results_per_pixel is None else results_per_pixel
        self.result_bytes = result_bytes
        self.registers = {Register.ID: DEVICE_ID, Register.WIDTH: 0, Register.HEIGHT: 0,
                          Register.PIXEL_CREDIT: credit, Register.FRAMES: 0, Register.WEIGHT_ADDR: 0,
                          Register.WEIGHT_STREAM_STATUS: 0, Register.WEIGHT_STREAMS_OK: 0,
                          Register.WEIGHT_STREAMS_BAD: 0, Register.WEIGHT_LOADS: 0}
        self.stream = bytearray()         # WEIGHT_STREAM bytes of the stream in progress
        self.chunks = []                  # (flags, stream bytes) of every WEIGHT_STREAM packet
        self.weights = {}                 # WEIGHT_DATA writes: address -> value
        self.writes = []                  # every (address, value) written
        self.pixel = []
        self.status_override = status_override
        self.silent = silent
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.frame_left = 0
        self.frame_results = bytearray()
        self.max_in_flight = 0
        self.taken = self.returned = 0

    def write(self, data):
        self.incoming += data
        self._process()

    def read(self, n, timeout):
        if not self.outgoing:
            return b""
        size = min(n, len(self.outgoing), 3)     # the host must cope with small pieces
        data = bytes(self.outgoing[:size])
        del self.outgoing[:size]
        return data

    def _process(self):
        if self.silent:
            self.incoming.clear()
            return
        while self.incoming:
            if self.frame_left:
                byte = self.incoming.pop(0)
                self.taken += 1
                self.max_in_flight = max(self.max_in_flight, self.taken - self.returned)
                assert self.taken - self.returned <= self.credit, "host exceeded its credit"
                self.pixel.append(byte)
                if len(self.pixel) == self.channels:
                    result = self.results(self.pixel)
                    self.frame_results += result
                    self.outgoing += result
                    self.returned += self.channels
                    self.pixel = []
                self.frame_left -= 1
                if not self.frame_left:
                    self.outgoing += bytes([Status.OK, crc8(self.frame_results)])
                continue
            if len(self.incoming) < 3 or len(self.incoming) < 4 + self.incoming[2]:
                return
            length = self.incoming[2]
            packet = bytes(self.incoming[:4 + length])
            del self.incoming[:4 + length]
            assert packet[0] == COMMAND_MAGIC and packet[-1] == crc8(packet[1:-1])
            self._execute(packet[1], packet[3:-1])

    def results(self, pixel):
        """Density: ``3·b + 1`` (u16) per pixel byte; conv: ``pixel[0] + 7·r`` (a byte) per result ``r``."""
        if self.result_bytes == 2:
            return b"".join(struct.pack("<H", b * 3 + 1) for b in pixel)
        return bytes((pixel[0] + 7 * r) & 0xFF for r in range(self.results_per_pixel))

    def _execute(self, command, payload):
        if self.status_override is not None:
            self.outgoing += encode_reply(self.status_override)
        elif command == Command.PING:
            if self.version == 1:
                info = bytes([1, self.kernel_size, self.channels, 2])
            else:
                info = bytes([self.version, self.design, self.kernel_size, self.channels,
                              self.results_per_pixel, self.result_bytes])
            self.outgoing += encode_reply(Status.OK, DEVICE_MAGIC + info)
        elif command == Command.WRITE_REG:
            address, value = struct.unpack("<BI", payload)
            self.writes.append((address, value))
            if address == Register.WEIGHT_DATA:
                self.weights[self.registers[Register.WEIGHT_ADDR]] = value
                self.registers[Register.WEIGHT_ADDR] += 1
            else:
                self.registers[address] = value
            self.outgoing += encode_reply(Status.OK)
        elif command == Command.WEIGHT_STREAM:
            self.chunks.append((payload[0], bytes(payload[1:])))
            self.stream += payload[1:]
            if payload[0] & 1:
                data, self.stream = bytes(self.stream), bytearray()
                try:
                    tensor = parse_stream(data)
                except StreamFormatError as error:
                    self.registers[Register.WEIGHT_STREAMS_BAD] += 1
                    self.registers[Register.WEIGHT_STREAM_STATUS] = int(error.code)
                else:
                    self.registers[Register.WEIGHT_STREAMS_OK] += 1
                    rows, cols = tensor.header.matrix_shape
                    shape_ok = (rows, cols) == (self.results_per_pixel, self.kernel_size ** 2)
                    self.registers[Register.WEIGHT_STREAM_STATUS] = 0 if shape_ok else 1 << 4
                    if shape_ok:
                        self.registers[Register.WEIGHT_LOADS] += 1
                        self.weights = dict(enumerate(int(w) & 0xFFFFFFFF for w in reconstruct(tensor).ravel()))
            self.outgoing += encode_reply(Status.OK)
        elif command == Command.READ_REG:
            self.outgoing += encode_reply(Status.OK, struct.pack("<I", self.registers[payload[0]]))
        elif command == Command.RUN_FRAME:
            area = self.registers[Register.WIDTH] * self.registers[Register.HEIGHT]
            self.frame_left = area * self.channels
            self.frame_results = bytearray()
            self.taken = self.returned = 0
            self.outgoing += encode_reply(Status.OK, struct.pack(
                "<I", area * self.results_per_pixel * self.result_bytes))


def test_host_api_registers_and_ping():
    device = FakeDevice()
    link = HostLink(device)
    assert link.ping() == {"version": 3, "design": Design.DENSITY, "kernel_size": 3, "channels": 1,
                           "results_per_pixel": 1, "result_bytes": 2, "build_info": (0, 3, 1, 1, 2)}
    assert HostLink(FakeDevice(version=2)).ping()["version"] == 2       # a version 2 device works
    link.write_register("width", 17)
    assert link.read_register(Register.WIDTH) == 17
    assert link.read_register("ID") == DEVICE_ID
    with pytest.raises(ValueError, match=r"^register must be one of id, width, .* or an address, "
                                         r"not 'nope'$"):
        link.read_register("nope")


@pytest.mark.parametrize("channels", [1, 3])
def test_host_api_run_frame_respects_credit(channels):
    device = FakeDevice(channels=channels, credit=5)
    link = HostLink(device)
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(4, 7, channels), dtype=np.uint8)
    results = link.run_frame(frame if channels > 1 else frame[:, :, 0])
    np.testing.assert_equal(results, frame.astype(np.uint16) * 3 + 1)
    assert results.dtype == np.uint16 and results.shape == (4, 7, channels)
    assert 1 <= device.max_in_flight <= 5


def test_host_api_error_status_names_it():
    link = HostLink(FakeDevice(status_override=Status.BAD_REGISTER))
    with pytest.raises(ProtocolError, match=r"^WRITE_REG: device replied BAD_REGISTER$") as info:
        link.write_register(Register.ID, 1)
    assert info.value.status == Status.BAD_REGISTER


def test_host_api_timeout():
    link = HostLink(FakeDevice(silent=True), timeout=0.01)
    with pytest.raises(LinkTimeout, match=r"^the device sent nothing within 0.01 s$"):
        link.ping()


def test_host_api_wrong_channels():
    link = HostLink(FakeDevice(channels=2))
    with pytest.raises(ValueError, match=r"^frame must have 2 channels, not 1$"):
        link.run_frame(np.zeros((2, 2), dtype=np.uint8))


def test_serial_transport_unavailable():
    pytest.importorskip("serial")
    with pytest.raises(LinkUnavailable, match=r"^cannot open /dev/ttyDSPS-missing: no such device "
                                              r"— is the board plugged in and flashed\?$"):
        SerialTransport("/dev/ttyDSPS-missing", 115200)


def test_serial_transport_without_pyserial(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "serial", None)
    with pytest.raises(LinkUnavailable, match=r"^cannot open a serial port: pyserial is not "
                                              r"installed \(pip install pyserial\)$"):
        SerialTransport("/dev/ttyUSB1")


def test_host_api_drain_recovers():
    device = FakeDevice()
    link = HostLink(device, timeout=0.01)
    device.outgoing += b"\x00garbage" + encode_reply(Status.OK)
    link.drain()
    assert not device.outgoing
    assert link.ping()["version"] == 3


def test_host_api_version_1_device():
    info = HostLink(FakeDevice(version=1, channels=2)).ping()
    assert (info["version"], info["design"], info["channels"], info["results_per_pixel"],
            info["result_bytes"]) == (1, Design.DENSITY, 2, 2, 2)


def conv_device(**kwargs):
    params = dict(design=Design.CONV, results_per_pixel=4, result_bytes=1, kernel_size=3, credit=6)
    params.update(kwargs)
    return FakeDevice(**params)


def test_host_api_conv_weights_settings_and_frame():
    device = conv_device()
    link = HostLink(device)
    weights = np.random.default_rng(2).integers(-127, 128, size=(4, 1, 3, 3))
    link.write_weights(weights)
    assert device.writes[0] == (Register.WEIGHT_ADDR, 0)
    assert [device.weights[i] for i in range(36)] == [int(w) & 0xFFFFFFFF for w in weights.ravel()]
    link.configure_conv(prune_threshold=70, multiplier=300, shift=12, dense=True, pad_mode="reflect")
    assert {a: v for a, v in device.writes[37:]} == {Register.PRUNE_THRESHOLD: 70, Register.REQUANT_MULTIPLIER: 300,
                                                     Register.REQUANT_SHIFT: 12, Register.DENSE: 1,
                                                     Register.PAD_MODE: 2}
    image = np.random.default_rng(3).integers(0, 256, size=(5, 7), dtype=np.uint8)
    results = link.run_conv(image)
    assert results.dtype == np.int8 and results.shape == (5, 7, 4)
    expected = (image[:, :, None].astype(np.int64) + 7 * np.arange(4)) & 0xFF
    np.testing.assert_equal(results.view(np.uint8), expected)
    assert 1 <= device.max_in_flight <= 6


def test_host_api_padding_mask_writes():
    device = conv_device()
    link = HostLink(device)
    mask = np.zeros(18, np.uint8)           # 16×16, K = 3, B = 4: 5 + 5 + 4 + 4 blocks
    mask[[0, 6, 17]] = 1
    link.write_padding_mask(mask, 16, 16)
    assert device.writes[:2] == [(Register.WIDTH, 16), (Register.HEIGHT, 16)]
    words = [v for a, v in device.writes[2:]]
    assert len(words) == 18 and all(a == Register.PAD_MASK for a, _ in device.writes[2:])
    assert words[0] == pad_mask_word(0, 0, 1) == 1 << 24
    assert words[6] == pad_mask_word(1, 1, 1) and words[17] == pad_mask_word(3, 3, 1)
    assert words[1] == pad_mask_word(0, 1, 0) == 1
    with pytest.raises(ValueError, match=r"^padding mask must be 18 values 0/1 for 16×16, not 17 values$"):
        link.write_padding_mask(mask[:17], 16, 16)


def test_host_api_conv_errors():
    link = HostLink(conv_device())
    with pytest.raises(ValueError, match=r"^weights must be integers of shape \(4, 1, 3, 3\), not int64 \(4, 1, 5, 5\)$"):
        link.write_weights(np.zeros((4, 1, 5, 5), np.int64))
    with pytest.raises(ValueError, match=r"^weights must be in \[-127, 127\], not \[-128, -128\]$"):
        link.write_weights(np.full((4, 1, 3, 3), -128))
    with pytest.raises(ValueError, match=r"^pad mode must be one of zero, replicate, reflect, not 'wrap'$"):
        link.configure_conv(pad_mode="wrap")
    with pytest.raises(ProtocolError, match=r"^the device's design is DENSITY, not CONV"):
        HostLink(FakeDevice()).write_weights(np.zeros((1, 1, 3, 3), np.int64))
    with pytest.raises(ValueError, match=r"^pad mask write must be band 0-3, index 0-65535, value 0/1, not \(4, 0, 1\)$"):
        pad_mask_word(4, 0, 1)


def test_encode_weight_stream():
    assert encode_weight_stream(b"\x01\x02", last=True) == encode_command(Command.WEIGHT_STREAM, b"\x01\x01\x02")
    assert encode_weight_stream(bytes(254), last=False)[2] == 255
    for size in (0, 255):
        with pytest.raises(ValueError, match=rf"^a WEIGHT_STREAM chunk must have 1 to 254 bytes, not {size}$"):
            encode_weight_stream(bytes(size), last=True)


@pytest.mark.parametrize("chunk", [254, 7, 1])
def test_host_api_weight_stream_chunks_and_loads(chunk):
    device = conv_device()
    link = HostLink(device)
    weights = np.random.default_rng(4).integers(-127, 128, size=(4, 1, 3, 3))
    mask = sparsify(weights, sparsity=0.5)
    stream = encode_stream(weights, mask, encoding="csr", interpolation="linear")
    status = link.load_weight_stream(stream, chunk=chunk)
    assert status == {"code": 0, "bad_shape": 0, "busy": 0, "streams_ok": 1, "streams_bad": 0, "loads": 1}
    assert b"".join(data for _, data in device.chunks) == stream
    assert [flags for flags, _ in device.chunks] == [0] * (len(device.chunks) - 1) + [1]
    assert max(len(data) for _, data in device.chunks) == min(chunk, len(stream))
    expected = reconstruct(parse_stream(stream)).ravel()
    assert [device.weights[i] for i in range(36)] == [int(w) & 0xFFFFFFFF for w in expected]


def test_host_api_weight_stream_rejections():
    device = conv_device()
    link = HostLink(device)
    weights = np.random.default_rng(5).integers(-127, 128, size=(4, 1, 3, 3))
    stream = bytearray(encode_stream(weights, sparsify(weights, sparsity=0.25), encoding="bitmask"))
    stream[-1] ^= 0x10
    with pytest.raises(ProtocolError, match=r"^WEIGHT_STREAM: the board rejected the stream: BAD_CRC \(7\)$"):
        link.load_weight_stream(stream)
    wrong = np.ones((3, 1, 3, 3), np.int64)
    with pytest.raises(ProtocolError, match=r"^WEIGHT_STREAM: the stream's tensor is not 4 × 9 \(C_out × C_in·K·K\); "
                                            r"nothing was loaded$"):
        link.load_weight_stream(encode_stream(wrong, np.ones(wrong.shape, bool), encoding="bitmask"))
    assert device.registers[Register.WEIGHT_LOADS] == 0 and not device.weights
    with pytest.raises(ValueError, match=r"^a weight stream must have at least one byte$"):
        link.load_weight_stream(b"")
    for chunk in (0, 255, True, 2.0):
        with pytest.raises(ValueError, match=r"^chunk must be an integer in \[1, 254\], not "):
            link.load_weight_stream(b"DSWT", chunk=chunk)

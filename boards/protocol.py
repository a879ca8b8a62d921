"""Host side of the dynsparse link protocol, version 3 (``docs/protocol.md``).

Transport-independent: packet encoders, an incremental reply parser, the
constants of the protocol and CRC-8, shared by the board API and the
testbenches. :class:`HostLink` is the host API over any transport with
``write(data)`` and ``read(n, timeout)``; :class:`SerialTransport` is that
transport over a serial port.
"""

import collections
import enum
import struct

import numpy as np


__all__ = [
    "COMMAND_MAGIC", "REPLY_MAGIC", "DEVICE_MAGIC", "PROTOCOL_VERSION", "DEVICE_ID",
    "RESULT_BYTES", "ERROR_BITS", "ENGINE_ERROR_BITS", "Command", "Status", "Register", "Design",
    "crc8", "encode_command", "encode_ping", "encode_write_register", "encode_read_register",
    "encode_run_frame", "encode_weight_stream", "STREAM_CHUNK", "encode_reply", "encode_frame_result",
    "WEIGHT_STATUS_BITS",
    "ENGINE_COUNTERS", "PAD_MASK_BANDS", "pad_mask_word", "SPN_ERROR_BITS",
    "Reply", "FrameResult", "ReplyParser",
    "LinkError", "ProtocolError", "LinkTimeout", "LinkUnavailable",
    "HostLink", "SerialTransport",
]


#: First byte of a command packet (host → device).
COMMAND_MAGIC = 0xA5
#: First byte of a reply packet (device → host).
REPLY_MAGIC = 0x5A
#: First four bytes of a PING reply.
DEVICE_MAGIC = b"DSPS"
#: Protocol version, fifth byte of a PING reply.
PROTOCOL_VERSION = 3
#: Value of the read-only ID register: ``DEVICE_MAGIC`` read as a little-endian u32.
DEVICE_ID = int.from_bytes(DEVICE_MAGIC, "little")      # 0x53505344
#: Bytes per result on the wire of the density design (u16, little-endian); version 1's only size.
RESULT_BYTES = 2


class Command(enum.IntEnum):
    PING      = 0x01
    WRITE_REG = 0x02
    READ_REG  = 0x03
    RUN_FRAME = 0x04
    WEIGHT_STREAM = 0x05


class Status(enum.IntEnum):
    OK              = 0
    BAD_CRC         = 1
    UNKNOWN_COMMAND = 2
    BAD_LENGTH      = 3
    BAD_REGISTER    = 4
    TIMEOUT         = 5
    BAD_FRAME_SIZE  = 6
    BAD_VALUE       = 7


class Design(enum.IntEnum):
    """What a board computes: byte 5 of the PING reply (versions 2 and 3)."""
    DENSITY = 0          # density map, one u16 per pixel byte
    CONV    = 1          # sparse convolution, C_out int8 results per pixel
    SPN     = 2          # the encoding loop: a peptide map in, its words out (results per frame)


class Register(enum.IntEnum):
    ID            = 0x00
    WIDTH         = 0x01
    HEIGHT        = 0x02
    INV_REF_VAR   = 0x03
    PAD_MODE      = 0x04
    CONTROL       = 0x08
    CYCLES        = 0x10
    FRAMES        = 0x11
    ERRORS        = 0x12
    IGNORED_BYTES = 0x13
    BAD_COMMANDS  = 0x14
    PIXEL_CREDIT  = 0x15
    # the convolution design's registers (Design.CONV)
    WEIGHT_ADDR        = 0x20
    WEIGHT_DATA        = 0x21
    PRUNE_THRESHOLD    = 0x22
    REQUANT_MULTIPLIER = 0x23
    REQUANT_SHIFT      = 0x24
    DENSE              = 0x25
    PAD_MASK           = 0x26
    CONV_CYCLES        = 0x28
    PERFORMED          = 0x29
    SKIPPED_PRUNED     = 0x2A
    SKIPPED_ZERO       = 0x2B
    SKIPPED_PADDING    = 0x2C
    ENGINE_ERRORS      = 0x2D
    WEIGHT_STREAM_STATUS = 0x30
    WEIGHT_STREAMS_OK    = 0x31
    WEIGHT_STREAMS_BAD   = 0x32
    WEIGHT_LOADS         = 0x33
    # the encoding loop's registers (Design.SPN)
    SPN_PARAM_ADDR     = 0x40
    SPN_PARAM_DATA     = 0x41
    SPN_POOL_MAX       = 0x42
    SPN_ADAPTIVE       = 0x43
    SPN_ERRORS         = 0x44
    SPN_CYCLES         = 0x45


#: ERRORS register: bit → name (bits 0-4 come from the pipeline).
ERROR_BITS = {
    0: "pipeline_0", 1: "pipeline_1", 2: "pipeline_2", 3: "pipeline_3", 4: "pipeline_4",
    8: "uart_framing", 9: "uart_overrun", 10: "command_timeout", 11: "bad_crc",
    12: "frame_timeout",
}

#: ENGINE_ERRORS register of the convolution design: bit → name.
ENGINE_ERROR_BITS = {
    0: "window_dropped", 1: "window_early_first", 2: "window_early_last", 3: "window_missing_last",
    4: "window_bad_size", 5: "scaler_bad_weight", 6: "scaler_bad_address", 7: "scaler_bad_density",
    8: "engine_misaligned", 9: "engine_bad_tap", 10: "engine_bad_mask_write", 11: "bad_size",
}

#: SPN_ERRORS register of the encoding-loop design: bit → name.
SPN_ERROR_BITS = {0: "bad_value", 1: "misframed", 2: "bad_size", 3: "bad_param", 4: "pool"}

#: WEIGHT_STREAM_STATUS register of the convolution design: field → (first bit, width).
WEIGHT_STATUS_BITS = {"code": (0, 4), "bad_shape": (4, 1), "busy": (5, 1)}

#: The engine's counters (registers of the convolution design), in the golden model's names.
ENGINE_COUNTERS = {"cycles": Register.CONV_CYCLES, "performed": Register.PERFORMED,
                   "pruned": Register.SKIPPED_PRUNED, "zero": Register.SKIPPED_ZERO,
                   "padding": Register.SKIPPED_PADDING}

#: PAD_MASK register: bits 0-15 block index, 16-17 band (top, bottom, left, right), 24 value.
PAD_MASK_BANDS = ("top", "bottom", "left", "right")


def pad_mask_word(band, index, value):
    """The PAD_MASK register value that sets block ``index`` of ``band`` (0-3) to ``value`` (0/1)."""
    if band not in range(4) or index not in range(1 << 16) or value not in (0, 1):
        raise ValueError(f"pad mask write must be band 0-3, index 0-65535, value 0/1, "
                         f"not {(band, index, value)!r}")
    return index | band << 16 | value << 24


def crc8(data, crc=0):
    """CRC-8/SMBUS: polynomial 0x07, initial value ``crc`` (0), no reflection, no final xor."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _packet(magic, code, payload):
    payload = bytes(payload)
    if len(payload) > 255:
        raise ValueError(f"payload must be at most 255 bytes, not {len(payload)}")
    body = bytes([code, len(payload)]) + payload
    return bytes([magic]) + body + bytes([crc8(body)])


def encode_command(command, payload=b""):
    """``0xA5, command, len, payload, crc8(command, len, payload)``."""
    return _packet(COMMAND_MAGIC, int(command), payload)


def encode_ping():
    return encode_command(Command.PING)


def encode_write_register(address, value):
    return encode_command(Command.WRITE_REG, struct.pack("<BI", int(address), value & 0xFFFFFFFF))


def encode_read_register(address):
    return encode_command(Command.READ_REG, bytes([int(address)]))


def encode_run_frame():
    return encode_command(Command.RUN_FRAME)


#: Stream bytes in one WEIGHT_STREAM packet, at most (the payload's first byte is the flags).
STREAM_CHUNK = 254


def encode_weight_stream(chunk, *, last):
    """WEIGHT_STREAM packet: flags (bit 0: ``chunk`` ends the stream), then 1 … 254 stream bytes."""
    chunk = bytes(chunk)
    if not 1 <= len(chunk) <= STREAM_CHUNK:
        raise ValueError(f"a WEIGHT_STREAM chunk must have 1 to {STREAM_CHUNK} bytes, not {len(chunk)}")
    return encode_command(Command.WEIGHT_STREAM, bytes([int(bool(last))]) + chunk)


def encode_reply(status, payload=b""):
    """``0x5A, status, len, payload, crc8(status, len, payload)`` (what the device sends)."""
    return _packet(REPLY_MAGIC, int(status), payload)


def encode_frame_result(results, status=Status.OK):
    """Raw result bytes (u16 little-endian each) and the trailer ``status, crc8(result bytes)``."""
    data = np.asarray(results, dtype="<u2").tobytes()
    return data + bytes([int(status), crc8(data)])


def _status(code):
    try:
        return Status(code)
    except ValueError:
        return code


#: A reply packet. ``status`` is a :class:`Status` (an ``int`` if unknown).
Reply = collections.namedtuple("Reply", ["status", "payload", "crc_ok"])
#: The raw results of RUN_FRAME and their trailer.
FrameResult = collections.namedtuple("FrameResult", ["data", "status", "crc_ok"])


class ReplyParser:
    """Incremental parser of the device → host byte stream.

    :meth:`feed` takes bytes in pieces of any size and returns the
    :class:`Reply` and :class:`FrameResult` items they complete. Bytes other
    than ``0x5A`` between replies are skipped and counted in ``ignored``.
    An OK reply to a RUN_FRAME command is followed by raw result bytes and a
    trailer, which the parser can only tell apart from packets if it knows
    which commands were sent: call :meth:`expect` with each command, in order.
    """

    def __init__(self):
        self.ignored = 0
        self._expected = collections.deque()
        self._buffer = bytearray()
        self._frame_bytes = None          # result bytes still to come, when inside a frame

    @property
    def pending_bytes(self):
        """Bytes received but not yet part of a returned item (the results of a frame so far)."""
        return len(self._buffer)

    def expect(self, command):
        """Note that a packet with command code ``command`` was sent; its reply is parsed accordingly."""
        self._expected.append(int(command))

    def feed(self, data):
        self._buffer += data
        items = []
        while True:
            item = self._parse_one()
            if item is None:
                return items
            items.append(item)

    def _parse_one(self):
        buffer = self._buffer
        if self._frame_bytes is not None:
            if len(buffer) < self._frame_bytes + 2:
                return None
            data = bytes(buffer[:self._frame_bytes])
            status, crc = buffer[self._frame_bytes], buffer[self._frame_bytes + 1]
            del buffer[:self._frame_bytes + 2]
            self._frame_bytes = None
            return FrameResult(data, _status(status), crc == crc8(data))
        while buffer and buffer[0] != REPLY_MAGIC:
            del buffer[0]
            self.ignored += 1
        if len(buffer) < 3 or len(buffer) < 4 + buffer[2]:
            return None
        length = buffer[2]
        packet = bytes(buffer[:4 + length])
        del buffer[:4 + length]
        reply = Reply(_status(packet[1]), packet[3:3 + length], packet[-1] == crc8(packet[1:-1]))
        command = self._expected.popleft() if self._expected else None
        if command == Command.RUN_FRAME and reply.status == Status.OK and reply.crc_ok and \
                length == 4:
            self._frame_bytes = int.from_bytes(reply.payload, "little")
        return reply


class LinkError(Exception):
    """Base of the link errors."""


class ProtocolError(LinkError):
    """The device answered with an error status, or its answer is malformed.

    ``status`` is the :class:`Status` the device sent, or ``None`` when the
    host found the answer malformed (bad CRC, wrong length, bad magic).
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class LinkTimeout(LinkError):
    """The device sent nothing within the timeout."""


class LinkUnavailable(LinkError):
    """The transport could not be opened."""


def _register_address(register):
    if isinstance(register, str):
        try:
            return Register[register.upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in Register)
            raise ValueError(f"register must be one of {names} or an address, "
                             f"not {register!r}") from None
    if isinstance(register, int) and not isinstance(register, bool) and 0 <= register <= 255:
        return register
    raise ValueError(f"register must be a name or an address in [0, 255], not {register!r}")


class HostLink:
    """Host API of the device.

    Parameters
    ----------
    transport
        An object with ``write(data: bytes)`` and ``read(n, timeout) -> bytes``;
        ``read`` returns between 1 and ``n`` bytes, or ``b""`` when nothing
        arrived within ``timeout`` seconds.
    timeout : float
        Seconds to wait for the device to say anything.

    Raises
    ------
    ProtocolError
        The device replied with an error status (``.status`` names it) or
        sent a malformed reply.
    LinkTimeout
        The device said nothing within ``timeout``.
    """

    def __init__(self, transport, *, timeout=1.0):
        self.transport = transport
        self.timeout = timeout
        self.parser = ReplyParser()
        self._items = collections.deque()
        self._info = None
        self._credit = None

    def _next_item(self):
        while not self._items:
            data = self.transport.read(4096, self.timeout)
            if not data:
                raise LinkTimeout(f"the device sent nothing within {self.timeout} s")
            self._items.extend(self.parser.feed(data))
        return self._items.popleft()

    def _command(self, command, payload=b""):
        self.parser.expect(command)
        self.transport.write(encode_command(command, payload))
        reply = self._next_item()
        if not isinstance(reply, Reply) or not reply.crc_ok:
            raise ProtocolError(f"{Command(command).name}: reply with a bad CRC")
        if reply.status != Status.OK:
            name = getattr(reply.status, "name", str(reply.status))
            raise ProtocolError(f"{Command(command).name}: device replied {name}", reply.status)
        return reply.payload

    def drain(self, quiet=None):
        """Recover after an error: discard what the device sends until it is quiet for ``quiet`` s.

        Wait at least four device timeouts (the frame watchdog) before the
        next command, so that a frame cut short has ended on the device too.
        """
        quiet = self.timeout if quiet is None else quiet
        while self.transport.read(4096, quiet):
            pass
        self.parser = ReplyParser()
        self._items.clear()

    def ping(self):
        """Identify the device: a dict with ``version``, ``design`` (:class:`Design`),
        ``kernel_size``, ``channels`` (pixel bytes per pixel), ``results_per_pixel``,
        ``result_bytes`` and ``build_info`` (those five as a tuple; version 1 devices
        report a density design with three bytes of build information).
        """
        payload = self._command(Command.PING)
        if len(payload) < 5 or payload[:4] != DEVICE_MAGIC:
            raise ProtocolError(f"PING: unexpected payload {payload.hex()}")
        version = payload[4]
        if version == 1 and len(payload) == 8:
            kernel_size, channels, result_bytes = payload[5:8]
            design, results_per_pixel = Design.DENSITY, channels
        elif version in (2, PROTOCOL_VERSION) and len(payload) == 10:
            design, kernel_size, channels, results_per_pixel, result_bytes = payload[5:10]
            design = Design(design) if design in {d.value for d in Design} else design
        else:
            raise ProtocolError(f"PING: protocol version {version} with {len(payload)} bytes, "
                                f"expected version {PROTOCOL_VERSION} (or 2, 1)")
        if result_bytes not in (1, 2) or not channels or not results_per_pixel:
            raise ProtocolError(f"PING: unexpected build information {payload[5:].hex()}")
        self._info = {"version": version, "design": design, "kernel_size": kernel_size,
                      "channels": channels, "results_per_pixel": results_per_pixel,
                      "result_bytes": result_bytes,
                      "build_info": (design, kernel_size, channels, results_per_pixel, result_bytes)}
        return dict(self._info)

    def write_register(self, register, value):
        self._command(Command.WRITE_REG, struct.pack("<BI", _register_address(register),
                                                     value & 0xFFFFFFFF))

    def read_register(self, register):
        payload = self._command(Command.READ_REG, bytes([_register_address(register)]))
        if len(payload) != 4:
            raise ProtocolError(f"READ_REG: payload of {len(payload)} bytes, expected 4")
        return int.from_bytes(payload, "little")

    def status(self):
        """Counters and error flags: a dict of register values and the names of the raised errors."""
        values = {register.name.lower(): self.read_register(register)
                  for register in (Register.CYCLES, Register.FRAMES, Register.ERRORS,
                                   Register.IGNORED_BYTES, Register.BAD_COMMANDS)}
        values["error_names"] = [name for bit, name in ERROR_BITS.items()
                                 if values["errors"] >> bit & 1]
        return values

    def clear_errors(self):
        self.write_register(Register.CONTROL, 1)

    # ---- the convolution design (Design.CONV) ----
    def _conv_info(self):
        if self._info is None:
            self.ping()
        if self._info["design"] != Design.CONV:
            raise ProtocolError(f"the device's design is {getattr(self._info['design'], 'name', self._info['design'])}"
                                f", not CONV (rebuild the bitstream with --design conv)")
        return self._info

    def write_weights(self, weights):
        """Load int8 weights ``[C_out, C_in, K, K]`` in [-127, 127] (WEIGHT_ADDR 0, then WEIGHT_DATA each)."""
        info = self._conv_info()
        weights = np.asarray(weights)
        k = info["kernel_size"]
        shape = (info["results_per_pixel"], info["channels"], k, k)
        if weights.shape != shape or not np.issubdtype(weights.dtype, np.integer):
            raise ValueError(f"weights must be integers of shape {shape}, not {weights.dtype} {weights.shape}")
        if weights.size and (weights.min() < -127 or weights.max() > 127):
            raise ValueError(f"weights must be in [-127, 127], not [{weights.min()}, {weights.max()}]")
        self.write_register(Register.WEIGHT_ADDR, 0)
        for value in weights.ravel():
            self.write_register(Register.WEIGHT_DATA, int(value))

    def weight_stream_status(self):
        """The weight decoder's state: ``code`` (the last decided stream's
        :class:`~dynsparse.golden.weightstream.StreamError` value, 0 = good),
        ``bad_shape`` (its tensor is not ``C_out × K²``: nothing was loaded), ``busy``,
        and the counts ``streams_ok``, ``streams_bad``, ``loads``."""
        self._conv_info()
        status = self.read_register(Register.WEIGHT_STREAM_STATUS)
        values = {name: status >> first & ((1 << width) - 1)
                  for name, (first, width) in WEIGHT_STATUS_BITS.items()}
        values.update(streams_ok=self.read_register(Register.WEIGHT_STREAMS_OK),
                      streams_bad=self.read_register(Register.WEIGHT_STREAMS_BAD),
                      loads=self.read_register(Register.WEIGHT_LOADS))
        return values

    def load_weight_stream(self, stream, *, chunk=STREAM_CHUNK, polls=100):
        """Send a compressed weight stream (``docs/weightstream.md``) in WEIGHT_STREAM packets.

        The board checks and decodes it, rebuilds the dropped weights and
        writes every weight into the engine. Returns :meth:`weight_stream_status`
        once the stream is decided and its weights are written. Raises
        :class:`ProtocolError` if the board rejects the stream (the message
        names the decoder's error code) or its tensor is not ``C_out × K²``;
        the weights loaded before stay in place either way. ``chunk``: stream
        bytes per packet (1 … 254).
        """
        from ..golden.weightstream import StreamError
        stream = bytes(stream)
        if not stream:
            raise ValueError("a weight stream must have at least one byte")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= STREAM_CHUNK:
            raise ValueError(f"chunk must be an integer in [1, {STREAM_CHUNK}], not {chunk!r}")
        before = self.weight_stream_status()
        decided = before["streams_ok"] + before["streams_bad"]
        for start in range(0, len(stream), chunk):
            self._command(Command.WEIGHT_STREAM, bytes([int(start + chunk >= len(stream))]) +
                          stream[start:start + chunk])
        for _ in range(polls):
            status = self.weight_stream_status()
            if (status["streams_ok"] + status["streams_bad"] - decided) % 2 ** 32 >= 1 and \
                    not status["busy"]:
                break
        else:
            raise LinkTimeout(f"WEIGHT_STREAM: the board did not decide the stream after {polls} polls")
        if status["code"]:
            code = status["code"]
            name = StreamError(code).name if code in {e.value for e in StreamError} else str(code)
            raise ProtocolError(f"WEIGHT_STREAM: the board rejected the stream: {name} ({code})")
        if status["bad_shape"]:
            info = self._info
            raise ProtocolError(f"WEIGHT_STREAM: the stream's tensor is not {info['results_per_pixel']} × "
                                f"{info['channels'] * info['kernel_size'] ** 2} (C_out × C_in·K·K); "
                                f"nothing was loaded")
        return status

    def write_padding_mask(self, mask, width, height, *, block_size=4):
        """Load a padding mask (``golden.padmask`` order) for ``width × height`` frames, bit by bit."""
        from ..golden.padmask import BANDS, mask_layout
        info = self._conv_info()
        layout = mask_layout(width, height, kernel_size=info["kernel_size"], block_size=block_size)
        mask = np.asarray(mask).ravel()
        length = sum(count for _, count in layout.values())
        if mask.shape != (length,) or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"padding mask must be {length} values 0/1 for {width}×{height}, "
                             f"not {mask.shape[0]} values")
        # the engine checks each write against the frame size: WIDTH and HEIGHT first
        self.write_register(Register.WIDTH, width)
        self.write_register(Register.HEIGHT, height)
        for band_number, band in enumerate(BANDS):
            first, count = layout[band]
            for index in range(count):
                self.write_register(Register.PAD_MASK, pad_mask_word(band_number, index,
                                                                     int(mask[first + index])))

    def configure_conv(self, *, prune_threshold=None, multiplier=None, shift=None, dense=None,
                       pad_mode=None, inv_ref_var=None):
        """Write the given engine settings (``None`` leaves a register as it is)."""
        self._conv_info()
        pad_modes = {"zero": 0, "replicate": 1, "reflect": 2}
        if isinstance(pad_mode, str):
            if pad_mode not in pad_modes:
                raise ValueError(f"pad mode must be one of {', '.join(pad_modes)}, not {pad_mode!r}")
            pad_mode = pad_modes[pad_mode]
        for register, value in ((Register.PRUNE_THRESHOLD, prune_threshold),
                                (Register.REQUANT_MULTIPLIER, multiplier), (Register.REQUANT_SHIFT, shift),
                                (Register.DENSE, None if dense is None else int(bool(dense))),
                                (Register.PAD_MODE, pad_mode), (Register.INV_REF_VAR, inv_ref_var)):
            if value is not None:
                self.write_register(register, value)

    def engine_counters(self):
        """The engine's counters for the last frame (golden names) and its error flags."""
        self._conv_info()
        values = {name: self.read_register(register) for name, register in ENGINE_COUNTERS.items()}
        errors = self.read_register(Register.ENGINE_ERRORS)
        values["errors"] = errors
        values["error_names"] = [name for bit, name in ENGINE_ERROR_BITS.items() if errors >> bit & 1]
        return values

    def run_conv(self, image):
        """Convolve a uint8 image ``[H, W]`` (or ``[H, W, C_in]``): int8 results ``[H, W, C_out]``."""
        self._conv_info()
        return self.run_frame(image).view(np.int8)

    # ---- the encoding-loop design (Design.SPN) ----
    def _spn_info(self):
        if self._info is None:
            self.ping()
        if self._info["design"] != Design.SPN:
            raise ProtocolError(f"the device's design is {getattr(self._info['design'], 'name', self._info['design'])}"
                                f", not SPN (rebuild the bitstream with --design spn)")
        return self._info

    def write_spn_parameters(self, writes):
        """Load the loop's parameters: ``writes = [(param_addr, param_data), ...]``, as
        ``EncodingLoop.parameter_writes(export)`` gives them (SPN_PARAM_ADDR only where the
        addresses jump, SPN_PARAM_DATA for each)."""
        self._spn_info()
        following = None
        for addr, data in writes:
            if addr != following:
                self.write_register(Register.SPN_PARAM_ADDR, addr)
            self.write_register(Register.SPN_PARAM_DATA, data)
            following = addr + 1

    def configure_spn(self, *, pool_max=None, adaptive=None):
        """Max (or average) pooling; the SPN on (or both scales 1.0, the fixed-kernel model)."""
        self._spn_info()
        for register, value in ((Register.SPN_POOL_MAX, pool_max), (Register.SPN_ADAPTIVE, adaptive)):
            if value is not None:
                self.write_register(register, int(bool(value)))

    def spn_errors(self):
        """The loop's sticky error flags: a list of names (``SPN_ERROR_BITS``)."""
        self._spn_info()
        errors = self.read_register(Register.SPN_ERRORS)
        return [name for bit, name in SPN_ERROR_BITS.items() if errors >> bit & 1]

    def run_spn(self, codes, *, iterations):
        """Run the encoding loop on one map of int8 codes ``[H, L]`` (``golden.spn.encode``).

        Returns a dict: ``scale_codes`` and ``kernel_sizes`` (``[T, 2]``: height,
        length), ``embedding`` (the channel sums ``g``), ``logit``, ``cycles``
        (the device's count from the map's start to its last word).
        """
        info = self._spn_info()
        codes = np.asarray(codes)
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers [H, L], not {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < -127 or codes.max() > 127):
            raise ValueError(f"codes must be in [-127, 127], not [{codes.min()}, {codes.max()}]")
        words = info["results_per_pixel"] // 4
        if not isinstance(iterations, int) or not 1 <= iterations < words - 1:
            raise ValueError(f"iterations must be an integer in [1, {words - 2}], not {iterations!r}")
        raw = self.run_frame(codes.astype(np.int8).view(np.uint8))
        values = raw.view("<i4").astype(np.int64)
        head = values[:iterations].astype(np.uint32)
        return {"scale_codes": np.stack([head & 0xFF, head >> 8 & 0xFF], axis=1).astype(np.int64),
                "kernel_sizes": np.stack([head >> 16 & 0xFF, head >> 24], axis=1).astype(np.int64),
                "embedding": values[iterations:-1], "logit": int(values[-1]),
                "cycles": self.read_register(Register.SPN_CYCLES)}

    def run_peptide(self, sequence, *, length, iterations):
        """Encode a peptide (one-letter amino-acid codes, ``golden.spn.encode``: truncated or
        zero-padded to ``length``) and run it through the encoding loop (:meth:`run_spn`)."""
        from ..golden.spn import encode
        if not isinstance(sequence, str):
            raise TypeError(f"sequence must be a string, not {sequence!r}")
        return self.run_spn(encode([sequence], length=length)[0].astype(np.int64), iterations=iterations)

    def run_frame(self, frame):
        """Send a uint8 frame ``[H, W]`` or ``[H, W, C]``; return its raw results ``[H, W, R]``.

        ``R`` is the device's results per pixel; uint16 for 2-byte results (the
        density design), uint8 for 1-byte results (the convolution design's int8
        results: :meth:`run_conv` views them as int8). The encoding-loop design
        gives a fixed number of result bytes per frame: a flat uint8 array. Pixels are sent in pieces
        so that pixel bytes sent minus the pixel bytes whose results have all
        arrived never exceed the device's PIXEL_CREDIT (its pixel buffer).
        """
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise ValueError(f"frame must be a uint8 array [H, W] or [H, W, C], "
                             f"not {frame.dtype} {frame.shape}")
        if frame.ndim == 2:
            frame = frame[:, :, None]
        height, width, channels = frame.shape
        if self._info is None:
            self.ping()
        if self._credit is None:
            self._credit = self.read_register(Register.PIXEL_CREDIT)
        device_channels = self._info["channels"]
        if channels != device_channels:
            raise ValueError(f"frame must have {device_channels} channels, not {channels}")
        results_per_pixel, result_bytes = self._info["results_per_pixel"], self._info["result_bytes"]
        pixel_result_bytes = results_per_pixel * result_bytes
        per_frame = self._info["design"] == Design.SPN          # a fixed count of results per frame
        self.write_register(Register.WIDTH, width)
        self.write_register(Register.HEIGHT, height)

        header = self._command(Command.RUN_FRAME)
        pixels = np.ascontiguousarray(frame).tobytes()
        expected = pixel_result_bytes if per_frame else height * width * pixel_result_bytes
        if int.from_bytes(header, "little") != expected:
            raise ProtocolError(f"RUN_FRAME: device announces {int.from_bytes(header, 'little')} "
                                f"result bytes, expected {expected}")
        sent = 0
        while True:
            if self._items:
                result = self._items.popleft()
                break
            in_flight = sent if per_frame else sent - self.parser.pending_bytes // pixel_result_bytes * channels
            if sent < len(pixels) and in_flight < self._credit:
                piece = min(self._credit - in_flight, len(pixels) - sent)
                self.transport.write(pixels[sent:sent + piece])
                sent += piece
            data = self.transport.read(4096, self.timeout)
            if not data:
                raise LinkTimeout(f"RUN_FRAME: the device sent nothing within {self.timeout} s")
            self._items.extend(self.parser.feed(data))
        if not isinstance(result, FrameResult):
            raise ProtocolError("RUN_FRAME: expected results, got a reply packet")
        if result.status != Status.OK:
            name = getattr(result.status, "name", str(result.status))
            raise ProtocolError(f"RUN_FRAME: device ended the frame with {name}", result.status)
        if not result.crc_ok:
            raise ProtocolError("RUN_FRAME: result CRC mismatch")
        if per_frame:
            return np.frombuffer(result.data, dtype=np.uint8).copy()
        dtype = "<u2" if result_bytes == 2 else np.uint8
        return np.frombuffer(result.data, dtype=dtype).astype(np.uint16 if result_bytes == 2 else np.uint8) \
            .reshape(height, width, results_per_pixel)


class SerialTransport:
    """A serial port as a transport (needs ``pyserial``).

    Raises
    ------
    LinkUnavailable
        If ``pyserial`` is missing or the port cannot be opened.
    """

    def __init__(self, port, baud=115200):
        try:
            import serial
        except ImportError:
            raise LinkUnavailable("cannot open a serial port: pyserial is not installed "
                                  "(pip install pyserial)") from None
        try:
            self.port = serial.Serial(port, baud, timeout=0)
        except (serial.SerialException, OSError, ValueError) as error:
            reason = "no such device" if "No such file" in str(error) else str(error)
            raise LinkUnavailable(f"cannot open {port}: {reason} — is the board plugged in "
                                  f"and flashed?") from error

    def write(self, data):
        self.port.write(data)
        self.port.flush()

    def read(self, n, timeout):
        self.port.timeout = timeout
        data = self.port.read(1)
        if data and n > 1:
            self.port.timeout = 0
            data += self.port.read(min(n - 1, self.port.in_waiting))
        return data

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

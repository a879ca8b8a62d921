"""K×K sliding windows over a raster pixel stream, with padding at the borders."""

from amaranth.hdl import Array, C, Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .frame import check_int, check_shape, coord_width, pixel_layout


__all__ = ["PadMode", "WindowErrors", "WindowGenerator", "window_layout"]


class PadMode(enum.Enum, shape=2):
    """How a window element that falls outside the frame is filled.

    ``ZERO``: with 0. ``REPLICATE``: with the nearest pixel on the border
    (``aaa|abcd|ddd``). ``REFLECT``: mirrored about the border pixel, which is
    not repeated (``dcb|abcd|cba``).
    """
    ZERO      = 0
    REPLICATE = 1
    REFLECT   = 2


def window_layout(*, kernel_size, channels, pixel_shape, max_width, max_height):
    """Payload of a window stream.

    ``data[dy][dx][c]`` is channel ``c`` of the pixel at row offset ``dy - r``
    and column offset ``dx - r`` from the centre (``r = kernel_size // 2``);
    ``pad[dy][dx]`` is 1 where that element lies outside the frame (its value
    then comes from the padding mode); ``x``/``y`` are the centre's
    coordinates; ``first``/``last`` mark the frame's first and last window.
    """
    k = kernel_size
    return data.StructLayout({
        "data":  data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(pixel_shape, channels), k), k),
        "pad":   data.ArrayLayout(data.ArrayLayout(unsigned(1), k), k),
        "x":     unsigned(coord_width(max_width)),
        "y":     unsigned(coord_width(max_height)),
        "first": unsigned(1),
        "last":  unsigned(1),
    })


class WindowErrors(data.Struct):
    """Sticky error flags of :class:`WindowGenerator` (see its *Errors* section)."""
    dropped:      1
    early_first:  1
    early_last:   1
    missing_last: 1
    bad_size:     1


class WindowGenerator(wiring.Component):
    """K×K windows around every pixel of a raster frame.

    A frame of ``width × height`` pixels enters in raster order, one pixel of
    ``channels`` channels per transfer, its first pixel marked ``first`` and
    its last ``last``. For every pixel, in the same order, one window leaves:
    the K×K neighbourhood centred on that pixel, elements outside the frame
    filled according to ``pad_mode`` and flagged in ``pad``. Line buffers of
    ``kernel_size - 1`` rows of ``max_width`` pixels sit in one block RAM.

    Parameters
    ----------
    kernel_size : int
        K, odd, 1 to 15. ``r = K // 2`` rows and columns of padding surround the frame.
    channels : int
        Channels per pixel, at least 1.
    max_width, max_height : int
        Largest frame (block RAM depth is ``max_width``); ``max_width`` at least
        :attr:`min_width` (``max(r + 1, 3)``, 1 for K = 1), ``max_height`` at least ``r + 1``.
    pixel_shape : shape
        Shape of one channel of a pixel (``unsigned(8)`` for images, ``signed(8)`` for feature maps).

    Members
    -------
    i_stream : In(stream.Signature(pixel_layout))
        Pixels in raster order; ``data[c]``, ``first``, ``last``.
    o_stream : Out(stream.Signature(window_layout))
        One window per pixel, raster order; see :func:`window_layout`.
    width, height : In(unsigned)
        Frame size, sampled when a frame's ``first`` pixel arrives; ``width`` must be
        in ``[min_width, max_width]``, ``height`` in ``[r + 1, max_height]``, or the
        frame is dropped (``errors.bad_size``).
    pad_mode : In(PadMode)
        Padding mode, sampled with ``width``/``height``.
    errors : Out(WindowErrors)
        Sticky error flags, set by malformed input; cleared by ``clear_errors``.
    clear_errors : In(1)
        Clears ``errors`` (a flag raised in the same cycle stays raised).
    busy : Out(1)
        A frame is being received or its last windows are being emitted.

    Timing
    ------
    A frame costs one cycle to sample its parameters, then one cycle per
    pixel, then ``r·width + r`` cycles that emit the windows of the bottom
    rows without taking input: ``frame_cycles(width, height)`` in all when
    nothing stalls. The window of pixel ``n`` (raster index) leaves
    ``window_delay(width)`` cycles after pixel ``n`` is accepted. Inside a
    frame one window leaves per cycle.

    Errors
    ------
    The frame's geometry comes from ``width``/``height``; the stream's markers
    are checked against it, and the output always carries whole frames:

    - ``dropped``: a pixel arrived outside a frame without ``first``; it is discarded.
    - ``early_first``: ``first`` arrived inside a frame; the frame is completed
      with zero pixels, then the marked pixel starts the next frame.
    - ``early_last``: ``last`` arrived before the frame's last pixel; the rest
      of the frame is zero pixels.
    - ``missing_last``: the frame's last pixel has no ``last``; the frame ends
      anyway and pixels up to the next ``first`` are ``dropped``.
    - ``bad_size``: ``width`` or ``height`` out of range at ``first``; input is
      discarded up to ``last`` or the next ``first``, and no window is emitted.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    #: Pipeline stages between a slice's completion and the output register.
    _PIPELINE = 4

    def __init__(self, *, kernel_size=3, channels=1, max_width=640, max_height=480,
                 pixel_shape=unsigned(8)):
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._channels    = check_int("channel count", channels, minimum=1)
        radius = kernel_size // 2
        self._max_width   = check_int("maximum width", max_width, minimum=self.min_width_for(kernel_size),
                                      maximum=65536)
        self._max_height  = check_int("maximum height", max_height, minimum=radius + 1, maximum=65536)
        self._pixel_shape = check_shape("pixel shape", pixel_shape)
        super().__init__({
            "i_stream":     In(stream.Signature(pixel_layout(pixel_shape=self._pixel_shape,
                                                             channels=channels))),
            "o_stream":     Out(stream.Signature(window_layout(
                kernel_size=kernel_size, channels=channels, pixel_shape=self._pixel_shape,
                max_width=max_width, max_height=max_height))),
            "width":        In(range(max_width + 1), init=max_width),
            "height":       In(range(max_height + 1), init=max_height),
            "pad_mode":     In(PadMode),
            "errors":       Out(WindowErrors),
            "clear_errors": In(1),
            "busy":         Out(1),
        })

    kernel_size = property(lambda self: self._kernel_size)
    channels    = property(lambda self: self._channels)
    max_width   = property(lambda self: self._max_width)
    max_height  = property(lambda self: self._max_height)
    pixel_shape = property(lambda self: self._pixel_shape)
    radius      = property(lambda self: self._kernel_size // 2)

    @staticmethod
    def min_width_for(kernel_size):
        """Narrowest frame: ``r + 1`` pixels (reflection needs them), and 3 when ``K > 1``
        (a line-buffer column is rewritten two cycles after it is read)."""
        radius = kernel_size // 2
        return max(radius + 1, 3) if radius else 1

    @property
    def min_width(self):
        return self.min_width_for(self._kernel_size)

    def window_delay(self, width):
        """Cycles from accepting pixel ``n`` to emitting its window, with no stalls."""
        return self.radius * width + self.radius + self._PIPELINE

    def frame_cycles(self, width, height):
        """Cycles from a frame's ``first`` pixel being offered to its last window leaving."""
        return 1 + width * height + self.radius * width + self.radius + self._PIPELINE

    def elaborate(self, platform):
        m = Module()
        k, r, c = self._kernel_size, self.radius, self._channels
        column_shape = data.ArrayLayout(self._pixel_shape, c)      # one pixel, all channels
        pixel_bits = Shape.cast(column_shape).width
        zero_pixel = C(0, pixel_bits)
        index_shape = range(k)

        # -------- frame control: positions of the extended frame -----------------------------
        # Position p = yi·W + xi runs over W·H input pixels, then r·W + r "flush" positions that
        # take no input but push the windows of the bottom rows out.
        mode    = Signal(PadMode, reset_less=True)
        # Counters. Conditions on the runtime frame size are kept in down-counters (distance to
        # the end of the row or frame) so that every test of them is against a constant: no
        # comparator against width/height sits in the control path. Everything a frame's first
        # pixel loads has no reset (a reset would gate the flip-flops' enables on iCE40).
        width_m1 = Signal(self.width.shape(), reset_less=True)          # frame_w - 1
        xi      = Signal(range(self._max_width), reset_less=True)
        x_left  = Signal(range(self._max_width), reset_less=True)    # frame_w - 1 - xi
        yi      = Signal(range(self._max_height + r + 1), reset_less=True)
        y_left  = Signal(range(-(r + 2), self._max_height), reset_less=True)   # frame_h - 1 - yi
        xo      = Signal(range(self._max_width), reset_less=True)
        xo_left = Signal(range(self._max_width), reset_less=True)    # frame_w - 1 - xo
        yo      = Signal(range(self._max_height), reset_less=True)
        yo_left = Signal(range(self._max_height), reset_less=True)   # frame_h - 1 - yo
        rows_above = Signal(range(r + 1), reset_less=True)           # real rows above the current slice's centre
        rows_below = Signal(range(r + 1), reset_less=True)           # and below it, saturated at r
        emit    = Signal(reset_less=True)            # positions from r·W + r on complete a window
        filling = Signal(reset_less=True)            # the frame is being completed with zero pixels
        at_start = Signal(reset_less=True)           # no position of the frame taken yet
        advance = Signal()
        running = Signal()            # the FSM is in RUN
        load_frame = Signal()         # a frame's first pixel is offered outside RUN
        drain_took = Signal()         # DRAIN has taken a pixel
        step    = Signal()            # the pipeline takes position (xi, yi) this cycle
        pixel   = Signal(pixel_bits)

        m.d.comb += advance.eq(~self.o_stream.valid | self.o_stream.ready)

        errors = Signal(WindowErrors)
        raised = Signal(WindowErrors)
        m.d.comb += self.errors.eq(errors)
        with m.If(self.clear_errors):
            m.d.sync += errors.eq(raised)
        with m.Else():
            m.d.sync += errors.eq(errors.as_value() | raised.as_value())

        def saturate(value, limit):
            return Mux(value > limit, limit, value)

        size_ok = ((self.width >= self.min_width) & (self.width <= self._max_width) &
                   (self.height >= r + 1) & (self.height <= self._max_height))
        # The tests of the counters are flags, set when the counters are loaded from their next
        # values' conditions: the stepping logic sees flip-flops, not comparators.
        x_end    = Signal(reset_less=True)           # x_left == 0
        xo_end   = Signal(reset_less=True)           # xo_left == 0
        width_1  = Signal(reset_less=True)           # width_m1 == 0
        y_inside = Signal(reset_less=True)           # y_left >= 0: the position takes an input pixel
        y_final  = Signal(reset_less=True)           # y_left == 0: the frame's last row of input
        y_over   = Signal(reset_less=True)           # y_left == -(r + 1): the last flush row
        xi_emit  = Signal(reset_less=True)           # xi == r - 1
        yi_emit  = Signal(reset_less=True)           # yi == r
        needs_input = y_inside & ~filling
        last_input  = y_final & x_end
        last_position = y_over & xi_emit if r else last_input
        i_payload = self.i_stream.payload

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.i_stream.valid):
                    with m.If(i_payload.first):
                        m.d.comb += load_frame.eq(1)
                        m.d.sync += drain_took.eq(0)
                        with m.If(size_ok):
                            m.next = "RUN"
                        with m.Else():
                            m.d.comb += raised.bad_size.eq(1)
                            m.next = "DRAIN"
                    with m.Else():
                        m.d.comb += [self.i_stream.ready.eq(1), raised.dropped.eq(1)]

            with m.State("DRAIN"):
                with m.If(self.i_stream.valid):
                    with m.If(i_payload.first & drain_took):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.i_stream.ready.eq(1)
                        m.d.sync += drain_took.eq(1)
                        with m.If(i_payload.last):
                            m.next = "IDLE"

            # RUN: every position steps on `advance`, with its pixel if it needs one; that logic
            # is written out flat below, on the `running` flag rather than the state register.
            with m.State("RUN"):
                with m.If(step & last_position):
                    m.next = "IDLE"

        # A pixel of this frame is offered (a `first` after the frame's start is not one).
        offered = self.i_stream.valid & ~(i_payload.first & ~at_start)
        # `go`: the position would step if the pipeline advanced; `advance` (the output's stall,
        # the latest signal) joins it only in the last gate of each enable. The wires are kept
        # so that synthesis does not fold `advance` into deeper logic.
        go          = Signal(attrs={"keep": 1})
        go_emit     = Signal(attrs={"keep": 1})     # go, and a window completes
        go_emit_end = Signal(attrs={"keep": 1})     # go_emit, at the end of an output row
        m.d.comb += [
            go.eq(running & (~needs_input | offered)),
            go_emit.eq(go & emit),
            go_emit_end.eq(go & emit & xo_end),
        ]
        m.d.comb += [
            self.busy.eq(running),
            step.eq(go & advance),
            pixel.eq(Mux(needs_input, i_payload.data, zero_pixel)),
        ]
        with m.If(running & needs_input):
            m.d.comb += self.i_stream.ready.eq(advance & offered)
            with m.If(self.i_stream.valid & i_payload.first & ~at_start):
                m.d.comb += raised.early_first.eq(1)
                m.d.sync += filling.eq(1)
            with m.If(step & i_payload.last & ~last_input):
                m.d.comb += raised.early_last.eq(1)
                m.d.sync += filling.eq(1)
            with m.If(step & ~i_payload.last & last_input):
                m.d.comb += raised.missing_last.eq(1)
        # `running` rises with the move to RUN and falls with the move back to IDLE; the frame
        # size check is only its data input (the enable is load_frame or the last step).
        with m.If(load_frame | (step & last_position)):
            m.d.sync += running.eq(~running & size_ok)

        # The counters load at a frame's first pixel (`load_frame`, outside RUN) and move on
        # `step` (inside RUN): `running`, a flip-flop, chooses between the two values, and the
        # late `step` (it waits for `advance`) is only the flip-flops' enable.
        with m.If(load_frame):
            m.d.sync += [
                mode.eq(self.pad_mode),
                width_m1.eq(self.width - 1), width_1.eq(self.width == 1),
                filling.eq(0),
            ]
        with m.If(load_frame | step):
            with m.If(~running):
                m.d.sync += [
                    at_start.eq(1),
                    xi.eq(0), x_left.eq(self.width - 1),
                    yi.eq(0), y_left.eq(self.height - 1),
                    rows_above.eq(0), rows_below.eq(r),
                    x_end.eq(self.width == 1),
                    y_inside.eq(1), y_final.eq(self.height == 1), y_over.eq(0),
                    xi_emit.eq(r == 1), yi_emit.eq(r == 0),
                ]
            with m.Elif(x_end):
                m.d.sync += [
                    at_start.eq(0),
                    xi.eq(0), x_left.eq(width_m1),
                    yi.eq(yi + 1), y_left.eq(y_left - 1),
                    x_end.eq(width_1), xi_emit.eq(r == 1), yi_emit.eq(yi == r - 1),
                    y_inside.eq(y_left >= 1), y_final.eq(y_left == 1),
                    y_over.eq(y_left == -r),
                    # the next slice's centre row is yi + 1 - r
                    rows_above.eq(saturate(Mux(yi + 1 < r, 0, yi + 1 - r), r)),
                    rows_below.eq(Mux(y_left + (r - 1) < 0, 0, saturate(y_left + (r - 1), r))),
                ]
            with m.Else():
                m.d.sync += [at_start.eq(0), xi.eq(xi + 1), x_left.eq(x_left - 1),
                             x_end.eq(x_left == 1), xi_emit.eq(xi == r - 2)]
        # emit: set at the position r·W + r, then held to the end of the frame
        with m.If(load_frame | (step & ~emit)):
            with m.If(~running):
                m.d.sync += emit.eq(r == 0)
            with m.Else():
                m.d.sync += emit.eq(yi_emit & xi_emit if r else 1)
        with m.If(load_frame | (go_emit & advance)):
            with m.If(~running):
                m.d.sync += [xo.eq(0), xo_left.eq(self.width - 1), xo_end.eq(self.width == 1)]
            with m.Elif(xo_end):
                m.d.sync += [xo.eq(0), xo_left.eq(width_m1), xo_end.eq(width_1)]
            with m.Else():
                m.d.sync += [xo.eq(xo + 1), xo_left.eq(xo_left - 1), xo_end.eq(xo_left == 1)]
        with m.If(load_frame | (go_emit_end & advance)):
            with m.If(~running):
                m.d.sync += [yo.eq(0), yo_left.eq(self.height - 1)]
            with m.Else():
                m.d.sync += [yo.eq(yo + 1), yo_left.eq(yo_left - 1)]

        # Row remapping for the slice completed at this position (its centre row is yi - r) and
        # column remapping for the window completed at this position (its centre is (xo, yo)).
        # Each is an index into K candidates plus a padding flag, per offset.
        def remap(before, after, offset):
            """Index into K candidates (offset ``-r..r`` at ``r``) for ``offset``, and its padding flag.

            ``before``/``after`` count the real rows (columns) available before and after the
            centre, saturated at r.
            """
            outside_before = C(offset, signed(5)) < -before
            outside_after  = C(offset, signed(5)) > after
            index = Signal(index_shape)
            with m.Switch(mode):
                with m.Case(PadMode.REPLICATE):
                    m.d.comb += index.eq(Mux(outside_before, r - before,
                                         Mux(outside_after, r + after, r + offset)))
                with m.Case(PadMode.REFLECT):
                    m.d.comb += index.eq(Mux(outside_before, r - 2 * before - offset,
                                         Mux(outside_after, r + 2 * after - offset, r + offset)))
                with m.Default():
                    m.d.comb += index.eq(r + offset)
            return index, outside_before | outside_after

        cols_left  = Signal(range(r + 1))
        cols_right = Signal(range(r + 1))
        m.d.comb += [
            cols_left.eq(saturate(xo, r)),
            cols_right.eq(saturate(xo_left, r)),
        ]
        row_index, row_pad = zip(*(remap(rows_above, rows_below, dy) for dy in range(-r, r + 1)))
        col_index, col_pad = zip(*(remap(cols_left, cols_right, dx) for dx in range(-r, r + 1)))

        # -------- stage 1: line buffer read ------------------------------------------------------
        sa_valid   = Signal()
        sa_pixel   = Signal(pixel_bits, reset_less=True)
        sa_xi      = Signal.like(xi)
        sa_rows    = [Signal(index_shape, name=f"sa_row_index{j}", reset_less=True) for j in range(k)]
        sa_rowpad  = Signal(k, reset_less=True)
        sa_emit    = Signal()
        sa_cols    = [Signal(index_shape, name=f"sa_col_index{j}", reset_less=True) for j in range(k)]
        sa_colpad  = Signal(k, reset_less=True)
        sa_x       = Signal.like(xo)
        sa_y       = Signal.like(yo)
        sa_first   = Signal(reset_less=True)
        sa_last    = Signal(reset_less=True)
        sa_zero    = Signal(reset_less=True)

        with m.If(advance):
            m.d.sync += [
                sa_valid.eq(step),
                sa_pixel.eq(pixel),
                sa_xi.eq(xi),
                Cat(*sa_rows).eq(Cat(*row_index)),
                sa_rowpad.eq(Cat(*row_pad)),
                sa_emit.eq(step & emit),
                Cat(*sa_cols).eq(Cat(*col_index)),
                sa_colpad.eq(Cat(*col_pad)),
                sa_x.eq(xo),
                sa_y.eq(yo),
                sa_first.eq((xo == 0) & (yo == 0)),
                sa_last.eq(xo_end & (yo_left == 0)),
                sa_zero.eq(mode == PadMode.ZERO),
            ]

        # -------- stage 2: line buffer data registered (ECP5 absorbs this register into the
        # block RAM), slice assembled, column written back ---------------------------------------
        def delayed(signal, stage="s1_"):
            """``signal`` one pipeline step later (loaded on ``advance``)."""
            register = Signal.like(signal, name=stage + signal.name[3:])
            with m.If(advance):
                m.d.sync += register.eq(signal)
            return register

        s1_valid, s1_pixel, s1_xi, s1_rowpad, s1_emit, s1_colpad, s1_x, s1_y, s1_first, s1_last, s1_zero = \
            map(delayed, (sa_valid, sa_pixel, sa_xi, sa_rowpad, sa_emit, sa_colpad, sa_x, sa_y,
                          sa_first, sa_last, sa_zero))
        s1_rows = [delayed(index) for index in sa_rows]
        s1_cols = [delayed(index) for index in sa_cols]

        # raw[j] is the pixel of row (centre - r + j) in the current column; the newest row
        # comes from the input, the K-1 older ones from the line buffer.
        if k > 1:
            # no_rw_check: Yosys builds no read-during-write logic behind the read data (ECP5's
            # DP16KD has no room for it after its 5.8 ns clock-to-output). Inside a frame a column
            # is written two positions after it is read (width >= 3); between frames the last
            # write of a frame can meet the first read of the next, which reads the rows above
            # the new frame: padding replaces them, so that read's value is never used.
            line_buffer = Memory(shape=data.ArrayLayout(pixel_bits, k - 1),
                                 depth=self._max_width, init=[], attrs={"no_rw_check": 1})
            m.submodules.line_buffer = line_buffer
            rd = line_buffer.read_port(domain="sync")
            wr = line_buffer.write_port()
            held = Signal.like(rd.data, reset_less=True)    # data only: no reset logic in its path
            with m.If(advance):
                m.d.sync += held.eq(rd.data)
            m.d.comb += [
                rd.addr.eq(xi),
                rd.en.eq(advance),
                wr.addr.eq(s1_xi),
                wr.en.eq(s1_valid & advance),
                wr.data.eq(Cat(*(held[j] for j in range(1, k - 1)), s1_pixel)),
            ]
            raw = [held[j] for j in range(k - 1)] + [s1_pixel]
        else:
            raw = [s1_pixel]
        raw_array = Array(raw)
        slice_pixels = [Mux(s1_rowpad[j] & s1_zero, zero_pixel, raw_array[s1_rows[j]])
                        for j in range(k)]

        # -------- stage 3: column shift register (slot j holds column offset j - r) ---------------
        columns  = [Signal(pixel_bits * k, name=f"column{j}", reset_less=True) for j in range(k)]
        colpads  = [Signal(k, name=f"column_pad{j}", reset_less=True) for j in range(k)]
        s2_valid = delayed(s1_emit, "s2_")       # a window is complete at this position
        s2_colpad, s2_x, s2_y, s2_first, s2_last, s2_zero = (
            delayed(signal, "s2_") for signal in (s1_colpad, s1_x, s1_y, s1_first, s1_last, s1_zero))
        s2_cols = [delayed(index, "s2_") for index in s1_cols]
        with m.If(advance):
            with m.If(s1_valid):
                m.d.sync += [
                    columns[k - 1].eq(Cat(*slice_pixels)),
                    colpads[k - 1].eq(s1_rowpad),
                ]
                m.d.sync += [columns[j].eq(columns[j + 1]) for j in range(k - 1)]
                m.d.sync += [colpads[j].eq(colpads[j + 1]) for j in range(k - 1)]

        # -------- stage 4: column remapping into the output register ----------------------------
        column_array = Array(columns)
        colpad_array = Array(colpads)
        o_payload = self.o_stream.payload
        with m.If(advance):
            m.d.sync += self.o_stream.valid.eq(s2_valid)
            m.d.sync += [
                o_payload.x.eq(s2_x),
                o_payload.y.eq(s2_y),
                o_payload.first.eq(s2_first),
                o_payload.last.eq(s2_last),
            ]
            for dx in range(k):
                column = column_array[s2_cols[dx]]
                column_pad = colpad_array[s2_cols[dx]]
                for dy in range(k):
                    value = column[dy * pixel_bits:(dy + 1) * pixel_bits]
                    m.d.sync += [
                        o_payload.data[dy][dx].eq(Mux(s2_colpad[dx] & s2_zero, zero_pixel, value)),
                        o_payload.pad[dy][dx].eq(s2_colpad[dx] | column_pad[dy]),
                    ]
        return m

"""WeightReconstructor: MaskDecoder + Interpolator, compressed weight stream in, every weight out."""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .interpolator import Interpolator, weight_layout
from .maskdecoder import MaskDecoder, byte_layout, tensor_layout


__all__ = ["WeightReconstructor"]


class WeightReconstructor(wiring.Component):
    """A compressed weight stream in, the rebuilt tensor out, for the engine's weight memory.

    Every good stream the :class:`~dynsparse.hdl.maskdecoder.MaskDecoder` commits starts a
    pass of the :class:`~dynsparse.hdl.interpolator.Interpolator` over the good bank, which
    streams all ``N`` weights (dropped ones rebuilt) on ``o_stream``, one per clock after
    :meth:`~dynsparse.hdl.interpolator.Interpolator.fill_cycles`. The next stream is
    decoded into the other bank while the pass runs (double buffering); if it is good before
    the pass ends, it waits to be committed (``hold``) so the pass never sees the bank change.

    Parameters
    ----------
    max_entries, timeout_cycles : int
        As :class:`~dynsparse.hdl.maskdecoder.MaskDecoder`.

    Members
    -------
    i_stream : In(stream.Signature(byte_layout))
    o_stream : Out(stream.Signature(weight_layout(max_entries)))
    tensor : Out(tensor_layout(max_entries))
    done, error, streams_ok, streams_bad, busy
        The decoder's status; ``busy`` also while a pass runs.
    """

    def __init__(self, *, max_entries=2048, timeout_cycles=1_000_000):
        self._decoder = MaskDecoder(max_entries=max_entries, timeout_cycles=timeout_cycles)
        self._interpolator = Interpolator(max_entries=max_entries)
        super().__init__({
            "i_stream": In(stream.Signature(byte_layout)),
            "o_stream": Out(stream.Signature(weight_layout(max_entries))),
            "tensor": Out(tensor_layout(max_entries)),
            "done": Out(1),
            "error": Out(4),
            "streams_ok": Out(32),
            "streams_bad": Out(32),
            "busy": Out(1),
        })

    @property
    def max_entries(self):
        return self._decoder.max_entries

    @property
    def timeout_cycles(self):
        return self._decoder.timeout_cycles

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = self._decoder
        m.submodules.interpolator = interpolator = self._interpolator
        wiring.connect(m, wiring.flipped(self.i_stream), decoder.i_stream)
        wiring.connect(m, interpolator.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [
            decoder.rd_addr.eq(interpolator.rd_addr),
            interpolator.rd_data.eq(decoder.rd_data),
            interpolator.rd_sent.eq(decoder.rd_sent),
            interpolator.tensor.eq(decoder.tensor),
            interpolator.start.eq(decoder.done & (decoder.error == 0)),
            decoder.hold.eq(interpolator.busy),
            self.tensor.eq(decoder.tensor),
            self.done.eq(decoder.done),
            self.error.eq(decoder.error),
            self.streams_ok.eq(decoder.streams_ok),
            self.streams_bad.eq(decoder.streams_bad),
            self.busy.eq(decoder.busy | interpolator.busy),
        ]
        return m

"""Measurement harness: a block with its ports behind serial shift registers.

A block with hundreds of port bits cannot be placed on a 48-pin package, and
ports left dangling would let synthesis remove the logic behind them. The
harness feeds every input port of the block from a shift register loaded
through one pin (``si``), captures every output port into a shift register
read through another (``so``), with ``load`` choosing between shifting and
the parallel transfer. All block inputs therefore come from flip-flops and
all outputs go to flip-flops, so the paths nextpnr times are the block's own;
the harness adds only flip-flops (two per port bit, listed separately in the
report, without reset) and no logic in the block's paths. The block's reset
comes from a flip-flop loaded from the ``rst`` pin, as from a board's reset
synchroniser, so no path starts at a pad.
"""

from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Signal, Value
from amaranth.lib import wiring


__all__ = ["SerialHarness", "port_bits"]


def port_bits(component):
    """(input bits, output bits) of a component's signature."""
    inputs = outputs = 0
    for _, member, value in component.signature.flatten(component):
        width = len(Value.cast(value))
        if member.flow == wiring.In:
            inputs += width
        else:
            outputs += width
    return inputs, outputs


class SerialHarness(Elaboratable):
    """Wrap ``block`` so that its only top-level ports are ``si``, ``load``, ``so``, ``clk`` and ``rst``."""

    def __init__(self, block):
        self.block = block
        self.si = Signal()
        self.load = Signal()
        self.so = Signal()
        self.clk = Signal()
        self.rst = Signal()

    @property
    def ports(self):
        return [self.si, self.load, self.so, self.clk, self.rst]

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain()
        m.domains.pin = pin = ClockDomain(reset_less=True)
        rst_q = Signal(reset_less=True)
        m.d.comb += [sync.clk.eq(self.clk), pin.clk.eq(self.clk), sync.rst.eq(rst_q)]
        m.d.pin += rst_q.eq(self.rst)
        m.submodules.block = block = self.block
        inputs = [Value.cast(value) for _, member, value in block.signature.flatten(block) if member.flow == wiring.In]
        outputs = [Value.cast(value) for _, member, value in block.signature.flatten(block) if member.flow == wiring.Out]
        in_width = sum(len(v) for v in inputs)
        out_width = sum(len(v) for v in outputs)

        # The harness's flip-flops have no reset: the reset net then reaches only the block's own
        # flip-flops, and its fan-out into hundreds of harness bits is not a path of the block.
        shift_in = Signal(max(1, in_width), reset_less=True)
        held_in = Signal(max(1, in_width), reset_less=True)
        m.d.sync += shift_in.eq(Cat(self.si, shift_in[:-1]))
        with m.If(self.load):
            m.d.sync += held_in.eq(shift_in)
        if in_width:
            m.d.comb += Cat(*inputs).eq(held_in)

        # Outputs go straight into flip-flops; the shift register loads from those, so its
        # load/shift multiplexer is not in any of the block's paths.
        sampled = Signal(max(1, out_width), reset_less=True)
        m.d.sync += sampled.eq(Cat(*outputs))
        capture = Signal(max(1, out_width), reset_less=True)
        with m.If(self.load):
            m.d.sync += capture.eq(sampled)
        with m.Else():
            m.d.sync += capture.eq(capture[1:])
        m.d.comb += self.so.eq(capture[0])
        return m

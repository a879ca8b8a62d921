"""TFLite-style requantisation stages: ``clamp((acc · multiplier + round) >> shift, -128, 127)``."""

from amaranth.hdl import C, Mux, Signal

from ..golden.sparseconv import SHIFT_MAX


__all__ = ["REQUANT_STAGES", "requantize_stages"]


#: Registers between an accumulator and its requantised value.
REQUANT_STAGES = 4


def requantize_stages(m, advance, values, multiplier, shift, tags):
    """Requantise ``values`` (signed accumulators) in :data:`REQUANT_STAGES` register stages.

    Stage 1 registers the multiplier operands (and the rounding term of
    ``shift``), stage 2 the products (a DSP block with registered inputs and
    output), stage 3 the rounded sums, stage 4 the shifted sums; the clamp
    after stage 4 is combinational. ``tags`` (a list of signals) travel
    beside the values, one register per stage. Every register loads when
    ``advance`` is 1; the first tag is a valid flag. Returns ``(int8 values, delayed
    tags, the valid flag of every stage)``.

    ``multiplier`` and ``shift`` are read when a value enters stage 1.
    """
    def register(value, name, reset_less=True):
        reg = Signal.like(value, name=name, reset_less=reset_less)
        with m.If(advance):
            m.d.sync += reg.eq(value)
        return reg

    valids = []

    def delay(tags, stage):
        tags = [register(tag, f"rq{stage}_tag{i}", reset_less=False) for i, tag in enumerate(tags)]
        valids.append(tags[0])
        return tags

    factor = register(multiplier, "rq1_multiplier")
    amount = register(shift, "rq1_shift")
    rounding = register(((C(1, SHIFT_MAX + 1) << shift) >> 1)[:SHIFT_MAX], "rq1_rounding")
    operands = [register(value, f"rq1_acc{j}") for j, value in enumerate(values)]
    tags = delay(tags, 1)

    products = [register(operand * factor, f"rq2_product{j}") for j, operand in enumerate(operands)]
    amount, rounding = register(amount, "rq2_shift"), register(rounding, "rq2_rounding")
    tags = delay(tags, 2)

    # the product is signed, so the sum is too, one bit wider than the wider operand
    sums = [register(product + rounding, f"rq3_sum{j}") for j, product in enumerate(products)]
    amount = register(amount, "rq3_shift")
    tags = delay(tags, 3)

    # an arithmetic shift: the sign is kept
    shifted = [register(value >> amount, f"rq4_shifted{j}") for j, value in enumerate(sums)]
    tags = delay(tags, 4)

    # the clamp from bit tests (no wide comparator): above 127 when positive with a bit set
    # above bit 6, below −128 when negative with a bit clear there
    out = []
    for value in shifted:
        sign, high = value[-1], value[7:-1]
        over, under = ~sign & high.any(), sign & ~high.all()
        out.append(Mux(over, 127, Mux(under, -128, value[:8].as_signed()))[:8].as_signed())
    return out, tags, valids

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from dynsparse.sim.packing import pack, unpack


def test_round_trip_nested_signed():
    layout = data.StructLayout({
        "data": data.ArrayLayout(data.ArrayLayout(signed(8), 3), 2),
        "flag": unsigned(1),
    })
    rng = np.random.default_rng(1)
    values = rng.integers(-128, 128, size=(5, 2, 3))
    flags = rng.integers(0, 2, size=5)
    words = pack(layout, {"data": values, "flag": flags}, 5)
    assert all(0 <= w < (1 << layout.size) for w in words)
    fields = unpack(layout, words)
    np.testing.assert_equal(fields["data"], values)
    np.testing.assert_equal(fields["flag"], flags)


def test_matches_amaranth_const():
    layout = data.StructLayout({"a": unsigned(3), "b": data.ArrayLayout(signed(4), 2)})
    const = layout.const({"a": 5, "b": [-3, 7]})
    word = const.as_value().value
    fields = unpack(layout, [word])
    assert fields["a"][0] == 5
    np.testing.assert_equal(fields["b"][0], [-3, 7])
    assert pack(layout, {"a": 5, "b": [[-3, 7]]}, 1) == [word]

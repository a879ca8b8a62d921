"""dynsparse: open gateware for CNN layers that adapt their own sparsity to the data.

The gateware lives in :mod:`dynsparse.hdl`, the bit-exact NumPy models in
:mod:`dynsparse.golden`, the cocotb simulation flow in :mod:`dynsparse.sim`
and the board tops in :mod:`dynsparse.boards`.
"""

__version__ = "0.1.0"

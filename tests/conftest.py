"""Run the long tests first, so that the two workers of ``make test`` end together.

``make test`` runs pytest-xdist with ``--dist worksteal``: each worker starts on its share
of the collected tests, in order, and an idle worker takes tests from a busy one's queue.
A minute-long simulation collected last would keep one worker busy after the other has
finished; started first, the short tests fill in around it. Modules stay contiguous, so
module-scoped fixtures are built once per worker.
"""

#: Modules of long tests, longest first: every block's cocotb testbench on both simulators,
#: then every block's Verilog (Yosys synthesis takes up to two minutes a block).
FIRST = ("test_cocotb.py", "test_verilog.py")


def _rank(item):
    module = item.path.name
    module_rank = FIRST.index(module) if module in FIRST else len(FIRST)
    return module_rank, 0 if "test_yosys_synthesises" in item.name else 1


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)          # stable: the rest keeps the collection order

"""Run the long tests first, dealt between the workers, so that the workers of ``make test`` end together.

``make test`` runs pytest-xdist with ``--dist worksteal``: each worker starts on its share
of the collected tests (the first ``N // workers`` to the first worker, and so on), in
order, and an idle worker takes tests from the end of a busy one's queue. A minute-long
simulation collected last would keep one worker busy after the other has finished; started
first, the short tests fill in around it. So the long tests (every block's cocotb testbench
and Yosys synthesis) are dealt to the workers' shares in turn (snake order: 0, 1, 1, 0, …),
each share starting with its long tests and filled up with the short ones in collection
order. Within a share, modules stay contiguous, so module-scoped fixtures are built once
per worker.
"""

#: Modules of long tests, longest first: every block's cocotb testbench on both simulators,
#: then every block's Verilog (Yosys synthesis takes up to two minutes a block).
FIRST = ("test_cocotb.py", "test_verilog.py")


def _rank(item):
    module = item.path.name
    module_rank = FIRST.index(module) if module in FIRST else len(FIRST)
    return module_rank, 0 if "test_yosys_synthesises" in item.name else 1


def _long(item):
    return item.path.name == "test_cocotb.py" or "test_yosys_synthesises" in item.name


def _shares(count, workers):
    """The sizes of the workers' first shares, as the worksteal scheduler cuts them."""
    sizes = []
    for worker in range(workers):
        sizes.append(count // (workers - worker))
        count -= sizes[-1]
    return sizes


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)          # stable: the rest keeps the collection order
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        return
    shares = [[] for _ in range(workers)]
    long = [item for item in items if _long(item)]
    for index, item in enumerate(long):
        lap, place = divmod(index, workers)
        shares[place if lap % 2 == 0 else workers - 1 - place].append(item)
    sizes = _shares(len(items), workers)
    if any(len(share) > size for share, size in zip(shares, sizes)):
        return                     # more long tests than a share holds: keep the sorted order
    short = iter(item for item in items if not _long(item))
    for share, size in zip(shares, sizes):
        share.extend(next(short) for _ in range(size - len(share)))
    items[:] = [item for share in shares for item in share]

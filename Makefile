# Thin wrapper: every target is one command of the `dynsparse` CLI or pytest.
VENV      ?= .venv
PYTHON    := $(VENV)/bin/python
DYNSPARSE := $(VENV)/bin/dynsparse
BLOCK     ?=
SIM       ?= icarus
ARGS      ?=

.PHONY: install test verilog sim demo bench bitstream flash report run list clean
BOARD     ?= icebreaker
PORT      ?= /dev/ttyUSB1

install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	$(DYNSPARSE) setup

test:
	$(PYTHON) -m pytest -n auto --dist worksteal --durations=10

verilog:
	$(DYNSPARSE) verilog $(if $(BLOCK),--block $(BLOCK)) $(ARGS)

sim:
	$(DYNSPARSE) sim --block $(BLOCK) --sim $(SIM) $(if $(WAVES),--waves) $(ARGS)

demo:
	$(DYNSPARSE) demo $(ARGS)

bench:
	$(DYNSPARSE) bench $(ARGS)

bitstream:
	$(DYNSPARSE) bitstream --board $(BOARD) $(ARGS)

flash:
	$(DYNSPARSE) flash --board $(BOARD) $(ARGS)

report:
	$(DYNSPARSE) report $(ARGS)

run:
	$(DYNSPARSE) run --port $(PORT) $(IMAGE) $(ARGS)

list:
	$(DYNSPARSE) list

clean:
	rm -rf build

# The README's two commands: `make demo` (the main job on the bundled synthetic sequence) and `make test`.
VENV ?= .venv

.PHONY: setup demo test
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/mslam-ns demo

test: setup
	$(VENV)/bin/python -m pytest -q tests


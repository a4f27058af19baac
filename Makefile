# box_panoptic: the two commands of README.md, and developer helpers.
#   make synthetic   set up + main job (synthetic dataset, training, evaluation, pictures)
#   make test        set up + lint + the test suite
PY := .venv/bin/python

.PHONY: install synthetic test lint format

install:
	bash tools/install.sh

synthetic: install
	$(PY) tools/run_synthetic.py

lint: install
	$(PY) -m ruff check box_panoptic tests tools train_net.py demo configs
	$(PY) -m black --check -q box_panoptic tests tools train_net.py demo configs

test: lint
	bash tools/run_tests.sh

format: install
	$(PY) -m ruff check --fix box_panoptic tests tools train_net.py demo configs
	$(PY) -m black -q box_panoptic tests tools train_net.py demo configs

# box_panoptic: the two commands of README.md, and developer helpers.
#   make synthetic   set up + main job (synthetic dataset, training, evaluation, pictures)
#   make test        set up + lint + the test suite
#   make test-d2main set up a second venv with detectron2 main (vendored, C++ extension built)
#                    and run the test suite there
PY := .venv/bin/python

.PHONY: install synthetic test test-d2main lint format

install:
	bash tools/install.sh

synthetic: install
	$(PY) tools/run_synthetic.py

lint: install
	$(PY) -m ruff check box_panoptic tests tools train_net.py demo configs
	$(PY) -m black --check -q box_panoptic tests tools train_net.py demo configs

test: lint
	bash tools/run_tests.sh

test-d2main:
	DETECTRON2=main VENV=.venv-d2main bash tools/install.sh
	VENV=.venv-d2main bash tools/run_tests.sh

format: install
	$(PY) -m ruff check --fix box_panoptic tests tools train_net.py demo configs
	$(PY) -m black -q box_panoptic tests tools train_net.py demo configs

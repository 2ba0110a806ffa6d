PYTHON ?= python

.PHONY: build clean test lint

# Compile the Cython twins next to the pure modules (src/infrakit_instance/*.so),
# with the build requirements pyproject.toml declares (a venv's own setuptools
# may be too old for its metadata).
build:
	$(PYTHON) -m pip install -q "setuptools>=77" "Cython==3.3.1"
	$(PYTHON) setup.py build_ext --inplace

# Stale in-place .so files shadow edited .pyx sources: remove every build product.
clean:
	rm -rf build
	rm -f src/infrakit_instance/*.so
	rm -f ext/infrakit_instance/*.c ext/infrakit_instance/*.html

test: build
	$(PYTHON) -m pytest tests

# The house rules CI runs (pip install -e '.[dev]').
lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks
	$(PYTHON) -m mypy

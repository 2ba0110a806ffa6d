PYTHON ?= python

.PHONY: build clean test

# Compile the Cython twins next to the pure modules (src/infrakit_instance/*.so).
build:
	$(PYTHON) setup.py build_ext --inplace

# Stale in-place .so files shadow edited .pyx sources: remove every build product.
clean:
	rm -rf build
	rm -f src/infrakit_instance/*.so
	rm -f ext/infrakit_instance/*.c ext/infrakit_instance/*.html

test: build
	$(PYTHON) -m pytest tests

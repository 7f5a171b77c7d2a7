# The two commands of README.md: `make demo` (the main job on the built-in data) and `make test`.
# Both install missing Debian packages (scripts/install-deps.sh) and build first; `make test` also
# makes the Python environment of the Hugging Face interop test (install-deps.sh --hf).
PRESET ?= release
JOBS ?= $(shell nproc)
WERROR ?= 0
CMAKE_ARGS ?=
ifeq ($(WERROR),1)
CMAKE_ARGS += -DULTRAMOE_WERROR=ON
endif

.PHONY: all deps build test test-unit demo goldens bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake --preset $(PRESET) $(CMAKE_ARGS) > build-configure.log || (cat build-configure.log; exit 1)
	@cmake --build --preset $(PRESET) -j $(JOBS)

# the interop test needs the pinned torch/transformers environment (scripts/install-deps.sh --hf)
test: build
	@scripts/install-deps.sh --hf
	ctest --preset $(PRESET) -j $(JOBS) --timeout 900

test-unit: build
	ctest --preset $(PRESET) -j $(JOBS) -L unit

demo: build
	@scripts/install-deps.sh --demo
	scripts/demo.sh

# Regenerate the golden files of the PyTorch reference model (needs --dev dependencies).
goldens:
	@scripts/install-deps.sh --dev
	/usr/bin/python3 tests/reference/make_goldens.py --out tests/golden

bench: build
	./build/$(PRESET)/bench/bench_ops

clean:
	rm -rf build build-configure.log

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

.PHONY: all deps build test test-unit demo goldens bench clean build-cuda test-cuda test-cuda-emu

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

# The CUDA backend. build-cuda compiles it with nvcc (no GPU needed); test-cuda runs the
# cuda-labelled tests on a GPU; test-cuda-emu runs them on the CPU emulation of CUDA (the
# kernels' logic, without a GPU).
build-cuda: deps
	@cmake --preset cuda $(CMAKE_ARGS) > build-configure-cuda.log || (cat build-configure-cuda.log; exit 1)
	@cmake --build --preset cuda -j $(JOBS) --target ultramoe test_cuda

test-cuda: build-cuda
	ctest --preset cuda -j 1 --timeout 900

test-cuda-emu: deps
	@cmake --preset cuda-emu $(CMAKE_ARGS) > build-configure-cuda-emu.log || (cat build-configure-cuda-emu.log; exit 1)
	@cmake --build --preset cuda-emu -j $(JOBS) --target ultramoe test_cuda test_cuda_emu
	ctest --preset cuda-emu -j $(JOBS) --timeout 900

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
	rm -rf build build-configure.log build-configure-cuda.log build-configure-cuda-emu.log

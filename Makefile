# Front door.  `make demo` and `make test` do all the set-up on a fresh
# Debian machine (scripts/deps.sh installs what is missing).
#
#   make          build into build/ (with fault points, for tests and demo)
#   make test     build and run the whole suite (ctest)
#   make demo     build and run the demo on the embedded default (SQLite)
#   make bench    build and run the benchmarks
#   make docs     write docs/CLI.md's driver sections from the drivers' tables
#   make install  release build (no fault points) installed to PREFIX
#   make asan     AddressSanitizer + UBSan build of the tests, and run them
#   make format   clang-format every C file (format-check: only check, as CI does)

PREFIX ?= /usr/local
BUILD  ?= build
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps build test demo bench docs install asan clean format format-check

all: build

deps:
	@scripts/deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DOUTBOX_FAULT_INJECTION=ON $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	@scripts/demo.sh $(BUILD)

bench: build
	@scripts/bench.sh $(BUILD)

docs: build
	@cmake --build $(BUILD) --target docs

install: deps
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DOUTBOX_BUILD_TESTS=OFF \
	      -DOUTBOX_BUILD_BENCH=OFF -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build build-release -j $(JOBS)
	cmake --install build-release

asan:
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DOUTBOX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DOUTBOX_BUILD_BENCH=OFF $(CMAKE_FLAGS)"

# Every C source and header of the tree (git's list; find without git).
FORMAT_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null || \
                 find include src cmd tests bench examples -name '*.[ch]')

format:
	clang-format -i $(FORMAT_FILES)

# What CI runs: fails, naming each place, when a file is not formatted as
# .clang-format says (fix with `make format`).
format-check:
	@clang-format --dry-run -Werror $(FORMAT_FILES)

clean:
	rm -rf build build-asan build-release

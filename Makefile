# Front door.  `make demo` and `make test` do all the set-up on a fresh
# Debian machine (scripts/deps.sh installs what is missing).
#
#   make          build into build/ (with fault points, for tests and demo)
#   make test     build and run the whole suite (ctest)
#   make demo     build and run the demo on the embedded default (SQLite)
#   make bench    build and run the benchmarks
#   make docs     write docs/CLI.md's driver sections from the drivers' tables
#   make man      write the manual pages into build/man (also part of make build)
#   make deb      the Debian packages (liboutbox0, liboutbox-dev, outbox) into
#                 build-deb/, with dpkg-buildpackage -b -us -uc
#   make install  release build (no fault points) installed to PREFIX
#   make asan     AddressSanitizer + UBSan build of the tests, and run them
#   make format   clang-format every C file (format-check: only check, as CI does)
#   make fuzz     libFuzzer (clang) on every parser of untrusted input, FUZZ_SECONDS
#                 (60) each, from tests/fuzz/corpus/<target>; new inputs go to
#                 build-fuzz/corpus-new/<target>, crashes to build-fuzz/artifacts/
#   make fuzz-replay  every target over its committed corpus, then FUZZ_SECONDS (20)
#                 of fuzzing each (CI)
#   make soak     SOAK_MINUTES (30) of mixed load, kills and server restarts on the
#                 ASan build, sampling the relays' memory, descriptors and threads
#                 (not in CI; docs/RELIABILITY.md records a run)

PREFIX ?= /usr/local
BUILD  ?= build
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps build test demo bench docs install asan clean format format-check fuzz \
        fuzz-build fuzz-replay soak man deb

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

man: build
	@cmake --build $(BUILD) --target man

# The packages are a release build without tests, benchmarks or fault points
# (debian/rules); dpkg-buildpackage leaves them in the checkout's parent,
# from where they are moved to build-deb/, and its own files are removed.
deb:
	@command -v dpkg-buildpackage >/dev/null && command -v dh >/dev/null || \
	  { echo "make deb: needs dpkg-dev and debhelper (apt-get install dpkg-dev debhelper)"; exit 1; }
	dpkg-buildpackage -b -us -uc
	rm -rf build-deb && mkdir -p build-deb
	@set -e; v=$$(dpkg-parsechangelog -S Version); a=$$(dpkg --print-architecture); \
	  for f in ../*_$${v}_*.deb ../*_$${v}_*.ddeb ../outbox_$${v}_$$a.changes \
	           ../outbox_$${v}_$$a.buildinfo; do \
	    [ -e "$$f" ] && mv "$$f" build-deb/ || true; done
	debian/rules clean
	@ls build-deb

install: deps
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DOUTBOX_BUILD_TESTS=OFF \
	      -DOUTBOX_BUILD_BENCH=OFF -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build build-release -j $(JOBS)
	cmake --install build-release

ASAN_CMAKE = -DOUTBOX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DOUTBOX_BUILD_BENCH=OFF

asan:
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="$(ASAN_CMAKE) $(CMAKE_FLAGS)"

# The relays' resident set is judged for growth: ASan's quarantine of freed
# memory (256 MB by default) is kept small so that it levels off early.
SOAK_MINUTES ?= 30
soak: deps
	@cmake -S . -B build-asan -DOUTBOX_FAULT_INJECTION=ON $(ASAN_CMAKE) $(CMAKE_FLAGS) >/dev/null
	@cmake --build build-asan -j $(JOBS) --target outbox soak
	cd build-asan && SOAK_MINUTES=$(SOAK_MINUTES) OUTBOX_BIN=$$PWD/outbox \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/soak

# Fuzzing: tests/fuzz/fuzz_<target>.c built with clang, libFuzzer, ASan and
# UBSan into build-fuzz/.  The committed corpus is read, never written: new
# inputs go to build-fuzz/corpus-new/<target> (copy the ones worth keeping
# into tests/fuzz/corpus/<target>).  A crash stops the run and leaves its
# input in build-fuzz/artifacts/<target>/.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS  = $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_RUN      = mkdir -p $(FUZZ_BUILD)/corpus-new/$$t $(FUZZ_BUILD)/artifacts/$$t && \
	$(FUZZ_BUILD)/fuzz_$$t -timeout=10 -rss_limit_mb=2048 \
	  -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ \
	  $$(test -f tests/fuzz/$$t.dict && echo -dict=tests/fuzz/$$t.dict)

fuzz-build:
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DOUTBOX_FUZZ=ON -DOUTBOX_BUILD_TESTS=OFF \
	      -DOUTBOX_BUILD_BENCH=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(FUZZ_BUILD) --target fuzzers -j $(JOBS)

fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
	  $(FUZZ_RUN) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    $(FUZZ_BUILD)/corpus-new/$$t tests/fuzz/corpus/$$t; \
	done

fuzz-replay: FUZZ_SECONDS = 20
fuzz-replay: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz_$$t: replay tests/fuzz/corpus/$$t"; \
	  $(FUZZ_BUILD)/fuzz_$$t -runs=0 tests/fuzz/corpus/$$t; \
	done
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SECONDS)

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
	rm -rf build build-asan build-release build-deb $(FUZZ_BUILD)

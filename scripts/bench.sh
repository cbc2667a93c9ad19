#!/usr/bin/env bash
# Runs the SQLite benchmarks (bench/bench_sqlite_drain.c and
# bench/bench_sqlite_enqueue.c, described in docs/BENCHMARKS.md) on a Release
# build and prints the machine they ran on.  Usage: scripts/bench.sh [BUILD_DIR]
#
# BUILD_DIR is used as is when it is a Release build without fault points;
# otherwise (the default `make` tree has fault points compiled in) a Release
# tree is configured and built in build-bench/ next to it, with only the
# drivers the benchmarks use (SQLite store, discard: and file:).  Settings:
#   OUTBOX_BENCH_N       messages drained (default 1000000)
#   OUTBOX_BENCH_BATCH   relay batch size (default 512)
#   OUTBOX_BENCH_REPEAT  runs per case, median reported (default 3)
#   OUTBOX_BENCH_ROWS    business rows per enqueue case (default 100000)
#   TMPDIR               where the databases go (default /tmp); needs about
#                        1.6 KB per message free (1.6 GB for the default N)
# The output is also saved to bench-results.txt in the tree that was used.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
n=${OUTBOX_BENCH_N:-1000000}
batch=${OUTBOX_BENCH_BATCH:-512}
repeat=${OUTBOX_BENCH_REPEAT:-3}
rows=${OUTBOX_BENCH_ROWS:-100000}

is_release_tree() {
    local cache=$1/CMakeCache.txt
    [[ -f $cache ]] &&
        grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$cache" &&
        ! grep -q '^OUTBOX_FAULT_INJECTION:BOOL=ON$' "$cache" &&
        ! grep -q '^OUTBOX_SANITIZE:BOOL=ON$' "$cache"
}

if is_release_tree "$build"; then
    tree=$build
else
    tree=$src/build-bench
    echo "bench: building a Release tree without fault points in $tree" >&2
    cmake -S "$src" -B "$tree" -DCMAKE_BUILD_TYPE=Release -DOUTBOX_FAULT_INJECTION=OFF \
        -DOUTBOX_SANITIZE=OFF -DOUTBOX_BUILD_TESTS=OFF -DOUTBOX_BUILD_BENCH=ON \
        -DOUTBOX_WITH_POSTGRES=OFF -DOUTBOX_WITH_HTTP=OFF -DOUTBOX_WITH_NATS=OFF \
        -DOUTBOX_WITH_KAFKA=OFF >/dev/null
fi
cmake --build "$tree" -j "$(nproc 2>/dev/null || echo 2)" \
    --target bench_sqlite_drain bench_sqlite_enqueue >/dev/null

cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$tree/CMakeCache.txt"; }
cc=$(cache_value CMAKE_C_COMPILER)
cflags="$(cache_value CMAKE_C_FLAGS) $(cache_value CMAKE_C_FLAGS_RELEASE)"
{
    echo "== machine"
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu:     $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "memory:  $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel:  $(uname -sr)"
    echo "disk:    $(df -P "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $1 }') for ${TMPDIR:-/tmp}"
    echo "compiler: $("$cc" --version | head -1), Release:${cflags}"
    echo "sqlite:  $(pkg-config --modversion sqlite3 2>/dev/null || echo unknown) (system library)"
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) before the run"
    echo
    echo "== bench_sqlite_drain -n $n -b $batch -r $repeat"
    "$tree/bench/bench_sqlite_drain" -n "$n" -b "$batch" -r "$repeat"
    echo
    echo "== bench_sqlite_enqueue -n $rows -r $repeat"
    "$tree/bench/bench_sqlite_enqueue" -n "$rows" -r "$repeat"
    echo
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) after the run"
} 2>&1 | tee "$tree/bench-results.txt"

# Brokers (bench/bench_nats.c, described in docs/BENCHMARKS.md): the relay
# into NATS JetStream next to nats.c's raw async-publish rate, PostgreSQL ->
# JetStream and Kafka (librdkafka mock cluster) when those drivers are built.
# Needs /usr/sbin/nats-server; without it (or without nats.c) this part is
# skipped with a message and does not fail the run.  Settings:
#   OUTBOX_BENCH_BROKER_N  messages per case (default 200000)
broker_n=${OUTBOX_BENCH_BROKER_N:-200000}
if [[ ! -x /usr/sbin/nats-server ]]; then
    echo "bench: skipping bench_nats: /usr/sbin/nats-server not found (install the nats-server package)" |
        tee -a "$tree/bench-results.txt"
else
    if grep -q '^OUTBOX_WITH_NATS:BOOL=OFF$' "$tree/CMakeCache.txt"; then
        btree=$src/build-bench-brokers
        echo "bench: building a Release tree with the broker drivers in $btree" >&2
        cmake -S "$src" -B "$btree" -DCMAKE_BUILD_TYPE=Release -DOUTBOX_FAULT_INJECTION=OFF \
            -DOUTBOX_SANITIZE=OFF -DOUTBOX_BUILD_TESTS=OFF -DOUTBOX_BUILD_BENCH=ON >/dev/null
    else
        btree=$tree
    fi
    cmake --build "$btree" -j "$(nproc 2>/dev/null || echo 2)" --target bench_nats >/dev/null
    set +e
    {
        echo
        echo "== bench_nats -n $broker_n"
        "$btree/bench/bench_nats" -n "$broker_n"
    } 2>&1 | tee -a "$tree/bench-results.txt"
    code=${PIPESTATUS[0]}
    set -e
    if [[ $code -eq 77 ]]; then
        echo "bench: bench_nats skipped (see above)" | tee -a "$tree/bench-results.txt"
    elif [[ $code -ne 0 ]]; then
        exit "$code"
    fi
fi

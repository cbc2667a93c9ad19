#!/usr/bin/env bash
# test_alloc_cli.sh - the allocation-failure sweep of the `outbox` command:
# enqueue, status, list, retry, drop and relay --once run with
# OUTBOX_ALLOC_FAIL=N (the library's N-th allocation fails, see
# src/core/alloc.c) for N = 1, 2, ... until a run makes fewer than N
# allocations (no "injected allocation failure" on stderr).  Each run must
# exit 0, or 1/2 with a message; never die of a signal or a sanitizer
# report.  Afterwards the outbox must be consistent: an enqueue's message
# exists iff it exited 0, retry and drop changed everything or nothing,
# relay marked nothing sent that is not in its output file, and a
# fault-free relay then delivers every message; `outbox status` works.
#
# The relay sweep tries every OUTBOX_SWEEP_STRIDE-th point (default 4, from
# a random offset); the others try every point.  Needs a build with
# OUTBOX_FAULT_INJECTION (skips otherwise) and sqlite3.
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
for tool in sqlite3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done

# Many fresh databases: on tmpfs when there is one (fsync costs time there
# is no need to spend).
if [ -z "${TMPDIR:-}" ] && [ -w /dev/shm ]; then TMP=$(mktemp -d -p /dev/shm); else TMP=$(mktemp -d); fi
trap 'rm -rf "$TMP"' EXIT
unset OUTBOX_STORE OUTBOX_TO OUTBOX_FAULT
DBF=$TMP/cli.db
DB=sqlite:$DBF
OUT=$TMP/events.jsonl
FAILED=0
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
q() { sqlite3 "$DBF" "$1"; }

OUTBOX_ALLOC_FAIL=1 "$OUTBOX_BIN" status --store "sqlite:$TMP/probe.db" >/dev/null 2>"$TMP/probe"
grep -q "injected allocation failure" "$TMP/probe" ||
    { echo "skip: $OUTBOX_BIN has no allocation hook (build with OUTBOX_FAULT_INJECTION=ON)"; exit 77; }

# A store with 4 pending messages over two aggregates, made once and copied.
"$OUTBOX_BIN" init --store "sqlite:$TMP/template.db" >/dev/null || exit 1
for i in 1 2 3 4; do
    "$OUTBOX_BIN" enqueue --store "sqlite:$TMP/template.db" --type T --aggregate-id "a$((i % 2))" \
        --payload "{\"n\":$i}" --header tenant=t1 >/dev/null || exit 1
done
sqlite3 "$TMP/template.db" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
fresh() {
    rm -f "$DBF" "$DBF-wal" "$DBF-shm" "$OUT"
    cp "$TMP/template.db" "$DBF"
}
fail_all() { q "UPDATE outbox SET status = 'failed', attempts = 1, last_error = 'x'"; }

# runs "$@" with OUTBOX_ALLOC_FAIL=$N; sets RC; INJECTED=1 when the failure
# happened.  Fails the test on a crash or an exit without a message.
run_armed() {
    OUTBOX_ALLOC_FAIL=$N "$OUTBOX_BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    RC=$?
    INJECTED=0
    grep -q "injected allocation failure" "$TMP/err" && INJECTED=1
    if [ "$RC" -ge 128 ] || grep -Eq "Sanitizer|runtime error" "$TMP/err"; then
        fail "$1 N=$N: exit $RC"
        sed 's/^/    /' "$TMP/err" | head -20
    elif [ "$RC" -ne 0 ] && [ "$RC" -ne 1 ] && [ "$RC" -ne 2 ]; then
        fail "$1 N=$N: exit $RC, want 0, 1 or 2"
    elif [ "$RC" -ne 0 ] && ! grep -v "injected allocation failure" "$TMP/err" | grep -q .; then
        fail "$1 N=$N: exit $RC without a message"
    fi
}

# (python3 is not used per run: on a busy machine it takes seconds to start)
status_sane() {
    if ! "$OUTBOX_BIN" status --store "$DB" --json >"$TMP/status" 2>"$TMP/status.err" ||
        [ "$(sqlite3 :memory: "SELECT json_extract(readfile('$TMP/status'), '\$.pending') >= 0
            AND json_extract(readfile('$TMP/status'), '\$.failed') >= 0")" != 1 ]; then
        fail "$1 N=$N: status afterwards: $(cat "$TMP/status.err")"
    fi
}

# every message marked sent is in the output file, which holds whole JSON
# lines only
sent_delivered() {
    local id line
    if [ -f "$OUT" ]; then
        while IFS= read -r line; do
            printf '%s' "$line" >"$TMP/line"
            [ "$(sqlite3 :memory: "SELECT json_valid(readfile('$TMP/line'))")" = 1 ] ||
                fail "$1 N=$N: $OUT holds a line that is not JSON: $line"
        done <"$OUT"
    fi
    for id in $(q "SELECT id FROM outbox WHERE status = 'sent'"); do
        grep -q "\"id\":\"$id\"" "$OUT" 2>/dev/null ||
            fail "$1 N=$N: $id marked sent but not in $OUT"
    done
}

# sweep NAME STRIDE: runs step_NAME for N = 1.. (every STRIDE-th) until no
# failure was injected.
sweep() {
    local name=$1 stride=$2 tried=0
    N=$((1 + RANDOM % stride))
    while :; do
        "step_$name"
        tried=$((tried + 1))
        [ "$INJECTED" = 1 ] || break
        [ "$N" -lt 20000 ] || { fail "$name: no end after N=$N"; break; }
        N=$((N + stride))
    done
    echo "  $name: $((N - 1)) allocation points, $tried tried"
}

step_enqueue() {
    local before after
    before=$(q "SELECT count(*) FROM outbox")
    run_armed enqueue --store "$DB" --type OrderPlaced --aggregate-type Order --aggregate-id 42 \
        --payload '{"total":12.5}' --header correlation_id=c-1
    after=$(q "SELECT count(*) FROM outbox")
    if [ "$RC" -eq 0 ]; then
        [ "$after" -eq $((before + 1)) ] || fail "enqueue N=$N: exit 0 but $before -> $after rows"
    else
        [ "$after" -eq "$before" ] || fail "enqueue N=$N: failed but $before -> $after rows"
    fi
    status_sane enqueue
}

step_status() {
    run_armed status --store "$DB" --json
    status_sane status
}

step_list() {
    run_armed list --store "$DB" --json
    if [ "$RC" -eq 0 ] &&
        [ "$(sqlite3 :memory: "SELECT json_array_length(readfile('$TMP/out'))")" != 4 ]; then
        fail "list N=$N: exit 0 with a wrong list"
    fi
}

# all_or_nothing SQL CMD...: on the 4 messages made Failed, runs CMD armed;
# SQL counts the messages it has not dealt with: 0 when it exited 0, 0 or 4
# (everything or nothing changed) when it failed.
all_or_nothing() {
    local sql=$1 left
    shift
    fresh
    fail_all
    run_armed "$@"
    left=$(q "$sql")
    if [ "$RC" -eq 0 ]; then
        [ "$left" -eq 0 ] || fail "$1 N=$N: exit 0 but $left of 4 left"
    else
        [ "$left" -eq 4 ] || [ "$left" -eq 0 ] || fail "$1 N=$N: $left of 4 left"
    fi
    status_sane "$1"
}

step_retry() {
    all_or_nothing "SELECT count(*) FROM outbox WHERE status = 'failed'" \
        retry --store "$DB" --all-failed
}

step_drop() {
    all_or_nothing "SELECT count(*) FROM outbox" \
        drop --store "$DB" --all-failed --archive "file:$TMP/dropped.jsonl"
}

step_relay() {
    local i
    fresh
    run_armed relay --store "$DB" --to "file:$OUT" --once --on-sent mark --backoff-base 1ms \
        --backoff-max 5ms --max-attempts 1000 --batch 3
    sent_delivered relay
    status_sane relay
    for i in 1 2 3 4 5 6 7 8 9 10; do
        "$OUTBOX_BIN" relay --store "$DB" --to "file:$OUT" --once --on-sent mark \
            --backoff-base 1ms --backoff-max 5ms --max-attempts 1000 >/dev/null 2>&1
        [ "$(q "SELECT count(*) FROM outbox WHERE status <> 'sent'")" -eq 0 ] && break
        sleep 0.05
    done
    [ "$(q "SELECT count(*) FROM outbox WHERE status = 'sent'")" -eq 4 ] ||
        fail "relay N=$N: not everything delivered after a fault-free run: $(q 'SELECT status, last_error FROM outbox')"
    sent_delivered relay
}

echo "allocation points swept per command:"
fresh
sweep enqueue 1
fresh
sweep status 1
sweep list 1
sweep retry 1
sweep drop 1
sweep relay "${OUTBOX_SWEEP_STRIDE:-4}"

[ "$FAILED" -eq 0 ] || { echo "$FAILED failure(s)"; exit 1; }
echo "all passed"

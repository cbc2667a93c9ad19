#!/usr/bin/env bash
# test_notify.sh - `outbox relay` speaks systemd's notification protocol
# (Type=notify, sd_notify(3)) without systemd: the test binds the
# datagram socket systemd would, points NOTIFY_SOCKET at it, and checks
# what arrives:
#
#   1. READY=1 once the relay runs, with a STATUS= line; STATUS= lines that
#      count what it published; WATCHDOG=1 again and again while it runs
#      (WATCHDOG_USEC); STOPPING=1 on SIGTERM, and a clean exit 0
#   2. an abstract socket ('@name'), and WATCHDOG_PID naming another
#      process: no WATCHDOG=1 then
#   3. no NOTIFY_SOCKET: the relay runs as before
#
# Needs $OUTBOX_BIN (set by ctest) and python3 (exit 77 without).
set -u
. "$(dirname "${BASH_SOURCE[0]}")/support/checks.sh"

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
command -v python3 >/dev/null 2>&1 || { echo "skip: python3 not installed"; exit 77; }

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP" || exit 1
unset OUTBOX_STORE OUTBOX_TO OUTBOX_FAULT NOTIFY_SOCKET WATCHDOG_USEC WATCHDOG_PID


# listen ADDRESS LOG: receives datagrams on ADDRESS (a path, or @name for
# the abstract namespace) and appends each to LOG as one line, its
# newlines shown as '|', after "<milliseconds since start> ".  Started in
# the background; ready once ADDRESS.bound exists.
listen() {
    python3 - "$1" "$2" <<'EOF' &
import os, socket, sys, time
addr, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
open(log + ".bound", "w").close()
start = time.monotonic()
while True:
    data = s.recv(4096).decode()
    with open(log, "a") as f:
        f.write("%d %s\n" % ((time.monotonic() - start) * 1000, data.replace("\n", "|")))
EOF
    PIDS+=($!)
    disown $!
    for _ in $(seq 100); do [ -e "$2.bound" ] && return 0; sleep 0.05; done
    fail "the test's notify socket $1 was not bound"
    return 1
}

# wait_for LOG PATTERN [SECONDS]: until a line of LOG matches PATTERN.
wait_for() {
    for _ in $(seq $((${3:-10} * 20))); do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

"$OUTBOX_BIN" init --store sqlite:app.db >/dev/null 2>&1 || { echo "FAIL: init"; exit 1; }

# ---- 1. READY, STATUS, WATCHDOG, STOPPING ---------------------------------
listen "$TMP/notify.sock" "$TMP/n1.log" || exit 1
NOTIFY_SOCKET=$TMP/notify.sock WATCHDOG_USEC=400000 \
    "$OUTBOX_BIN" relay --store sqlite:app.db --to file:out.jsonl --poll-interval 100ms \
    2>relay1.err &
relay=$!
PIDS+=("$relay")
check "READY=1 arrives once the relay runs" wait_for n1.log '(^| |\|)READY=1'
check "READY=1 comes with a STATUS= line naming the destination" \
    grep -qE 'READY=1\|STATUS=publishing to file:out.jsonl: 0 published' n1.log
for i in 1 2 3; do
    "$OUTBOX_BIN" enqueue --store sqlite:app.db --type Ping --aggregate-id "a$i" >/dev/null ||
        fail "enqueue $i"
done
check "STATUS= counts what was published" wait_for n1.log 'STATUS=publishing to .*: 3 published' 10
sleep 1.5
watchdogs=$(grep -c 'WATCHDOG=1' n1.log)
check "WATCHDOG=1 keeps arriving (every WATCHDOG_USEC/2: $watchdogs in ~2 s)" \
    test "$watchdogs" -ge 4
check "no STOPPING=1 before the stop" test "$(grep -c 'STOPPING=1' n1.log)" = 0
kill -TERM "$relay"
wait "$relay"
rc=$?
check "SIGTERM: exit 0 (was $rc)" test "$rc" = 0
check "STOPPING=1 arrives on SIGTERM" wait_for n1.log 'STOPPING=1' 2
check "STOPPING=1 is sent once" test "$(grep -c 'STOPPING=1' n1.log)" = 1
ready_at=$(grep -m1 'READY=1' n1.log | cut -d' ' -f1)
stop_at=$(grep -m1 'STOPPING=1' n1.log | cut -d' ' -f1)
check "READY=1 comes before STOPPING=1" test "$ready_at" -le "$stop_at"
check "the relay published the messages" test "$(wc -l <out.jsonl)" = 3
check "nothing logged about notifying" bash -c "! grep -q 'notify' relay1.err"

# ---- 2. abstract socket; a watchdog meant for another process ---------------
name="@outbox-test-notify-$$"
listen "$name" "$TMP/n2.log" || exit 1
NOTIFY_SOCKET=$name WATCHDOG_USEC=200000 WATCHDOG_PID=1 \
    "$OUTBOX_BIN" relay --store sqlite:app.db --to file:out.jsonl 2>relay2.err &
relay=$!
PIDS+=("$relay")
check "READY=1 over an abstract socket" wait_for n2.log 'READY=1'
sleep 0.6
kill -TERM "$relay"
wait "$relay"
check "abstract socket: exit 0" test $? = 0
check "STOPPING=1 over an abstract socket" wait_for n2.log 'STOPPING=1' 2
check "no WATCHDOG=1 when WATCHDOG_PID names another process" \
    test "$(grep -c 'WATCHDOG=1' n2.log)" = 0

# ---- 3. no NOTIFY_SOCKET; an unreachable one -------------------------------
"$OUTBOX_BIN" enqueue --store sqlite:app.db --type Ping --aggregate-id b >/dev/null
check "relay --once without NOTIFY_SOCKET" \
    "$OUTBOX_BIN" relay --store sqlite:app.db --to file:out.jsonl --once
NOTIFY_SOCKET=$TMP/nobody.sock "$OUTBOX_BIN" relay --store sqlite:app.db --to file:out.jsonl \
    --once 2>relay3.err
check "an unreachable NOTIFY_SOCKET does not stop the relay (exit $?)" test $? = 0
check "an unreachable NOTIFY_SOCKET is logged" grep -q 'cannot notify the service manager' \
    relay3.err

checks_done test_notify

#!/usr/bin/env bash
# test_operator.sh - an operator's day with the SQLite outbox, run the way a
# service file, a cron job and a tired operator at 3 a.m. run it:
#
#   1. two relays with the same --name started together by accident
#   2. a row written by hand that the relay cannot decode
#   3. a webhook that answers 410 Gone for one kind of message
#   4. `status --check`, `drop --archive`, `retry`
#   5. SIGHUP after logrotate moved the output file away
#   6. a full filesystem under the file: destination, then space comes back
#
# and, at the end of each part, accounts for every message: published once
# and in order per aggregate, or Failed / archived with its reason.
#
# Needs $OUTBOX_BIN (set by ctest), sqlite3 and python3 (exit 77 without).
# The full filesystem is a size-limited tmpfs when run as root; otherwise
# the file_write fault point fails write() with ENOSPC.
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
for tool in sqlite3 python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done

TMP=$(mktemp -d)
PIDS=()
MOUNTED=
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    [ -n "$MOUNTED" ] && umount "$MOUNTED" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP" || exit 1
unset OUTBOX_STORE OUTBOX_TO OUTBOX_FAULT

PASSED=0
FAILED=0
ok()   { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
check() {
    local what=$1
    shift
    if "$@" 2>"$TMP/check.err"; then ok; else fail "$what"; sed 's/^/    /' "$TMP/check.err"; fi
}
run() {
    "$OUTBOX_BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    RC=$?
}
expect() {
    local want=$1 what=$2
    shift 2
    run "$@"
    if [ "$RC" -eq "$want" ]; then ok; else fail "$what: exit $RC, want $want ($(head -c 600 "$TMP/err"))"; fi
}
json_out() { python3 -c "import json,sys; j=json.load(open('$TMP/out')); sys.exit(0 if ($1) else 1)"; }
# status_json DB: the store's status as JSON in $TMP/out
status_json() { "$OUTBOX_BIN" status --store "$1" --json >"$TMP/out" 2>"$TMP/err"; }
# wait_until SECONDS CMD...: polls CMD every 0.1 s; 1 on time-out
wait_until() {
    local n=$(($1 * 10))
    shift
    while [ "$n" -gt 0 ]; do
        "$@" 2>/dev/null && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}
pending_is() { status_json "$1" && json_out "j['pending']==$2"; }
# stop PID: SIGTERM, then waits (exit code in $STOPPED)
stop() {
    kill -TERM "$1" 2>/dev/null
    STOPPED=timeout
    for _ in $(seq 100); do
        if ! kill -0 "$1" 2>/dev/null; then
            wait "$1"
            STOPPED=$?
            return
        fi
        sleep 0.1
    done
}

# fill DB N AGGREGATES PREFIX: enqueues N messages round-robin over the
# aggregates PREFIX0..PREFIX{AGGREGATES-1}, with payload {"n": i} (i counts
# per aggregate from 0), as a foreign writer would: one INSERT per message
# in one transaction, through the documented table.
fill() {
    python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sqlite3, sys, time, uuid
path, n, aggs, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
db = sqlite3.connect(path, timeout=30)
per = {}
now = int(time.time() * 1e6)
with db:
    for i in range(n):
        a = "%s%d" % (prefix, i % aggs)
        k = per.get(a, 0)
        per[a] = k + 1
        db.execute("INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload)"
                   " VALUES (?, ?, 'Filled', ?, ?)",
                   (str(uuid.uuid4()), now, a, json.dumps({"n": k})))
PY
}

# account FILE... : reads CloudEvents lines from the files (in order) and
# prints "lines unique malformed disorder" where disorder counts messages
# whose first publication came after that of a later message of their
# aggregate (payload n smaller than one already seen; gaps are dropped
# messages, counted by the callers through `unique`).
account() {
    python3 - "$@" <<'PY'
import json, sys
lines = unique = bad = disorder = 0
seen, last = set(), {}
for path in sys.argv[1:]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        continue
    for raw in f:
        lines += 1
        try:
            e = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        unique += 1
        n = e.get("data", {}).get("n") if isinstance(e.get("data"), dict) else None
        if n is None:
            continue
        if n < last.get(e["subject"], -1):
            disorder += 1
        last[e["subject"]] = max(n, last.get(e["subject"], -1))
print(lines, unique, bad, disorder)
PY
}

# =====================================================================
# 1. Two relays with the same --name, started together
# =====================================================================
DB=sqlite:$TMP/app.db
expect 0 "init" init --store "$DB"
fill "$TMP/app.db" 10000 50 order-
for which in a b; do
    "$OUTBOX_BIN" relay --store "$DB" --to "file:$TMP/same-$which.jsonl" --name same \
        --wait-lease --poll-interval 200ms --lease-ttl 2s \
        >"$TMP/same-$which.out" 2>"$TMP/same-$which.err" &
    PIDS+=($!)
    eval "PID_$which=\$!"
done
check "two same-name relays drain 10,000 messages" wait_until 60 pending_is "$DB" 0
status_json "$DB"
check "status names the relay holding the lease, with its pid" \
    json_out "j['relay'] is not None and j['relay']['owner'] == 'same' and j['relay'].get('pid') in ($PID_a, $PID_b)"
HOLDER=$(python3 -c "import json; print(json.load(open('$TMP/out'))['relay']['pid'])")
[ "$HOLDER" = "$PID_a" ] && STANDBY=$PID_b || STANDBY=$PID_a
check "the other same-name relay stands by" kill -0 "$STANDBY"
read -r lines unique bad disorder < <(account "$TMP"/same-a.jsonl "$TMP"/same-b.jsonl)
check "10,000 published, no duplicates ($lines lines, $unique unique)" \
    test "$lines" = 10000 -a "$unique" = 10000
check "no order violations ($disorder)" test "$disorder" = 0

# the holder stops (a deploy); the stand-by takes over and publishes what
# comes next, still once each
stop "$HOLDER"
check "the holder stops with exit 0 on SIGTERM ($STOPPED)" test "$STOPPED" = 0
fill "$TMP/app.db" 1000 50 order-late-
check "the stand-by takes over and drains 1,000 more" wait_until 30 pending_is "$DB" 0
read -r lines unique bad disorder < <(account "$TMP"/same-a.jsonl "$TMP"/same-b.jsonl)
check "11,000 published once each ($lines lines, $unique unique)" \
    test "$lines" = 11000 -a "$unique" = 11000 -a "$disorder" = 0
stop "$STANDBY"
check "the stand-by stops with exit 0 ($STOPPED)" test "$STOPPED" = 0
expect 0 "status after both stopped" status --store "$DB" --json
check "no relay holds the lease" json_out "j['relay'] is None"

# A second relay without --wait-lease is refused, naming the holder.
"$OUTBOX_BIN" relay --store "$DB" --to "file:$TMP/held.jsonl" --name same \
    >"$TMP/held.out" 2>"$TMP/held.err" &
PIDS+=($!)
HELD=$!
wait_until 10 grep -q "relay same" "$TMP/held.err"
expect 1 "a same-name relay is refused while one runs" \
    relay --store "$DB" --to "file:$TMP/second.jsonl" --name same --once
check "the refusal names the holder's pid" grep -q "$HELD" "$TMP/err"
check "and says how to stand by" grep -q -- "--wait-lease" "$TMP/err"
stop "$HELD"

# =====================================================================
# 2. A row written by hand that the relay cannot decode
# =====================================================================
BDB=sqlite:$TMP/bad.db
expect 0 "init bad.db" init --store "$BDB"
rows() { sqlite3 "$TMP/bad.db" 'select count(*) from outbox'; }
check "the table refuses a malformed id" bash -c "! sqlite3 '$TMP/bad.db' \"INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload) VALUES ('NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx', 0, 'T', 'a', '{}')\" 2>/dev/null"
check "the table refuses headers that are not an object" bash -c "! sqlite3 '$TMP/bad.db' \"INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload, headers) VALUES ('0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07', 0, 'T', 'a', '{}', '[1]')\" 2>/dev/null"
check "the table refuses a blank type" bash -c "! sqlite3 '$TMP/bad.db' \"INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload) VALUES ('0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07', 0, ' ', 'a', '{}')\" 2>/dev/null"
check "nothing was written" test "$(rows)" = 0

# A row from before the tighter checks (written by an older version): the
# check triggers are lifted for one insert, as that version's table was.
GOOD1=$("$OUTBOX_BIN" enqueue --store "$BDB" --type Good --aggregate-id x --payload '{"n":0}')
TRIGGERS=$(sqlite3 "$TMP/bad.db" "select sql || ';' from sqlite_master where type = 'trigger' and tbl_name = 'outbox'")
sqlite3 "$TMP/bad.db" "$(sqlite3 "$TMP/bad.db" "select 'DROP TRIGGER ' || name || ';' from sqlite_master where type = 'trigger' and tbl_name = 'outbox'")
INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload)
  VALUES ('NOT-A-UUID-xxxxxxxxxxxxxxxxxxxxxxxxx', 0, 'Bad', 'x', '{\"n\":1}');
$TRIGGERS"
LATER=$("$OUTBOX_BIN" enqueue --store "$BDB" --type Later --aggregate-id x --payload '{"n":2}')
OTHER=$("$OUTBOX_BIN" enqueue --store "$BDB" --type Other --aggregate-id y --payload '{"n":0}')
expect 0 "list shows the bad row" list --store "$BDB"
check "list escapes nothing it should not and shows the row" grep -q "NOT-A-UUID" "$TMP/out"
expect 1 "relay --once exits 1: a message went Failed" \
    relay --store "$BDB" --to "file:$TMP/bad.jsonl" --once
check "--once says how many failed" grep -Eq "1 (message|failed)" "$TMP/err"
check "the good message before it is published" grep -q "$GOOD1" "$TMP/bad.jsonl"
check "the other aggregate flows" grep -q "$OTHER" "$TMP/bad.jsonl"
check "the message after it in its aggregate is held" bash -c "! grep -q '$LATER' '$TMP/bad.jsonl'"
expect 0 "status" status --store "$BDB" --json
check "status: 1 failed, 1 blocked, 1 aggregate held" \
    json_out "j['failed']==1 and j['blocked']==1 and j['aggregates_blocked']==1"
expect 0 "list --status failed" list --store "$BDB" --status failed --json
check "the quarantined row names what is wrong" \
    json_out "len(j)==1 and 'id' in j[0]['last_error'] and 'seq' in j[0]['last_error']"
expect 1 "status --check fails on a Failed message" status --store "$BDB" --check
check "status --check names the limit" grep -q "failed" "$TMP/out" "$TMP/err"
expect 0 "drop --all-failed --archive" drop --store "$BDB" --all-failed --archive "file:$TMP/dropped.jsonl"
check "drop reports 1" grep -q "^1 dropped" "$TMP/out"
check "the archive keeps the row and its reason" python3 -c "
import json
rows = [json.loads(l) for l in open('$TMP/dropped.jsonl')]
assert len(rows) == 1 and rows[0]['type'] == 'Bad' and rows[0]['last_error'], rows
"
expect 0 "relay --once after the drop" relay --store "$BDB" --to "file:$TMP/bad.jsonl" --once
check "the held message flows after the drop" grep -q "$LATER" "$TMP/bad.jsonl"
expect 0 "status --check passes" status --store "$BDB" --check
check "bad.db is empty" test "$(rows)" = 0

# Header values that are not strings: the SQLite table lets them in (the
# library never writes them; checking them in the table would cost every
# enqueue), the relay quarantines the row.
sqlite3 "$TMP/bad.db" "INSERT INTO outbox (id, occurred_at, type, aggregate_id, payload, headers)
  VALUES ('0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07', 0, 'Odd', 'h', '{\"n\":0}', '{\"a\":1}')"
HNEXT=$("$OUTBOX_BIN" enqueue --store "$BDB" --type Next --aggregate-id h --payload '{"n":1}')
HOTHER=$("$OUTBOX_BIN" enqueue --store "$BDB" --type Other --aggregate-id k --payload '{"n":0}')
expect 1 "relay --once: the odd headers go Failed" relay --store "$BDB" --to "file:$TMP/bad.jsonl" --once
check "the other aggregate flows past it" grep -q "$HOTHER" "$TMP/bad.jsonl"
check "its aggregate waits behind it" bash -c "! grep -q '$HNEXT' '$TMP/bad.jsonl'"
expect 0 "show the quarantined row" show --store "$BDB" 0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07 --json
check "its last_error names the header" json_out "j['status']=='failed' and 'header' in j['last_error']"
expect 0 "drop it" drop --store "$BDB" 0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07
expect 0 "then its aggregate flows" relay --store "$BDB" --to "file:$TMP/bad.jsonl" --once
check "the waiting message is published" grep -q "$HNEXT" "$TMP/bad.jsonl"

# =====================================================================
# 3. A webhook that answers 410 Gone for one kind of message
# =====================================================================
PORT_FILE=$TMP/port
python3 - "$TMP/hook.jsonl" "$PORT_FILE" >"$TMP/hook.log" 2>&1 <<'PY' &
import http.server, json, sys
out, port_file = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("ce-type") == "Poison":
            self.send_response(410)
        else:
            with open(out, "a") as f:
                f.write(json.dumps({"id": self.headers.get("webhook-id"),
                                    "subject": self.headers.get("ce-subject"),
                                    "data": json.loads(body)}) + "\n")
            self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(port_file, "w").write(str(s.server_address[1]))
s.serve_forever()
PY
PIDS+=($!)
HOOK=$!
wait_until 10 test -s "$PORT_FILE"
HOOK_URL=http://127.0.0.1:$(cat "$PORT_FILE")/events
HDB=sqlite:$TMP/hook.db
expect 0 "init hook.db" init --store "$HDB"
"$OUTBOX_BIN" enqueue --store "$HDB" --type Fine --aggregate-id p --payload '{"n":0}' >/dev/null
POISON=$("$OUTBOX_BIN" enqueue --store "$HDB" --type Poison --aggregate-id p --payload '{"n":1}')
AFTER=$("$OUTBOX_BIN" enqueue --store "$HDB" --type Fine --aggregate-id p --payload '{"n":2}')
"$OUTBOX_BIN" enqueue --store "$HDB" --type Fine --aggregate-id q --payload '{"n":0}' >/dev/null
if "$OUTBOX_BIN" --version | grep -q http; then
    expect 1 "relay --once to a 410 webhook exits 1" relay --store "$HDB" --to "$HOOK_URL" --once
    check "--once reports the failed message" grep -q "failed" "$TMP/err"
    expect 0 "status" status --store "$HDB" --json
    check "410: Failed at once (1 attempt), 1 blocked" \
        json_out "j['failed']==1 and j['blocked']==1 and j['pending']==1"
    expect 0 "show the Failed message" show --store "$HDB" "$POISON" --json
    check "its last_error names the 410" json_out "'410' in j['last_error'] and j['attempts']==1"
    expect 0 "retry it" retry --store "$HDB" "$POISON"
    expect 1 "still 410" relay --store "$HDB" --to "$HOOK_URL" --once
    expect 2 "drop refuses a message that is not Failed" drop --store "$HDB" "$AFTER"
    expect 0 "drop it with an archive" drop --store "$HDB" "$POISON" --archive "file:$TMP/dropped.jsonl"
    check "archived with its reason" python3 -c "
import json
rows = [json.loads(l) for l in open('$TMP/dropped.jsonl')]
assert rows[-1]['id'] == '$POISON' and '410' in rows[-1]['last_error'], rows[-1]
"
    expect 0 "relay after the drop" relay --store "$HDB" --to "$HOOK_URL" --once
    read -r lines unique bad disorder < <(account "$TMP/hook.jsonl")
    check "3 delivered once each, the held one after the drop ($lines/$unique/$disorder)" \
        test "$lines" = 3 -a "$unique" = 3
    check "the held message was delivered" grep -q "$AFTER" "$TMP/hook.jsonl"
else
    echo "note: this build has no http destination: part 3 skipped"
fi
kill "$HOOK" 2>/dev/null

# =====================================================================
# 4. SIGHUP after logrotate moved the output away
# =====================================================================
RDB=sqlite:$TMP/rot.db
expect 0 "init rot.db" init --store "$RDB"
"$OUTBOX_BIN" relay --store "$RDB" --to "file:$TMP/rot.jsonl" --poll-interval 100ms \
    >"$TMP/rot.out" 2>"$TMP/rot.err" &
PIDS+=($!)
ROT=$!
fill "$TMP/rot.db" 50 5 r-
check "the relay publishes the first 50" wait_until 20 pending_is "$RDB" 0
mv "$TMP/rot.jsonl" "$TMP/rot.jsonl.1"
kill -HUP "$ROT"
sleep 0.3
check "SIGHUP does not stop the relay" kill -0 "$ROT"
fill "$TMP/rot.db" 50 5 r-late-
check "the relay publishes 50 more" wait_until 20 pending_is "$RDB" 0
check "into a new file at the old path" test -s "$TMP/rot.jsonl"
check "the reopening is logged" grep -qi "reopen" "$TMP/rot.err"
read -r lines unique bad disorder < <(account "$TMP/rot.jsonl.1" "$TMP/rot.jsonl")
check "100 published once each across both files ($lines/$unique)" \
    test "$lines" = 100 -a "$unique" = 100 -a "$bad" = 0
stop "$ROT"
check "stops with 0 after SIGHUP ($STOPPED)" test "$STOPPED" = 0

# =====================================================================
# 5. A full filesystem under file:
# =====================================================================
FDB=sqlite:$TMP/full.db
expect 0 "init full.db" init --store "$FDB"
mkdir -p "$TMP/disk"
FULL_FAULT=
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=64k tmpfs "$TMP/disk" 2>/dev/null; then
    MOUNTED=$TMP/disk
else
    # no tmpfs: write() fails with ENOSPC from the 5th batch on
    FULL_FAULT=file_write:error:5
    echo "note: not root: a fault point stands in for the full disk"
fi
fill "$TMP/full.db" 600 20 disk-
OUTBOX_FAULT=$FULL_FAULT "$OUTBOX_BIN" relay --store "$FDB" --to "file:$TMP/disk/events.jsonl" \
    --max-attempts 2 --batch 50 --backoff-base 100ms --poll-interval 100ms \
    >"$TMP/full.out" 2>"$TMP/full.err" &
PIDS+=($!)
FULL=$!
check "the relay notices the full disk" wait_until 20 grep -qi "destination .*down\|no space" "$TMP/full.err"
sleep 1
expect 0 "status while the disk is full" status --store "$FDB" --json
check "nothing Failed because the relay's own disk was full" json_out "j['failed']==0 and j['pending']>0"
check "status shows the outage" json_out "'down' in (j['relay'] or {}).get('note', '')"
check "no torn line in the file" python3 -c "
import json
for l in open('$TMP/disk/events.jsonl', 'rb'):
    json.loads(l)
"
# space comes back
if [ -n "$MOUNTED" ]; then
    mount -o remount,size=4m "$TMP/disk"
else
    stop "$FULL"
    "$OUTBOX_BIN" relay --store "$FDB" --to "file:$TMP/disk/events.jsonl" --batch 50 \
        --poll-interval 100ms >>"$TMP/full.out" 2>>"$TMP/full.err" &
    PIDS+=($!)
    FULL=$!
fi
check "the relay resumes and drains" wait_until 30 pending_is "$FDB" 0
check "and logs that the destination is back" grep -qi "back" "$TMP/full.err"
read -r lines unique bad disorder < <(account "$TMP/disk/events.jsonl")
check "600 published, none torn, none out of order ($lines/$unique/$bad/$disorder)" \
    test "$unique" = 600 -a "$bad" = 0 -a "$disorder" = 0
stop "$FULL"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

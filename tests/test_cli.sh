#!/usr/bin/env bash
# test_cli.sh - end-to-end tests of the `outbox` command: help and exit
# codes, init/enqueue/list/show/status (text and --json), refusal of bad
# input without writing anything (guarantee 7), secrets kept out of errors,
# missing stores not created, relay to file:/stdout:, mark + purge, retry,
# and a graceful stop on SIGTERM.
#
# Needs $OUTBOX_BIN (set by ctest), sqlite3 and python3 (skips with 77
# when a tool is missing).
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
for tool in sqlite3 python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done
[ -x "$OUTBOX_BIN" ] || command -v "$OUTBOX_BIN" >/dev/null 2>&1 ||
    { echo "OUTBOX_BIN=$OUTBOX_BIN is not executable"; exit 1; }

TMP=$(mktemp -d)
RELAY_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP" || exit 1
unset OUTBOX_STORE OUTBOX_TO

PASSED=0
FAILED=0
ok()   { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }

# run CMD...: runs the binary, keeps stdout/stderr in $OUT/$ERR, code in $RC.
run() {
    "$OUTBOX_BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    RC=$?
    OUT=$(cat "$TMP/out")
    ERR=$(cat "$TMP/err")
}

# expect CODE DESCRIPTION CMD...
expect() {
    local want=$1 what=$2
    shift 2
    run "$@"
    if [ "$RC" -eq "$want" ]; then ok; else fail "$what: exit $RC, want $want (stderr: $ERR)"; fi
}

# check DESCRIPTION CONDITION...: passes when the command succeeds (its
# stderr is shown only on failure).
check() {
    local what=$1
    shift
    if "$@" 2>"$TMP/check.err"; then ok; else fail "$what"; sed 's/^/    /' "$TMP/check.err"; fi
}

# json_check PYTHON_EXPR: evaluates the expression with j = json of $OUT.
json_check() {
    printf '%s' "$OUT" | python3 -c "import json,sys; j=json.load(sys.stdin); sys.exit(0 if ($1) else 1)" 2>/dev/null
}

rows() { sqlite3 "$TMP/app.db" 'select count(*) from outbox' 2>/dev/null; }

DB=sqlite:$TMP/app.db
UUID_RE='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'

# --- help and dispatch ----------------------------------------------------
for c in init enqueue relay status list show retry purge; do
    expect 0 "$c --help" "$c" --help
    check "$c --help prints usage to stdout" grep -q "^usage: outbox $c" "$TMP/out"
    check "$c --help shows an example" grep -q "^Example" "$TMP/out"
    expect 0 "help $c" help "$c"
    check "help $c prints usage" grep -q "^usage: outbox $c" "$TMP/out"
done
expect 0 "--help" --help
check "--help lists commands" grep -q "relay" "$TMP/out"
expect 0 "--version" --version
check "--version prints the version" grep -Eq '^outbox [0-9]+\.[0-9]+\.[0-9]+' "$TMP/out"
expect 2 "no command"
expect 2 "unknown command" frobnicate
check "unknown command says so" grep -q "unknown command" "$TMP/err"
expect 2 "help for an unknown command" help frobnicate
expect 2 "unknown option" status --store "$DB" --bogus
check "unknown option named" grep -q -- "--bogus" "$TMP/err"
expect 2 "bad --log-level" --log-level loud status --store "$DB"
expect 2 "bad --log-format" status --store "$DB" --log-format xml

# --- missing store: refused, nothing created -------------------------------
expect 1 "status on a missing store" status --store "sqlite:$TMP/missing.db"
check "status names outbox init" grep -q "outbox init" "$TMP/err"
expect 1 "relay on a missing store" relay --store "sqlite:$TMP/missing.db" --to stdout: --once
check "relay names outbox init" grep -q "outbox init" "$TMP/err"
check "missing store file not created" test ! -e "$TMP/missing.db"
expect 2 "no --store" status
check "missing --store named" grep -q -- "--store" "$TMP/err"

# --- init ---------------------------------------------------------------------
expect 0 "init" init --store "$DB"
check "init created the file" test -f "$TMP/app.db"
expect 0 "init twice" init --store "$DB"
check "empty outbox" test "$(rows)" = 0

# --- enqueue happy path -------------------------------------------------------
expect 0 "enqueue" enqueue --store "$DB" --type OrderPlaced --aggregate-type Order \
    --aggregate-id 42 --payload '{"total":12.5,"items":[1,2]}' --header correlation_id=c-1
ID1=$OUT
check "enqueue prints a UUID ($ID1)" grep -Eq "$UUID_RE" <<<"$ID1"
check "one row" test "$(rows)" = 1

export OUTBOX_STORE=$DB
expect 0 "enqueue with OUTBOX_STORE" enqueue --type OrderPaid --aggregate-id 42 \
    --headers '{"causation_id":"x"}'
ID2=$OUT
check "OUTBOX_STORE enqueue prints a UUID" grep -Eq "$UUID_RE" <<<"$ID2"
GIVEN=0190b3c8-7d2a-7c3e-9a41-2f6d8e1b5c07
printf '{"from":"stdin"}' >"$TMP/p.json"
expect 0 "enqueue --payload-file - with --id" enqueue --type Shipped --aggregate-id 7 \
    --payload-file - --id "${GIVEN^^}" <"$TMP/p.json"
check "given id is used, lower-cased" test "$OUT" = "$GIVEN"
unset OUTBOX_STORE
check "three rows" test "$(rows)" = 3
expect 1 "duplicate id" enqueue --store "$DB" --type T --aggregate-id 1 --id "$GIVEN"
check "still three rows after a duplicate id" test "$(rows)" = 3

# --- list / show / status -------------------------------------------------
expect 0 "list" list --store "$DB"
check "list shows the message" grep -q "$ID1" "$TMP/out"
check "list shows the type" grep -q "OrderPlaced" "$TMP/out"
expect 0 "list --json" list --store "$DB" --json
check "list --json is an array of 3 with fields" json_check \
    "len(j)==3 and j[0]['id']=='$ID1' and j[0]['payload']=={'total':12.5,'items':[1,2]} and j[0]['headers']=={'correlation_id':'c-1'} and j[0]['status']=='pending' and j[0]['aggregate_type']=='Order' and j[2]['payload']=={'from':'stdin'} and j[0]['seq']<j[1]['seq']<j[2]['seq']"
expect 0 "list --limit 1" list --store "$DB" --json --limit 1
check "list --limit 1 gives one" json_check "len(j)==1"
expect 0 "list --status failed" list --store "$DB" --json --status failed
check "no failed messages" json_check "j==[]"
expect 2 "list bad --status" list --store "$DB" --status done
expect 2 "list bad --limit" list --store "$DB" --limit -5
expect 0 "show" show --store "$DB" "$ID1"
check "show prints the payload" grep -q '"total":12.5' "$TMP/out"
check "show prints the aggregate" grep -q "aggregate_id *42" "$TMP/out"
expect 0 "show --json" show --store "$DB" "$ID1" --json
check "show --json fields" json_check \
    "j['id']=='$ID1' and j['type']=='OrderPlaced' and j['aggregate_id']=='42' and j['attempts']==0 and j['occurred_at'].endswith('Z') and j['last_error'] is None"
expect 1 "show unknown id" show --store "$DB" 00000000-0000-7000-8000-000000000000
expect 2 "show malformed id" show --store "$DB" not-a-uuid
expect 0 "status" status --store "$DB"
check "status shows 3 pending" grep -Eq "pending +3" "$TMP/out"
expect 0 "status --json" status --store "$DB" --json
check "status --json counts" json_check \
    "j['pending']==3 and j['sent']==0 and j['failed']==0 and j['schema_version']==1 and j['relay'] is None and j['oldest_pending_age_ms']>=0"

# --- bad input exits 2 and writes nothing ----------------------------------
before=$(rows)
bad() { # bad DESCRIPTION ARGS...
    local what=$1
    shift
    expect 2 "$what" "$@"
    check "$what: row count unchanged" test "$(rows)" = "$before"
    check "$what: one-line error" test "$(wc -l <"$TMP/err")" -eq 1
}
E=(enqueue --store "$DB" --type T --aggregate-id A)
bad "invalid JSON payload" "${E[@]}" --payload '{"a":'
bad "headers not an object" "${E[@]}" --headers '["a"]'
bad "header value with a newline" "${E[@]}" --header $'k=a\nb'
bad "header without =" "${E[@]}" --header novalue
bad "bad traceparent" "${E[@]}" --header traceparent=00-1234-5678-01
head -c 1100000 /dev/zero | tr '\0' 'x' | sed 's/^/"/; s/$/"/' >"$TMP/big.json"
bad "oversized payload" "${E[@]}" --payload-file "$TMP/big.json"
bad "malformed --id" "${E[@]}" --id 1234
bad "missing --type" enqueue --store "$DB" --aggregate-id A
check "missing --type named" grep -q -- "--type is required" "$TMP/err"
bad "missing --aggregate-id" enqueue --store "$DB" --type T
check "missing --aggregate-id named" grep -q -- "--aggregate-id is required" "$TMP/err"
bad "payload and payload-file" "${E[@]}" --payload '{}' --payload-file "$TMP/p.json"
bad "unreadable payload file" "${E[@]}" --payload-file "$TMP/nope.json"
for b in 0 -1 abc 1e3 ''; do
    bad "relay --batch '$b'" relay --store "$DB" --to stdout: --once --batch "$b"
done
bad "bad duration" relay --store "$DB" --to stdout: --once --backoff-base 5parsecs
bad "bad duration unit" relay --store "$DB" --to stdout: --once --poll-interval 10y
bad "unknown --on-sent" relay --store "$DB" --to stdout: --once --on-sent keep
bad "unknown --failed-blocks" relay --store "$DB" --to stdout: --once --failed-blocks maybe
bad "relay without --to" relay --store "$DB" --once
bad "unknown destination scheme" relay --store "$DB" --to gopher://x --once
bad "unknown store scheme" enqueue --store "oracle:db" --type T --aggregate-id A
bad "purge bad duration" purge --store "$DB" --sent-older-than soon
bad "purge without --sent-older-than" purge --store "$DB"
bad "retry without ids" retry --store "$DB"
bad "retry malformed id" retry --store "$DB" 1234
# A store or destination URL with a password: "not built" (exit 2) in a build
# without the driver, a connection failure (exit 1) in one with it; the
# password never reaches stderr either way.
if "$OUTBOX_BIN" --version | grep -q '^stores:.* postgres'; then
    expect 1 "postgres URL with a password (unreachable)" status \
        --store 'postgres://app:hunter2@127.0.0.1:1/app?connect_timeout=2'
else
    expect 2 "postgres URL with a password" status --store 'postgres://app:hunter2@db.example/app'
    check "postgres: says not built" grep -qi "not built" "$TMP/err"
fi
check "postgres: password absent from stderr" bash -c "! grep -q hunter2 '$TMP/err'"
if "$OUTBOX_BIN" --version | grep -q '^destinations:.* nats'; then
    expect 1 "relay to an unreachable destination with a password" relay --store "$DB" --once \
        --to 'nats://app:s3cret@127.0.0.1:1?stream=S'
else
    expect 2 "relay to a not-built destination with a password" relay --store "$DB" --once \
        --to 'nats://app:s3cret@localhost:4222'
fi
check "nats: password absent from stderr" bash -c "! grep -q s3cret '$TMP/err'"
check "rows unchanged after everything" test "$(rows)" = "$before"

# --- relay --once to a file -----------------------------------------------
expect 0 "relay --once to file" relay --store "$DB" --to "file:$TMP/events.jsonl" --once
check "relay logs a summary" grep -q "3 published" "$TMP/err"
check "three CloudEvents lines" test "$(wc -l <"$TMP/events.jsonl")" = 3
check "lines are CloudEvents with our ids" python3 - "$TMP/events.jsonl" "$ID1" "$ID2" "$GIVEN" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ids = [e["id"] for e in lines]
assert ids == sys.argv[2:5], ids
e = lines[0]
assert e["specversion"] == "1.0" and e["type"] == "OrderPlaced" and e["subject"] == "42", e
assert e["data"] == {"total": 12.5, "items": [1, 2]} and e["correlationid"] == "c-1", e
PY
expect 0 "status after relay" status --store "$DB" --json
check "0 pending after relay" json_check "j['pending']==0 and j['relay'] is None"
check "deleted after sending (on-sent delete)" test "$(rows)" = 0

# --- on-sent mark, then purge ------------------------------------------------
expect 0 "enqueue for mark" enqueue --store "$DB" --type T --aggregate-id m --payload 1
expect 0 "relay --on-sent mark" relay --store "$DB" --to "file:$TMP/events.jsonl" --once \
    --on-sent mark --log-format json
check "json log lines parse" python3 -c '
import json, sys
for line in open(sys.argv[1]):
    o = json.loads(line)
    assert set(o) == {"time", "level", "component", "msg"}, o
' "$TMP/err"
expect 0 "status after mark" status --store "$DB" --json
check "1 sent kept" json_check "j['sent']==1 and j['pending']==0"
expect 0 "list --status sent" list --store "$DB" --status sent --json
check "listed as sent with sent_at" json_check "len(j)==1 and j[0]['status']=='sent' and j[0]['sent_at']"
expect 0 "purge --sent-older-than 0s" purge --store "$DB" --sent-older-than 0s
check "purge reports 1" grep -q "^1 sent" "$TMP/out"
check "purged" test "$(rows)" = 0
expect 0 "purge with inbox" purge --store "$DB" --sent-older-than 7d --inbox-older-than 30d
check "purge reports inbox" grep -q "inbox entries purged" "$TMP/out"

# --- retry ------------------------------------------------------------------
expect 0 "retry --all-failed on none" retry --store "$DB" --all-failed
check "0 requeued" grep -q "^0 requeued" "$TMP/out"
expect 1 "retry an unknown id" retry --store "$DB" 00000000-0000-7000-8000-000000000000

# --- failures, backoff and retry (needs a build with fault points) --------
FDB=sqlite:$TMP/fault.db
"$OUTBOX_BIN" init --store "$FDB" >/dev/null
FID=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id f)
RID=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id r)
OUTBOX_FAULT=file_after_write:error:p1 run relay --store "$FDB" --to "file:$TMP/f.jsonl" \
    --once --max-attempts 1 --failed-blocks no
check "relay with failing destination exits 0" test "$RC" = 0
run status --store "$FDB" --json
if json_check "j['failed']==2"; then
    ok
    expect 0 "list --status failed" list --store "$FDB" --status failed --json
    check "failed messages carry attempts and last_error" json_check \
        "len(j)==2 and all(m['attempts']==1 and 'fault' in m['last_error'] for m in j)"
    expect 0 "status text shows failed" status --store "$FDB"
    check "status text: failed 2" grep -Eq "failed +2" "$TMP/out"
    expect 0 "retry one id" retry --store "$FDB" "$FID"
    check "1 requeued" grep -q "^1 requeued" "$TMP/out"
    expect 0 "show requeued" show --store "$FDB" "$FID" --json
    check "requeued: pending, 0 attempts" json_check "j['status']=='pending' and j['attempts']==0"
    expect 2 "retry a pending message" retry --store "$FDB" "$FID"
    # a retriable failure with a long backoff: the message waits, retrying
    OUTBOX_FAULT=file_after_write:error:p1 run relay --store "$FDB" --to "file:$TMP/f.jsonl" \
        --once --max-attempts 5 --backoff-base 1h --backoff-max 1h --failed-blocks no
    expect 0 "status --json while retrying" status --store "$FDB" --json
    check "retrying with a next retry time" json_check \
        "j['retrying']==1 and j['pending']==1 and j['pending_due']<=1 and j['next_retry_in_ms'] is not None"
    expect 0 "status text while retrying" status --store "$FDB"
    check "status text shows next retry" grep -q "next retry" "$TMP/out"
    expect 0 "retry --all-failed" retry --store "$FDB" --all-failed
    check "the other failed message requeued" grep -q "^1 requeued" "$TMP/out"
    expect 0 "relay drains the requeued message" relay --store "$FDB" --to "file:$TMP/f.jsonl" --once
    check "requeued message published" grep -q "$RID" "$TMP/f.jsonl"
else
    echo "note: fault points not compiled in (OUTBOX_FAULT_INJECTION off): failure checks skipped"
fi

# --- relay to stdout ------------------------------------------------------
for i in 1 2; do
    "$OUTBOX_BIN" enqueue --store "$DB" --type Ping --aggregate-id "p$i" >/dev/null
done
OUTBOX_TO=stdout: run relay --store "$DB" --once --log-level error
check "relay to stdout exits 0" test "$RC" = 0
check "relay to stdout prints 2 lines" test "$(wc -l <"$TMP/out")" = 2
check "stdout lines are JSON" python3 -c '
import json, sys
for line in open(sys.argv[1]):
    assert json.loads(line)["type"] == "Ping"
' "$TMP/out"
check "--log-level error hides info" test ! -s "$TMP/err"

# --- SIGTERM stops a running relay gracefully -------------------------------
"$OUTBOX_BIN" relay --store "$DB" --to "file:$TMP/live.jsonl" --poll-interval 100ms \
    >"$TMP/relay.out" 2>"$TMP/relay.err" &
RELAY_PID=$!
# wait until it holds the lease, then let it publish a message enqueued meanwhile
for _ in $(seq 50); do
    run status --store "$DB" --json
    json_check "j['relay'] is not None" 2>/dev/null && break
    sleep 0.1
done
check "running relay shows in status" json_check "j['relay'] is not None and j['relay']['owner']"
expect 1 "second relay refused while the first holds the lease" relay --store "$DB" --to stdout: --once
check "second relay mentions the other relay" grep -qi "relay" "$TMP/err"
"$OUTBOX_BIN" enqueue --store "$DB" --type Live --aggregate-id L >/dev/null
for _ in $(seq 50); do
    [ -s "$TMP/live.jsonl" ] && break
    sleep 0.1
done
check "running relay published the new message" grep -q '"type":"Live"' "$TMP/live.jsonl"
kill -TERM "$RELAY_PID"
status=timeout
for _ in $(seq 50); do
    if ! kill -0 "$RELAY_PID" 2>/dev/null; then
        wait "$RELAY_PID"
        status=$?
        break
    fi
    sleep 0.1
done
RELAY_PID=
check "SIGTERM -> exit 0 within 5 s (got $status)" test "$status" = 0
run status --store "$DB" --json
check "lease released after SIGTERM" json_check "j['relay'] is None"

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

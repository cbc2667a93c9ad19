#!/usr/bin/env bash
# test_cli.sh - end-to-end tests of the `outbox` command: help and exit
# codes, init/enqueue/list/show/status (text and --json), refusal of bad
# input without writing anything (guarantee 7), secrets kept out of errors,
# missing stores not created, relay to file:/stdout:, mark + purge, retry,
# drop (with an archive), status --check, --once exit codes, escaping of
# stored text, driver lists from the registries, a graceful stop on
# SIGTERM and a SIGHUP that reopens the output file.
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
HOOK_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null
    [ -n "$HOOK_PID" ] && kill "$HOOK_PID" 2>/dev/null
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

# no_raw_controls FILE: no C0 control but LF ending lines, no DEL, no C1.
no_raw_controls() {
    python3 - "$1" <<'PY'
import re, sys
data = open(sys.argv[1], "rb").read()
bad = re.search(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", data)
sys.exit(1 if bad else 0)
PY
}

# wait_for CMD...: runs CMD every 0.1 s until it succeeds, for up to 5 s.
wait_for() {
    for _ in $(seq 50); do
        "$@" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

rows() { sqlite3 "$TMP/app.db" 'select count(*) from outbox' 2>/dev/null; }

DB=sqlite:$TMP/app.db
UUID_RE='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'

# --- help and dispatch ----------------------------------------------------
for c in init enqueue relay status list show retry drop purge; do
    expect 0 "$c --help" "$c" --help
    check "$c --help prints usage to stdout" grep -q "^usage: outbox $c" "$TMP/out"
    check "$c --help shows an example" grep -q "^Example" "$TMP/out"
    expect 0 "help $c" help "$c"
    check "help $c prints usage" grep -q "^usage: outbox $c" "$TMP/out"
done
expect 0 "--help" --help
check "--help lists commands" grep -q "relay" "$TMP/out"
check "--help lists drop" grep -Eq "^  drop +delete Failed messages" "$TMP/out"
check "--help mentions status --check" grep -Eq "^  status .*--check" "$TMP/out"
expect 0 "--version" --version
check "--version prints the version" grep -Eq '^outbox [0-9]+\.[0-9]+\.[0-9]+' "$TMP/out"
STORES=$(sed -n 's/^stores: //p' "$TMP/out")
DESTINATIONS=$(sed -n 's/^destinations: //p' "$TMP/out")
check "--version lists stores" test -n "$STORES"
check "--version lists destinations" test -n "$DESTINATIONS"

# --- driver lists come from the registries ----------------------------------
expect 0 "relay --help" relay --help
for d in $DESTINATIONS; do
    check "relay --help lists $d:" grep -q "^  $d:" "$TMP/out"
done
check "relay --help: stdout: gives no confirmation" grep -q "^stdout: gives no confirmation" "$TMP/out"
check "relay --help: file: is the durable one" grep -q "file: is" "$TMP/out"
check "relay --help says how a Failed message is cleared" grep -q "outbox drop\` deletes it" "$TMP/out"
check "relay --help: SIGHUP" grep -q "SIGHUP reopens" "$TMP/out"
check "relay --help: the outage rule" grep -q "charges nothing" "$TMP/out"
for c in purge retry drop; do
    run "$c" --help
    check "$c --help says how a Failed message is cleared, as relay does" \
        grep -q "outbox drop\` deletes it (with" "$TMP/out"
done
expect 2 "relay to an unknown scheme" relay --store "sqlite:$TMP/x.db" --to gopher://x --once
for d in $DESTINATIONS; do
    check "'use one of' lists $d:" grep -q "$d:" "$TMP/err"
done
expect 2 "init with a URL without a scheme" init --store "$TMP/plain.db"
for st in $STORES; do
    check "init's error lists $st:" grep -q "$st:" "$TMP/err"
done
check "no file made for a URL without a scheme" test ! -e "$TMP/plain.db"
expect 2 "enqueue to an unknown store scheme" enqueue --store oracle:db --type T --aggregate-id A
for st in $STORES; do
    check "'use one of' lists store $st:" grep -q "$st:" "$TMP/err"
done
if [ -n "${OUTBOX_SOURCE_DIR:-}" ]; then
    for d in postgres nats kafka http; do
        if grep -qw "$d" <<<"$STORES $DESTINATIONS"; then
            check "docs/CLI.md does not call $d not built" bash -c \
                "! grep -i 'not built' '$OUTBOX_SOURCE_DIR/docs/CLI.md' | grep -qi '$d'"
        fi
    done
fi
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

# --- repeated options, blank fields, sizes, --payload-file DIR -------------
bad_write() { # bad_write DESCRIPTION ARGS...: exit 2, one line, nothing written
    local what=$1 n
    n=$(rows)
    shift
    expect 2 "$what" "$@"
    check "$what: row count unchanged" test "$(rows)" = "$n"
    check "$what: one-line error" test "$(wc -l <"$TMP/err")" -eq 1
}
bad_write "--type twice" enqueue --store "$DB" --type A --type B --aggregate-id 1
check "--type twice is named" grep -q -- "--type is given twice" "$TMP/err"
bad_write "--aggregate-id twice" enqueue --store "$DB" --type A --aggregate-id 1 --aggregate-id 2
bad_write "--payload twice" enqueue --store "$DB" --type A --aggregate-id 1 --payload 1 --payload 2
bad_write "--store twice" enqueue --store "$DB" --store "$DB" --type A --aggregate-id 1
bad_write "--id twice" enqueue --store "$DB" --type A --aggregate-id 1 --id "$GIVEN" --id "$GIVEN"
expect 2 "relay --to twice" relay --store "$DB" --to stdout: --to discard: --once
expect 2 "relay --batch twice" relay --store "$DB" --to stdout: --batch 1 --batch 2 --once
expect 2 "status --store twice" status --store "$DB" --store "$DB"
expect 2 "list --status twice" list --store "$DB" --status failed --status sent
bad_write "--type of blanks" enqueue --store "$DB" --type ' ' --aggregate-id 1
bad_write "--aggregate-id of blanks" enqueue --store "$DB" --type T --aggregate-id '  '
bad_write "the nil UUID as --id" enqueue --store "$DB" --type T --aggregate-id 1 \
    --id 00000000-0000-0000-0000-000000000000
bad_write "--payload-file a directory" enqueue --store "$DB" --type T --aggregate-id 1 \
    --payload-file "$TMP"
bad_write "--payload over --max-message-bytes" enqueue --store "$DB" --type T --aggregate-id 1 \
    --max-message-bytes 1024 --payload "\"$(head -c 2000 /dev/zero | tr '\0' x)\""
check "size error names --max-message-bytes" grep -q -- "--max-message-bytes" "$TMP/err"
check "size error does not name the C setting" bash -c "! grep -q outbox_limit '$TMP/err'"
bad_write "oversized --type" enqueue --store "$DB" --type "$(head -c 300 /dev/zero | tr '\0' t)" \
    --aggregate-id 1
check "field size error names --max-field-bytes" grep -q -- "--max-field-bytes" "$TMP/err"
bad_write "bad --max-message-bytes" enqueue --store "$DB" --type T --aggregate-id 1 \
    --max-message-bytes lots
BIGDB=sqlite:$TMP/big.db
"$OUTBOX_BIN" init --store "$BIGDB" >/dev/null
head -c 1100000 /dev/zero | tr '\0' x | sed 's/^/"/; s/$/"/' >"$TMP/big-payload.json"
expect 0 "--max-message-bytes raises the limit" enqueue --store "$BIGDB" --type T \
    --aggregate-id 1 --payload-file "$TMP/big-payload.json" --max-message-bytes 2000000
expect 1 "a relay with the default limit sets the large message Failed" relay --store "$BIGDB" \
    --to "file:$TMP/big.jsonl" --once
expect 0 "retry it" retry --store "$BIGDB" --all-failed
expect 0 "a relay with the same --max-message-bytes publishes it" relay --store "$BIGDB" \
    --to "file:$TMP/big.jsonl" --once --max-message-bytes 2000000
check "the large message was published" test "$(wc -l <"$TMP/big.jsonl")" = 1

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
check "show names the option --on-sent mark" grep -q -- "--on-sent mark" "$TMP/err"
check "show does not name on_sent=mark" bash -c "! grep -q 'on_sent=' '$TMP/err'"
expect 2 "show malformed id" show --store "$DB" not-a-uuid
expect 0 "status" status --store "$DB"
check "status shows 3 pending" grep -Eq "pending +3" "$TMP/out"
expect 0 "status --json" status --store "$DB" --json
check "status --json counts" json_check \
    "j['pending']==3 and j['sent']==0 and j['failed']==0 and j['schema_version']>=1 and j['relay'] is None and j['oldest_pending_age_ms']>=0"
check "status --json has blocked counts" json_check "j['blocked']==0 and j['aggregates_blocked']==0"
expect 0 "status text" status --store "$DB"
check "status text shows blocked 0" grep -Eq "^  blocked +0$" "$TMP/out"
expect 0 "status --check: nothing failed" status --store "$DB" --check
check "status --check prints nothing when within limits" test ! -s "$TMP/out" -a ! -s "$TMP/err"
expect 1 "status --check --max-age 0s with pending messages" status --store "$DB" --max-age 0s
check "--max-age named" grep -Eq "oldest pending .* > --max-age 0s" "$TMP/err"
expect 0 "status --check --max-age 1h" status --store "$DB" --check --max-age 1h
expect 2 "status --max-age bad" status --store "$DB" --max-age soon
expect 2 "status --max-failed bad" status --store "$DB" --max-failed -1
run status --store "$DB" --check --max-age 0s --json
check "status --check --json exits 1" test "$RC" = 1
check "status --check --json has the check" json_check \
    "j['check']['ok'] is False and j['check']['exceeded'][0]['limit']=='max_age_ms' and j['pending']==3"

# --- stored text is escaped for people, exact in --json --------------------
sqlite3 "$TMP/app.db" "update outbox set last_error='one'||char(13)||char(10)||char(27)||'[2Jtwo'||char(7)||char(127)||char(155), payload='{\"a\":'||char(13)||'1}' where id='$ID2'"
expect 0 "show a message with control characters" show --store "$DB" "$ID2"
check "show prints no raw control character" no_raw_controls "$TMP/out"
check "show escapes them visibly" grep -qF 'one\r\n\x1b[2Jtwo\x07\x7f\u009b' "$TMP/out"
check "show escapes CR in the payload" grep -qF 'payload         {"a":\r1}' "$TMP/out"
check "show prints one line per field" test "$(wc -l <"$TMP/out")" = 13
expect 0 "list with control characters" list --store "$DB"
check "list prints no raw control character" no_raw_controls "$TMP/out"
expect 0 "show --json stays exact" show --store "$DB" "$ID2" --json
check "show --json has the exact text" json_check \
    "j['last_error']=='one\\r\\n\\x1b[2Jtwo\\x07\\x7f\\x9b' and j['payload']=={'a':1}"
sqlite3 "$TMP/app.db" "update outbox set last_error=NULL, payload='{}' where id='$ID2'"

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
TP=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
expect 0 "enqueue for mark" enqueue --store "$DB" --type T --aggregate-id m --payload 1 \
    --header traceparent=$TP
expect 0 "relay --on-sent mark" relay --store "$DB" --to "file:$TMP/events.jsonl" --once \
    --on-sent mark --log-format json
check "file: the CloudEvent carries the traceparent extension" python3 -c '
import json, sys
e = json.loads(open(sys.argv[1]).readlines()[-1])
assert e["subject"] == "m" and e["traceparent"] == sys.argv[2], e
' "$TMP/events.jsonl" "$TP"
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

# --- failures, backoff, retry and --once exit codes, against a webhook -----
# A local HTTP endpoint answers 2xx, except for messages whose payload holds
# "fail": 410 on /gone (the destination rejects the message: Failed at once),
# 503 on /busy (retriable; charged only while others of the batch succeed).
FAULTS=0
grep -q '^OUTBOX_FAULT_INJECTION:BOOL=ON' "${OUTBOX_BUILD_DIR:-.}/CMakeCache.txt" 2>/dev/null &&
    FAULTS=1
if grep -qw http <<<"$DESTINATIONS"; then
    cat >"$TMP/hook.py" <<'PY'
import http.server, sys
port_file, log_file = sys.argv[1], sys.argv[2]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = 200
        if b'"fail"' in body:
            status = 410 if self.path == "/gone" else 503
        else:
            with open(log_file, "a") as f:
                f.write(self.headers.get("webhook-id", "?") + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY
    python3 "$TMP/hook.py" "$TMP/hook.port" "$TMP/hook.log" &
    HOOK_PID=$!
    wait_for test -s "$TMP/hook.port"
    HOOK=http://127.0.0.1:$(cat "$TMP/hook.port")
    touch "$TMP/hook.log"

    FDB=sqlite:$TMP/fault.db
    "$OUTBOX_BIN" init --store "$FDB" >/dev/null
    FID=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id f --payload '{"fail":1}')
    HELD=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id f)
    RID=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id r)
    run relay --store "$FDB" --to "$HOOK/gone" --once --max-attempts 5
    check "relay --once after a message went Failed (410) exits 1 (got $RC)" test "$RC" = 1
    check "relay --once says how many failed" \
        grep -q "1 publication failed (0 to retry later, 1 now Failed)" "$TMP/err"
    check "the other aggregate was published" grep -q "$RID" "$TMP/hook.log"
    check "the message behind the Failed one was not" bash -c "! grep -q '$HELD' '$TMP/hook.log'"
    expect 0 "list --status failed" list --store "$FDB" --status failed --json
    check "the Failed message carries its attempt and last_error" json_check \
        "len(j)==1 and j[0]['id']=='$FID' and j[0]['attempts']==1 and '410' in j[0]['last_error']"
    expect 0 "status text shows failed" status --store "$FDB"
    check "status text: failed 1" grep -Eq "failed +1" "$TMP/out"
    expect 0 "status --json with a 410" status --store "$FDB" --json
    check "status: the held message is blocked" json_check \
        "j['failed']==1 and j['pending']==1 and j['blocked']==1 and j['aggregates_blocked']==1"
    expect 1 "status --check after a 410" status --store "$FDB" --check
    expect 0 "retry one id" retry --store "$FDB" "$FID"
    check "1 requeued" grep -q "^1 requeued" "$TMP/out"
    expect 0 "show requeued" show --store "$FDB" "$FID" --json
    check "requeued: pending, 0 attempts" json_check "j['status']=='pending' and j['attempts']==0"
    expect 2 "retry a pending message" retry --store "$FDB" "$FID"
    run relay --store "$FDB" --to "$HOOK/gone" --once
    check "rejected again: exit 1 (got $RC)" test "$RC" = 1
    expect 0 "drop it with an archive" drop --store "$FDB" "$FID" --archive "file:$TMP/gone.jsonl"
    check "the archive holds its last error" grep -q '"last_error":"[^"]*410' "$TMP/gone.jsonl"
    expect 0 "relay --once after the drop: everything due published" relay --store "$FDB" \
        --to "$HOOK/gone" --once
    check "the held message is published" grep -q "$HELD" "$TMP/hook.log"

    # one message fails retriably while another of its batch succeeds: an
    # attempt is charged and the message waits in backoff
    BID=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id b --payload '{"fail":1}')
    OK2=$("$OUTBOX_BIN" enqueue --store "$FDB" --type T --aggregate-id c)
    run relay --store "$FDB" --to "$HOOK/busy" --once --backoff-base 1h --backoff-max 1h
    check "relay --once after a publication failed exits 1 (got $RC)" test "$RC" = 1
    check "relay --once counts the publication to retry" grep -q "1 to retry later" "$TMP/err"
    check "the rest of the batch was published" grep -q "$OK2" "$TMP/hook.log"
    expect 0 "status --json while retrying" status --store "$FDB" --json
    check "retrying with a next retry time" json_check \
        "j['retrying']==1 and j['pending']==1 and j['pending_due']==0 and j['next_retry_in_ms']>0"
    expect 0 "status text while retrying" status --store "$FDB"
    check "status text shows next retry" grep -q "next retry in" "$TMP/out"
    expect 0 "relay --once with nothing due" relay --store "$FDB" --to "$HOOK/busy" --once
    expect 0 "retry --all-failed with none Failed" retry --store "$FDB" --all-failed
    check "0 requeued" grep -q "^0 requeued" "$TMP/out"

    # a JSON log line about a message carries it as fields, with its trace
    LDB=sqlite:$TMP/logfields.db
    "$OUTBOX_BIN" init --store "$LDB" >/dev/null
    LID=$("$OUTBOX_BIN" enqueue --store "$LDB" --type T --aggregate-type Order \
        --aggregate-id lf-1 --payload '{"fail":1}' --header traceparent=$TP)
    run relay --store "$LDB" --to "$HOOK/gone" --once --log-format json
    check "relay --once, rejected: exit 1 (got $RC)" test "$RC" = 1
    check "the rejection's JSON log line has the message's fields" python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
about = [o for o in lines if "msg_id" in o]
assert len(about) == 1, lines
o = about[0]
want = {"msg_id": sys.argv[2], "aggregate_type": "Order", "aggregate_id": "lf-1", "attempt": 1,
        "destination": sys.argv[3], "traceparent": sys.argv[4], "level": "error"}
assert {k: o.get(k) for k in want} == want, o
assert sys.argv[2] in o["msg"], o
for other in lines:
    if other is not o:
        assert set(other) == {"time", "level", "component", "msg"}, other
' "$TMP/err" "$LID" "$HOOK/gone" "$TP"
    "$OUTBOX_BIN" retry --store "$LDB" "$LID" >/dev/null
    run relay --store "$LDB" --to "$HOOK/gone" --once
    check "the text log line names the message, without fields" \
        grep -Eq "error relay: message $LID \(aggregate lf-1\) failed for good[^{]*$" "$TMP/err"
    kill "$HOOK_PID" 2>/dev/null
    wait "$HOOK_PID" 2>/dev/null
    HOOK_PID=

    # a relay whose destination is down says so through status
    NDB=sqlite:$TMP/note.db
    "$OUTBOX_BIN" init --store "$NDB" >/dev/null
    "$OUTBOX_BIN" enqueue --store "$NDB" --type T --aggregate-id n >/dev/null
    "$OUTBOX_BIN" relay --store "$NDB" --to http://127.0.0.1:1/down --name noted \
        >/dev/null 2>"$TMP/noted.err" &
    RELAY_PID=$!
    relay_has_note() { run status --store "$NDB" --json && json_check "j['relay'] and j['relay']['note']"; }
    wait_for relay_has_note
    check "status --json carries the relay's note" json_check \
        "j['relay']['owner']=='noted' and 'down' in j['relay']['note'] and j['relay']['gone'] is False"
    expect 0 "status text with a relay note" status --store "$NDB"
    check "status text shows the note under the relay" grep -Eq "^ {12}destination down" "$TMP/out"
    kill -TERM "$RELAY_PID"
    wait "$RELAY_PID"
    check "a relay with its destination down stops with exit 0 on SIGTERM" test "$?" = 0
    RELAY_PID=
else
    echo "note: no http destination in this build: webhook failure checks skipped"
fi

# --- Failed messages: what they block, status --check, drop ---------------
# The Failed state is set by hand (as a relay after --max-attempts would), so
# that these checks do not depend on how a destination fails.
DDB=sqlite:$TMP/drop.db
drows() { sqlite3 "$TMP/drop.db" 'select count(*) from outbox'; }
"$OUTBOX_BIN" init --store "$DDB" >/dev/null
D1=$("$OUTBOX_BIN" enqueue --store "$DDB" --type Gone --aggregate-id x --payload '{"n":1}' \
    --header correlation_id=c-9)
D2=$("$OUTBOX_BIN" enqueue --store "$DDB" --type Next --aggregate-id x)
D3=$("$OUTBOX_BIN" enqueue --store "$DDB" --type Gone --aggregate-id y)
D4=$("$OUTBOX_BIN" enqueue --store "$DDB" --type Free --aggregate-id z)
sqlite3 "$TMP/drop.db" "update outbox set status='failed', attempts=3, last_error='HTTP 410 Gone' where id in ('$D1','$D3')"
expect 0 "status --json with Failed messages" status --store "$DDB" --json
check "blocked: the message behind a Failed one" json_check \
    "j['failed']==2 and j['blocked']==1 and j['aggregates_blocked']==1 and j['pending']==2"
expect 0 "status text with a blocked message" status --store "$DDB"
check "status text shows blocked" grep -Eq "^  blocked +1  \(behind a Failed message, in 1 aggregate\)" "$TMP/out"
expect 1 "status --check with Failed messages" status --store "$DDB" --check
check "--check names --max-failed" grep -q "failed 2 > --max-failed 0" "$TMP/err"
check "--check names --max-blocked" grep -q "blocked 1 > --max-blocked 0" "$TMP/err"
check "--check: one line per limit" test "$(wc -l <"$TMP/err")" = 2
expect 0 "status --max-failed 2: only the limits given" status --store "$DDB" --max-failed 2
expect 1 "status --max-failed 2 --max-blocked 0" status --store "$DDB" --max-failed 2 --max-blocked 0
check "only the blocked limit reported" test "$(wc -l <"$TMP/err")" = 1

expect 2 "drop without ids" drop --store "$DDB"
expect 2 "drop ids and --all-failed" drop --store "$DDB" --all-failed "$D1"
expect 2 "drop a malformed id" drop --store "$DDB" 1234
expect 2 "drop --archive to a broker" drop --store "$DDB" "$D1" --archive nats://localhost:4222
check "drop --archive names file:PATH" grep -q "file:PATH" "$TMP/err"
expect 2 "drop --archive stdout:" drop --store "$DDB" "$D1" --archive stdout:
expect 2 "drop --archive without a scheme" drop --store "$DDB" "$D1" --archive "$TMP/a.jsonl"
expect 2 "drop --archive file: without a path" drop --store "$DDB" "$D1" --archive file:
expect 2 "drop --archive with settings" drop --store "$DDB" "$D1" --archive "file:$TMP/a.jsonl?x=1"
expect 2 "drop --archive twice" drop --store "$DDB" "$D1" --archive "file:$TMP/a.jsonl" \
    --archive "file:$TMP/b.jsonl"
check "nothing dropped by usage errors" test "$(drows)" = 4
expect 2 "drop a pending message (as retry)" drop --store "$DDB" "$D2"
expect 1 "drop a Failed and an unknown id" drop --store "$DDB" "$D1" 00000000-0000-7000-8000-000000000000
check "all or nothing: nothing dropped" test "$(drows)" = 4
expect 1 "drop with an archive that cannot be written" drop --store "$DDB" "$D1" --archive file:/dev/full
check "failed archive: says nothing was dropped" grep -q "nothing was dropped" "$TMP/err"
check "failed archive: nothing dropped" test "$(drows)" = 4
if [ "$FAULTS" = 1 ]; then
    printf 'an earlier line\n' >"$TMP/dropped.jsonl"
    OUTBOX_FAULT=drop_archive_written:error run drop --store "$DDB" "$D1" \
        --archive "file:$TMP/dropped.jsonl"
    check "archive failing after the write: exit 1 (got $RC)" test "$RC" = 1
    check "archive failing after the write: cut back, no partial line" \
        test "$(cat "$TMP/dropped.jsonl")" = "an earlier line"
    check "archive failing after the write: nothing dropped" test "$(drows)" = 4
    rm -f "$TMP/dropped.jsonl"
fi
expect 0 "drop one id with an archive" drop --store "$DDB" "$D1" --archive "file:$TMP/dropped.jsonl"
check "drop says 1 dropped" grep -q "^1 dropped" "$TMP/out"
check "one message deleted" test "$(drows)" = 3
check "archive made private (0600)" test "$(stat -c %a "$TMP/dropped.jsonl")" = 600
check "archive: one JSON line with the message and dropped_at" python3 - "$TMP/dropped.jsonl" "$D1" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
m = json.loads(lines[0])
assert m["id"] == sys.argv[2] and m["status"] == "failed" and m["attempts"] == 3, m
assert m["last_error"] == "HTTP 410 Gone" and m["payload"] == {"n": 1}, m
assert m["headers"] == {"correlation_id": "c-9"} and m["type"] == "Gone", m
assert m["aggregate_id"] == "x" and m["dropped_at"].endswith("Z"), m
PY
expect 1 "a dropped message is gone" show --store "$DDB" "$D1"
expect 0 "relay --once after the drop" relay --store "$DDB" --to "file:$TMP/drop-out.jsonl" --once
check "the message held behind the dropped one is published" grep -q "$D2" "$TMP/drop-out.jsonl"
check "the other aggregate's message too" grep -q "$D4" "$TMP/drop-out.jsonl"
expect 0 "drop --all-failed" drop --store "$DDB" --all-failed
check "drop --all-failed says 1 dropped" grep -q "^1 dropped" "$TMP/out"
expect 0 "drop --all-failed with none left" drop --store "$DDB" --all-failed
check "0 dropped" grep -q "^0 dropped" "$TMP/out"
check "the outbox is empty" test "$(drows)" = 0
expect 0 "status --check once everything is cleared" status --store "$DDB" --check

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
"$OUTBOX_BIN" enqueue --store "$DB" --type Ping --aggregate-id closed >/dev/null
n=$(rows)
"$OUTBOX_BIN" relay --store "$DB" --once --to stdout: >&- 2>"$TMP/err"
RC=$?
check "relay --once with stdout closed exits 1 (got $RC)" test "$RC" = 1
check "relay --once with stdout closed deletes nothing" test "$(rows)" = "$n"
sqlite3 "$TMP/app.db" "delete from outbox"

# --- SIGTERM stops a running relay gracefully -------------------------------
"$OUTBOX_BIN" relay --store "$DB" --to "file:$TMP/live.jsonl" --poll-interval 100ms \
    >"$TMP/relay.out" 2>"$TMP/relay.err" &
RELAY_PID=$!
# wait until it holds the lease, then let it publish a message enqueued meanwhile
relay_holds_lease() { run status --store "$DB" --json && json_check "j['relay'] is not None"; }
wait_for relay_holds_lease
check "running relay shows in status" json_check "j['relay'] is not None and j['relay']['owner']"
expect 1 "second relay refused while the first holds the lease" relay --store "$DB" --to stdout: --once
check "second relay mentions the other relay" grep -qi "relay" "$TMP/err"
check "second relay says how to stand by, once" test "$(grep -o -- --wait-lease "$TMP/err" | wc -l)" = 1
"$OUTBOX_BIN" enqueue --store "$DB" --type Live --aggregate-id L >/dev/null
wait_for test -s "$TMP/live.jsonl"
check "running relay published the new message" grep -q '"type":"Live"' "$TMP/live.jsonl"
# logrotate: move the file away, SIGHUP, and the next message goes to a new file
mv "$TMP/live.jsonl" "$TMP/live.jsonl.1"
kill -HUP "$RELAY_PID"
wait_for grep -q "reopening destination files" "$TMP/relay.err"
check "SIGHUP is logged" grep -q "reopening destination files" "$TMP/relay.err"
check "SIGHUP does not stop the relay" kill -0 "$RELAY_PID"
"$OUTBOX_BIN" enqueue --store "$DB" --type Rotated --aggregate-id L >/dev/null
wait_for test -s "$TMP/live.jsonl"
check "after SIGHUP the relay writes to the new file" grep -q '"type":"Rotated"' "$TMP/live.jsonl"
check "the rotated file keeps what it had" grep -q '"type":"Live"' "$TMP/live.jsonl.1"
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

# --- a relay killed -9 leaves its lease: status says the holder is gone ------
"$OUTBOX_BIN" relay --store "$DB" --to discard: --name doomed --lease-ttl 1h \
    >/dev/null 2>"$TMP/doomed.err" &
RELAY_PID=$!
wait_for relay_holds_lease
kill -KILL "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null
RELAY_PID=
expect 0 "status after the holder was killed" status --store "$DB"
check "status says the holder is gone" grep -Eq "^  relay +doomed \(pid [0-9]+ on .+\) is gone; its lease expires in" "$TMP/out"
expect 0 "status --json after the holder was killed" status --store "$DB" --json
check "status --json: gone, with pid and host" json_check \
    "j['relay']['owner']=='doomed' and j['relay']['gone'] is True and j['relay']['pid']>0 and j['relay']['host']"

# --- a schema newer than this build: every command refuses, exit 2 --------
NDB=sqlite:$TMP/newer.db
"$OUTBOX_BIN" init --store "$NDB" >/dev/null
"$OUTBOX_BIN" enqueue --store "$NDB" --type T --aggregate-id n >/dev/null
sqlite3 "$TMP/newer.db" "UPDATE outbox_meta SET value = '99' WHERE key = 'schema_version'"
newer_rows() { sqlite3 "$TMP/newer.db" 'select count(*) || status from outbox group by status'; }
before=$(newer_rows)
for args in "init" "status" "list" "list --json" "enqueue --type T --aggregate-id n" \
    "retry --all-failed" "drop --all-failed" "purge --sent-older-than 0s" \
    "relay --to stdout: --once"; do
    # shellcheck disable=SC2086
    expect 2 "newer schema: $args" $args --store "$NDB"
    check "newer schema: $args names both versions" grep -q "version 99, newer than this build" "$TMP/err"
    check "newer schema: $args prints nothing on stdout" test ! -s "$TMP/out"
done
check "newer schema: nothing was written" test "$(newer_rows)" = "$before"

# --- driver help from the drivers' property tables ------------------------
expect 0 "help drivers" help drivers
for st in $STORES; do
    check "help drivers lists store $st:" grep -q "^  $st:" "$TMP/out"
done
for d in $DESTINATIONS; do
    check "help drivers lists $d:" grep -q "^  $d:" "$TMP/out"
done
check "help drivers: every destination, built or not" \
    test "$(grep -cE '^  (stdout|file|discard|http|https|nats|kafka):' "$TMP/out")" -eq 7
check "help drivers: a setting with its type, default and range" \
    grep -q "^      max_in_flight=N  (default 16; 1..1024)$" "$TMP/out"
check "help drivers: a setting's doc" grep -q "^          Requests running at once" "$TMP/out"
check "help drivers: a family" grep -q "^      kafka.<name>=VALUE$" "$TMP/out"
check "help drivers: https shares http's settings" \
    grep -q "^      Settings: as for http://HOST/PATH$" "$TMP/out"
expect 0 "help drivers --markdown" help drivers --markdown
# sqlite, postgres, mysql (mariadb:// shares its table), http, nats.
check "--markdown: a table per driver with settings" \
    test "$(grep -c '^| setting | type | default | range | meaning |$' "$TMP/out")" -eq 7
check "--markdown: a pipe in a cell is escaped" grep -qF '| `insecure=true\|false` | bool |' "$TMP/out"
check "--markdown: says nothing about this build" bash -c "! grep -qi 'not in this build' '$TMP/out'"
expect 0 "help drivers --help" help drivers --help
check "help drivers --help prints usage" grep -q "^usage: outbox help drivers" "$TMP/out"
expect 2 "help drivers with an unknown argument" help drivers --bogus
check "help drivers --bogus is named" grep -q "unexpected argument '--bogus'" "$TMP/err"
expect 0 "relay --help (drivers)" relay --help
check "relay --help lists the stores" grep -q "^  sqlite:PATH" "$TMP/out"
if grep -qw http <<<"$DESTINATIONS"; then
    check "relay --help lists http's settings" grep -q "^      max_in_flight=N" "$TMP/out"
fi

# A setting no property has, or a value that does not parse: exit 2 at
# start-up, naming it (the generic parser; one case per kind of driver).
"$OUTBOX_BIN" init --store "sqlite:$TMP/props.db" >/dev/null
expect 2 "a --to-opt for stdout:" relay --store "sqlite:$TMP/props.db" --to stdout: \
    --to-opt colour=blue --once
check "stdout: takes no settings" \
    grep -q 'stdout destination has no option "colour"; it takes none' "$TMP/err"
if grep -qw http <<<"$DESTINATIONS"; then
    expect 2 "an unknown http setting" relay --store "sqlite:$TMP/props.db" \
        --to http://127.0.0.1:9/x --to-opt colour=blue --once
    check "unknown http setting: its options listed" \
        grep -q 'http destination has no option "colour"; its options: secret_file=PATH, ' "$TMP/err"
    expect 2 "an http setting out of range" relay --store "sqlite:$TMP/props.db" \
        --to http://127.0.0.1:9/x --to-opt max_in_flight=2000 --once
    check "out of range: the range and the doc" grep -q \
        "max_in_flight=2000 is out of range: give from 1 to 1024; max_in_flight: Requests" "$TMP/err"
fi
if grep -qw nats <<<"$DESTINATIONS"; then
    expect 2 "a malformed nats setting" relay --store "sqlite:$TMP/props.db" \
        --to "nats://127.0.0.1:9?stream=S&ack_timeout=soon&token=hunter2-tok" --once
    check "malformed nats setting named" grep -q "ack_timeout=soon is not a duration" "$TMP/err"
    check "the token is not shown" bash -c "! grep -q hunter2-tok '$TMP/err'"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

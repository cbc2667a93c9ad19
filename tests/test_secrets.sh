#!/usr/bin/env bash
# test_secrets.sh - secrets never shown, created files not world-readable.
#
# Runs the `outbox` command with unique canary secrets in every place a
# secret can be given (a PostgreSQL password, a webhook secret file and
# user:password@, NATS user:password@ and token=, a Kafka SASL password),
# at --log-level debug in text and JSON, through --version, help drivers,
# init, status, list, show, relay --once (refused, down, rejecting) and drop
# --archive.  Every byte the command writes (stdout, stderr, file: outputs,
# archives) is collected in one file, which must hold no canary.  Then the
# files the command creates (the SQLite database, a file: output, an
# archive) must not be readable by others, whatever the umask allows.
#
# Needs $OUTBOX_BIN (set by ctest) and python3 (skips with 77 without it).
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
command -v python3 >/dev/null 2>&1 || { echo "skip: python3 not installed"; exit 77; }
[ -x "$OUTBOX_BIN" ] || command -v "$OUTBOX_BIN" >/dev/null 2>&1 ||
    { echo "OUTBOX_BIN=$OUTBOX_BIN is not executable"; exit 1; }

TMP=$(mktemp -d)
HOOK_PID=
cleanup() {
    [ -n "$HOOK_PID" ] && kill "$HOOK_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP" || exit 1
unset OUTBOX_STORE OUTBOX_TO
# The most permissive usual umask: a file created 0644 is world-readable.
umask 022

PASSED=0
FAILED=0
ok()   { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }

# One unique string per secret; none is a substring of anything else.
PG_PW=cnryPgPass4e1d
PG_QPW=cnryPgQuery93b
HTTP_PW=cnryHttpPass7a2
WH_SECRET=whsec_Y25yeVdlYmhvb2tTZWNyZXQ1NWYx
WH_BAD=cnryBadSecretC0e
NATS_PW=cnryNatsPass81f
NATS_TOKEN=cnryNatsTokenD26
KAFKA_PW=cnryKafkaSasl3b9
CANARIES="$PG_PW $PG_QPW $HTTP_PW $WH_SECRET cnryWebhookSecret $WH_BAD $NATS_PW $NATS_TOKEN $KAFKA_PW"

ALL=$TMP/all.out
: >"$ALL"
printf '%s\n' "$WH_SECRET" >"$TMP/wh.secret"
printf '%s\n' "$WH_BAD" >"$TMP/wh.bad"

# run LABEL CMD...: runs the binary (stdin closed) and appends its stdout and
# stderr to $ALL under a label that holds no secret; exit code in $RC.
run() {
    local label=$1
    shift
    echo "=== $label" >>"$ALL"
    "$OUTBOX_BIN" "$@" </dev/null >>"$ALL" 2>&1
    RC=$?
    echo "=== exit $RC" >>"$ALL"
}

# runs LABEL CMD...: run, and the command must succeed.
runs() {
    run "$@"
    if [ "$RC" -eq 0 ]; then ok; else fail "$1: exit $RC"; fi
}

# refused LABEL CMD...: run, and the command must fail (the point is what
# its error says).
refused() {
    run "$@"
    if [ "$RC" -ne 0 ]; then ok; else fail "$1: exit 0, want a failure"; fi
}

# every_log LABEL CMD...: run at --log-level debug, in text and in JSON.
every_log() {
    local label=$1 fmt
    shift
    for fmt in text json; do
        run "$label (debug, $fmt)" --log-level debug --log-format "$fmt" "$@"
    done
}

# not_world_readable WHAT PATH
not_world_readable() {
    local mode
    if [ ! -e "$2" ]; then
        fail "$1: $2 was not created"
        return
    fi
    mode=$(stat -c %a "$2")
    if (((8#$mode & 8#007) == 0)); then ok; else fail "$1: $2 has mode $mode (others may read it)"; fi
}

wait_for() {
    local i
    for i in $(seq 1 100); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# --- the command itself -----------------------------------------------------
runs "--version" --version
runs "help drivers" help drivers
runs "help drivers --markdown" help drivers --markdown
DESTINATIONS=$("$OUTBOX_BIN" --version 2>&1 | sed -n 's/^destinations: //p')
STORES=$("$OUTBOX_BIN" --version 2>&1 | sed -n 's/^stores: //p')

# --- SQLite store: init, enqueue, status/list/show ---------------------------
DB=sqlite:$TMP/app.db
runs "init" --log-level debug init --store "$DB"
not_world_readable "the SQLite database made by init" "$TMP/app.db"
ID=$("$OUTBOX_BIN" enqueue --store "$DB" --type T --aggregate-id a --payload '{"n":1}' 2>>"$ALL")
"$OUTBOX_BIN" enqueue --store "$DB" --type T --aggregate-id b >/dev/null 2>>"$ALL"
for f in "$TMP/app.db-wal" "$TMP/app.db-shm"; do
    [ -e "$f" ] && not_world_readable "SQLite's companion file" "$f"
done

# --- PostgreSQL: nothing listens, the errors must not show the password -----
if grep -qw postgres <<<"$STORES"; then
    PG="postgresql://app:$PG_PW@127.0.0.1:1/db?connect_timeout=1"
    PGQ="postgresql://app@127.0.0.1:1/db?password=$PG_QPW&connect_timeout=1"
    for url in "$PG" "$PGQ"; do
        every_log "postgres status" status --store "$url"
        every_log "postgres init" init --store "$url"
        every_log "postgres list" list --store "$url"
        every_log "postgres relay" relay --store "$url" --to discard: --once --connect-timeout 0
    done
    OUTBOX_STORE=$PG every_log "postgres from OUTBOX_STORE" status
    refused "postgres URL that does not parse" status --store "postgresql://app:$PG_PW@[::1/db"
    refused "postgres URL with an unknown setting" status --store "$PG&bogus_key=1"
else
    echo "note: no postgres store in this build: its checks skipped"
fi

# --- NATS: nothing listens ------------------------------------------------------
if grep -qw nats <<<"$DESTINATIONS"; then
    for to in "nats://app:$NATS_PW@127.0.0.1:1?stream=S&connect_timeout=200ms" \
        "nats://127.0.0.1:1?stream=S&token=$NATS_TOKEN&connect_timeout=200ms" \
        "nats://app:$NATS_PW@127.0.0.1:1?stream=S&token=$NATS_TOKEN"; do
        every_log "nats relay" relay --store "$DB" --to "$to" --once --connect-timeout 0
    done
    every_log "nats token as --to-opt" relay --store "$DB" --to "nats://127.0.0.1:1?stream=S" \
        --to-opt "token=$NATS_TOKEN" --once --connect-timeout 0
    refused "nats URL with an unknown setting" relay --store "$DB" \
        --to "nats://app:$NATS_PW@127.0.0.1:1?stream=S&token=$NATS_TOKEN&bogus=1" --once
    OUTBOX_TO="nats://app:$NATS_PW@127.0.0.1:1?stream=S" every_log "nats from OUTBOX_TO" \
        relay --store "$DB" --once --connect-timeout 0
else
    echo "note: no nats destination in this build: its checks skipped"
fi

# --- Kafka: nothing listens -----------------------------------------------------
if grep -qw kafka <<<"$DESTINATIONS"; then
    SASL="kafka.security.protocol=sasl_plaintext&kafka.sasl.mechanisms=PLAIN"
    SASL="$SASL&kafka.sasl.username=app&kafka.sasl.password=$KAFKA_PW"
    every_log "kafka relay" relay --store "$DB" \
        --to "kafka://127.0.0.1:1?topic=t&ack_timeout=1s&$SASL" --once --connect-timeout 0
    every_log "kafka password as --to-opt" relay --store "$DB" \
        --to "kafka://127.0.0.1:1?topic=t&ack_timeout=1s" --to-opt "kafka.sasl.password=$KAFKA_PW" \
        --once --connect-timeout 0
    refused "kafka setting librdkafka refuses" relay --store "$DB" \
        --to "kafka://127.0.0.1:1?topic=t&kafka.sasl.password=$KAFKA_PW&kafka.no.such=x" --once
else
    echo "note: no kafka destination in this build: its checks skipped"
fi

# --- webhook: down, then rejecting every message ----------------------------
if grep -qw http <<<"$DESTINATIONS"; then
    every_log "webhook down" relay --store "$DB" --to "http://app:$HTTP_PW@127.0.0.1:1/hook" \
        --to-opt "secret_file=$TMP/wh.secret" --once --connect-timeout 0 --name down
    run "webhook with a malformed secret" --log-level debug relay --store "$DB" --to "http://127.0.0.1:1/x" \
        --to-opt "secret_file=$TMP/wh.bad" --once --connect-timeout 0
    WH_ENV=$WH_BAD run "webhook with a malformed secret_env" --log-level debug relay --store "$DB" \
        --to "http://127.0.0.1:1/x" --to-opt secret_env=WH_ENV --once --connect-timeout 0
    refused "webhook URL that does not parse" relay --store "$DB" \
        --to "http://app:$HTTP_PW@[::1/x" --once
    refused "webhook with an unknown setting" relay --store "$DB" \
        --to "http://app:$HTTP_PW@127.0.0.1:1/x" --to-opt "secret_file=$TMP/wh.secret" \
        --to-opt bogus=1 --once

    # A local endpoint that answers 410: every message goes Failed at once,
    # with the destination's error stored as last_error.
    cat >"$TMP/hook.py" <<'PY'
import http.server, os, sys
port_file = sys.argv[1]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(410)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY
    python3 "$TMP/hook.py" "$TMP/hook.port" &
    HOOK_PID=$!
    wait_for test -s "$TMP/hook.port" || fail "the test webhook did not start"
    HOOK="http://app:$HTTP_PW@127.0.0.1:$(cat "$TMP/hook.port")/hook"
    every_log "webhook rejecting" relay --store "$DB" --to "$HOOK" \
        --to-opt "secret_file=$TMP/wh.secret" --once --name rejecting
    FAILED_IDS=$("$OUTBOX_BIN" list --store "$DB" --status failed 2>>"$ALL" | grep -c .)
    if [ "$FAILED_IDS" -ge 1 ]; then ok; else fail "no message went Failed against the 410 hook"; fi
else
    echo "note: no http destination in this build: webhook checks skipped"
fi

# --- what the operator reads ---------------------------------------------------
every_log "status" status --store "$DB"
every_log "list" list --store "$DB"
every_log "list failed" list --store "$DB" --status failed
[ -n "$ID" ] && every_log "show" show --store "$DB" "$ID"
every_log "status --json" status --store "$DB" --json
every_log "list --json" list --store "$DB" --json
[ -n "$ID" ] && every_log "show --json" show --store "$DB" "$ID" --json

# --- files the command creates ---------------------------------------------------
if grep -qw http <<<"$DESTINATIONS" && [ -n "$ID" ]; then
    runs "drop --archive" --log-level debug drop --store "$DB" "$ID" --archive "file:$TMP/archive.jsonl"
    not_world_readable "the drop archive" "$TMP/archive.jsonl"
    [ -f "$TMP/archive.jsonl" ] && cat "$TMP/archive.jsonl" >>"$ALL"
fi
"$OUTBOX_BIN" enqueue --store "$DB" --type T --aggregate-id c >/dev/null 2>>"$ALL"
runs "relay to file:" --log-level debug relay --store "$DB" --to "file:$TMP/out.jsonl" --once
not_world_readable "the file: output" "$TMP/out.jsonl"
[ -f "$TMP/out.jsonl" ] && cat "$TMP/out.jsonl" >>"$ALL"

# --- no canary anywhere ----------------------------------------------------------
for c in $CANARIES; do
    if grep -n -F -- "$c" "$ALL" >"$TMP/hits"; then
        fail "a secret ($c) was shown:"
        sed 's/^/    /' "$TMP/hits" | head -20
    else
        ok
    fi
done
# The redaction must have happened, not the commands failing before any
# URL was shown: at least one redacted URL went by.
if grep -q '\*\*\*' "$ALL"; then ok; else fail "no redacted URL (***) in any output"; fi

echo "test_secrets: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

#!/usr/bin/env bash
# test_config.sh - `outbox relay --config` and `outbox config check`
# (docs/CONFIG.md), with real relays in one process:
#   - two relays (SQLite -> file:, SQLite -> webhook) with the webhook
#     receiver down: the file relay publishes everything meanwhile; the
#     receiver back: the other drains
#   - SIGHUP adding a third relay and changing one while messages are
#     enqueued: the unchanged relay publishes each message exactly once, the
#     changed one restarts once, the new one starts
#   - SIGHUP with an invalid file: refused with its file:line, the relays
#     go on
#   - SIGTERM: every relay stops, exit 0
#   - `config check` on a good file (exit 0) and on ten broken ones (exit 2,
#     each with its file:line)
#   - docs/CONFIG.md's key table is `outbox help config --markdown`
#
# The webhook receiver is python3's http.server answering 204.  Needs
# $OUTBOX_BIN (set by ctest) and python3 (skips with 77 without it).
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
SRC=${OUTBOX_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
command -v python3 >/dev/null 2>&1 || { echo "skip: python3 not installed"; exit 77; }
. "$SRC/tests/support/checks.sh"

TMP=$(mktemp -d)
RELAY_PID=
HOOK_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill -9 "$RELAY_PID" 2>/dev/null
    [ -n "$HOOK_PID" ] && kill "$HOOK_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP" || exit 1
unset OUTBOX_STORE OUTBOX_TO NOTIFY_SOCKET

# wait_for SECONDS CMD...: runs CMD every 0.1 s until it succeeds.
wait_for() {
    local tries=$(($1 * 10))
    shift
    while [ "$tries" -gt 0 ]; do
        "$@" && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}
lines() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
has_lines() { [ "$(lines "$1")" -ge "$2" ]; }
in_log() { grep -q -- "$1" relay.log; }
enqueue() { # DB COUNT PREFIX
    for i in $(seq 1 "$2"); do
        "$OUTBOX_BIN" enqueue --store "sqlite:$1" --type T --aggregate-id "$3$i" \
            --payload '{}' >/dev/null || fail "enqueue $1 $3$i"
    done
}
# Each published message once: no id twice in the file.
no_duplicates() {
    [ -z "$(python3 -c 'import json,sys
ids=[json.loads(l)["id"] for l in open(sys.argv[1])]
print("dup" if len(ids) != len(set(ids)) else "")' "$1")" ]
}

PORT=$(free_ports 1)
cat >hook.py <<'EOF'
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[2], "a") as f:
            f.write(self.headers.get("webhook-id", "?") + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
EOF

for db in orders billing audit; do
    "$OUTBOX_BIN" init --store "sqlite:$db.db" >/dev/null || fail "init $db"
done

# ---- config check ---------------------------------------------------------

write_good() {
    cat >relays.conf <<EOF
# two relays in one process
[outbox]
stop-timeout = 20s
log-level = info
listen = 127.0.0.1:0

[relay orders]
store = sqlite:orders.db
to = file:orders.jsonl
poll-interval = 100ms

[relay billing]
store = sqlite:billing.db
to = http://127.0.0.1:$PORT/hook
to-opt.timeout = 2s
backoff-base = 100ms
backoff-max = 1s
poll-interval = 100ms
EOF
}
write_good
"$OUTBOX_BIN" config check relays.conf >out 2>err
check "config check: a good file exits 0" [ $? = 0 ]
check "config check: says how many relays" grep -q "relays.conf: 2 relays, OK" out

printf 'secret\n' >token.txt
chmod 644 token.txt
# broken NAME LINE TEXT: writes broken-NAME.conf from stdin; config check must
# exit 2 with "broken-NAME.conf:LINE:" and TEXT.
broken() {
    local name=$1 line=$2 text=$3
    cat >"broken-$name.conf"
    "$OUTBOX_BIN" config check "broken-$name.conf" >out 2>err
    local rc=$?
    check "config check $name: exit 2 (got $rc)" [ "$rc" = 2 ]
    check "config check $name: broken-$name.conf:$line: $text" \
        grep -qF "broken-$name.conf:$line: " err
    check "config check $name: says $text" grep -qF -- "$text" err
    [ "$FAILED" = 0 ] || cat err
}
broken unknown-key 4 "did you mean 'batch'?" <<'EOF'
[relay a]
store = sqlite:orders.db
to = file:a.jsonl
batchh = 10
EOF
broken duration 3 "is not a duration" <<'EOF'
[relay a]
store = sqlite:orders.db
poll-interval = soon
to = file:a.jsonl
EOF
broken scheme 3 "oracle" <<'EOF'
[relay a]
store = sqlite:orders.db
to = oracle://db/x
EOF
broken no-store 2 "has no store" <<'EOF'
# no store
[relay a]
to = file:a.jsonl
EOF
broken secret-file 4 "cannot be read" <<EOF
[relay a]
store = sqlite:orders.db
to = http://127.0.0.1:$PORT/hook
to-opt.secret_file = $TMP/no-such-secret
EOF
broken duplicate 5 "defined twice" <<'EOF'
[relay a]
store = sqlite:orders.db
to = file:a.jsonl

[relay a]
store = sqlite:billing.db
to = file:b.jsonl
EOF
broken token-mode 2 "chmod 600" <<'EOF'
listen = 127.0.0.1:0
admin-token-file = token.txt
[relay a]
store = sqlite:orders.db
to = file:a.jsonl
EOF
broken conflict 5 "other to-opt settings" <<EOF
[relay a]
store = sqlite:orders.db
to = http://127.0.0.1:$PORT/hook
to-opt.timeout = 5s
[relay b]
store = sqlite:billing.db
to = http://127.0.0.1:$PORT/hook
to-opt.timeout = 9s
EOF
broken range 4 "out of range" <<'EOF'
[relay a]
store = sqlite:orders.db
to = file:a.jsonl
batch = 0
EOF
broken syntax 3 "is not 'key = value'" <<'EOF'
[relay a]
store = sqlite:orders.db
to file:a.jsonl
EOF
broken unclosed 1 "is not closed" <<'EOF'
[relay a
store = sqlite:orders.db
to = file:a.jsonl
EOF

# The environment overrides the file; so does a flag (with --config).
OUTBOX_ORDERS_BATCH=0 "$OUTBOX_BIN" config check relays.conf >out 2>err
check "config check: OUTBOX_ORDERS_BATCH is read (and checked)" grep -q "OUTBOX_ORDERS_BATCH" err

# ---- two relays, one destination down -------------------------------------

"$OUTBOX_BIN" relay --config relays.conf 2>relay.log &
RELAY_PID=$!
enqueue orders.db 20 o
enqueue billing.db 5 b
check "the file relay publishes while the webhook is down" wait_for 20 has_lines orders.jsonl 20
check "the webhook relay logs its outage" wait_for 20 in_log "billing"
check "nothing reached the webhook yet" [ "$(lines hook.txt)" = 0 ]
python3 hook.py "$PORT" hook.txt &
HOOK_PID=$!
check "the receiver back: the webhook relay drains" wait_for 30 has_lines hook.txt 5
# One monitor for both relays, each with its label.
metrics() {
    local port
    port=$(sed -n 's/.*monitor listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' relay.log | head -1)
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/metrics" >metrics.txt &&
        grep -q 'relay="orders"' metrics.txt && grep -q 'relay="billing"' metrics.txt
}
if command -v curl >/dev/null 2>&1; then
    check "/metrics has relay=\"orders\" and relay=\"billing\"" wait_for 10 metrics
fi

# ---- SIGHUP: a third relay, one changed, one unchanged --------------------

write_good
sed -i 's/^backoff-max = 1s/backoff-max = 2s/' relays.conf
cat >>relays.conf <<'EOF'

[relay audit]
store = sqlite:audit.db
to = file:audit.jsonl
poll-interval = 100ms
EOF
enqueue orders.db 10 p &
ENQ=$!
sleep 0.3
kill -HUP "$RELAY_PID"
wait "$ENQ"
enqueue orders.db 10 q
enqueue audit.db 3 a
check "reload logged" wait_for 10 in_log "config reloaded: added audit; removed none; restarted billing; unchanged orders"
check "the unchanged relay publishes every message" wait_for 20 has_lines orders.jsonl 40
check "the new relay publishes" wait_for 20 has_lines audit.jsonl 3
sleep 0.5
check "the unchanged relay published each message once (40 lines)" [ "$(lines orders.jsonl)" = 40 ]
check "the unchanged relay: no id twice" no_duplicates orders.jsonl
check "the unchanged relay was not restarted" \
    [ "$(grep -c 'relay orders: sqlite:' relay.log)" = 1 ]
check "the changed relay restarted once" [ "$(grep -c 'relay billing: sqlite:' relay.log)" = 2 ]
enqueue billing.db 2 c
check "the restarted relay publishes" wait_for 20 has_lines hook.txt 7

# ---- SIGHUP with an invalid file ------------------------------------------

echo "batch = many" >>relays.conf
LINE=$(wc -l <relays.conf)
kill -HUP "$RELAY_PID"
check "an invalid file is refused" wait_for 10 in_log "config reload refused"
check "the refusal names the file and line" grep -q "relays.conf:$LINE: batch 'many'" relay.log
enqueue orders.db 5 r
check "the relays go on after a refused reload" wait_for 20 has_lines orders.jsonl 45

# ---- SIGTERM ----------------------------------------------------------------

kill -TERM "$RELAY_PID"
wait "$RELAY_PID"
RC=$?
RELAY_PID=
check "SIGTERM: exit 0 (got $RC)" [ "$RC" = 0 ]
check "SIGTERM: all relays stopped" grep -q "all relays stopped" relay.log

# ---- docs/CONFIG.md's table is the code's ---------------------------------

"$OUTBOX_BIN" help config --markdown >generated
awk '$0 == "<!-- END GENERATED: keys -->" { inside = 0 } inside { print }
     $0 == "<!-- BEGIN GENERATED: keys -->" { inside = 1 }' "$SRC/docs/CONFIG.md" >committed
check "docs/CONFIG.md's key table is outbox help config --markdown (put its output between the markers)" \
    diff -u committed generated

[ "$FAILED" = 0 ] || { echo "--- relay.log"; tail -40 relay.log; }
checks_done test_config

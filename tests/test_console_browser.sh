#!/usr/bin/env bash
# test_console_browser.sh - the relay's web console in headless Chromium.
#
# Makes a SQLite outbox with published, Failed and blocked messages (a local
# webhook rejects, with 410 and an HTML-looking body, the messages marked
# "fail" while $TMP/reject exists), two of them typed
# <script>alert(1)</script>; then starts `outbox relay --listen 127.0.0.1:0
# --admin-token-file F` and runs tests/browser/console.test.mjs in admin
# mode (no console errors, counts equal `outbox status --json`, stored text
# shown as text, Retry refused without the token and working with it, Drop
# after a confirmation), then a relay without a token and the same script in
# read-only mode.
#
# Needs $OUTBOX_BIN and $OUTBOX_SOURCE_DIR (set by ctest), python3, node,
# chromium (or $CHROMIUM) and tests/browser's modules (`npm ci` there);
# skips with 77 when one is missing.  OUTBOX_CONSOLE_SCREENSHOT=PATH saves
# the admin page's screenshot there (docs/console.png is made so).
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
SRC=${OUTBOX_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
BROWSER_DIR=$SRC/tests/browser
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
for tool in python3 node; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done
[ -x "$CHROMIUM" ] || { echo "skip: no chromium at $CHROMIUM (Debian package chromium)"; exit 77; }
[ -d "$BROWSER_DIR/node_modules/playwright-core" ] ||
    { echo "skip: run 'npm ci' in tests/browser (playwright-core is not installed)"; exit 77; }
# console.test.mjs runs it from tests/browser: an absolute path.
OUTBOX_BIN=$(command -v "$OUTBOX_BIN") || { echo "OUTBOX_BIN is not executable"; exit 1; }
case $OUTBOX_BIN in /*) ;; *) OUTBOX_BIN=$PWD/$OUTBOX_BIN ;; esac
"$OUTBOX_BIN" relay --help 2>/dev/null | grep -q -- "--admin-token-file" ||
    { echo "skip: this build's relay has no --listen"; exit 77; }
"$OUTBOX_BIN" --version | grep -q '^destinations:.* http' ||
    { echo "skip: this build has no http destination"; exit 77; }

TMP=$(mktemp -d)
RELAY_PID=
HOOK_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null
    [ -n "$HOOK_PID" ] && kill "$HOOK_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
unset OUTBOX_STORE OUTBOX_TO
FAILED=0
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
wait_for() {
    for _ in $(seq 100); do
        "$@" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# The webhook: 2xx, except 410 for "fail" messages while $TMP/reject exists.
cat >"$TMP/hook.py" <<'PY'
import http.server, os, sys
port_file, reject = sys.argv[1], sys.argv[2]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = b""
        status = 200
        if b'"fail"' in body and os.path.exists(reject):
            status, answer = 410, b"<img src=x onerror=alert(2)>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY
touch "$TMP/reject"
python3 "$TMP/hook.py" "$TMP/hook.port" "$TMP/reject" &
HOOK_PID=$!
wait_for test -s "$TMP/hook.port" || { echo "FAIL: the webhook did not start"; exit 1; }
HOOK=http://127.0.0.1:$(cat "$TMP/hook.port")/events

STORE=sqlite:$TMP/console.db
XSS='<script>alert(1)</script>'
"$OUTBOX_BIN" init --store "$STORE" >/dev/null || exit 1
enqueue() { "$OUTBOX_BIN" enqueue --store "$STORE" "$@"; }
for i in 1 2 3; do enqueue --type OrderPlaced --aggregate-type Order --aggregate-id "o-$i" >/dev/null; done
F1=$(enqueue --type "$XSS" --aggregate-type Order --aggregate-id x-1 --payload '{"fail":1}')
enqueue --type OrderShipped --aggregate-type Order --aggregate-id x-1 >/dev/null # held behind F1
F2=$(enqueue --type Refund --aggregate-type '<b>Pay</b>' --aggregate-id x-2 --payload '{"fail":2}')
F3=$(enqueue --type "$XSS" --aggregate-type Order --aggregate-id x-3 --payload '{"fail":3}')
[ -n "$F1" ] && [ -n "$F2" ] && [ -n "$F3" ] || { echo "FAIL: enqueue"; exit 1; }
"$OUTBOX_BIN" relay --store "$STORE" --to "$HOOK" --once --on-sent mark 2>"$TMP/once.err"
"$OUTBOX_BIN" status --store "$STORE" --json >"$TMP/status.json"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["failed"]==3 and j["blocked"]==1 and j["sent"]==3 else 1)' \
    "$TMP/status.json" || { fail "setup: 3 Failed, 1 blocked, 3 sent"; cat "$TMP/status.json" "$TMP/once.err"; exit 1; }
rm -f "$TMP/reject"

# start_relay ARGS...: a relay serving the console on a free port; sets URL.
start_relay() {
    : >"$TMP/relay.err"
    "$OUTBOX_BIN" relay --store "$STORE" --to "$HOOK" --on-sent mark --listen 127.0.0.1:0 "$@" \
        2>"$TMP/relay.err" &
    RELAY_PID=$!
    URL=
    for _ in $(seq 100); do
        URL=$(sed -n 's|.*monitor listening on \(http://127.0.0.1:[0-9]*\).*|\1|p' "$TMP/relay.err" | head -1)
        [ -n "$URL" ] && return 0
        sleep 0.1
    done
    echo "FAIL: the relay's monitor did not start:"
    cat "$TMP/relay.err"
    exit 1
}
stop_relay() {
    kill -TERM "$RELAY_PID"
    wait "$RELAY_PID" || fail "the relay did not stop with exit 0 on SIGTERM"
    RELAY_PID=
}
browse() {
    (cd "$BROWSER_DIR" && env CONSOLE_URL="$URL" OUTBOX_BIN="$OUTBOX_BIN" STORE="$STORE" \
        CHROMIUM="$CHROMIUM" XSS_ID="$F1" "$@" timeout 180 node console.test.mjs) ||
        { fail "console.test.mjs $*"; sed 's/^/    relay: /' "$TMP/relay.err" | tail -20; }
}

TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
(umask 077 && printf '%s\n' "$TOKEN" >"$TMP/token")
start_relay --admin-token-file "$TMP/token"
browse MODE=admin ADMIN_TOKEN="$TOKEN" DROP_ID="$F2" SCREENSHOT="${OUTBOX_CONSOLE_SCREENSHOT:-$TMP/console.png}"
stop_relay
grep -q "$TOKEN" "$TMP/relay.err" && fail "the admin token appears in the relay's log"

start_relay
browse MODE=readonly XSS_ID="$F3"
stop_relay

[ "$FAILED" -eq 0 ] && echo "console browser test passed"
[ "$FAILED" -eq 0 ]

#!/usr/bin/env bash
# test_monitoring_rules.sh - docs/monitoring holds rules and a dashboard
# that work: `promtool check rules` accepts alerts.yml, `promtool test
# rules` passes alerts_test.yml (each alert fires on its series and stays
# quiet otherwise), grafana-dashboard.json parses and its queries (like the
# rules) use only metric names the relay exports, and, when this build's
# relay serves /metrics (--listen), `promtool check metrics` accepts its
# exposition.
#
# Needs $OUTBOX_SOURCE_DIR (set by ctest), python3 and promtool (Debian
# package prometheus); skips with 77 when a tool is missing.
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
for tool in python3 promtool; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done
DIR=${OUTBOX_SOURCE_DIR:-$(dirname "$0")/..}/docs/monitoring
TMP=$(mktemp -d)
RELAY_PID=
cleanup() {
    [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

PASSED=0
FAILED=0
check() {
    local what=$1
    shift
    if "$@" >"$TMP/out" 2>&1; then
        PASSED=$((PASSED + 1))
    else
        FAILED=$((FAILED + 1))
        echo "FAIL: $what"
        sed 's/^/    /' "$TMP/out"
    fi
}

check "promtool check rules alerts.yml" promtool check rules "$DIR/alerts.yml"
# promtool test rules reads rule_files relative to the test file.
check "promtool test rules alerts_test.yml" promtool test rules "$DIR/alerts_test.yml"

# The metric names the relay exports (per-relay families carry relay, store,
# destination); histograms also as _bucket/_sum/_count.
check "the dashboard parses and the rules and dashboard use only exported metrics" \
    python3 - "$DIR/grafana-dashboard.json" "$DIR/alerts.yml" <<'PY'
import json, re, sys
counters_gauges = """outbox_messages_published_total outbox_publish_attempts_total
outbox_messages_failed_total outbox_messages_pending outbox_messages_failed
outbox_messages_blocked outbox_aggregates_blocked outbox_oldest_pending_age_seconds
outbox_destination_up outbox_destination_backoff_seconds outbox_relay_partitions_owned
outbox_store_errors_total outbox_relay_info
outbox_wal_slot_lag_bytes outbox_wal_slot_lag_seconds""".split()
histograms = """outbox_commit_to_publish_seconds outbox_publish_duration_seconds
outbox_batch_messages""".split()
known = set(counters_gauges) | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}
dash = json.load(open(sys.argv[1]))
exprs = []
def walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                exprs.append(v)
            else:
                walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
walk(dash)
assert dash.get("panels"), "no panels"
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), "panel ids repeat"
rules = open(sys.argv[2]).read()
exprs_rules = re.findall(r"^\s*expr:\s*(?:>-\s*\n)?((?:.|\n)*?)(?=^\s*for:|^\s*labels:)", rules, re.M)
assert len(exprs_rules) == 6, exprs_rules
used = set()
for e in exprs + exprs_rules:
    used |= set(re.findall(r"\b((?:outbox|process)_[a-z0-9_]+)", e))
unknown = sorted(n for n in used if n.startswith("outbox_") and n not in known)
assert not unknown, "not exported by the relay: %s" % unknown
for want in ("outbox_messages_pending", "outbox_oldest_pending_age_seconds",
             "outbox_messages_published_total", "outbox_commit_to_publish_seconds_bucket",
             "outbox_messages_failed_total", "outbox_destination_up"):
    assert any(want in e for e in exprs), "the dashboard has no panel on " + want
assert any("histogram_quantile(0.5," in e for e in exprs), "no p50"
assert any("histogram_quantile(0.99," in e for e in exprs), "no p99"
PY

# The exposition, when this build's relay can serve it.
if "$OUTBOX_BIN" relay --help 2>/dev/null | grep -q -- "--listen"; then
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$OUTBOX_BIN" init --store "sqlite:$TMP/m.db" >/dev/null
    "$OUTBOX_BIN" enqueue --store "sqlite:$TMP/m.db" --type T --aggregate-id a >/dev/null
    "$OUTBOX_BIN" relay --store "sqlite:$TMP/m.db" --to discard: --listen "127.0.0.1:$PORT" \
        >/dev/null 2>"$TMP/relay.err" &
    RELAY_PID=$!
    for _ in $(seq 1 100); do
        python3 - "$PORT" "$TMP/metrics" <<'PY' 2>/dev/null && break
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=2).read()
assert b"outbox_messages_published_total" in body
open(sys.argv[2], "wb").write(body)
PY
        sleep 0.1
    done
    check "the relay's /metrics was fetched" test -s "$TMP/metrics"
    # check metrics reads stdin; it also lints (e.g. counters not ending in
    # _total), and any finding is a failure here.
    check "promtool check metrics accepts /metrics" bash -c "promtool check metrics <'$TMP/metrics'"
    check "every metric the rules and dashboard use is exported" python3 - "$TMP/metrics" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for name in ("outbox_messages_published_total", "outbox_messages_pending",
             "outbox_oldest_pending_age_seconds", "outbox_messages_failed",
             "outbox_aggregates_blocked", "outbox_destination_up",
             "outbox_relay_partitions_owned", "outbox_relay_info",
             "outbox_commit_to_publish_seconds_bucket"):
    assert re.search("^" + name + "[{ ]", text, re.M), name + " missing"
PY
    kill "$RELAY_PID" 2>/dev/null
    wait "$RELAY_PID" 2>/dev/null
    RELAY_PID=
else
    echo "note: this build's relay has no --listen: the /metrics exposition check is skipped"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

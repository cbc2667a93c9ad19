#!/usr/bin/env bash
# test_campuscafe_nats.sh - CampusCafe with --bus nats:// (NATS JetStream)
# end to end, on real processes:
#
#   1. `campuscafe demo --bus nats://... --orders 40` on its own nats-server:
#      exits 0 (the demo checks every order reached an end state and the
#      databases are consistent).
#   2. The four services started by hand on a fresh nats-server (payment
#      with its relay as an `outbox relay` child process, the others
#      in-process), orders placed through the API with curl, and mid-flow:
#        - the inventory service SIGKILLs itself right after committing
#          its 4th message, before acking it (CAFE_NATS_KILL_AFTER_COMMIT),
#          is restarted, and is later SIGKILLed from outside and restarted
#          again: unacked messages come back after AckWait and the inbox
#          drops the one already applied (its log must show that);
#        - nats-server is SIGKILLed and restarted on the same store (orders
#          placed meanwhile are only in the order service's outbox and go
#          out when the server is back).
#      Then, read from the four databases: every accepted order exists once
#      and reached an end state, each end state occurred, nothing was
#      applied twice (one ReserveStockRequested handled per order, one
#      payment per order that reached payment, one notification per kind),
#      stock is conserved, reservations belong to completed orders only, no
#      payment without an order, every outbox drained; and SIGTERM stops
#      every service with exit 0.
#
# Skips (77) without nats-server, sqlite3, curl or python3, or when the
# build has no nats.c, libmicrohttpd or libcurl.  Takes well under 2 min.
# CAFE_NATS_KEEP=1 keeps the run's directory (logs, databases).
set -u

BUILD=${OUTBOX_BUILD_DIR:-build}
CAFE=$BUILD/campuscafe
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}

skip() { echo "skip: $*"; exit 77; }
[ -x "$NATS_SERVER" ] || skip "$NATS_SERVER not found: install the nats-server package"
for tool in sqlite3 curl python3; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not installed"
done
[ -x "$CAFE" ] || { echo "FAIL: $CAFE not built"; exit 1; }
if [ -f "$BUILD/CMakeCache.txt" ]; then
    for lib in NATS MHD CURL; do
        grep -q "^${lib}_FOUND:INTERNAL=1" "$BUILD/CMakeCache.txt" ||
            skip "this build has no $lib (campuscafe --bus nats:// needs nats.c, libmicrohttpd, libcurl)"
    done
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cafe-nats-XXXXXX")
NATS_PID=
declare -A PID=()
cleanup() {
    local p
    for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null; done
    [ -n "$NATS_PID" ] && kill -9 "$NATS_PID" 2>/dev/null
    wait 2>/dev/null
    if [ -n "${CAFE_NATS_KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

. "$(dirname "$0")/support/checks.sh"
now_ms() { date +%s%3N; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# nats_start PORT STORE_DIR: starts (or restarts) nats-server -js.
nats_start() {
    "$NATS_SERVER" -js -a 127.0.0.1 -p "$1" -sd "$2" >>"$2.log" 2>&1 &
    NATS_PID=$!
    local deadline=$(($(now_ms) + 15000))
    until port_open "$1"; do
        if ! kill -0 "$NATS_PID" 2>/dev/null || [ "$(now_ms)" -gt "$deadline" ]; then
            echo "FAIL: nats-server did not start on port $1"; tail -20 "$2.log"; exit 1
        fi
        sleep 0.05
    done
}

nats_kill9() { kill -9 "$NATS_PID" 2>/dev/null; wait "$NATS_PID" 2>/dev/null; NATS_PID=; }

nats_stop() {
    kill "$NATS_PID" 2>/dev/null
    wait "$NATS_PID" 2>/dev/null
    NATS_PID=
}

# ------------------------------------------------------------------------
# 1. The demo over NATS.
# ------------------------------------------------------------------------
read -r DEMO_NATS_PORT <<<"$(free_ports 1)"
mkdir -p "$TMP/demo"
nats_start "$DEMO_NATS_PORT" "$TMP/demo-nats"
t0=$(now_ms)
(cd "$TMP/demo" && timeout 90 "$CAFE" demo --bus "nats://127.0.0.1:$DEMO_NATS_PORT" --orders 40 \
    >"$TMP/demo.out" 2>"$TMP/demo.err")
rc=$?
if [ "$rc" -eq 0 ]; then ok; else
    fail "campuscafe demo --bus nats:// --orders 40 exited $rc"
    tail -30 "$TMP/demo.out" "$TMP/demo.err"
fi
echo "demo over NATS: exit $rc in $(($(now_ms) - t0)) ms"
nats_stop

# ------------------------------------------------------------------------
# 2. The services by hand: kill inventory, kill nats-server.
# ------------------------------------------------------------------------
read -r NATS_PORT API_PORT P_ORDER P_INV P_PAY P_NOTE <<<"$(free_ports 6)"
BUS="nats://127.0.0.1:$NATS_PORT"
DIR=$TMP/run
mkdir -p "$DIR"
nats_start "$NATS_PORT" "$TMP/nats"

# Payment declines by a hash of the order id (random ids): of the ~17
# orders that reach payment, a rate of 0.25 declined none in about 0.75% of
# runs (and the check below wants a cancelled order); at 0.5 the chance of
# no decline, or of no completed order, is about 1 in 100,000.
declare -A ARGS=(
    [order]="--port $P_ORDER --api-port $API_PORT"
    [inventory]="--port $P_INV --stock latte=40,espresso=40,croissant=25,muffin=6"
    [payment]="--port $P_PAY --fail-rate 0.5 --relay process"
    [notification]="--port $P_NOTE"
)

# start_svc NAME [VAR=VALUE...]: starts the service (with those environment
# variables) and waits for DIR/NAME.ready.
start_svc() {
    local name=$1 deadline
    shift
    rm -f "$DIR/$name.ready"
    # shellcheck disable=SC2086
    env "$@" "$CAFE" "$name" --dir "$DIR" --bus "$BUS" --seed 11 ${ARGS[$name]} \
        >>"$DIR/$name.log" 2>&1 &
    PID[$name]=$!
    deadline=$(($(now_ms) + 20000))
    until [ -s "$DIR/$name.ready" ]; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null || [ "$(now_ms)" -gt "$deadline" ]; then
            echo "FAIL: $name did not become ready"; tail -20 "$DIR/$name.log"; exit 1
        fi
        sleep 0.05
    done
}

ITEMS=(latte espresso croissant muffin)
ACCEPTED=0
# place I: POST /orders (Idempotency-Key k-I, retried on a failed
# connection); counts the 201s.
place() {
    local i=$1 item=${ITEMS[$(($1 % 4))]} qty=$(($1 % 3 + 1)) code
    local body="{\"customer\":\"c$i\",\"items\":[{\"item\":\"$item\",\"qty\":$qty}]}"
    [ $((i % 5)) -eq 0 ] && body="{\"customer\":\"c$i\",\"items\":[{\"item\":\"muffin\",\"qty\":2},{\"item\":\"latte\",\"qty\":1}]}"
    for _ in 1 2 3; do
        code=$(curl -s -o "$DIR/resp" -w '%{http_code}' --max-time 5 -X POST \
            -H 'Content-Type: application/json' -H "Idempotency-Key: k-$i" \
            --data "$body" "http://127.0.0.1:$API_PORT/orders")
        case $code in
        # 200: an earlier attempt was stored, its answer lost: the same order.
        201 | 200) ACCEPTED=$((ACCEPTED + 1)); return 0 ;;
        000) sleep 0.2 ;;
        *) fail "POST /orders #$i answered $code: $(cat "$DIR/resp")"; return 1 ;;
        esac
    done
    fail "POST /orders #$i: no answer"
}

q() { sqlite3 -cmd ".timeout 5000" "$DIR/order.db" "$@"; }
ALL="ATTACH '$DIR/inventory.db' AS inv; ATTACH '$DIR/payment.db' AS pay;
     ATTACH '$DIR/notification.db' AS ntf;"

# settle SECONDS: waits until ACCEPTED orders exist, all in an end state.
settle() {
    local deadline=$(($(now_ms) + $1 * 1000)) open n
    while :; do
        n=$(q "SELECT count(*) FROM orders" 2>/dev/null)
        open=$(q "SELECT count(*) FROM orders WHERE state NOT IN ('completed','rejected','cancelled')" 2>/dev/null)
        [ "$n" = "$ACCEPTED" ] && [ "$open" = 0 ] && return 0
        if [ "$(now_ms)" -gt "$deadline" ]; then
            fail "after $1 s: $n orders (want $ACCEPTED), $open not in an end state"
            q "SELECT state, count(*) FROM orders GROUP BY state"
            return 1
        fi
        sleep 0.2
    done
}

t0=$(now_ms)
# The first inventory process SIGKILLs itself right after committing its
# 4th message, before acking it: that message must come back and be seen
# as a duplicate by the inbox.
for s in order payment notification; do start_svc "$s"; done
start_svc inventory CAFE_NATS_KILL_AFTER_COMMIT=4

for i in $(seq 1 12); do place "$i"; done
deadline=$(($(now_ms) + 10000))
while kill -0 "${PID[inventory]}" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
if kill -0 "${PID[inventory]}" 2>/dev/null; then
    fail "inventory did not kill itself after its 4th commit"
    kill -9 "${PID[inventory]}"
fi
wait "${PID[inventory]}" 2>/dev/null
rc=$?
[ "$rc" -eq 137 ] && ok || fail "inventory exited $rc, want 137 (SIGKILL after commit)"
for i in $(seq 13 18); do place "$i"; done
start_svc inventory
for i in $(seq 19 22); do place "$i"; done
# And killed from outside while orders are flowing.
kill -9 "${PID[inventory]}"
wait "${PID[inventory]}" 2>/dev/null
for i in $(seq 23 24); do place "$i"; done
start_svc inventory

# nats-server killed with events in flight; orders keep being accepted
# (they only need the order service's database), then the server returns.
for i in $(seq 25 30); do place "$i"; done
nats_kill9
for i in $(seq 31 38); do place "$i"; done
sleep 1
nats_start "$NATS_PORT" "$TMP/nats"
for i in $(seq 39 46); do place "$i"; done
# A client retry with an already used key creates nothing (200, same order).
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
    -H 'Content-Type: application/json' -H 'Idempotency-Key: k-3' \
    --data '{"customer":"c3","items":[{"item":"muffin","qty":1}]}' \
    "http://127.0.0.1:$API_PORT/orders")
[ "$code" = 200 ] && ok || fail "retry with Idempotency-Key k-3 answered $code, want 200"

if settle 75; then ok; fi
echo "services over NATS: $ACCEPTED orders settled in $(($(now_ms) - t0)) ms"
[ "$ACCEPTED" -eq 46 ] && ok || fail "$ACCEPTED of 46 orders accepted"
# JetStream redelivers the message left unacked by the SIGKILL once its
# AckWait (5 s) has passed since the delivery; the orders can all settle
# before that.
killed_id=$(sed -n 's/.* \([0-9a-f-]\{36\}\) committed; CAFE_NATS_KILL_AFTER_COMMIT.*/\1/p' \
    "$DIR/inventory.log" | head -1)
deadline=$(($(now_ms) + 20000))
until [ -z "$killed_id" ] || [ "$(now_ms)" -gt "$deadline" ] ||
    grep -q "$killed_id was already applied (redelivery)" "$DIR/inventory.log"; do sleep 0.2; done
if [ -n "$killed_id" ] &&
    grep -q "$killed_id was already applied (redelivery)" "$DIR/inventory.log"; then ok; else
    fail "inventory never saw the redelivery of the message committed before its SIGKILL (${killed_id:-no id logged})"
fi

# Every outbox drains (the relays confirmed everything to JetStream).
deadline=$(($(now_ms) + 10000))
for s in order inventory payment notification; do
    while :; do
        n=$(sqlite3 -cmd ".timeout 5000" "$DIR/$s.db" \
            "SELECT count(*) FROM outbox WHERE status != 'sent'" 2>&1)
        [ "$n" = 0 ] && { ok; break; }
        [ "$(now_ms)" -gt "$deadline" ] && { fail "$s: $n outbox messages not sent"; break; }
        sleep 0.2
    done
done

# An order ends (cancelled) in the same transaction that enqueues its
# ReleaseStockRequested: settled orders can still have that event on its
# way to inventory (a relay backing off after the nats-server restart, a
# restarted consumer).  The checks below are about the end state, so they
# wait for it (at most 20 s; a lost event would still fail them).
deadline=$(($(now_ms) + 20000))
until [ "$(q "$ALL SELECT count(*) FROM orders o WHERE o.state = 'cancelled' AND (SELECT count(*)
        FROM inv.handled h WHERE h.order_id = o.id AND h.event = 'ReleaseStockRequested') = 0" 2>&1)" = 0 ] ||
    [ "$(now_ms)" -gt "$deadline" ]; do
    sleep 0.2
done

# expect_zero WHAT SQL: the query (over all four databases) must give 0.
expect_zero() {
    local v
    v=$(q "$ALL $2" 2>&1)
    if [ "$v" = 0 ]; then ok; else fail "$1: $v"; fi
}

expect_zero "orders that are not in an end state" \
    "SELECT count(*) FROM orders WHERE state NOT IN ('completed','rejected','cancelled')"
for st in completed rejected cancelled; do
    n=$(q "SELECT count(*) FROM orders WHERE state='$st'")
    [ "${n:-0}" -gt 0 ] && ok || fail "no order ended $st (the run should reach every end state)"
done
expect_zero "orders without exactly one handled ReserveStockRequested" \
    "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM inv.handled h
       WHERE h.order_id = o.id AND h.event = 'ReserveStockRequested') != 1"
expect_zero "handled rows for unknown orders" \
    "SELECT count(*) FROM inv.handled WHERE order_id NOT IN (SELECT id FROM orders)"
expect_zero "ReleaseStockRequested handled not exactly once per cancelled order" \
    "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM inv.handled h
       WHERE h.order_id = o.id AND h.event = 'ReleaseStockRequested')
       != (CASE o.state WHEN 'cancelled' THEN 1 ELSE 0 END)"
expect_zero "stock not conserved (initial != on_hand + reserved)" \
    "SELECT count(*) FROM inv.stock s WHERE s.initial != s.on_hand + coalesce((SELECT sum(qty)
       FROM inv.reservations r WHERE r.item = s.item AND r.status = 'reserved'), 0)"
expect_zero "reservations held for orders that did not complete" \
    "SELECT count(*) FROM inv.reservations r LEFT JOIN orders o ON o.id = r.order_id
       WHERE r.status = 'reserved' AND (o.state IS NULL OR o.state != 'completed')"
expect_zero "payments without an order" \
    "SELECT count(*) FROM pay.payments WHERE order_id NOT IN (SELECT id FROM orders)"
expect_zero "orders paid a wrong number of times" \
    "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM pay.payments p WHERE p.order_id = o.id)
       != (CASE WHEN o.state IN ('completed','cancelled') THEN 1 ELSE 0 END)"
expect_zero "payment outcome does not match the end state" \
    "SELECT count(*) FROM orders o JOIN pay.payments p ON p.order_id = o.id
       WHERE (o.state = 'completed') != (p.outcome = 'succeeded')"
expect_zero "notifications sent twice" \
    "SELECT count(*) FROM (SELECT 1 FROM ntf.notifications GROUP BY order_id, kind HAVING count(*) > 1)"
expect_zero "orders without their received and final notification" \
    "SELECT count(*) FROM orders o WHERE
       (SELECT count(*) FROM ntf.notifications n WHERE n.order_id = o.id AND n.kind = o.state) != 1
       OR (SELECT count(*) FROM ntf.notifications n WHERE n.order_id = o.id AND n.kind = 'received') != 1"
expect_zero "notifications for unknown orders" \
    "SELECT count(*) FROM ntf.notifications WHERE order_id NOT IN (SELECT id FROM orders)"


# SIGTERM: every service stops cleanly (consumer thread, relay, database).
for s in order inventory payment notification; do
    kill -TERM "${PID[$s]}" 2>/dev/null
done
for s in order inventory payment notification; do
    deadline=$(($(now_ms) + 10000))
    while kill -0 "${PID[$s]}" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
    if kill -0 "${PID[$s]}" 2>/dev/null; then
        fail "$s did not stop within 10 s of SIGTERM"
    else
        wait "${PID[$s]}"
        rc=$?
        [ "$rc" -eq 0 ] && ok || { fail "$s exited $rc on SIGTERM"; tail -5 "$DIR/$s.log"; }
    fi
    unset "PID[$s]"
done
nats_stop

echo "test_campuscafe_nats: $PASSED passed, $FAILED failed"
if [ "$FAILED" -ne 0 ]; then
    for s in order inventory payment notification; do
        echo "--- $s.log (last lines)"; tail -15 "$DIR/$s.log"
    done
    exit 1
fi
exit 0

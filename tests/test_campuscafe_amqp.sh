#!/usr/bin/env bash
# test_campuscafe_amqp.sh - CampusCafe with --bus amqp:// (RabbitMQ) end to
# end, on real processes and a rabbitmq-server of its own (node name,
# ports, epmd and data directory in a temporary directory):
#
#   1. `campuscafe demo --bus amqp://... --orders 40`: exits 0 (the demo
#      checks every order reached an end state and the databases agree).
#   2. The four services started by hand (payment with its relay as an
#      `outbox relay` child process), orders placed through the API, and
#      mid-flow:
#        - inventory SIGKILLs itself right after committing its 4th message,
#          before acking it (CAFE_AMQP_KILL_AFTER_COMMIT), and is restarted:
#          RabbitMQ redelivers the unacked message and the inbox drops it
#          (its log must say so);
#        - the broker is SIGKILLed and restarted on its data (orders placed
#          meanwhile wait in the order service's outbox; the quorum queues
#          keep what was confirmed).
#      Then, from the four databases: every accepted order reached an end
#      state, nothing was applied twice (one ReserveStockRequested handled
#      per order, one payment per order that reached payment, one
#      notification per kind), stock is conserved, every outbox drained; and
#      SIGTERM stops every service with exit 0.
#
# Skips (77) without rabbitmq-server, sqlite3, curl or python3, or when the
# build has no librabbitmq, libmicrohttpd or libcurl.
# CAFE_AMQP_KEEP=1 keeps the run's directory (logs, databases).
set -u

BUILD=${OUTBOX_BUILD_DIR:-build}
CAFE=$BUILD/campuscafe
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
EPMD=/usr/bin/epmd

skip() { echo "skip: $*"; exit 77; }
[ -x "$RABBITMQ_SERVER" ] && [ -x "$EPMD" ] ||
    skip "$RABBITMQ_SERVER not found: install the rabbitmq-server package"
for tool in sqlite3 curl python3; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not installed"
done
[ -x "$CAFE" ] || { echo "FAIL: $CAFE not built"; exit 1; }
if [ -f "$BUILD/CMakeCache.txt" ]; then
    for lib in RABBITMQ MHD CURL; do
        grep -q "^${lib}_FOUND:INTERNAL=1" "$BUILD/CMakeCache.txt" ||
            skip "this build has no $lib (campuscafe --bus amqp:// needs librabbitmq, libmicrohttpd, libcurl)"
    done
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cafe-amqp-XXXXXX")
RMQ_PID=
EPMD_PID=
declare -A PID=()
cleanup() {
    local p
    for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null; done
    [ -n "$RMQ_PID" ] && kill -9 "$RMQ_PID" 2>/dev/null
    [ -n "$EPMD_PID" ] && kill -9 "$EPMD_PID" 2>/dev/null
    wait 2>/dev/null
    if [ -n "${CAFE_AMQP_KEEP:-}" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

. "$(dirname "$0")/support/checks.sh"
now_ms() { date +%s%3N; }

# The broker: the Erlang VM itself (RABBITMQ_ALLOW_INPUT makes the script
# exec it), its own epmd, everything under $TMP/rabbitmq.
read -r AMQP_PORT DIST_PORT EPMD_PORT <<<"$(free_ports 3)"
RMQ_DIR=$TMP/rabbitmq
mkdir -p "$RMQ_DIR"
echo "[]." >"$RMQ_DIR/enabled_plugins"
printf 'listeners.tcp.default = 127.0.0.1:%s\nlog.console = true\nlog.console.level = warning\nlog.file = false\ndisk_free_limit.absolute = 1MB\n' \
    "$AMQP_PORT" >"$RMQ_DIR/rabbitmq.conf"
"$EPMD" -port "$EPMD_PORT" -address 127.0.0.1 >>"$RMQ_DIR/epmd.log" 2>&1 &
EPMD_PID=$!
BUS="amqp://127.0.0.1:$AMQP_PORT"

# rmq_start: starts (or restarts) the broker and waits until the demo's
# own probe (a declaration through the bus) works.
rmq_start() {
    env HOME="$RMQ_DIR" RABBITMQ_NODENAME="outbox-cafe-$$@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT" \
        RABBITMQ_DIST_PORT="$DIST_PORT" ERL_EPMD_PORT="$EPMD_PORT" \
        RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log" RABBITMQ_LOGS=- \
        RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
        RABBITMQ_ALLOW_INPUT=1 RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-noinput \
        "$RABBITMQ_SERVER" >>"$RMQ_DIR/server.log" 2>&1 &
    RMQ_PID=$!
    local deadline=$(($(now_ms) + 180000))
    until "$BUILD/outbox" relay --once --connect-timeout 0 --store "sqlite:$RMQ_DIR/probe.db" \
        --to "$BUS?exchange=probe&declare=exchange" >/dev/null 2>&1; do
        if ! kill -0 "$RMQ_PID" 2>/dev/null || [ "$(now_ms)" -gt "$deadline" ]; then
            echo "FAIL: rabbitmq-server did not start on port $AMQP_PORT"
            tail -20 "$RMQ_DIR/server.log"; exit 1
        fi
        sleep 0.25
    done
}
"$BUILD/outbox" init --store "sqlite:$RMQ_DIR/probe.db" >/dev/null

rmq_kill9() { kill -9 "$RMQ_PID" 2>/dev/null; wait "$RMQ_PID" 2>/dev/null; RMQ_PID=; }

t0=$(now_ms)
rmq_start
echo "rabbitmq-server up in $(($(now_ms) - t0)) ms"

# ------------------------------------------------------------------------
# 1. The demo over RabbitMQ.
# ------------------------------------------------------------------------
mkdir -p "$TMP/demo"
t0=$(now_ms)
(cd "$TMP/demo" && timeout 120 "$CAFE" demo --bus "$BUS" --orders 40 \
    >"$TMP/demo.out" 2>"$TMP/demo.err")
rc=$?
if [ "$rc" -eq 0 ]; then ok; else
    fail "campuscafe demo --bus amqp:// --orders 40 exited $rc"
    tail -30 "$TMP/demo.out" "$TMP/demo.err"
fi
echo "demo over RabbitMQ: exit $rc in $(($(now_ms) - t0)) ms"

# ------------------------------------------------------------------------
# 2. The services by hand: inventory dies after a commit, the broker dies.
# ------------------------------------------------------------------------
read -r API_PORT P_ORDER P_INV P_PAY P_NOTE <<<"$(free_ports 5)"
DIR=$TMP/run
mkdir -p "$DIR"
declare -A ARGS=(
    [order]="--port $P_ORDER --api-port $API_PORT"
    [inventory]="--port $P_INV --stock latte=40,espresso=40,croissant=25,muffin=6"
    [payment]="--port $P_PAY --fail-rate 0.5 --relay process"
    [notification]="--port $P_NOTE"
)

start_svc() {
    local name=$1 deadline
    shift
    rm -f "$DIR/$name.ready"
    # shellcheck disable=SC2086
    env "$@" "$CAFE" "$name" --dir "$DIR" --bus "$BUS" --seed 11 ${ARGS[$name]} \
        >>"$DIR/$name.log" 2>&1 &
    PID[$name]=$!
    deadline=$(($(now_ms) + 30000))
    until [ -s "$DIR/$name.ready" ]; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null || [ "$(now_ms)" -gt "$deadline" ]; then
            echo "FAIL: $name did not become ready"; tail -20 "$DIR/$name.log"; exit 1
        fi
        sleep 0.05
    done
}

ITEMS=(latte espresso croissant muffin)
ACCEPTED=0
place() {
    local i=$1 item=${ITEMS[$(($1 % 4))]} qty=$(($1 % 3 + 1)) code
    local body="{\"customer\":\"c$i\",\"items\":[{\"item\":\"$item\",\"qty\":$qty}]}"
    for _ in 1 2 3; do
        code=$(curl -s -o "$DIR/resp" -w '%{http_code}' --max-time 5 -X POST \
            -H 'Content-Type: application/json' -H "Idempotency-Key: k-$i" \
            --data "$body" "http://127.0.0.1:$API_PORT/orders")
        case $code in
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
for s in order payment notification; do start_svc "$s"; done
start_svc inventory CAFE_AMQP_KILL_AFTER_COMMIT=4

for i in $(seq 1 12); do place "$i"; done
deadline=$(($(now_ms) + 15000))
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
for i in $(seq 19 24); do place "$i"; done

# The broker killed with events in flight; orders keep being accepted.
rmq_kill9
for i in $(seq 25 32); do place "$i"; done
rmq_start
for i in $(seq 33 40); do place "$i"; done

if settle 90; then ok; fi
echo "services over RabbitMQ: $ACCEPTED orders settled in $(($(now_ms) - t0)) ms"
[ "$ACCEPTED" -eq 40 ] && ok || fail "$ACCEPTED of 40 orders accepted"
if grep -q "was already applied (redelivery)" "$DIR/inventory.log"; then ok; else
    fail "inventory never saw the redelivery of the message committed before its SIGKILL"
fi

expect_zero() {
    local v
    v=$(q "$ALL $2" 2>&1)
    if [ "$v" = 0 ]; then ok; else fail "$1: $v"; fi
}
expect_zero "orders that are not in an end state" \
    "SELECT count(*) FROM orders WHERE state NOT IN ('completed','rejected','cancelled')"
expect_zero "orders without exactly one handled ReserveStockRequested" \
    "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM inv.handled h
       WHERE h.order_id = o.id AND h.event = 'ReserveStockRequested') != 1"
expect_zero "stock not conserved (initial != on_hand + reserved)" \
    "SELECT count(*) FROM inv.stock s WHERE s.initial != s.on_hand + coalesce((SELECT sum(qty)
       FROM inv.reservations r WHERE r.item = s.item AND r.status = 'reserved'), 0)"
expect_zero "reservations held for orders that did not complete" \
    "SELECT count(*) FROM inv.reservations r LEFT JOIN orders o ON o.id = r.order_id
       WHERE r.status = 'reserved' AND (o.state IS NULL OR o.state != 'completed')"
expect_zero "orders paid a wrong number of times" \
    "SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM pay.payments p WHERE p.order_id = o.id)
       != (CASE WHEN o.state IN ('completed','cancelled') THEN 1 ELSE 0 END)"
expect_zero "notifications sent twice" \
    "SELECT count(*) FROM (SELECT 1 FROM ntf.notifications GROUP BY order_id, kind HAVING count(*) > 1)"
expect_zero "orders without their received and final notification" \
    "SELECT count(*) FROM orders o WHERE
       (SELECT count(*) FROM ntf.notifications n WHERE n.order_id = o.id AND n.kind = o.state) != 1
       OR (SELECT count(*) FROM ntf.notifications n WHERE n.order_id = o.id AND n.kind = 'received') != 1"

deadline=$(($(now_ms) + 15000))
for s in order inventory payment notification; do
    while :; do
        n=$(sqlite3 -cmd ".timeout 5000" "$DIR/$s.db" \
            "SELECT count(*) FROM outbox WHERE status != 'sent'" 2>&1)
        [ "$n" = 0 ] && { ok; break; }
        [ "$(now_ms)" -gt "$deadline" ] && { fail "$s: $n outbox messages not sent"; break; }
        sleep 0.2
    done
done

for s in order inventory payment notification; do
    kill -TERM "${PID[$s]}" 2>/dev/null
done
for s in order inventory payment notification; do
    deadline=$(($(now_ms) + 15000))
    while kill -0 "${PID[$s]}" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
    if kill -0 "${PID[$s]}" 2>/dev/null; then
        fail "$s did not stop within 15 s of SIGTERM"
    else
        wait "${PID[$s]}"
        rc=$?
        [ "$rc" -eq 0 ] && ok || { fail "$s exited $rc on SIGTERM"; tail -5 "$DIR/$s.log"; }
    fi
    unset "PID[$s]"
done

echo "test_campuscafe_amqp: $PASSED passed, $FAILED failed"
if [ "$FAILED" -ne 0 ]; then
    for s in order inventory payment notification; do
        echo "--- $s.log (last lines)"; tail -15 "$DIR/$s.log"
    done
    exit 1
fi
exit 0

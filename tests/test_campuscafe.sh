#!/usr/bin/env bash
# test_campuscafe.sh - end-to-end tests of CampusCafe with the real
# processes: the four services (each its own SQLite database) started here
# on free loopback ports with a shared webhook secret.
#
#   1. happy path to each end state: completed, rejected (out of stock),
#      cancelled (payment declined, stock released);
#   2. bad requests to the order API: 400 naming the problem, nothing
#      stored; 404 for an unknown order; an Idempotency-Key retry answers
#      200 with the same order and creates nothing;
#   3. each service killed with SIGKILL mid-flow and restarted with the same
#      arguments: every order still reaches an end state, nothing is
#      applied twice (counted in the databases);
#   4. `campuscafe chaos` on 3 seeds: the naive mode's failure counts are
#      non-zero in total, the outbox mode's are zero on every seed.
#
# Needs the campuscafe binary built with libmicrohttpd and libcurl (skips
# with 77 otherwise), sqlite3, curl and python3.  OUTBOX_TEST_SCALE < 1
# places fewer orders; OUTBOX_TEST_KEEP=1 keeps the directories.
set -u

BUILD=${OUTBOX_BUILD_DIR:-build}
CC_BIN=$BUILD/campuscafe
SCALE=${OUTBOX_TEST_SCALE:-1}
for tool in sqlite3 curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done
# python3 only where a JSON document must really be parsed (a version
# manager's shim can take seconds per start); flat answers use sed.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
[ -x "$CC_BIN" ] || { echo "skip: $CC_BIN not built"; exit 77; }
if "$CC_BIN" demo --help 2>&1 | grep -q "this build has no"; then
    echo "skip: this build has no libmicrohttpd/libcurl"
    exit 77
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/test-campuscafe-XXXXXX")
declare -A PID ARGS PORT
cleanup() {
    for s in "${!PID[@]}"; do kill -9 "${PID[$s]}" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${OUTBOX_TEST_KEEP:-0}" = 1 ] || [ "$FAILED" -ne 0 ]; then
        echo "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
PASSED=0
FAILED=0
trap cleanup EXIT
ok()   { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok; else fail "$what"; fi
}
eq() { # eq DESCRIPTION GOT WANT
    if [ "$2" = "$3" ]; then ok; else fail "$1: got '$2', want '$3'"; fi
}
scaled() { awk -v n="$1" -v min="$2" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < min ? min : v) }'; }

# --- starting services -----------------------------------------------------
SERVICES="order inventory payment notification"
read -r P_ORDER P_INV P_PAY P_NOTI P_API <<<"$($PY - <<'EOF'
# below the ephemeral range, so no outgoing connection takes them meanwhile
import random, socket
socks, ports = [], []
while len(ports) < 5:
    p = random.randrange(20000, 32000)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    if p not in ports:
        socks.append(s); ports.append(p)
print(" ".join(map(str, ports)))
EOF
)"
PORT[order]=$P_ORDER PORT[inventory]=$P_INV PORT[payment]=$P_PAY PORT[notification]=$P_NOTI
API=http://127.0.0.1:$P_API
PEERS="--order-url http://127.0.0.1:$P_ORDER/events --inventory-url http://127.0.0.1:$P_INV/events
--payment-url http://127.0.0.1:$P_PAY/events --notification-url http://127.0.0.1:$P_NOTI/events"
echo "whsec_$(head -c 32 /dev/urandom | base64)" >"$TMP/secret"

# start SERVICE DIR [EXTRA ARGS...]: starts it in the background, waits for
# DIR/SERVICE.ready (10 s).  The arguments are kept for restart.
start() {
    local svc=$1 dir=$2
    shift 2
    ARGS[$svc]="$dir $*"
    rm -f "$dir/$svc.ready"
    # shellcheck disable=SC2086
    "$CC_BIN" "$svc" --dir "$dir" --port "${PORT[$svc]}" $PEERS --secret-file "$TMP/secret" \
        --seed 7 "$@" >>"$dir/$svc.log" 2>&1 &
    PID[$svc]=$!
    for _ in $(seq 200); do
        [ -s "$dir/$svc.ready" ] && return 0
        kill -0 "${PID[$svc]}" 2>/dev/null || break
        sleep 0.05
    done
    fail "$svc did not become ready"
    tail -n 20 "$dir/$svc.log"
    return 1
}
restart() { # restart SERVICE: the same arguments as its last start
    local svc=$1
    # shellcheck disable=SC2086
    start "$svc" ${ARGS[$svc]}
}
kill9() {
    kill -9 "${PID[$1]}" 2>/dev/null
    wait "${PID[$1]}" 2>/dev/null
    unset "PID[$1]"
}
stop_all() {
    for s in $SERVICES; do [ -n "${PID[$s]:-}" ] && kill -TERM "${PID[$s]}" 2>/dev/null; done
    for s in $SERVICES; do
        if [ -n "${PID[$s]:-}" ]; then
            wait "${PID[$s]}"
            local rc=$?
            [ "$rc" -eq 0 ] || fail "$s exited with $rc on SIGTERM"
            unset "PID[$s]"
        fi
    done
}
start_all() { # start_all DIR [inventory args] -- [payment args]
    local dir=$1 inv=$2 pay=$3
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    start inventory "$dir" $inv && start payment "$dir" $pay && start notification "$dir" &&
        start order "$dir" --api-port "$P_API"
}

# post_order BODY [KEY]: sets CODE and BODY_OUT.
post_order() {
    local hdr=()
    [ -n "${2:-}" ] && hdr=(-H "Idempotency-Key: $2")
    BODY_OUT=$(curl -s -m 5 -o - -w '\n%{http_code}' -H 'Content-Type: application/json' \
        "${hdr[@]}" --data-binary "$1" "$API/orders")
    CODE=${BODY_OUT##*$'\n'}
    BODY_OUT=${BODY_OUT%$'\n'*}
}
# field JSON NAME: a top-level string or number field of a flat JSON answer.
field() {
    printf '%s' "$1" | sed -n 's/.*"'"$2"'": *\("\([^"]*\)"\|\(-\{0,1\}[0-9][0-9]*\)\).*/\2\3/p' | head -n 1
}
order_state() { field "$(curl -s -m 5 "$API/orders/$1")" state; }

# wait_end DIR SECONDS: until every order is in an end state and every
# service's outbox is empty (GET /stats), twice in a row.
wait_end() {
    local dir=$1 secs=$2 calm=0
    for _ in $(seq $((secs * 5))); do
        local busy pending=0
        busy=$(sqlite3 "$dir/order.db" "SELECT count(*) FROM orders WHERE state NOT IN
            ('completed','rejected','cancelled')" 2>/dev/null || echo 1)
        for s in $SERVICES; do
            local p
            p=$(field "$(curl -s -m 2 "http://127.0.0.1:${PORT[$s]}/stats")" outbox_pending)
            [ -n "$p" ] || p=1
            pending=$((pending + p))
        done
        if [ "$busy" = 0 ] && [ "$pending" = 0 ]; then
            calm=$((calm + 1))
            [ $calm -ge 2 ] && return 0
        else
            calm=0
        fi
        sleep 0.2
    done
    return 1
}

q() { sqlite3 "$1" "$2" 2>/dev/null; }

# consistent DIR LABEL: the contract's consistency rules, plus "nothing
# applied twice" for every consumer.
consistent() {
    local d=$1 label=$2
    local db="$d/order.db"
    local att="ATTACH '$d/inventory.db' AS inv; ATTACH '$d/payment.db' AS pay;
               ATTACH '$d/notification.db' AS noti;"
    eq "$label: orders not in an end state" "$(q "$db" "SELECT count(*) FROM orders WHERE state NOT IN ('completed','rejected','cancelled')")" 0
    eq "$label: stock conserved" "$(q "$db" "$att SELECT count(*) FROM inv.stock s WHERE initial != on_hand + (SELECT coalesce(sum(qty),0) FROM inv.reservations r WHERE r.item = s.item AND r.status = 'reserved')")" 0
    eq "$label: reserved stock only for completed orders" "$(q "$db" "$att SELECT count(*) FROM inv.reservations r WHERE status = 'reserved' AND order_id NOT IN (SELECT id FROM orders WHERE state = 'completed')")" 0
    eq "$label: no payment without an order" "$(q "$db" "$att SELECT count(*) FROM pay.payments WHERE order_id NOT IN (SELECT id FROM orders)")" 0
    eq "$label: ReserveStockRequested handled once per order" "$(q "$db" "$att SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM inv.handled h WHERE h.order_id = o.id AND h.event = 'ReserveStockRequested') != 1")" 0
    eq "$label: release handled at most once per order" "$(q "$db" "$att SELECT count(*) FROM (SELECT order_id FROM inv.handled WHERE event = 'ReleaseStockRequested' GROUP BY order_id HAVING count(*) > 1)")" 0
    eq "$label: one payment per order that reached payment" "$(q "$db" "$att SELECT count(*) FROM orders o WHERE (SELECT count(*) FROM pay.payments p WHERE p.order_id = o.id) != (CASE WHEN o.state IN ('paid','completed','payment_failed','cancelled') THEN 1 ELSE 0 END)")" 0
    eq "$label: one notification of each kind per order" "$(q "$db" "$att SELECT count(*) FROM (SELECT 1 FROM noti.notifications GROUP BY order_id, kind HAVING count(*) > 1)")" 0
    eq "$label: every order notified of its end" "$(q "$db" "$att SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM noti.notifications n WHERE n.order_id = o.id AND n.kind IN ('completed','rejected','cancelled'))")" 0
}

T0=$(date +%s)
section() { echo "--- $* ($(($(date +%s) - T0)) s)"; }

# === 1. happy path to each end state ======================================
section "happy path"
D=$TMP/happy
if start_all "$D" "--stock latte=10,espresso=10,croissant=10,muffin=1" "--fail-rate 0"; then
    post_order '{"customer":"ana","items":[{"item":"latte","qty":2},{"item":"croissant","qty":1}]}'
    eq "POST /orders answers 201" "$CODE" 201
    A=$(field "$BODY_OUT" id)
    check "order id is o-<uuid>" grep -Eq '^o-[0-9a-f-]{36}$' <<<"$A"
    eq "new order is placed" "$(field "$BODY_OUT" state)" placed
    post_order '{"customer":"ben","items":[{"item":"muffin","qty":2}]}'
    eq "POST /orders (too many muffins) answers 201" "$CODE" 201
    B=$(field "$BODY_OUT" id)
    check "both end" wait_end "$D" 20
    eq "order with stock and a payment: completed" "$(order_state "$A")" completed
    eq "order over the stock: rejected" "$(order_state "$B")" rejected
    eq "completed order's total" "$(field "$(curl -s "$API/orders/$A")" total_cents)" 1000
    check "rejected order has a reason" test -n "$(field "$(curl -s "$API/orders/$B")" reason)"
    eq "latte reserved" "$(q "$D/inventory.db" "SELECT on_hand FROM stock WHERE item='latte'")" 8
    eq "muffin untouched" "$(q "$D/inventory.db" "SELECT on_hand FROM stock WHERE item='muffin'")" 1
    eq "one payment, succeeded" "$(q "$D/payment.db" "SELECT group_concat(outcome) FROM payments")" succeeded
    eq "notifications of A" "$(q "$D/notification.db" "SELECT group_concat(kind) FROM (SELECT kind FROM notifications WHERE order_id='$A' ORDER BY id)")" "received,completed"
    eq "notifications of B" "$(q "$D/notification.db" "SELECT group_concat(kind) FROM (SELECT kind FROM notifications WHERE order_id='$B' ORDER BY id)")" "received,rejected"

    # Payment declines everything from now on: restart it with --fail-rate 1.
    kill -TERM "${PID[payment]}"
    wait "${PID[payment]}"
    eq "payment stops cleanly on SIGTERM" $? 0
    unset "PID[payment]"
    start payment "$D" --fail-rate 1
    post_order '{"customer":"chloe","items":[{"item":"espresso","qty":3}]}'
    eq "POST /orders (to be declined) answers 201" "$CODE" 201
    C=$(field "$BODY_OUT" id)
    check "declined order ends" wait_end "$D" 20
    eq "declined payment: cancelled" "$(order_state "$C")" cancelled
    eq "stock released after the decline" "$(q "$D/inventory.db" "SELECT on_hand FROM stock WHERE item='espresso'")" 10
    eq "reservation marked released" "$(q "$D/inventory.db" "SELECT status FROM reservations WHERE order_id='$C'")" released
    eq "declined payment recorded" "$(q "$D/payment.db" "SELECT outcome FROM payments WHERE order_id='$C'")" failed
    eq "notifications of C" "$(q "$D/notification.db" "SELECT group_concat(kind) FROM (SELECT kind FROM notifications WHERE order_id='$C' ORDER BY id)")" "received,cancelled"

    # === 2. bad requests: 400, nothing stored =============================
    before=$(q "$D/order.db" "SELECT count(*) FROM orders")
    bad() { # bad DESCRIPTION BODY WORD: 400, the error names WORD
        post_order "$2"
        eq "$1: status" "$CODE" 400
        local msg
        msg=$(field "$BODY_OUT" error)
        if grep -qi -- "$3" <<<"$msg"; then ok; else fail "$1: error '$msg' does not name '$3'"; fi
    }
    bad "malformed JSON" '{"customer":"ana","items":[' json
    bad "not an object" '[1,2]' object
    bad "missing customer" '{"items":[{"item":"latte","qty":1}]}' customer
    bad "empty customer" '{"customer":"","items":[{"item":"latte","qty":1}]}' customer
    bad "items missing" '{"customer":"ana"}' items
    bad "items not an array" '{"customer":"ana","items":"latte"}' items
    bad "items empty" '{"customer":"ana","items":[]}' items
    bad "unknown item" '{"customer":"ana","items":[{"item":"pizza","qty":1}]}' pizza
    bad "qty zero" '{"customer":"ana","items":[{"item":"latte","qty":0}]}' qty
    bad "qty over 20" '{"customer":"ana","items":[{"item":"latte","qty":21}]}' qty
    bad "qty a string" '{"customer":"ana","items":[{"item":"latte","qty":"2"}]}' qty
    bad "qty a fraction" '{"customer":"ana","items":[{"item":"latte","qty":1.5}]}' qty
    big="{\"customer\":\"$(printf '%*s' 17000 '' | tr ' ' x)\",\"items\":[{\"item\":\"latte\",\"qty\":1}]}"
    post_order "$big"
    check "body over 16 KiB refused with 400 or 413 ($CODE)" test "$CODE" = 400 -o "$CODE" = 413
    eq "bad requests stored nothing" "$(q "$D/order.db" "SELECT count(*) FROM orders")" "$before"
    eq "bad requests enqueued nothing" "$(field "$(curl -s "$API/stats")" outbox_pending)" 0
    code=$(curl -s -o /dev/null -w '%{http_code}' "$API/orders/o-00000000-0000-7000-8000-000000000000")
    eq "unknown order: 404" "$code" 404

    # Idempotency-Key: the retry answers 200 with the same order.
    KEY=$(cat /proc/sys/kernel/random/uuid)
    post_order '{"customer":"dev","items":[{"item":"latte","qty":1}]}' "$KEY"
    eq "first POST with a key: 201" "$CODE" 201
    K1=$(field "$BODY_OUT" id)
    post_order '{"customer":"dev","items":[{"item":"latte","qty":1}]}' "$KEY"
    eq "retry with the same key: 200" "$CODE" 200
    eq "retry answers the same order" "$(field "$BODY_OUT" id)" "$K1"
    eq "one order for the key" "$(q "$D/order.db" "SELECT count(*) FROM orders WHERE request_key='$KEY'")" 1
    check "keyed order ends" wait_end "$D" 20
    consistent "$D" "happy path"
    stop_all
fi

# === 3. each service killed -9 mid-flow and restarted =====================
section "kill -9 and restart"
N=$(scaled 8 4)
D=$TMP/kill
if start_all "$D" "" "--fail-rate 0.3"; then
    items=(latte espresso croissant muffin)
    i=0
    for victim in order inventory payment notification; do
        # A burst of orders, the victim dies while they flow, more orders
        # arrive while it is down (except for the order service itself,
        # whose clients would only see refused connections), then it comes
        # back with the same arguments.
        for _ in $(seq "$N"); do
            post_order "{\"customer\":\"c$i\",\"items\":[{\"item\":\"${items[$((i % 4))]}\",\"qty\":$((1 + i % 2))}]}"
            [ "$CODE" = 201 ] || fail "order $i before killing $victim: $CODE"
            i=$((i + 1))
        done
        [ "$victim" = order ] || sleep 0.05
        kill9 "$victim"
        if [ "$victim" != order ]; then
            for _ in $(seq "$N"); do
                post_order "{\"customer\":\"c$i\",\"items\":[{\"item\":\"${items[$((i % 4))]}\",\"qty\":1}]}"
                [ "$CODE" = 201 ] || fail "order $i while $victim is down: $CODE"
                i=$((i + 1))
            done
        fi
        sleep 0.5
        # Events for it wait in the other services' outboxes meanwhile.  (For
        # the order service this depends on timing: its last flows may have
        # finished before the kill; shown, not checked.)
        waiting=0
        for s in $SERVICES; do
            [ "$s" = "$victim" ] && continue
            p=$(field "$(curl -s -m 2 "http://127.0.0.1:${PORT[$s]}/stats")" outbox_pending)
            waiting=$((waiting + ${p:-0}))
        done
        if [ "$victim" = order ]; then
            echo "events waiting while order is down: $waiting"
        else
            check "events wait in an outbox while $victim is down ($waiting)" test "$waiting" -gt 0
        fi
        section "  $victim killed, restarting"
        restart "$victim"
        check "after $victim was killed, every order ends" wait_end "$D" 30
        section "  $victim back, all orders ended"
    done
    eq "every order placed is stored" "$(q "$D/order.db" "SELECT count(*) FROM orders")" "$i"
    consistent "$D" "kill -9"
    stop_all
fi

# === 4. the chaos run on 3 seeds ==========================================
# A crash rate of 0.25 (default 0.1) so that even a scaled-down run gives the
# naive mode its chances to fail; the outbox mode must stay at zero anyway.
section "chaos"
CHAOS_N=$(scaled 24 12)
naive_total=0
for seed in 11 22 33; do
    TMPDIR=$TMP "$CC_BIN" chaos --orders "$CHAOS_N" --crash-rate 0.25 --seed "$seed" --json >"$TMP/chaos-$seed.json" 2>"$TMP/chaos-$seed.err"
    rc=$?
    eq "chaos seed $seed: exit code" "$rc" 0
    read -r n_sum o_sum o_settled <<<"$($PY - "$TMP/chaos-$seed.json" <<'EOF' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
n, o = j["modes"]["naive"], j["modes"]["outbox"]
keys = ("lost", "ghost", "duplicate", "stuck")
print(sum(n[k] for k in keys), sum(o[k] for k in keys), int(o["settled"]))
EOF
)"
    if [ -z "${n_sum:-}" ]; then
        fail "chaos seed $seed: no JSON result"
        tail -n 20 "$TMP/chaos-$seed.err"
        continue
    fi
    eq "chaos seed $seed: outbox mode settled" "$o_settled" 1
    eq "chaos seed $seed: outbox failure counts" "$o_sum" 0
    echo "chaos seed $seed: naive $n_sum failures, outbox $o_sum"
    naive_total=$((naive_total + n_sum))
done
check "chaos: the naive mode really fails (total $naive_total over 3 seeds)" test "$naive_total" -gt 0

section "done"
echo "passed $PASSED, failed $FAILED"
[ "$FAILED" -eq 0 ]

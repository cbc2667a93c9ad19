# checks.sh - what the shell tests share for counting checks; sourced:
#
#     . "$(dirname "$0")/support/checks.sh"
#     check "READY=1 arrives" wait_for log READY=1
#     checks_done test_notify     # prints the counts; exits 1 on a failure
#
# ok / fail count one check (fail prints "FAIL: <why>"); check DESCRIPTION
# COMMAND... runs COMMAND and counts it.  free_ports N prints N distinct free
# ports of 127.0.0.1 below the kernel's ephemeral range, where no outgoing
# connection takes one before its server binds it (as ch_free_port in
# tests/support/net.c).
PASSED=0
FAILED=0
ok()   { PASSED=$((PASSED + 1)); }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
check() {
    local what=$1
    shift
    if "$@"; then ok; else fail "$what"; fi
}
checks_done() {
    echo "$1: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ] && exit 0
    exit 1
}
free_ports() {
    python3 -c '
import random, socket, sys
lo = 32768
try:
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    pass
held = []
for _ in range(int(sys.argv[1])):
    for _ in range(200):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", random.randrange(15000, lo) if lo - 15000 >= 1000 else 0))
            break
        except OSError:
            s.close()
    else:
        sys.exit("no free port of 127.0.0.1 in 200 tries")
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

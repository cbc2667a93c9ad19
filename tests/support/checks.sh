# checks.sh - what the shell tests share for counting checks; sourced:
#
#     . "$(dirname "$0")/support/checks.sh"
#     check "READY=1 arrives" wait_for log READY=1
#     checks_done test_notify     # prints the counts; exits 1 on a failure
#
# ok / fail count one check (fail prints "FAIL: <why>"); check DESCRIPTION
# COMMAND... runs COMMAND and counts it.
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

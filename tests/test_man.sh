#!/usr/bin/env bash
# test_man.sh - the manual pages the build writes (the man target, into
# $OUTBOX_BUILD_DIR/man) are all there and render without a warning:
#
#   - outbox(1) with its DRIVERS section, one outbox-COMMAND(1) per command
#     `outbox --help` lists, liboutbox(3) with every OUTBOX_API function of
#     include/outbox.h, outbox.conf(5) when docs/CONFIG.md exists
#   - `MANWIDTH=80 man --warnings -l PAGE` prints nothing on stderr
#
# Needs $OUTBOX_BIN, $OUTBOX_BUILD_DIR and $OUTBOX_SOURCE_DIR (set by
# ctest) and man (Debian: man-db, groff-base; exit 77 without, or when the
# build has no man pages: -DOUTBOX_BUILD_MAN=OFF).
set -u
. "$(dirname "${BASH_SOURCE[0]}")/support/checks.sh"

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
build=${OUTBOX_BUILD_DIR:?set OUTBOX_BUILD_DIR to the build directory}
source=${OUTBOX_SOURCE_DIR:?set OUTBOX_SOURCE_DIR to the source directory}
command -v man >/dev/null 2>&1 || { echo "skip: man not installed"; exit 77; }
mandir=$build/man
[ -f "$mandir/man1/outbox.1" ] || { echo "skip: no man pages in $mandir (OUTBOX_BUILD_MAN=OFF?)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT


# The pages that must be there.
expected="man1/outbox.1 man3/liboutbox.3"
for cmd in $("$OUTBOX_BIN" --help | awk '/^Commands:/ { on = 1; next } /^$/ { on = 0 } on { print $1 }'); do
    expected="$expected man1/outbox-$cmd.1"
done
[ -f "$source/docs/CONFIG.md" ] && expected="$expected man5/outbox.conf.5"
for page in $expected; do
    if [ -f "$mandir/$page" ]; then ok; else fail "$page was not written"; fi
done

# Every page renders without a warning from man, groff or the macros.
for page in "$mandir"/man[135]/*.[135]; do
    if MANWIDTH=80 man --warnings -l "$page" >"$tmp/out" 2>"$tmp/err" && [ ! -s "$tmp/err" ] &&
        [ -s "$tmp/out" ]; then
        ok
    else
        cat "$tmp/err"
        fail "man --warnings -l ${page#"$mandir"/}"
    fi
done

# What they are made of is in them.
render() { MANWIDTH=200 man -l "$mandir/$1" 2>/dev/null; }
render man1/outbox.1 | grep -q '^DRIVERS' || fail "outbox(1) has no DRIVERS section"
render man1/outbox.1 | grep -q 'sqlite:PATH' || fail "outbox(1)'s drivers lack sqlite:PATH"
render man1/outbox-relay.1 | grep -q -- '--poll-interval DUR' ||
    fail "outbox-relay(1) lacks the --poll-interval option of relay --help"
render man1/outbox-relay.1 | grep -q '^OPTIONS' || fail "outbox-relay(1) has no OPTIONS section"
render man3/liboutbox.3 >"$tmp/lib"
for fn in $(grep -o '^OUTBOX_API[^(]*(' "$source/include/outbox.h" | grep -o 'outbox_[a-z0-9_]*(' |
    tr -d '('); do
    grep -q "$fn(" "$tmp/lib" || fail "liboutbox(3) lacks $fn"
done
ok

checks_done test_man

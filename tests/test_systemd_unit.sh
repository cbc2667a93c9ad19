#!/usr/bin/env bash
# test_systemd_unit.sh - dist/systemd/outbox-relay@.service passes
# `systemd-analyze verify`: directives, their values and the ExecStart
# binary.  The unit is checked as an instance (outbox-relay@example) in a
# copy whose ExecStart names the built binary, as the installed one names
# /usr/bin/outbox.  Its Documentation= pages are looked up in the build's
# man pages (the man target) when they are there.  Also: the logrotate
# snippet (dist/logrotate/outbox) parses, when logrotate is installed.
#
# Needs $OUTBOX_BIN and $OUTBOX_SOURCE_DIR (set by ctest) and
# systemd-analyze (Debian: systemd; exit 77 without).
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
source=${OUTBOX_SOURCE_DIR:-$(dirname "$0")/..}
command -v systemd-analyze >/dev/null 2>&1 || { echo "skip: systemd-analyze not installed"; exit 77; }
unit=$source/dist/systemd/outbox-relay@.service
[ -f "$unit" ] || { echo "FAIL: $unit not found"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bin=$(command -v "$OUTBOX_BIN") || { echo "FAIL: $OUTBOX_BIN not found"; exit 1; }
grep -q '^ExecStart=/usr/bin/outbox relay --config /etc/outbox/%i.conf$' "$unit" ||
    { echo "FAIL: ExecStart is not /usr/bin/outbox relay --config /etc/outbox/%i.conf"; exit 1; }
sed "s#^ExecStart=/usr/bin/outbox #ExecStart=$bin #" "$unit" >"$tmp/outbox-relay@example.service"

man_check=--man=no
mandir=${OUTBOX_BUILD_DIR:-}/man
if [ -n "${OUTBOX_BUILD_DIR:-}" ] && [ -f "$mandir/man1/outbox-relay.1" ] &&
    [ -f "$mandir/man5/outbox.conf.5" ]; then
    man_check=--man=yes
    export MANPATH=$mandir
fi
if ! systemd-analyze verify "$man_check" "$tmp/outbox-relay@example.service" >"$tmp/log" 2>&1 ||
    [ -s "$tmp/log" ]; then
    cat "$tmp/log"
    echo "FAIL: systemd-analyze verify outbox-relay@.service"
    exit 1
fi
for directive in Type=notify WatchdogSec= ProtectSystem=strict NoNewPrivileges=yes \
    PrivateTmp=yes StateDirectory=outbox CapabilityBoundingSet= User=outbox; do
    grep -q "^$directive" "$unit" || { echo "FAIL: the unit lacks $directive"; exit 1; }
done
# The logrotate snippet parses (as root: the outbox user may not exist here).
if command -v logrotate >/dev/null 2>&1; then
    sed 's/^\( *su \).*/\1root root/' "$source/dist/logrotate/outbox" >"$tmp/logrotate.conf"
    logrotate -d -s "$tmp/state" "$tmp/logrotate.conf" >"$tmp/lr.log" 2>&1
    if grep -q '^error' "$tmp/lr.log" || ! grep -q 'rotating pattern: /var/log/outbox/' "$tmp/lr.log"; then
        cat "$tmp/lr.log"
        echo "FAIL: logrotate -d dist/logrotate/outbox"
        exit 1
    fi
fi
echo "ok: systemd-analyze verify ($man_check) passes on outbox-relay@.service"

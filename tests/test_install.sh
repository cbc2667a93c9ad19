#!/usr/bin/env bash
# test_install.sh - what a user installs is enough to build against:
# `cmake --install` staged under a temporary DESTDIR (as a package build
# does), then the quickstart compiled with nothing but `pkg-config --cflags
# --libs liboutbox` (PKG_CONFIG_SYSROOT_DIR points it into the staging
# tree; outbox.h alone, the shared library by its SONAME) and run against
# an SQLite file.  Also checks the rest of the set is staged: the CLI, the
# systemd unit, the example configuration, logrotate snippet and manual
# pages.  Fails
# when the header needs something it does not include, the .pc file
# misses a library the API exposes, or the program links a hidden symbol.
#
# Needs $OUTBOX_BUILD_DIR and $OUTBOX_SOURCE_DIR (set by ctest), cc and
# pkg-config (exit 77 without).
set -u

for tool in cc pkg-config cmake; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done
build=${OUTBOX_BUILD_DIR:?set OUTBOX_BUILD_DIR to the build directory}
source=${OUTBOX_SOURCE_DIR:?set OUTBOX_SOURCE_DIR to the source directory}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/outbox-install.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

fail() {
    echo "FAIL: $*"
    exit 1
}

stage=$tmp/stage
DESTDIR=$stage cmake --install "$build" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; fail "DESTDIR=$stage cmake --install $build"; }
pc=$(find "$stage" -name liboutbox.pc | head -1)
[ -n "$pc" ] || fail "no liboutbox.pc installed"
export PKG_CONFIG_PATH=${pc%/liboutbox.pc} PKG_CONFIG_SYSROOT_DIR=$stage
# pkgconf puts the sysroot before the variables too; pkg-config does not.
lib_dir=$(pkg-config --variable=libdir liboutbox)
inc_dir=$(pkg-config --variable=includedir liboutbox)
[ "${lib_dir#"$stage"}" != "$lib_dir" ] || lib_dir=$stage$lib_dir
[ "${inc_dir#"$stage"}" != "$inc_dir" ] || inc_dir=$stage$inc_dir
[ -f "$inc_dir/outbox.h" ] || fail "outbox.h not installed in $inc_dir"
[ -e "$lib_dir/liboutbox.so.0" ] || fail "liboutbox.so.0 (the SONAME) not installed in $lib_dir"

# The rest of what make install and the packages ship: the CLI, the
# systemd unit, the example configuration, the logrotate snippet and the
# manual pages (when the build made them).
cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
prefix=$(cache CMAKE_INSTALL_PREFIX)
sysconf=$(cache CMAKE_INSTALL_SYSCONFDIR)
case $sysconf in
/*) ;;
*) if [ "$prefix" = /usr ]; then sysconf=/$sysconf; else sysconf=$prefix/$sysconf; fi ;;
esac # GNUInstallDirs: a /usr prefix has its configuration in /etc
prefix=$stage$prefix
sysconf=$stage$sysconf
shipped="bin/outbox"
for f in $shipped; do [ -x "$prefix/$f" ] || fail "$f not installed under $prefix"; done
"$prefix/bin/outbox" --version >/dev/null || fail "the installed outbox does not run"
unit=$(find "$stage" -path '*/systemd/system/outbox-relay@.service' | head -1)
[ -n "$unit" ] || fail "outbox-relay@.service not installed"
[ -f "$sysconf/outbox/example.conf" ] || fail "outbox/example.conf not installed in $sysconf"
[ -f "$sysconf/logrotate.d/outbox" ] || fail "logrotate.d/outbox not installed in $sysconf"
if grep -q '^OUTBOX_BUILD_MAN:BOOL=ON$' "$build/CMakeCache.txt"; then
    for page in man1/outbox.1 man1/outbox-relay.1 man1/outbox-init.1 man3/liboutbox.3; do
        [ -f "$prefix/share/man/$page" ] || fail "$page not installed in $prefix/share/man"
    done
    [ ! -f "$source/docs/CONFIG.md" ] || [ -f "$prefix/share/man/man5/outbox.conf.5" ] ||
        fail "man5/outbox.conf.5 not installed"
fi

flags=$(pkg-config --cflags --libs liboutbox) || fail "pkg-config --cflags --libs liboutbox"
# A sanitized build's library needs the sanitizers' runtime in the program.
if grep -q '^OUTBOX_SANITIZE:BOOL=ON$' "$build/CMakeCache.txt" 2>/dev/null; then
    flags="-fsanitize=address,undefined $flags"
fi
echo "pkg-config: $flags"
# shellcheck disable=SC2086
cc -std=c11 -Wall -Werror -o "$tmp/quickstart" "$source/examples/quickstart/quickstart.c" \
    $flags -Wl,-rpath,"$lib_dir" 2>"$tmp/cc.log" ||
    { cat "$tmp/cc.log"; fail "the quickstart does not build with pkg-config's flags alone"; }
ldd "$tmp/quickstart" | grep -q "liboutbox.so.0 => $lib_dir" ||
    { ldd "$tmp/quickstart"; fail "the quickstart is not linked to the installed liboutbox.so.0"; }

(cd "$tmp" && ./quickstart cafe.db) >"$tmp/run.log" 2>&1 ||
    { cat "$tmp/run.log"; fail "the quickstart built against the installed files failed"; }
grep -q "COMMIT" "$tmp/run.log" || { cat "$tmp/run.log"; fail "the quickstart committed nothing"; }
echo "ok: staged under $stage, quickstart built with pkg-config alone and run"

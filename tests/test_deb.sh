#!/usr/bin/env bash
# test_deb.sh - the Debian packaging follows the library it packages,
# without building the packages (make deb and CI do that):
#
#   - debian/liboutbox0.symbols lists exactly the exported functions
#     (src/liboutbox.exports): a function added to the ABI is added there,
#     with the version that brings it
#   - the library package's name follows the SONAME (liboutbox.so.N ->
#     liboutboxN), and debian/changelog's version is the project's
#
# Needs $OUTBOX_SOURCE_DIR and $OUTBOX_BUILD_DIR (set by ctest).
set -u

source=${OUTBOX_SOURCE_DIR:?set OUTBOX_SOURCE_DIR to the source directory}
build=${OUTBOX_BUILD_DIR:?set OUTBOX_BUILD_DIR to the build directory}
cd "$source" || exit 1
FAILED=0
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }

soname=$(objdump -p "$build/liboutbox.so" 2>/dev/null | awk '/SONAME/ { print $2 }')
major=${soname#liboutbox.so.}
[ -n "$soname" ] || fail "no SONAME found in $build/liboutbox.so"
[ -f "debian/liboutbox$major.symbols" ] || fail "no debian/liboutbox$major.symbols for $soname"
grep -q "^Package: liboutbox$major\$" debian/control || fail "debian/control has no liboutbox$major"
head -1 "debian/liboutbox$major.symbols" | grep -q "^$soname liboutbox$major " ||
    fail "debian/liboutbox$major.symbols does not start with '$soname liboutbox$major'"

# deb-symbols(5): a metadata field is a line that starts with "* " (a line
# that starts with a space is a symbol, and dpkg-gensymbols then stops).
grep -q '^\* Build-Depends-Package: liboutbox-dev$' "debian/liboutbox$major.symbols" ||
    fail "debian/liboutbox$major.symbols needs the line '* Build-Depends-Package: liboutbox-dev' (no leading space)"

if ! diff -u --label src/liboutbox.exports --label "debian/liboutbox$major.symbols" \
    <(grep -o '^outbox_[a-z0-9_]*' src/liboutbox.exports | sort) \
    <(sed -n 's/^ \(outbox_[a-z0-9_]*\)@Base .*/\1/p' "debian/liboutbox$major.symbols" | sort); then
    fail "debian/liboutbox$major.symbols differs from src/liboutbox.exports: add the new symbols as ' NAME@Base VERSION'"
fi

version=$(sed -n 's/^project(outbox VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
changelog=$(sed -n '1s/^outbox (\([^)]*\)).*/\1/p' debian/changelog)
[ "${changelog%%-*}" = "$version" ] ||
    fail "debian/changelog is at $changelog, the project at $version: add a changelog entry"

[ "$FAILED" = 0 ] && echo "ok: debian/ follows $soname, its exports and version $version"
[ "$FAILED" = 0 ]

#!/usr/bin/env bash
# test_exports.sh - the shared library's ABI is what src/liboutbox.exports
# says: the dynamic symbols liboutbox.so defines (nm -D --defined-only) are
# exactly the names listed there, every one of them public (outbox_...),
# and the library has its SONAME.  A symbol that appears or disappears
# without the list being updated fails the test, so a change to the ABI is
# always a visible change to that file.
#
# Needs $OUTBOX_BUILD_DIR and $OUTBOX_SOURCE_DIR (set by ctest), nm and
# readelf (exit 77 without).
set -u

for tool in nm readelf; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: $tool not installed"; exit 77; }
done
build=${OUTBOX_BUILD_DIR:?set OUTBOX_BUILD_DIR to the build directory}
source=${OUTBOX_SOURCE_DIR:?set OUTBOX_SOURCE_DIR to the source directory}
lib="$build/liboutbox.so"
list="$source/src/liboutbox.exports"
[ -e "$lib" ] || { echo "FAIL: $lib not built"; exit 1; }
[ -r "$list" ] || { echo "FAIL: $list missing"; exit 1; }

failed=0
actual=$(nm -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }' | LC_ALL=C sort -u)

if ! LC_ALL=C sort -c "$list" 2>/dev/null; then
    echo "FAIL: $list is not sorted (LC_ALL=C sort) or has duplicates"
    failed=1
fi

foreign=$(printf '%s\n' "$actual" | grep -v '^outbox_[a-z0-9_]*$' | grep -v '^$')
if [ -n "$foreign" ]; then
    echo "FAIL: liboutbox.so exports names outside the public outbox_ API:"
    printf '  %s\n' $foreign
    echo "  (build with hidden visibility; only outbox.h's OUTBOX_API declarations are exported)"
    failed=1
fi

if ! diff_out=$(diff -u --label "$list" --label "liboutbox.so (nm -D --defined-only)" \
        "$list" <(printf '%s\n' "$actual")); then
    echo "FAIL: the exported symbols differ from $list:"
    printf '%s\n' "$diff_out"
    echo "If the change to the ABI is meant (a function added to or removed from outbox.h),"
    echo "update the list:"
    echo "  nm -D --defined-only $lib | awk 'NF >= 3 { print \$3 }' | LC_ALL=C sort -u > $list"
    echo "A removed or changed function breaks programs compiled against liboutbox.so.0."
    failed=1
fi

soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != "liboutbox.so.0" ]; then
    echo "FAIL: SONAME is '$soname', expected liboutbox.so.0"
    failed=1
fi

if [ "$failed" = 0 ]; then
    echo "ok: liboutbox.so ($soname) exports the $(wc -l <"$list") names of $(basename "$list")"
fi
exit "$failed"

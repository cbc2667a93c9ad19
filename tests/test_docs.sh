#!/usr/bin/env bash
# test_docs.sh - docs/CLI.md's driver sections are what the code says:
# the text between the markers
#     <!-- BEGIN GENERATED: drivers -->
#     <!-- END GENERATED: drivers -->
# must be exactly `outbox help drivers --markdown`, made from the drivers'
# property tables.  Fails with the diff when they differ.
#
# With --write it puts the generated text between the markers instead: the
# `docs` build target (`make docs`) runs it that way.
#
# Needs $OUTBOX_BIN and $OUTBOX_SOURCE_DIR (set by ctest and by the docs
# target).
set -u

OUTBOX_BIN=${OUTBOX_BIN:-outbox}
DOC=${OUTBOX_SOURCE_DIR:-$(dirname "$0")/..}/docs/CLI.md
BEGIN='<!-- BEGIN GENERATED: drivers -->'
END='<!-- END GENERATED: drivers -->'

[ -f "$DOC" ] || { echo "FAIL: $DOC not found"; exit 1; }
for marker in "$BEGIN" "$END"; do
    if [ "$(grep -cxF -- "$marker" "$DOC")" != 1 ]; then
        echo "FAIL: $DOC must have the line '$marker' exactly once"
        exit 1
    fi
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if ! "$OUTBOX_BIN" help drivers --markdown >"$TMP/generated"; then
    echo "FAIL: outbox help drivers --markdown failed"
    exit 1
fi
# The committed block, without its markers.
awk -v b="$BEGIN" -v e="$END" '$0 == e { inside = 0 } inside { print } $0 == b { inside = 1 }' \
    "$DOC" >"$TMP/committed"

if [ "${1:-}" = "--write" ]; then
    awk -v b="$BEGIN" -v e="$END" -v gen="$TMP/generated" '
        $0 == b { print; while ((getline line < gen) > 0) print line; skip = 1; next }
        $0 == e { skip = 0 }
        !skip { print }' "$DOC" >"$TMP/new"
    if cmp -s "$TMP/new" "$DOC"; then
        echo "docs/CLI.md: driver sections up to date"
    else
        cat "$TMP/new" >"$DOC"
        echo "docs/CLI.md: driver sections written"
    fi
    exit 0
fi

if ! diff -u --label "docs/CLI.md (committed)" --label "outbox help drivers --markdown" \
    "$TMP/committed" "$TMP/generated"; then
    echo "FAIL: docs/CLI.md's driver sections differ from the drivers' tables; run make docs"
    exit 1
fi
echo "docs/CLI.md's driver sections match the drivers' tables"

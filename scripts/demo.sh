#!/usr/bin/env bash
# The demo on the embedded default (SQLite, no server): init an outbox,
# place orders from a tiny C program (three commits, one rollback), show the
# backlog, relay it to stdout as CloudEvents, show the outbox drained.
set -euo pipefail
build=${1:-build}
bin=$build/outbox
dir=$(mktemp -d "${TMPDIR:-/tmp}/outbox-demo-XXXXXX")
trap 'rm -rf "$dir"' EXIT
store="sqlite:$dir/cafe.db"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step outbox init --store "$store"
"$bin" init --store "$store"
step quickstart "$dir/cafe.db"
"$build/quickstart" "$dir/cafe.db"
step outbox status --store "$store"
"$bin" status --store "$store"
step outbox relay --store "$store" --to stdout: --once
"$bin" relay --store "$store" --to stdout: --once --log-level warn
step outbox status --store "$store"
"$bin" status --store "$store"
printf '\nThree orders committed with their events; the rolled-back order (o-1004) never left the outbox.\n'

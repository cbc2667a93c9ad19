#!/usr/bin/env bash
# `make demo`: CampusCafe on the embedded default (SQLite, webhook bus, no
# server to start).  First `campuscafe demo`: the four services (order,
# inventory, payment, notification), each a process with its own database
# and outbox, a stream of orders with live progress, a summary and a
# consistency check.  Then a short `campuscafe chaos`: the same flow done
# the naive way and the outbox way under crashes and a faulty network, and
# the chapter's failure table with the counts measured in the databases.
#
# A build without libmicrohttpd/libcurl has no CampusCafe: it runs the
# quickstart instead (one database, one outbox, relayed to stdout).
set -euo pipefail
build=${1:-build}
bin=$build/outbox
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

have_cafe=0
if [ -x "$build/campuscafe" ]; then
    case $("$build/campuscafe" demo --help 2>&1 || true) in
    *"this build has no"*) ;;
    *) have_cafe=1 ;;
    esac
fi
if [ "$have_cafe" = 1 ]; then
    seed=${SEED:-$((RANDOM % 1000))}
    step campuscafe demo --orders 40 --seed "$seed"
    "$build/campuscafe" demo --orders 40 --seed "$seed"
    step campuscafe chaos --orders 40 --seed "$seed"
    "$build/campuscafe" chaos --orders 40 --seed "$seed"
    exit $?
fi

echo "(this build has no CampusCafe: it needs libmicrohttpd and libcurl; running the quickstart)"
dir=$(mktemp -d "${TMPDIR:-/tmp}/outbox-demo-XXXXXX")
trap 'rm -rf "$dir"' EXIT
store="sqlite:$dir/cafe.db"
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

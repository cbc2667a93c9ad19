#!/bin/sh
# Installs the Debian packages the build and the tests need, when missing.
# As root it runs apt-get; otherwise it prints the exact command to run.
# Usage: scripts/deps.sh [build|test]   (test also wants what tests run)
set -eu
# The core needs jansson and SQLite; the optional drivers need their client
# libraries, and their tests the real servers (PostgreSQL, nats-server).
want="build-essential cmake pkg-config libjansson-dev libsqlite3-dev sqlite3"
drivers="libpq-dev libcurl4-openssl-dev libmicrohttpd-dev libssl-dev libnats-dev librdkafka-dev"
# The tests also drive real processes with the curl, sqlite3 and openssl tools.
servers="postgresql nats-server python3 curl openssl"
# Redis Streams destination: hiredis, and redis-server for its tests.
drivers="$drivers libhiredis-dev"
servers="$servers redis-server"
# The fuzz targets (make fuzz, make fuzz-replay) need clang's libFuzzer.
servers="$servers clang"
# RabbitMQ: the amqp:// destination's client library, and the broker its tests start.
drivers="$drivers librabbitmq-dev"
servers="$servers rabbitmq-server"
# The manual pages' test renders them (man-db, groff-base); the unit's test
# runs systemd-analyze (systemd) and logrotate -d; make deb (CI) builds and
# checks the Debian packages (dpkg-dev, debhelper, lintian).
servers="$servers man-db groff-base systemd logrotate dpkg-dev debhelper lintian"
# The monitoring rules' test runs promtool (prometheus); the console's
# browser test drives Debian's chromium from node (its modules: npm ci in
# tests/browser).
servers="$servers prometheus chromium"
# Node.js and npm count as there when the commands are (a nodesource
# nodejs carries its own npm, which Debian's npm package conflicts with).
command -v node >/dev/null 2>&1 || servers="$servers nodejs"
command -v npm >/dev/null 2>&1 || servers="$servers npm"
# The MariaDB/MySQL store: MariaDB Connector/C, and mariadbd for its tests.
drivers="$drivers libmariadb-dev"
servers="$servers mariadb-server"
case "${1:-build}" in
  build) want="$want $drivers" ;;
  test) want="$want $drivers $servers" ;;
esac
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "deps: installing:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "deps: missing packages:$missing" >&2
  echo "deps: run: sudo apt-get install -y$missing" >&2
  exit 1
fi

/*
 * postgres.c - the PostgreSQL store: versioned schema in a configurable
 * PostgreSQL schema (default "outbox"), the public PostgreSQL functions
 * (enqueue and inbox on the caller's PGconn, inside the caller's
 * transaction; enqueue-and-COMMIT in one round trip through libpq's
 * pipeline mode), SQL functions so any language can enqueue with one call,
 * and the `outbox__store_postgres` driver the relay and the CLI use.
 *
 * Store URLs: libpq URIs (postgres://user:pw@host:port/db?schema=s) and
 * libpq keyword strings after the scheme (postgres:host=/tmp dbname=app
 * schema=s).  The parameters `schema` and `partitions` are ours and are
 * taken out before the rest goes to libpq.  Passwords never reach errors or
 * logs: URLs are shown redacted.
 *
 * Claim and complete: claim is BEGIN + one SELECT ... ORDER BY seq LIMIT n
 * FOR UPDATE SKIP LOCKED over the partitions this relay holds, with the
 * ordering rule (guarantee 4) as a NOT EXISTS over the partial index of
 * blocking rows (retried or failed), which holds few rows; the
 * transaction stays open while the batch is published.  complete records
 * each outcome kind with one statement over arrays, then COMMIT.  A claim
 * while a claim transaction is still open (the relay dropped a batch)
 * rolls it back first: the rows become claimable again.  A pipelined claim
 * (store version 4: the relay claims the next batch while the previous one
 * is published) is a plain read without the seqs in flight and without row
 * locks: the partition advisory locks keep the rows this relay's, and no
 * partition is released while a batch is in flight (no rebalancing, and no
 * reconnect: a new session would not hold them).  Its complete opens its
 * own transaction.
 *
 * Claim floor: a claim walks the pending index in seq order from a floor,
 * a seq below which no row is pending, not from the index's start: sent
 * rows leave dead entries at the front of the index until VACUUM, and a
 * relay draining a backlog deletes far faster than autovacuum cleans, so
 * without the floor every claim stepped over every entry deleted since and
 * cost more than the batch it returned.  The floor is refreshed at most
 * every FLOOR_REFRESH_MS, between claims, as min(M, L + 1): L is the seq
 * identity's last value, read first, and then W, the transactions holding
 * a write lock on the outbox table (pg_locks); a transaction that inserts
 * holds that lock from before it draws its seq until it ends, so once none
 * of W is running every row with seq <= L is committed or never will be.
 * M is the lowest pending seq (any partition, in flight or not), read in a
 * snapshot taken after that.  Later inserts get seqs above L, and rows only
 * leave the pending state, except when one is put back (`outbox retry`):
 * the trigger outbox_requeue (schema version 4) then gives meta
 * 'requeue_epoch' a new value, and a claim whose snapshot sees an epoch
 * other than the floor's scans from the start.  A session that cannot read
 * the sequence or pg_locks claims without a floor (logged once).
 *
 * Several relays: the aggregate id is hashed into P partitions (a stored
 * generated column; P is fixed at init).  A relay holds a membership
 * advisory lock and partition advisory locks on its own session; between
 * batches it takes its share ceil(P / live relays) of the free partitions
 * and releases what it holds beyond that share.  Live relays are counted
 * from pg_locks, so a dead relay's partitions and membership disappear the
 * moment its session ends, together with its claim transaction: a new
 * holder starts from the lowest pending seq of the partition, which keeps
 * per-aggregate order across the hand-over.
 *
 * Wake-up: NOTIFY makes the commit take a database-wide lock through its
 * WAL flush, which serialises concurrent notifying transactions, so
 * enqueuers notify only to wake a waiting relay, and only one of them per
 * wait.  The relay sets its flag {s}.relays.waiting through `idle` just
 * before it sleeps (asynchronous commit: the flag needs no durability) and
 * claims once more.  A statement-level trigger on the outbox clears the
 * flags it can lock (FOR UPDATE SKIP LOCKED: it never waits, so it cannot
 * deadlock or queue enqueuers) and, if it cleared any, sends
 * pg_notify(<schema name>, ''); PostgreSQL folds identical notifications of
 * one transaction into one.  Enqueuers that find no flag, or one locked by
 * another enqueuer that will notify, only read the tiny relays table.  The
 * relay clears its flag itself when it finds work without a notification.
 * Since schema version 3 the trigger first asks the lock manager, not the
 * table: a waiting relay also holds the shared "asleep" advisory lock
 * (class hashtext('outbox.sleep:' || schema), key 0) on its session, from
 * its `idle(1)` until a notification reaches it or `idle(0)`; the trigger
 * tries that lock in exclusive mode and releases it at once.  When it gets
 * it, no relay is asleep and the transaction is done (no SPI query, no
 * SECURITY DEFINER call: the common case costs a lock-table look-up);
 * otherwise (a relay asleep, or another enqueuer's probe at that instant)
 * it runs {s}.wake_relays(), the version 2 logic above.  A relay that
 * cannot take the lock (held exclusively by someone else) still sets its
 * flag; the fallback poll covers the rest.
 * The store LISTENs, `wait_fd` gives the relay the socket to poll, and
 * `changed` reads pending notifications without a round trip
 * (PQconsumeInput + PQnotifies).  It is a hint only: the relay's fallback
 * poll claims anyway, and it is needed when a wake-up does not come: a
 * transaction whose INSERT ran before the flag was set and that commits
 * after the relay's last claim, or an enqueuer that took the flag and then
 * rolled back while another one skipped it.  The rows (and flags) of
 * relays whose session died are deleted when a relay registers or sees the
 * live count drop.
 *
 * Connection loss: every driver call first makes sure the connection is
 * up, reconnecting when it broke (claim state, partitions and LISTEN are
 * set up again and the event is logged).  A batch whose commit did not
 * happen is not recorded and is published again.  The relay backs off
 * between failed calls.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include <libpq-fe.h>

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define COMPONENT "store.postgres"
#define DEFAULT_SCHEMA "outbox"
#define DEFAULT_PARTITIONS 32
#define MAX_PARTITIONS 1024
/* How often (at most) a relay rebalances its partitions between batches. */
#define REBALANCE_MS 500
/* How often (at most) a relay refreshes its claim floor (see above). */
#define FLOOR_REFRESH_MS 200

/* ------------------------------------------------------------------------
 * Schema
 *
 * Templates: {s} is the quoted schema, {n} the schema name (validated, so
 * safe in a literal), {P} the partition count.
 * ---------------------------------------------------------------------- */

static const char meta_sql[] =
    "CREATE SCHEMA IF NOT EXISTS {s};"
    "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);";

/* migrations[i] takes the schema from version i to i + 1.  Append only. */
static const char *const migrations[] = {
    /* 1 */
    "CREATE TABLE {s}.outbox ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id uuid NOT NULL UNIQUE,"
    " occurred_at timestamptz NOT NULL DEFAULT now(),"
    " type text NOT NULL CHECK (octet_length(type) > 0),"
    " aggregate_type text NOT NULL DEFAULT '',"
    " aggregate_id text NOT NULL CHECK (octet_length(aggregate_id) > 0),"
    " payload jsonb NOT NULL,"
    " headers jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),"
    " status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','sent','failed')),"
    " attempts integer NOT NULL DEFAULT 0,"
    " available_at timestamptz NOT NULL DEFAULT now(),"
    " last_error text,"
    " sent_at timestamptz,"
    " partition smallint NOT NULL GENERATED ALWAYS AS"
    "  ((abs(hashtext(aggregate_id)::bigint) % {P})::smallint) STORED"
    ");"
    "CREATE INDEX outbox_pending ON {s}.outbox (seq) WHERE status = 'pending';"
    "CREATE INDEX outbox_blocking ON {s}.outbox (aggregate_id, seq)"
    " WHERE status = 'failed' OR attempts > 0;"
    "CREATE INDEX outbox_sent_at ON {s}.outbox (sent_at) WHERE status = 'sent';"
    "CREATE TABLE {s}.inbox (consumer text NOT NULL, message_id uuid NOT NULL,"
    " received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, message_id));"
    "CREATE INDEX inbox_received ON {s}.inbox (received_at);"
    "CREATE TABLE {s}.relays (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " name text NOT NULL, host text, pid integer, backend_pid integer,"
    " started_at timestamptz NOT NULL DEFAULT now(),"
    " heartbeat_at timestamptz NOT NULL DEFAULT now());"
    "CREATE FUNCTION {s}.notify_enqueue() RETURNS trigger LANGUAGE plpgsql AS $fn$"
    " BEGIN PERFORM pg_notify('{n}', ''); RETURN NULL; END $fn$;"
    "CREATE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox"
    " FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_enqueue();"
    "CREATE FUNCTION {s}.uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $fn$"
    " SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing"
    " substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)"
    " FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid $fn$;"
    "CREATE FUNCTION {s}.enqueue(type text, aggregate_id text, payload jsonb,"
    " headers jsonb DEFAULT '{}', aggregate_type text DEFAULT '', id uuid DEFAULT NULL,"
    " occurred_at timestamptz DEFAULT now()) RETURNS uuid LANGUAGE plpgsql AS $fn$\n"
    "DECLARE h record; v text; new_id uuid; hdr jsonb := coalesce(enqueue.headers, '{}');\n"
    " agg_type text := coalesce(enqueue.aggregate_type, ''); total bigint;\n"
    "BEGIN\n"
    " IF enqueue.type IS NULL OR octet_length(enqueue.type) NOT BETWEEN 1 AND 256"
    "  OR enqueue.type ~ '[[:cntrl:]]' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: type must be 1 to 256 bytes of text without control"
    " characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF enqueue.aggregate_id IS NULL OR octet_length(enqueue.aggregate_id) NOT BETWEEN 1 AND"
    " 256 OR enqueue.aggregate_id ~ '[[:cntrl:]]' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: aggregate_id must be 1 to 256 bytes of text without"
    " control characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF octet_length(agg_type) > 256 OR agg_type ~ '[[:cntrl:]]' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: aggregate_type must be at most 256 bytes of text"
    " without control characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF enqueue.payload IS NULL THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: payload is SQL NULL; pass JSON, e.g. ''{}''::jsonb'"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF jsonb_typeof(hdr) <> 'object' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: headers must be a JSON object of strings, not %',"
    " jsonb_typeof(hdr) USING ERRCODE = '22023';\n"
    " END IF;\n"
    " FOR h IN SELECT key, value FROM jsonb_each(hdr) LOOP\n"
    "  IF jsonb_typeof(h.value) <> 'string' THEN\n"
    "   RAISE EXCEPTION 'outbox.enqueue: header % must be a string, not %', quote_literal(h.key),"
    " jsonb_typeof(h.value) USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  v := h.value #>> '{}';\n"
    "  IF h.key = '' OR h.key ~ '[[:cntrl:]]' OR v ~ '[[:cntrl:]]' THEN\n"
    "   RAISE EXCEPTION 'outbox.enqueue: header names must be non-empty and header names and"
    " values free of control characters (header %)', quote_literal(h.key)"
    " USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF h.key = 'traceparent' AND NOT (v ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'"
    "   AND substr(v, 4, 32) <> repeat('0', 32) AND substr(v, 37, 16) <> repeat('0', 16)) THEN\n"
    "   RAISE EXCEPTION 'outbox.enqueue: header traceparent is not W3C trace-context"
    " (00-<32 hex>-<16 hex>-<2 hex>, ids not all zero)' USING ERRCODE = '22023';\n"
    "  END IF;\n"
    " END LOOP;\n"
    " total := octet_length(enqueue.payload::text) + octet_length(hdr::text)"
    "  + octet_length(enqueue.type) + octet_length(enqueue.aggregate_id) + octet_length(agg_type);\n"
    " IF total > 1048576 THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: message is % bytes, over the 1048576-byte limit', total"
    " USING ERRCODE = '54000';\n"
    " END IF;\n"
    " new_id := coalesce(enqueue.id, {s}.uuid_v7());\n"
    " INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES (new_id, coalesce(enqueue.occurred_at, now()), enqueue.type, agg_type,"
    " enqueue.aggregate_id, enqueue.payload, hdr);\n"
    " RETURN new_id;\n"
    "END $fn$;"
    "CREATE FUNCTION {s}.inbox_record(consumer text, message_id uuid) RETURNS boolean"
    " LANGUAGE plpgsql AS $fn$\n"
    "BEGIN\n"
    " IF inbox_record.consumer IS NULL OR inbox_record.consumer = ''"
    "  OR inbox_record.consumer ~ '[[:cntrl:]]' THEN\n"
    "  RAISE EXCEPTION 'outbox.inbox_record: consumer must be non-empty text without control"
    " characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF inbox_record.message_id IS NULL THEN\n"
    "  RAISE EXCEPTION 'outbox.inbox_record: message_id is NULL' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " INSERT INTO {s}.inbox (consumer, message_id)"
    "  VALUES (inbox_record.consumer, inbox_record.message_id) ON CONFLICT DO NOTHING;\n"
    " RETURN FOUND;\n"
    "END $fn$;",
    /* 2: notify only to wake a waiting relay, once (see "Wake-up" above). */
    "ALTER TABLE {s}.relays ADD COLUMN waiting boolean NOT NULL DEFAULT false;"
    "CREATE OR REPLACE FUNCTION {s}.notify_enqueue() RETURNS trigger LANGUAGE plpgsql"
    " SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$\n"
    "BEGIN\n"
    " UPDATE {s}.relays SET waiting = false WHERE id IN"
    "  (SELECT id FROM {s}.relays WHERE waiting FOR UPDATE SKIP LOCKED);\n"
    " IF FOUND THEN PERFORM pg_notify('{n}', ''); END IF;\n"
    " RETURN NULL;\n"
    "END $fn$;",
    /* 3: the trigger reads the relays table only while a relay is asleep
     * (holds the "asleep" advisory lock; see "Wake-up" above).  The lock
     * probe runs as the enqueuer (advisory locks need no rights); only
     * wake_relays() needs the owner's rights on relays. */
    "CREATE OR REPLACE FUNCTION {s}.wake_relays() RETURNS void LANGUAGE plpgsql"
    " SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$\n"
    "BEGIN\n"
    " IF EXISTS (SELECT 1 FROM {s}.relays WHERE waiting) THEN\n"
    "  UPDATE {s}.relays SET waiting = false WHERE id IN"
    "   (SELECT id FROM {s}.relays WHERE waiting FOR UPDATE SKIP LOCKED);\n"
    "  IF FOUND THEN PERFORM pg_notify('{n}', ''); END IF;\n"
    " END IF;\n"
    "END $fn$;"
    "CREATE OR REPLACE FUNCTION {s}.notify_enqueue() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
    "DECLARE released boolean;\n"
    "BEGIN\n"
    " IF pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('outbox.sleep:{n}'), 0) THEN\n"
    "  released := pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('outbox.sleep:{n}'), 0);\n"
    "  RETURN NULL;\n"
    " END IF;\n"
    " PERFORM {s}.wake_relays();\n"
    " RETURN NULL;\n"
    "END $fn$;",
    /* 4: a row put back to pending renews meta 'requeue_epoch', which the
     * claim compares with its floor's (see "Claim floor" above).  The epoch
     * is random, so a schema made again does not repeat it. */
    "INSERT INTO {s}.meta (key, value) VALUES ('requeue_epoch', gen_random_uuid()::text)"
    " ON CONFLICT (key) DO NOTHING;"
    "CREATE OR REPLACE FUNCTION {s}.renew_requeue_epoch() RETURNS trigger LANGUAGE plpgsql"
    " SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$\n"
    "BEGIN\n"
    " UPDATE {s}.meta SET value = gen_random_uuid()::text WHERE key = 'requeue_epoch';\n"
    " RETURN NULL;\n"
    "END $fn$;"
    "DROP TRIGGER IF EXISTS outbox_requeue ON {s}.outbox;"
    "CREATE TRIGGER outbox_requeue AFTER UPDATE OF status ON {s}.outbox FOR EACH ROW"
    " WHEN (OLD.status <> 'pending' AND NEW.status = 'pending')"
    " EXECUTE FUNCTION {s}.renew_requeue_epoch();",
    /* 5: the table refuses what enqueue refuses, for writers in any
     * language (guarantee 7).  The checks bind pending rows only: sent and
     * failed rows are never published, and a row the claim quarantines
     * (marks Failed) must stay writable whatever it holds.  NOT VALID: rows
     * written before this version are not checked now (one of them would
     * fail init, and the scan would hold the table's lock); the claim
     * quarantines those it cannot decode, after which `ALTER TABLE ...
     * VALIDATE CONSTRAINT` succeeds.  Control characters are U+0001..U+001F
     * and U+007F, as in the C library, whatever the locale; in headers they
     * are found as the escapes of the JSON text (one cached regular
     * expression: per-header jsonpath regexes cost 17 us per row with two
     * headers, this 4).  The traceparent header is checked under its W3C
     * (lower-case) name; other spellings are left to the claim's check.
     * outbox_blocking's key is bounded (the first 256 characters of the
     * aggregate id: all of a valid one), so that any row, however long its
     * aggregate id, can be marked Failed; the claim's probe compares both.
     * meta becomes readable by every role, so that enqueuing roles can check
     * the schema version (it holds no secrets).  Repeatable, like 4. */
    "ALTER TABLE {s}.outbox DROP CONSTRAINT IF EXISTS outbox_id_valid,"
    " DROP CONSTRAINT IF EXISTS outbox_type_valid, DROP CONSTRAINT IF EXISTS"
    " outbox_aggregate_valid, DROP CONSTRAINT IF EXISTS outbox_headers_valid,"
    " DROP CONSTRAINT IF EXISTS outbox_times_valid;"
    "ALTER TABLE {s}.outbox"
    " ADD CONSTRAINT outbox_id_valid CHECK (status <> 'pending'"
    "  OR id <> '00000000-0000-0000-0000-000000000000') NOT VALID,"
    " ADD CONSTRAINT outbox_type_valid CHECK (status <> 'pending' OR (octet_length(type) <= 256"
    "  AND type ~ '[^ \\t]' AND type !~ '[\\x01-\\x1f\\x7f]')) NOT VALID,"
    " ADD CONSTRAINT outbox_aggregate_valid CHECK (status <> 'pending'"
    "  OR (octet_length(aggregate_id) <= 256 AND aggregate_id ~ '[^ \\t]'"
    "  AND aggregate_id !~ '[\\x01-\\x1f\\x7f]' AND octet_length(aggregate_type) <= 256"
    "  AND aggregate_type !~ '[\\x01-\\x1f\\x7f]')) NOT VALID,"
    " ADD CONSTRAINT outbox_headers_valid CHECK (status <> 'pending' OR headers = '{}' OR ("
    "  NOT jsonb_path_exists(headers, 'strict $.* ? (@.type() != \"string\")')"
    "  AND NOT headers ? ''"
    "  AND headers::text !~ '(^|[^\\\\])(\\\\\\\\)*\\\\(u00[01][0-9a-fA-F]|[bfnrt])|\\x7f'"
    "  AND coalesce((headers ->> 'traceparent') ~"
    "   '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-|$)'"
    "   AND left(headers ->> 'traceparent', 2) <> 'ff'"
    "   AND NOT (left(headers ->> 'traceparent', 3) = '00-'"
    "    AND length(headers ->> 'traceparent') > 55)"
    "   AND substr(headers ->> 'traceparent', 4, 32) <> repeat('0', 32)"
    "   AND substr(headers ->> 'traceparent', 37, 16) <> repeat('0', 16), true))) NOT VALID,"
    " ADD CONSTRAINT outbox_times_valid CHECK (status <> 'pending' OR"
    "  (occurred_at >= '1970-01-01 00:00:00+00' AND occurred_at < '10000-01-01 00:00:00+00'"
    "  AND available_at >= '1970-01-01 00:00:00+00'"
    "  AND available_at < '10000-01-01 00:00:00+00')) NOT VALID;"
    "DROP INDEX IF EXISTS {s}.outbox_blocking;"
    "CREATE INDEX outbox_blocking ON {s}.outbox (left(aggregate_id, 256), seq)"
    " WHERE status = 'failed' OR attempts > 0;"
    "ALTER TABLE {s}.relays ADD COLUMN IF NOT EXISTS note text;"
    "GRANT SELECT ON {s}.meta TO PUBLIC;"
    "CREATE OR REPLACE FUNCTION {s}.enqueue(type text, aggregate_id text, payload jsonb,"
    " headers jsonb DEFAULT '{}', aggregate_type text DEFAULT '', id uuid DEFAULT NULL,"
    " occurred_at timestamptz DEFAULT now()) RETURNS uuid LANGUAGE plpgsql AS $fn$\n"
    "DECLARE h record; v text; new_id uuid; hdr jsonb := coalesce(enqueue.headers, '{}');\n"
    " agg_type text := coalesce(enqueue.aggregate_type, ''); total bigint;\n"
    " at timestamptz := coalesce(enqueue.occurred_at, now());\n"
    "BEGIN\n"
    " IF enqueue.type IS NULL OR octet_length(enqueue.type) NOT BETWEEN 1 AND 256"
    "  OR enqueue.type ~ '[\\x01-\\x1f\\x7f]' OR enqueue.type !~ '[^ \\t]' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: type must be 1 to 256 bytes of text, not blank, without"
    " control characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF enqueue.aggregate_id IS NULL OR octet_length(enqueue.aggregate_id) NOT BETWEEN 1 AND"
    " 256 OR enqueue.aggregate_id ~ '[\\x01-\\x1f\\x7f]' OR enqueue.aggregate_id !~ '[^ \\t]'"
    " THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: aggregate_id must be 1 to 256 bytes of text, not blank,"
    " without control characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF octet_length(agg_type) > 256 OR agg_type ~ '[\\x01-\\x1f\\x7f]' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: aggregate_type must be at most 256 bytes of text"
    " without control characters' USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF NOT (at >= '1970-01-01 00:00:00+00' AND at < '10000-01-01 00:00:00+00') THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: occurred_at % is outside the years 1970 to 9999', at"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF enqueue.payload IS NULL THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: payload is SQL NULL; pass JSON, e.g. ''{}''::jsonb'"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF jsonb_typeof(hdr) <> 'object' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: headers must be a JSON object of strings, not %',"
    " jsonb_typeof(hdr) USING ERRCODE = '22023';\n"
    " END IF;\n"
    " FOR h IN SELECT key, value FROM jsonb_each(hdr) LOOP\n"
    "  IF jsonb_typeof(h.value) <> 'string' THEN\n"
    "   RAISE EXCEPTION 'outbox.enqueue: header % must be a string, not %', quote_literal(h.key),"
    " jsonb_typeof(h.value) USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  v := h.value #>> '{}';\n"
    "  IF h.key = '' OR h.key ~ '[\\x01-\\x1f\\x7f]' OR v ~ '[\\x01-\\x1f\\x7f]' THEN\n"
    "   RAISE EXCEPTION 'outbox.enqueue: header names must be non-empty and header names and"
    " values free of control characters (header %)', quote_literal(h.key)"
    " USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF lower(h.key) = 'traceparent' AND (v !~"
    " '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-|$)' OR v ~ '^ff'"
    " OR v ~ '^00-.{52}.' OR v ~ '^.{3}0{32}-' OR v ~ '^.{36}0{16}-') THEN\n"
    "   RAISE EXCEPTION 'outbox.enqueue: header traceparent is not W3C trace-context"
    " (00-<32 hex>-<16 hex>-<2 hex>, ids not all zero)' USING ERRCODE = '22023';\n"
    "  END IF;\n"
    " END LOOP;\n"
    " total := octet_length(enqueue.payload::text) + octet_length(hdr::text)"
    "  + octet_length(enqueue.type) + octet_length(enqueue.aggregate_id)"
    "  + octet_length(agg_type);\n"
    " IF total > 1048576 THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: message is % bytes, over the 1048576-byte limit', total"
    " USING ERRCODE = '54000';\n"
    " END IF;\n"
    " new_id := coalesce(enqueue.id, {s}.uuid_v7());\n"
    " IF new_id = '00000000-0000-0000-0000-000000000000' THEN\n"
    "  RAISE EXCEPTION 'outbox.enqueue: id is the nil UUID, which cannot tell messages apart'"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES (new_id, at, enqueue.type, agg_type, enqueue.aggregate_id,"
    " enqueue.payload, hdr);\n"
    " RETURN new_id;\n"
    "END $fn$;",
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

/* A schema name we accept: [A-Za-z_][A-Za-z0-9_]*, at most 63 bytes. */
static int valid_schema(const char *s)
{
    size_t i, n = s ? strlen(s) : 0;
    if (n == 0 || n > 63) return 0;
    if (!isalpha((unsigned char)s[0]) && s[0] != '_') return 0;
    for (i = 1; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_') return 0;
    return 1;
}

static int schema_error(const char *schema, outbox_error *err)
{
    char shown[80];
    size_t i;
    /* Show the rejected name without control characters. */
    snprintf(shown, sizeof shown, "%s", schema ? schema : "(null)");
    for (i = 0; shown[i]; i++)
        if ((unsigned char)shown[i] < 0x20 || shown[i] == 0x7f) shown[i] = '?';
    return outbox__error(err, OUTBOX_ECONFIG,
                         "PostgreSQL schema name '%s' is not accepted: use 1 to 63 letters, "
                         "digits and underscores, starting with a letter or underscore "
                         "(default outbox)",
                         shown);
}

/* Copies a message from libpq or the server into buf as one line (log
 * lines and errors are one line each): line breaks and the indentation
 * after them become one space, or ". " between a word and a capitalised
 * next line ("...unexpectedly\n\tThis probably means..."); trailing
 * blanks go.  Returns buf. */
static const char *pq_message(const char *msg, char *buf, size_t len)
{
    const char *p = msg && *msg ? msg : "unknown error";
    size_t o = 0;

    if (len == 0) return buf;
    while (*p && o + 1 < len) {
        if (*p == '\n' || *p == '\r') {
            const char *q = p;
            while (*q == '\n' || *q == '\r' || *q == '\t' || *q == ' ') q++;
            if (!*q) break;
            if (o > 0 && isalnum((unsigned char)buf[o - 1]) && isupper((unsigned char)*q) &&
                o + 2 < len)
                buf[o++] = '.';
            if (o > 0 && buf[o - 1] != ' ') buf[o++] = ' ';
            p = q;
            continue;
        }
        buf[o++] = *p == '\t' ? ' ' : *p;
        p++;
    }
    while (o > 0 && buf[o - 1] == ' ') o--;
    buf[o] = '\0';
    return buf;
}

/* The error text of a failed result (res may be NULL: conn's message) as
 * one line: the server's message and its detail and hint, without the
 * severity prefix and without a "Failing row contains (...)" detail, which
 * would copy a whole row (payload included) into logs. */
static const char *pq_error_text(const PGconn *conn, const PGresult *res, char *buf, size_t len)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char joined[1024];

    if (primary && *primary) {
        const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
        const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
        if (detail && strncmp(detail, "Failing row contains", 20) == 0) detail = NULL;
        snprintf(joined, sizeof joined, "%s%s%s%s%s%s", primary, detail ? " (" : "",
                 detail ? detail : "", detail ? ")" : "", hint ? "; hint: " : "",
                 hint ? hint : "");
        return pq_message(joined, buf, len);
    }
    primary = res ? PQresultErrorMessage(res) : NULL;
    if (!primary || !*primary) primary = conn ? PQerrorMessage(conn) : "no connection";
    return pq_message(primary, buf, len);
}

/* Maps a failed result (res may be NULL) to an outbox code and fills err. */
static int pq_fail(PGconn *conn, PGresult *res, const char *what, outbox_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    char buf[400];
    int code = OUTBOX_ESTORE;

    pq_error_text(conn, res, buf, sizeof buf);
    if (conn == NULL || PQstatus(conn) == CONNECTION_BAD)
        return outbox__error(err, OUTBOX_EIO, "%s: the PostgreSQL connection was lost: %s",
                             what, buf);
    if (state) {
        if (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0 ||
            strcmp(state, "42883") == 0)
            code = OUTBOX_ENOSCHEMA;
        else if (strcmp(state, "23505") == 0) code = OUTBOX_EEXISTS;
        else if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
                 strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0)
            code = OUTBOX_EBUSY;
        else if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
                 strncmp(state, "53", 2) == 0)
            code = OUTBOX_EIO;
        else if (strcmp(state, "54000") == 0) code = OUTBOX_ETOOBIG;
    }
    if (code == OUTBOX_ENOSCHEMA)
        return outbox__error(err, code,
                             "%s: %s: the outbox schema is missing; run `outbox init --store "
                             "postgres://...` or call outbox_schema_init_pg",
                             what, buf);
    return outbox__error(err, code, "%s: %s (SQLSTATE %s)", what, buf, state ? state : "none");
}

/* Runs sql without parameters; expects no rows (COMMAND_OK or TUPLES_OK). */
static int exec_sql(PGconn *conn, const char *sql, const char *what, outbox_error *err)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType s = PQresultStatus(res);
    int code = OUTBOX_OK;
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) code = pq_fail(conn, res, what, err);
    PQclear(res);
    return code;
}

static void rollback(PGconn *conn)
{
    if (conn && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(conn, "ROLLBACK");
        PQclear(res);
    }
}

/* Expands a template into b (see "Schema" above); qschema is the quoted
 * schema. */
static void expand(outbox_buf *b, const char *tmpl, const char *qschema, const char *schema,
                   int partitions)
{
    const char *p = tmpl;
    outbox__buf_reset(b);
    while (*p) {
        const char *brace = strchr(p, '{');
        if (!brace) {
            outbox__buf_puts(b, p);
            break;
        }
        outbox__buf_append(b, p, (size_t)(brace - p));
        if (strncmp(brace, "{s}", 3) == 0) {
            outbox__buf_puts(b, qschema);
            p = brace + 3;
        } else if (strncmp(brace, "{n}", 3) == 0) {
            outbox__buf_puts(b, schema);
            p = brace + 3;
        } else if (strncmp(brace, "{P}", 3) == 0) {
            outbox__buf_printf(b, "%d", partitions);
            p = brace + 3;
        } else {
            outbox__buf_append(b, "{", 1);
            p = brace + 1;
        }
    }
}

/* Quotes a validated schema name with PQescapeIdentifier into out. */
static int quote_schema(PGconn *conn, const char *schema, char *out, size_t len,
                        outbox_error *err)
{
    char *q;
    if (!valid_schema(schema)) return schema_error(schema, err);
    q = PQescapeIdentifier(conn, schema, strlen(schema));
    if (!q) return pq_fail(conn, NULL, "quoting the schema name", err);
    snprintf(out, len, "%s", q);
    PQfreemem(q);
    return OUTBOX_OK;
}

static int64_t parse_i64(const char *s)
{
    return s && *s ? strtoll(s, NULL, 10) : 0;
}

/* A schema version as stored in meta: 1 to 9 digits; -1 otherwise. */
static int parse_version(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 9 || s[n] != '\0') return -1;
    return atoi(s);
}

/* Reads schema_version (and partitions) from {s}.meta: *version 0 when the
 * table or the row is absent, -1 when the row holds something else than a
 * version number (its text copied to bad, which may be NULL). */
static int read_meta(PGconn *conn, const char *qschema, int *version, int *partitions,
                     char *bad, size_t bad_len, outbox_error *err)
{
    char sql[256];
    PGresult *res;
    int i, code = OUTBOX_OK;

    *version = 0;
    if (partitions) *partitions = 0;
    if (bad && bad_len) bad[0] = '\0';
    snprintf(sql, sizeof sql, "SELECT key, value FROM %s.meta", qschema);
    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0)) {
            PQclear(res);
            return OUTBOX_OK; /* no schema yet */
        }
        code = pq_fail(conn, res, "reading the outbox schema version", err);
        PQclear(res);
        return code;
    }
    for (i = 0; i < PQntuples(res); i++) {
        const char *k = PQgetvalue(res, i, 0);
        if (strcmp(k, "schema_version") == 0) {
            *version = parse_version(PQgetvalue(res, i, 1));
            if (*version <= 0) {
                *version = -1;
                if (bad && bad_len) snprintf(bad, bad_len, "%.60s", PQgetvalue(res, i, 1));
            }
        } else if (strcmp(k, "partitions") == 0 && partitions)
            *partitions = (int)parse_i64(PQgetvalue(res, i, 1));
    }
    PQclear(res);
    return OUTBOX_OK;
}

/* The error for a schema whose outbox table exists while meta does not say
 * its version (version 0: no row; -1: bad, the text found): what the
 * tables look like and how to record it. */
static int unrecorded_schema(PGconn *conn, const char *schema, const char *qschema, int version,
                             const char *bad, outbox_error *err)
{
    char outbox[200], relays[200], found[128];
    const char *params[3];
    PGresult *res;
    int guess = 0, parts = 0;

    snprintf(outbox, sizeof outbox, "%s.outbox", qschema);
    snprintf(relays, sizeof relays, "%s.relays", qschema);
    params[0] = outbox;
    params[1] = relays;
    params[2] = qschema;
    res = PQexecParams(
        conn,
        "SELECT CASE"
        " WHEN NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)"
        "  AND attname = 'partition' AND NOT attisdropped) THEN 0"
        " WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1)"
        "  AND conname = 'outbox_times_valid') THEN 5"
        " WHEN EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1)"
        "  AND tgname = 'outbox_requeue') THEN 4"
        " WHEN EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'wake_relays'"
        "  AND pronamespace = $3::regnamespace) THEN 3"
        " WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($2)"
        "  AND attname = 'waiting' AND NOT attisdropped) THEN 2 ELSE 1 END,"
        " (SELECT substring(pg_get_expr(d.adbin, d.adrelid) FROM '%\\s*\\(?([0-9]+)')"
        "  FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        "  WHERE d.adrelid = to_regclass($1) AND a.attname = 'partition')",
        3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        guess = (int)parse_i64(PQgetvalue(res, 0, 0));
        parts = (int)parse_i64(PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    if (parts < 1 || parts > MAX_PARTITIONS) parts = DEFAULT_PARTITIONS;
    if (version < 0)
        snprintf(found, sizeof found, "schema_version '%s', not a version number", bad);
    else snprintf(found, sizeof found, "no schema_version");
    if (guess < 1 || guess > SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ESTORE,
                             "the PostgreSQL schema %s has an outbox table, but %s.meta has %s: "
                             "it was not made by outbox; use another schema= for the outbox",
                             schema, schema, found);
    return outbox__error(err, OUTBOX_ESTORE,
                         "the PostgreSQL schema %s has the outbox tables, but %s.meta has %s; "
                         "they look like outbox schema version %d with %d partitions: if outbox "
                         "made them, record that with INSERT INTO %s.meta (key, value) VALUES "
                         "('schema_version', '%d'), ('partitions', '%d') ON CONFLICT (key) DO "
                         "UPDATE SET value = excluded.value; and run init again (otherwise use "
                         "another schema= for the outbox)",
                         schema, schema, found, guess, parts, qschema, guess, parts);
}

/* Says, when the store URL asked for another partition count than the
 * schema has, that the count is fixed at creation. */
static void partitions_note(const char *schema, int requested, int stored)
{
    if (requested > 0 && stored > 0 && requested != stored)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "partitions=%d is not applied: the outbox schema %s has %d partitions, "
                    "fixed when it was created (for another count, create a new schema)",
                    requested, schema, stored);
}

/* Creates or upgrades the schema in one transaction (conn must have none
 * open); serialised against concurrent inits by a transaction-level
 * advisory lock.  requested: the partition count asked for (0: default),
 * used only when the schema is created.  A schema already up to date is
 * only read (no DDL: a role that may read meta but not create can run it). */
static int migrate(PGconn *conn, const char *schema, int requested, int *from, int *to,
                   outbox_error *err)
{
    char qschema[160], what[128], bad[64];
    outbox_buf b;
    int version = 0, stored_parts = 0, v, code, exists;
    int partitions = requested > 0 ? requested : DEFAULT_PARTITIONS;
    const char *params[1];
    outbox_error ignored;
    PGresult *res;

    if (from) *from = 0;
    if (to) *to = 0;
    code = quote_schema(conn, schema, qschema, sizeof qschema, err);
    if (code != OUTBOX_OK) return code;
    if (read_meta(conn, qschema, &version, &stored_parts, NULL, 0, &ignored) == OUTBOX_OK &&
        version == SCHEMA_VERSION) {
        partitions_note(schema, requested, stored_parts);
        if (from) *from = version;
        if (to) *to = version;
        return OUTBOX_OK;
    }
    outbox__buf_init(&b);
    code = exec_sql(conn, "BEGIN", "starting the schema transaction", err);
    if (code != OUTBOX_OK) goto out;
    params[0] = schema;
    res = PQexecParams(conn, "SELECT pg_advisory_xact_lock(hashtext('outbox.init:' || $1))", 1,
                       NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(conn, res, "locking the schema for init", err);
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    code = exec_sql(conn, "SET LOCAL client_min_messages = warning", "configuring init", err);
    if (code != OUTBOX_OK) goto fail;
    expand(&b, meta_sql, qschema, schema, partitions);
    code = exec_sql(conn, b.data, "creating the outbox schema", err);
    if (code != OUTBOX_OK) goto fail;
    code = read_meta(conn, qschema, &version, &stored_parts, bad, sizeof bad, err);
    if (code != OUTBOX_OK) goto fail;
    if (version <= 0) {
        outbox__buf_reset(&b);
        outbox__buf_printf(&b, "SELECT to_regclass('%s.outbox') IS NOT NULL", qschema);
        res = PQexec(conn, b.data);
        exists = PQresultStatus(res) == PGRES_TUPLES_OK && PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (exists || version < 0) {
            code = unrecorded_schema(conn, schema, qschema, version, bad, err);
            goto fail;
        }
    }
    if (from) *from = version;
    if (to) *to = version;
    if (version > SCHEMA_VERSION) {
        code = outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox schema %s is version %d, newer than this build's %d "
                             "(liboutbox %s): upgrade outbox",
                             schema, version, SCHEMA_VERSION, outbox_version());
        goto fail;
    }
    if (version > 0 && stored_parts > 0) {
        partitions_note(schema, requested, stored_parts);
        partitions = stored_parts;
    }
    for (v = version; v < SCHEMA_VERSION; v++) {
        expand(&b, migrations[v], qschema, schema, partitions);
        if (b.oom) {
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory building the schema");
            goto fail;
        }
        snprintf(what, sizeof what, "migrating the outbox schema %s to version %d", schema,
                 v + 1);
        code = exec_sql(conn, b.data, what, err);
        if (code != OUTBOX_OK) goto fail;
    }
    if (version != SCHEMA_VERSION) {
        outbox__buf_reset(&b);
        outbox__buf_printf(&b,
                           "INSERT INTO %s.meta (key, value) VALUES ('schema_version', '%d'),"
                           " ('partitions', '%d') ON CONFLICT (key) DO UPDATE SET value ="
                           " excluded.value",
                           qschema, SCHEMA_VERSION, partitions);
        code = exec_sql(conn, b.data, "recording the outbox schema version", err);
        if (code != OUTBOX_OK) goto fail;
    }
    code = exec_sql(conn, "COMMIT", "committing the schema", err);
    if (code != OUTBOX_OK) goto fail;
    if (to) *to = SCHEMA_VERSION;
    goto out;

fail:
    rollback(conn);
out:
    outbox__buf_free(&b);
    return code;
}

/* Creates or upgrades the outbox schema (NULL: "outbox") on the caller's
 * connection (borrowed), in a transaction of its own: OUTBOX_EINVAL when a
 * transaction is open, OUTBOX_ECONFIG for a bad schema name,
 * OUTBOX_ESCHEMANEWER, or a mapped database error. */
int outbox_schema_init_pg(PGconn *conn, const char *schema, outbox_error *err)
{
    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_schema_init_pg: conn is NULL");
    if (!schema) schema = DEFAULT_SCHEMA;
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_schema_init_pg runs its own transaction: call it with no "
                             "transaction open (COMMIT or ROLLBACK first)");
    return migrate(conn, schema, 0, NULL, NULL, err);
}

/* ------------------------------------------------------------------------
 * Enqueue and inbox on the caller's connection
 * ---------------------------------------------------------------------- */

/* The insert used by outbox_enqueue_pg and the driver: ON CONFLICT DO
 * NOTHING, so a duplicate id is reported without aborting the caller's
 * transaction.  Parameters: id, occurred_at (unix us), type, aggregate_type,
 * aggregate_id, payload, headers. */
static const char insert_tmpl[] =
    "INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES ($1::uuid, 'epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
    " $3, $4, $5, $6::jsonb, $7::jsonb) ON CONFLICT (id) DO NOTHING RETURNING seq";

/* The insert used by outbox_enqueue_commit_pg: the same row, but a
 * duplicate id raises unique_violation, which aborts the pipeline before
 * its COMMIT (an ON CONFLICT DO NOTHING would let the COMMIT run without
 * the message).  Nothing is returned, so it needs only INSERT rights. */
static const char insert_commit_tmpl[] =
    "INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"
    " headers) VALUES ($1::uuid, 'epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
    " $3, $4, $5, $6::jsonb, $7::jsonb)";

/* Which (connection, backend, statement name) is already prepared: a small
 * process-wide ring.  The names carry the schema.  A miss only costs a
 * catalog look-up. */
#define PREPARED_SLOTS 64
static struct {
    const PGconn *conn;
    int backend_pid;
    char name[96];
} prepared[PREPARED_SLOTS];
static unsigned prepared_next;
static pthread_mutex_t prepared_lock = PTHREAD_MUTEX_INITIALIZER;

static int prepared_known(const PGconn *conn, int pid, const char *name)
{
    int i, found = 0;
    pthread_mutex_lock(&prepared_lock);
    for (i = 0; i < PREPARED_SLOTS && !found; i++)
        found = prepared[i].conn == conn && prepared[i].backend_pid == pid &&
                strcmp(prepared[i].name, name) == 0;
    pthread_mutex_unlock(&prepared_lock);
    return found;
}

static void prepared_remember(const PGconn *conn, int pid, const char *name)
{
    unsigned i;
    pthread_mutex_lock(&prepared_lock);
    i = prepared_next++ % PREPARED_SLOTS;
    prepared[i].conn = conn;
    prepared[i].backend_pid = pid;
    snprintf(prepared[i].name, sizeof prepared[i].name, "%s", name);
    pthread_mutex_unlock(&prepared_lock);
}

/* Refuses a schema newer than this build on conn: reads meta's version
 * when this role may (since version 5 every role may; an older schema
 * whose meta it cannot read is not newer).  Runs only queries that cannot
 * fail, so a caller's transaction stays usable. */
static int refuse_newer_schema(PGconn *conn, const char *schema, const char *qschema,
                               outbox_error *err)
{
    char meta[200], sql[256];
    const char *params[1];
    PGresult *res;
    int readable, version;

    snprintf(meta, sizeof meta, "%s.meta", qschema);
    params[0] = meta;
    res = PQexecParams(conn,
                       "SELECT to_regclass($1) IS NOT NULL AND has_table_privilege($1, 'SELECT')",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int code = pq_fail(conn, res, "checking the outbox schema version", err);
        PQclear(res);
        return code;
    }
    readable = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!readable) return OUTBOX_OK;
    snprintf(sql, sizeof sql, "SELECT value FROM %s WHERE key = 'schema_version'", meta);
    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int code = pq_fail(conn, res, "checking the outbox schema version", err);
        PQclear(res);
        return code;
    }
    version = PQntuples(res) > 0 ? parse_version(PQgetvalue(res, 0, 0)) : 0;
    PQclear(res);
    if (version > SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox schema %s is version %d, newer than this build's %d "
                             "(liboutbox %s): upgrade outbox; nothing was written",
                             schema, version, SCHEMA_VERSION, outbox_version());
    return OUTBOX_OK;
}

/* Makes sure the template tmpl (nparams parameters) is prepared on conn as
 * `stmt_name`, and, when it is not yet known to be, that the schema holds
 * `table` and is not newer than this build (once per connection, like
 * the statement).  Checks the catalog first (queries that cannot fail in a
 * healthy transaction), so a missing schema gives ENOSCHEMA and a newer one
 * ESCHEMANEWER without aborting the caller's transaction. */
static int ensure_prepared(PGconn *conn, const char *schema, const char *stmt_name,
                           const char *tmpl, int nparams, const char *table_name,
                           outbox_error *err)
{
    char qschema[160], table[200];
    const char *params[2];
    PGresult *res;
    outbox_buf b;
    int pid = PQbackendPID(conn), have, exists, code;

    if (prepared_known(conn, pid, stmt_name)) return OUTBOX_OK;
    code = quote_schema(conn, schema, qschema, sizeof qschema, err);
    if (code != OUTBOX_OK) return code;
    snprintf(table, sizeof table, "%s.%s", qschema, table_name);
    params[0] = stmt_name;
    params[1] = table;
    res = PQexecParams(conn,
                       "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE name = $1),"
                       " to_regclass($2) IS NOT NULL",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(conn, res, "checking the outbox schema", err);
        PQclear(res);
        return code;
    }
    have = parse_i64(PQgetvalue(res, 0, 0)) > 0;
    exists = PQgetvalue(res, 0, 1)[0] == 't';
    PQclear(res);
    if (!exists)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "no %s table %s.%s in this database: run `outbox init "
                             "--store postgres://...?schema=%s` or call outbox_schema_init_pg",
                             table_name, schema, table_name, schema);
    code = refuse_newer_schema(conn, schema, qschema, err);
    if (code != OUTBOX_OK) return code;
    if (!have) {
        outbox__buf_init(&b);
        expand(&b, tmpl, qschema, schema, 0);
        if (b.oom) {
            outbox__buf_free(&b);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory preparing a statement");
        }
        res = PQprepare(conn, stmt_name, b.data, nparams, NULL);
        outbox__buf_free(&b);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            code = pq_fail(conn, res, "preparing a statement", err);
            PQclear(res);
            return code;
        }
        PQclear(res);
    }
    prepared_remember(conn, pid, stmt_name);
    return OUTBOX_OK;
}

/* OUTBOX_OK when conn is in an open transaction that has not failed;
 * otherwise OUTBOX_ENOTXN naming function fn (idle: what fn needs, for a
 * connection outside a transaction). */
static int require_txn(PGconn *conn, const char *fn, const char *idle, outbox_error *err)
{
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS: return OUTBOX_OK;
    case PQTRANS_INERROR:
        return outbox__error(err, OUTBOX_ENOTXN,
                             "%s: the caller's transaction has already failed (an earlier "
                             "statement raised an error): ROLLBACK and retry",
                             fn);
    case PQTRANS_IDLE: return outbox__error(err, OUTBOX_ENOTXN, "%s %s", fn, idle);
    default:
        return outbox__error(err, OUTBOX_ENOTXN,
                             "%s: the connection is busy or broken (transaction status %d): "
                             "finish the running command first",
                             fn, (int)PQtransactionStatus(conn));
    }
}

/* The seven parameters of the prepared insert of msg (occurred: room for
 * the timestamp's text). */
static void insert_params(const outbox_msg *msg, const char *params[7], char occurred[32])
{
    snprintf(occurred, 32, "%lld", (long long)msg->occurred_at);
    params[0] = msg->id;
    params[1] = occurred;
    params[2] = msg->type;
    params[3] = msg->aggregate_type ? msg->aggregate_type : "";
    params[4] = msg->aggregate_id;
    params[5] = msg->payload ? msg->payload : "{}";
    params[6] = msg->headers_json ? msg->headers_json : "{}";
}

/* Runs the prepared insert of msg on conn (statement stmt_name). */
static int insert_msg(PGconn *conn, const char *stmt_name, const outbox_msg *msg,
                      outbox_error *err)
{
    const char *params[7];
    char occurred[32];
    PGresult *res;
    int code = OUTBOX_OK;

    insert_params(msg, params, occurred);
    res = PQexecPrepared(conn, stmt_name, 7, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        code = pq_fail(conn, res, "inserting into the outbox", err);
    else if (PQntuples(res) == 0)
        code = outbox__error(err, OUTBOX_EEXISTS,
                             "a message with id %s is already in the outbox: give each message "
                             "its own id",
                             msg->id);
    PQclear(res);
    return code;
}

static void stmt_name_for(const char *schema, char *out, size_t len)
{
    snprintf(out, len, "outbox_enqueue.%s", schema);
}

/* Inserts msg into schema's outbox inside the caller's open transaction
 * (conn, schema and msg borrowed).  OUTBOX_ENOTXN without a transaction,
 * OUTBOX_ECONFIG for a bad schema name, OUTBOX_ETOOBIG, OUTBOX_ENOSCHEMA,
 * OUTBOX_EEXISTS, or a mapped database error.  Duplicate ids and a missing
 * schema leave the caller's transaction usable. */
int outbox_enqueue_pg_schema(PGconn *conn, const char *schema, const outbox_msg *msg,
                             outbox_error *err)
{
    char name[96];
    int code;

    if (!conn || !msg)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_enqueue_pg: %s is NULL",
                             conn ? "msg" : "conn");
    if (!schema) schema = DEFAULT_SCHEMA;
    if (!valid_schema(schema)) return schema_error(schema, err);
    code = require_txn(conn, "outbox_enqueue_pg",
                       "needs an open transaction (BEGIN ... COMMIT) so the message commits "
                       "with your business change",
                       err);
    if (code != OUTBOX_OK) return code;
    code = outbox__msg_check_size(msg, err);
    if (code != OUTBOX_OK) return code;
    stmt_name_for(schema, name, sizeof name);
    code = ensure_prepared(conn, schema, name, insert_tmpl, 7, "outbox", err);
    if (code != OUTBOX_OK) return code;
    return insert_msg(conn, name, msg, err);
}

/* outbox_enqueue_pg_schema with the default schema "outbox". */
int outbox_enqueue_pg(PGconn *conn, const outbox_msg *msg, outbox_error *err)
{
    return outbox_enqueue_pg_schema(conn, DEFAULT_SCHEMA, msg, err);
}

/* ------------------------------------------------------------------------
 * Enqueue and commit in one round trip
 *
 * The caller's transaction is open (BEGIN and the business statements have
 * run).  The n prepared INSERTs and a COMMIT go out as one pipeline with
 * one Sync, so the client waits for the server once.  The extended
 * protocol skips every statement after an error up to the Sync: a failed
 * INSERT means the COMMIT never runs and the transaction stays open in the
 * failed state (the caller rolls it back), so a business change cannot
 * commit without its messages.  The INSERT has no ON CONFLICT: a duplicate
 * id is an error and aborts the pipeline like any other.
 *
 * libpq stays in blocking mode: while its output is flushed it also reads
 * what the server sends, so a long pipeline cannot deadlock on full socket
 * buffers.  Every path leaves pipeline mode again; only a broken
 * connection cannot (libpq refuses while the lost results are queued), and
 * such a connection has to be reset or closed anyway.
 * ---------------------------------------------------------------------- */

static void commit_stmt_name_for(const char *schema, char *out, size_t len)
{
    snprintf(out, len, "outbox_enqueue_commit.%s", schema);
}

/* Whether an error result ended the session (FATAL or PANIC, or the
 * connection is gone). */
static int fatal_result(const PGconn *conn, const PGresult *res)
{
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    return PQstatus(conn) == CONNECTION_BAD ||
           (severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0));
}

/* Sends msg's INSERT into the pipeline (queued, not yet flushed). */
static int send_insert(PGconn *conn, const char *stmt_name, const outbox_msg *msg)
{
    const char *params[7];
    char occurred[32];

    insert_params(msg, params, occurred);
    return PQsendQueryPrepared(conn, stmt_name, 7, params, NULL, NULL, 0);
}

/* Enqueues msgs[0..n) as the last statements of the caller's open
 * transaction and commits it, in one round trip (see above).  See
 * outbox.h for the outcomes. */
int outbox_enqueue_commit_pg(PGconn *conn, const char *schema, const outbox_msg *const *msgs,
                             size_t n, outbox_error *err)
{
    char name[96], what[200];
    size_t i, sent = 0, results = 0;
    int code = OUTBOX_OK, commit_sent = 0, committed = 0, synced = 0, failed = 0;
    PGresult *res;

    if (!conn)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_enqueue_commit_pg: conn is NULL");
    if (n > 0 && !msgs)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_enqueue_commit_pg: msgs is NULL with n = %zu", n);
    for (i = 0; i < n; i++)
        if (!msgs[i])
            return outbox__error(err, OUTBOX_EINVAL,
                                 "outbox_enqueue_commit_pg: msgs[%zu] is NULL (n = %zu)", i, n);
    if (!schema) schema = DEFAULT_SCHEMA;
    if (!valid_schema(schema)) return schema_error(schema, err);
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_enqueue_commit_pg: the connection is in pipeline mode: "
                             "collect its results and call PQexitPipelineMode first");
    code = require_txn(conn, "outbox_enqueue_commit_pg",
                       "needs an open transaction (BEGIN and your business statements) to add "
                       "the messages to and commit",
                       err);
    if (code != OUTBOX_OK) return code;
    for (i = 0; i < n; i++) {
        code = outbox__msg_check_size(msgs[i], err);
        if (code != OUTBOX_OK) return code;
    }
    commit_stmt_name_for(schema, name, sizeof name);
    if (n > 0) {
        /* Once per connection, outside the pipeline; the transaction stays
         * usable when this fails. */
        code = ensure_prepared(conn, schema, name, insert_commit_tmpl, 7, "outbox", err);
        if (code != OUTBOX_OK) return code;
    }

    if (!PQenterPipelineMode(conn))
        return pq_fail(conn, NULL, "outbox_enqueue_commit_pg: entering pipeline mode", err);
    for (i = 0; i < n; i++) {
        if (!send_insert(conn, name, msgs[i])) {
            snprintf(what, sizeof what,
                     "outbox_enqueue_commit_pg: sending message %zu of %zu, nothing was "
                     "committed",
                     i + 1, n);
            code = pq_fail(conn, NULL, what, err);
            failed = 1;
            break;
        }
        sent++;
    }
    if (!failed && OUTBOX_FAULT("pg_enqueue_before_commit") != 0) {
        code = outbox__error(err, OUTBOX_EFAULT,
                             "outbox_enqueue_commit_pg: fault injected before COMMIT; nothing "
                             "was committed: ROLLBACK the transaction");
        failed = 1;
    }
    if (!failed) {
        if (PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0)) {
            commit_sent = 1;
            sent++;
        } else {
            code = pq_fail(conn, NULL,
                           "outbox_enqueue_commit_pg: sending COMMIT, nothing was committed",
                           err);
            failed = 1;
        }
    }
    /* The Sync ends the pipeline (and flushes it), also after a failed
     * send, so that what was sent can be drained. */
    if (!PQpipelineSync(conn)) {
        if (!failed)
            code = pq_fail(conn, NULL,
                           commit_sent ? "outbox_enqueue_commit_pg: sending the pipeline; "
                                         "whether the transaction committed is unknown"
                                       : "outbox_enqueue_commit_pg: sending the pipeline",
                           err);
        failed = 1;
        goto out;
    }

    /* Each statement's results end with a NULL; then comes the Sync. */
    while (!synced) {
        res = PQgetResult(conn);
        if (!res) {
            if (PQstatus(conn) == CONNECTION_BAD || ++results > sent) break;
            continue;
        }
        switch (PQresultStatus(res)) {
        case PGRES_PIPELINE_SYNC: synced = 1; break;
        case PGRES_PIPELINE_ABORTED: break; /* skipped after an error */
        case PGRES_COMMAND_OK:
            if (commit_sent && results == n) {
                if (strcmp(PQcmdStatus(res), "COMMIT") == 0) {
                    committed = 1;
                } else if (!failed) {
                    code = outbox__error(err, OUTBOX_ESTORE,
                                         "outbox_enqueue_commit_pg: COMMIT answered %s: the "
                                         "transaction was rolled back, nothing was committed",
                                         PQcmdStatus(res));
                    failed = 1;
                }
            }
            break;
        default:
            if (!failed) {
                /* An error without SQLSTATE comes from libpq (the
                 * connection broke): the server may have run more. */
                if (!PQresultErrorField(res, PG_DIAG_SQLSTATE))
                    snprintf(what, sizeof what, "outbox_enqueue_commit_pg: %s",
                             commit_sent ? "whether the transaction committed is unknown"
                                         : "nothing was committed");
                else if (results < n)
                    snprintf(what, sizeof what,
                             "outbox_enqueue_commit_pg: inserting message %zu of %zu (id %s); "
                             "nothing was committed (ROLLBACK the transaction)",
                             results + 1, n, msgs[results]->id);
                else if (fatal_result(conn, res))
                    /* E.g. terminated while waiting for a synchronous
                     * standby: committed locally, or not. */
                    snprintf(what, sizeof what,
                             "outbox_enqueue_commit_pg: the session ended during COMMIT; "
                             "whether the transaction committed is unknown");
                else
                    snprintf(what, sizeof what,
                             "outbox_enqueue_commit_pg: COMMIT failed and the transaction was "
                             "rolled back");
                code = pq_fail(conn, res, what, err);
                failed = 1;
            }
            break;
        }
        PQclear(res);
    }
    if (!synced && !failed && !committed) {
        /* The connection broke before the pipeline's results arrived (a
         * COMMIT confirmed before that stays OUTBOX_OK). */
        code = pq_fail(conn, NULL,
                       commit_sent ? "outbox_enqueue_commit_pg: waiting for COMMIT; whether the "
                                     "transaction committed is unknown"
                                   : "outbox_enqueue_commit_pg: nothing was committed",
                       err);
    }

out:
    /* Fails only with results left unread, i.e. on a broken connection,
     * which the outcome above already reports (a COMMIT confirmed before
     * the break stays OUTBOX_OK). */
    if (!PQexitPipelineMode(conn)) {
        char buf[300];
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "outbox_enqueue_commit_pg: could not leave pipeline mode: %s",
                    pq_message(PQerrorMessage(conn), buf, sizeof buf));
    }
    if (code == OUTBOX_OK && !committed)
        code = outbox__error(err, OUTBOX_ESTORE,
                             "outbox_enqueue_commit_pg: the server did not confirm the COMMIT");
    return code;
}

/* The inbox insert, prepared once per connection as
 * "outbox_inbox_record.<schema>". */
static const char inbox_record_tmpl[] =
    "INSERT INTO {s}.inbox (consumer, message_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING";

/* Records (consumer, message_id) in schema's inbox inside the caller's open
 * transaction.  OUTBOX_OK the first time, OUTBOX_DUPLICATE afterwards.
 * OUTBOX_ENOTXN, OUTBOX_EINVAL (consumer), OUTBOX_EBADID, OUTBOX_ECONFIG
 * (schema name), OUTBOX_ENOSCHEMA, OUTBOX_ESCHEMANEWER (both leave the
 * transaction usable) or a mapped database error. */
int outbox_inbox_record_pg_schema(PGconn *conn, const char *schema, const char *consumer,
                                  const char *message_id, outbox_error *err)
{
    char name[96];
    const char *params[2];
    const unsigned char *c;
    PGresult *res;
    int code = OUTBOX_OK;

    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_record_pg: conn is NULL");
    if (!schema) schema = DEFAULT_SCHEMA;
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS)
        return outbox__error(err, OUTBOX_ENOTXN,
                             "outbox_inbox_record_pg needs an open, healthy transaction (BEGIN "
                             "... COMMIT) so the record commits with the message's effect");
    if (!consumer || !*consumer)
        return outbox__error(err, OUTBOX_EINVAL,
                             "inbox consumer name must be non-empty text without control "
                             "characters");
    for (c = (const unsigned char *)consumer; *c; c++)
        if (*c < 0x20 || *c == 0x7f)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "inbox consumer name must be non-empty text without control "
                                 "characters");
    if (!message_id || !outbox_uuid_valid(message_id))
        return outbox__error(err, OUTBOX_EBADID,
                             "inbox message id must be a UUID (8-4-4-4-12 hex digits)");
    if (!valid_schema(schema)) return schema_error(schema, err);
    snprintf(name, sizeof name, "outbox_inbox_record.%s", schema);
    code = ensure_prepared(conn, schema, name, inbox_record_tmpl, 2, "inbox", err);
    if (code != OUTBOX_OK) return code;
    params[0] = consumer;
    params[1] = message_id;
    res = PQexecPrepared(conn, name, 2, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = pq_fail(conn, res, "recording the message in the inbox", err);
    else if (strcmp(PQcmdTuples(res), "0") == 0)
        code = OUTBOX_DUPLICATE;
    PQclear(res);
    return code;
}

/* Deletes the inbox entries of `schema` received more than retention_ms
 * ago, in one statement (its own transaction: no transaction may be open
 * on conn).  See outbox.h. */
int outbox_inbox_purge_pg(PGconn *conn, const char *schema, int64_t retention_ms,
                          int64_t redelivery_horizon_ms, int64_t *purged, outbox_error *err)
{
    char qschema[160], sql[320], cutoff[32];
    const char *params[1];
    PGresult *res;
    int code;

    if (purged) *purged = 0;
    if (!conn) return outbox__error(err, OUTBOX_EINVAL, "outbox_inbox_purge_pg: conn is NULL");
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_inbox_purge_pg runs its own transaction: call it with no "
                             "transaction open");
    code = outbox__inbox_retention_check("outbox_inbox_purge_pg", retention_ms,
                                         redelivery_horizon_ms, err);
    if (code != OUTBOX_OK) return code;
    if (!schema) schema = DEFAULT_SCHEMA;
    code = quote_schema(conn, schema, qschema, sizeof qschema, err);
    if (code != OUTBOX_OK) return code;
    code = refuse_newer_schema(conn, schema, qschema, err);
    if (code != OUTBOX_OK) return code;
    /* The cutoff in microseconds, as the server's clock sees it. */
    snprintf(cutoff, sizeof cutoff, "%lld",
             (long long)(retention_ms > INT64_MAX / 1000 ? INT64_MAX : retention_ms * 1000));
    snprintf(sql, sizeof sql,
             "DELETE FROM %s.inbox WHERE received_at < now() - $1::bigint * interval '1 "
             "microsecond'",
             qschema);
    params[0] = cutoff;
    res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = pq_fail(conn, res, "purging the inbox", err);
    else if (purged)
        *purged = parse_i64(PQcmdTuples(res));
    PQclear(res);
    return code;
}

/* outbox_inbox_record_pg_schema with the default schema "outbox". */
int outbox_inbox_record_pg(PGconn *conn, const char *consumer, const char *message_id,
                           outbox_error *err)
{
    return outbox_inbox_record_pg_schema(conn, DEFAULT_SCHEMA, consumer, message_id, err);
}

/* ------------------------------------------------------------------------
 * The driver: state, URL, connection
 * ---------------------------------------------------------------------- */

typedef struct pg_store {
    PGconn *conn;
    char *conninfo;      /* what libpq gets (may hold a password: never shown) */
    char shown[512];     /* redacted URL for messages */
    char schema[64];
    char qschema[160];
    int url_partitions;  /* partitions= at init (0: default) */
    int partitions;      /* from meta, 0 until read */
    int32_t part_key;    /* advisory lock class of partitions */
    int32_t member_key;  /* advisory lock class of relay membership */
    int32_t sleep_key;   /* advisory lock class of "a relay is asleep" (key 0) */
    int sleep_held;      /* this session holds the shared "asleep" lock */
    int in_txn;          /* a claim transaction is open */
    int prepared;        /* the hot statements are prepared on conn */
    int schema_ok;       /* the schema version was checked on conn */
    int listening;
    int had_conn;        /* a connection existed: the next connect is a reconnect */
    int notified_first;  /* `changed` said 1 once */
    int waiting;         /* the relay's last `idle` request (kept over reconnects) */
    int live_seen;       /* live relays at the last rebalance */
    int once_waited;     /* a --once relay waited for busy partitions already */

    /* Relay membership (after lease_acquire). */
    char owner[128];
    char note[256];      /* lease_note's text, kept for re-registering */
    int note_dirty;      /* note not yet written (set during a claim) */
    int64_t member_id;   /* row in {s}.relays, 0 when not registered */
    unsigned char *held; /* partitions[i] != 0 when this session holds i */
    int held_count;
    int64_t next_rebalance_us; /* monotonic */
    int64_t ttl_ms;

    /* Claim floor (see "Claim floor" above). */
    int64_t floor;         /* no row below it is pending; 0: none known */
    char floor_epoch[64];  /* meta 'requeue_epoch' when floor was found */
    int floor_off;         /* this session cannot read what the floor needs */
    int64_t floor_next_us; /* monotonic time of the next refresh */
    int64_t wait_seq;      /* L of a refresh waiting for wait_xacts to end */
    char *wait_xacts;      /* array literal of their virtual xids; NULL: none */

    outbox_buf sql;      /* scratch */
    outbox_buf a1, a2, a3; /* array literals for complete */
} pg_store;

/* Appends s to b as an element of a PostgreSQL array literal. */
static void array_text(outbox_buf *b, const char *s)
{
    outbox__buf_append(b, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') outbox__buf_append(b, "\\", 1);
        outbox__buf_append(b, s, 1);
    }
    outbox__buf_append(b, "\"", 1);
}

/* Copies the keyword string src into out with password values masked. */
static void redact_keywords(const char *src, char *out, size_t len)
{
    size_t o = 0;
    const char *p = src;
    while (*p && o + 1 < len) {
        if (strncasecmp(p, "password", 8) == 0) {
            const char *q = p + 8;
            while (*q == ' ') q++;
            if (*q == '=') {
                const char *mask = "password=***";
                while (*mask && o + 1 < len) out[o++] = *mask++;
                q++;
                while (*q == ' ') q++;
                if (*q == '\'') {
                    for (q++; *q && *q != '\''; q++)
                        if (*q == '\\' && q[1]) q++;
                    if (*q) q++;
                } else {
                    while (*q && *q != ' ') q++;
                }
                p = q;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

/* Takes our parameters out of a libpq URI's query.  Writes the rest to
 * conninfo (owned by the caller). */
static int split_uri(pg_store *st, const char *url, char **conninfo, outbox_error *err)
{
    const char *q = strchr(url, '?');
    outbox_buf b;
    int first = 1;

    outbox__buf_init(&b);
    outbox__buf_append(&b, url, q ? (size_t)(q - url) : strlen(url));
    if (q) {
        const char *p = q + 1;
        while (*p) {
            const char *amp = strchr(p, '&');
            size_t n = amp ? (size_t)(amp - p) : strlen(p);
            if (n > 7 && strncmp(p, "schema=", 7) == 0) {
                if (n - 7 >= sizeof st->schema) {
                    outbox__buf_free(&b);
                    return outbox__error(err, OUTBOX_ECONFIG,
                                         "store URL '%s': schema name is too long (at most 63 "
                                         "characters)",
                                         st->shown);
                }
                memcpy(st->schema, p + 7, n - 7);
                st->schema[n - 7] = '\0';
            } else if (n > 11 && strncmp(p, "partitions=", 11) == 0) {
                char num[16];
                char *end;
                long v;
                snprintf(num, sizeof num, "%.*s", (int)(n - 11 < 15 ? n - 11 : 15), p + 11);
                v = strtol(num, &end, 10);
                if (*end || v < 1 || v > MAX_PARTITIONS) {
                    outbox__buf_free(&b);
                    return outbox__error(err, OUTBOX_ECONFIG,
                                         "store URL '%s': partitions must be a number from 1 "
                                         "to %d (default %d)",
                                         st->shown, MAX_PARTITIONS, DEFAULT_PARTITIONS);
                }
                st->url_partitions = (int)v;
            } else if (n > 0) {
                outbox__buf_append(&b, first ? "?" : "&", 1);
                outbox__buf_append(&b, p, n);
                first = 0;
            }
            p += n;
            if (*p == '&') p++;
        }
    }
    if (b.oom) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
    *conninfo = b.data ? b.data : strdup(url);
    return *conninfo ? OUTBOX_OK
                     : outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
}

/* Takes schema=... and partitions=... out of a keyword string. */
static int split_keywords(pg_store *st, const char *kw, char **conninfo, outbox_error *err)
{
    outbox_buf b;
    const char *p = kw;

    outbox__buf_init(&b);
    outbox__buf_puts(&b, "");
    while (*p) {
        const char *start, *eq, *vstart, *vend;
        size_t klen;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        start = p;
        while (*p && *p != '=' && *p != ' ') p++;
        klen = (size_t)(p - start);
        while (*p == ' ') p++;
        if (*p != '=') {
            outbox__buf_free(&b);
            return outbox__error(err, OUTBOX_EBADURL,
                                 "store URL '%s' is not a libpq keyword string (key=value ...) "
                                 "nor a URI: write postgres://user@host/db or "
                                 "postgres:host=... dbname=...",
                                 st->shown);
        }
        eq = p++;
        (void)eq;
        while (*p == ' ') p++;
        vstart = p;
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                if (*p == '\\' && p[1]) p++;
            if (*p) p++;
        } else {
            while (*p && *p != ' ' && *p != '\t') p++;
        }
        vend = p;
        if (klen == 6 && strncmp(start, "schema", 6) == 0) {
            size_t n = (size_t)(vend - vstart);
            if (n >= sizeof st->schema) n = sizeof st->schema - 1;
            memcpy(st->schema, vstart, n);
            st->schema[n] = '\0';
        } else if (klen == 10 && strncmp(start, "partitions", 10) == 0) {
            char num[16];
            char *end;
            long v;
            snprintf(num, sizeof num, "%.*s", (int)((size_t)(vend - vstart) < 15 ? vend - vstart : 15),
                     vstart);
            v = strtol(num, &end, 10);
            if (*end || v < 1 || v > MAX_PARTITIONS) {
                outbox__buf_free(&b);
                return outbox__error(err, OUTBOX_ECONFIG,
                                     "store URL '%s': partitions must be a number from 1 to %d "
                                     "(default %d)",
                                     st->shown, MAX_PARTITIONS, DEFAULT_PARTITIONS);
            }
            st->url_partitions = (int)v;
        } else {
            if (b.len > 0) outbox__buf_append(&b, " ", 1);
            outbox__buf_append(&b, start, (size_t)(vend - start));
        }
    }
    if (b.oom || !b.data) {
        outbox__buf_free(&b);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    }
    *conninfo = b.data;
    return OUTBOX_OK;
}

static void forget_connection_state(pg_store *st)
{
    st->in_txn = 0;
    st->prepared = 0;
    st->schema_ok = 0;
    st->listening = 0;
    st->sleep_held = 0;
    st->member_id = 0;
    if (st->held) memset(st->held, 0, MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
}

static int register_member(pg_store *st, outbox_error *err);
static int check_schema(pg_store *st, outbox_error *err);

/* Server notices and warnings on the store's connections go to the log
 * (one line each, never raw to stderr as libpq's default does): WARNING at
 * warn level, NOTICE and INFO at info, the rest at debug. */
static void notice_receiver(void *arg, const PGresult *res)
{
    const pg_store *st = arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char text[600];
    int level = OUTBOX_LOG_DEBUG;

    if (!severity) severity = "NOTICE";
    if (strcmp(severity, "WARNING") == 0) level = OUTBOX_LOG_WARN;
    else if (strcmp(severity, "NOTICE") == 0 || strcmp(severity, "INFO") == 0)
        level = OUTBOX_LOG_INFO;
    if (!outbox__log_enabled(level)) return;
    outbox__log(level, COMPONENT, "%s: server %s: %s", st->shown, severity,
                pq_error_text(NULL, res, text, sizeof text));
}


/* Makes sure st->conn is up: connects (or reconnects after a loss, logging
 * it) and sets up the session (LISTEN, lock keys, relay membership). */
static int need_conn(pg_store *st, outbox_error *err)
{
    const char *params[1];
    PGresult *res;
    char msg[300], sql[200];
    int code;

    if (st->conn && PQstatus(st->conn) == CONNECTION_OK) return OUTBOX_OK;
    if (st->conn) {
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "connection to %s lost (%s); reconnecting; an unrecorded batch will be "
                    "published again",
                    st->shown, pq_message(PQerrorMessage(st->conn), msg, sizeof msg));
        PQfinish(st->conn);
        st->conn = NULL;
        forget_connection_state(st);
    }
    st->conn = PQconnectdb(st->conninfo);
    if (!st->conn)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting to PostgreSQL");
    if (PQstatus(st->conn) != CONNECTION_OK) {
        code = outbox__error(err, OUTBOX_EIO, "cannot connect to PostgreSQL at %s: %s",
                             st->shown,
                             pq_message(PQerrorMessage(st->conn), msg, sizeof msg));
        PQfinish(st->conn);
        st->conn = NULL;
        return code;
    }
    forget_connection_state(st);
    PQsetNoticeReceiver(st->conn, notice_receiver, st);
    code = quote_schema(st->conn, st->schema, st->qschema, sizeof st->qschema, err);
    if (code != OUTBOX_OK) goto fail;
    params[0] = st->schema;
    res = PQexecParams(st->conn,
                       "SELECT hashtext('outbox.partition:' || $1) & 2147483647,"
                       " hashtext('outbox.relay:' || $1) & 2147483647,"
                       " hashtext('outbox.sleep:' || $1)",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "setting up the store connection", err);
        PQclear(res);
        goto fail;
    }
    st->part_key = (int32_t)parse_i64(PQgetvalue(res, 0, 0));
    st->member_key = (int32_t)parse_i64(PQgetvalue(res, 0, 1));
    st->sleep_key = (int32_t)parse_i64(PQgetvalue(res, 0, 2));
    PQclear(res);
    snprintf(sql, sizeof sql, "LISTEN %s", st->qschema);
    code = exec_sql(st->conn, sql, "listening for enqueue notifications", err);
    if (code != OUTBOX_OK) goto fail;
    st->listening = 1;
    if (st->had_conn) outbox__log(OUTBOX_LOG_INFO, COMPONENT, "reconnected to %s", st->shown);
    st->had_conn = 1;
    if (st->owner[0]) {
        code = check_schema(st, err);
        if (code == OUTBOX_OK) code = register_member(st, err);
        if (code != OUTBOX_OK) goto fail;
    }
    return OUTBOX_OK;

fail:
    PQfinish(st->conn);
    st->conn = NULL;
    forget_connection_state(st);
    return code;
}

static void pg_close(void *state)
{
    pg_store *st = state;
    if (!st) return;
    if (st->conn) PQfinish(st->conn);
    free(st->conninfo);
    free(st->held);
    free(st->wait_xacts);
    outbox__buf_free(&st->sql);
    outbox__buf_free(&st->a1);
    outbox__buf_free(&st->a2);
    outbox__buf_free(&st->a3);
    free(st);
}

/* postgres://... or postgresql://... (libpq URI) or postgres:KEYWORDS. */
static int pg_open(void **state, const char *url, outbox_error *err)
{
    pg_store *st = NULL;
    const char *rest;
    int code;

    *state = NULL;
    st = calloc(1, sizeof *st);
    if (!st) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    outbox__buf_init(&st->sql);
    outbox__buf_init(&st->a1);
    outbox__buf_init(&st->a2);
    outbox__buf_init(&st->a3);
    snprintf(st->schema, sizeof st->schema, "%s", DEFAULT_SCHEMA);
    st->held = calloc(MAX_PARTITIONS, 1);
    if (!st->held) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
        goto fail;
    }

    if (strncasecmp(url, "postgresql:", 11) == 0) rest = url + 11;
    else if (strncasecmp(url, "postgres:", 9) == 0) rest = url + 9;
    else {
        code = outbox__error(err, OUTBOX_EBADURL, "store URL is not a postgres:// URL");
        goto fail;
    }
    if (strncmp(rest, "//", 2) == 0) {
        outbox__url_redact(url, st->shown, sizeof st->shown);
        code = split_uri(st, url, &st->conninfo, err);
    } else {
        char masked[400];
        redact_keywords(rest, masked, sizeof masked);
        snprintf(st->shown, sizeof st->shown, "postgres:%s", masked);
        code = split_keywords(st, rest, &st->conninfo, err);
    }
    if (code != OUTBOX_OK) goto fail;
    if (!valid_schema(st->schema)) {
        code = schema_error(st->schema, err);
        goto fail;
    }
    {
        /* Let libpq check the syntax now: a bad URL is a start-up error. */
        char *msg = NULL;
        PQconninfoOption *opts = PQconninfoParse(st->conninfo, &msg);
        if (!opts) {
            char buf[300];
            code = outbox__error(err, OUTBOX_EBADURL, "store URL '%s' is not valid for libpq: %s",
                                 st->shown, pq_message(msg, buf, sizeof buf));
            PQfreemem(msg);
            goto fail;
        }
        PQconninfoFree(opts);
    }
    code = need_conn(st, err);
    if (code != OUTBOX_OK) goto fail;
    *state = st;
    return OUTBOX_OK;

fail:
    pg_close(st);
    return code;
}

static int pg_init(void *state, int *from_version, int *to_version, outbox_error *err)
{
    pg_store *st = state;
    int code = need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    rollback(st->conn);
    st->in_txn = 0;
    code = migrate(st->conn, st->schema, st->url_partitions, from_version, to_version, err);
    st->partitions = 0;
    st->schema_ok = 0;
    return code;
}

/* Reads the schema version and partition count: OUTBOX_OK when the schema
 * is this build's version; ENOSCHEMA (missing or older: run init),
 * ESCHEMANEWER, or ESTORE for a meta row that is not a version. */
static int check_schema(pg_store *st, outbox_error *err)
{
    char bad[64];
    int version = 0, parts = 0, code;
    code = need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    code = read_meta(st->conn, st->qschema, &version, &parts, bad, sizeof bad, err);
    if (code != OUTBOX_OK) return code;
    if (version < 0)
        return outbox__error(err, OUTBOX_ESTORE,
                             "the outbox schema %s at %s has schema_version '%s' in its meta "
                             "table, not a version number: run `outbox init --store %s` to see "
                             "how to repair it",
                             st->schema, st->shown, bad, st->shown);
    if (version == 0)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "no outbox schema %s at %s: run `outbox init --store %s`",
                             st->schema, st->shown, st->shown);
    if (version > SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ESCHEMANEWER,
                             "the outbox schema %s at %s is version %d, newer than this build's "
                             "%d (liboutbox %s): upgrade outbox",
                             st->schema, st->shown, version, SCHEMA_VERSION, outbox_version());
    if (version < SCHEMA_VERSION)
        return outbox__error(err, OUTBOX_ENOSCHEMA,
                             "the outbox schema %s at %s is version %d, older than %d: run "
                             "`outbox init --store %s` to upgrade it",
                             st->schema, st->shown, version, SCHEMA_VERSION, st->shown);
    if (parts < 1 || parts > MAX_PARTITIONS) parts = DEFAULT_PARTITIONS;
    st->partitions = parts;
    st->schema_ok = 1;
    return OUTBOX_OK;
}

/* need_conn, and the schema version checked once per connection: every
 * driver function that touches the tables starts here. */
static int need_schema(pg_store *st, outbox_error *err)
{
    int code = need_conn(st, err);
    if (code != OUTBOX_OK || st->schema_ok) return code;
    return check_schema(st, err);
}

static int pg_check_schema(void *state, outbox_error *err)
{
    return check_schema(state, err);
}

static int pg_enqueue(void *state, const outbox_msg *msg, outbox_error *err)
{
    pg_store *st = state;
    int code;

    if (!msg) return outbox__error(err, OUTBOX_EINVAL, "enqueue: msg is NULL");
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    rollback(st->conn);
    st->in_txn = 0;
    code = exec_sql(st->conn, "BEGIN", "starting the enqueue transaction", err);
    if (code != OUTBOX_OK) return code;
    code = outbox_enqueue_pg_schema(st->conn, st->schema, msg, err);
    if (code != OUTBOX_OK) goto fail;
    code = exec_sql(st->conn, "COMMIT", "committing the enqueue", err);
    if (code != OUTBOX_OK) goto fail;
    return OUTBOX_OK;

fail:
    rollback(st->conn);
    return code;
}

/* ------------------------------------------------------------------------
 * Relays and partitions
 * ---------------------------------------------------------------------- */

/* Deletes the rows of relays whose session ended (killed, crashed, lost):
 * a relay holds its membership lock, keyed by its row id, for as long as
 * its session lives, and takes it in the transaction that inserts the row,
 * so a row without the lock is of a relay that is gone.  Also ends the
 * wake-up requests of dead relays, so that enqueuers stop notifying. */
static int delete_dead_relays(pg_store *st, outbox_error *err)
{
    char sql[768];
    snprintf(sql, sizeof sql,
             "DELETE FROM %s.relays r WHERE NOT EXISTS"
             " (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
             " AND l.objsubid = 2 AND l.classid = %ld::oid"
             " AND l.objid = (r.id & 2147483647)::oid"
             " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
             st->qschema, (long)st->member_key);
    return exec_sql(st->conn, sql, "deleting the rows of stopped relays", err);
}

/* Writes st->waiting into this relay's row.  Asynchronous commit: a flag
 * lost in a crash costs nothing (the session, and with it the relay's
 * membership, is gone too).  In the same round trip, waiting takes the
 * shared "asleep" advisory lock and awake releases it (see "Wake-up"
 * above).  The lock is taken after the flag is written; the relay claims
 * once more after idle(1) either way.  If the lock is held exclusively
 * (an enqueuer's probe at that instant) it is tried again a few times;
 * without it the relay waits on its flag and the fallback poll. */
static int set_waiting(pg_store *st, outbox_error *err)
{
    char sql[640], lock[96];
    PGresult *res;
    ExecStatusType status;
    int attempt, code = OUTBOX_OK;

    lock[0] = '\0';
    if (st->waiting && !st->sleep_held)
        snprintf(lock, sizeof lock, "; SELECT pg_try_advisory_lock_shared((%ld)::integer, 0)",
                 (long)st->sleep_key);
    else if (!st->waiting && st->sleep_held)
        snprintf(lock, sizeof lock, "; SELECT pg_advisory_unlock_shared((%ld)::integer, 0)",
                 (long)st->sleep_key);
    snprintf(sql, sizeof sql,
             "BEGIN; SET LOCAL synchronous_commit TO off;"
             " UPDATE %s.relays SET waiting = %s WHERE id = %lld AND waiting <> %s; COMMIT%s",
             st->qschema, st->waiting ? "true" : "false", (long long)st->member_id,
             st->waiting ? "true" : "false", lock);
    res = PQexec(st->conn, sql);
    status = PQresultStatus(res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res,
                       st->waiting ? "setting the relay's waiting flag"
                                   : "clearing the relay's waiting flag",
                       err);
        PQclear(res);
        rollback(st->conn);
        return code;
    }
    if (lock[0])
        st->sleep_held = st->waiting && status == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
                         PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    for (attempt = 0; st->waiting && !st->sleep_held && attempt < 3; attempt++) {
        snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock_shared((%ld)::integer, 0)",
                 (long)st->sleep_key);
        res = PQexec(st->conn, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = pq_fail(st->conn, res, "taking the relay's asleep lock", err);
            PQclear(res);
            return code;
        }
        st->sleep_held = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
    }
    if (st->waiting && !st->sleep_held)
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                    "relay %s: the asleep lock is held exclusively by another session; "
                    "waiting on the flag and the fallback poll",
                    st->owner);
    return OUTBOX_OK;
}

/* Releases the "asleep" lock after a notification woke the relay: the
 * enqueuer that sent it cleared the flags it could lock, and the relay
 * takes the lock again with its next idle(1).  Only outside a
 * transaction; a failure leaves it for idle(0) or the next wake-up. */
static void release_sleep_lock(pg_store *st)
{
    char sql[96];
    PGresult *res;

    if (!st->sleep_held || !st->conn || PQtransactionStatus(st->conn) != PQTRANS_IDLE) return;
    snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock_shared((%ld)::integer, 0)", (long)st->sleep_key);
    res = PQexec(st->conn, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK) st->sleep_held = 0;
    else
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: releasing the asleep lock failed",
                    st->owner);
    PQclear(res);
}

/* This process's identity in relays: the host name, "unknown" when none. */
static void host_name(char *out, size_t len)
{
    if (gethostname(out, len) != 0) snprintf(out, len, "unknown");
    out[len - 1] = '\0';
}

/* Inserts this relay's row (its identity: name, host, pid, start time, and
 * the note it last set) and takes its membership lock (session level) in
 * the same transaction, so that no other relay ever sees the row without
 * the lock; then deletes the rows of relays that are gone. */
static int register_member(pg_store *st, outbox_error *err)
{
    char host[256], pid[32], sql[512];
    const char *params[4];
    PGresult *res;
    int code;

    host_name(host, sizeof host);
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    params[0] = st->owner;
    params[1] = host;
    params[2] = pid;
    params[3] = st->note[0] ? st->note : NULL;
    code = exec_sql(st->conn, "BEGIN", "registering the relay", err);
    if (code != OUTBOX_OK) return code;
    snprintf(sql, sizeof sql,
             "INSERT INTO %s.relays (name, host, pid, backend_pid, note) VALUES ($1, $2,"
             " $3::integer, pg_backend_pid(), $4) RETURNING id",
             st->qschema);
    res = PQexecParams(st->conn, sql, 4, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "registering the relay", err);
        PQclear(res);
        rollback(st->conn);
        return code;
    }
    st->member_id = parse_i64(PQgetvalue(res, 0, 0));
    PQclear(res);
    snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(%ld, %ld); COMMIT", (long)st->member_key,
             (long)(st->member_id & 0x7fffffff));
    code = exec_sql(st->conn, sql, "taking the relay membership lock", err);
    if (code != OUTBOX_OK) {
        rollback(st->conn);
        st->member_id = 0;
        return code;
    }
    code = delete_dead_relays(st, err);
    if (code != OUTBOX_OK) return code;
    /* Only now (the membership lock held, so the row counts as live): a
     * relay that reconnected while it waited waits on. */
    if (st->waiting) {
        code = set_waiting(st, err);
        if (code != OUTBOX_OK) return code;
    }
    st->note_dirty = 0;
    st->next_rebalance_us = 0;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "relay %s registered on %s (schema %s) as %s@%s:%s, relays.id %lld", st->owner,
                st->shown, st->schema, st->owner, host, pid, (long long)st->member_id);
    return OUTBOX_OK;
}

/* Records this relay's heartbeat, and its note when lease_note changed it
 * during a claim transaction.  No transaction may be open. */
static int write_heartbeat(pg_store *st, outbox_error *err)
{
    const char *params[1];
    PGresult *res;
    int code = OUTBOX_OK;

    params[0] = st->note[0] ? st->note : NULL;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql, "UPDATE %s.relays SET heartbeat_at = now()%s WHERE id = %lld",
                       st->qschema, st->note_dirty ? ", note = $1" : "",
                       (long long)st->member_id);
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    res = PQexecParams(st->conn, st->sql.data, st->note_dirty ? 1 : 0, NULL, params, NULL, NULL,
                       0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = pq_fail(st->conn, res, "recording the relay heartbeat", err);
    else
        st->note_dirty = 0;
    PQclear(res);
    return code;
}

/* Takes this relay's share of the partitions (all free ones when greedy)
 * and releases what it holds beyond it.  Called with no transaction open. */
static int rebalance(pg_store *st, int greedy, outbox_error *err)
{
    char sql[512];
    PGresult *res;
    unsigned char *taken = NULL;
    int live, share, i, start, code = OUTBOX_OK;
    int before = st->held_count;

    if (st->partitions < 1) {
        code = check_schema(st, err);
        if (code != OUTBOX_OK) return code;
    }
    taken = calloc(MAX_PARTITIONS, 1);
    if (!taken) return outbox__error(err, OUTBOX_ENOMEM, "out of memory rebalancing");
    snprintf(sql, sizeof sql,
             "SELECT classid::bigint, objid::bigint, pid = pg_backend_pid() FROM pg_locks"
             " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
             " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
             " AND classid IN (%ld::oid, %ld::oid)",
             (long)st->member_key, (long)st->part_key);
    res = PQexec(st->conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "reading the partition leases", err);
        PQclear(res);
        goto out;
    }
    live = 0;
    for (i = 0; i < PQntuples(res); i++) {
        int64_t cls = parse_i64(PQgetvalue(res, i, 0));
        int64_t obj = parse_i64(PQgetvalue(res, i, 1));
        if (cls == st->member_key) live++;
        else if (obj >= 0 && obj < st->partitions && PQgetvalue(res, i, 2)[0] != 't')
            taken[obj] = 1;
    }
    PQclear(res);
    if (live < 1) live = 1;
    if (live < st->live_seen) {
        code = delete_dead_relays(st, err);
        if (code != OUTBOX_OK) goto out;
    }
    st->live_seen = live;
    share = greedy ? st->partitions : (st->partitions + live - 1) / live;

    /* Release the extras (highest first). */
    for (i = st->partitions - 1; i >= 0 && st->held_count > share; i--) {
        if (!st->held[i]) continue;
        snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock(%ld, %d)", (long)st->part_key, i);
        code = exec_sql(st->conn, sql, "releasing a partition", err);
        if (code != OUTBOX_OK) goto out;
        st->held[i] = 0;
        st->held_count--;
    }
    /* Take free ones, starting at a place that depends on the relay so
     * that relays starting together do not all race for partition 0. */
    start = (int)((uint64_t)st->member_id * 7919u % (uint64_t)st->partitions);
    for (i = 0; i < st->partitions && st->held_count < share; i++) {
        int p = (start + i) % st->partitions;
        if (st->held[p] || taken[p]) continue;
        snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%ld, %d)", (long)st->part_key, p);
        res = PQexec(st->conn, sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = pq_fail(st->conn, res, "taking a partition", err);
            PQclear(res);
            goto out;
        }
        if (PQgetvalue(res, 0, 0)[0] == 't') {
            st->held[p] = 1;
            st->held_count++;
        }
        PQclear(res);
    }
    code = write_heartbeat(st, err);
    if (code != OUTBOX_OK) goto out;
    if (st->held_count != before)
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "relay %s holds %d of %d partitions (%d live relays)", st->owner,
                    st->held_count, st->partitions, live);
out:
    free(taken);
    return code;
}

static int maybe_rebalance(pg_store *st, int force, outbox_error *err)
{
    int64_t now = outbox__monotonic_us();
    int code;
    if (!st->owner[0]) return OUTBOX_OK;
    if (!force && now < st->next_rebalance_us) return OUTBOX_OK;
    code = rebalance(st, 0, err);
    if (code == OUTBOX_OK) {
        int64_t step = st->ttl_ms > 0 && st->ttl_ms / 3 < REBALANCE_MS ? st->ttl_ms / 3
                                                                        : REBALANCE_MS;
        st->next_rebalance_us = now + step * 1000;
    }
    return code;
}

/* A --once relay drains everything it can: it takes every free partition,
 * and partitions still locked (by a live relay, or by the session of one
 * that just died and that PostgreSQL has not closed yet) are waited for, once,
 * up to the lease TTL.  What a live relay keeps is left to it, with a
 * warning, rather than letting --once exit 0 with part of the outbox unread. */
static int take_all_for_once(pg_store *st, outbox_error *err)
{
    int64_t deadline;
    int code;
    if (st->held_count == st->partitions) return OUTBOX_OK;
    code = rebalance(st, 1, err);
    if (code != OUTBOX_OK || st->held_count == st->partitions || st->once_waited) return code;
    st->once_waited = 1;
    deadline = outbox__monotonic_us() + (st->ttl_ms > 0 ? st->ttl_ms : 10000) * 1000;
    while (st->held_count < st->partitions && outbox__monotonic_us() < deadline) {
        outbox__sleep_us(50000);
        code = rebalance(st, 1, err);
        if (code != OUTBOX_OK) return code;
    }
    if (st->held_count < st->partitions)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "relay %s: %d of %d partitions are held by other live relays; their "
                    "messages are left to them",
                    st->owner, st->partitions - st->held_count, st->partitions);
    return OUTBOX_OK;
}

/* Ends an open claim transaction (the relay dropped its batch). */
static void end_claim(pg_store *st)
{
    if (st->in_txn) {
        rollback(st->conn);
        st->in_txn = 0;
    }
}

static int pg_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    pg_store *st = state;
    int code;
    if (!owner || !*owner) return outbox__error(err, OUTBOX_EINVAL, "lease owner name is empty");
    snprintf(st->owner, sizeof st->owner, "%s", owner);
    st->ttl_ms = ttl_ms;
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    if (st->member_id == 0) {
        code = register_member(st, err);
        if (code != OUTBOX_OK) return code;
    }
    return maybe_rebalance(st, 1, err);
}

static int pg_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    pg_store *st = state;
    int code;
    (void)owner;
    st->ttl_ms = ttl_ms;
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    return maybe_rebalance(st, 1, err);
}

static int pg_lease_release(void *state, const char *owner, outbox_error *err)
{
    pg_store *st = state;
    char sql[256];
    int code;
    (void)owner;
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) {
        st->owner[0] = '\0';
        return OUTBOX_OK; /* a lost session holds nothing */
    }
    end_claim(st);
    code = exec_sql(st->conn, "SELECT pg_advisory_unlock_all()", "releasing the partitions", err);
    if (code == OUTBOX_OK) st->sleep_held = 0;
    if (code == OUTBOX_OK && st->member_id) {
        snprintf(sql, sizeof sql, "DELETE FROM %s.relays WHERE id = %lld", st->qschema,
                 (long long)st->member_id);
        code = exec_sql(st->conn, sql, "unregistering the relay", err);
    }
    /* The session stays (prepared statements, LISTEN); the leases go. */
    st->member_id = 0;
    memset(st->held, 0, MAX_PARTITIONS);
    st->held_count = 0;
    st->next_rebalance_us = 0;
    st->owner[0] = '\0';
    return code;
}

/* ------------------------------------------------------------------------
 * Claim and complete
 * ---------------------------------------------------------------------- */

/* Timestamps as unix microseconds, total: no stored value can make a
 * statement that serves every row fail ('infinity' and years past 294276
 * do not fit a bigint).  US_OR_NULL gives NULL outside the years 1970 to
 * 9999 (what a message may hold: the claim quarantines such a row); US
 * clamps into them (for showing and counting). */
#define IN_YEARS(col)                                                                              \
    "(" col " >= '1970-01-01 00:00:00+00' AND " col " < '10000-01-01 00:00:00+00')"
#define US_OR_NULL(col)                                                                            \
    "CASE WHEN " IN_YEARS(col) " THEN (extract(epoch FROM " col ") * 1000000)::bigint END"
#define US(col)                                                                                    \
    "(extract(epoch FROM least(greatest(" col ", '1970-01-01 00:00:00+00'::timestamptz),"         \
    " '9999-12-31 23:59:59.999999+00'::timestamptz)) * 1000000)::bigint"

/* The claim's columns and its due, partition, floor and ordering
 * conditions, shared by the claim and the pipelined claim ($5, $6: the
 * floor's requeue epoch and the floor, see "Claim floor"). */
#define CLAIM_SELECT_WHERE                                                                         \
    "SELECT seq, id, " US_OR_NULL("occurred_at") ", type, aggregate_type, aggregate_id,"           \
    " payload::text, headers::text, attempts,"                                                     \
    " CASE WHEN NOT " IN_YEARS("occurred_at") " THEN occurred_at::text END"                        \
    " FROM {s}.outbox o"                                                                           \
    " WHERE o.status = 'pending' AND o.partition = ANY($1::smallint[])"                            \
    " AND o.seq >= CASE WHEN (SELECT value FROM {s}.meta WHERE key = 'requeue_epoch') ="           \
    " $5::text THEN $6::bigint ELSE 0 END"                                                         \
    " AND (o.attempts = 0 OR o.available_at <= 'epoch'::timestamptz + $2::bigint * interval"      \
    " '1 microsecond')"
#define CLAIM_NOT_BLOCKED                                                                          \
    " AND NOT EXISTS (SELECT 1 FROM {s}.outbox p"                                                  \
    "  WHERE left(p.aggregate_id, 256) = left(o.aggregate_id, 256)"                                \
    "  AND p.aggregate_id = o.aggregate_id AND p.seq < o.seq"                                      \
    "  AND (p.status = 'failed' OR p.attempts > 0)"                                                \
    "  AND ((p.status = 'pending' AND p.available_at > 'epoch'::timestamptz + $2::bigint *"        \
    " interval '1 microsecond') OR (p.status = 'failed' AND $3::boolean)))"

static const char claim_tmpl[] =
    CLAIM_SELECT_WHERE CLAIM_NOT_BLOCKED " ORDER BY o.seq LIMIT $4 FOR UPDATE OF o SKIP LOCKED";

/* Pipelined claim: the same selection as a plain read, without the seqs in
 * flight ($7, between $8 and $9).  Rows in that range are looked up in the
 * array, which PostgreSQL scans linearly, unless $10 says the seqs in
 * flight are consecutive: then every row in the range is in flight and the
 * range check alone excludes them.  No row locks: the relay's partition
 * advisory locks keep the rows its own, and it keeps them while a batch is
 * out (no rebalancing). */
static const char claim_pipelined_tmpl[] =
    CLAIM_SELECT_WHERE
    " AND (o.seq < $8::bigint OR o.seq > $9::bigint"
    " OR (NOT $10::boolean AND NOT (o.seq = ANY($7::bigint[]))))" CLAIM_NOT_BLOCKED
    " ORDER BY o.seq LIMIT $4";

enum { P_CLAIM, P_DELETE, P_MARK, P_RETRY, P_FAIL, P_CLAIM_PIPELINED, P_COUNT };

static const char *const hot_tmpl[P_COUNT] = {
    [P_CLAIM] = claim_tmpl,
    [P_DELETE] = "DELETE FROM {s}.outbox WHERE seq = ANY($1::bigint[])",
    [P_MARK] = "UPDATE {s}.outbox SET status = 'sent', sent_at = 'epoch'::timestamptz +"
               " $2::bigint * interval '1 microsecond' WHERE seq = ANY($1::bigint[])",
    [P_RETRY] = "UPDATE {s}.outbox o SET attempts = o.attempts + 1, available_at ="
                " 'epoch'::timestamptz + u.at * interval '1 microsecond', last_error = u.err"
                " FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(seq, at, err)"
                " WHERE o.seq = u.seq",
    [P_FAIL] = "UPDATE {s}.outbox o SET attempts = o.attempts + 1, status = 'failed',"
               " last_error = u.err FROM unnest($1::bigint[], $2::text[]) AS u(seq, err)"
               " WHERE o.seq = u.seq",
    [P_CLAIM_PIPELINED] = claim_pipelined_tmpl,
};

static const char *const hot_name[P_COUNT] = {"outbox_claim", "outbox_delete", "outbox_mark",
                                              "outbox_retry", "outbox_fail",
                                              "outbox_claim_pipelined"};

/* Prepares the relay's statements on this connection, and pins the
 * claim's plan: the walk of outbox_pending in seq order that stops at the
 * batch size, with one outbox_blocking probe per row it returns.  Without
 * table statistics (a new table, a bulk load, before autovacuum's first
 * ANALYZE) PostgreSQL estimates a handful of pending rows and prefers a
 * bitmap scan of all of them, a probe per row and a sort: 30,000 pending
 * took 108 ms per claim of 100 instead of about 1 ms.  With statistics and
 * a few hundred failed rows it compared every row it read with all of them
 * (a materialized inner side), 3 ms instead of 0.4.  None of the
 * statements a relay's connection runs needs a sort, a bitmap scan or a
 * materialized inner side to be fast, so the session does without them
 * (the planner still sorts where nothing else can give the order). */
static int prepare_hot(pg_store *st, outbox_error *err)
{
    int i, code;
    if (st->prepared) return OUTBOX_OK;
    code = exec_sql(st->conn,
                    "SET enable_sort = off; SET enable_bitmapscan = off;"
                    " SET enable_material = off",
                    "configuring the relay's session", err);
    if (code != OUTBOX_OK) return code;
    for (i = 0; i < P_COUNT; i++) {
        PGresult *res;
        expand(&st->sql, hot_tmpl[i], st->qschema, st->schema, 0);
        if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory preparing");
        res = PQprepare(st->conn, hot_name[i], st->sql.data, 0, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            code = pq_fail(st->conn, res, "preparing the relay's statements", err);
            PQclear(res);
            return code;
        }
        PQclear(res);
    }
    st->prepared = 1;
    return OUTBOX_OK;
}

/* Opens the relay's transaction for a claim or its outcomes; it does not
 * wait for its WAL flush at commit (see claim).  Rolls back on failure. */
static int begin_async(pg_store *st, const char *what, outbox_error *err)
{
    int code = exec_sql(st->conn, "BEGIN; SET LOCAL synchronous_commit = off", what, err);
    if (code != OUTBOX_OK) {
        rollback(st->conn);
        return code;
    }
    st->in_txn = 1;
    return OUTBOX_OK;
}

/* A one-row query of the floor refresh; NULL after logging why the floor is
 * turned off for this session, or (connection lost) with err filled. */
static PGresult *floor_query(pg_store *st, const char *sql, const char *param, int *code,
                             outbox_error *err)
{
    const char *params[1] = {param};
    PGresult *res = PQexecParams(st->conn, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    char msg[300];

    *code = OUTBOX_OK;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) return res;
    if (PQstatus(st->conn) != CONNECTION_OK) {
        *code = pq_fail(st->conn, res, "refreshing the claim floor", err);
    } else {
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "%s: claims scan the pending index from its start (the claim floor needs "
                    "to read the outbox's seq sequence and pg_locks: %s)",
                    st->shown, pq_message(PQresultErrorMessage(res), msg, sizeof msg));
        st->floor_off = 1;
        st->floor = 0;
    }
    PQclear(res);
    return NULL;
}

/* Refreshes the claim floor when it is due (see "Claim floor" above); runs
 * between transactions.  Fails only when the connection is lost. */
static int floor_refresh(pg_store *st, outbox_error *err)
{
    char table[200];
    PGresult *res;
    int64_t now = outbox__monotonic_us(), settled = -1, last, lowest;
    int code;

    if (st->floor_off || now < st->floor_next_us) return OUTBOX_OK;
    st->floor_next_us = now + (int64_t)FLOOR_REFRESH_MS * 1000;
    snprintf(table, sizeof table, "%s.outbox", st->qschema);
    if (st->wait_xacts) {
        res = floor_query(st,
                          "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks"
                          " WHERE virtualtransaction = ANY($1::text[]))",
                          st->wait_xacts, &code, err);
        if (!res) return code;
        if (strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
            settled = st->wait_seq;
            free(st->wait_xacts);
            st->wait_xacts = NULL;
        }
        PQclear(res);
        if (settled < 0) return OUTBOX_OK; /* still running: next time */
    }
    /* L first, then the transactions that may still commit rows up to L. */
    res = floor_query(st,
                      "SELECT coalesce(pg_catalog.pg_sequence_last_value("
                      "pg_catalog.pg_get_serial_sequence($1, 'seq')::regclass), 0)",
                      table, &code, err);
    if (!res) return code;
    last = parse_i64(PQgetvalue(res, 0, 0));
    PQclear(res);
    res = floor_query(st,
                      "SELECT coalesce(pg_catalog.array_agg(virtualtransaction)::text, '')"
                      " FROM pg_catalog.pg_locks WHERE locktype = 'relation'"
                      " AND database = (SELECT oid FROM pg_catalog.pg_database"
                      "  WHERE datname = pg_catalog.current_database())"
                      " AND relation = $1::regclass"
                      /* readers, SELECT FOR UPDATE, (auto)vacuum and analyze:
                       * a writer holds RowExclusiveLock besides */
                      " AND mode NOT IN ('AccessShareLock', 'RowShareLock',"
                      " 'ShareUpdateExclusiveLock')"
                      " AND pid IS DISTINCT FROM pg_catalog.pg_backend_pid()",
                      table, &code, err);
    if (!res) return code;
    if (PQgetvalue(res, 0, 0)[0] == '\0') {
        settled = last;
    } else {
        st->wait_xacts = strdup(PQgetvalue(res, 0, 0)); /* none: try again next time */
        st->wait_seq = last;
    }
    PQclear(res);
    if (settled < 0) return OUTBOX_OK;
    /* M and the epoch, in a snapshot taken after the writers above ended. */
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT (SELECT min(seq) FROM %s.outbox WHERE status = 'pending'),"
                       " (SELECT value FROM %s.meta WHERE key = 'requeue_epoch')",
                       st->qschema, st->qschema);
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    res = floor_query(st, st->sql.data, NULL, &code, err);
    if (!res) return code;
    lowest = PQgetisnull(res, 0, 0) ? INT64_MAX : parse_i64(PQgetvalue(res, 0, 0));
    if (PQgetisnull(res, 0, 1) || PQgetlength(res, 0, 1) >= (int)sizeof st->floor_epoch) {
        st->floor = 0; /* no epoch to check against: no floor */
    } else {
        snprintf(st->floor_epoch, sizeof st->floor_epoch, "%s", PQgetvalue(res, 0, 1));
        st->floor = lowest < settled + 1 ? lowest : settled + 1;
    }
    PQclear(res);
    return OUTBOX_OK;
}

/* A claimed row the relay cannot publish (see quarantine). */
typedef struct bad_row {
    int64_t seq;
    char id[40];
    char error[512];
} bad_row;

/* Marks the rows in bad Failed (attempts + 1, last_error = why) in a
 * statement of its own, outside any claim transaction, and logs each at
 * error level.  If the statement fails, each row is tried alone; a row that
 * still cannot be marked is the claim's error. */
static int quarantine(pg_store *st, const bad_row *bad, size_t n, outbox_error *err)
{
    outbox_buf seqs, errors;
    const char *params[2];
    PGresult *res;
    size_t i, from, to;
    int code = OUTBOX_OK, one_by_one = 0;

    outbox__buf_init(&seqs);
    outbox__buf_init(&errors);
    for (from = 0; from < n; from = to) {
        to = one_by_one ? from + 1 : n;
        outbox__buf_reset(&seqs);
        outbox__buf_reset(&errors);
        outbox__buf_puts(&seqs, "{");
        outbox__buf_puts(&errors, "{");
        for (i = from; i < to; i++) {
            outbox__buf_printf(&seqs, "%s%lld", i > from ? "," : "", (long long)bad[i].seq);
            if (i > from) outbox__buf_puts(&errors, ",");
            array_text(&errors, bad[i].error);
        }
        outbox__buf_puts(&seqs, "}");
        outbox__buf_puts(&errors, "}");
        if (seqs.oom || errors.oom) {
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory quarantining messages");
            break;
        }
        params[0] = seqs.data;
        params[1] = errors.data;
        outbox__buf_reset(&st->sql);
        outbox__buf_printf(&st->sql,
                           "UPDATE %s.outbox o SET status = 'failed', attempts = o.attempts + 1,"
                           " last_error = u.err FROM unnest($1::bigint[], $2::text[]) AS u(seq,"
                           " err) WHERE o.seq = u.seq AND o.status = 'pending'",
                           st->qschema);
        res = PQexecParams(st->conn, st->sql.data, 2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            for (i = from; i < to; i++)
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                            "quarantined stored message seq %lld (id %s), which cannot be "
                            "published: %s; it is Failed now, and the later messages of its "
                            "aggregate wait behind it until it is retried or dropped",
                            (long long)bad[i].seq, bad[i].id, bad[i].error);
            PQclear(res);
            continue;
        }
        if (PQstatus(st->conn) != CONNECTION_OK || one_by_one) {
            char what[200];
            snprintf(what, sizeof what,
                     "marking stored message seq %lld (id %s) Failed, which cannot be "
                     "published (%.80s)",
                     (long long)bad[from].seq, bad[from].id, bad[from].error);
            code = pq_fail(st->conn, res, what, err);
            PQclear(res);
            if (one_by_one)
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                            "%s; delete or repair that row by hand: it holds up the claim",
                            err ? err->message : what);
            break;
        }
        PQclear(res);
        one_by_one = 1;
        to = from; /* again, row by row */
    }
    outbox__buf_free(&seqs);
    outbox__buf_free(&errors);
    return code;
}

/* Rounds of quarantine one claim goes through before it returns (empty):
 * each round marks at least one row, and the next claim goes on. */
#define QUARANTINE_ROUNDS 8

/* The plain claim (a transaction left open until complete), or the
 * pipelined one (a plain read without the seqs in exclude).  Rows that
 * cannot be decoded are quarantined (see quarantine) and the claim reads
 * again, so that the rest of their aggregates is held back as behind any
 * Failed message while every other aggregate flows. */
static int claim(pg_store *st, const outbox_claim_params *p, int pipelined,
                 const int64_t *exclude, size_t exclude_count, outbox_msg ***msgs, size_t *n,
                 outbox_error *err)
{
    const char *params[10];
    char now[32], limit[32], floor[32], lo[32], hi[32];
    outbox_msg **arr = NULL;
    bad_row *bad = NULL;
    PGresult *res = NULL;
    size_t count = 0, nbad = 0;
    int i, rows, code, any = 0, round;
    /* A pipelined batch is still out: keep every partition held. */
    int keep = pipelined && exclude_count > 0;

    *msgs = NULL;
    *n = 0;
    if (!p || p->batch_size == 0) return outbox__error(err, OUTBOX_EINVAL, "claim: batch_size is 0");
    if (keep && (!st->conn || PQstatus(st->conn) != CONNECTION_OK))
        /* A new session would not hold the partitions the batch in flight
         * came from: the relay finishes that batch first. */
        return outbox__error(err, OUTBOX_EIO,
                             "claiming messages: the PostgreSQL connection was lost while a "
                             "batch was in flight; reconnecting once it is finished");
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    if (keep) {
        /* no rebalancing while a batch is in flight */
    } else if (st->owner[0] && p->once) {
        code = take_all_for_once(st, err);
        if (code != OUTBOX_OK) return code;
    } else if (st->owner[0]) {
        code = maybe_rebalance(st, 0, err);
        if (code != OUTBOX_OK) return code;
    }
    code = prepare_hot(st, err);
    if (code != OUTBOX_OK) return code;
    code = floor_refresh(st, err);
    if (code != OUTBOX_OK) return code;

    /* Partitions to claim from: the held ones, or all for a store used
     * without a lease (the CLI's one-off commands, tests). */
    outbox__buf_reset(&st->a1);
    outbox__buf_puts(&st->a1, "{");
    for (i = 0; i < st->partitions; i++) {
        if (st->owner[0] && !st->held[i]) continue;
        outbox__buf_printf(&st->a1, "%s%d", any ? "," : "", i);
        any = 1;
    }
    outbox__buf_puts(&st->a1, "}");
    if (st->a1.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    if (!any) return OUTBOX_OK; /* holds no partition right now */
    snprintf(now, sizeof now, "%lld", (long long)p->now_us);
    snprintf(limit, sizeof limit, "%zu", p->batch_size);
    params[0] = st->a1.data;
    params[1] = now;
    params[2] = p->failed_blocks_aggregate ? "true" : "false";
    params[3] = limit;
    snprintf(floor, sizeof floor, "%lld", (long long)st->floor);
    params[4] = st->floor_epoch;
    params[5] = floor;

    if (pipelined) {
        /* Nothing in flight: lo > hi, no row is in the range. */
        int64_t min = INT64_MAX, max = INT64_MIN;
        int consecutive = exclude_count > 0;
        size_t k;
        outbox__buf_reset(&st->a2);
        outbox__buf_puts(&st->a2, "{");
        for (k = 0; k < exclude_count; k++) {
            outbox__buf_printf(&st->a2, "%s%lld", k ? "," : "", (long long)exclude[k]);
            if (exclude[k] < min) min = exclude[k];
            if (exclude[k] > max) max = exclude[k];
            if (k > 0 && exclude[k] != exclude[k - 1] + 1) consecutive = 0;
        }
        outbox__buf_puts(&st->a2, "}");
        if (st->a2.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
        params[6] = st->a2.data;
        snprintf(lo, sizeof lo, "%lld", (long long)min);
        snprintf(hi, sizeof hi, "%lld", (long long)max);
        params[7] = lo;
        params[8] = hi;
        params[9] = consecutive ? "true" : "false"; /* each one more than the one before */
    }

    for (round = 0;; round++) {
        if (pipelined) {
            res = PQexecPrepared(st->conn, hot_name[P_CLAIM_PIPELINED], 10, params, NULL, NULL,
                                 0);
        } else {
            /* Outcomes need not be durable: a completion lost in a database
             * crash only makes its messages be published again (at least
             * once), so the claim transaction does not wait for its WAL
             * flush. */
            code = begin_async(st, "starting the claim transaction", err);
            if (code != OUTBOX_OK) return code;
            res = PQexecPrepared(st->conn, hot_name[P_CLAIM], 6, params, NULL, NULL, 0);
        }
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = pq_fail(st->conn, res, "claiming messages", err);
            goto fail;
        }
        rows = PQntuples(res);
        if (rows == 0) {
            PQclear(res);
            end_claim(st); /* nothing locked: end the transaction now */
            return OUTBOX_OK;
        }
        arr = calloc((size_t)rows, sizeof *arr);
        if (!arr) {
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming %d messages", rows);
            goto fail;
        }
        for (i = 0; i < rows; i++) {
            outbox_error why;
            int64_t seq = parse_i64(PQgetvalue(res, i, 0));
            if (PQgetisnull(res, i, 2)) {
                code = outbox__error(&why, OUTBOX_EINVAL,
                                     "stored message seq %lld: occurred_at %.40s is outside the "
                                     "years 1970 to 9999",
                                     (long long)seq, PQgetvalue(res, i, 9));
            } else {
                code = outbox__msg_from_row(&arr[count], seq, PQgetvalue(res, i, 1),
                                            parse_i64(PQgetvalue(res, i, 2)),
                                            PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
                                            PQgetvalue(res, i, 5), PQgetvalue(res, i, 6),
                                            PQgetvalue(res, i, 7), &why);
                if (code == OUTBOX_ENOMEM) {
                    if (err) *err = why;
                    goto fail;
                }
            }
            if (code != OUTBOX_OK) {
                if (!bad) bad = calloc((size_t)rows, sizeof *bad);
                if (!bad) {
                    code = outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
                    goto fail;
                }
                bad[nbad].seq = seq;
                snprintf(bad[nbad].id, sizeof bad[nbad].id, "%.36s", PQgetvalue(res, i, 1));
                snprintf(bad[nbad].error, sizeof bad[nbad].error, "%s", why.message);
                nbad++;
                continue;
            }
            arr[count]->attempts = (int)parse_i64(PQgetvalue(res, i, 8));
            arr[count]->status = OUTBOX_STATUS_PENDING;
            count++;
        }
        PQclear(res);
        res = NULL;
        if (nbad == 0) {
            *msgs = arr;
            *n = count;
            return OUTBOX_OK; /* a plain claim's transaction stays open until complete */
        }
        /* Read again once they are Failed: later rows of their aggregates
         * may be in this batch. */
        for (i = 0; (size_t)i < count; i++) outbox_msg_free(arr[i]);
        free(arr);
        arr = NULL;
        count = 0;
        end_claim(st);
        code = quarantine(st, bad, nbad, err);
        if (code == OUTBOX_OK && p->quarantined) *p->quarantined += nbad;
        free(bad);
        bad = NULL;
        nbad = 0;
        if (code != OUTBOX_OK || round + 1 >= QUARANTINE_ROUNDS) return code;
    }

fail:
    PQclear(res);
    for (i = 0; (size_t)i < count; i++) outbox_msg_free(arr[i]);
    free(arr);
    free(bad);
    end_claim(st);
    return code;
}

static int pg_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                    outbox_error *err)
{
    return claim(state, p, 0, NULL, 0, msgs, n, err);
}

static int pg_claim_pipelined(void *state, const outbox_claim_params *p, const int64_t *exclude,
                              size_t exclude_count, outbox_msg ***msgs, size_t *n,
                              outbox_error *err)
{
    return claim(state, p, 1, exclude, exclude_count, msgs, n, err);
}

/* Runs a prepared hot statement with text parameters. */
static int run_hot(pg_store *st, int which, int nparams, const char *const *params,
                   const char *what, outbox_error *err)
{
    PGresult *res = PQexecPrepared(st->conn, hot_name[which], nparams, params, NULL, NULL, 0);
    int code = OUTBOX_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) code = pq_fail(st->conn, res, what, err);
    PQclear(res);
    return code;
}

/* complete()'s usual case, a batch sent whole whose seqs are consecutive,
 * in one round trip: its rows are exactly the seqs from the first to the
 * last (seqs are unique), deleted (or marked) by that range, one index
 * descent instead of one per seq, and the transaction (opened here when
 * pipelined) committed in the same query.  *taken = 0 when the batch is
 * not such a one: complete() records it statement by statement. */
static int complete_range(pg_store *st, const outbox_completion *c, size_t n,
                          const outbox_complete_params *p, int pipelined, int *taken,
                          outbox_error *err)
{
    int64_t lo, hi;
    size_t i;
    int code;

    *taken = 0;
    if (n == 0 || !st->conn || PQstatus(st->conn) != CONNECTION_OK) return OUTBOX_OK;
    if (!pipelined && (!st->in_txn || PQtransactionStatus(st->conn) != PQTRANS_INTRANS))
        return OUTBOX_OK; /* complete() says why */
    lo = c[0].msg->seq;
    for (i = 0; i < n; i++)
        if (c[i].outcome != OUTBOX_OUTCOME_SENT || c[i].msg->seq != lo + (int64_t)i)
            return OUTBOX_OK;
    hi = lo + (int64_t)n - 1;
    *taken = 1;
    if (pipelined) end_claim(st);
    if (OUTBOX_FAULT("during_mark_sent") != 0) {
        end_claim(st);
        return outbox__error(err, OUTBOX_EFAULT,
                             "injected fault during_mark_sent: outcomes not recorded");
    }
    outbox__buf_reset(&st->sql);
    if (pipelined) outbox__buf_puts(&st->sql, "BEGIN; SET LOCAL synchronous_commit = off; ");
    if (p && p->on_sent == OUTBOX_ON_SENT_MARK)
        outbox__buf_printf(&st->sql,
                           "UPDATE %s.outbox SET status = 'sent', sent_at = 'epoch'::timestamptz"
                           " + %lld * interval '1 microsecond'",
                           st->qschema, (long long)(p->now_us ? p->now_us : outbox__now_us()));
    else
        outbox__buf_printf(&st->sql, "DELETE FROM %s.outbox", st->qschema);
    outbox__buf_printf(&st->sql, " WHERE seq BETWEEN %lld AND %lld; COMMIT", (long long)lo,
                       (long long)hi);
    if (st->sql.oom) {
        end_claim(st);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
    }
    if (pipelined) st->in_txn = 1; /* a failure below rolls it back */
    code = exec_sql(st->conn, st->sql.data,
                    p && p->on_sent == OUTBOX_ON_SENT_MARK ? "marking messages sent"
                                                           : "deleting sent messages",
                    err);
    if (code != OUTBOX_OK) {
        end_claim(st);
        return code;
    }
    st->in_txn = 0;
    return OUTBOX_OK;
}

/* Records outcomes: in the claim's transaction, or (pipelined) in one of
 * its own; in_flight: a pipelined batch is still out (no rebalancing). */
static int complete(pg_store *st, const outbox_completion *c, size_t n,
                    const outbox_complete_params *p, int pipelined, int in_flight,
                    outbox_error *err)
{
    const char *params[3];
    char now[32];
    size_t i, sent = 0, retry = 0, failed = 0;
    int code, taken;

    code = complete_range(st, c, n, p, pipelined, &taken, err);
    if (taken) {
        if (code != OUTBOX_OK) return code;
        goto done;
    }
    if (pipelined) {
        /* A pipelined batch holds no transaction: open one for the outcomes
         * (on the session that holds the partitions; after a lost
         * connection nothing is recorded, as for a plain claim). */
        if (!st->conn || PQstatus(st->conn) != CONNECTION_OK)
            return outbox__error(err, OUTBOX_EIO,
                                 "recording outcomes: the PostgreSQL connection was lost; the "
                                 "batch was not recorded and will be published again");
        end_claim(st);
        code = begin_async(st, "starting the completion transaction", err);
        if (code != OUTBOX_OK) return code;
    }
    if (!st->in_txn || !st->conn || PQstatus(st->conn) != CONNECTION_OK ||
        PQtransactionStatus(st->conn) != PQTRANS_INTRANS) {
        st->in_txn = 0;
        if (st->conn && PQstatus(st->conn) == CONNECTION_BAD)
            return outbox__error(err, OUTBOX_EIO,
                                 "recording outcomes: the PostgreSQL connection was lost; the "
                                 "batch was not recorded and will be published again");
        return outbox__error(err, OUTBOX_ESTORE,
                             "recording outcomes: no claim transaction is open (the batch was "
                             "released); it will be claimed again");
    }
    /* Sent */
    outbox__buf_reset(&st->a1);
    outbox__buf_puts(&st->a1, "{");
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_SENT) continue;
        outbox__buf_printf(&st->a1, "%s%lld", sent ? "," : "", (long long)c[i].msg->seq);
        sent++;
    }
    outbox__buf_puts(&st->a1, "}");
    if (st->a1.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        goto fail;
    }
    if (sent > 0) {
        params[0] = st->a1.data;
        if (p && p->on_sent == OUTBOX_ON_SENT_MARK) {
            snprintf(now, sizeof now, "%lld", (long long)(p->now_us ? p->now_us : outbox__now_us()));
            params[1] = now;
            code = run_hot(st, P_MARK, 2, params, "marking messages sent", err);
        } else {
            code = run_hot(st, P_DELETE, 1, params, "deleting sent messages", err);
        }
        if (code != OUTBOX_OK) goto fail;
    }
    /* Retry */
    outbox__buf_reset(&st->a1);
    outbox__buf_reset(&st->a2);
    outbox__buf_reset(&st->a3);
    outbox__buf_puts(&st->a1, "{");
    outbox__buf_puts(&st->a2, "{");
    outbox__buf_puts(&st->a3, "{");
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_RETRY) continue;
        outbox__buf_printf(&st->a1, "%s%lld", retry ? "," : "", (long long)c[i].msg->seq);
        outbox__buf_printf(&st->a2, "%s%lld", retry ? "," : "", (long long)c[i].available_at);
        if (retry) outbox__buf_puts(&st->a3, ",");
        array_text(&st->a3, c[i].error ? c[i].error : "");
        retry++;
    }
    outbox__buf_puts(&st->a1, "}");
    outbox__buf_puts(&st->a2, "}");
    outbox__buf_puts(&st->a3, "}");
    if (st->a1.oom || st->a2.oom || st->a3.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        goto fail;
    }
    if (retry > 0) {
        params[0] = st->a1.data;
        params[1] = st->a2.data;
        params[2] = st->a3.data;
        code = run_hot(st, P_RETRY, 3, params, "rescheduling messages", err);
        if (code != OUTBOX_OK) goto fail;
    }
    /* Failed */
    outbox__buf_reset(&st->a1);
    outbox__buf_reset(&st->a3);
    outbox__buf_puts(&st->a1, "{");
    outbox__buf_puts(&st->a3, "{");
    for (i = 0; i < n; i++) {
        if (c[i].outcome != OUTBOX_OUTCOME_FAILED) continue;
        outbox__buf_printf(&st->a1, "%s%lld", failed ? "," : "", (long long)c[i].msg->seq);
        if (failed) outbox__buf_puts(&st->a3, ",");
        array_text(&st->a3, c[i].error ? c[i].error : "");
        failed++;
    }
    outbox__buf_puts(&st->a1, "}");
    outbox__buf_puts(&st->a3, "}");
    if (st->a1.oom || st->a3.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        goto fail;
    }
    if (failed > 0) {
        params[0] = st->a1.data;
        params[1] = st->a3.data;
        code = run_hot(st, P_FAIL, 2, params, "moving messages to failed", err);
        if (code != OUTBOX_OK) goto fail;
    }
    if (sent + retry + failed > 0 && OUTBOX_FAULT("during_mark_sent") != 0) {
        code = outbox__error(err, OUTBOX_EFAULT,
                             "injected fault during_mark_sent: outcomes not recorded");
        goto fail;
    }
    code = exec_sql(st->conn, "COMMIT", "committing message outcomes", err);
    st->in_txn = 0;
    if (code != OUTBOX_OK) goto fail;
done:
    /* Between batches: keep the share of partitions current. */
    if (st->owner[0] && !(pipelined && in_flight)) {
        outbox_error e;
        if (maybe_rebalance(st, 0, &e) != OUTBOX_OK)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT, "relay %s: rebalancing failed: %s",
                        st->owner, e.message);
    }
    return OUTBOX_OK;

fail:
    end_claim(st);
    return code;
}

static int pg_complete(void *state, const outbox_completion *c, size_t n,
                       const outbox_complete_params *p, outbox_error *err)
{
    return complete(state, c, n, p, 0, 0, err);
}

static int pg_complete_pipelined(void *state, const outbox_completion *c, size_t n,
                                 const outbox_complete_params *p, int in_flight,
                                 outbox_error *err)
{
    return complete(state, c, n, p, 1, in_flight, err);
}

static int pg_changed(void *state, int *changed, outbox_error *err)
{
    pg_store *st = state;
    PGnotify *note;
    int code, woken = 0;

    *changed = 0;
    if (!st->notified_first) {
        st->notified_first = 1;
        *changed = 1;
    }
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) {
        code = need_conn(st, err);
        if (code != OUTBOX_OK) return code;
        *changed = 1; /* anything may have happened while away */
    }
    if (!PQconsumeInput(st->conn)) {
        char msg[300];
        return outbox__error(err, OUTBOX_EIO, "reading notifications from %s: %s", st->shown,
                             pq_message(PQerrorMessage(st->conn), msg, sizeof msg));
    }
    while ((note = PQnotifies(st->conn)) != NULL) {
        *changed = 1;
        PQfreemem(note);
        woken = 1;
    }
    if (woken) release_sleep_lock(st);
    return OUTBOX_OK;
}

/* Runs a query returning one row, one column; *out = its int64 value (0
 * for NULL). */
static int scalar(pg_store *st, const char *sql, int64_t *out, const char *what,
                  outbox_error *err)
{
    PGresult *res = PQexec(st->conn, sql);
    int code = OUTBOX_OK;
    *out = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1)
        code = pq_fail(st->conn, res, what, err);
    else
        *out = parse_i64(PQgetvalue(res, 0, 0));
    PQclear(res);
    return code;
}


static int pg_next_due(void *state, int64_t *due_us, outbox_error *err)
{
    pg_store *st = state;
    int code;
    *due_us = 0;
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    if (st->in_txn) return OUTBOX_OK;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT " US("min(available_at)") " FROM %s.outbox"
                       " WHERE status = 'pending' AND attempts > 0",
                       st->qschema);
    return scalar(st, st->sql.data, due_us, "finding the next due message", err);
}

static const char *pg_wake_path(void *state)
{
    (void)state;
    return NULL;
}

/* Sets or clears this relay's waiting flag (see "Wake-up" above).  A store
 * without a registered relay has no flag: nothing to do. */
static int pg_idle(void *state, int waiting, outbox_error *err)
{
    pg_store *st = state;
    int code;

    st->waiting = waiting != 0;
    code = need_conn(st, err); /* a reconnect registers with the flag as asked */
    if (code != OUTBOX_OK) return code;
    if (st->member_id == 0) return OUTBOX_OK;
    end_claim(st);
    return set_waiting(st, err);
}

/* The libpq socket: readable when a notification (or anything) arrives. */
static int pg_wait_fd(void *state)
{
    pg_store *st = state;
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) return -1;
    return PQsocket(st->conn);
}

/* ------------------------------------------------------------------------
 * Operator commands
 * ---------------------------------------------------------------------- */

#define FULL_COLUMNS                                                                   \
    "seq, id, " US("occurred_at") ", type, aggregate_type, aggregate_id, payload::text," \
    " headers::text, attempts, status, " US("available_at") ", last_error, "          \
    "coalesce(" US("sent_at") ", 0)"

/* A row of FULL_COLUMNS as stored (lenient: for showing, whatever it
 * holds; times outside the years 1970 to 9999 are clamped into them). */
static int full_row_msg(PGresult *res, int row, outbox_msg **out, outbox_error *err)
{
    outbox_msg *m = NULL;
    int code = outbox__msg_from_row_lenient(&m, parse_i64(PQgetvalue(res, row, 0)),
                                    PQgetvalue(res, row, 1), parse_i64(PQgetvalue(res, row, 2)),
                                    PQgetvalue(res, row, 3), PQgetvalue(res, row, 4),
                                    PQgetvalue(res, row, 5), PQgetvalue(res, row, 6),
                                    PQgetvalue(res, row, 7), err);
    if (code != OUTBOX_OK) return code;
    m->attempts = (int)parse_i64(PQgetvalue(res, row, 8));
    m->status = outbox__status_parse(PQgetvalue(res, row, 9));
    m->available_at = parse_i64(PQgetvalue(res, row, 10));
    if (!PQgetisnull(res, row, 11)) {
        m->last_error = strdup(PQgetvalue(res, row, 11));
        if (!m->last_error) {
            outbox_msg_free(m);
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading a message");
        }
    }
    m->sent_at = parse_i64(PQgetvalue(res, row, 12));
    *out = m;
    return OUTBOX_OK;
}

/* 1 when pid is not a running process of this host (a relay killed with
 * -9 whose session PostgreSQL has not closed yet). */
static int process_gone(const char *host, int64_t pid)
{
    char here[256];
    host_name(here, sizeof here);
    if (pid <= 0 || strcmp(host, here) != 0) return 0;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Describes the relay instances holding partitions, each as
 * "name@host:pid[0-10,12]" ("name@host:pid#<relays.id>" when one process
 * runs two of a name; " (gone)" after one whose process is gone),
 * so that relays sharing a name are told apart; fills lease_pid and
 * lease_host when one instance holds them all, the notes of the holders
 * (prefixed by the instance when there are several), and the expiry from
 * the latest heartbeat. */
static void describe_holders(pg_store *st, outbox_status *out)
{
    PGresult *res;
    outbox_buf b, notes;
    int i, rows, instances = 0, noted = 0;

    outbox__buf_init(&b);
    outbox__buf_init(&notes);
    outbox__buf_printf(&b,
                       "WITH held AS (SELECT pid, classid::bigint AS cls, objid::bigint AS obj"
                       " FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                       " AND database = (SELECT oid FROM pg_database"
                       "  WHERE datname = current_database())"
                       " AND classid IN (%ld::oid, %ld::oid))"
                       " SELECT r.id, r.name, coalesce(r.host, ''), coalesce(r.pid, 0), p.obj, "
                       US("r.heartbeat_at") ", coalesce(r.note, '') FROM %s.relays r"
                       " JOIN held m ON m.cls = %ld AND m.obj = (r.id & 2147483647)"
                       "  AND m.pid = r.backend_pid"
                       " JOIN held p ON p.cls = %ld AND p.pid = r.backend_pid"
                       " ORDER BY r.id, p.obj",
                       (long)st->member_key, (long)st->part_key, st->qschema,
                       (long)st->member_key, (long)st->part_key);
    if (b.oom) goto out;
    res = PQexec(st->conn, b.data);
    outbox__buf_reset(&b);
    rows = PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) : 0;
    for (i = 0; i < rows; i++)
        if (i == 0 || strcmp(PQgetvalue(res, i, 0), PQgetvalue(res, i - 1, 0)) != 0) instances++;
    for (i = 0; i < rows;) {
        const char *id = PQgetvalue(res, i, 0), *name = PQgetvalue(res, i, 1);
        const char *host = PQgetvalue(res, i, 2), *note = PQgetvalue(res, i, 6);
        int64_t pid = parse_i64(PQgetvalue(res, i, 3));
        int64_t hb = parse_i64(PQgetvalue(res, i, 5)) + st->ttl_ms * 1000;
        int gone = process_gone(host, pid), j = i;

        if (hb > out->lease_expires_us) out->lease_expires_us = hb;
        outbox__buf_printf(&b, "%s%s@%s:%lld", b.len ? " " : "", name, host, (long long)pid);
        for (j = 0; j < rows; j++) /* one process with two instances of a name */
            if (strcmp(PQgetvalue(res, j, 0), id) != 0 &&
                strcmp(PQgetvalue(res, j, 1), name) == 0 &&
                strcmp(PQgetvalue(res, j, 2), host) == 0 &&
                parse_i64(PQgetvalue(res, j, 3)) == pid)
                break;
        if (j < rows) outbox__buf_printf(&b, "#%s", id);
        outbox__buf_puts(&b, "[");
        j = i;
        while (j < rows && strcmp(PQgetvalue(res, j, 0), id) == 0) {
            int64_t first = parse_i64(PQgetvalue(res, j, 4)), last = first;
            while (j + 1 < rows && strcmp(PQgetvalue(res, j + 1, 0), id) == 0 &&
                   parse_i64(PQgetvalue(res, j + 1, 4)) == last + 1)
                last = parse_i64(PQgetvalue(res, ++j, 4));
            if (first == last) outbox__buf_printf(&b, "%lld", (long long)first);
            else outbox__buf_printf(&b, "%lld-%lld", (long long)first, (long long)last);
            if (++j < rows && strcmp(PQgetvalue(res, j, 0), id) == 0) outbox__buf_puts(&b, ",");
        }
        outbox__buf_puts(&b, gone ? "] (gone)" : "]");
        if (gone) out->lease_holder_gone = 1;
        if (instances == 1) {
            out->lease_pid = pid;
            snprintf(out->lease_host, sizeof out->lease_host, "%s", host);
        }
        if (*note) {
            if (instances > 1)
                outbox__buf_printf(&notes, "%s%s@%s:%lld: ", noted ? "; " : "", name, host,
                                   (long long)pid);
            outbox__buf_puts(&notes, note);
            noted = 1;
        }
        i = j;
    }
    PQclear(res);
    if (b.data && !b.oom) snprintf(out->lease_owner, sizeof out->lease_owner, "%s", b.data);
    if (notes.data && !notes.oom)
        snprintf(out->relay_note, sizeof out->relay_note, "%s", notes.data);
    if (out->lease_owner[0] && out->lease_expires_us == 0)
        out->lease_expires_us = outbox__now_us();
out:
    outbox__buf_free(&b);
    outbox__buf_free(&notes);
}

static int pg_status(void *state, outbox_status *out, outbox_error *err)
{
    pg_store *st = state;
    PGresult *res;
    int code;

    memset(out, 0, sizeof *out);
    code = check_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    out->schema_version = SCHEMA_VERSION;
    code = exec_sql(st->conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    "reading the outbox status", err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT count(*) FILTER (WHERE status = 'pending'),"
                       " count(*) FILTER (WHERE status = 'pending' AND (attempts = 0 OR"
                       " available_at <= now())),"
                       " count(*) FILTER (WHERE status = 'pending' AND attempts > 0),"
                       " count(*) FILTER (WHERE status = 'sent'),"
                       " count(*) FILTER (WHERE status = 'failed'),"
                       " coalesce(" US("min(occurred_at) FILTER (WHERE status = 'pending')") ", 0),"
                       " coalesce(" US("min(available_at) FILTER (WHERE status = 'pending' AND"
                       " attempts > 0)") ", 0) FROM %s.outbox",
                       st->qschema);
    res = PQexec(st->conn, st->sql.data);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "reading the outbox status", err);
        PQclear(res);
        goto out;
    }
    out->pending = parse_i64(PQgetvalue(res, 0, 0));
    out->pending_due = parse_i64(PQgetvalue(res, 0, 1));
    out->retrying = parse_i64(PQgetvalue(res, 0, 2));
    out->sent = parse_i64(PQgetvalue(res, 0, 3));
    out->failed = parse_i64(PQgetvalue(res, 0, 4));
    out->oldest_pending_us = parse_i64(PQgetvalue(res, 0, 5));
    out->next_due_us = parse_i64(PQgetvalue(res, 0, 6));
    PQclear(res);
    /* Held behind a Failed message: driven by the few failed rows (the
     * outbox_blocking index); nothing to join when there are none. */
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT count(*), count(DISTINCT o.aggregate_id) FROM %s.outbox o"
                       " JOIN (SELECT aggregate_id, min(seq) AS seq FROM %s.outbox"
                       "  WHERE status = 'failed' GROUP BY aggregate_id) f"
                       " ON f.aggregate_id = o.aggregate_id AND o.seq > f.seq"
                       " WHERE o.status = 'pending'",
                       st->qschema, st->qschema);
    res = PQexec(st->conn, st->sql.data);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "counting the messages held behind failed ones", err);
        PQclear(res);
        goto out;
    }
    out->blocked = parse_i64(PQgetvalue(res, 0, 0));
    out->aggregates_blocked = parse_i64(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (st->ttl_ms == 0) st->ttl_ms = 10000;
    describe_holders(st, out);
out:
    rollback(st->conn);
    return code;
}

static int pg_list(void *state, const outbox_list_params *p, outbox_list_fn fn, void *user,
                   outbox_error *err)
{
    pg_store *st = state;
    PGresult *res;
    outbox_msg *m = NULL;
    int status = p ? p->status : -1, i, code;
    int64_t limit = p && p->limit > 0 ? p->limit : -1;

    if (!fn) return outbox__error(err, OUTBOX_EINVAL, "list: callback is NULL");
    if (status != -1 && status != OUTBOX_STATUS_PENDING && status != OUTBOX_STATUS_SENT &&
        status != OUTBOX_STATUS_FAILED)
        return outbox__error(err, OUTBOX_EINVAL,
                             "list: unknown status %d: use pending, sent or failed", status);
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql, "SELECT " FULL_COLUMNS " FROM %s.outbox", st->qschema);
    if (status != -1)
        outbox__buf_printf(&st->sql, " WHERE status = '%s'", outbox__status_name(status));
    outbox__buf_puts(&st->sql, " ORDER BY seq");
    if (limit > 0) outbox__buf_printf(&st->sql, " LIMIT %lld", (long long)limit);
    res = PQexec(st->conn, st->sql.data);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "listing messages", err);
        PQclear(res);
        return code;
    }
    for (i = 0; i < PQntuples(res); i++) {
        int stop;
        code = full_row_msg(res, i, &m, err);
        if (code != OUTBOX_OK) break;
        stop = fn(user, m);
        outbox_msg_free(m);
        m = NULL;
        if (stop) break;
    }
    PQclear(res);
    return code;
}

static int pg_get(void *state, const char *id, outbox_msg **msg, outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    char key[37];
    PGresult *res;
    int code;

    *msg = NULL;
    code = outbox__uuid_canonical(id, key, "message id", err);
    if (code != OUTBOX_OK) return code;
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql, "SELECT " FULL_COLUMNS " FROM %s.outbox WHERE id = $1::uuid",
                       st->qschema);
    params[0] = key;
    res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) code = pq_fail(st->conn, res, "reading a message", err);
    else if (PQntuples(res) == 0)
        code = outbox__error(err, OUTBOX_ENOTFOUND,
                             "no message with id %s in the outbox (sent messages are deleted "
                             "unless the relay runs with on_sent=mark)",
                             key);
    else code = full_row_msg(res, 0, msg, err);
    PQclear(res);
    return code;
}

/* 1 when res failed on one of the table's CHECK constraints. */
static int check_violation(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state && strcmp(state, "23514") == 0;
}

/* retry --all when some failed row breaks the table's checks (written
 * before schema version 5, or quarantined by the claim): requeues the
 * others, one savepoint each, and logs each row left Failed.  Runs in the
 * open transaction. */
static int retry_each(pg_store *st, int64_t *total, outbox_error *err)
{
    PGresult *res, *one;
    char sql[512], seq[32];
    const char *params[1];
    int i, code = OUTBOX_OK;

    snprintf(sql, sizeof sql,
             "SELECT seq, id FROM %s.outbox WHERE status = 'failed' ORDER BY seq FOR UPDATE",
             st->qschema);
    res = PQexec(st->conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "requeueing failed messages", err);
        PQclear(res);
        return code;
    }
    snprintf(sql, sizeof sql,
             "UPDATE %s.outbox SET status = 'pending', attempts = 0, available_at = now()"
             " WHERE seq = $1::bigint AND status = 'failed'",
             st->qschema);
    for (i = 0; i < PQntuples(res) && code == OUTBOX_OK; i++) {
        snprintf(seq, sizeof seq, "%s", PQgetvalue(res, i, 0));
        params[0] = seq;
        code = exec_sql(st->conn, "SAVEPOINT outbox_retry_one", "requeueing failed messages",
                        err);
        if (code != OUTBOX_OK) break;
        one = PQexecParams(st->conn, sql, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(one) == PGRES_COMMAND_OK) {
            *total += parse_i64(PQcmdTuples(one));
            code = exec_sql(st->conn, "RELEASE SAVEPOINT outbox_retry_one",
                            "requeueing failed messages", err);
        } else if (check_violation(one)) {
            char why[300];
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "message %s (seq %s) stays failed: the table refuses it as pending (%s); "
                        "drop it (`outbox drop`)",
                        PQgetvalue(res, i, 1), seq, pq_error_text(st->conn, one, why, sizeof why));
            code = exec_sql(st->conn, "ROLLBACK TO SAVEPOINT outbox_retry_one",
                            "requeueing failed messages", err);
        } else {
            code = pq_fail(st->conn, one, "requeueing failed messages", err);
        }
        PQclear(one);
    }
    PQclear(res);
    return code;
}

static int pg_retry(void *state, const char *const *ids, size_t n, int all, int64_t *count,
                    outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    PGresult *res = NULL;
    int64_t total = 0;
    size_t i;
    int code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "retry: give message ids or ask for all failed messages");
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    code = exec_sql(st->conn, "BEGIN", "starting the retry transaction", err);
    if (code != OUTBOX_OK) return code;
    if (all) {
        outbox__buf_reset(&st->sql);
        outbox__buf_printf(&st->sql,
                           "UPDATE %s.outbox SET status = 'pending', attempts = 0,"
                           " available_at = now() WHERE status = 'failed'",
                           st->qschema);
        res = PQexec(st->conn, st->sql.data);
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
            total = parse_i64(PQcmdTuples(res));
        } else if (check_violation(res)) {
            PQclear(res);
            res = NULL;
            rollback(st->conn);
            code = exec_sql(st->conn, "BEGIN", "starting the retry transaction", err);
            if (code != OUTBOX_OK) return code;
            code = retry_each(st, &total, err);
            if (code != OUTBOX_OK) goto fail;
        } else {
            code = pq_fail(st->conn, res, "requeueing failed messages", err);
            goto fail;
        }
        PQclear(res);
        res = NULL;
    } else {
        for (i = 0; i < n; i++) {
            char key[37];
            const char *status;
            code = outbox__uuid_canonical(ids[i], key, "message id", err);
            if (code != OUTBOX_OK) goto fail;
            params[0] = key;
            outbox__buf_reset(&st->sql);
            outbox__buf_printf(&st->sql,
                               "SELECT status FROM %s.outbox WHERE id = $1::uuid FOR UPDATE",
                               st->qschema);
            res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
            if (PQresultStatus(res) != PGRES_TUPLES_OK) {
                code = pq_fail(st->conn, res, "requeueing failed messages", err);
                goto fail;
            }
            if (PQntuples(res) == 0) {
                code = outbox__error(err, OUTBOX_ENOTFOUND,
                                     "no message with id %s in the outbox: nothing was requeued",
                                     key);
                goto fail;
            }
            status = PQgetvalue(res, 0, 0);
            if (strcmp(status, "failed") != 0) {
                code = outbox__error(err, OUTBOX_EINVAL,
                                     "message %s is %s, not failed: only failed messages can be "
                                     "requeued; nothing was requeued",
                                     key, status);
                goto fail;
            }
            PQclear(res);
            outbox__buf_reset(&st->sql);
            outbox__buf_printf(&st->sql,
                               "UPDATE %s.outbox SET status = 'pending', attempts = 0,"
                               " available_at = now() WHERE id = $1::uuid AND status = 'failed'",
                               st->qschema);
            res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
            if (check_violation(res)) {
                char why[300];
                code = outbox__error(err, OUTBOX_EINVAL,
                                     "message %s cannot be requeued: the table refuses it as "
                                     "pending (%s); nothing was requeued: drop it (`outbox drop "
                                     "%s`)",
                                     key, pq_error_text(st->conn, res, why, sizeof why), key);
                goto fail;
            }
            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                code = pq_fail(st->conn, res, "requeueing failed messages", err);
                goto fail;
            }
            total += parse_i64(PQcmdTuples(res));
            PQclear(res);
            res = NULL;
        }
    }
    code = exec_sql(st->conn, "COMMIT", "committing the retry", err);
    if (code != OUTBOX_OK) goto fail;
    if (count) *count = total;
    return OUTBOX_OK;

fail:
    PQclear(res);
    rollback(st->conn);
    return code;
}

static int pg_purge(void *state, int64_t before_us, int64_t *count, outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    char before[32];
    PGresult *res;
    int code;

    if (count) *count = 0;
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    snprintf(before, sizeof before, "%lld", (long long)before_us);
    params[0] = before;
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "DELETE FROM %s.outbox WHERE status = 'sent' AND sent_at <"
                       " 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'",
                       st->qschema);
    res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) code = pq_fail(st->conn, res, "purging sent messages", err);
    else if (count) *count = parse_i64(PQcmdTuples(res));
    PQclear(res);
    return code;
}

/* Appends id (checked, canonical) to the array literal b; EBADID. */
static int append_id(outbox_buf *b, const char *id, int first, outbox_error *err)
{
    char key[37];
    int code = outbox__uuid_canonical(id, key, "message id", err);
    if (code != OUTBOX_OK) return code;
    outbox__buf_printf(b, "%s%s", first ? "" : ",", key);
    return OUTBOX_OK;
}

/* Deletes Failed messages (see the ops table's comment), archiving them
 * first through archive: one transaction, rows locked while archived. */
static int pg_drop(void *state, const char *const *ids, size_t n, int all,
                   outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err)
{
    pg_store *st = state;
    const char *params[1];
    outbox_buf list, seqs;
    outbox_msg **msgs = NULL;
    PGresult *res = NULL;
    size_t i, rows = 0, got = 0;
    int code;

    if (count) *count = 0;
    if (!all && (n == 0 || !ids))
        return outbox__error(err, OUTBOX_EINVAL,
                             "drop: give message ids or ask for all failed messages");
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    outbox__buf_init(&list);
    outbox__buf_init(&seqs);
    outbox__buf_reset(&st->sql);
    if (all) {
        outbox__buf_printf(&st->sql,
                           "SELECT " FULL_COLUMNS " FROM %s.outbox WHERE status = 'failed'"
                           " ORDER BY seq FOR UPDATE",
                           st->qschema);
    } else {
        outbox__buf_puts(&list, "{");
        for (i = 0; i < n; i++) {
            code = append_id(&list, ids[i], i == 0, err);
            if (code != OUTBOX_OK) goto out;
        }
        outbox__buf_puts(&list, "}");
        outbox__buf_printf(&st->sql,
                           "SELECT " FULL_COLUMNS " FROM %s.outbox WHERE id = ANY($1::uuid[])"
                           " ORDER BY seq FOR UPDATE",
                           st->qschema);
    }
    if (st->sql.oom || list.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto out;
    }
    code = exec_sql(st->conn, "BEGIN", "starting the drop transaction", err);
    if (code != OUTBOX_OK) goto out;
    params[0] = list.data;
    res = PQexecParams(st->conn, st->sql.data, all ? 0 : 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = pq_fail(st->conn, res, "reading the messages to drop", err);
        goto fail;
    }
    rows = (size_t)PQntuples(res);
    if (!all) {
        /* All or nothing: every id is there and Failed. */
        for (i = 0; i < n; i++) {
            char key[37];
            size_t r;
            outbox__uuid_canonical(ids[i], key, "message id", NULL);
            for (r = 0; r < rows && strcmp(PQgetvalue(res, (int)r, 1), key) != 0; r++) {
            }
            if (r == rows) {
                code = outbox__error(err, OUTBOX_ENOTFOUND,
                                     "no message with id %s in the outbox: nothing was dropped",
                                     key);
                goto fail;
            }
            if (strcmp(PQgetvalue(res, (int)r, 9), "failed") != 0) {
                code = outbox__error(err, OUTBOX_EINVAL,
                                     "message %s is %s, not failed: only failed messages can be "
                                     "dropped; nothing was dropped",
                                     key, PQgetvalue(res, (int)r, 9));
                goto fail;
            }
        }
    }
    if (rows == 0) goto commit;
    msgs = calloc(rows, sizeof *msgs);
    if (!msgs) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto fail;
    }
    outbox__buf_puts(&seqs, "{");
    for (got = 0; got < rows; got++) {
        code = full_row_msg(res, (int)got, &msgs[got], err);
        if (code != OUTBOX_OK) goto fail;
        outbox__buf_printf(&seqs, "%s%lld", got ? "," : "", (long long)msgs[got]->seq);
    }
    outbox__buf_puts(&seqs, "}");
    if (seqs.oom) {
        code = outbox__error(err, OUTBOX_ENOMEM, "out of memory dropping messages");
        goto fail;
    }
    PQclear(res);
    res = NULL;
    if (archive) {
        code = archive(user, msgs, rows, err);
        if (code != OUTBOX_OK) goto fail; /* err is the callback's */
    }
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "DELETE FROM %s.outbox WHERE seq = ANY($1::bigint[]) AND status = 'failed'",
                       st->qschema);
    params[0] = seqs.data;
    res = PQexecParams(st->conn, st->sql.data, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        code = pq_fail(st->conn, res, "dropping failed messages", err);
        goto fail;
    }
    if (count) *count = parse_i64(PQcmdTuples(res));
commit:
    PQclear(res);
    res = NULL;
    code = exec_sql(st->conn, "COMMIT", "committing the drop", err);
    if (code != OUTBOX_OK) {
        if (count) *count = 0;
        goto fail;
    }
    goto out;

fail:
    PQclear(res);
    rollback(st->conn);
out:
    for (i = 0; i < got; i++) outbox_msg_free(msgs[i]);
    free(msgs);
    outbox__buf_free(&list);
    outbox__buf_free(&seqs);
    return code;
}

/* Keeps note (one line, at most 255 bytes, cut on a character boundary) as
 * this relay instance's note in relays, shown by status.  Written at once
 * outside a claim transaction, else with the next heartbeat; kept across
 * reconnects. */
static int pg_lease_note(void *state, const char *owner, const char *note, outbox_error *err)
{
    pg_store *st = state;
    size_t len, i;

    (void)owner;
    if (!note) note = "";
    len = strlen(note);
    if (len >= sizeof st->note) {
        len = sizeof st->note - 1;
        while (len > 0 && ((unsigned char)note[len] & 0xc0) == 0x80) len--;
    }
    memcpy(st->note, note, len);
    st->note[len] = '\0';
    for (i = 0; i < len; i++)
        if ((unsigned char)st->note[i] < 0x20 || st->note[i] == 0x7f) st->note[i] = ' ';
    st->note_dirty = 1;
    if (st->member_id == 0) return OUTBOX_OK; /* written when it registers */
    if (!st->conn || PQstatus(st->conn) != CONNECTION_OK) return need_conn(st, err);
    if (st->in_txn || PQtransactionStatus(st->conn) != PQTRANS_IDLE) return OUTBOX_OK;
    return write_heartbeat(st, err);
}

static int pg_inbox_purge(void *state, int64_t retention_ms, int64_t redelivery_horizon_ms,
                          int64_t *count, outbox_error *err)
{
    pg_store *st = state;
    int code;

    if (count) *count = 0;
    code = need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    end_claim(st);
    return outbox_inbox_purge_pg(st->conn, st->schema, retention_ms, redelivery_horizon_ms, count,
                                 err);
}

/* The PostgreSQL store driver (schemes "postgres" and "postgresql"). */
const outbox_store_ops outbox__store_postgres = {
    .version = 5,
    .scheme = "postgres",
    .open = pg_open,
    .close = pg_close,
    .init = pg_init,
    .check_schema = pg_check_schema,
    .enqueue = pg_enqueue,
    .lease_acquire = pg_lease_acquire,
    .lease_renew = pg_lease_renew,
    .lease_release = pg_lease_release,
    .claim = pg_claim,
    .complete = pg_complete,
    .changed = pg_changed,
    .next_due = pg_next_due,
    .wake_path = pg_wake_path,
    .status = pg_status,
    .list = pg_list,
    .get = pg_get,
    .retry = pg_retry,
    .purge = pg_purge,
    .idle = pg_idle,
    .wait_fd = pg_wait_fd,
    .inbox_purge = pg_inbox_purge,
    .claim_pipelined = pg_claim_pipelined,
    .complete_pipelined = pg_complete_pipelined,
    .drop = pg_drop,
    .lease_note = pg_lease_note,
};

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__postgres_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */

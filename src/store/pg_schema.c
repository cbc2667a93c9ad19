/*
 * pg_schema.c - the PostgreSQL store's schema: its SQL (tables, indexes,
 * triggers, and the SQL functions any language can enqueue with) as
 * append-only migrations, creating and upgrading it, the schema names we
 * accept, and the version checks of the driver and of the caller's
 * functions.  The design is in docs/POSTGRES.md.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Schema
 *
 * Templates: {s} is the quoted schema, {n} the schema name (validated, so
 * safe in a literal), {P} the partition count.
 * ---------------------------------------------------------------------- */

static const char meta_sql[] =
    "CREATE SCHEMA IF NOT EXISTS {s};"
    "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);";

/* The rules a pending row must follow (version 7's pending_row_valid; 8
 * adds what failed), in parentheses.  Its functions are named with
 * pg_catalog, so that an inserting role's search_path cannot change what
 * they do. */
#define PENDING_ROW_RULES                                                                          \
    "(id <> '00000000-0000-0000-0000-000000000000'"                                                \
    "  AND pg_catalog.octet_length(type) <= 256"                                                   \
    "  AND type ~ '[^ \\t]' AND type !~ '[\\x01-\\x1f\\x7f]'"                                      \
    "  AND pg_catalog.octet_length(aggregate_id) <= 256"                                           \
    "  AND aggregate_id ~ '[^ \\t]' AND aggregate_id !~ '[\\x01-\\x1f\\x7f]'"                      \
    "  AND pg_catalog.octet_length(aggregate_type) <= 256"                                         \
    "  AND aggregate_type !~ '[\\x01-\\x1f\\x7f]'"                                                 \
    "  AND occurred_at >= '1970-01-01 00:00:00+00' AND occurred_at < '10000-01-01 00:00:00+00'"    \
    "  AND available_at >= '1970-01-01 00:00:00+00'"                                               \
    "  AND available_at < '10000-01-01 00:00:00+00'"                                               \
    "  AND (headers = '{}' OR ("                                                                   \
    "  NOT pg_catalog.jsonb_path_exists(headers, 'strict $.* ? (@.type() != \"string\")')"         \
    "  AND NOT headers ? ''"                                                                       \
    "  AND headers::text !~ '(^|[^\\\\])(\\\\\\\\)*\\\\(u00[01][0-9a-fA-F]|[bfnrt])|\\x7f'"        \
    "  AND coalesce((headers ->> 'traceparent') ~"                                                 \
    "   '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-|$)'"                                 \
    "   AND pg_catalog.left(headers ->> 'traceparent', 2) <> 'ff'"                                 \
    "   AND NOT (pg_catalog.left(headers ->> 'traceparent', 3) = '00-'"                            \
    "    AND pg_catalog.length(headers ->> 'traceparent') > 55)"                                   \
    "   AND pg_catalog.substr(headers ->> 'traceparent', 4, 32) <> pg_catalog.repeat('0', 32)"     \
    "   AND pg_catalog.substr(headers ->> 'traceparent', 37, 16)"                                  \
    "    <> pg_catalog.repeat('0', 16), true))))"

/* What validate_message checks, as one expression that holds for a message
 * it would let through without headers: enqueue and emit (version 9) test
 * it first and call validate_message, for its texts, only when it does not
 * hold or there are headers.  F names the function whose parameters type,
 * aggregate_id and payload are, H the caller's jsonb variable for the
 * headers; agt, at and new_id are the caller's variables too.  Tested with
 * IS NOT TRUE: a NULL argument makes it NULL. */
#define MESSAGE_FAST_RULES(F, H)                                                                   \
    "(" H " = '{}' AND octet_length(" F ".type) BETWEEN 1 AND 256"                                 \
    "  AND " F ".type !~ '[\\x01-\\x1f\\x7f]' AND " F ".type ~ '[^ \\t]'"                          \
    "  AND octet_length(" F ".aggregate_id) BETWEEN 1 AND 256"                                     \
    "  AND " F ".aggregate_id !~ '[\\x01-\\x1f\\x7f]' AND " F ".aggregate_id ~ '[^ \\t]'"          \
    "  AND octet_length(agt) <= 256 AND agt !~ '[\\x01-\\x1f\\x7f]'"                               \
    "  AND at >= '1970-01-01 00:00:00+00' AND at < '10000-01-01 00:00:00+00'"                      \
    "  AND octet_length(" F ".payload::text) + 2 + octet_length(" F ".type)"                       \
    "  + octet_length(" F ".aggregate_id) + octet_length(agt) <= 1048576"                          \
    "  AND new_id <> '00000000-0000-0000-0000-000000000000')"
#define ENQUEUE_FAST_RULES MESSAGE_FAST_RULES("enqueue", "hd")
#define EMIT_FAST_RULES MESSAGE_FAST_RULES("emit", "hdr")

/* What migrations 6 and 9 both say of enqueue and emit: their signatures
 * and first variables, enqueue's INSERT, and emit's check of wal_level and
 * its message (whose variables i, ty, agt, agi, us, hd and pl are text). */
#define ENQUEUE_HEAD                                                                               \
    "CREATE OR REPLACE FUNCTION {s}.enqueue(type text, aggregate_id text, payload jsonb,"          \
    " headers jsonb DEFAULT '{}', aggregate_type text DEFAULT '', id uuid DEFAULT NULL,"           \
    " occurred_at timestamptz DEFAULT now()) RETURNS uuid LANGUAGE plpgsql AS $fn$\n"              \
    "DECLARE hd jsonb := coalesce(enqueue.headers, '{}');\n"                                       \
    " agt text := coalesce(enqueue.aggregate_type, '');\n"                                         \
    " at timestamptz := coalesce(enqueue.occurred_at, now());\n"
#define ENQUEUE_INSERT                                                                             \
    " INSERT INTO {s}.outbox (id, occurred_at, type, aggregate_type, aggregate_id, payload,"       \
    " headers) VALUES (new_id, at, enqueue.type, agt, enqueue.aggregate_id, enqueue.payload,"      \
    " hd);\n"                                                                                      \
    " RETURN new_id;\n"                                                                            \
    "END $fn$;"
#define EMIT_HEAD                                                                                  \
    "CREATE OR REPLACE FUNCTION {s}.emit(type text, aggregate_id text, payload jsonb,"             \
    " headers jsonb DEFAULT '{}', aggregate_type text DEFAULT '', id uuid DEFAULT NULL,"           \
    " occurred_at timestamptz DEFAULT now()) RETURNS uuid LANGUAGE plpgsql AS $fn$\n"              \
    "DECLARE hdr jsonb := coalesce(emit.headers, '{}');\n"                                         \
    " agt text := coalesce(emit.aggregate_type, '');\n"                                            \
    " at timestamptz := coalesce(emit.occurred_at, now());\n"
#define EMIT_MESSAGE                                                                               \
    " IF current_setting('wal_level') <> 'logical' THEN\n"                                         \
    "  RAISE EXCEPTION 'outbox.emit: wal_level is %; set wal_level = logical in"                   \
    " postgresql.conf and restart PostgreSQL (nothing can capture this message)',"                 \
    " current_setting('wal_level') USING ERRCODE = '55000';\n"                                     \
    " END IF;\n"                                                                                   \
    " lsn := pg_logical_emit_message(true, 'outbox:{n}', 'v1' || octet_length(i) || ':' || i"      \
    "  || ',' || octet_length(ty) || ':' || ty || ',' || octet_length(agt) || ':' || agt || ','"   \
    "  || octet_length(agi) || ':' || agi || ',' || octet_length(us) || ':' || us || ','"          \
    "  || octet_length(hd) || ':' || hd || ',' || octet_length(pl) || ':' || pl || ',');\n"        \
    " RETURN new_id;\n"                                                                            \
    "END $fn$;"

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
    "  + octet_length(enqueue.type) + octet_length(enqueue.aggregate_id) + "
    "octet_length(agg_type);\n"
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
    /* 2: notify only to wake a waiting relay, once (see "Wake-up" in
     * docs/POSTGRES.md). */
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
     * (holds the "asleep" advisory lock; see "Wake-up" in
     * docs/POSTGRES.md).  The lock probe runs as the enqueuer (advisory
     * locks need no rights); only wake_relays() needs the owner's rights
     * on relays. */
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
     * claim compares with its floor's (see "Claim floor" in
     * docs/POSTGRES.md).  The epoch is random, so a schema made again does
     * not repeat it. */
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
    /* 6: emit (a message written to the WAL instead of the table, see
     * docs/WAL.md), and enqueue without its own checks: both call
     * validate_message, one function for the checks and their texts (fn
     * names the caller in them), in the order enqueue always made them.
     * The headers are looked at one by one only when there are some (the
     * loop is a query of its own).  Repeatable, like 4. */
    "CREATE OR REPLACE FUNCTION {s}.validate_message(fn text, type text, aggregate_id text,"
    " payload jsonb, headers jsonb, aggregate_type text, id uuid, occurred_at timestamptz)"
    " RETURNS uuid LANGUAGE plpgsql AS $fn$\n"
    "DECLARE h record; v text; total bigint; new_id uuid;\n"
    "BEGIN\n"
    " IF type IS NULL OR octet_length(type) NOT BETWEEN 1 AND 256"
    "  OR type ~ '[\\x01-\\x1f\\x7f]' OR type !~ '[^ \\t]' THEN\n"
    "  RAISE EXCEPTION '%: type must be 1 to 256 bytes of text, not blank, without control"
    " characters', fn USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF aggregate_id IS NULL OR octet_length(aggregate_id) NOT BETWEEN 1 AND 256"
    "  OR aggregate_id ~ '[\\x01-\\x1f\\x7f]' OR aggregate_id !~ '[^ \\t]' THEN\n"
    "  RAISE EXCEPTION '%: aggregate_id must be 1 to 256 bytes of text, not blank, without"
    " control characters', fn USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF octet_length(aggregate_type) > 256 OR aggregate_type ~ '[\\x01-\\x1f\\x7f]' THEN\n"
    "  RAISE EXCEPTION '%: aggregate_type must be at most 256 bytes of text without control"
    " characters', fn USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF NOT (occurred_at >= '1970-01-01 00:00:00+00' AND occurred_at < '10000-01-01 00:00:00+00')"
    " THEN\n"
    "  RAISE EXCEPTION '%: occurred_at % is outside the years 1970 to 9999', fn, occurred_at"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF payload IS NULL THEN\n"
    "  RAISE EXCEPTION '%: payload is SQL NULL; pass JSON, e.g. ''{}''::jsonb', fn"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " IF headers <> '{}' THEN\n"
    "  IF jsonb_typeof(headers) <> 'object' THEN\n"
    "   RAISE EXCEPTION '%: headers must be a JSON object of strings, not %', fn,"
    " jsonb_typeof(headers) USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  FOR h IN SELECT key, value FROM jsonb_each(headers) LOOP\n"
    "   IF jsonb_typeof(h.value) <> 'string' THEN\n"
    "    RAISE EXCEPTION '%: header % must be a string, not %', fn, quote_literal(h.key),"
    " jsonb_typeof(h.value) USING ERRCODE = '22023';\n"
    "   END IF;\n"
    "   v := h.value #>> '{}';\n"
    "   IF h.key = '' OR h.key ~ '[\\x01-\\x1f\\x7f]' OR v ~ '[\\x01-\\x1f\\x7f]' THEN\n"
    "    RAISE EXCEPTION '%: header names must be non-empty and header names and values free"
    " of control characters (header %)', fn, quote_literal(h.key) USING ERRCODE = '22023';\n"
    "   END IF;\n"
    "   IF lower(h.key) = 'traceparent' AND (v !~"
    " '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-|$)' OR v ~ '^ff'"
    " OR v ~ '^00-.{52}.' OR v ~ '^.{3}0{32}-' OR v ~ '^.{36}0{16}-') THEN\n"
    "    RAISE EXCEPTION '%: header traceparent is not W3C trace-context"
    " (00-<32 hex>-<16 hex>-<2 hex>, ids not all zero)', fn USING ERRCODE = '22023';\n"
    "   END IF;\n"
    "  END LOOP;\n"
    " END IF;\n"
    " total := octet_length(payload::text) + octet_length(headers::text) + octet_length(type)"
    "  + octet_length(aggregate_id) + octet_length(aggregate_type);\n"
    " IF total > 1048576 THEN\n"
    "  RAISE EXCEPTION '%: message is % bytes, over the 1048576-byte limit', fn, total"
    " USING ERRCODE = '54000';\n"
    " END IF;\n"
    " new_id := coalesce(id, {s}.uuid_v7());\n"
    " IF new_id = '00000000-0000-0000-0000-000000000000' THEN\n"
    "  RAISE EXCEPTION '%: id is the nil UUID, which cannot tell messages apart', fn"
    " USING ERRCODE = '22023';\n"
    " END IF;\n"
    " RETURN new_id;\n"
    "END $fn$;"
    /* enqueue: validate_message, then the INSERT */
    ENQUEUE_HEAD
    " new_id uuid := {s}.validate_message('outbox.enqueue', enqueue.type, enqueue.aggregate_id,"
    "  enqueue.payload, hd, agt, enqueue.id, at);\n"
    "BEGIN\n" ENQUEUE_INSERT
        /* A message emitted while wal_level is below logical cannot be
         * decoded by any slot: lost, so refused (the setting needs a restart,
         * which ends the session: one look per call is enough). */
        EMIT_HEAD
    " new_id uuid := {s}.validate_message('outbox.emit', emit.type, emit.aggregate_id,"
    "  emit.payload, hdr, agt, emit.id, at);\n"
    " i text := new_id::text; ty text := emit.type; agi text := emit.aggregate_id;\n"
    " us text := (extract(epoch FROM at) * 1000000)::bigint::text;\n"
    " hd text := hdr::text; pl text := emit.payload::text; lsn pg_lsn;\n"
    "BEGIN\n" EMIT_MESSAGE,
    /* 7: version 5's checks in one constraint that calls a PL/pgSQL
     * function.  PostgreSQL prepares a table's CHECK expressions again for
     * every statement that inserts or updates rows (the headers check's
     * jsonpath is parsed each time); the one call costs a one-row INSERT
     * in its own transaction 45-90 us of server CPU less than the five
     * (docs/BENCHMARKS.md).  The function's expression is planned once per
     * session; it names its functions with pg_catalog, so that an inserting
     * role's search_path cannot change what they do.  Same rules and
     * SQLSTATE 23514; NOT VALID as in 5.  Repeatable, like 4. */
    "CREATE OR REPLACE FUNCTION {s}.pending_row_valid(id uuid, type text, aggregate_type text,"
    " aggregate_id text, headers jsonb, occurred_at timestamptz, available_at timestamptz)"
    " RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$\n"
    "BEGIN\n"
    " RETURN " PENDING_ROW_RULES ";\n"
    "END $fn$;"
    "ALTER TABLE {s}.outbox DROP CONSTRAINT IF EXISTS outbox_id_valid,"
    " DROP CONSTRAINT IF EXISTS outbox_type_valid, DROP CONSTRAINT IF EXISTS"
    " outbox_aggregate_valid, DROP CONSTRAINT IF EXISTS outbox_headers_valid,"
    " DROP CONSTRAINT IF EXISTS outbox_times_valid, DROP CONSTRAINT IF EXISTS"
    " outbox_pending_valid;"
    "ALTER TABLE {s}.outbox ADD CONSTRAINT outbox_pending_valid CHECK (status <> 'pending'"
    " OR {s}.pending_row_valid(id, type, aggregate_type, aggregate_id, headers, occurred_at,"
    " available_at)) NOT VALID;",
    /* 8: a pending row the table refuses says why.  The rules are 7's (a
     * row that follows them costs what it did); one that does not is
     * given to validate_message, whose text for the first rule it breaks
     * (enqueue's and emit's, "a pending row of <schema>.outbox: ...") is
     * raised with SQLSTATE 23514 and the constraint's name, where 7 gave
     * only the name.  The block that catches validate_message's error
     * (a subtransaction) runs only for a refused row, hence PARALLEL
     * RESTRICTED.  A rule validate_message does not have (available_at)
     * is said here; were none found, false gives PostgreSQL's own error.
     * Repeatable, like 4. */
    "CREATE OR REPLACE FUNCTION {s}.pending_row_valid(id uuid, type text, aggregate_type text,"
    " aggregate_id text, headers jsonb, occurred_at timestamptz, available_at timestamptz)"
    " RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED AS $fn$\n"
    "DECLARE why text;\n"
    "BEGIN\n"
    " IF " PENDING_ROW_RULES " THEN\n"
    "  RETURN true;\n"
    " END IF;\n"
    " BEGIN\n"
    "  PERFORM {s}.validate_message('a pending row of {n}.outbox', type, aggregate_id,"
    " '{}'::jsonb, coalesce(headers, '{}'), coalesce(aggregate_type, ''), id, occurred_at);\n"
    " EXCEPTION WHEN invalid_parameter_value THEN\n"
    "  GET STACKED DIAGNOSTICS why = MESSAGE_TEXT;\n"
    " WHEN program_limit_exceeded THEN\n"
    "  NULL;\n"
    " END;\n"
    " IF why IS NULL AND NOT (available_at >= '1970-01-01 00:00:00+00'"
    "  AND available_at < '10000-01-01 00:00:00+00') THEN\n"
    "  why := 'a pending row of {n}.outbox: available_at ' || available_at"
    " || ' is outside the years 1970 to 9999';\n"
    " END IF;\n"
    " IF why IS NOT NULL THEN\n"
    "  RAISE EXCEPTION USING MESSAGE = why, ERRCODE = 'check_violation',"
    " CONSTRAINT = 'outbox_pending_valid', TABLE = 'outbox', SCHEMA = '{n}';\n"
    " END IF;\n"
    " RETURN false;\n"
    "END $fn$;",
    /* 9: enqueue and emit test MESSAGE_FAST_RULES before anything else
     * and call validate_message only when it does not hold or the message
     * has headers.  PL/pgSQL sets up every expression of a function again
     * in each transaction; the nested call and validate_message's dozen IF
     * statements cost a transaction with one enqueue 8-11 us of server CPU
     * more than the one expression, median of 50-60 rounds
     * (docs/BENCHMARKS.md).  Same checks, same texts and SQLSTATEs
     * (validate_message's, which a refused message still reaches); the
     * table's constraint is unchanged.  Repeatable, like 4. */
    ENQUEUE_HEAD
    " new_id uuid := coalesce(enqueue.id, {s}.uuid_v7());\n"
    "BEGIN\n"
    " IF " ENQUEUE_FAST_RULES " IS NOT TRUE THEN\n"
    "  new_id := {s}.validate_message('outbox.enqueue', enqueue.type, enqueue.aggregate_id,"
    "   enqueue.payload, hd, agt, new_id, at);\n"
    " END IF;\n" ENQUEUE_INSERT
        /* emit: the same first test, then version 6's message */
        EMIT_HEAD " new_id uuid := coalesce(emit.id, {s}.uuid_v7());\n"
    " i text; ty text := emit.type; agi text := emit.aggregate_id; us text; hd text; pl text;\n"
    " lsn pg_lsn;\n"
    "BEGIN\n"
    " IF " EMIT_FAST_RULES " IS NOT TRUE THEN\n"
    "  new_id := {s}.validate_message('outbox.emit', emit.type, emit.aggregate_id, emit.payload,"
    "   hdr, agt, new_id, at);\n"
    " END IF;\n"
    " i := new_id::text; us := (extract(epoch FROM at) * 1000000)::bigint::text;\n"
    " hd := hdr::text; pl := emit.payload::text;\n" EMIT_MESSAGE,
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

/* See pg.h (status reports it). */
int outbox__pg_schema_version(void)
{
    return SCHEMA_VERSION;
}

/* A schema name we accept: [A-Za-z_][A-Za-z0-9_]*, at most 63 bytes. */
int outbox__pg_valid_schema(const char *s)
{
    size_t i, n = s ? strlen(s) : 0;
    if (n == 0 || n > 63) return 0;
    if (!isalpha((unsigned char)s[0]) && s[0] != '_') return 0;
    for (i = 1; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_') return 0;
    return 1;
}

int outbox__pg_schema_error(const char *schema, outbox_error *err)
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

/* Expands a template into b (see "Schema" above); qschema is the quoted
 * schema. */
void outbox__pg_expand(outbox_buf *b, const char *tmpl, const char *qschema, const char *schema,
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
int outbox__pg_quote_schema(PGconn *conn, const char *schema, char *out, size_t len,
                            outbox_error *err)
{
    char *q;
    if (!outbox__pg_valid_schema(schema)) return outbox__pg_schema_error(schema, err);
    q = PQescapeIdentifier(conn, schema, strlen(schema));
    if (!q) return outbox__pg_fail(conn, NULL, "quoting the schema name", err);
    snprintf(out, len, "%s", q);
    PQfreemem(q);
    return OUTBOX_OK;
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
static int read_meta(PGconn *conn, const char *qschema, int *version, int *partitions, char *bad,
                     size_t bad_len, outbox_error *err)
{
    char sql[256];
    PGresult *res;
    int i, code = OUTBOX_OK;

    *version = 0;
    if (partitions) *partitions = 0;
    if (bad && bad_len) bad[0] = '\0';
    snprintf(sql, sizeof sql, "SELECT key, value FROM %s.meta", qschema);
    res = outbox__pg_conn_query(conn, sql, 0, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0)) {
            PQclear(res);
            return OUTBOX_OK; /* no schema yet */
        }
        code = outbox__pg_fail(conn, res, "reading the outbox schema version", err);
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
            *partitions = (int)outbox__pg_parse_i64(PQgetvalue(res, i, 1));
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
        " WHEN EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'enqueue'"
        "  AND pronamespace = $3::regnamespace AND prosrc LIKE '%IS NOT TRUE THEN%') THEN 9"
        " WHEN EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'pending_row_valid'"
        "  AND pronamespace = $3::regnamespace AND prosrc LIKE '%validate_message%') THEN 8"
        " WHEN EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'pending_row_valid'"
        "  AND pronamespace = $3::regnamespace) THEN 7"
        " WHEN EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'emit'"
        "  AND pronamespace = $3::regnamespace) THEN 6"
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
        guess = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
        parts = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    if (parts < 1 || parts > MAX_PARTITIONS) parts = DEFAULT_PARTITIONS;
    if (version < 0)
        snprintf(found, sizeof found, "schema_version '%s', not a version number", bad);
    else
        snprintf(found, sizeof found, "no schema_version");
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
int outbox__pg_migrate(PGconn *conn, const char *schema, int requested, int *from, int *to,
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
    code = outbox__pg_quote_schema(conn, schema, qschema, sizeof qschema, err);
    if (code != OUTBOX_OK) return code;
    if (read_meta(conn, qschema, &version, &stored_parts, NULL, 0, &ignored) == OUTBOX_OK &&
        version == SCHEMA_VERSION) {
        partitions_note(schema, requested, stored_parts);
        if (from) *from = version;
        if (to) *to = version;
        return OUTBOX_OK;
    }
    outbox__buf_init(&b);
    code = outbox__pg_exec(conn, "BEGIN", "starting the schema transaction", err);
    if (code != OUTBOX_OK) goto out;
    params[0] = schema;
    res = PQexecParams(conn, "SELECT pg_advisory_xact_lock(hashtext('outbox.init:' || $1))", 1,
                       NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(conn, res, "locking the schema for init", err);
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    code =
        outbox__pg_exec(conn, "SET LOCAL client_min_messages = warning", "configuring init", err);
    if (code != OUTBOX_OK) goto fail;
    outbox__pg_expand(&b, meta_sql, qschema, schema, partitions);
    code = outbox__pg_exec(conn, b.data, "creating the outbox schema", err);
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
        outbox__pg_expand(&b, migrations[v], qschema, schema, partitions);
        if (b.oom) {
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory building the schema");
            goto fail;
        }
        snprintf(what, sizeof what, "migrating the outbox schema %s to version %d", schema, v + 1);
        code = outbox__pg_exec(conn, b.data, what, err);
        if (code != OUTBOX_OK) goto fail;
    }
    if (version != SCHEMA_VERSION) {
        outbox__buf_reset(&b);
        outbox__buf_printf(&b,
                           "INSERT INTO %s.meta (key, value) VALUES ('schema_version', '%d'),"
                           " ('partitions', '%d') ON CONFLICT (key) DO UPDATE SET value ="
                           " excluded.value",
                           qschema, SCHEMA_VERSION, partitions);
        code = outbox__pg_exec(conn, b.data, "recording the outbox schema version", err);
        if (code != OUTBOX_OK) goto fail;
    }
    code = outbox__pg_exec(conn, "COMMIT", "committing the schema", err);
    if (code != OUTBOX_OK) goto fail;
    if (to) *to = SCHEMA_VERSION;
    goto out;

fail:
    outbox__pg_rollback(conn);
out:
    outbox__buf_free(&b);
    return code;
}

/* Refuses a schema newer than this build on conn: reads meta's version
 * when this role may (since version 5 every role may; an older schema
 * whose meta it cannot read is not newer).  Runs only queries that cannot
 * fail, so a caller's transaction stays usable. */
int outbox__pg_refuse_newer_schema(PGconn *conn, const char *schema, const char *qschema,
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
        int code = outbox__pg_fail(conn, res, "checking the outbox schema version", err);
        PQclear(res);
        return code;
    }
    readable = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!readable) return OUTBOX_OK;
    snprintf(sql, sizeof sql, "SELECT value FROM %s WHERE key = 'schema_version'", meta);
    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int code = outbox__pg_fail(conn, res, "checking the outbox schema version", err);
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

/* Reads the schema version and partition count: OUTBOX_OK when the schema
 * is this build's version; ENOSCHEMA (missing or older: run init),
 * ESCHEMANEWER, or ESTORE for a meta row that is not a version. */
int outbox__pg_check_schema(pg_store *st, outbox_error *err)
{
    char bad[64];
    int version = 0, parts = 0, code;
    code = outbox__pg_need_conn(st, err);
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
                             "no outbox schema %s at %s: run `outbox init --store %s`", st->schema,
                             st->shown, st->shown);
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

/* outbox__pg_need_conn, and the schema version checked once per connection: every
 * driver function that touches the tables starts here. */
int outbox__pg_need_schema(pg_store *st, outbox_error *err)
{
    int code = outbox__pg_need_conn(st, err);
    if (code != OUTBOX_OK || st->schema_ok) return code;
    return outbox__pg_check_schema(st, err);
}

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_schema_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */

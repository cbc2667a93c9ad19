/*
 * pg_wal_admin.c - WAL capture's operator side on a normal connection:
 * the slot and publication names, checking the server and creating them
 * (`outbox init --capture wal`), dropping them (`outbox wal drop-slot`),
 * and how far the slot lags (`outbox status`, the monitor).  The relay
 * that streams from the slot is pg_wal_capture.c; the feature is
 * described for users in docs/WAL.md.
 *
 * Every refusal names the setting or right that is missing and how to
 * change it: the person who reads it is setting up a server, and "what
 * to type" is what they need.  The checks run before anything is created,
 * so a refused setup leaves nothing half made.
 */
#include "internal.h"

#include "pg_wal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int outbox__pg_wal_valid_name(const char *name)
{
    size_t i, n = name ? strlen(name) : 0;
    if (n == 0 || n > 63) return 0;
    for (i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '_'))
            return 0;
    return 1;
}

/* outbox_<schema>, lower-cased and cut to 63 characters (a schema name is
 * letters, digits and underscores, so what remains is a valid name). */
static void default_name(const char *schema, char out[64])
{
    size_t i;
    snprintf(out, 64, "outbox_%s", schema && *schema ? schema : "outbox");
    for (i = 0; out[i]; i++)
        if (out[i] >= 'A' && out[i] <= 'Z') out[i] = (char)(out[i] - 'A' + 'a');
}

void outbox__pg_wal_names(const char *schema, const char *slot_opt, const char *pub_opt,
                          char slot[64], char pub[64])
{
    if (slot_opt && *slot_opt)
        snprintf(slot, 64, "%s", slot_opt);
    else
        default_name(schema, slot);
    if (pub_opt && *pub_opt)
        snprintf(pub, 64, "%s", pub_opt);
    else
        default_name(schema, pub);
}

/* OUTBOX_OK when store is an open PostgreSQL store. */
static int store_check(const outbox_store *store, const char *fn, outbox_error *err)
{
    if (store == NULL || store->ops == NULL)
        return outbox__error(err, OUTBOX_EINVAL,
                             "%s: store is NULL (open it with outbox_store_open)", fn);
    if (store->ops != &outbox__store_postgres && store->ops != &outbox__store_postgresql)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "%s: WAL capture is for PostgreSQL stores (postgres://...), not %s:",
                             fn, store->ops->scheme);
#ifdef OUTBOX_HAVE_LIBPQ
    return OUTBOX_OK;
#else
    return outbox__error(err, OUTBOX_ENOTBUILT, "%s: this build has no PostgreSQL store (libpq)",
                         fn);
#endif
}

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"

/* A slot as pg_replication_slots shows it. */
typedef struct slot_row {
    int exists;
    int logical;        /* slot_type is 'logical' */
    char plugin[64];    /* its output plugin, "" for a physical slot */
    char database[128]; /* its database, "" for a physical slot */
    int in_this_db;     /* database is the connection's */
    int active;
    int active_pid;
    char client[160]; /* "[application 'NAME', ]from ADDRESS" of the walsender */
    int lost;         /* wal_status 'lost': the server removed WAL it needed */
} slot_row;

/* The SQLSTATE of a failed result, "" when none. */
static const char *sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

static int invalid_name(const char *what, const char *name, outbox_error *err)
{
    return outbox__error(err, OUTBOX_ECONFIG,
                         "%s name '%.63s' is not accepted: use 1 to 63 characters a-z, 0-9 and _ "
                         "(default outbox_<schema>)",
                         what, name ? name : "(null)");
}

static int check_names(const char *slot, const char *pub, outbox_error *err)
{
    if (!outbox__pg_wal_valid_name(slot)) return invalid_name("replication slot", slot, err);
    if (pub && !outbox__pg_wal_valid_name(pub)) return invalid_name("publication", pub, err);
    return OUTBOX_OK;
}

static int read_slot(PGconn *c, const char *slot, slot_row *out, outbox_error *err)
{
    const char *params[1] = {slot};
    PGresult *res = PQexecParams(
        c,
        "SELECT s.slot_type = 'logical', coalesce(s.plugin, ''), coalesce(s.database, ''),"
        " s.database IS NOT DISTINCT FROM current_database(), s.active,"
        " coalesce(s.active_pid, 0),"
        " CASE WHEN coalesce(a.application_name, '') <> ''"
        "  THEN format('application %L, ', a.application_name) ELSE '' END"
        " || 'from ' || coalesce(host(a.client_addr), 'a local socket'),"
        /* wal_status (PostgreSQL 13+) read so that older servers can drop */
        " coalesce(to_jsonb(s) ->> 'wal_status', '') = 'lost'"
        " FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid"
        " WHERE s.slot_name = $1",
        1, NULL, params, NULL, NULL, 0);
    int code = OUTBOX_OK;

    memset(out, 0, sizeof *out);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(c, res, "reading the replication slot", err);
    } else if (PQntuples(res) == 1) {
        out->exists = 1;
        out->logical = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        snprintf(out->plugin, sizeof out->plugin, "%s", PQgetvalue(res, 0, 1));
        snprintf(out->database, sizeof out->database, "%s", PQgetvalue(res, 0, 2));
        out->in_this_db = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
        out->active = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
        out->active_pid = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 5));
        snprintf(out->client, sizeof out->client, "%s", PQgetvalue(res, 0, 6));
        out->lost = strcmp(PQgetvalue(res, 0, 7), "t") == 0;
    }
    PQclear(res);
    return code;
}

/* A slot that exists must be one capture can stream from here. */
static int check_slot_usable(const char *slot, const slot_row *s, outbox_error *err)
{
    if (!s->logical)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "replication slot %s exists but is a physical slot (a standby's?): "
                             "choose another name with slot=NAME in the store URL",
                             slot);
    if (strcmp(s->plugin, "pgoutput") != 0)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "replication slot %s exists but uses the output plugin %s, not "
                             "pgoutput: choose another name with slot=NAME in the store URL, or "
                             "drop it (SELECT pg_drop_replication_slot('%s')) if nothing uses it",
                             slot, s->plugin, slot);
    if (!s->in_this_db)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "replication slot %s belongs to the database %s, not this one: "
                             "choose another name with slot=NAME in the store URL, or use a "
                             "store URL of that database",
                             slot, s->database);
    if (s->lost)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "replication slot %s is lost: the server removed WAL it still needed "
                             "(max_slot_wal_keep_size was exceeded), and the messages in that WAL "
                             "were not relayed; drop it (outbox wal drop-slot) and run init "
                             "again, then check the destination for what is missing",
                             slot);
    return OUTBOX_OK;
}

/* The server settings and role rights capture needs, checked in the order
 * an operator fixes them; nothing is created before they pass. */
static int check_server(PGconn *c, int *slots_free, outbox_error *err)
{
    PGresult *res =
        PQexec(c, "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),"
                  " pg_encoding_to_char(d.encoding), quote_ident(current_database()),"
                  " coalesce((SELECT rolsuper OR rolreplication FROM pg_roles"
                  "  WHERE rolname = current_user), false),"
                  " quote_ident(current_user), current_setting('max_wal_senders')::int,"
                  " current_setting('max_replication_slots')::int,"
                  " (SELECT count(*) FROM pg_replication_slots)"
                  " FROM pg_database d WHERE d.datname = current_database()");
    int code = OUTBOX_OK, version, senders, slots, used;
    const char *level, *encoding, *db, *role;

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        code = outbox__pg_fail(c, res, "checking the server's settings for WAL capture", err);
        PQclear(res);
        return code;
    }
    version = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    level = PQgetvalue(res, 0, 1);
    encoding = PQgetvalue(res, 0, 2);
    db = PQgetvalue(res, 0, 3);
    role = PQgetvalue(res, 0, 5);
    senders = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 6));
    slots = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 7));
    used = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 8));
    if (version < OUTBOX_PG_WAL_MIN_SERVER)
        code = outbox__error(err, OUTBOX_ECONFIG,
                             "PostgreSQL %d.%d is too old for WAL capture: it needs PostgreSQL 14 "
                             "or newer (pgoutput's messages option); upgrade the server, or use "
                             "capture=table (the default)",
                             version / 10000, version % 10000);
    else if (strcmp(level, "logical") != 0)
        code =
            outbox__error(err, OUTBOX_ECONFIG,
                          "wal_level is %s: set wal_level = logical in postgresql.conf (or ALTER "
                          "SYSTEM SET wal_level = logical) and restart PostgreSQL",
                          level);
    else if (strcmp(encoding, "UTF8") != 0)
        code = outbox__error(err, OUTBOX_ECONFIG,
                             "the database %s uses the encoding %s: WAL capture needs a UTF8 "
                             "database (the messages are UTF-8 text); create one with "
                             "CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0",
                             db, encoding);
    else if (strcmp(PQgetvalue(res, 0, 4), "t") != 0)
        code = outbox__error(err, OUTBOX_ECONFIG,
                             "the role %s lacks REPLICATION, which reading the WAL needs: as a "
                             "superuser, ALTER ROLE %s REPLICATION (and allow it replication "
                             "connections to the database %s in pg_hba.conf)",
                             role, role, db);
    else if (senders < 1)
        code = outbox__error(err, OUTBOX_ECONFIG,
                             "max_wal_senders is 0: the relay's replication connection needs one; "
                             "set max_wal_senders = 10 in postgresql.conf and restart PostgreSQL");
    *slots_free = slots - used;
    PQclear(res);
    return code;
}

static int no_free_slot(outbox_error *err)
{
    return outbox__error(err, OUTBOX_ECONFIG,
                         "no free replication slot: all of max_replication_slots are in use; raise "
                         "max_replication_slots in postgresql.conf and restart PostgreSQL, or drop "
                         "a slot nothing uses (see SELECT * FROM pg_replication_slots)");
}

static int lacks_replication(PGconn *c, PGresult *res, const char *what, outbox_error *err)
{
    char text[400];
    outbox__pg_error_text(c, res, text, sizeof text);
    return outbox__error(err, OUTBOX_ECONFIG,
                         "%s: %s: the role needs REPLICATION (as a superuser: ALTER ROLE <role> "
                         "REPLICATION)",
                         what, text);
}

static int create_publication(PGconn *c, const char *pub, outbox_error *err)
{
    const char *params[1] = {pub};
    PGresult *res = PQexecParams(c, "SELECT 1 FROM pg_publication WHERE pubname = $1", 1, NULL,
                                 params, NULL, NULL, 0);
    char *q, text[400];
    int code = OUTBOX_OK, exists;

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_fail(c, res, "reading the publications", err);
        PQclear(res);
        return code;
    }
    exists = PQntuples(res) > 0;
    PQclear(res);
    if (exists) return OUTBOX_OK;
    q = PQescapeIdentifier(c, pub, strlen(pub));
    if (!q) return outbox__pg_fail(c, NULL, "quoting the publication name", err);
    {
        char sql[128];
        snprintf(sql, sizeof sql, "CREATE PUBLICATION %s", q);
        res = PQexec(c, sql);
    }
    PQfreemem(q);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        /* 42710: another init created it meanwhile, which is what we want. */
        if (strcmp(sqlstate(res), "42710") == 0) {
            code = OUTBOX_OK;
        } else if (strcmp(sqlstate(res), "42501") == 0) {
            outbox__pg_error_text(c, res, text, sizeof text);
            code = outbox__error(err, OUTBOX_ECONFIG,
                                 "creating the publication %s: %s: the role needs CREATE on the "
                                 "database (GRANT CREATE ON DATABASE <db> TO <role>)",
                                 pub, text);
        } else {
            code = outbox__pg_fail(c, res, "creating the publication", err);
        }
    }
    PQclear(res);
    return code;
}

static int create_slot(PGconn *c, const char *slot, int *created, outbox_error *err)
{
    const char *params[1] = {slot};
    /* It waits for the transactions running now to end (the slot's
     * snapshot starts after them); the connection is in none itself. */
    PGresult *res =
        PQexecParams(c, "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')", 1,
                     NULL, params, NULL, NULL, 0);
    const char *state = sqlstate(res);
    int code = OUTBOX_OK;

    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        *created = 1;
    else if (strcmp(state, "42710") == 0)
        code = OUTBOX_OK; /* another init created it meanwhile */
    else if (strcmp(state, "53400") == 0)
        code = no_free_slot(err);
    else if (strcmp(state, "42501") == 0)
        code = lacks_replication(c, res, "creating the replication slot", err);
    else
        code = outbox__pg_fail(c, res, "creating the replication slot", err);
    PQclear(res);
    return code;
}

int outbox__pg_wal_setup(PGconn *c, const char *slot, const char *pub, int *created,
                         outbox_error *err)
{
    slot_row s;
    int code, slots_free = 0, made = 0;

    if (created) *created = 0;
    code = check_names(slot, pub, err);
    if (code == OUTBOX_OK) code = check_server(c, &slots_free, err);
    if (code == OUTBOX_OK) code = read_slot(c, slot, &s, err);
    if (code == OUTBOX_OK && s.exists) code = check_slot_usable(slot, &s, err);
    if (code == OUTBOX_OK && !s.exists && slots_free <= 0) code = no_free_slot(err);
    if (code == OUTBOX_OK) code = create_publication(c, pub, err);
    if (code == OUTBOX_OK && !s.exists) code = create_slot(c, slot, &made, err);
    if (code == OUTBOX_OK && created) *created = made;
    return code;
}

static int slot_busy(const char *slot, const slot_row *s, outbox_error *err)
{
    return outbox__error(err, OUTBOX_EBUSY,
                         "replication slot %s is in use: a relay streams from it (walsender pid "
                         "%d, %s); stop that relay first, then drop the slot again",
                         slot, s->active_pid, s->client);
}

int outbox__pg_wal_drop(PGconn *c, const char *slot, const char *pub, int *pub_kept,
                        outbox_error *err)
{
    slot_row s;
    PGresult *res;
    int code = check_names(slot, pub, err);

    if (pub_kept) *pub_kept = 0;

    if (code == OUTBOX_OK) code = read_slot(c, slot, &s, err);
    if (code != OUTBOX_OK) return code;
    if (s.exists && s.active) return slot_busy(slot, &s, err);
    if (s.exists && s.logical && !s.in_this_db)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "replication slot %s belongs to the database %s: drop it with a "
                             "store URL of that database",
                             slot, s.database);
    if (s.exists) {
        const char *params[1] = {slot};
        const char *state;
        res =
            PQexecParams(c, "SELECT pg_drop_replication_slot($1)", 1, NULL, params, NULL, NULL, 0);
        state = sqlstate(res);
        if (PQresultStatus(res) == PGRES_TUPLES_OK || strcmp(state, "42704") == 0) {
            code = OUTBOX_OK; /* 42704: dropped meanwhile */
        } else if (strcmp(state, "55006") == 0) {
            /* A relay connected between the check and the drop. */
            PQclear(res);
            code = read_slot(c, slot, &s, err);
            return code != OUTBOX_OK ? code : slot_busy(slot, &s, err);
        } else if (strcmp(state, "42501") == 0) {
            code = lacks_replication(c, res, "dropping the replication slot", err);
        } else {
            code = outbox__pg_fail(c, res, "dropping the replication slot", err);
        }
        PQclear(res);
        if (code != OUTBOX_OK) return code;
    }
    if (pub) {
        /* The publication is named at START_REPLICATION, not kept with a
         * slot: while another pgoutput slot of this database exists, a relay
         * (another schema's, or one with slot=) may stream with it, and
         * dropping it would stop that relay.  It is empty: keeping it costs
         * nothing. */
        char *q;
        char sql[128];
        res = PQexec(c, "SELECT count(*) FROM pg_replication_slots"
                        " WHERE plugin = 'pgoutput' AND database = current_database()");
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            code = outbox__pg_fail(c, res, "looking for other pgoutput slots", err);
            PQclear(res);
            return code;
        }
        if (strtoll(PQgetvalue(res, 0, 0), NULL, 10) > 0) {
            PQclear(res);
            if (pub_kept) *pub_kept = 1;
            return OUTBOX_OK;
        }
        PQclear(res);
        q = PQescapeIdentifier(c, pub, strlen(pub));
        if (!q) return outbox__pg_fail(c, NULL, "quoting the publication name", err);
        snprintf(sql, sizeof sql, "DROP PUBLICATION IF EXISTS %s", q);
        PQfreemem(q);
        code = outbox__pg_exec(c, sql, "dropping the publication", err);
    }
    return code;
}

/* lag_us: PostgreSQL records no time for a WAL position, so the age of
 * the oldest unconfirmed message is approximated from what the server
 * does record.  While a relay streams: the walsender's flush_lag (how long
 * the relay took to confirm what was sent to it; NULL, so 0, once it has
 * caught up).  While none does: the time since the slot became inactive
 * (PostgreSQL 17's inactive_since) when the slot lags; before 17 the
 * server does not say, and lag_us is 0 (unknown).  lag_bytes is exact on
 * every version: alert on it. */
int outbox__pg_wal_lag(PGconn *c, const char *slot, outbox_pg_wal_lag *out, outbox_error *err)
{
    const char *params[1] = {slot};
    const char *idle_age = PQserverVersion(c) >= 170000
                               ? "(extract(epoch FROM now() - s.inactive_since) * 1000000)::bigint"
                               : "NULL::bigint";
    char sql[1200];
    PGresult *res;
    int code = OUTBOX_OK;

    memset(out, 0, sizeof *out);
    out->keep_size_mb = -1;
    if (!outbox__pg_wal_valid_name(slot)) return invalid_name("replication slot", slot, err);
    snprintf(sql, sizeof sql,
             "SELECT coalesce((SELECT setting::bigint FROM pg_settings"
             "  WHERE name = 'max_slot_wal_keep_size'), -1),"
             " s.slot_name IS NOT NULL, coalesce(s.active, false), coalesce(s.active_pid, 0),"
             " coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()"
             "  THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,"
             "  s.confirmed_flush_lsn), 0)::bigint,"
             " CASE WHEN s.active THEN coalesce((extract(epoch FROM r.flush_lag) * 1000000)"
             "  ::bigint, 0) ELSE coalesce(%s, 0) END"
             " FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1"
             " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
             idle_age);
    res = outbox__pg_conn_query(c, sql, 1, params);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        code = outbox__pg_fail(c, res, "reading the replication slot's lag", err);
        PQclear(res);
        return code;
    }
    out->keep_size_mb = outbox__pg_parse_i64(PQgetvalue(res, 0, 0));
    out->exists = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    out->active = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    out->active_pid = (int)outbox__pg_parse_i64(PQgetvalue(res, 0, 3));
    out->lag_bytes = outbox__pg_parse_i64(PQgetvalue(res, 0, 4));
    out->lag_us = out->lag_bytes > 0 ? outbox__pg_parse_i64(PQgetvalue(res, 0, 5)) : 0;
    if (out->lag_bytes < 0) out->lag_bytes = 0;
    if (out->lag_us < 0) out->lag_us = 0;
    PQclear(res);
    return code;
}

/* ------------------------------------------------------------------------
 * Through the store handle: status, and the public outbox_store_wal_*
 * ---------------------------------------------------------------------- */

/* The store's slot and publication: slot_opt and pub_opt when given, else
 * outbox_<schema>.  (The URL's slot= and publication= come in here.) */
/* The names given to the call, else the store URL's (slot=, publication=,
 * or their defaults from the schema, set at open). */
static void store_names(const pg_store *st, const char *slot_opt, const char *pub_opt,
                        char slot[64], char pub[64])
{
    outbox__pg_wal_names(st->schema, slot_opt && *slot_opt ? slot_opt : st->slot,
                         pub_opt && *pub_opt ? pub_opt : st->publication, slot, pub);
}

int outbox__pg_wal_status(struct pg_store *st, outbox_status *out, outbox_error *err)
{
    outbox_pg_wal_lag lag;
    outbox_error lag_err = {0, ""};
    char slot[64], pub[64];
    int code;

    /* Capture makes no slot on a server older than 14 (and the lag query
     * needs pg_current_wal_lsn, which came with 10): nothing to read. */
    if (PQserverVersion(st->conn) < OUTBOX_PG_WAL_MIN_SERVER) return OUTBOX_OK;
    store_names(st, NULL, NULL, slot, pub);
    code = outbox__pg_wal_lag(st->conn, slot, &lag, &lag_err);
    if (code != OUTBOX_OK) {
        /* The slot is an addition to the counts: a server that will not
         * say (a restricted role, a view changed) costs only the slot's
         * lines, unless the connection itself is gone. */
        if (PQstatus(st->conn) == CONNECTION_BAD) {
            if (err) *err = lag_err;
            return code;
        }
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "status: the replication slot's lag is unknown: %s",
                    lag_err.message);
        return OUTBOX_OK;
    }
    if (!lag.exists) return OUTBOX_OK;
    snprintf(out->wal_slot, sizeof out->wal_slot, "%s", slot);
    out->wal_slot_exists = 1;
    out->wal_slot_active = lag.active;
    out->wal_lag_bytes = lag.lag_bytes;
    out->wal_lag_us = lag.lag_us;
    return OUTBOX_OK;
}

/* Checks the names given, connects st and fills w's names. */
static int wal_store(pg_store *st, const char *slot_opt, const char *pub_opt, outbox_wal_slot *w,
                     outbox_error *err)
{
    int code;
    if (slot_opt && *slot_opt && !outbox__pg_wal_valid_name(slot_opt))
        return invalid_name("replication slot", slot_opt, err);
    if (pub_opt && *pub_opt && !outbox__pg_wal_valid_name(pub_opt))
        return invalid_name("publication", pub_opt, err);
    code = outbox__pg_need_conn(st, err);
    if (code != OUTBOX_OK) return code;
    outbox__pg_end_claim(st);
    store_names(st, slot_opt, pub_opt, w->slot, w->publication);
    return OUTBOX_OK;
}

/* Reads the slot's state into w. */
static int wal_state(pg_store *st, outbox_wal_slot *w, outbox_error *err)
{
    outbox_pg_wal_lag lag;
    int code = outbox__pg_wal_lag(st->conn, w->slot, &lag, err);
    if (code != OUTBOX_OK) return code;
    w->exists = lag.exists;
    w->active = lag.active;
    w->active_pid = lag.active_pid;
    w->lag_bytes = lag.lag_bytes;
    w->lag_us = lag.lag_us;
    w->keep_size_mb = lag.keep_size_mb;
    return OUTBOX_OK;
}

/* Setup: creates, then reads the state left.  Drop: reads the state
 * found, then drops. */
static int wal_run(pg_store *st, int drop, const char *slot, const char *publication,
                   outbox_wal_slot *w, outbox_error *err)
{
    int code = wal_store(st, slot, publication, w, err);
    if (code == OUTBOX_OK && !drop)
        code = outbox__pg_wal_setup(st->conn, w->slot, w->publication, &w->created, err);
    if (code == OUTBOX_OK) code = wal_state(st, w, err);
    if (code == OUTBOX_OK && drop)
        code = outbox__pg_wal_drop(st->conn, w->slot, w->publication, &w->publication_kept, err);
    return code;
}

#endif /* OUTBOX_HAVE_LIBPQ */

/* outbox_store_wal_setup (drop 0) and outbox_store_wal_drop (drop 1):
 * out gets out_size bytes of the result (an older caller's struct is
 * shorter), the names even on failure. */
static int wal_call(outbox_store *store, const char *fn, int drop, const char *slot,
                    const char *publication, outbox_wal_slot *out, size_t out_size,
                    outbox_error *err)
{
    outbox_wal_slot w;
    int code = store_check(store, fn, err);

    memset(&w, 0, sizeof w);
#ifdef OUTBOX_HAVE_LIBPQ
    if (code == OUTBOX_OK) code = wal_run(store->state, drop, slot, publication, &w, err);
#else
    (void)drop, (void)slot, (void)publication;
#endif
    if (out) memcpy(out, &w, out_size < sizeof w ? out_size : sizeof w);
    return code;
}

int outbox_store_wal_setup(outbox_store *store, const char *slot, const char *publication,
                           outbox_wal_slot *out, size_t out_size, outbox_error *err)
{
    return wal_call(store, "outbox_store_wal_setup", 0, slot, publication, out, out_size, err);
}

int outbox_store_wal_drop(outbox_store *store, const char *slot, const char *publication,
                          outbox_wal_slot *out, size_t out_size, outbox_error *err)
{
    return wal_call(store, "outbox_store_wal_drop", 1, slot, publication, out, out_size, err);
}

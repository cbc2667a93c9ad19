/*
 * test_store_pg_operator.c - the PostgreSQL store under an operator's
 * hands, on a real server (tests/support/pg.h): every odd value the SQL function
 * or a plain INSERT can store is refused by the table (schema version 5)
 * or, written before it, quarantined by the claim (plain and pipelined)
 * while the other aggregates flow; status, list and show work whatever a
 * row holds; drop (all or nothing, archive first) and the blocked counts;
 * the schema version refused when newer by every entry point, on the
 * store's and on the caller's connections; init on tables without a meta
 * row, on a corrupt one, as a role that cannot create, and with another
 * partition count; one-line logs and notices through the log callback;
 * the claim as fast before the table's first ANALYZE as after;
 * relay instances told apart in status (notes, gone holders, rows of dead
 * relays deleted); and two relay processes sharing a --name draining
 * together without duplicates and in per-aggregate order; a relay started
 * before PostgreSQL waits for it, and its JSON log stays one object per
 * line through a restart.
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "skipped: this build has no PostgreSQL store (libpq not found)\n");
    return 77;
}
#else

#include "internal.h"

#include "support/chaos.h"
#include "support/pg.h"
#include "support/store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

static pgh_server server;
static char url[700];

/* The last sql_state's error: its primary message and constraint name
 * ("" when none). */
static char last_message[512], last_constraint[64];

/* Runs sql and returns its SQLSTATE ("" when it succeeded). */
static const char *sql_state(PGconn *c, const char *sql)
{
    static char state[8];
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *m = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *k = PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME);
    snprintf(state, sizeof state, "%s",
             st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? ""
             : s                                             ? s
                                                             : "?");
    snprintf(last_message, sizeof last_message, "%s", m ? m : "");
    snprintf(last_constraint, sizeof last_constraint, "%s", k ? k : "");
    PQclear(r);
    return state;
}

/* printf into a static buffer, for one SQL statement at a time. */
static const char *sqlf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *sqlf(const char *fmt, ...)
{
    static char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return sql;
}

#define execf(c, ...) pgh_exec((c), sqlf(__VA_ARGS__))
#define countf(c, ...) pgh_count((c), sqlf(__VA_ARGS__))

static outbox_msg *make_msg(const char *agg, const char *payload)
{
    outbox_msg *m = NULL;
    outbox_error err;
    ASSERT_OK(outbox_msg_new(&m, "Tick", "Agg", agg, payload, &err), &err);
    return m;
}

/* ------------------------------------------------------------------------
 * Odd values: refused by the table, or quarantined
 * ---------------------------------------------------------------------- */

typedef struct odd_value {
    const char *what;
    const char *column;
    const char *value; /* SQL expression */
    const char *field; /* in last_error when quarantined; NULL: published */
    int own_aggregate; /* the value is the aggregate id: no neighbours */
    int table_accepts; /* version 5's checks let it in (the claim does not) */
} odd_value;

static const odd_value odd[] = {
    {"occurred_at infinity", "occurred_at", "'infinity'", "occurred_at", 0, 0},
    {"occurred_at -infinity", "occurred_at", "'-infinity'", "occurred_at", 0, 0},
    {"occurred_at in the year 20000", "occurred_at", "'20000-01-01 00:00:00+00'", "occurred_at", 0,
     0},
    {"occurred_at in 1900", "occurred_at", "'1900-01-01 00:00:00+00'", "occurred_at", 0, 0},
    {"a number as a header value", "headers", "'{\"a\":1}'", "header \"a\"", 0, 0},
    {"a control character in a header value", "headers", "'{\"a\":\"x\\u0001y\"}'",
     "control character", 0, 0},
    {"a control character in a header name", "headers", "'{\"a\\u001fb\":\"v\"}'",
     "control character", 0, 0},
    {"a malformed traceparent", "headers", "'{\"traceparent\":\"zz\"}'", "traceparent", 0, 0},
    {"a malformed TraceParent (not the W3C spelling)", "headers",
     "'{\"TraceParent\":\"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01\"}'",
     "header \"TraceParent\" is not W3C", 0, 1},
    {"a blank type", "type", "'  '", "type is blank", 0, 0},
    {"a control character in the type", "type", "E'T\\x07'", "type contains control", 0, 0},
    {"a 300-byte aggregate type", "aggregate_type", "repeat('t', 300)", "aggregate_type", 0, 0},
    {"a 100 KB aggregate id", "aggregate_id", "repeat('x', 100000)", "aggregate_id", 1, 0},
    {"a 100 KB aggregate id that does not compress", "aggregate_id",
     "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3200) i)", "aggregate_id", 1, 0},
    {"the nil id", "id", "'00000000-0000-0000-0000-000000000000'", "id \"", 0, 0},
    {"available_at infinity", "available_at", "'infinity'", NULL, 0, 0},
    {"available_at -infinity", "available_at", "'-infinity'", NULL, 0, 0},
    {"a JSON null payload", "payload", "'null'", NULL, 0, 0},
};
#define ODD_COUNT (sizeof odd / sizeof odd[0])

/* Whether the library's enqueue refuses a JSON null payload (the table and
 * the claim follow it). */
static int null_payload_refused(void)
{
    outbox_msg *m = NULL;
    outbox_error err;
    int rc = outbox_msg_new(&m, "T", "", "a", "null", &err);
    outbox_msg_free(m);
    return rc != OUTBOX_OK;
}

/* What happens to odd[i]: its field word when quarantined, NULL when
 * published. */
static const char *odd_field(size_t i)
{
    if (strcmp(odd[i].column, "payload") == 0) return null_payload_refused() ? "payload" : NULL;
    return odd[i].field;
}

/* INSERTs a row with every column at a plain value except `column`, which
 * gets `value` (both NULL: none odd). */
static const char *insert_row(PGconn *c, const char *agg, int n, const char *column,
                              const char *value)
{
    static const char *const cols[] = {"id",      "type",    "aggregate_type", "aggregate_id",
                                       "payload", "headers", "occurred_at",    "available_at"};
    char vals[8][128], sql[1024];
    size_t o = 0;
    snprintf(vals[0], sizeof vals[0], "gen_random_uuid()");
    snprintf(vals[1], sizeof vals[1], "'Tick'");
    snprintf(vals[2], sizeof vals[2], "'Agg'");
    snprintf(vals[3], sizeof vals[3], "'%s'", agg);
    snprintf(vals[4], sizeof vals[4], "'{\"n\":%d}'", n);
    snprintf(vals[5], sizeof vals[5], "'{}'");
    snprintf(vals[6], sizeof vals[6], "now()");
    snprintf(vals[7], sizeof vals[7], "now()");
    for (int k = 0; column && k < 8; k++)
        if (strcmp(cols[k], column) == 0) snprintf(vals[k], sizeof vals[k], "%s", value);
    o += (size_t)snprintf(sql + o, sizeof sql - o,
                          "INSERT INTO outbox.outbox (id, type, aggregate_type, aggregate_id,"
                          " payload, headers, occurred_at, available_at) VALUES (");
    for (int k = 0; k < 8; k++)
        o += (size_t)snprintf(sql + o, sizeof sql - o, "%s%s", k ? ", " : "", vals[k]);
    snprintf(sql + o, sizeof sql - o, ")");
    return sql_state(c, sql);
}

static void reset_outbox(PGconn *c)
{
    pgh_exec(c, "DELETE FROM outbox.outbox");
}

/* Version 5's table refuses the odd values (SQLSTATE 23514); what it lets
 * in is published when enqueue accepts it and quarantined otherwise; the
 * SQL function refuses non-finite and absurd times with a message naming
 * occurred_at. */
TEST(odd_values_refused_by_table)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    int accepted = 0;

    reset_outbox(c);
    for (size_t i = 0; i < ODD_COUNT; i++) {
        char agg[32];
        const char *state;
        int accepts = odd[i].table_accepts || !odd_field(i);
        snprintf(agg, sizeof agg, "odd-%zu", i);
        state = insert_row(c, agg, 1, odd[i].column, odd[i].value);
        if (strcmp(odd[i].column, "available_at") == 0) accepts = 0; /* refused, not published */
        if (accepts) {
            if (*state) TEST_FAIL_("%s: refused (%s), expected to be let in", odd[i].what, state);
            accepted++;
            continue;
        }
        if (strcmp(state, "23514") != 0)
            TEST_FAIL_("%s: INSERT gave SQLSTATE '%s', expected 23514 (check_violation)",
                       odd[i].what, state);
        /* Since version 8 the refusal says which rule, as enqueue would,
         * and still names the constraint. */
        if (strncmp(last_message, "a pending row of outbox.outbox: ", 32) != 0 ||
            !strstr(last_message + 32,
                    strcmp(odd[i].column, "headers") == 0 ? "header" : odd[i].column))
            TEST_FAIL_("%s: refused with \"%s\", expected \"a pending row of outbox.outbox: "
                       "...\" naming %s",
                       odd[i].what, last_message, odd[i].column);
        ASSERT_STREQ(last_constraint, "outbox_pending_valid");
    }
    /* What the table lets in is published when enqueue accepts it, and
     * quarantined otherwise. */
    ASSERT_STREQ(insert_row(c, "clean", 0, NULL, NULL), "");
    sh_store_open(&s, url);
    for (int round = 0; round < 10; round++) {
        outbox_msg **msgs = NULL;
        size_t n = sh_claim(&s, 0, 100, &msgs);
        if (n == 0) break;
        sh_complete_sent(&s, 0, msgs, n);
        sh_free_msgs(msgs, n);
    }
    outbox__store_close(&s);
    for (size_t i = 0; i < ODD_COUNT; i++) {
        if (!odd[i].table_accepts) continue;
        ASSERT_EQ(countf(c,
                         "SELECT count(*) FROM outbox.outbox WHERE aggregate_id = 'odd-%zu'"
                         " AND status = 'failed' AND last_error LIKE '%%%s%%'",
                         i, odd[i].field),
                  1);
    }
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'pending'"), 0);
    ASSERT(accepted > 0);
    reset_outbox(c);

    /* A row that is not pending is not published: the checks leave it be
     * (the claim must be able to mark any row Failed). */
    ASSERT_STREQ(sql_state(c, "INSERT INTO outbox.outbox (id, type, aggregate_id, payload,"
                              " occurred_at, status) VALUES (gen_random_uuid(), 'T', 'a', '{}',"
                              " 'infinity', 'failed')"),
                 "");
    ASSERT_STREQ(sql_state(c, "UPDATE outbox.outbox SET status = 'pending'"), "23514");
    ASSERT_STREQ(last_message,
                 "a pending row of outbox.outbox: occurred_at infinity is outside the years 1970 "
                 "to 9999");

    /* The SQL function. */
    const char *fn[] = {"SELECT outbox.enqueue('T', 'a', '{}', occurred_at => 'infinity')",
                        "SELECT outbox.enqueue('T', 'a', '{}', occurred_at => '-infinity')",
                        "SELECT outbox.enqueue('T', 'a', '{}', occurred_at => '1960-01-01')"};
    for (size_t i = 0; i < sizeof fn / sizeof fn[0]; i++) {
        PGresult *r = PQexec(c, fn[i]);
        ASSERT_EQ(PQresultStatus(r), PGRES_FATAL_ERROR);
        ASSERT_STREQ(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22023");
        ASSERT_CONTAINS(PQresultErrorMessage(r), "occurred_at");
        PQclear(r);
    }
    ASSERT_STREQ(sql_state(c, "SELECT outbox.enqueue('T', ' ', '{}')"), "22023");
    ASSERT_STREQ(sql_state(c, "SELECT outbox.enqueue('T', 'a', '{}', id =>"
                              " '00000000-0000-0000-0000-000000000000')"),
                 "22023");
    /* Trace-context versions other than 00 may carry more fields, as in the
     * C library; 00 may not. */
    ASSERT_STREQ(sql_state(c, "SELECT outbox.enqueue('T', 'a', '{}', '{\"TraceParent\":"
                              "\"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x\"}')"),
                 "");
    ASSERT_STREQ(sql_state(c, "SELECT outbox.enqueue('T', 'a', '{}', '{\"traceparent\":"
                              "\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x\"}')"),
                 "22023");
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'pending'"), 1);
    reset_outbox(c);
    PQfinish(c);
}

/* Takes the schema back to version 4 (no checks) so that rows can be
 * written as before the upgrade. */
static void back_to_version_4(PGconn *c)
{
    pgh_exec(c, "ALTER TABLE outbox.outbox DROP CONSTRAINT IF EXISTS outbox_id_valid,"
                " DROP CONSTRAINT IF EXISTS outbox_type_valid,"
                " DROP CONSTRAINT IF EXISTS outbox_aggregate_valid,"
                " DROP CONSTRAINT IF EXISTS outbox_headers_valid,"
                " DROP CONSTRAINT IF EXISTS outbox_times_valid,"
                " DROP CONSTRAINT IF EXISTS outbox_pending_valid");
    pgh_exec(c, "UPDATE outbox.meta SET value = '4' WHERE key = 'schema_version'");
}

typedef struct listed {
    int rows;
    int64_t clamped; /* occurred_at of the row from odd[0] (infinity) */
} listed;

static int count_listed(void *user, const outbox_msg *m)
{
    listed *l = user;
    l->rows++;
    if (strcmp(outbox_msg_aggregate_id(m), "odd-0") == 0 && outbox_msg_occurred_at(m) > 0 &&
        strstr(outbox_msg_payload(m), "1") != NULL)
        l->clamped = outbox_msg_occurred_at(m);
    return 0;
}

typedef struct archived {
    size_t n;
    int64_t clamped;
    int with_errors;
} archived;

static int archive_collect(void *user, outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    archived *a = user;
    (void)err;
    a->n += n;
    for (size_t i = 0; i < n; i++) {
        if (msgs[i]->status == OUTBOX_STATUS_FAILED && msgs[i]->last_error &&
            strstr(msgs[i]->last_error, "stored message seq") != NULL && msgs[i]->attempts == 1)
            a->with_errors++;
        if (strcmp(msgs[i]->aggregate_id, "odd-0") == 0) a->clamped = msgs[i]->occurred_at;
    }
    return OUTBOX_OK;
}

/* Rows written before version 5 with every odd value, each between two
 * plain messages of its aggregate, among ten clean aggregates: status,
 * list and show work; the claim publishes the clean aggregates and the
 * messages before each odd row, marks each odd row Failed with the field
 * in last_error (logged at error level with seq and id), and holds the
 * message after it; retry leaves such rows Failed; drop archives them and
 * the held messages flow. */
static void quarantine_scenario(int pipelined)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    outbox_buf logs;
    int64_t odd_seq[ODD_COUNT];
    char odd_id[ODD_COUNT][40];
    int clean_seen[10] = {0}, before_seen[ODD_COUNT] = {0}, after_seen[ODD_COUNT] = {0};
    int quarantined = 0, held = 0;

    reset_outbox(c);
    back_to_version_4(c);
    for (size_t i = 0; i < ODD_COUNT; i++) {
        char agg[32];
        snprintf(agg, sizeof agg, "odd-%zu", i);
        if (!odd[i].own_aggregate) ASSERT_STREQ(insert_row(c, agg, 0, NULL, NULL), "");
        ASSERT_STREQ(insert_row(c, agg, 1, odd[i].column, odd[i].value), "");
        if (!odd[i].own_aggregate) ASSERT_STREQ(insert_row(c, agg, 2, NULL, NULL), "");
        for (int k = 0; k < 10; k++) {
            char clean[16];
            snprintf(clean, sizeof clean, "clean-%d", k);
            ASSERT_STREQ(insert_row(c, clean, (int)i, NULL, NULL), "");
        }
        {
            PGresult *r = PQexec(c, "SELECT seq, id FROM outbox.outbox WHERE payload = '{\"n\":1}'"
                                    " AND aggregate_id NOT LIKE 'clean-%' ORDER BY seq DESC"
                                    " LIMIT 1");
            ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
            odd_seq[i] = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            snprintf(odd_id[i], sizeof odd_id[i], "%s", PQgetvalue(r, 0, 1));
            PQclear(r);
        }
    }
    sh_store_open(&s, url);
    ASSERT_EQ(s.ops->check_schema(s.state, &err), OUTBOX_ENOSCHEMA); /* version 4 */
    {
        int from = 0, to = 0;
        ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
        ASSERT_EQ(from, 4);
        ASSERT_EQ(to, 9);
    }
    /* The checks came back without judging the old rows (one constraint
     * since version 7). */
    ASSERT_EQ(countf(c,
                     "SELECT count(*) FROM pg_constraint WHERE conrelid = 'outbox.outbox'::regclass"
                     " AND conname LIKE 'outbox_%%_valid' AND NOT convalidated"),
              1);

    /* Status, list and show serve every row, odd or not. */
    {
        outbox_status st;
        listed l = {0, 0};
        outbox_msg *m = NULL;
        int64_t rows = 0;
        for (size_t i = 0; i < ODD_COUNT; i++)
            rows += odd[i].own_aggregate ? 11 : 13;
        ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
        ASSERT_EQ(st.pending, rows);
        ASSERT_OK(s.ops->list(s.state, NULL, count_listed, &l, &err), &err);
        ASSERT_EQ(l.rows, rows);
        ASSERT_EQ(l.clamped,
                  INT64_C(253402300799999999)); /* infinity: the last microsecond of 9999 */
        for (size_t i = 0; i < ODD_COUNT; i++) {
            ASSERT_OK(s.ops->get(s.state, odd_id[i], &m, &err), &err);
            ASSERT_EQ(m->seq, odd_seq[i]);
            outbox_msg_free(m);
        }
        if (getenv("OUTBOX_BIN")) {
            char cmd[1200];
            snprintf(cmd, sizeof cmd, "'%s' status --store '%s' >/dev/null 2>&1", test_outbox_bin(),
                     url);
            ASSERT_EQ(system(cmd), 0);
            snprintf(cmd, sizeof cmd, "'%s' list --store '%s' >/dev/null 2>&1", test_outbox_bin(),
                     url);
            ASSERT_EQ(system(cmd), 0);
            snprintf(cmd, sizeof cmd, "'%s' show --store '%s' %s >/dev/null 2>&1",
                     test_outbox_bin(), url, odd_id[0]);
            ASSERT_EQ(system(cmd), 0);
        }
    }

    outbox__buf_init(&logs);
    outbox_log_set(sh_capture_log, &logs, OUTBOX_LOG_INFO);
    for (int round = 0; round < 200; round++) {
        outbox_msg **msgs = NULL;
        size_t n = sh_claim(&s, pipelined, 7, &msgs);
        if (n == 0) break;
        for (size_t k = 0; k < n; k++) {
            const char *agg = msgs[k]->aggregate_id;
            const char *digits = strpbrk(msgs[k]->payload, "0123456789");
            int v = digits ? atoi(digits) : -1;
            if (strncmp(agg, "clean-", 6) == 0) {
                int a = atoi(agg + 6);
                if (v != clean_seen[a])
                    TEST_FAIL_("%s: got n=%d, expected %d", agg, v, clean_seen[a]);
                clean_seen[a]++;
            } else if (strncmp(agg, "odd-", 4) == 0) {
                size_t i = (size_t)atoi(agg + 4);
                if (v == 0)
                    before_seen[i]++;
                else if (v == 2)
                    after_seen[i]++;
                else if (odd_field(i) != NULL)
                    TEST_FAIL_("%s (seq %lld) was published", odd[i].what, (long long)odd_seq[i]);
            }
        }
        sh_complete_sent(&s, pipelined, msgs, n);
        sh_free_msgs(msgs, n);
    }
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);

    for (int a = 0; a < 10; a++)
        ASSERT_EQ(clean_seen[a], (int)ODD_COUNT);
    for (size_t i = 0; i < ODD_COUNT; i++) {
        const char *field = odd_field(i);
        char line[200];
        if (!odd[i].own_aggregate) ASSERT_EQ(before_seen[i], 1);
        if (!field) {
            /* What the library accepts flows, neighbours included. */
            if (!odd[i].own_aggregate) ASSERT_EQ(after_seen[i], 1);
            ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE seq = %lld",
                             (long long)odd_seq[i]),
                      0);
            continue;
        }
        quarantined++;
        ASSERT_EQ(countf(c,
                         "SELECT count(*) FROM outbox.outbox WHERE seq = %lld AND status ="
                         " 'failed' AND attempts = 1",
                         (long long)odd_seq[i]),
                  1);
        {
            char sql[200];
            snprintf(sql, sizeof sql, "SELECT last_error FROM outbox.outbox WHERE seq = %lld",
                     (long long)odd_seq[i]);
            PGresult *r = PQexec(c, sql);
            char prefix[64];
            ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
            snprintf(prefix, sizeof prefix, "stored message seq %lld: ", (long long)odd_seq[i]);
            if (strncmp(PQgetvalue(r, 0, 0), prefix, strlen(prefix)) != 0 ||
                strstr(PQgetvalue(r, 0, 0), field) == NULL)
                TEST_FAIL_("%s: last_error '%s', expected '%s...%s'", odd[i].what,
                           PQgetvalue(r, 0, 0), prefix, field);
            PQclear(r);
        }
        snprintf(line, sizeof line, "E quarantined stored message seq %lld (id %s)",
                 (long long)odd_seq[i], odd_id[i]);
        ASSERT_CONTAINS(logs.data, line);
        if (!odd[i].own_aggregate) {
            /* Held behind its Failed predecessor. */
            ASSERT_EQ(after_seen[i], 0);
            held++;
        }
    }
    ASSERT(logs.data == NULL || strstr(logs.data, "store error") == NULL);
    outbox__buf_free(&logs);

    {
        outbox_status st;
        ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
        ASSERT_EQ(st.failed, quarantined);
        ASSERT_EQ(st.blocked, held);
        ASSERT_EQ(st.aggregates_blocked, held);
    }
    /* The table will not take them back as pending: retry leaves them. */
    int64_t requeued = -1;
    {
        int64_t count = -1;
        ASSERT_EQ(s.ops->retry(s.state, (const char *const[]){odd_id[0]}, 1, 0, &count, &err),
                  OUTBOX_EINVAL);
        ASSERT_CONTAINS(err.message, "refuses");
        ASSERT_OK(s.ops->retry(s.state, NULL, 0, 1, &count, &err), &err);
        ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'failed'"),
                  quarantined - count);
        ASSERT(count < quarantined);
        requeued = count;
    }
    /* Drop archives what it deletes, as stored; then the held messages
     * flow. */
    {
        archived a = {0, 0, 0};
        int64_t count = 0, left;
        ASSERT_OK(s.ops->drop(s.state, NULL, 0, 1, archive_collect, &a, &count, &err), &err);
        ASSERT_EQ(count, (int64_t)a.n);
        ASSERT_EQ(a.clamped, INT64_C(253402300799999999));
        ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'failed'"), 0);
        for (int round = 0; round < 50; round++) {
            outbox_msg **msgs = NULL;
            size_t n = sh_claim(&s, pipelined, 100, &msgs);
            if (n == 0) break;
            sh_complete_sent(&s, pipelined, msgs, n);
            sh_free_msgs(msgs, n);
        }
        /* Left: what retry put back (the table lets it in) and the claim
         * quarantined again, and what waits behind it. */
        left = countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'failed'");
        ASSERT_EQ(left, requeued);
        ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox o WHERE status = 'pending' AND"
                            " NOT EXISTS (SELECT 1 FROM outbox.outbox f WHERE f.status = 'failed'"
                            " AND f.aggregate_id = o.aggregate_id AND f.seq < o.seq)"),
                  0);
    }
    outbox__store_close(&s);
    PQfinish(c);
}

TEST(odd_rows_quarantined_plain)
{
    quarantine_scenario(0);
}

TEST(odd_rows_quarantined_pipelined)
{
    quarantine_scenario(1);
}

/* A relay (in-process destination) drains around an undecodable row in
 * one --once run: no store error, everything else published. */
static int count_publish(void *user, const outbox_msg *msg, outbox_error *err)
{
    (void)msg;
    (void)err;
    (*(int *)user)++;
    return OUTBOX_OK;
}

TEST(relay_once_around_odd_row)
{
    PGconn *c = pgh_connect(&server);
    outbox_relay_options o;
    outbox_relay *r = NULL;
    outbox_error err;
    int published = 0;

    reset_outbox(c);
    back_to_version_4(c);
    ASSERT_STREQ(insert_row(c, "bad", 0, "occurred_at", "'infinity'"), "");
    ASSERT_STREQ(insert_row(c, "bad", 1, NULL, NULL), "");
    for (int i = 0; i < 50; i++) {
        char agg[16];
        snprintf(agg, sizeof agg, "good-%d", i % 5);
        ASSERT_STREQ(insert_row(c, agg, i, NULL, NULL), "");
    }
    ASSERT_OK(outbox_schema_init_pg(c, NULL, &err), &err);
    outbox_relay_options_init(&o);
    o.once = 1;
    o.publish = count_publish;
    o.publish_user = &published;
    o.batch_size = 8;
    ASSERT_OK(outbox_relay_new(&r, url, NULL, &o, &err), &err);
    ASSERT_OK(outbox_relay_run(r, &err), &err);
    outbox_relay_free(r);
    ASSERT_EQ(published, 50);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'failed'"), 1);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox WHERE status = 'pending'"), 1);
    reset_outbox(c);
    PQfinish(c);
}

/* ------------------------------------------------------------------------
 * drop and the blocked counts
 * ---------------------------------------------------------------------- */

typedef struct drop_seen {
    int calls;
    size_t n;
    char last_error[64];
    int attempts;
    int refuse;
} drop_seen;

static int archive_check(void *user, outbox_msg *const *msgs, size_t n, outbox_error *err)
{
    drop_seen *d = user;
    d->calls++;
    d->n += n;
    if (n > 0) {
        snprintf(d->last_error, sizeof d->last_error, "%s",
                 msgs[0]->last_error ? msgs[0]->last_error : "");
        d->attempts = msgs[0]->attempts;
    }
    if (d->refuse) return outbox__error(err, OUTBOX_EIO, "archive file is full");
    return OUTBOX_OK;
}

static void enqueue_named(outbox_store *s, const char *agg, int n, char id[40])
{
    char payload[32];
    outbox_error err;
    snprintf(payload, sizeof payload, "{\"n\":%d}", n);
    outbox_msg *m = make_msg(agg, payload);
    ASSERT_OK(s->ops->enqueue(s->state, m, &err), &err);
    snprintf(id, 40, "%s", outbox_msg_id(m));
    outbox_msg_free(m);
}

TEST(drop_and_blocked)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    outbox_status st;
    char a[3][40], b[2][40], cc[40];
    int64_t count = -1;
    drop_seen d;

    reset_outbox(c);
    sh_store_open(&s, url);
    for (int i = 0; i < 3; i++)
        enqueue_named(&s, "A", i, a[i]);
    for (int i = 0; i < 2; i++)
        enqueue_named(&s, "B", i, b[i]);
    enqueue_named(&s, "C", 0, cc);
    execf(c,
          "UPDATE outbox.outbox SET status = 'failed', attempts = 3, last_error = 'boom'"
          " WHERE id IN ('%s', '%s')",
          a[1], b[0]);
    ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
    ASSERT_EQ(st.failed, 2);
    ASSERT_EQ(st.pending, 4);
    ASSERT_EQ(st.blocked, 2); /* A's third, B's second */
    ASSERT_EQ(st.aggregates_blocked, 2);

    /* All or nothing: an unknown id, a pending one, a malformed one. */
    const char *unknown[] = {a[1], "0190a0a0-0000-7000-8000-00000000dead"};
    ASSERT_EQ(s.ops->drop(s.state, unknown, 2, 0, NULL, NULL, &count, &err), OUTBOX_ENOTFOUND);
    ASSERT_EQ(count, 0);
    const char *pending[] = {a[1], a[0]};
    ASSERT_EQ(s.ops->drop(s.state, pending, 2, 0, NULL, NULL, &count, &err), OUTBOX_EINVAL);
    ASSERT_CONTAINS(err.message, "pending");
    const char *malformed[] = {"not-a-uuid"};
    ASSERT_EQ(s.ops->drop(s.state, malformed, 1, 0, NULL, NULL, &count, &err), OUTBOX_EBADID);
    ASSERT_EQ(s.ops->drop(s.state, NULL, 0, 0, NULL, NULL, &count, &err), OUTBOX_EINVAL);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 6);

    /* The archive sees the message with its bookkeeping first; its error
     * deletes nothing and is drop's result. */
    memset(&d, 0, sizeof d);
    d.refuse = 1;
    const char *one[] = {a[1], a[1]};
    ASSERT_EQ(s.ops->drop(s.state, one, 2, 0, archive_check, &d, &count, &err), OUTBOX_EIO);
    ASSERT_CONTAINS(err.message, "archive file is full");
    ASSERT_EQ(d.calls, 1);
    ASSERT_EQ(d.n, 1);
    ASSERT_STREQ(d.last_error, "boom");
    ASSERT_EQ(d.attempts, 3);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 6);
    d.refuse = 0;
    ASSERT_OK(s.ops->drop(s.state, one, 2, 0, archive_check, &d, &count, &err), &err);
    ASSERT_EQ(count, 1);
    ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
    ASSERT_EQ(st.failed, 1);
    ASSERT_EQ(st.blocked, 1);
    ASSERT_EQ(st.aggregates_blocked, 1);

    /* All failed. */
    memset(&d, 0, sizeof d);
    ASSERT_OK(s.ops->drop(s.state, NULL, 0, 1, archive_check, &d, &count, &err), &err);
    ASSERT_EQ(count, 1);
    ASSERT_EQ(d.n, 1);
    memset(&d, 0, sizeof d);
    ASSERT_OK(s.ops->drop(s.state, NULL, 0, 1, archive_check, &d, &count, &err), &err);
    ASSERT_EQ(count, 0);
    ASSERT_EQ(d.calls, 0); /* nothing to archive */
    ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
    ASSERT_EQ(st.failed, 0);
    ASSERT_EQ(st.blocked, 0);
    ASSERT_EQ(st.aggregates_blocked, 0);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 4);
    outbox__store_close(&s);
    reset_outbox(c);
    PQfinish(c);
}

/* ------------------------------------------------------------------------
 * Schema versions
 * ---------------------------------------------------------------------- */

/* A schema newer than this build is refused by every entry point that
 * touches the tables, and nothing is written. */
TEST(newer_schema_refused_everywhere)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    outbox_msg *m = make_msg("future", "{}");
    outbox_msg **msgs = NULL, *got = NULL;
    outbox_status st;
    listed seen = {0, 0};
    char u[800];
    int64_t count;
    size_t n;
    outbox_claim_params cp = {10, outbox__now_us(), 1, 0, NULL};
    const char *id = "0190a0a0-0000-7000-8000-0000000000f1";

    pgh_exec(c, "DROP SCHEMA IF EXISTS future CASCADE");
    ASSERT_OK(outbox_schema_init_pg(c, "future", &err), &err);
    pgh_exec(c, "UPDATE future.meta SET value = '99' WHERE key = 'schema_version'");
    snprintf(u, sizeof u, "%s?schema=future", url);

    /* The driver (every CLI command). */
    sh_store_open(&s, u);
#define NEWER(call)                                                                                \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != OUTBOX_ESCHEMANEWER) TEST_FAIL_("%s: %d %s", #call, rc_, err.message);          \
        ASSERT_CONTAINS(err.message, "version 99, newer than this build's 9");                     \
    } while (0)
    NEWER(s.ops->check_schema(s.state, &err));
    NEWER(s.ops->status(s.state, &st, &err));
    NEWER(s.ops->enqueue(s.state, m, &err));
    NEWER(s.ops->list(s.state, NULL, count_listed, &seen, &err));
    NEWER(s.ops->get(s.state, id, &got, &err));
    NEWER(s.ops->retry(s.state, NULL, 0, 1, &count, &err));
    NEWER(s.ops->drop(s.state, NULL, 0, 1, NULL, NULL, &count, &err));
    NEWER(s.ops->purge(s.state, outbox__now_us(), &count, &err));
    NEWER(s.ops->inbox_purge(s.state, 86400000, 0, &count, &err));
    NEWER(s.ops->claim(s.state, &cp, &msgs, &n, &err));
    NEWER(s.ops->claim_pipelined(s.state, &cp, NULL, 0, &msgs, &n, &err));
    NEWER(s.ops->lease_acquire(s.state, "future-relay", 2000, &err));
    NEWER(s.ops->init(s.state, NULL, NULL, &err));
    outbox__store_close(&s);

    /* The public functions on the caller's connection: refused when the
     * statement is first prepared, the transaction still usable. */
    PGconn *app = pgh_connect(&server);
    pgh_exec(app, "BEGIN");
    NEWER(outbox_enqueue_pg_schema(app, "future", m, &err));
    ASSERT_EQ(PQtransactionStatus(app), PQTRANS_INTRANS);
    NEWER(outbox_inbox_record_pg_schema(app, "future", "svc", id, &err));
    ASSERT_EQ(PQtransactionStatus(app), PQTRANS_INTRANS);
    pgh_exec(app, "COMMIT");
    pgh_exec(app, "BEGIN");
    NEWER(outbox_enqueue_commit_pg(app, "future", (const outbox_msg *const[]){m}, 1, &err));
    ASSERT_EQ(PQtransactionStatus(app), PQTRANS_INTRANS);
    pgh_exec(app, "ROLLBACK");
    NEWER(outbox_inbox_purge_pg(app, "future", 86400000, 0, &count, &err));
    PQfinish(app);

    /* An enqueue-only role with the documented grants reads the version
     * too (meta is readable by every role since version 5). */
    pgh_exec(c, "DROP ROLE IF EXISTS future_writer");
    pgh_exec(c, "CREATE ROLE future_writer");
    pgh_exec(c, "GRANT USAGE ON SCHEMA future TO future_writer");
    pgh_exec(c, "GRANT INSERT, SELECT (seq, id) ON future.outbox TO future_writer");
    app = pgh_connect(&server);
    pgh_exec(app, "SET ROLE future_writer");
    pgh_exec(app, "BEGIN");
    NEWER(outbox_enqueue_pg_schema(app, "future", m, &err));
    pgh_exec(app, "ROLLBACK");
    PQfinish(app);
#undef NEWER

    ASSERT_EQ(countf(c, "SELECT count(*) FROM future.outbox"), 0);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM future.relays"), 0);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM future.inbox"), 0);
    pgh_exec(c, "DROP SCHEMA future CASCADE");
    pgh_exec(c, "DROP OWNED BY future_writer");
    pgh_exec(c, "DROP ROLE future_writer");
    outbox_msg_free(m);
    PQfinish(c);
}

/* Tables without their meta row: init says what it found and how to
 * record it, and following that works; a meta row that is not a version
 * is named; a foreign table called outbox is not mistaken for ours. */
TEST(init_without_meta_row)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    char u[800];

    pgh_exec(c, "DROP SCHEMA IF EXISTS lost_meta CASCADE");
    ASSERT_OK(outbox_schema_init_pg(c, "lost_meta", &err), &err);
    pgh_exec(c, "DELETE FROM lost_meta.meta WHERE key IN ('schema_version', 'partitions')");
    ASSERT_EQ(outbox_schema_init_pg(c, "lost_meta", &err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err.message, "no schema_version");
    ASSERT_CONTAINS(err.message, "version 9 with 32 partitions");
    ASSERT_CONTAINS(err.message, "INSERT INTO \"lost_meta\".meta");
    pgh_exec(c, "INSERT INTO \"lost_meta\".meta (key, value) VALUES ('schema_version', '9'),"
                " ('partitions', '32') ON CONFLICT (key) DO UPDATE SET value = excluded.value");
    ASSERT_OK(outbox_schema_init_pg(c, "lost_meta", &err), &err);

    pgh_exec(c, "UPDATE lost_meta.meta SET value = 'five' WHERE key = 'schema_version'");
    ASSERT_EQ(outbox_schema_init_pg(c, "lost_meta", &err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err.message, "'five', not a version number");
    snprintf(u, sizeof u, "%s?schema=lost_meta", url);
    sh_store_open(&s, u);
    ASSERT_EQ(s.ops->check_schema(s.state, &err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err.message, "'five'");
    outbox__store_close(&s);
    pgh_exec(c, "DROP SCHEMA lost_meta CASCADE");

    pgh_exec(c, "DROP SCHEMA IF EXISTS theirs CASCADE");
    pgh_exec(c, "CREATE SCHEMA theirs");
    pgh_exec(c, "CREATE TABLE theirs.outbox (x int)");
    ASSERT_EQ(outbox_schema_init_pg(c, "theirs", &err), OUTBOX_ESTORE);
    ASSERT_CONTAINS(err.message, "not made by outbox");
    pgh_exec(c, "DROP SCHEMA theirs CASCADE");
    PQfinish(c);
}

/* init on an up-to-date schema needs no rights to create anything; with
 * another partition count it says the count is fixed, and which it is. */
TEST(init_up_to_date)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    outbox_buf logs;
    char u[800];
    int from = 0, to = 0;

    pgh_exec(c, "DROP ROLE IF EXISTS no_create");
    pgh_exec(c, "CREATE ROLE no_create");
    pgh_exec(c, "GRANT USAGE ON SCHEMA outbox TO no_create");
    pgh_exec(c, "REVOKE CREATE ON DATABASE postgres FROM PUBLIC");
    PGconn *r = pgh_connect(&server);
    pgh_exec(r, "SET ROLE no_create");
    ASSERT_OK(outbox_schema_init_pg(r, NULL, &err), &err);
    PQfinish(r);
    pgh_exec(c, "GRANT CREATE ON DATABASE postgres TO PUBLIC");
    pgh_exec(c, "DROP OWNED BY no_create");
    pgh_exec(c, "DROP ROLE no_create");

    outbox__buf_init(&logs);
    outbox_log_set(sh_capture_log, &logs, OUTBOX_LOG_INFO);
    snprintf(u, sizeof u, "%s?partitions=8", url);
    sh_store_open(&s, u);
    ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
    ASSERT_EQ(from, 9);
    ASSERT_EQ(to, 9);
    outbox__store_close(&s);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    ASSERT_CONTAINS(logs.data, "W partitions=8 is not applied: the outbox schema outbox has 32 "
                               "partitions, fixed when it was created");
    outbox__buf_free(&logs);
    PQfinish(c);
}

/* The three roles with exactly the grants docs/POSTGRES.md gives them: an
 * application that enqueues, a consumer that records in the inbox, and a
 * relay that is not the schema's owner (init on the current schema,
 * drain, status, drop). */
TEST(documented_roles)
{
    PGconn *c = pgh_connect(&server);
    outbox_error err;
    char u[800];
    const char *inbox_id = "0190a0a0-0000-7000-8000-0000000000e1";

    reset_outbox(c);
    pgh_exec(c, "DELETE FROM outbox.inbox");
    pgh_exec(c, "DROP ROLE IF EXISTS app_enqueue");
    pgh_exec(c, "DROP ROLE IF EXISTS app_consumer");
    pgh_exec(c, "DROP ROLE IF EXISTS outbox_relay");
    pgh_exec(c, "CREATE ROLE app_enqueue LOGIN");
    pgh_exec(c, "GRANT USAGE ON SCHEMA outbox TO app_enqueue");
    pgh_exec(c, "GRANT INSERT, SELECT (seq, id) ON outbox.outbox TO app_enqueue");
    pgh_exec(c, "CREATE ROLE app_consumer LOGIN");
    pgh_exec(c, "GRANT USAGE ON SCHEMA outbox TO app_consumer");
    pgh_exec(c, "GRANT INSERT, DELETE, SELECT (received_at) ON outbox.inbox TO app_consumer");
    pgh_exec(c, "CREATE ROLE outbox_relay LOGIN");
    pgh_exec(c, "GRANT USAGE ON SCHEMA outbox TO outbox_relay");
    pgh_exec(c,
             "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA outbox TO outbox_relay");
    pgh_exec(c, "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA outbox TO outbox_relay");

    /* The application: the C call and the SQL function. */
    {
        PGconn *a = pgh_connect(&server);
        outbox_msg *m = make_msg("role-app", "{}");
        pgh_exec(a, "SET ROLE app_enqueue");
        pgh_exec(a, "BEGIN");
        ASSERT_OK(outbox_enqueue_pg(a, m, &err), &err);
        pgh_exec(a, "SELECT outbox.enqueue('T', 'role-app', '{}')");
        pgh_exec(a, "COMMIT");
        pgh_exec(a, "BEGIN");
        ASSERT_OK(outbox_enqueue_commit_pg(a, NULL, NULL, 0, &err), &err);
        outbox_msg_free(m);
        PQfinish(a);
    }
    /* The consumer: record (C and SQL) and purge. */
    {
        PGconn *k = pgh_connect(&server);
        int64_t purged = 0;
        pgh_exec(k, "SET ROLE app_consumer");
        pgh_exec(k, "BEGIN");
        ASSERT_OK(outbox_inbox_record_pg(k, "svc", inbox_id, &err), &err);
        ASSERT_EQ(pgh_count(k, "SELECT outbox.inbox_record('svc2', '0190a0a0-0000-7000-8000-"
                               "0000000000e2')::int"),
                  1);
        pgh_exec(k, "COMMIT");
        ASSERT_OK(outbox_inbox_purge_pg(k, NULL, 86400000, 0, &purged, &err), &err);
        PQfinish(k);
    }
    /* The relay: init on the current schema, a drain, status, drop. */
    {
        outbox_store s;
        outbox_status st;
        int from = 0, to = 0;
        int64_t count;
        snprintf(u, sizeof u, "postgres://outbox_relay@127.0.0.1:%d/postgres", server.port);
        sh_store_open(&s, u);
        ASSERT_OK(s.ops->init(s.state, &from, &to, &err), &err);
        ASSERT_EQ(to, 9);
        ASSERT_OK(s.ops->lease_acquire(s.state, "role-relay", 5000, &err), &err);
        for (int round = 0; round < 5; round++) {
            outbox_msg **msgs = NULL;
            size_t n = sh_claim(&s, round % 2, 100, &msgs);
            if (n == 0) break;
            sh_complete_sent(&s, round % 2, msgs, n);
            sh_free_msgs(msgs, n);
        }
        ASSERT_OK(s.ops->status(s.state, &st, &err), &err);
        ASSERT_EQ(st.pending, 0);
        ASSERT_CONTAINS(st.lease_owner, "role-relay@");
        ASSERT_OK(s.ops->drop(s.state, NULL, 0, 1, NULL, NULL, &count, &err), &err);
        ASSERT_OK(s.ops->lease_release(s.state, "role-relay", &err), &err);
        outbox__store_close(&s);
    }
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 0);
    pgh_exec(c, "DELETE FROM outbox.inbox");
    pgh_exec(c, "DROP OWNED BY app_enqueue, app_consumer, outbox_relay");
    pgh_exec(c, "DROP ROLE app_enqueue");
    pgh_exec(c, "DROP ROLE app_consumer");
    pgh_exec(c, "DROP ROLE outbox_relay");
    PQfinish(c);
}

/* ------------------------------------------------------------------------
 * Logs
 * ---------------------------------------------------------------------- */

typedef struct line_check {
    outbox_buf text;
    int multi_line;
} line_check;

static void check_lines(void *user, int level, const char *component, const char *message)
{
    line_check *l = user;
    if (strchr(message, '\n') || strchr(message, '\r')) l->multi_line++;
    sh_capture_log(&l->text, level, component, message);
}

/* Server warnings on the store's connection reach the log callback as one
 * line (none goes to stderr), and so does libpq's multi-line message when
 * the server closes the connection. */
TEST(logs_are_one_line)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    line_check l;
    char errfile[CH_PATH];
    int saved, fd;

    reset_outbox(c);
    pgh_exec(c,
             "CREATE FUNCTION public.warn_twice() RETURNS trigger LANGUAGE plpgsql AS $$"
             " BEGIN RAISE WARNING E'first line\\nsecond line' USING DETAIL = E'more\\nand more';"
             " RETURN NEW; END $$");
    pgh_exec(c, "CREATE TRIGGER warn_twice BEFORE INSERT ON outbox.outbox FOR EACH ROW"
                " EXECUTE FUNCTION public.warn_twice()");
    memset(&l, 0, sizeof l);
    outbox__buf_init(&l.text);
    outbox_log_set(check_lines, &l, OUTBOX_LOG_DEBUG);
    ch_path(errfile, "stderr.txt");
    fflush(stderr);
    saved = dup(2);
    fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);

    sh_store_open(&s, url);
    outbox_msg *m = make_msg("warned", "{}");
    ASSERT_OK(s.ops->enqueue(s.state, m, &err), &err);
    outbox_msg_free(m);
    /* The server ends the store's session: the next call says so. */
    execf(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
             " AND datname = current_database() AND backend_type = 'client backend'");
    usleep(200000);
    {
        outbox_status st;
        int rc = s.ops->status(s.state, &st, &err);
        ASSERT_EQ(rc, OUTBOX_EIO);
        ASSERT(strchr(err.message, '\n') == NULL && strchr(err.message, '\t') == NULL);
        ASSERT_OK(s.ops->status(s.state, &st, &err), &err); /* reconnects, says so */
    }
    outbox__store_close(&s);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    outbox_log_set(NULL, NULL, OUTBOX_LOG_INFO);
    {
        char *text = test_read_file(errfile, NULL);
        if (text && *text) TEST_FAIL_("the store wrote to stderr: %s", text);
        free(text);
    }
    ASSERT_EQ(l.multi_line, 0);
    ASSERT_CONTAINS(l.text.data, "W ");
    ASSERT_CONTAINS(l.text.data, "server WARNING: first line second line (more and more)");
    ASSERT_CONTAINS(l.text.data, "lost");
    outbox__buf_free(&l.text);
    pgh_exec(c, "DROP TRIGGER warn_twice ON outbox.outbox");
    pgh_exec(c, "DROP FUNCTION public.warn_twice()");
    reset_outbox(c);
    PQfinish(c);
}

/* ------------------------------------------------------------------------
 * The claim's plan without table statistics
 * ---------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Median time of `rounds` claims of 100 (each completed as sent). */
static int64_t median_claim_us(outbox_store *s, int pipelined, int rounds)
{
    int64_t *t = calloc((size_t)rounds, sizeof *t), median;
    for (int i = 0; i < rounds; i++) {
        outbox_msg **msgs = NULL;
        int64_t t0 = outbox__monotonic_us();
        size_t n = sh_claim(s, pipelined, 100, &msgs);
        t[i] = outbox__monotonic_us() - t0;
        ASSERT_EQ(n, 100);
        sh_complete_sent(s, pipelined, msgs, n);
        sh_free_msgs(msgs, n);
    }
    qsort(t, (size_t)rounds, sizeof *t, cmp_i64);
    median = t[rounds / 2];
    free(t);
    return median;
}

/* A freshly filled table that has never been analyzed: the claim walks
 * outbox_pending in order and stops at the batch (about as fast as with
 * statistics), instead of reading and sorting every pending row. */
TEST(claim_before_analyze)
{
    PGconn *c = pgh_connect(&server);
    outbox_store s;
    outbox_error err;
    char u[800];
    int rows = test_scaled(30000, 10000); /* 4 x 15 claims of 100 come out of it */
    int64_t before[2], after[2];

    pgh_exec(c, "DROP SCHEMA IF EXISTS nostats CASCADE");
    ASSERT_OK(outbox_schema_init_pg(c, "nostats", &err), &err);
    pgh_exec(c, "ALTER TABLE nostats.outbox SET (autovacuum_enabled = false)");
    execf(c,
          "INSERT INTO nostats.outbox (id, type, aggregate_type, aggregate_id, payload)"
          " SELECT nostats.uuid_v7(), 'Tick', 'Agg', 'a' || (i %% 1000),"
          " jsonb_build_object('n', i, 'pad', repeat('x', 270)) FROM generate_series(1, %d) i",
          rows);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM pg_stats WHERE schemaname = 'nostats'"), 0);
    snprintf(u, sizeof u, "%s?schema=nostats", url);
    for (int pipelined = 0; pipelined < 2; pipelined++) {
        sh_store_open(&s, u);
        before[pipelined] = median_claim_us(&s, pipelined, 15);
        outbox__store_close(&s);
    }
    ASSERT_EQ(countf(c, "SELECT count(*) FROM pg_stats WHERE schemaname = 'nostats'"), 0);
    pgh_exec(c, "ANALYZE nostats.outbox");
    for (int pipelined = 0; pipelined < 2; pipelined++) {
        sh_store_open(&s, u);
        after[pipelined] = median_claim_us(&s, pipelined, 15);
        outbox__store_close(&s);
    }
    for (int pipelined = 0; pipelined < 2; pipelined++) {
        fprintf(stderr, "%s claim of 100 among %d pending: %.2f ms before ANALYZE, %.2f ms after\n",
                pipelined ? "pipelined" : "plain", rows, before[pipelined] / 1000.0,
                after[pipelined] / 1000.0);
        /* Reading and sorting every pending row costs tens of ms here. */
        ASSERT(before[pipelined] <= 3 * after[pipelined] + 3000);
    }
    pgh_exec(c, "DROP SCHEMA nostats CASCADE");
    PQfinish(c);
}

/* ------------------------------------------------------------------------
 * Relay instances
 * ---------------------------------------------------------------------- */

/* Two instances of one name in one process are told apart (relays.id),
 * their notes shown; one instance: its pid and host; a holder whose
 * process is gone is marked; rows of relays whose session ended are
 * deleted when a relay registers. */
TEST(relay_instances_in_status)
{
    PGconn *c = pgh_connect(&server);
    outbox_store a, b;
    outbox_error err;
    outbox_status st;
    char host[256], text[300];

    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    pgh_exec(c, "DELETE FROM outbox.relays");
    /* A relay killed with -9 long ago: its row, no session. */
    pgh_exec(c, "INSERT INTO outbox.relays (name, host, pid, backend_pid) VALUES ('dead', 'h',"
                " 1, 1)");
    sh_store_open(&a, url);
    sh_store_open(&b, url);
    ASSERT_OK(a.ops->lease_acquire(a.state, "same", 5000, &err), &err);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.relays WHERE name = 'dead'"), 0);
    ASSERT_OK(b.ops->lease_acquire(b.state, "same", 5000, &err), &err);
    ASSERT_OK(a.ops->lease_renew(a.state, "same", 5000, &err), &err);
    ASSERT_OK(b.ops->lease_renew(b.state, "same", 5000, &err), &err);
    ASSERT_OK(a.ops->lease_note(a.state, "same", "destination down since 12:00: refused", &err),
              &err);
    ASSERT_OK(b.ops->lease_note(b.state, "same", "all well\nreally", &err), &err);
    ASSERT_OK(a.ops->status(a.state, &st, &err), &err);
    snprintf(text, sizeof text, "same@%s:%ld#", host, (long)getpid());
    ASSERT_CONTAINS(st.lease_owner, text);
    ASSERT(strstr(strstr(st.lease_owner, text) + 1, text) != NULL); /* twice, ids apart */
    ASSERT_EQ(st.lease_pid, 0);                                     /* two holders */
    ASSERT_CONTAINS(st.relay_note, "destination down since 12:00: refused");
    ASSERT_CONTAINS(st.relay_note, "all well really");
    ASSERT_EQ(st.lease_holder_gone, 0);

    /* One instance left: its pid and host, its note alone. */
    ASSERT_OK(b.ops->lease_release(b.state, "same", &err), &err);
    ASSERT_OK(a.ops->lease_renew(a.state, "same", 5000, &err), &err);
    ASSERT_OK(a.ops->status(a.state, &st, &err), &err);
    snprintf(text, sizeof text, "same@%s:%ld[0-31]", host, (long)getpid());
    ASSERT_STREQ(st.lease_owner, text);
    ASSERT_EQ(st.lease_pid, (int64_t)getpid());
    ASSERT_STREQ(st.lease_host, host);
    ASSERT_STREQ(st.relay_note, "destination down since 12:00: refused");

    /* A note set while a claim transaction is open is written after it. */
    {
        outbox_msg **msgs = NULL;
        size_t n;
        char id[40];
        enqueue_named(&a, "noted", 0, id);
        n = sh_claim(&a, 0, 10, &msgs);
        ASSERT_EQ(n, 1);
        ASSERT_OK(a.ops->lease_note(a.state, "same", "", &err), &err);
        ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.relays WHERE note IS NOT NULL"), 1);
        sh_complete_sent(&a, 0, msgs, n);
        sh_free_msgs(msgs, n);
        ASSERT_OK(a.ops->lease_renew(a.state, "same", 5000, &err), &err);
        ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.relays WHERE note IS NOT NULL"), 0);
    }
    ASSERT_OK(a.ops->lease_release(a.state, "same", &err), &err);

    /* A holder on this host whose process is gone (its session not yet
     * closed by the server): marked. */
    {
        pid_t child = fork();
        if (child == 0) _exit(0);
        waitpid(child, NULL, 0);
        PGconn *ghost = pgh_connect(&server);
        PGresult *r;
        char sql[600];
        snprintf(sql, sizeof sql,
                 "INSERT INTO outbox.relays (name, host, pid, backend_pid) VALUES ('ghost', '%s',"
                 " %ld, pg_backend_pid()) RETURNING id",
                 host, (long)child);
        r = PQexec(ghost, sql);
        ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK);
        snprintf(sql, sizeof sql,
                 "SELECT pg_advisory_lock(hashtext('outbox.relay:outbox') & 2147483647, %s),"
                 " pg_advisory_lock(hashtext('outbox.partition:outbox') & 2147483647, 7)",
                 PQgetvalue(r, 0, 0));
        PQclear(r);
        pgh_exec(ghost, sql);
        ASSERT_OK(a.ops->status(a.state, &st, &err), &err);
        snprintf(text, sizeof text, "ghost@%s:%ld[7] (gone)", host, (long)child);
        ASSERT_STREQ(st.lease_owner, text);
        ASSERT_EQ(st.lease_holder_gone, 1);
        PQfinish(ghost);
    }
    outbox__store_close(&a);
    outbox__store_close(&b);
    pgh_exec(c, "DELETE FROM outbox.relays");
    PQfinish(c);
}

/* Two relay processes with the same --name drain one outbox together
 * while a producer writes: both take part (status shows two instances),
 * nothing is lost or published twice, per-aggregate order holds; one
 * killed with -9 leaves no row behind once the other notices. */
TEST(same_name_relays_drain_together)
{
    char out[CH_PATH], errs[2][CH_PATH], to[CH_PATH + 8];
    const char *argv[] = {
        test_outbox_bin(), "relay", "--store",     url,  "--to", to, "--name", "same",
        "--batch",         "64",    "--lease-ttl", "2s", NULL};
    PGconn *c = pgh_connect(&server);
    pid_t pids[2];
    ch_producer p;
    ch_report rep;
    int two_seen = 0;

    if (!getenv("OUTBOX_BIN")) SKIP("the outbox binary was not found: run through ctest");
    reset_outbox(c);
    pgh_exec(c, "DELETE FROM outbox.relays");
    ch_path(out, "same.jsonl");
    ch_path(errs[0], "same-0.err");
    ch_path(errs[1], "same-1.err");
    snprintf(to, sizeof to, "file:%s", out);
    memset(&p, 0, sizeof p);
    p.pg_conninfo = server.conninfo;
    p.pg_async_commit = 1;
    p.total = test_scaled(10000, 1000);
    p.aggregates = 200;
    p.max_txn = 50;
    p.pause_us = 2000;
    p.seed = 12345;
    for (int i = 0; i < 2; i++)
        pids[i] = ch_spawn(argv, NULL, NULL, errs[i]);
    /* Both registered (sanitized builds start slowly), then the load. */
    for (int tries = 0; tries < 1200 && !two_seen; tries++) {
        outbox_store s;
        outbox_status st;
        outbox_error err;
        char needle[64];
        sh_store_open(&s, url);
        if (s.ops->status(s.state, &st, &err) == OUTBOX_OK) {
            const char *first = strstr(st.lease_owner, "same@");
            snprintf(needle, sizeof needle, ":%ld[", (long)pids[0]);
            if (first && strstr(st.lease_owner, needle)) {
                snprintf(needle, sizeof needle, ":%ld[", (long)pids[1]);
                if (strstr(st.lease_owner, needle)) two_seen = 1;
            }
        }
        outbox__store_close(&s);
        if (!two_seen) ch_sleep_ms(50);
    }
    ch_producer_start(&p);
    ch_producer_join(&p);
    if (p.error[0]) TEST_FAIL_("producer: %s", p.error);
    for (int tries = 0; tries < 1200; tries++) {
        if (countf(c, "SELECT count(*) FROM outbox.outbox") == 0) break;
        ch_sleep_ms(50);
    }
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 0);
    ASSERT(two_seen);
    ASSERT_EQ(countf(c, "SELECT count(DISTINCT pid) FROM outbox.relays WHERE name = 'same'"), 2);

    /* -9 one of them: the other deletes its row once it sees it gone. */
    kill(pids[0], SIGKILL);
    ch_wait(pids[0], 5000);
    for (int tries = 0; tries < 200; tries++) {
        if (countf(c, "SELECT count(*) FROM outbox.relays") == 1) break;
        ch_sleep_ms(50);
    }
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.relays"), 1);
    ch_relays_stop(pids + 1, 1, errs + 1);

    ch_check_file(out, &p, &rep);
    ch_report_print("pg 2 relays named alike", &rep);
    ASSERT_EQ(rep.expected, p.total);
    ASSERT_EQ(rep.lost, 0);
    ASSERT_EQ(rep.duplicates, 0);
    ASSERT_EQ(rep.violations, 0);
    ASSERT_EQ(rep.torn, 0);
    ASSERT_EQ(rep.foreign, 0);
    ch_producer_free(&p);
    PQfinish(c);
}

/* Counts lines of path that parse as a JSON object (*good) and those that
 * do not (*bad). */
static void json_lines(const char *path, int *good, int *bad)
{
    char line[8192];
    FILE *f = fopen(path, "r");
    *good = *bad = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        if (o && json_is_object(o))
            (*good)++;
        else
            (*bad)++;
        json_decref(o);
    }
    fclose(f);
}

static void enqueue_sql(PGconn *c, int from, int count)
{
    pgh_exec(c, sqlf("SELECT outbox.enqueue('Waited', 'w' || (i %% 7), jsonb_build_object('n', i))"
                     " FROM generate_series(%d, %d) AS i",
                     from, from + count - 1));
}

/* A relay started while PostgreSQL is down waits for it (logging once,
 * not exiting), publishes once it is up, rides out a restart, and its JSON
 * log stays one object per line through all of it (libpq's multi-line
 * messages included). */
TEST(relay_waits_for_postgres)
{
    char out[CH_PATH], errs[1][CH_PATH], to[CH_PATH + 8];
    const char *argv[] = {
        test_outbox_bin(), "--log-format", "json", "relay", "--store", url, "--to", to,
        "--poll-interval", "200ms",        NULL};
    PGconn *c = pgh_connect(&server);
    int good, bad;
    pid_t pid;

    if (!getenv("OUTBOX_BIN")) SKIP("the outbox binary was not found: run through ctest");
    reset_outbox(c);
    PQfinish(c);
    ch_path(out, "waited.jsonl");
    ch_path(errs[0], "waited.err");
    snprintf(to, sizeof to, "file:%s", out);

    pgh_stop_immediate(&server);
    pid = ch_spawn(argv, NULL, NULL, errs[0]);
    ch_sleep_ms(1500);
    ASSERT(ch_alive(pid)); /* waiting, not exited */
    pgh_start_server(&server);
    c = pgh_connect(&server);
    enqueue_sql(c, 0, 100);
    for (int tries = 0; tries < 400 && countf(c, "SELECT count(*) FROM outbox.outbox") > 0; tries++)
        ch_sleep_ms(50);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 0);
    PQfinish(c);

    /* A restart under the running relay. */
    pgh_stop_immediate(&server);
    ch_sleep_ms(500);
    pgh_start_server(&server);
    c = pgh_connect(&server);
    enqueue_sql(c, 100, 100);
    for (int tries = 0; tries < 600 && countf(c, "SELECT count(*) FROM outbox.outbox") > 0; tries++)
        ch_sleep_ms(50);
    ASSERT_EQ(countf(c, "SELECT count(*) FROM outbox.outbox"), 0);
    ch_relays_stop(&pid, 1, errs);

    json_lines(out, &good, &bad);
    ASSERT_EQ(bad, 0);
    ASSERT(good >= 200); /* at least once: a restart may republish */
    json_lines(errs[0], &good, &bad);
    if (bad != 0) ch_dump("relay log", errs[0]);
    ASSERT_EQ(bad, 0);
    ASSERT(good > 0);
    PQfinish(c);
}

int main(void)
{
    pgh_start(&server);
    snprintf(url, sizeof url, "%s", server.url);
    {
        PGconn *c = pgh_connect(&server);
        outbox_error err;
        ASSERT_OK(outbox_schema_init_pg(c, NULL, &err), &err);
        PQfinish(c);
    }
    RUN(odd_values_refused_by_table);
    RUN(odd_rows_quarantined_plain);
    RUN(odd_rows_quarantined_pipelined);
    RUN(relay_once_around_odd_row);
    RUN(drop_and_blocked);
    RUN(newer_schema_refused_everywhere);
    RUN(init_without_meta_row);
    RUN(init_up_to_date);
    RUN(documented_roles);
    RUN(logs_are_one_line);
    RUN(claim_before_analyze);
    RUN(relay_instances_in_status);
    RUN(same_name_relays_drain_together);
    RUN(relay_waits_for_postgres);
    fprintf(stderr, "all PostgreSQL operator tests passed\n");
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */

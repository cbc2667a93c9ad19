/*
 * test_alloc_sweep.c - allocation-failure sweeps (curl's torture tests,
 * SQLite's malloc tests): for each operation, fail its N-th allocation for
 * N = 1, 2, ... until the operation makes fewer than N allocations, and
 * check after each run that
 *
 *   - it returned OK or an error (no crash: CI runs this under ASan, where a
 *     leak on an error path fails the test too);
 *   - the state is consistent: an enqueue's message exists iff it returned
 *     OK; an inbox entry is recorded iff OK; a relay batch marked nothing
 *     sent that is missing at the destination, and a fault-free run after
 *     it publishes everything (nothing lost); a webhook verdict is never
 *     wrong (a failure is an error, never "bad signature" or "valid").
 *
 * What fails: every allocation of liboutbox (the outbox__malloc hook,
 * internal.h "Memory"), jansson's (json_set_alloc_funcs) and SQLite's
 * (SQLITE_CONFIG_MALLOC, set before SQLite initialises), in whichever
 * thread makes them (the relay's, the webhook receiver's).  libcurl's,
 * libmicrohttpd's, libpq's and OpenSSL's own allocations are not covered.
 *
 * The number of allocation points swept per operation is printed at the
 * end (docs/RELIABILITY.md).  PostgreSQL cases run when a server can be
 * started here.  The CLI's sweep is tests/test_alloc_cli.sh.
 */
#include "internal.h"
#include "support/chaos.h"
#include "support/pg.h"
#include "test.h"

#include <jansson.h>
#include <malloc.h>
#include <sqlite3.h>

#ifndef OUTBOX_FAULT_INJECTION
int main(void)
{
    /* Thousands of fresh databases: on tmpfs when there is one, as fsync
     * costs time there is no need to spend. */
    if (getenv("TMPDIR") == NULL && access("/dev/shm", W_OK) == 0) setenv("TMPDIR", "/dev/shm", 1);
    SKIP("needs a build with OUTBOX_FAULT_INJECTION=ON (the allocation hook's counter)");
}
#else

#define SECRET "whsec_c2VjcmV0LWZvci10aGUtYWxsb2NhdGlvbi1zd2VlcA=="
#define CONSUMER "sweep"
#define BATCH 6 /* messages per relay sweep, over two aggregates */

static outbox_error err_storage;
static outbox_error *err = &err_storage;

typedef struct swept {
    const char *op;
    uint64_t points;
} swept;
static swept results[32];
static int nresults;

static void report(const char *op, uint64_t points)
{
    fprintf(stderr, "   %s: %llu allocation points swept\n", op, (unsigned long long)points);
    if (nresults < 32) results[nresults++] = (swept){op, points};
}

/* OUTBOX_SWEEP_FROM=N starts every sweep at N (to replay one failure);
 * OUTBOX_SWEEP_ONLY=name runs only the case of that name. */
static uint64_t sweep_first(void)
{
    const char *v = getenv("OUTBOX_SWEEP_FROM");
    return v && *v ? strtoull(v, NULL, 10) : 1;
}

/* The relay sweeps (some 2000 points, a relay run and a restart each) try
 * every stride-th point, from an offset that changes from run to run
 * (printed), so that runs together cover every point: stride 4, divided by
 * OUTBOX_TEST_SCALE (the sanitizer run's is lower); OUTBOX_SWEEP_STRIDE=1
 * tries them all. */
static uint64_t relay_stride(void)
{
    const char *v = getenv("OUTBOX_SWEEP_STRIDE");
    uint64_t s = v && *v ? strtoull(v, NULL, 10) : (uint64_t)(4 * 100 / test_scaled(100, 1));
    return s < 1 ? 1 : s;
}

#define RUN_SWEEP(name)                                                                            \
    do {                                                                                           \
        const char *only_ = getenv("OUTBOX_SWEEP_ONLY");                                           \
        if (only_ == NULL || *only_ == '\0' || strcmp(only_, #name) == 0) RUN(name);               \
    } while (0)

/* ---- SQLite's and jansson's allocations through the hook ---------------- */

static void *sq_malloc(int n)
{
    return outbox__alloc_fault() ? NULL : malloc((size_t)n);
}
static void sq_free(void *p)
{
    free(p);
}
static void *sq_realloc(void *p, int n)
{
    return outbox__alloc_fault() ? NULL : realloc(p, (size_t)n);
}
static int sq_size(void *p)
{
    return p ? (int)malloc_usable_size(p) : 0;
}
static int sq_roundup(int n)
{
    return (n + 7) & ~7;
}
static int sq_init(void *app)
{
    return SQLITE_OK;
}
static void sq_shutdown(void *app)
{
}

static void *js_malloc(size_t n)
{
    return outbox__malloc(n);
}
static void js_free(void *p)
{
    outbox__free(p);
}

static void route_library_allocations(void)
{
    static const sqlite3_mem_methods methods = {sq_malloc,  sq_free, sq_realloc,  sq_size,
                                                sq_roundup, sq_init, sq_shutdown, NULL};
    if (sqlite3_config(SQLITE_CONFIG_MALLOC, &methods) != SQLITE_OK)
        TEST_FAIL_("sqlite3_config(SQLITE_CONFIG_MALLOC) refused (SQLite already initialised?)");
    /* Lookaside would hide most of SQLite's small allocations from the hook. */
    sqlite3_config(SQLITE_CONFIG_LOOKASIDE, 0, 0);
    json_set_alloc_funcs(js_malloc, js_free);
}

/* Arms the n-th allocation; returns 1 when the last armed run injected a
 * failure (call before arming the next). */
static void arm(uint64_t n)
{
    outbox__alloc_fail_at(n);
}
static int disarm(void)
{
    int injected = outbox__alloc_failures() > 0;
    outbox__alloc_fail_at(0);
    return injected;
}

static int ok_or_error(int rc)
{
    /* Every outbox code is 0 or negative; a positive one (a bare SQLite code
     * leaking out) or garbage would be a bug. */
    if (rc > 0) TEST_FAIL_("returned %d, neither OK nor an outbox error code", rc);
    return rc;
}

/* ---- SQLite helpers (fault-free) ---------------------------------------- */

static sqlite3 *db_open(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) TEST_FAIL_("open %s", path);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) TEST_FAIL_("%s: %s", sql, msg);
}

static int64_t db_count(sqlite3 *db, const char *sql, const char *arg)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        TEST_FAIL_("%s: %s", sql, sqlite3_errmsg(db));
    if (arg) sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void fresh_outbox(const char *path)
{
    sqlite3 *db;
    char wal[600], shm[600];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    unlink(path);
    unlink(wal);
    unlink(shm);
    db = db_open(path);
    db_exec(db, "PRAGMA journal_mode=WAL");
    ASSERT_OK(outbox_schema_init_sqlite(db, err), err);
    sqlite3_close(db);
}

static void new_msg(outbox_msg **m, int i)
{
    char payload[64];
    snprintf(payload, sizeof payload, "{\"n\":%d}", i);
    ASSERT_OK(outbox_msg_new(m, "order.created", "Order", i % 2 ? "o-1" : "o-2", payload, err),
              err);
    ASSERT_OK(outbox_msg_set_header(*m, "traceparent",
                                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", err),
              err);
}

/* Fills the outbox at path with BATCH messages (fault-free). */
static void fill_outbox(const char *path)
{
    sqlite3 *db = db_open(path);
    db_exec(db, "BEGIN");
    for (int i = 0; i < BATCH; i++) {
        outbox_msg *m;
        new_msg(&m, i);
        ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
        outbox_msg_free(m);
    }
    db_exec(db, "COMMIT");
    sqlite3_close(db);
}

/* ---- enqueue ------------------------------------------------------------- */

TEST(enqueue_sqlite)
{
    const char *path = test_path("enqueue.db");
    sqlite3 *db;
    uint64_t n;

    fresh_outbox(path);
    db = db_open(path);
    for (n = sweep_first();; n++) {
        outbox_msg *m = NULL;
        char id[37] = "";
        int rc, injected;

        db_exec(db, "BEGIN");
        arm(n);
        rc = outbox_msg_new(&m, "order.created", "Order", "o-1", "{\"total\":12.5}", err);
        if (rc == OUTBOX_OK) rc = outbox_msg_set_header(m, "tenant", "t1", err);
        if (rc == OUTBOX_OK) {
            snprintf(id, sizeof id, "%s", outbox_msg_id(m));
            rc = outbox_enqueue_sqlite(db, m, err);
        }
        injected = disarm();
        ok_or_error(rc);
        if (rc != OUTBOX_OK && !injected)
            TEST_FAIL_("n=%llu: %d %s", (unsigned long long)n, rc, err->message);
        /* The caller's transaction: SQLite may have rolled it back on its
         * own out-of-memory error; otherwise it is committed. */
        if (!sqlite3_get_autocommit(db)) db_exec(db, "COMMIT");
        if (id[0])
            ASSERT_EQ(db_count(db, "SELECT count(*) FROM outbox WHERE id = ?", id),
                      rc == OUTBOX_OK ? 1 : 0);
        outbox_msg_free(m);
        if (!injected) break;
    }
    sqlite3_close(db);
    report("enqueue (sqlite, caller's connection)", n - 1);
}

/* outbox_store_enqueue through a store handle opened under the sweep. */
static uint64_t sweep_store_enqueue(const char *url, int64_t (*count_id)(const char *id))
{
    uint64_t n;
    for (n = sweep_first();; n++) {
        outbox_store *store = NULL;
        outbox_msg *m = NULL;
        char id[37] = "";
        int rc, injected;

        arm(n);
        rc = outbox_store_open(url, &store, err);
        if (rc == OUTBOX_OK) rc = outbox_msg_new(&m, "order.paid", "Order", "o-9", "[1,2]", err);
        if (rc == OUTBOX_OK) {
            snprintf(id, sizeof id, "%s", outbox_msg_id(m));
            rc = outbox_store_enqueue(store, m, err);
        }
        outbox_store_close(store);
        injected = disarm();
        ok_or_error(rc);
        if (rc != OUTBOX_OK && !injected)
            TEST_FAIL_("%s n=%llu: %d %s", url, (unsigned long long)n, rc, err->message);
        if (id[0]) ASSERT_EQ(count_id(id), rc == OUTBOX_OK ? 1 : 0);
        outbox_msg_free(m);
        if (!injected) break;
    }
    return n - 1;
}

static const char *store_db_path;
static int64_t sqlite_count_id(const char *id)
{
    sqlite3 *db = db_open(store_db_path);
    int64_t v = db_count(db, "SELECT count(*) FROM outbox WHERE id = ?", id);
    sqlite3_close(db);
    return v;
}

TEST(enqueue_store_sqlite)
{
    char url[700];
    store_db_path = test_path("store.db");
    fresh_outbox(store_db_path);
    snprintf(url, sizeof url, "sqlite:%s", store_db_path);
    report("store open + enqueue (sqlite:)", sweep_store_enqueue(url, sqlite_count_id));
}

/* ---- relay batches --------------------------------------------------------- */

typedef struct dest {
    const char *name;
    char url[700];
    /* 1 when message id reached the destination (NULL: cannot tell, e.g.
     * discard:); fails the test when the destination holds a torn line. */
    int (*has)(struct dest *d, const char *id);
    char file[600];
} dest;

static int file_has(dest *d, const char *id)
{
    size_t len;
    char *text = test_read_file(d->file, &len), *line, *save = NULL;
    int found = 0;
    if (text == NULL) return 0;
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *ev = json_loads(line, 0, &jerr);
        if (ev == NULL) TEST_FAIL_("%s holds a line that is not JSON: %s", d->file, line);
        if (strcmp(json_string_value(json_object_get(ev, "id")), id) == 0) found = 1;
        json_decref(ev);
    }
    free(text);
    return found;
}

static int inbox_has(dest *d, const char *id)
{
    sqlite3 *db = db_open(d->file);
    int64_t v = db_count(db, "SELECT count(*) FROM outbox_inbox WHERE message_id = ?", id);
    sqlite3_close(db);
    return v > 0;
}

/* Every message marked sent in the outbox at path is at the destination;
 * returns how many are sent. */
static int dest_has(void *d, const char *id)
{
    return ((dest *)d)->has((dest *)d, id);
}

static int64_t check_sent_delivered(const char *path, dest *d)
{
    sqlite3 *db = db_open(path);
    char where[64];
    int64_t sent;
    snprintf(where, sizeof where, "at the destination (%s)", d->name);
    sent = ch_check_sent(db, d->has ? dest_has : NULL, d, where);
    sqlite3_close(db);
    return sent;
}

static const char *const http_options[] = {"secret_env=OUTBOX_SWEEP_SECRET", "timeout=5s", NULL};

/* One relay run (new, run --once, free) from the outbox at path to d. */
static int relay_once(const char *path, dest *d, int *failed_new)
{
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    char url[700];
    int rc;

    ch_sweep_relay_options(&o); /* batches of 4: two batches */
    if (strncmp(d->url, "http", 4) == 0) o.destination_options = http_options;
    snprintf(url, sizeof url, "sqlite:%s", path);
    rc = outbox_relay_new(&relay, url, d->url, &o, err);
    if (failed_new) *failed_new = rc != OUTBOX_OK;
    if (rc == OUTBOX_OK) rc = outbox_relay_run(relay, err);
    outbox_relay_free(relay);
    return rc;
}

static void sweep_relay(const char *name, dest *d)
{
    const char *path = test_path("relay.db");
    uint64_t stride = relay_stride(), n = sweep_first() + outbox__random64() % stride, tried = 0;
    fprintf(stderr, "   every %llu. point from %llu\n", (unsigned long long)stride,
            (unsigned long long)n);
    for (;; n += stride, tried++) {
        sqlite3 *db;
        int rc, injected, tries;

        fresh_outbox(path);
        if (d->has == file_has) unlink(d->file);
        fill_outbox(path);

        arm(n);
        rc = relay_once(path, d, NULL);
        injected = disarm();
        ok_or_error(rc);
        if (rc != OUTBOX_OK && !injected)
            TEST_FAIL_("%s n=%llu: %d %s", name, (unsigned long long)n, rc, err->message);
        check_sent_delivered(path, d);

        /* The restart: fault-free runs publish everything. */
        for (tries = 0; tries < 50; tries++) {
            int64_t left;
            rc = relay_once(path, d, NULL);
            db = db_open(path);
            left = db_count(db, "SELECT count(*) FROM outbox WHERE status <> 'sent'", NULL);
            sqlite3_close(db);
            if (left == 0) break;
            outbox__sleep_us(10000);
        }
        if (tries == 50) {
            char cmd[800];
            snprintf(cmd, sizeof cmd,
                     "sqlite3 %s 'SELECT seq,status,attempts,available_at,last_error FROM outbox' "
                     ">&2",
                     path);
            if (system(cmd) != 0) fprintf(stderr, "(cannot show the outbox)\n");
        }
        if (tries == 50)
            TEST_FAIL_("%s n=%llu: messages left unsent: %d %s", name, (unsigned long long)n, rc,
                       err->message);
        ASSERT_EQ(check_sent_delivered(path, d), BATCH);
        if (!injected) break;
    }
    fprintf(stderr, "   %llu of them tried\n", (unsigned long long)tried);
    report(name, n - 1);
}

TEST(relay_file)
{
    dest d = {.name = "file"};
    snprintf(d.file, sizeof d.file, "%s", test_path("events.jsonl"));
    snprintf(d.url, sizeof d.url, "file:%s", d.file);
    d.has = file_has;
    sweep_relay("relay batch sqlite -> file:", &d);
}

TEST(relay_discard)
{
    dest d = {.name = "discard", .url = "discard:"};
    sweep_relay("relay batch sqlite -> discard:", &d);
}

static int handler_ok(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *e)
{
    return OUTBOX_OK;
}

TEST(relay_webhook)
{
    outbox_webhook_receiver_options ro;
    outbox_webhook_receiver *r = NULL;
    dest d = {.name = "webhook receiver"};
    int rc;

    snprintf(d.file, sizeof d.file, "%s", test_path("consumer.db"));
    outbox_webhook_receiver_options_init(&ro);
    ro.secret = SECRET;
    ro.db_path = d.file;
    ro.consumer = CONSUMER;
    ro.handler = handler_ok;
    rc = outbox_webhook_receiver_new(&r, &ro, err);
    if (rc == OUTBOX_ENOTBUILT) {
        fprintf(stderr, "   (skipped: %s)\n", err->message);
        return;
    }
    ASSERT_OK(rc, err);
    setenv("OUTBOX_SWEEP_SECRET", SECRET, 1);
    snprintf(d.url, sizeof d.url, "http://127.0.0.1:%u/hook", outbox_webhook_receiver_port(r));
    d.has = inbox_has;
    sweep_relay("relay batch sqlite -> http: (webhook receiver, both sides)", &d);
    outbox_webhook_receiver_free(r);
}

/* The receiver's own start-up (open, schema, bind) under the sweep. */
TEST(webhook_receiver_new)
{
    uint64_t n;
    for (n = sweep_first();; n++) {
        outbox_webhook_receiver_options ro;
        outbox_webhook_receiver *r = NULL;
        int rc, injected;
        outbox_webhook_receiver_options_init(&ro);
        ro.secret = SECRET;
        ro.db_path = test_path("receiver-new.db");
        ro.consumer = CONSUMER;
        ro.handler = handler_ok;
        arm(n);
        rc = outbox_webhook_receiver_new(&r, &ro, err);
        outbox_webhook_receiver_free(r);
        injected = disarm();
        if (rc == OUTBOX_ENOTBUILT) return;
        ok_or_error(rc);
        if (rc != OUTBOX_OK && !injected)
            TEST_FAIL_("n=%llu: %d %s", (unsigned long long)n, rc, err->message);
        if (!injected) break;
    }
    report("webhook receiver start and stop", n - 1);
}

/* ---- inbox ----------------------------------------------------------------- */

TEST(inbox_sqlite)
{
    const char *path = test_path("inbox.db");
    sqlite3 *db;
    uint64_t n;

    fresh_outbox(path);
    db = db_open(path);
    for (n = sweep_first();; n++) {
        char id[37];
        int rc, injected;
        ASSERT_OK(outbox_uuid_v7(id), err);
        db_exec(db, "BEGIN");
        arm(n);
        rc = outbox_inbox_record_sqlite(db, CONSUMER, id, err);
        injected = disarm();
        ok_or_error(rc);
        if (rc != OUTBOX_OK && !injected)
            TEST_FAIL_("n=%llu: %d %s", (unsigned long long)n, rc, err->message);
        if (!sqlite3_get_autocommit(db)) db_exec(db, "COMMIT");
        ASSERT_EQ(db_count(db, "SELECT count(*) FROM outbox_inbox WHERE message_id = ?", id),
                  rc == OUTBOX_OK ? 1 : 0);
        if (rc == OUTBOX_OK) { /* a second delivery is a duplicate, or an error */
            db_exec(db, "BEGIN");
            arm(n);
            rc = outbox_inbox_record_sqlite(db, CONSUMER, id, err);
            disarm();
            if (rc == OUTBOX_OK)
                TEST_FAIL_("n=%llu: a recorded id was recorded again", (unsigned long long)n);
            ASSERT(rc == OUTBOX_DUPLICATE || rc < 0);
            if (!sqlite3_get_autocommit(db)) db_exec(db, "ROLLBACK");
        }
        if (!injected) break;
    }
    sqlite3_close(db);
    report("inbox record (sqlite)", n - 1);
}

/* ---- webhook sign / verify ------------------------------------------------- */

TEST(webhook_sign_verify)
{
    static const char body[] = "{\"specversion\":\"1.0\",\"id\":\"x\"}";
    const char *id = "0190a0f0-0000-7000-8000-000000000001";
    char good[OUTBOX_WEBHOOK_SIGNATURE_SIZE], sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE], ts[32];
    const int64_t now = 1700000000;
    uint64_t n, most = 0;
    int rc;

    rc = outbox_webhook_sign(SECRET, id, now, body, sizeof body - 1, good, err);
    if (rc == OUTBOX_ENOTBUILT) return;
    ASSERT_OK(rc, err);
    snprintf(ts, sizeof ts, "%lld", (long long)now);
    for (n = sweep_first();; n++) {
        int injected, any = 0;
        arm(n);
        rc = outbox_webhook_sign(SECRET, id, now, body, sizeof body - 1, sig, err);
        injected = disarm();
        any |= injected;
        ok_or_error(rc);
        if (rc == OUTBOX_OK)
            ASSERT_STREQ(sig, good);
        else if (!injected)
            TEST_FAIL_("sign: %d %s", rc, err->message);

        arm(n);
        rc = outbox_webhook_verify(SECRET, id, ts, good, body, sizeof body - 1, 0, now, err);
        injected = disarm();
        any |= injected;
        if (rc != OUTBOX_OK && (!injected || rc == OUTBOX_EBADSIGNATURE))
            TEST_FAIL_("verify of a good signature: %d %s", rc, err->message);

        arm(n);
        rc = outbox_webhook_verify(SECRET, id, ts,
                                   "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", body,
                                   sizeof body - 1, 0, now, err);
        injected = disarm();
        any |= injected;
        if (rc == OUTBOX_OK)
            TEST_FAIL_("verify accepted a wrong signature (n=%llu)", (unsigned long long)n);
        if (rc != OUTBOX_EBADSIGNATURE && !injected)
            TEST_FAIL_("verify of a wrong signature: %d %s", rc, err->message);
        most = n;
        if (!any) break;
    }
    report("webhook sign + verify (good and bad signature)", most - 1);
}

/* ---- PostgreSQL ------------------------------------------------------------ */

#ifdef OUTBOX_HAVE_LIBPQ
static pgh_server pg;
static int64_t pg_count_id(const char *id)
{
    PGconn *c = pgh_connect(&pg);
    char sql[200];
    int64_t v;
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox.outbox WHERE id = '%s'", id);
    v = pgh_count(c, sql);
    PQfinish(c);
    return v;
}

TEST(postgres)
{
    outbox_store *store = NULL;
    const char *why = pgh_available();
    if (why != NULL) {
        fprintf(stderr, "   skipped: %s\n", why);
        return;
    }
    pgh_start(&pg);
    ASSERT_OK(outbox_store_open(pg.url, &store, err), err);
    ASSERT_OK(outbox_store_init(store, NULL, NULL, err), err);
    outbox_store_close(store);
    report("store open + enqueue (postgres://)", sweep_store_enqueue(pg.url, pg_count_id));
}
#else
TEST(postgres)
{
    fprintf(stderr, "   skipped: built without libpq\n");
}
#endif

int main(void)
{
    /* Thousands of fresh databases: on tmpfs when there is one, as fsync
     * costs time there is no need to spend. */
    if (getenv("TMPDIR") == NULL && access("/dev/shm", W_OK) == 0) setenv("TMPDIR", "/dev/shm", 1);
    route_library_allocations();
    outbox_log_set(NULL, NULL, OUTBOX_LOG_ERROR);
    RUN_SWEEP(enqueue_sqlite);
    RUN_SWEEP(enqueue_store_sqlite);
    RUN_SWEEP(inbox_sqlite);
    RUN_SWEEP(webhook_sign_verify);
    RUN_SWEEP(webhook_receiver_new);
    RUN_SWEEP(relay_file);
    RUN_SWEEP(relay_discard);
    RUN_SWEEP(relay_webhook);
    RUN_SWEEP(postgres);
    fprintf(stderr, "allocation points swept per operation:\n");
    for (int i = 0; i < nresults; i++)
        fprintf(stderr, "  %6llu  %s\n", (unsigned long long)results[i].points, results[i].op);
    return 0;
}
#endif

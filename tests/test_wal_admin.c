/*
 * test_wal_admin.c - WAL capture's operator side on a real PostgreSQL:
 *
 *   - a server with wal_level=replica: `init --capture wal` refuses with
 *     the message that says what to set, and creates nothing;
 *   - `init --capture wal` creates the pgoutput slot and the empty
 *     publication, twice (the second changes nothing), and warns while
 *     max_slot_wal_keep_size is unlimited (not once it is set);
 *   - `status` (text and --json) shows the slot, its lag in bytes growing
 *     as transactional logical messages are emitted, and whether a relay
 *     streams from it; a relay's --listen /metrics has the two gauges;
 *   - `wal drop-slot` refuses while a replication connection streams from
 *     the slot, naming its pid, then drops slot and publication;
 *   - through the C API: a role without REPLICATION, a non-PostgreSQL
 *     store, bad names, and the default names; a slot the server
 *     invalidated (max_slot_wal_keep_size exceeded) is refused by setup.
 *
 * Exit 77 without PostgreSQL binaries or the outbox CLI.
 */
#ifndef OUTBOX_HAVE_LIBPQ
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "skipped: this build has no PostgreSQL store (libpq not found)\n");
    return 77;
}
#else

#include "store/pg_wal.h"
#include "support/net.h"
#include "support/pg.h"
#include "support/proc.h"
#include "support/tmp.h"
#include "test.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

static pgh_server server;

/* Runs `outbox ARGS...`; *out and *err (freed by the caller) get stdout
 * and stderr.  Returns the exit code. */
static int run_cli(char **out, char **err, const char *const *args)
{
    const char *argv[16];
    char out_path[CH_PATH], err_path[CH_PATH];
    int n = 0, code;

    argv[n++] = test_outbox_bin();
    while (*args && n < 15)
        argv[n++] = *args++;
    argv[n] = NULL;
    ch_path(out_path, "cli.out");
    ch_path(err_path, "cli.err");
    unlink(out_path); /* ch_run appends to it */
    code = ch_run(argv, NULL, out_path, err_path, 120000);
    *out = test_read_file(out_path, NULL);
    *err = test_read_file(err_path, NULL);
    ASSERT(*out != NULL && *err != NULL);
    return code;
}

static int64_t count(const char *sql)
{
    PGconn *c = pgh_connect(&server);
    int64_t n = pgh_count(c, sql);
    PQfinish(c);
    return n;
}

static void exec_sql(const char *sql)
{
    PGconn *c = pgh_connect(&server);
    pgh_exec(c, sql);
    PQfinish(c);
}

static int64_t slots(void)
{
    return count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_outbox'");
}

static int64_t publications(void)
{
    return count("SELECT count(*) FROM pg_publication WHERE pubname = 'outbox_outbox'");
}

/* `status --json` parsed; its "wal" member (borrowed from *root). */
static json_t *status_wal(json_t **root)
{
    const char *args[] = {"status", "--store", server.url, "--json", NULL};
    char *out, *err;
    json_error_t jerr;
    int code = run_cli(&out, &err, args);
    if (code != 0) TEST_FAIL_("status exited %d: %s", code, err);
    *root = json_loads(out, 0, &jerr);
    if (!*root) TEST_FAIL_("status --json is not JSON (%s): %s", jerr.text, out);
    free(out);
    free(err);
    return json_object_get(*root, "wal");
}

/* n committed transactions, each with one logical message of WAL capture. */
static void emit(int n)
{
    PGconn *c = pgh_connect(&server);
    for (int i = 0; i < n; i++) {
        pgh_exec(c, "BEGIN");
        pgh_exec(c, "SELECT pg_logical_emit_message(true, 'outbox:outbox', 'x')");
        pgh_exec(c, "COMMIT");
    }
    PQfinish(c);
}

/* Runs first with wal_level=replica (set before the server starts). */
TEST(replica_refused)
{
    const char *args[] = {"init", "--store", server.url, "--capture", "wal", NULL};
    char *out, *err;
    ASSERT_EQ(run_cli(&out, &err, args), 2);
    ASSERT_CONTAINS(err, "wal_level is replica: set wal_level = logical in postgresql.conf");
    ASSERT_CONTAINS(err, "restart PostgreSQL");
    /* The outbox schema is made before; no slot, no publication. */
    ASSERT_CONTAINS(out, "created the outbox schema");
    ASSERT_EQ(slots(), 0);
    ASSERT_EQ(publications(), 0);
    free(out);
    free(err);
}

TEST(init_creates_slot_and_publication)
{
    const char *args[] = {"init", "--store", server.url, "--capture", "wal", NULL};
    char *out, *err;

    ASSERT_EQ(run_cli(&out, &err, args), 0);
    ASSERT_CONTAINS(out, "created the replication slot outbox_outbox and the publication "
                         "outbox_outbox for WAL capture");
    ASSERT_CONTAINS(err, "max_slot_wal_keep_size is -1 (unlimited)");
    ASSERT_CONTAINS(err, "ALTER SYSTEM SET max_slot_wal_keep_size");
    free(out);
    free(err);
    ASSERT_EQ(count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_outbox'"
                    " AND slot_type = 'logical' AND plugin = 'pgoutput'"
                    " AND database = current_database()"),
              1);
    ASSERT_EQ(publications(), 1);
    /* Empty: no tables (messages 'true' delivers the logical messages). */
    ASSERT_EQ(count("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'outbox_outbox'"),
              0);

    /* Again: nothing new; with a limit set, no warning. */
    exec_sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'");
    exec_sql("SELECT pg_reload_conf()");
    for (int tries = 0; tries < 100; tries++) {
        if (count("SELECT setting::bigint FROM pg_settings"
                  " WHERE name = 'max_slot_wal_keep_size'") == 1024)
            break;
        ch_sleep_ms(50);
    }
    ASSERT_EQ(run_cli(&out, &err, args), 0);
    ASSERT_CONTAINS(out, "schema version");
    ASSERT_CONTAINS(out, "the replication slot outbox_outbox and the publication outbox_outbox "
                         "for WAL capture are in place");
    ASSERT(strstr(err, "max_slot_wal_keep_size") == NULL);
    free(out);
    free(err);
    ASSERT_EQ(slots(), 1);
    ASSERT_EQ(publications(), 1);
}

TEST(status_shows_the_lag)
{
    const char *text_args[] = {"status", "--store", server.url, NULL};
    json_t *root, *wal;
    int64_t before, after;
    char *out, *err;

    wal = status_wal(&root);
    ASSERT(json_is_object(wal));
    ASSERT_STREQ(json_string_value(json_object_get(wal, "slot")), "outbox_outbox");
    ASSERT(json_is_false(json_object_get(wal, "active")));
    ASSERT(json_is_integer(json_object_get(wal, "lag_bytes")));
    ASSERT(json_is_integer(json_object_get(wal, "lag_ms")));
    before = json_integer_value(json_object_get(wal, "lag_bytes"));
    json_decref(root);

    /* Lag is WAL, not decoding: it grows with the messages committed. */
    emit(50);
    wal = status_wal(&root);
    after = json_integer_value(json_object_get(wal, "lag_bytes"));
    json_decref(root);
    if (after < before + 50 * 20)
        TEST_FAIL_("lag_bytes %lld -> %lld", (long long)before, (long long)after);

    ASSERT_EQ(run_cli(&out, &err, text_args), 0);
    ASSERT_CONTAINS(out, "wal slot  outbox_outbox  lag ");
    ASSERT_CONTAINS(out, "no relay reads it");
    free(out);
    free(err);

    /* The public struct, through the library. */
    {
        outbox_store *store = NULL;
        outbox_status st;
        outbox_error e = {0, ""};
        ASSERT_OK(outbox_store_open(server.url, &store, &e), &e);
        ASSERT_OK(outbox_store_status(store, &st, sizeof st, &e), &e);
        ASSERT_STREQ(st.wal_slot, "outbox_outbox");
        ASSERT_EQ(st.wal_slot_exists, 1);
        ASSERT_EQ(st.wal_slot_active, 0);
        ASSERT_GE(st.wal_lag_bytes, after);
        outbox_store_close(store);
    }
}

/* GET path from 127.0.0.1:port: the whole reply (headers and body), or
 * NULL when nothing answers. */
static char *http_get(int port, const char *path)
{
    struct sockaddr_in a;
    char req[256], *buf;
    size_t len = 0, cap = 1 << 16;
    ssize_t got;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ASSERT(fd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return NULL;
    }
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    ASSERT(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    buf = malloc(cap);
    ASSERT(buf != NULL);
    while ((got = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)got;
        if (cap - len < 2) {
            buf = realloc(buf, cap *= 2);
            ASSERT(buf != NULL);
        }
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

/* A relay's --listen /metrics has both gauges for the store's slot. */
TEST(metrics_gauges)
{
    char listen[64], err_path[CH_PATH], *body = NULL;
    const char *argv[] = {
        test_outbox_bin(), "relay", "--store",           server.url, "--to", "discard:",
        "--listen",        listen,  "--metrics-refresh", "100ms",    NULL};
    int port = ch_free_port();
    pid_t pid;

    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    ch_path(err_path, "relay.err");
    pid = ch_spawn(argv, NULL, NULL, err_path);
    for (int tries = 0; tries < 600; tries++) {
        free(body);
        body = http_get(port, "/metrics");
        if (body && strstr(body, "outbox_wal_slot_lag_bytes{")) break;
        if (!ch_alive(pid)) {
            ch_dump("relay", err_path);
            char *why = test_read_file(err_path, NULL);
            if (why && strstr(why, "not built")) SKIP("this build has no monitor: %s", why);
            TEST_FAIL_("the relay exited");
        }
        ch_sleep_ms(50);
    }
    ch_stop(pid, SIGTERM, 30000);
    if (!body) TEST_FAIL_("no /metrics on port %d", port);
    ASSERT_CONTAINS(body, "# TYPE outbox_wal_slot_lag_bytes gauge");
    ASSERT_CONTAINS(body, "# TYPE outbox_wal_slot_lag_seconds gauge");
    ASSERT_CONTAINS(body, "outbox_wal_slot_lag_bytes{relay=\"");
    ASSERT_CONTAINS(body, "slot=\"outbox_outbox\"} ");
    ASSERT_CONTAINS(body, "outbox_wal_slot_lag_seconds{relay=\"");
    free(body);
}

/* A stream from the slot, as a capturing relay opens it. */
static PGconn *start_stream(void)
{
    char conninfo[600];
    PGconn *c;
    PGresult *res;
    snprintf(conninfo, sizeof conninfo, "%s replication=database", server.conninfo);
    c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) TEST_FAIL_("replication connection: %s", PQerrorMessage(c));
    res = PQexec(c, "START_REPLICATION SLOT outbox_outbox LOGICAL 0/0 (proto_version '1',"
                    " publication_names 'outbox_outbox', messages 'true')");
    if (PQresultStatus(res) != PGRES_COPY_BOTH)
        TEST_FAIL_("START_REPLICATION: %s", PQresultErrorMessage(res));
    PQclear(res);
    return c;
}

TEST(drop_slot_refused_while_streaming)
{
    const char *args[] = {"wal", "drop-slot", "--store", server.url, NULL};
    char needle[64], *out, *err;
    PGconn *stream = start_stream();
    json_t *root, *wal;

    for (int tries = 0; tries < 200; tries++) {
        if (count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_outbox'"
                  " AND active") == 1)
            break;
        ch_sleep_ms(50);
    }
    wal = status_wal(&root);
    ASSERT(json_is_true(json_object_get(wal, "active")));
    json_decref(root);

    ASSERT_EQ(run_cli(&out, &err, args), 1);
    snprintf(needle, sizeof needle, "walsender pid %d", PQbackendPID(stream));
    ASSERT_CONTAINS(err, "replication slot outbox_outbox is in use");
    ASSERT_CONTAINS(err, needle);
    ASSERT_CONTAINS(err, "stop that relay first");
    free(out);
    free(err);
    ASSERT_EQ(slots(), 1);
    ASSERT_EQ(publications(), 1);
    PQfinish(stream);
}

TEST(drop_slot)
{
    const char *args[] = {"wal", "drop-slot", "--store", server.url, NULL};
    char *out, *err;
    json_t *root, *wal;
    int code = 1;

    /* The walsender of the stream just closed may take a moment to go. */
    for (int tries = 0; tries < 200 && code != 0; tries++) {
        code = run_cli(&out, &err, args);
        if (code != 0) {
            ASSERT_CONTAINS(err, "is in use");
            free(out);
            free(err);
            ch_sleep_ms(50);
        }
    }
    ASSERT_EQ(code, 0);
    ASSERT_CONTAINS(out, "dropped the replication slot outbox_outbox");
    free(out);
    free(err);
    ASSERT_EQ(slots(), 0);
    ASSERT_EQ(publications(), 0);
    wal = status_wal(&root);
    ASSERT(json_is_null(wal));
    json_decref(root);

    /* Nothing left to drop is not an error. */
    ASSERT_EQ(run_cli(&out, &err, args), 0);
    ASSERT_CONTAINS(out, "no replication slot outbox_outbox");
    free(out);
    free(err);
}

/* The C API's refusals, and custom names. */
TEST(api)
{
    char url[700], slot[64], pub[64];
    outbox_store *store = NULL;
    outbox_wal_slot w;
    outbox_error e = {0, ""};

    outbox__pg_wal_names("Shop_Outbox", NULL, "", slot, pub);
    ASSERT_STREQ(slot, "outbox_shop_outbox");
    ASSERT_STREQ(pub, "outbox_shop_outbox");
    outbox__pg_wal_names("outbox", "s1", "p1", slot, pub);
    ASSERT_STREQ(slot, "s1");
    ASSERT_STREQ(pub, "p1");
    ASSERT(outbox__pg_wal_valid_name("a_1"));
    ASSERT(!outbox__pg_wal_valid_name("A"));
    ASSERT(!outbox__pg_wal_valid_name("a-b"));
    ASSERT(!outbox__pg_wal_valid_name(""));

    /* A role without REPLICATION. */
    exec_sql("CREATE ROLE plain LOGIN");
    snprintf(url, sizeof url, "postgres://plain@127.0.0.1:%d/postgres", server.port);
    ASSERT_OK(outbox_store_open(url, &store, &e), &e);
    ASSERT_EQ(outbox_store_wal_setup(store, NULL, NULL, &w, sizeof w, &e), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(e.message, "the role plain lacks REPLICATION");
    ASSERT_CONTAINS(e.message, "ALTER ROLE plain REPLICATION");
    outbox_store_close(store);
    ASSERT_EQ(slots(), 0);

    /* Names: refused when bad; custom ones created and dropped. */
    ASSERT_OK(outbox_store_open(server.url, &store, &e), &e);
    ASSERT_EQ(outbox_store_wal_setup(store, "Bad-Name", NULL, &w, sizeof w, &e), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(e.message, "replication slot name 'Bad-Name' is not accepted");
    ASSERT_OK(outbox_store_wal_setup(store, "custom_slot", "custom_pub", &w, sizeof w, &e), &e);
    ASSERT_EQ(w.created, 1);
    ASSERT_EQ(w.exists, 1);
    ASSERT_STREQ(w.slot, "custom_slot");
    ASSERT_STREQ(w.publication, "custom_pub");
    ASSERT_EQ(count("SELECT count(*) FROM pg_publication WHERE pubname = 'custom_pub'"), 1);
    ASSERT_OK(outbox_store_wal_drop(store, "custom_slot", "custom_pub", &w, sizeof w, &e), &e);
    ASSERT_EQ(w.exists, 1);
    ASSERT_EQ(count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'custom_slot'"),
              0);
    ASSERT_EQ(count("SELECT count(*) FROM pg_publication WHERE pubname = 'custom_pub'"), 0);
    ASSERT_EQ(w.publication_kept, 0);

    /* Two slots streaming with one publication: dropping one keeps the
     * publication the other still needs; dropping the last drops it. */
    ASSERT_OK(outbox_store_wal_setup(store, "slot_a", "shared_pub", &w, sizeof w, &e), &e);
    ASSERT_OK(outbox_store_wal_setup(store, "slot_b", "shared_pub", &w, sizeof w, &e), &e);
    ASSERT_OK(outbox_store_wal_drop(store, "slot_a", "shared_pub", &w, sizeof w, &e), &e);
    ASSERT_EQ(w.publication_kept, 1);
    ASSERT_EQ(count("SELECT count(*) FROM pg_publication WHERE pubname = 'shared_pub'"), 1);
    ASSERT_OK(outbox_store_wal_drop(store, "slot_b", "shared_pub", &w, sizeof w, &e), &e);
    ASSERT_EQ(w.publication_kept, 0);
    ASSERT_EQ(count("SELECT count(*) FROM pg_publication WHERE pubname = 'shared_pub'"), 0);
    outbox_store_close(store);

    /* A physical slot of the same name is not taken over. */
    exec_sql("SELECT pg_create_physical_replication_slot('phys')");
    ASSERT_OK(outbox_store_open(server.url, &store, &e), &e);
    ASSERT_EQ(outbox_store_wal_setup(store, "phys", NULL, &w, sizeof w, &e), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(e.message, "replication slot phys exists but is a physical slot");
    outbox_store_close(store);
    exec_sql("SELECT pg_drop_replication_slot('phys')");

    /* Not PostgreSQL. */
    {
        char db[CH_PATH + 8], *out, *err;
        const char *args[] = {"init", "--store", db, "--capture", "wal", NULL};
        snprintf(db, sizeof db, "sqlite:%s", test_path("w.db"));
        ASSERT_EQ(run_cli(&out, &err, args), 2);
        ASSERT_CONTAINS(err, "--capture wal needs a PostgreSQL store");
        free(out);
        free(err);
        args[3] = NULL;
        ASSERT_EQ(run_cli(&out, &err, args), 0);
        free(out);
        free(err);
        ASSERT_OK(outbox_store_open(db, &store, &e), &e);
        ASSERT_EQ(outbox_store_wal_setup(store, NULL, NULL, NULL, 0, &e), OUTBOX_ECONFIG);
        ASSERT_CONTAINS(e.message, "WAL capture is for PostgreSQL stores");
        ASSERT_EQ(outbox_store_wal_drop(store, NULL, NULL, NULL, 0, &e), OUTBOX_ECONFIG);
        outbox_store_close(store);
    }
}

/* A slot the server invalidated (max_slot_wal_keep_size exceeded) is
 * refused by setup, saying messages were lost, and can be dropped. */
TEST(lost_slot)
{
    outbox_store *store = NULL;
    outbox_wal_slot w;
    outbox_error e = {0, ""};
    int64_t lost = 0;

    exec_sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    exec_sql("SELECT pg_reload_conf()");
    for (int tries = 0; tries < 100; tries++) {
        if (count("SELECT setting::bigint FROM pg_settings"
                  " WHERE name = 'max_slot_wal_keep_size'") == 1)
            break;
        ch_sleep_ms(50);
    }
    ASSERT_OK(outbox_store_open(server.url, &store, &e), &e);
    ASSERT_OK(outbox_store_wal_setup(store, "doomed", "doomed", &w, sizeof w, &e), &e);
    ASSERT_EQ(w.keep_size_mb, 1);
    /* WAL segments past the limit, then a checkpoint: the slot is lost. */
    for (int tries = 0; tries < 20 && !lost; tries++) {
        for (int i = 0; i < 3; i++) {
            exec_sql("SELECT pg_logical_emit_message(false, 'other', 'x')");
            exec_sql("SELECT pg_switch_wal()");
        }
        exec_sql("CHECKPOINT");
        lost = count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'doomed'"
                     " AND wal_status = 'lost'");
    }
    ASSERT_EQ(lost, 1);
    ASSERT_EQ(outbox_store_wal_setup(store, "doomed", "doomed", &w, sizeof w, &e), OUTBOX_ECONFIG);
    ASSERT_CONTAINS(e.message, "replication slot doomed is lost");
    ASSERT_OK(outbox_store_wal_drop(store, "doomed", "doomed", &w, sizeof w, &e), &e);
    ASSERT_EQ(count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'doomed'"), 0);
    outbox_store_close(store);
    exec_sql("ALTER SYSTEM RESET max_slot_wal_keep_size");
    exec_sql("SELECT pg_reload_conf()");
}

int main(void)
{
    const char *why = pgh_available();
    if (why) SKIP("%s", why);
    if (!getenv("OUTBOX_BIN")) SKIP("the outbox binary was not found: run through ctest");
    pgh_set_setting("wal_level=replica");
    pgh_start(&server);
    RUN(replica_refused);
    pgh_set_setting(NULL);
    pgh_stop_immediate(&server);
    pgh_start_server(&server);
    RUN(init_creates_slot_and_publication);
    RUN(status_shows_the_lag);
    RUN(metrics_gauges);
    RUN(drop_slot_refused_while_streaming);
    RUN(drop_slot);
    RUN(api);
    RUN(lost_slot);
    printf("ok\n");
    return 0;
}

#endif /* OUTBOX_HAVE_LIBPQ */

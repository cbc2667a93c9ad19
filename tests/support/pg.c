/*
 * pg.c - a real PostgreSQL server for the tests (see pg.h).
 */
#include "support/pg.h"

#include "support/net.h"
#include "support/proc.h"
#include "support/tmp.h"
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>

static pgh_server *current;

/* One more "-c NAME=VALUE" for the next start (pgh_set_setting); a
 * harmless repeat of a default when none is set. */
static char extra_setting[128] = "max_connections=60";

void pgh_set_setting(const char *setting)
{
    snprintf(extra_setting, sizeof extra_setting, "%s", setting ? setting : "max_connections=60");
}

/* Finds the directory holding initdb/postgres/pg_ctl; 0 when none. */
static int find_bin(char *out, size_t len)
{
    const char *env = getenv("PG_BIN");
    char path[512];
    if (env && *env) {
        snprintf(path, sizeof path, "%s/initdb", env);
        if (access(path, X_OK) == 0) {
            snprintf(out, len, "%s", env);
            return 1;
        }
    }
    DIR *d = opendir("/usr/lib/postgresql");
    if (d) {
        struct dirent *e;
        int best = 0;
        while ((e = readdir(d)) != NULL) {
            int v = atoi(e->d_name);
            if (v <= best) continue;
            snprintf(path, sizeof path, "/usr/lib/postgresql/%.32s/bin/initdb", e->d_name);
            if (access(path, X_OK) == 0) {
                best = v;
                snprintf(out, len, "/usr/lib/postgresql/%.32s/bin", e->d_name);
            }
        }
        closedir(d);
        if (best) return 1;
    }
    const char *dirs[] = {"/usr/local/pgsql/bin", "/usr/local/bin", "/usr/bin", NULL};
    for (int i = 0; dirs[i]; i++) {
        snprintf(path, sizeof path, "%s/initdb", dirs[i]);
        if (access(path, X_OK) == 0) {
            snprintf(out, len, "%s", dirs[i]);
            return 1;
        }
    }
    return 0;
}

/* Finds the binaries and the user to run them as; NULL, or why not. */
static const char *find_server(pgh_server *s)
{
    if (!find_bin(s->bin, sizeof s->bin))
        return "PostgreSQL server binaries (initdb, postgres) not found: install the postgresql "
               "package or set PG_BIN";
    s->uid = getuid();
    s->gid = getgid();
    if (s->uid == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw) return "running as root and no 'nobody' user to run PostgreSQL as";
        s->uid = pw->pw_uid;
        s->gid = pw->pw_gid;
    }
    return NULL;
}

const char *pgh_available(void)
{
    pgh_server probe;
    memset(&probe, 0, sizeof probe);
    return find_server(&probe);
}

/* Starts argv as the server's user, in a process group of its own (a ^C to
 * the test reaches the postmaster only as the SIGQUIT sent by proc.c: an
 * immediate shutdown), output appended to the log. */
static pid_t spawn(const pgh_server *s, const char *const *argv)
{
    static const char *const env[] = {"LC_ALL=C", "PGDATA=", NULL};
    ch_spawn_opts o;
    memset(&o, 0, sizeof o);
    o.env = env;
    o.out_path = o.err_path = s->log;
    o.as_user = getuid() == 0;
    o.uid = s->uid;
    o.gid = s->gid;
    o.own_group = 1;
    o.exit_signal = SIGQUIT;
    return ch_spawn_with(argv, &o);
}

static void show_log(const pgh_server *s, const char *what)
{
    ch_dump(what, s->log);
}

static void cleanup(void)
{
    pgh_server *s = current;
    if (!s) return;
    ch_stop(s->pid, SIGQUIT, 5000);
    s->pid = 0;
    ch_rmtree(s->dir);
    current = NULL;
}

void pgh_forget(void)
{
    current = NULL;
}

/* Waits until the server answers; 1 when it does within timeout_ms. */
static int wait_ready(pgh_server *s, int64_t timeout_ms)
{
    for (int64_t waited = 0; waited < timeout_ms; waited += 50) {
        if (PQping(s->conninfo) == PQPING_OK) return 1;
        if (s->pid > 0 && !ch_alive(s->pid)) {
            ch_wait(s->pid, 1000);
            s->pid = 0;
            return 0;
        }
        ch_sleep_ms(50);
    }
    return 0;
}

void pgh_start_server(pgh_server *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char postgres[300];
    snprintf(postgres, sizeof postgres, "%s/postgres", s->bin);
    const char *argv[] = {
        postgres, "-D", s->data, "-k", s->dir, "-p", port, "-c", "listen_addresses=127.0.0.1", "-c",
        "max_connections=60", "-c", "shared_buffers=64MB", "-c", "logging_collector=off", "-c",
        "log_min_messages=warning", "-c", "client_min_messages=warning",
        /* crash recovery syncs the data directory: one
         * syncfs() instead of an fsync per file */
        "-c", "recovery_init_sync_method=syncfs",
        /* WAL capture (logical decoding messages, slots) */
        "-c", "wal_level=logical", "-c", "max_replication_slots=10", "-c", "max_wal_senders=10",
        /* the last -c of a name wins: pgh_set_setting */
        "-c", extra_setting, NULL};
    s->pid = spawn(s, argv);
    if (!wait_ready(s, 60000)) {
        show_log(s, "postgres log");
        TEST_FAIL_("PostgreSQL did not start on port %d", s->port);
    }
}

void pgh_stop_immediate(pgh_server *s)
{
    char pg_ctl[300];
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", s->bin);
    const char *argv[] = {pg_ctl, "stop", "-D", s->data, "-m", "immediate", "-w", NULL};
    int code = ch_wait_or_die(spawn(s, argv), 300000, "pg_ctl stop");
    if (code != 0) ch_stop(s->pid, SIGQUIT, 5000);
    if (s->pid > 0) ch_wait_or_die(s->pid, 60000, "postmaster");
    s->pid = 0;
}

void pgh_start(pgh_server *s)
{
    const char *why;
    memset(s, 0, sizeof *s);
    if ((why = find_server(s)) != NULL) SKIP("%s", why);
    ch_tempdir(s->dir, sizeof s->dir, "outbox-pg");
    if (chown(s->dir, s->uid, s->gid) != 0) TEST_FAIL_("chown %s: %s", s->dir, strerror(errno));
    current = s;
    atexit(cleanup);
    snprintf(s->data, sizeof s->data, "%s/data", s->dir);
    snprintf(s->log, sizeof s->log, "%s/postgres.log", s->dir);
    {
        int fd = open(s->log, O_WRONLY | O_CREAT, 0666);
        if (fd >= 0) {
            if (fchown(fd, s->uid, s->gid) != 0) {
            }
            close(fd);
        }
    }
    char initdb[300];
    snprintf(initdb, sizeof initdb, "%s/initdb", s->bin);
    const char *argv[] = {initdb,     "-D", s->data, "-A",   "trust",      "-U",
                          "postgres", "-N", "-E",    "UTF8", "--locale=C", NULL};
    int code = ch_wait_or_die(spawn(s, argv), 300000, "initdb");
    if (code != 0) {
        show_log(s, "initdb output");
        TEST_FAIL_("initdb exited %d", code);
    }
    s->port = ch_free_port();
    snprintf(s->conninfo, sizeof s->conninfo,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=5", s->port);
    snprintf(s->url, sizeof s->url, "postgres://postgres@127.0.0.1:%d/postgres", s->port);
    pgh_start_server(s);
}

void pgh_unix_url(const pgh_server *s, char *out, size_t len)
{
    snprintf(out, len, "postgres://postgres@/postgres?host=%s&port=%d", s->dir, s->port);
}

PGconn *pgh_connect(const pgh_server *s)
{
    PGconn *c = PQconnectdb(s->conninfo);
    if (!c || PQstatus(c) != CONNECTION_OK)
        TEST_FAIL_("connect %s: %s", s->conninfo, c ? PQerrorMessage(c) : "no memory");
    return c;
}

void pgh_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        TEST_FAIL_("%s: %s", sql, msg);
    }
    PQclear(r);
}

int64_t pgh_count(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
        PQclear(r);
        TEST_FAIL_("%s: %s", sql, msg);
    }
    int64_t v = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

int64_t pgh_outbox_count(const pgh_server *s, const char *status)
{
    PGconn *c = pgh_connect(s);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox.outbox WHERE status = '%s'", status);
    int64_t n = pgh_count(c, sql);
    PQfinish(c);
    return n;
}

void pgh_init_wal(const pgh_server *s)
{
    const char *argv[] = {test_outbox_bin(), "init", "--store", s->url, "--capture", "wal", NULL};
    const char *errp = test_path("init-wal.err");
    int code = ch_run(argv, NULL, NULL, errp, 60000);
    if (code != 0) {
        ch_dump("outbox init --capture wal stderr", errp);
        TEST_FAIL_("outbox init --capture wal exited %d", code);
    }
}

/* One netstring: "<length>:<bytes>," */
static void netstring(char **at, const char *s)
{
    *at += sprintf(*at, "%zu:%s,", strlen(s), s);
}

char *pgh_emit_content(const outbox_msg *m)
{
    const char *fields[] = {outbox_msg_id(m),
                            outbox_msg_type(m),
                            outbox_msg_aggregate_type(m),
                            outbox_msg_aggregate_id(m),
                            NULL,
                            outbox_msg_headers_json(m),
                            outbox_msg_payload(m)};
    char occurred[32], *out, *at;
    size_t total = 3;
    snprintf(occurred, sizeof occurred, "%lld", (long long)outbox_msg_occurred_at(m));
    fields[4] = occurred;
    for (size_t i = 0; i < 7; i++)
        total += strlen(fields[i]) + 24;
    out = malloc(total);
    if (!out) TEST_FAIL_("out of memory");
    at = out + sprintf(out, "v1");
    for (size_t i = 0; i < 7; i++)
        netstring(&at, fields[i]);
    return out;
}

int pgh_emit(PGconn *c, const char *schema, const outbox_msg *m, char *why, size_t why_len)
{
    char prefix[80];
    char *content = pgh_emit_content(m);
    const char *params[2] = {prefix, content};
    snprintf(prefix, sizeof prefix, "outbox:%s", schema);
    PGresult *res = PQexecParams(c, "SELECT pg_logical_emit_message(true, $1, $2)", 2, NULL, params,
                                 NULL, NULL, 0);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok && why) snprintf(why, why_len, "%s", PQerrorMessage(c));
    PQclear(res);
    free(content);
    return ok ? 0 : -1;
}

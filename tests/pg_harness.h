/*
 * pg_harness.h - a real PostgreSQL server for the tests: initdb into a
 * fresh temporary directory, the postmaster started on a free port on
 * 127.0.0.1 (and a unix socket in that directory), stopped by PID at exit
 * (also when a test fails or a fatal signal arrives) and the directory
 * removed.
 *
 * PostgreSQL refuses to run as root, and CI runs the tests as root: the
 * cluster is then created and run as `nobody` (set with setgid/setuid in
 * the child).  Tests exit 77 (skipped) when no initdb/postgres binary is
 * found (PG_BIN, then /usr/lib/postgresql/<ver>/bin, then PATH) or when no
 * unprivileged user exists.
 *
 * fsync stays on: the crash tests stop the server with
 * `pg_ctl stop -m immediate`, which is a crash from the database's view.
 *
 * Tests that include internal.h first also get store-level helpers: open
 * a store, claim (plain or pipelined), complete as sent, capture the log.
 */
#ifndef OUTBOX_PG_HARNESS_H
#define OUTBOX_PG_HARNESS_H

#include "test.h"

#include <libpq-fe.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

typedef struct pgh_server {
    char bin[256];      /* directory of initdb, postgres, pg_ctl */
    char dir[256];      /* temp dir: data/, socket, log */
    char data[300];
    char log[300];
    int port;
    uid_t uid;          /* who runs the server (getuid() when not root) */
    gid_t gid;
    pid_t pid;          /* postmaster, 0 when stopped */
    char conninfo[512]; /* keyword string for libpq */
    char url[512];      /* postgres://postgres@127.0.0.1:PORT/postgres */
} pgh_server;

static pgh_server *pgh_current_;

static inline int pgh_exists_(const char *path)
{
    return access(path, X_OK) == 0;
}

/* Finds the directory holding initdb/postgres/pg_ctl; 0 when none. */
static inline int pgh_find_bin_(char *out, size_t len)
{
    const char *env = getenv("PG_BIN");
    char path[512];
    if (env && *env) {
        snprintf(path, sizeof path, "%s/initdb", env);
        if (pgh_exists_(path)) {
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
            if (pgh_exists_(path)) {
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
        if (pgh_exists_(path)) {
            snprintf(out, len, "%s", dirs[i]);
            return 1;
        }
    }
    return 0;
}

/* Forks and execs argv as the server's user, output appended to log.
 * Returns the child's pid. */
static inline pid_t pgh_spawn_(const pgh_server *s, const char *const *argv, const char *log)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) TEST_FAIL_("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0666);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        setpgid(0, 0); /* signals to the test's group do not reach it */
        if (getuid() == 0) {
            if (setgroups(0, NULL) != 0 || setgid(s->gid) != 0 || setuid(s->uid) != 0) _exit(125);
        }
        setenv("LC_ALL", "C", 1);
        unsetenv("PGDATA");
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static inline int pgh_wait_(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static inline int pgh_free_port_(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        TEST_FAIL_("cannot find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* Kills the postmaster (immediate shutdown) and waits for it. */
static inline void pgh_kill_(pgh_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGQUIT);
        for (int i = 0; i < 500; i++) {
            if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
                s->pid = 0;
                break;
            }
            usleep(10000);
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            s->pid = 0;
        }
    }
}

static inline void pgh_cleanup_(void)
{
    pgh_server *s = pgh_current_;
    if (!s) return;
    pgh_kill_(s);
    if (s->dir[0] && !getenv("OUTBOX_TEST_KEEP")) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s->dir);
    }
    pgh_current_ = NULL;
}

static inline void pgh_on_signal_(int sig)
{
    pgh_server *s = pgh_current_;
    if (s && s->pid > 0) kill(s->pid, SIGQUIT);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Waits until the server answers; 1 when it does within timeout_ms. */
static inline int pgh_wait_ready_(pgh_server *s, int64_t timeout_ms)
{
    for (int64_t waited = 0; waited < timeout_ms; waited += 50) {
        if (PQping(s->conninfo) == PQPING_OK) return 1;
        if (s->pid > 0 && waitpid(s->pid, NULL, WNOHANG) == s->pid) {
            s->pid = 0;
            return 0;
        }
        usleep(50000);
    }
    return 0;
}

/* Starts the postmaster on s->data (already initialised). */
static inline void pgh_start_server(pgh_server *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char postgres[300];
    snprintf(postgres, sizeof postgres, "%s/postgres", s->bin);
    const char *argv[] = {postgres, "-D", s->data, "-k", s->dir, "-p", port,
                          "-c", "listen_addresses=127.0.0.1",
                          "-c", "max_connections=60",
                          "-c", "shared_buffers=64MB",
                          "-c", "logging_collector=off",
                          "-c", "log_min_messages=warning",
                          "-c", "client_min_messages=warning",
                          /* crash recovery syncs the data directory: one
                           * syncfs() instead of an fsync per file */
                          "-c", "recovery_init_sync_method=syncfs",
                          NULL};
    s->pid = pgh_spawn_(s, argv, s->log);
    if (!pgh_wait_ready_(s, 60000)) {
        char *text = test_read_file(s->log, NULL);
        fprintf(stderr, "---- postgres log\n%s----\n", text ? text : "(none)");
        free(text);
        TEST_FAIL_("PostgreSQL did not start on port %d", s->port);
    }
}

/* `pg_ctl stop -m immediate` (a crash as far as the database can tell),
 * then reaps the postmaster. */
static inline void pgh_stop_immediate(pgh_server *s)
{
    char pg_ctl[300];
    snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", s->bin);
    const char *argv[] = {pg_ctl, "stop", "-D", s->data, "-m", "immediate", "-w", NULL};
    int code = pgh_wait_(pgh_spawn_(s, argv, s->log));
    if (code != 0) pgh_kill_(s);
    if (s->pid > 0) {
        pgh_wait_(s->pid);
        s->pid = 0;
    }
}

/* Creates a cluster in a fresh temporary directory and starts it.  Skips
 * the test (77) when PostgreSQL is not installed. */
static inline void pgh_start(pgh_server *s)
{
    memset(s, 0, sizeof *s);
    if (!pgh_find_bin_(s->bin, sizeof s->bin))
        SKIP("PostgreSQL server binaries (initdb, postgres) not found: install the postgresql "
             "package or set PG_BIN");
    s->uid = getuid();
    s->gid = getgid();
    if (s->uid == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw) SKIP("running as root and no 'nobody' user to run PostgreSQL as");
        s->uid = pw->pw_uid;
        s->gid = pw->pw_gid;
    }
    const char *base = getenv("TMPDIR");
    snprintf(s->dir, sizeof s->dir, "%s/outbox-pg-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(s->dir)) TEST_FAIL_("mkdtemp: %s", strerror(errno));
    if (chown(s->dir, s->uid, s->gid) != 0) TEST_FAIL_("chown %s: %s", s->dir, strerror(errno));
    pgh_current_ = s;
    atexit(pgh_cleanup_);
    signal(SIGTERM, pgh_on_signal_);
    signal(SIGINT, pgh_on_signal_);
    signal(SIGSEGV, pgh_on_signal_);
    signal(SIGABRT, pgh_on_signal_);
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
    const char *argv[] = {initdb, "-D", s->data, "-A", "trust", "-U", "postgres", "-N",
                          "-E", "UTF8", "--locale=C", NULL};
    int code = pgh_wait_(pgh_spawn_(s, argv, s->log));
    if (code != 0) {
        char *text = test_read_file(s->log, NULL);
        fprintf(stderr, "---- initdb output\n%s----\n", text ? text : "(none)");
        free(text);
        TEST_FAIL_("initdb exited %d", code);
    }
    s->port = pgh_free_port_();
    snprintf(s->conninfo, sizeof s->conninfo,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=5", s->port);
    snprintf(s->url, sizeof s->url, "postgres://postgres@127.0.0.1:%d/postgres", s->port);
    pgh_start_server(s);
}

/* Connects to the test server; fails the test when it cannot. */
static inline PGconn *pgh_connect(const pgh_server *s)
{
    PGconn *c = PQconnectdb(s->conninfo);
    if (!c || PQstatus(c) != CONNECTION_OK)
        TEST_FAIL_("connect %s: %s", s->conninfo, c ? PQerrorMessage(c) : "no memory");
    return c;
}

/* Runs sql; fails the test on an error. */
static inline void pgh_exec(PGconn *c, const char *sql)
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

/* One-number query; fails the test on an error. */
static inline int64_t pgh_count(PGconn *c, const char *sql)
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

/* Rows of the outbox table in schema "outbox" with this status, on a new
 * connection to s. */
static inline int64_t pgh_outbox_count(const pgh_server *s, const char *status)
{
    PGconn *c = pgh_connect(s);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM outbox.outbox WHERE status = '%s'", status);
    int64_t n = pgh_count(c, sql);
    PQfinish(c);
    return n;
}

/* ------------------------------------------------------------------------
 * Store-level helpers, for tests that include internal.h first
 * ---------------------------------------------------------------------- */

#ifdef OUTBOX_INTERNAL_H

/* A log callback that appends "<level> <message>\n" to the outbox_buf in
 * user (levels: D, I, W, E). */
static inline void pgh_capture_log(void *user, int level, const char *component,
                                   const char *message)
{
    outbox_buf *b = user;
    (void)component;
    outbox__buf_puts(b, level >= OUTBOX_LOG_ERROR  ? "E "
                        : level >= OUTBOX_LOG_WARN ? "W "
                        : level >= OUTBOX_LOG_INFO ? "I "
                                                   : "D ");
    outbox__buf_puts(b, message);
    outbox__buf_puts(b, "\n");
}

static inline void pgh_store_open(outbox_store *s, const char *url)
{
    outbox_error err;
    int rc = outbox__store_open(s, url, &err);
    if (rc != OUTBOX_OK) TEST_FAIL_("opening %s: %d %s", url, rc, err.message);
}

/* Claims up to batch messages (failed messages block their aggregate),
 * plainly or pipelined with nothing in flight; fails the test on an error. */
static inline size_t pgh_claim(outbox_store *s, int pipelined, size_t batch, outbox_msg ***msgs)
{
    outbox_claim_params p = {batch, outbox__now_us(), 1, 0, NULL};
    outbox_error err;
    size_t n = 0;
    int rc = pipelined ? s->ops->claim_pipelined(s->state, &p, NULL, 0, msgs, &n, &err)
                       : s->ops->claim(s->state, &p, msgs, &n, &err);
    if (rc != OUTBOX_OK) TEST_FAIL_("claim: %d %s", rc, err.message);
    return n;
}

/* Records every message of a claim as sent (deleted). */
static inline void pgh_complete_sent(outbox_store *s, int pipelined, outbox_msg **msgs, size_t n)
{
    outbox_completion *c = calloc(n ? n : 1, sizeof *c);
    outbox_complete_params p = {OUTBOX_ON_SENT_DELETE, outbox__now_us(), NULL, 10000};
    outbox_error err;
    int rc;
    for (size_t i = 0; i < n; i++) {
        c[i].msg = msgs[i];
        c[i].outcome = OUTBOX_OUTCOME_SENT;
    }
    rc = pipelined ? s->ops->complete_pipelined(s->state, c, n, &p, 0, &err)
                   : s->ops->complete(s->state, c, n, &p, &err);
    free(c);
    if (rc != OUTBOX_OK) TEST_FAIL_("complete: %d %s", rc, err.message);
}

static inline void pgh_free_msgs(outbox_msg **msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) outbox_msg_free(msgs[i]);
    free(msgs);
}

#endif /* OUTBOX_INTERNAL_H */

#endif /* OUTBOX_PG_HARNESS_H */

/*
 * mariadb.c - a real MariaDB server for the tests (see mariadb.h).
 */
#ifdef OUTBOX_HAVE_MARIADB

#include "support/mariadb.h"

#include "support/net.h"
#include "support/proc.h"
#include "support/tmp.h"
#include "test.h"

#include <signal.h>

#define TEST_USER "outbox"
#define TEST_PASSWORD "outbox-test-pw"
#define TEST_DB "outbox_test"

static myh_server *current;

/* Finds an executable among names in MARIADB_BIN, /usr/sbin, /usr/bin. */
static int find_exe(const char *const *names, char *out, size_t len)
{
    const char *env = getenv("MARIADB_BIN");
    const char *dirs[] = {env && *env ? env : "/usr/sbin", "/usr/sbin", "/usr/bin",
                          "/usr/local/bin", NULL};
    for (int d = 0; dirs[d]; d++)
        for (int i = 0; names[i]; i++) {
            snprintf(out, len, "%s/%s", dirs[d], names[i]);
            if (access(out, X_OK) == 0) return 1;
        }
    return 0;
}

static const char *find_server(myh_server *s)
{
    static const char *const servers[] = {"mariadbd", "mysqld", NULL};
    static const char *const installs[] = {"mariadb-install-db", "mysql_install_db", NULL};
    if (!find_exe(servers, s->server, sizeof s->server) ||
        !find_exe(installs, s->install, sizeof s->install))
        return "MariaDB server binaries (mariadbd, mariadb-install-db) not found: install the "
               "mariadb-server package or set MARIADB_BIN";
    return NULL;
}

const char *myh_available(void)
{
    myh_server probe;
    memset(&probe, 0, sizeof probe);
    return find_server(&probe);
}

static void cleanup(void)
{
    myh_server *s = current;
    if (!s) return;
    if (s->pid > 0) ch_stop(s->pid, SIGKILL, 5000);
    s->pid = 0;
    ch_rmtree(s->dir);
    current = NULL;
}

void myh_forget(void)
{
    current = NULL;
}

static pid_t spawn(const myh_server *s, const char *const *argv)
{
    static const char *const env[] = {"LC_ALL=C", NULL};
    ch_spawn_opts o;
    memset(&o, 0, sizeof o);
    o.env = env;
    o.out_path = o.err_path = s->log;
    o.own_group = 1;
    o.exit_signal = SIGKILL;
    return ch_spawn_with(argv, &o);
}

/* Connects as root through the socket (no password: a fresh install). */
static MYSQL *connect_root(const myh_server *s)
{
    MYSQL *c = mysql_init(NULL);
    unsigned int timeout = 2;
    if (!c) return NULL;
    mysql_options(c, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    if (!mysql_real_connect(c, NULL, "root", NULL, NULL, 0, s->socket, 0)) {
        mysql_close(c);
        return NULL;
    }
    return c;
}

static int wait_ready(myh_server *s, int64_t timeout_ms)
{
    for (int64_t waited = 0; waited < timeout_ms; waited += 100) {
        MYSQL *c = connect_root(s);
        if (c) {
            mysql_close(c);
            return 1;
        }
        if (s->pid > 0 && !ch_alive(s->pid)) {
            ch_wait(s->pid, 1000);
            s->pid = 0;
            return 0;
        }
        ch_sleep_ms(100);
    }
    return 0;
}

void myh_start_server(myh_server *s)
{
    char datadir[320], socket[320], port[32], pidfile[320];
    snprintf(datadir, sizeof datadir, "--datadir=%s", s->data);
    snprintf(socket, sizeof socket, "--socket=%s", s->socket);
    snprintf(port, sizeof port, "--port=%d", s->port);
    snprintf(pidfile, sizeof pidfile, "--pid-file=%s/mariadbd.pid", s->dir);
    const char *argv[] = {s->server,
                          "--no-defaults",
                          datadir,
                          socket,
                          port,
                          pidfile,
                          "--bind-address=127.0.0.1",
                          "--user=root",
                          "--skip-name-resolve",
                          "--skip-log-bin",
                          "--max-connections=300",
                          "--innodb-buffer-pool-size=64M",
                          "--innodb-flush-log-at-trx-commit=1",
                          "--innodb-use-native-aio=0",
                          NULL};
    if (getuid() != 0) argv[7] = "--skip-symbolic-links";
    s->pid = spawn(s, argv);
    if (!wait_ready(s, 120000)) {
        ch_dump("mariadbd log", s->log);
        TEST_FAIL_("mariadbd did not start on port %d", s->port);
    }
}

void myh_kill(myh_server *s)
{
    if (s->pid > 0) {
        ch_kill9(s->pid);
        s->pid = 0;
    }
}

void myh_start(myh_server *s)
{
    const char *why;
    memset(s, 0, sizeof *s);
    if ((why = find_server(s)) != NULL) SKIP("%s", why);
    ch_tempdir(s->dir, sizeof s->dir, "outbox-mariadb");
    current = s;
    atexit(cleanup);
    snprintf(s->data, sizeof s->data, "%s/data", s->dir);
    snprintf(s->socket, sizeof s->socket, "%s/sock", s->dir);
    snprintf(s->log, sizeof s->log, "%s/mariadbd.log", s->dir);
    char datadir[320];
    snprintf(datadir, sizeof datadir, "--datadir=%s", s->data);
    const char *argv[] = {s->install,
                          "--no-defaults",
                          datadir,
                          "--auth-root-authentication-method=normal",
                          "--skip-test-db",
                          getuid() == 0 ? "--user=root" : "--skip-name-resolve",
                          NULL};
    int code = ch_wait_or_die(spawn(s, argv), 300000, "mariadb-install-db");
    if (code != 0) {
        ch_dump("mariadb-install-db output", s->log);
        TEST_FAIL_("mariadb-install-db exited %d", code);
    }
    s->port = ch_free_port();
    myh_start_server(s);
    MYSQL *c = connect_root(s);
    if (!c) TEST_FAIL_("cannot connect to mariadbd as root");
    myh_exec(c, "CREATE DATABASE " TEST_DB);
    myh_exec(c, "CREATE USER '" TEST_USER "'@'%' IDENTIFIED BY '" TEST_PASSWORD "'");
    myh_exec(c, "GRANT ALL ON *.* TO '" TEST_USER "'@'%'");
    mysql_close(c);
    snprintf(s->url, sizeof s->url, "mysql://" TEST_USER ":" TEST_PASSWORD "@127.0.0.1:%d/" TEST_DB,
             s->port);
}

MYSQL *myh_connect(const myh_server *s)
{
    MYSQL *c = mysql_init(NULL);
    unsigned int timeout = 10;
    if (!c) TEST_FAIL_("mysql_init: out of memory");
    mysql_options(c, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(c, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (!mysql_real_connect(c, "127.0.0.1", TEST_USER, TEST_PASSWORD, TEST_DB,
                            (unsigned int)s->port, NULL, 0))
        TEST_FAIL_("connect to 127.0.0.1:%d: %s", s->port, mysql_error(c));
    return c;
}

void myh_exec(MYSQL *c, const char *sql)
{
    if (mysql_query(c, sql) != 0) TEST_FAIL_("%s: %s", sql, mysql_error(c));
    MYSQL_RES *r = mysql_store_result(c);
    if (r) mysql_free_result(r);
}

int64_t myh_count(MYSQL *c, const char *sql)
{
    if (mysql_query(c, sql) != 0) TEST_FAIL_("%s: %s", sql, mysql_error(c));
    MYSQL_RES *r = mysql_store_result(c);
    if (!r) TEST_FAIL_("%s: no result: %s", sql, mysql_error(c));
    MYSQL_ROW row = mysql_fetch_row(r);
    int64_t v = row && row[0] ? strtoll(row[0], NULL, 10) : 0;
    mysql_free_result(r);
    return v;
}

#else

/* Without Connector/C this file only keeps the translation unit non-empty. */
typedef int myh_not_built;

#endif /* OUTBOX_HAVE_MARIADB */

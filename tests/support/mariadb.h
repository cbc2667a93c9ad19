/*
 * mariadb.h - a real MariaDB server for the tests (tests/support):
 * mariadb-install-db into a fresh temporary directory, mariadbd started on
 * a free port on 127.0.0.1 (and a unix socket in that directory), a user
 * and a database for the tests created through the socket as root,
 * stopped at exit (also when a test fails or a fatal signal arrives:
 * proc.h) and the directory removed.
 *
 * mariadbd refuses to run as root unless told which user to be: as root
 * (CI) it is started with --user=root.  Tests exit 77 (skipped) when no
 * mariadbd/mariadb-install-db is found (MARIADB_BIN, then /usr/sbin and
 * /usr/bin); myh_available() says so beforehand, for suites that run other
 * cases without MariaDB.  innodb_flush_log_at_trx_commit=1: the crash
 * tests SIGKILL the server, a crash from the database's view.
 */
#ifndef OUTBOX_TEST_SUPPORT_MARIADB_H
#define OUTBOX_TEST_SUPPORT_MARIADB_H

#include <mysql.h>

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct myh_server {
    char server[256];  /* mariadbd */
    char install[256]; /* mariadb-install-db */
    char dir[256];     /* temp dir: data/, socket, log */
    char data[300];
    char socket[300];
    char log[300];
    int port;
    pid_t pid;     /* mariadbd, 0 when stopped */
    char url[512]; /* mysql://outbox:...@127.0.0.1:PORT/outbox_test */
} myh_server;

/* NULL when a server can be started here, else why not (for a skip). */
const char *myh_available(void);

/* Creates a data directory in a fresh temporary directory, starts the
 * server and creates the test user and database.  Skips the test (77) when
 * MariaDB is not installed.  One server per program. */
void myh_start(myh_server *s);

/* Starts mariadbd on s->data (already initialised) and waits for it. */
void myh_start_server(myh_server *s);

/* SIGKILLs mariadbd (a crash) and reaps it. */
void myh_kill(myh_server *s);

/* In a forked child: this process's exit no longer stops the server. */
void myh_forget(void);

/* Connects to the test database as the test user; fails the test when it
 * cannot. */
MYSQL *myh_connect(const myh_server *s);

/* Runs sql; fails the test on an error. */
void myh_exec(MYSQL *c, const char *sql);

/* One-number query; fails the test on an error. */
int64_t myh_count(MYSQL *c, const char *sql);

#endif /* OUTBOX_TEST_SUPPORT_MARIADB_H */

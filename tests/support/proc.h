/*
 * proc.h - child processes and time for the tests (tests/support).
 *
 * One way to start a program (ch_spawn_with: argv, extra environment,
 * stdout/stderr to files, optionally as another user and in a process group
 * of its own), to wait for it with a deadline, and to kill it.  Every child
 * is remembered until reaped and stopped at exit, or when the test dies of
 * SIGTERM/SIGINT (a ctest timeout, ^C) or SIGSEGV/SIGABRT, so a failing
 * test leaves no relay or server running behind it.
 */
#ifndef OUTBOX_TEST_SUPPORT_PROC_H
#define OUTBOX_TEST_SUPPORT_PROC_H

#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC milliseconds; a sleep that resumes after signals. */
int64_t ch_now_ms(void);
void ch_sleep_ms(int64_t ms);

typedef struct ch_spawn_opts {
    /* Extra "NAME=VALUE" entries (NULL-terminated, may be NULL); "NAME="
     * with an empty value unsets NAME. */
    const char *const *env;
    const char *out_path; /* stdout appended here (NULL: /dev/null) */
    const char *err_path; /* stderr appended here (NULL: /dev/null) */
    int as_user;          /* run as uid/gid (the test runs as root) */
    uid_t uid;
    gid_t gid;
    int own_group;   /* a process group of its own: a ^C to the test's group
                        does not reach it, only the signal below does */
    int exit_signal; /* sent at exit or on a fatal signal; 0: SIGKILL */
} ch_spawn_opts;

/* Starts argv[0] (argv NULL-terminated) as o says; fails the test when it
 * cannot.  The child is remembered until ch_wait* or ch_kill9 reap it. */
pid_t ch_spawn_with(const char *const *argv, const ch_spawn_opts *o);

/* ch_spawn_with with only env, stdout and stderr set. */
pid_t ch_spawn(const char *const *argv, const char *const *env, const char *out_path,
               const char *err_path);

/* Exit code of a wait status: the code, or 128+signal. */
int ch_exit_code(int status);

/* Waits up to timeout_ms for pid.  Returns its exit code (128+signal when
 * killed), or -1 on timeout (the process is left running). */
int ch_wait(pid_t pid, int64_t timeout_ms);

/* Like ch_wait, but a timeout SIGKILLs the process and fails the test. */
int ch_wait_or_die(pid_t pid, int64_t timeout_ms, const char *what);

/* SIGKILLs pid and reaps it; returns its exit code (137 when the kill hit,
 * something else when it had exited by itself just before). */
int ch_kill9(pid_t pid);

/* Stops a child started here: sends sig, waits up to timeout_ms, then
 * SIGKILLs; reaps it.  Nothing when pid is not a child still running here
 * (already reaped, e.g. by the exit handler).  Returns the exit code, or
 * -1 when there was nothing to stop. */
int ch_stop(pid_t pid, int sig, int64_t timeout_ms);

/* Non-zero while pid has not exited (does not reap). */
int ch_alive(pid_t pid);

/* No longer stops pid at exit (it was reaped by other means). */
void ch_forget(pid_t pid);

/* In a forked child: forgets every child of the parent, so that this
 * process's exit does not stop them. */
void ch_forget_all(void);

/* Runs argv to completion (timeout fails the test) and returns its exit
 * code; stderr (and stdout when out_path is NULL) goes to err_path, which
 * is truncated first. */
int ch_run(const char *const *argv, const char *const *env, const char *out_path,
           const char *err_path, int64_t timeout_ms);

/* Waits up to timeout_ms for the file at path to contain needle (a log
 * line a process writes); returns 1 when it does, 0 on timeout. */
int ch_wait_file_contains(const char *path, const char *needle, int64_t timeout_ms);

/* Prints a file's content to stderr (for failure diagnostics). */
void ch_dump(const char *title, const char *path);

#endif /* OUTBOX_TEST_SUPPORT_PROC_H */

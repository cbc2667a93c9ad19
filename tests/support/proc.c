/*
 * proc.c - child processes and time for the tests (see proc.h).
 *
 * Children start with posix_spawn (vfork-like) rather than fork: forking a
 * process whose producer thread is busy copies its page tables each time
 * and stalls that thread, badly so under AddressSanitizer.  Only a child
 * that must change user (PostgreSQL refuses to run as root) is forked, as
 * posix_spawn cannot setuid.
 */
#include "support/proc.h"

#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>

int64_t ch_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ch_sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Children not yet reaped, with the signal that stops each. */
enum { MAX_CHILDREN = 512 };
static struct {
    pid_t pid;
    int sig;
} children[MAX_CHILDREN];

void ch_forget(pid_t pid)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i].pid == pid) children[i].pid = 0;
}

void ch_forget_all(void)
{
    memset(children, 0, sizeof children);
}

static void stop_children(void)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].pid > 0) {
            kill(children[i].pid, children[i].sig);
            kill(children[i].pid, SIGCONT);
            waitpid(children[i].pid, NULL, 0);
            children[i].pid = 0;
        }
    }
}

/* On a fatal signal: stop the children, then die of the same signal.  Only
 * async-signal-safe calls. */
static void on_signal(int sig)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++)
        if (children[i].pid > 0) kill(children[i].pid, children[i].sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void remember(pid_t pid, int sig)
{
    static int registered;
    if (!registered) {
        static const int fatal[] = {SIGTERM, SIGINT, SIGSEGV, SIGABRT};
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
            sigaction(fatal[i], &sa, NULL);
        atexit(stop_children);
        registered = 1;
    }
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i].pid == 0) {
            children[i].pid = pid;
            children[i].sig = sig;
            return;
        }
    }
}

/* environ with the "NAME=VALUE" entries of env added or replaced, and the
 * "NAME=" ones removed.  The array is the caller's to free, not its
 * strings. */
static char **merged_environ(const char *const *env)
{
    extern char **environ;
    size_t n = 0, extra = 0, k = 0;
    while (environ[n])
        n++;
    while (env && env[extra])
        extra++;
    char **envp = calloc(n + extra + 1, sizeof *envp);
    if (!envp) TEST_FAIL_("out of memory");
    for (size_t i = 0; i < n; i++) {
        int overridden = 0;
        for (size_t j = 0; j < extra; j++) {
            const char *eq = strchr(env[j], '=');
            size_t len = eq ? (size_t)(eq - env[j]) + 1 : strlen(env[j]);
            if (strncmp(environ[i], env[j], len) == 0) overridden = 1;
        }
        if (!overridden) envp[k++] = environ[i];
    }
    for (size_t j = 0; j < extra; j++) {
        const char *eq = strchr(env[j], '=');
        if (eq && eq[1]) envp[k++] = (char *)env[j]; /* "NAME=" only unsets */
    }
    envp[k] = NULL;
    return envp;
}

/* The forked start, for a child that runs as another user. */
static pid_t fork_as_user(const char *const *argv, char **envp, const ch_spawn_opts *o)
{
    pid_t pid = fork();
    if (pid != 0) return pid;
    int out = open(o->out_path ? o->out_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
    int err = open(o->err_path ? o->err_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    close(out);
    close(err);
    if (o->own_group) setpgid(0, 0);
    if (setgroups(0, NULL) != 0 || setgid(o->gid) != 0 || setuid(o->uid) != 0) _exit(125);
    execve(argv[0], (char *const *)argv, envp);
    _exit(127);
}

pid_t ch_spawn_with(const char *const *argv, const ch_spawn_opts *o)
{
    char **envp = merged_environ(o->env);
    pid_t pid = -1;
    int rc;
    fflush(stdout);
    fflush(stderr);
    if (o->as_user) {
        pid = fork_as_user(argv, envp, o);
        rc = pid < 0 ? errno : 0;
    } else {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, o->out_path ? o->out_path : "/dev/null",
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_addopen(&fa, 2, o->err_path ? o->err_path : "/dev/null",
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawnattr_init(&attr);
        if (o->own_group) {
            posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
            posix_spawnattr_setpgroup(&attr, 0);
        }
        rc = posix_spawn(&pid, argv[0], &fa, &attr, (char *const *)argv, envp);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
    }
    free(envp);
    if (rc != 0) TEST_FAIL_("cannot start %s: %s", argv[0], strerror(rc));
    remember(pid, o->exit_signal ? o->exit_signal : SIGKILL);
    return pid;
}

pid_t ch_spawn(const char *const *argv, const char *const *env, const char *out_path,
               const char *err_path)
{
    ch_spawn_opts o;
    memset(&o, 0, sizeof o);
    o.env = env;
    o.out_path = out_path;
    o.err_path = err_path;
    return ch_spawn_with(argv, &o);
}

int ch_exit_code(int status)
{
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

int ch_wait(pid_t pid, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    int64_t nap = 1;
    for (;;) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            ch_forget(pid);
            return ch_exit_code(status);
        }
        if (r < 0 && errno != EINTR) TEST_FAIL_("waitpid(%d): %s", (int)pid, strerror(errno));
        if (ch_now_ms() >= deadline) return -1;
        ch_sleep_ms(nap);
        if (nap < 20) nap *= 2;
    }
}

int ch_wait_or_die(pid_t pid, int64_t timeout_ms, const char *what)
{
    int code = ch_wait(pid, timeout_ms);
    if (code == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        ch_forget(pid);
        TEST_FAIL_("%s (pid %d) did not exit within %lld ms", what, (int)pid,
                   (long long)timeout_ms);
    }
    return code;
}

int ch_kill9(pid_t pid)
{
    int status = 0;
    kill(pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    ch_forget(pid);
    return ch_exit_code(status);
}

int ch_stop(pid_t pid, int sig, int64_t timeout_ms)
{
    size_t i = 0;
    int code;
    while (i < MAX_CHILDREN && (pid <= 0 || children[i].pid != pid))
        i++;
    if (i == MAX_CHILDREN) return -1;
    kill(pid, sig);
    code = ch_wait(pid, timeout_ms);
    return code == -1 ? ch_kill9(pid) : code;
}

int ch_alive(pid_t pid)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return 0;
    return info.si_pid == 0;
}

int ch_run(const char *const *argv, const char *const *env, const char *out_path,
           const char *err_path, int64_t timeout_ms)
{
    if (err_path) {
        FILE *f = fopen(err_path, "w");
        if (f) fclose(f);
    }
    pid_t pid = ch_spawn(argv, env, out_path ? out_path : err_path, err_path);
    return ch_wait_or_die(pid, timeout_ms, argv[1] ? argv[1] : argv[0]);
}

int ch_wait_file_contains(const char *path, const char *needle, int64_t timeout_ms)
{
    int64_t deadline = ch_now_ms() + timeout_ms;
    for (;;) {
        char *text = test_read_file(path, NULL);
        int found = text && strstr(text, needle) != NULL;
        free(text);
        if (found) return 1;
        if (ch_now_ms() > deadline) return 0;
        ch_sleep_ms(50);
    }
}

void ch_dump(const char *title, const char *path)
{
    char *text = test_read_file(path, NULL);
    fprintf(stderr, "---- %s (%s)\n%s%s----\n", title, path, text ? text : "(absent)\n",
            text && *text && text[strlen(text) - 1] != '\n' ? "\n" : "");
    free(text);
}

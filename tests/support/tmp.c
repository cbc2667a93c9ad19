/*
 * tmp.c - temporary directories and paths for the tests (see tmp.h and
 * test_dir in test.h).
 */
#include "support/tmp.h"

#include "test.h"

#include <errno.h>

static char test_dir_path[512];

void ch_rmtree(const char *dir)
{
    char cmd[700];
    if (!dir[0] || getenv("OUTBOX_TEST_KEEP")) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

void ch_tempdir(char *out, size_t len, const char *prefix)
{
    const char *base = getenv("TMPDIR");
    snprintf(out, len, "%s/%s-XXXXXX", base && *base ? base : "/tmp", prefix);
    if (!mkdtemp(out)) TEST_FAIL_("mkdtemp %s: %s", out, strerror(errno));
}

static void test_dir_cleanup(void)
{
    ch_rmtree(test_dir_path);
}

const char *test_dir(void)
{
    if (!test_dir_path[0]) {
        ch_tempdir(test_dir_path, sizeof test_dir_path, "outbox-test");
        atexit(test_dir_cleanup);
    }
    return test_dir_path;
}

void test_dir_forget(void)
{
    test_dir_path[0] = '\0';
}

void test_dir_adopt(const char *dir)
{
    snprintf(test_dir_path, sizeof test_dir_path, "%s", dir);
}

const char *test_path(const char *name)
{
    static char bufs[8][600];
    static int next;
    char *b = bufs[next++ & 7];
    snprintf(b, 600, "%s/%s", test_dir(), name);
    return b;
}

char *ch_path(char *out, const char *name)
{
    snprintf(out, CH_PATH, "%s", test_path(name));
    return out;
}

/*
 * tmp.h - temporary directories and paths for the tests (tests/support).
 *
 * test_dir() and test_path() (declared in test.h) give the program's own
 * directory; ch_tempdir makes another one, for a server's files.
 * OUTBOX_TEST_KEEP set: nothing is removed, to look at after a failure.
 */
#ifndef OUTBOX_TEST_SUPPORT_TMP_H
#define OUTBOX_TEST_SUPPORT_TMP_H

#include <stddef.h>

/* Room for a path made by ch_path. */
enum { CH_PATH = 600 };

/* Copies test_path(name) into out (CH_PATH bytes): test_path's buffers
 * rotate, so paths kept across calls must be copied. */
char *ch_path(char *out, const char *name);

/* Makes a fresh directory "$TMPDIR/<prefix>-XXXXXX" (or under /tmp) and
 * writes its path into out; fails the test when it cannot.  The caller
 * removes it (ch_rmtree). */
void ch_tempdir(char *out, size_t len, const char *prefix);

/* Removes dir and everything in it, unless OUTBOX_TEST_KEEP is set. */
void ch_rmtree(const char *dir);

/* In a forked child: this process's exit no longer removes test_dir(). */
void test_dir_forget(void);

/* In a child process started by a test: test_dir() is the parent's
 * directory dir, which this process leaves to the parent. */
void test_dir_adopt(const char *dir);

#endif /* OUTBOX_TEST_SUPPORT_TMP_H */

/*
 * test.h - the tiny test framework shared by tests/test_*.c.
 *
 * Each test program is one ctest test.  TEST(name) defines a case; main()
 * is written by the program and calls RUN(name) for each.  Typed asserts
 * print the file, line and both values, then exit(1).  Exit 77 = skipped.
 * Helpers make a fresh temporary directory per program and find the built
 * `outbox` binary (OUTBOX_BIN, set by ctest).
 */
#ifndef OUTBOX_TEST_H
#define OUTBOX_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outbox.h"

#define TEST(name) static void test_##name(void)
/* Runs a case, or skips it when OUTBOX_TEST_ONLY names others (a
 * comma-separated list of case names, to repeat one case of a program). */
#define RUN(name)                                                                                  \
    do {                                                                                           \
        if (!test_selected_(#name)) {                                                              \
            fprintf(stderr, "-- %s (skipped: not in OUTBOX_TEST_ONLY)\n", #name);                  \
            break;                                                                                 \
        }                                                                                          \
        fprintf(stderr, "-- %s\n", #name);                                                         \
        test_##name();                                                                             \
    } while (0)

/* Is case `name` among OUTBOX_TEST_ONLY's (all are, when it is unset)? */
static inline int test_selected_(const char *name)
{
    const char *only = getenv("OUTBOX_TEST_ONLY"), *p;
    size_t n = strlen(name);
    if (!only || !*only) return 1;
    for (p = only; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0) return 1;
        p += len;
        if (*p == ',') p++;
    }
    return 0;
}

#define TEST_FAIL_(...)                                                                            \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        exit(1);                                                                                   \
    } while (0)

#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) TEST_FAIL_("assertion failed: %s", #cond);                                    \
    } while (0)

#define ASSERT_EQ(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) TEST_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);                        \
    } while (0)

#define ASSERT_NE(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ == b_) TEST_FAIL_("%s != %s: both %lld", #a, #b, a_);                               \
    } while (0)

#define ASSERT_GE(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ < b_) TEST_FAIL_("%s >= %s: %lld < %lld", #a, #b, a_, b_);                          \
    } while (0)

#define ASSERT_STREQ(a, b)                                                                         \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                                       \
            TEST_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",                   \
                       b_ ? b_ : "(null)");                                                        \
    } while (0)

#define ASSERT_CONTAINS(hay, needle)                                                               \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (h_ == NULL || strstr(h_, n_) == NULL)                                                  \
            TEST_FAIL_("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);                  \
    } while (0)

/* Asserts an outbox call returned OUTBOX_OK, printing the error detail. */
#define ASSERT_OK(call, errp)                                                                      \
    do {                                                                                           \
        const outbox_error *e_ = (errp);                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != 0) TEST_FAIL_("%s: %d %s", #call, rc_, e_ ? e_->message : "");                  \
    } while (0)

#define SKIP(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "skipped: ");                                                              \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        exit(77);                                                                                  \
    } while (0)

/* A fresh directory under $TMPDIR (or /tmp), removed at exit unless
 * OUTBOX_TEST_KEEP is set.  Returns a static path.  (tests/support/tmp.c:
 * one directory per program, whichever file asks.) */
const char *test_dir(void);

/* test_path("x.db") -> "<test dir>/x.db" in one of 8 rotating buffers. */
const char *test_path(const char *name);

/* n scaled by OUTBOX_TEST_SCALE (a float, default 1.0; the sanitizer run in
 * CI lowers it), never below floor.  Full-scale figures are for the normal
 * run; the sanitizer run looks for memory errors, not statistics. */
static inline int test_scaled(int n, int floor)
{
    const char *s = getenv("OUTBOX_TEST_SCALE");
    double f = s && *s ? atof(s) : 1.0;
    int v;
    if (f <= 0) f = 1.0;
    v = (int)(n * f);
    return v < floor ? floor : v;
}

/* Path of the built `outbox` CLI. */
static inline const char *test_outbox_bin(void)
{
    const char *bin = getenv("OUTBOX_BIN");
    return bin && *bin ? bin : "outbox";
}

/* Reads a whole file into a NUL-terminated heap buffer (NULL if absent). */
static inline char *test_read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) TEST_FAIL_("out of memory reading %s", path);
    buf[len] = '\0';
    if (len_out) *len_out = len;
    return buf;
}

#endif /* OUTBOX_TEST_H */

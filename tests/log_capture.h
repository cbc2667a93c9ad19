/*
 * log_capture.h - the library's log lines kept in memory, for tests that
 * check what the relay and the drivers say (and that secrets never show).
 *
 * log_capture_install(min) keeps every line at level min and above as
 * "<level> <component> <message>\n" (level as outbox_log_level_name gives
 * it); with OUTBOX_TEST_LOG or OUTBOX_TEST_VERBOSE set, every line (debug
 * too) is also shown on stderr.  The buffer is shared with the library's
 * threads: read it under log_mu, or through the helpers.
 */
#ifndef OUTBOX_TEST_LOG_CAPTURE_H
#define OUTBOX_TEST_LOG_CAPTURE_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outbox.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_text[1 << 16];
static size_t log_len;
static int log_min_level;

static inline int log_shown_(void)
{
    return getenv("OUTBOX_TEST_LOG") != NULL || getenv("OUTBOX_TEST_VERBOSE") != NULL;
}

static inline void capture_log(void *user, int level, const char *component, const char *message)
{
    int n;
    (void)user;
    if (log_shown_())
        fprintf(stderr, "   [%s %s] %s\n", outbox_log_level_name(level), component, message);
    if (level < log_min_level) return;
    pthread_mutex_lock(&log_mu);
    n = snprintf(log_text + log_len, sizeof log_text - log_len, "%s %s %s\n",
                 outbox_log_level_name(level), component, message);
    if (n > 0 && log_len + (size_t)n < sizeof log_text) log_len += (size_t)n;
    pthread_mutex_unlock(&log_mu);
}

/* Installs the capture for lines at min_level and above. */
static inline void log_capture_install(int min_level)
{
    log_min_level = min_level;
    outbox_log_set(capture_log, NULL, log_shown_() ? OUTBOX_LOG_DEBUG : min_level);
}

static inline void log_reset(void)
{
    pthread_mutex_lock(&log_mu);
    log_len = 0;
    log_text[0] = '\0';
    pthread_mutex_unlock(&log_mu);
}

/* How many times needle occurs in the captured lines. */
static inline int log_count(const char *needle)
{
    int k = 0;
    const char *p;
    pthread_mutex_lock(&log_mu);
    for (p = strstr(log_text, needle); p != NULL; p = strstr(p + strlen(needle), needle))
        k++;
    pthread_mutex_unlock(&log_mu);
    return k;
}

/* 1 when one captured line contains needle and (when not NULL) also. */
static inline int log_has_line(const char *needle, const char *also)
{
    int seen = 0;
    const char *p;
    pthread_mutex_lock(&log_mu);
    for (p = strstr(log_text, needle); p != NULL && !seen; p = strstr(p + 1, needle)) {
        const char *bol = p, *eol = strchr(p, '\n'), *a;
        while (bol > log_text && bol[-1] != '\n')
            bol--;
        a = also ? strstr(bol, also) : bol;
        seen = a != NULL && (eol == NULL || a < eol);
    }
    pthread_mutex_unlock(&log_mu);
    return seen;
}

/* Waits up to ms for log_has_line(needle, also); 1 when seen. */
static inline int log_wait(const char *needle, const char *also, int ms)
{
    int waited = 0;
    while (!log_has_line(needle, also)) {
        if (waited >= ms) return 0;
        usleep(20000);
        waited += 20;
    }
    return 1;
}

/* Prints "<what>: <the first captured line containing needle>". */
static inline void log_print_line(const char *what, const char *needle)
{
    const char *p;
    pthread_mutex_lock(&log_mu);
    p = strstr(log_text, needle);
    if (p != NULL) {
        while (p > log_text && p[-1] != '\n')
            p--;
        fprintf(stderr, "%s: %.*s\n", what, (int)strcspn(p, "\n"), p);
    }
    pthread_mutex_unlock(&log_mu);
}

#endif /* OUTBOX_TEST_LOG_CAPTURE_H */

/*
 * url.c - masking secrets in URLs before they reach an error message or a
 * log line: the password of user:password@ and the values of query
 * parameters whose names look like secrets.
 */
#include "internal.h"

#include <string.h>

typedef struct out_writer {
    char *out;
    size_t len, cap;
} out_writer;

static void put(out_writer *w, const char *s, size_t n)
{
    size_t room;
    if (w->cap == 0) return;
    room = w->cap - 1 - w->len;
    if (n > room) n = room;
    memcpy(w->out + w->len, s, n);
    w->len += n;
    w->out[w->len] = '\0';
}

/* Case-insensitive: does key[0..n) contain needle? */
static int contains_ci(const char *key, size_t n, const char *needle)
{
    size_t m = strlen(needle), i, j;
    for (i = 0; i + m <= n; i++) {
        for (j = 0; j < m; j++) {
            char c = key[i + j];
            if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
            if (c != needle[j]) break;
        }
        if (j == m) return 1;
    }
    return 0;
}

static int secret_key(const char *key, size_t n)
{
    static const char *const words[] = {"password", "passwd", "pass",       "token",
                                        "secret",   "key",    "credentials"};
    size_t i;
    for (i = 0; i < sizeof words / sizeof words[0]; i++)
        if (contains_ci(key, n, words[i])) return 1;
    return 0;
}

/* Writes url into out (out_len bytes, always NUL-terminated when out_len >
 * 0, truncated if needed) with the userinfo password and secret-named query
 * values replaced by "***".  url NULL gives "". */
void outbox__url_redact(const char *url, char *out, size_t out_len)
{
    out_writer w = {out, 0, out_len};
    const char *p, *auth, *auth_end, *at = NULL, *q, *frag;
    if (out_len == 0) return;
    out[0] = '\0';
    if (!url) return;
    p = url;
    auth = strstr(url, "://");
    if (auth) {
        const char *s;
        auth += 3;
        auth_end = auth + strcspn(auth, "/?#");
        for (s = auth; s < auth_end; s++)
            if (*s == '@') at = s;
        if (at) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon) {
                put(&w, url, (size_t)(colon + 1 - url));
                put(&w, "***", 3);
                p = at;
            }
        }
    }
    q = strchr(p, '?');
    frag = strchr(p, '#');
    if (!q || (frag && frag < q)) {
        put(&w, p, strlen(p));
        return;
    }
    put(&w, p, (size_t)(q + 1 - p));
    p = q + 1;
    while (*p && *p != '#') {
        size_t n = strcspn(p, "&#"), klen;
        const char *eq = memchr(p, '=', n);
        if (eq) {
            klen = (size_t)(eq - p);
            put(&w, p, klen + 1);
            if (secret_key(p, klen))
                put(&w, "***", 3);
            else
                put(&w, eq + 1, n - klen - 1);
        } else {
            put(&w, p, n);
        }
        p += n;
        if (*p == '&') {
            put(&w, "&", 1);
            p++;
        }
    }
    put(&w, p, strlen(p));
}

/* The public name of the above (outbox.h), for programs that print URLs. */
void outbox_url_redact(const char *url, char *out, size_t out_len)
{
    outbox__url_redact(url, out, out_len);
}

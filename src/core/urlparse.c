/*
 * urlparse.c - destination and store URLs taken apart for the drivers:
 * scheme, user, password, hosts (kept whole: "a:4222,b:4222"), path, and
 * the query parameters merged with the extra "key=value" options given
 * beside the URL (`--to-opt` on the CLI).  Drivers read the parameters
 * with their property table (outbox__props_parse, src/core/props.c), so a
 * misspelt setting is a start-up error instead of being ignored.
 *
 * Error messages show the URL through outbox__url_redact only.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static char *dup_range(const char *s, size_t n)
{
    char *p = outbox__malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string ('+' stays '+'); NULL on a
 * malformed escape, an encoded NUL, or no memory (*bad tells which). */
static char *decode_range(const char *s, size_t n, int *bad)
{
    char *out = outbox__malloc(n + 1), *o = out;
    size_t i;
    *bad = 0;
    if (!out) return NULL;
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0) {
                *bad = 1;
                outbox__free(out);
                return NULL;
            }
            *o = (char)(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
            if (*o == '\0') {
                *bad = 1;
                outbox__free(out);
                return NULL;
            }
            o++;
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

static int add_param(outbox_url *u, const char *kv, size_t n, const char *shown, outbox_error *err)
{
    const char *eq = memchr(kv, '=', n);
    outbox_url_param *grown;
    char *key, *value;
    int bad = 0;
    size_t i;

    if (n == 0) return OUTBOX_OK; /* "a=1&&b=2" */
    if (!eq || eq == kv)
        return outbox__error(err, OUTBOX_EBADURL,
                             "setting \"%.*s\" in %s is not of the form key=value",
                             (int)(n > 64 ? 64 : n), kv, shown);
    key = decode_range(kv, (size_t)(eq - kv), &bad);
    if (!key) goto decode_failed;
    value = decode_range(eq + 1, n - (size_t)(eq + 1 - kv), &bad);
    if (!value) {
        outbox__free(key);
        goto decode_failed;
    }
    for (i = 0; i < u->param_count; i++) {
        if (strcmp(u->params[i].key, key) == 0) {
            int rc = outbox__error(err, OUTBOX_EBADURL, "setting \"%s\" is given twice in %s", key,
                                   shown);
            outbox__free(key);
            outbox__free(value);
            return rc;
        }
    }
    grown = outbox__realloc(u->params, (u->param_count + 1) * sizeof *grown);
    if (!grown) {
        outbox__free(key);
        outbox__free(value);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory parsing %s", shown);
    }
    u->params = grown;
    u->params[u->param_count].key = key;
    u->params[u->param_count].value = value;
    u->params[u->param_count].used = 0;
    u->param_count++;
    return OUTBOX_OK;

decode_failed:
    if (bad)
        return outbox__error(err, OUTBOX_EBADURL, "bad percent-escape in a setting of %s", shown);
    return outbox__error(err, OUTBOX_ENOMEM, "out of memory parsing %s", shown);
}

/* Takes url apart; see internal.h. */
int outbox__url_parse(outbox_url *out, const char *url, const char *const *extra_options,
                      outbox_error *err)
{
    char shown[512];
    const char *colon, *rest, *query, *end;
    int rc = OUTBOX_OK, bad = 0;
    size_t i;

    memset(out, 0, sizeof *out);
    outbox__url_redact(url, shown, sizeof shown);
    if (!url || !*url) return outbox__error(err, OUTBOX_EBADURL, "empty URL");
    colon = strchr(url, ':');
    if (!colon || colon == url)
        return outbox__error(err, OUTBOX_EBADURL, "URL %s has no scheme (e.g. nats://host:4222)",
                             shown);
    for (i = 0; url + i < colon; i++) {
        char c = url[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'));
        if (!ok) return outbox__error(err, OUTBOX_EBADURL, "URL %s has a malformed scheme", shown);
    }
    out->scheme = dup_range(url, (size_t)(colon - url));
    if (!out->scheme) goto nomem;
    for (i = 0; out->scheme[i]; i++)
        if (out->scheme[i] >= 'A' && out->scheme[i] <= 'Z') out->scheme[i] += 'a' - 'A';

    rest = colon + 1;
    query = strchr(rest, '?');
    end = query ? query : rest + strlen(rest);
    if (strncmp(rest, "//", 2) == 0) {
        const char *auth = rest + 2, *auth_end = auth, *at = NULL, *s;
        while (auth_end < end && *auth_end != '/')
            auth_end++;
        for (s = auth; s < auth_end; s++)
            if (*s == '@') at = s;
        if (at) {
            const char *pw = memchr(auth, ':', (size_t)(at - auth));
            out->user = decode_range(auth, (size_t)((pw ? pw : at) - auth), &bad);
            if (!out->user) goto decode_failed;
            if (pw) {
                out->password = decode_range(pw + 1, (size_t)(at - pw - 1), &bad);
                if (!out->password) goto decode_failed;
            }
            auth = at + 1;
        }
        out->hosts = dup_range(auth, (size_t)(auth_end - auth));
        if (!out->hosts) goto nomem;
        out->path = decode_range(auth_end < end ? auth_end + 1 : end,
                                 auth_end < end ? (size_t)(end - auth_end - 1) : 0, &bad);
    } else {
        out->hosts = dup_range("", 0);
        if (!out->hosts) goto nomem;
        out->path = decode_range(rest, (size_t)(end - rest), &bad);
    }
    if (!out->path) goto decode_failed;

    if (query) {
        const char *p = query + 1;
        while (*p) {
            size_t n = strcspn(p, "&");
            rc = add_param(out, p, n, shown, err);
            if (rc != OUTBOX_OK) goto fail;
            p += n;
            if (*p == '&') p++;
        }
    }
    for (i = 0; extra_options && extra_options[i]; i++) {
        rc = add_param(out, extra_options[i], strlen(extra_options[i]), "the destination options",
                       err);
        if (rc != OUTBOX_OK) goto fail;
    }
    return OUTBOX_OK;

decode_failed:
    if (bad) {
        rc = outbox__error(err, OUTBOX_EBADURL, "bad percent-escape in %s", shown);
        goto fail;
    }
nomem:
    rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory parsing %s", shown);
fail:
    outbox__url_free(out);
    return rc;
}

/* Frees what outbox__url_parse allocated; the struct itself is the caller's. */
void outbox__url_free(outbox_url *url)
{
    size_t i;
    if (!url) return;
    for (i = 0; i < url->param_count; i++) {
        outbox__free(url->params[i].key);
        outbox__free(url->params[i].value);
    }
    outbox__free(url->params);
    outbox__free(url->scheme);
    outbox__free(url->user);
    outbox__free(url->password);
    outbox__free(url->hosts);
    outbox__free(url->path);
    memset(url, 0, sizeof *url);
}

/* Value of parameter key, marked used; NULL when absent. */
const char *outbox__url_param(outbox_url *url, const char *key)
{
    size_t i;
    for (i = 0; i < url->param_count; i++) {
        if (strcmp(url->params[i].key, key) == 0) {
            url->params[i].used = 1;
            return url->params[i].value;
        }
    }
    return NULL;
}

/*
 * props.c - the one parser of driver settings, and the public driver list.
 *
 * Each driver describes its settings in a property table (outbox_prop in
 * internal.h: name, type, default, range, doc, and the offset of the value
 * in the driver's config struct).  outbox__props_parse applies the defaults
 * and then the URL's query parameters and the extra "key=value" options,
 * so every driver refuses an unknown key, a malformed value or one out of
 * range the same way, with the property's own doc; a secret's value never
 * reaches a message.  outbox_driver_get shows the same tables to the CLI,
 * which makes its help and docs/CLI.md from them.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const struct {
    const char *name;
    const char *placeholder;
    const char *what; /* "is not <what>" */
} types[OUTBOX_PROP_TYPE_COUNT] = {
    [OUTBOX_PROP_STRING] = {"string", "VALUE", "text"},
    [OUTBOX_PROP_SECRET] = {"secret", "SECRET", "text"},
    [OUTBOX_PROP_PATH] = {"path", "PATH", "a path"},
    [OUTBOX_PROP_SECRET_FILE] = {"secret-file", "PATH", "a path"},
    [OUTBOX_PROP_INT] = {"int", "N", "a whole number"},
    [OUTBOX_PROP_BOOL] = {"bool", "true|false", "true or false (also 1/0, yes/no, on/off)"},
    [OUTBOX_PROP_DURATION] = {"duration", "DURATION",
                              "a duration (e.g. 500ms, 30s, 5m, 2h, 7d; a bare number is seconds)"},
    [OUTBOX_PROP_SIZE] = {"size", "SIZE", "a size (e.g. 512, 64k, 1m, 2g; k = 1024 bytes)"},
    [OUTBOX_PROP_ENUM] = {"enum", NULL, "one of the choices"},
};

const char *outbox__prop_type_name(int type)
{
    return type >= 0 && type < OUTBOX_PROP_TYPE_COUNT ? types[type].name : "unknown";
}

const char *outbox__prop_placeholder(const outbox_prop *prop)
{
    if (prop->placeholder) return prop->placeholder;
    if (prop->type == OUTBOX_PROP_ENUM && prop->range) return prop->range;
    return prop->type >= 0 && prop->type < OUTBOX_PROP_TYPE_COUNT ? types[prop->type].placeholder
                                                                  : "VALUE";
}

static int is_text(int type)
{
    return type == OUTBOX_PROP_STRING || type == OUTBOX_PROP_SECRET || type == OUTBOX_PROP_PATH ||
           type == OUTBOX_PROP_SECRET_FILE;
}

static int is_number(int type)
{
    return type == OUTBOX_PROP_INT || type == OUTBOX_PROP_DURATION || type == OUTBOX_PROP_SIZE;
}

/* Length of the fixed part of a family's name ("endpoint." of
 * "endpoint.<TYPE>"), 0 for a plain property. */
static size_t family_prefix(const outbox_prop *prop)
{
    const char *lt = strchr(prop->name, '<');
    return lt ? (size_t)(lt - prop->name) : 0;
}

/* ------------------------------------------------------------------------
 * Values
 * ---------------------------------------------------------------------- */

/* Decimal digits with an optional '-', the whole text; -1 when not. */
static int parse_int(const char *text, int64_t *out)
{
    char *end = NULL;
    long long v;
    if (*text != '-' && (*text < '0' || *text > '9')) return -1;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') return -1;
    *out = v;
    return 0;
}

/* "512", "64k", "1m", "2g" (powers of 1024, either case); -1 when not. */
static int parse_size(const char *text, int64_t *out)
{
    int64_t value = 0, unit = 1;
    const char *p = text;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (value > (INT64_MAX - (*p - '0')) / 10) return -1;
        value = value * 10 + (*p - '0');
    }
    if (*p != '\0') {
        switch (*p) {
        case 'k':
        case 'K':
            unit = INT64_C(1) << 10;
            break;
        case 'm':
        case 'M':
            unit = INT64_C(1) << 20;
            break;
        case 'g':
        case 'G':
            unit = INT64_C(1) << 30;
            break;
        default:
            return -1;
        }
        if (p[1] != '\0') return -1;
    }
    if (value > INT64_MAX / unit) return -1;
    *out = value * unit;
    return 0;
}

static int parse_number(int type, const char *text, int64_t *out)
{
    if (type == OUTBOX_PROP_DURATION) {
        *out = outbox__duration_parse_ms(text);
        return *out < 0 ? -1 : 0;
    }
    if (type == OUTBOX_PROP_SIZE) return parse_size(text, out);
    return parse_int(text, out);
}

static int parse_bool(const char *v, int *out)
{
    static const char *const words[][2] = {
        {"false", "true"}, {"0", "1"}, {"no", "yes"}, {"off", "on"}};
    size_t i;
    int value;
    for (i = 0; i < sizeof words / sizeof words[0]; i++) {
        for (value = 0; value < 2; value++) {
            if (strcasecmp(v, words[i][value]) == 0) {
                *out = value;
                return 0;
            }
        }
    }
    return -1;
}

/* Index of v among choices "a|b|c", or -1. */
static int enum_index(const char *choices, const char *v)
{
    size_t n = strlen(v);
    int i = 0;
    const char *p = choices;
    while (p && *p) {
        size_t len = strcspn(p, "|");
        if (len == n && strncmp(p, v, n) == 0) return i;
        p += len;
        if (*p == '|') p++;
        i++;
    }
    return -1;
}

/* The numeric range "MIN..MAX" or "MIN.." of prop: 0, or -1 when the table
 * has none (or a malformed one, which test_url_route's check of every
 * table refuses). */
static int number_range(const outbox_prop *prop, int64_t *min, int64_t *max)
{
    const char *dots;
    char low[64];
    if (prop->range == NULL || (dots = strstr(prop->range, "..")) == NULL) return -1;
    if ((size_t)(dots - prop->range) >= sizeof low) return -1;
    memcpy(low, prop->range, (size_t)(dots - prop->range));
    low[dots - prop->range] = '\0';
    if (parse_number(prop->type, low, min) != 0) return -1;
    *max = INT64_MAX;
    if (dots[2] != '\0' && parse_number(prop->type, dots + 2, max) != 0) return -1;
    return 0;
}

/* "from 1 to 1024", "1ms or more", "one of a, b, c" into out; "" when the
 * property has no range. */
static void range_text(const outbox_prop *prop, char *out, size_t len)
{
    const char *dots = prop->range ? strstr(prop->range, "..") : NULL;
    out[0] = '\0';
    if (prop->range == NULL) return;
    if (prop->type == OUTBOX_PROP_ENUM) {
        outbox_buf b;
        const char *p = prop->range;
        outbox__buf_init(&b);
        outbox__buf_puts(&b, "one of ");
        while (*p) {
            size_t n = strcspn(p, "|");
            outbox__buf_append(&b, p, n);
            p += n;
            if (*p == '|') {
                p++;
                outbox__buf_puts(&b, ", ");
            }
        }
        snprintf(out, len, "%s", b.data ? b.data : "");
        outbox__buf_free(&b);
    } else if (dots && dots[2] == '\0') {
        snprintf(out, len, "%.*s or more", (int)(dots - prop->range), prop->range);
    } else if (dots) {
        snprintf(out, len, "from %.*s to %s", (int)(dots - prop->range), prop->range, dots + 2);
    }
}

/* Stores text as prop's value in config.  `what` and `given` (0 for a
 * default) are for messages. */
static int set_value(const outbox_prop *prop, const char *what, const char *text, void *config,
                     int given, outbox_error *err)
{
    char *field = (char *)config + prop->offset;
    const char *shown = prop->type == OUTBOX_PROP_SECRET ? "***" : text;
    char range[200];
    int64_t n, min, max;
    int b;

    range_text(prop, range, sizeof range);
    if (is_text(prop->type)) {
        char *copy, *old;
        if ((prop->type == OUTBOX_PROP_PATH || prop->type == OUTBOX_PROP_SECRET_FILE) && given) {
            /* Said now, at start-up, not when the file is first needed;
             * "creds file", "ca file" for creds, ca_file. */
            size_t noun = strlen(prop->name);
            int fd = open(text, O_RDONLY | O_CLOEXEC);
            if (noun > 5 && strcmp(prop->name + noun - 5, "_file") == 0) noun -= 5;
            if (fd < 0)
                return outbox__error(err, OUTBOX_ECONFIG,
                                     "%s: cannot read %.*s file \"%.200s\" (%s=%.200s): %s; %s: %s",
                                     what, (int)noun, prop->name, text, prop->name, text,
                                     strerror(errno), prop->name, prop->doc);
            close(fd);
        }
        copy = outbox__strdup(text);
        if (copy == NULL)
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading %s", what);
        memcpy(&old, field, sizeof old);
        outbox__free(old);
        memcpy(field, &copy, sizeof copy);
        return OUTBOX_OK;
    }
    if (prop->type == OUTBOX_PROP_BOOL || prop->type == OUTBOX_PROP_ENUM) {
        b = prop->type == OUTBOX_PROP_BOOL ? (parse_bool(text, &b) == 0 ? b : -1)
                                           : enum_index(prop->range, text);
        if (b < 0)
            return outbox__error(err, OUTBOX_ECONFIG, "%s: %s=%.64s is not %s; %s: %s", what,
                                 prop->name, shown,
                                 prop->type == OUTBOX_PROP_ENUM ? range : types[prop->type].what,
                                 prop->name, prop->doc);
        memcpy(field, &b, sizeof b);
        return OUTBOX_OK;
    }
    if (!is_number(prop->type))
        return outbox__error(err, OUTBOX_EINTERNAL, "%s: option %s has an unknown type %d", what,
                             prop->name, prop->type);
    if (parse_number(prop->type, text, &n) != 0)
        return outbox__error(err, OUTBOX_ECONFIG, "%s: %s=%.64s is not %s%s%s; %s: %s", what,
                             prop->name, shown, types[prop->type].what, range[0] ? " " : "", range,
                             prop->name, prop->doc);
    if (number_range(prop, &min, &max) == 0 && (n < min || n > max))
        return outbox__error(err, OUTBOX_ECONFIG, "%s: %s=%.64s is out of range: give %s; %s: %s",
                             what, prop->name, shown, range, prop->name, prop->doc);
    memcpy(field, &n, sizeof n);
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Parsing
 * ---------------------------------------------------------------------- */

static const outbox_prop *find(const outbox_prop *props, const char *key)
{
    for (; props && props->name; props++) {
        size_t prefix = family_prefix(props);
        if (prefix ? strncmp(key, props->name, prefix) == 0 : strcmp(key, props->name) == 0)
            return props;
    }
    return NULL;
}

static int unknown_key(const outbox_prop *props, const char *what, const char *key,
                       outbox_error *err)
{
    outbox_buf list;
    int rc;
    if (props == NULL || props->name == NULL)
        return outbox__error(err, OUTBOX_ECONFIG, "%s has no option \"%.64s\"; it takes none", what,
                             key);
    outbox__buf_init(&list);
    for (; props->name; props++)
        outbox__buf_printf(&list, "%s%s=%s", list.len ? ", " : "", props->name,
                           outbox__prop_placeholder(props));
    if (list.oom)
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory reading %s", what);
    else
        rc = outbox__error(err, OUTBOX_ECONFIG, "%s has no option \"%.64s\"; its options: %s", what,
                           key, list.data);
    outbox__buf_free(&list);
    return rc;
}

/* See internal.h. */
int outbox__props_parse(const outbox_prop *props, const char *what, outbox_url *url, void *config,
                        outbox_error *err)
{
    const outbox_prop *p;
    size_t i;
    int rc;

    for (p = props; p && p->name; p++) {
        if (family_prefix(p) || p->default_value == NULL) continue;
        rc = set_value(p, what, p->default_value, config, 0, err);
        if (rc != OUTBOX_OK) return rc;
    }
    for (i = 0; url && i < url->param_count; i++) {
        outbox_url_param *param = &url->params[i];
        size_t prefix;
        p = find(props, param->key);
        if (p == NULL) return unknown_key(props, what, param->key, err);
        param->used = 1;
        prefix = family_prefix(p);
        if (prefix) {
            if (param->key[prefix] == '\0')
                return outbox__error(err, OUTBOX_ECONFIG,
                                     "%s: %s needs a name after \"%.*s\": "
                                     "%s=%s: %s",
                                     what, param->key, (int)prefix, p->name, p->name,
                                     outbox__prop_placeholder(p), p->doc);
            continue;
        }
        rc = set_value(p, what, param->value, config, 1, err);
        if (rc != OUTBOX_OK) return rc;
    }
    return OUTBOX_OK;
}

/* See internal.h. */
void outbox__props_free(const outbox_prop *props, void *config)
{
    for (; props && props->name; props++) {
        char *value = NULL, *field = (char *)config + props->offset;
        if (!is_text(props->type) || family_prefix(props)) continue;
        memcpy(&value, field, sizeof value);
        outbox__free(value);
        value = NULL;
        memcpy(field, &value, sizeof value);
    }
}

/* See internal.h. */
int outbox__props_options(outbox_url *out, const char *scheme, const char *const *options,
                          outbox_error *err)
{
    size_t i, j, n = 0;

    memset(out, 0, sizeof *out);
    while (options && options[n])
        n++;
    out->scheme = outbox__strdup(scheme);
    out->hosts = outbox__strdup("");
    out->path = outbox__strdup("");
    out->params = n ? outbox__calloc(n, sizeof *out->params) : NULL;
    if (!out->scheme || !out->hosts || !out->path || (n && !out->params)) goto nomem;
    for (i = 0; i < n; i++) {
        const char *kv = options[i], *eq = strchr(kv, '=');
        outbox_url_param *param = &out->params[i];
        if (eq == NULL || eq == kv) {
            outbox__url_free(out);
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "%s destination option \"%.40s\" is not KEY=VALUE", scheme, kv);
        }
        param->key = outbox__strndup(kv, (size_t)(eq - kv));
        param->value = outbox__strdup(eq + 1);
        out->param_count = i + 1;
        if (!param->key || !param->value) goto nomem;
        for (j = 0; j < i; j++) {
            if (strcmp(out->params[j].key, param->key) == 0) {
                int rc =
                    outbox__error(err, OUTBOX_ECONFIG, "%s is given twice; keep one", param->key);
                outbox__url_free(out);
                return rc;
            }
        }
    }
    return OUTBOX_OK;

nomem:
    outbox__url_free(out);
    return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading the %s options", scheme);
}

/* ------------------------------------------------------------------------
 * The public driver list: the registries' entries with their tables
 * copied once into the public form (outbox_driver_prop), in static memory.
 * Drivers that share a table (http, https) share the copy.
 * ---------------------------------------------------------------------- */

enum { MAX_DRIVERS = 16, MAX_PROPS = 256 };

static struct {
    outbox_driver_info drivers[2][MAX_DRIVERS];
    size_t count[2];
    outbox_driver_prop props[MAX_PROPS];
    size_t prop_count;
} listing;
static pthread_once_t listing_once = PTHREAD_ONCE_INIT;

static void list_kind(int k, int (*next)(size_t, outbox_driver_entry *))
{
    outbox_driver_entry e;
    size_t i, j;

    for (i = 0; listing.count[k] < MAX_DRIVERS && next(i, &e); i++) {
        outbox_driver_info *info = &listing.drivers[k][listing.count[k]++];
        const outbox_prop *p;
        size_t n = 0;
        info->kind = k == 0 ? OUTBOX_DRIVER_STORE : OUTBOX_DRIVER_DESTINATION;
        info->scheme = e.scheme;
        info->usage = e.usage;
        info->doc = e.doc;
        info->built = e.built;
        for (p = e.props; p && p->name; p++)
            n++;
        if (n == 0) continue;
        info->prop_count = n;
        /* The same table as an earlier driver's: its copy. */
        for (j = 0; j + 1 < listing.count[k] && info->props == NULL; j++) {
            outbox_driver_entry earlier;
            if (next(j, &earlier) && earlier.props == e.props)
                info->props = listing.drivers[k][j].props;
        }
        if (info->props != NULL) continue;
        if (listing.prop_count + n > MAX_PROPS) { /* test_url_route checks there is room */
            info->prop_count = 0;
            continue;
        }
        info->props = &listing.props[listing.prop_count];
        for (p = e.props; p->name; p++) {
            outbox_driver_prop *out = &listing.props[listing.prop_count++];
            out->name = p->name;
            out->type = outbox__prop_type_name(p->type);
            out->default_value = p->default_value;
            out->range = p->range;
            out->doc = p->doc;
            out->placeholder = outbox__prop_placeholder(p);
        }
    }
}

static void make_listing(void)
{
    list_kind(0, outbox__store_driver);
    list_kind(1, outbox__transport_driver);
}

/* See outbox.h. */
const outbox_driver_info *outbox_driver_get(int kind, size_t i)
{
    int k = kind == OUTBOX_DRIVER_STORE ? 0 : kind == OUTBOX_DRIVER_DESTINATION ? 1 : -1;
    if (k < 0) return NULL;
    pthread_once(&listing_once, make_listing);
    return i < listing.count[k] ? &listing.drivers[k][i] : NULL;
}

/*
 * props_tables.h - the drivers' property tables (outbox_prop, internal.h)
 * as the fuzz targets feed them to outbox__props_parse.
 *
 * The tables come from the registries (outbox__store_driver,
 * outbox__transport_driver): the ones of drivers this build leaves out are
 * there too.  Each is copied once with its file properties (path,
 * secret-file) turned into plain text ones of the same storage: the parser
 * opens those files to check them, and a fuzz target must not touch the
 * file system.  Everything else about the table (names, families,
 * defaults, ranges, offsets) is the driver's own.
 */
#ifndef OUTBOX_FUZZ_PROPS_TABLES_H
#define OUTBOX_FUZZ_PROPS_TABLES_H

#include "internal.h"

#include <stdlib.h>

enum { FUZZ_MAX_TABLES = 16 };

typedef struct fuzz_table {
    const char *what; /* "nats destination", for messages */
    outbox_prop *props;
    size_t config_size; /* bytes a config struct needs for every offset */
} fuzz_table;

static inline size_t fuzz_prop_size(int type)
{
    switch (type) {
    case OUTBOX_PROP_INT:
    case OUTBOX_PROP_DURATION:
    case OUTBOX_PROP_SIZE:
        return sizeof(int64_t);
    case OUTBOX_PROP_BOOL:
    case OUTBOX_PROP_ENUM:
        return sizeof(int);
    default:
        return sizeof(char *);
    }
}

/* Adds a copy of props to tables (unless it is NULL or already there). */
static inline void fuzz_table_add(fuzz_table *tables, size_t *n, const char *what,
                                  const outbox_prop *props)
{
    size_t i, count = 0;
    fuzz_table *t;
    if (props == NULL || *n == FUZZ_MAX_TABLES) return;
    for (i = 0; i < *n; i++)
        if (strcmp(tables[i].what, what) == 0) return;
    while (props[count].name)
        count++;
    t = &tables[*n];
    t->what = what;
    t->props = calloc(count + 1, sizeof *t->props);
    if (t->props == NULL) abort();
    t->config_size = 0;
    for (i = 0; i < count; i++) {
        size_t end = props[i].offset + fuzz_prop_size(props[i].type);
        t->props[i] = props[i];
        if (t->props[i].type == OUTBOX_PROP_PATH) t->props[i].type = OUTBOX_PROP_STRING;
        if (t->props[i].type == OUTBOX_PROP_SECRET_FILE) t->props[i].type = OUTBOX_PROP_SECRET;
        if (end > t->config_size) t->config_size = end;
    }
    (*n)++;
}

/* Every driver's table, made on the first call. */
static inline const fuzz_table *fuzz_tables(size_t *n_out)
{
    static fuzz_table tables[FUZZ_MAX_TABLES];
    static size_t n;
    static int done;
    if (!done) {
        outbox_driver_entry e;
        size_t i;
        for (i = 0; outbox__store_driver(i, &e); i++)
            fuzz_table_add(tables, &n, e.scheme, e.props);
        for (i = 0; outbox__transport_driver(i, &e); i++)
            fuzz_table_add(tables, &n, e.scheme, e.props);
        done = 1;
    }
    *n_out = n;
    return tables;
}

/* Reads url's parameters with one table into a config of exactly the size
 * its offsets need (so AddressSanitizer sees a write past it), then frees
 * what the parser stored. */
static inline void fuzz_table_parse(const fuzz_table *t, outbox_url *url)
{
    outbox_error err;
    void *config = calloc(1, t->config_size ? t->config_size : 1);
    size_t i;
    if (config == NULL) abort();
    for (i = 0; i < url->param_count; i++)
        url->params[i].used = 0;
    (void)outbox__props_parse(t->props, t->what, url, config, &err);
    outbox__props_free(t->props, config);
    free(config);
}

#endif /* OUTBOX_FUZZ_PROPS_TABLES_H */

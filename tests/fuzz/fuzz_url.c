/*
 * fuzz_url.c - store and destination URLs and their options: the URL
 * parser (outbox__url_parse, with extra "key=value" options), redaction
 * for logs (outbox_url_redact), the options-only form
 * (outbox__props_options) and the one property parser
 * (outbox__props_parse) over every driver's table.
 *
 * Input: the URL, then up to 6 extra options, separated by NUL bytes.
 */
#include "fuzz.h"
#include "props_tables.h"

enum { MAX_OPTIONS = 6 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t redact_sizes[] = {1, 2, 9, 64, 4096};
    fuzz_fields f;
    const char *options[MAX_OPTIONS + 1];
    const fuzz_table *tables;
    size_t i, n_tables, n_options = 0;
    char *redacted;
    outbox_url url, opts;
    outbox_error err;

    if (size > 8192 || fuzz_fields_split(&f, data, size, 1 + MAX_OPTIONS) != 0) return 0;
    for (i = 1; i < f.count; i++)
        options[n_options++] = f.field[i];
    options[n_options] = NULL;
    tables = fuzz_tables(&n_tables);

    /* Redaction writes into buffers of every size, cut short or not: each
     * allocation is exact, so a write past the end is caught. */
    for (i = 0; i < sizeof redact_sizes / sizeof redact_sizes[0]; i++) {
        redacted = malloc(redact_sizes[i]);
        if (redacted == NULL) abort();
        outbox_url_redact(f.field[0], redacted, redact_sizes[i]);
        if (strlen(redacted) >= redact_sizes[i]) abort();
        free(redacted);
    }

    if (outbox__url_parse(&url, f.field[0], options, &err) == OUTBOX_OK) {
        (void)outbox__url_param(&url, "timeout");
        for (i = 0; i < n_tables; i++)
            fuzz_table_parse(&tables[i], &url);
        outbox__url_free(&url);
    }
    if (outbox__props_options(&opts, "http", options, &err) == OUTBOX_OK) {
        for (i = 0; i < n_tables; i++)
            fuzz_table_parse(&tables[i], &opts);
        outbox__url_free(&opts);
    }
    fuzz_fields_free(&f);
    return 0;
}

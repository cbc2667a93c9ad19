/*
 * fuzz_duration.c - durations and the other typed values of driver and
 * relay settings: outbox__duration_parse_ms and its public twin
 * outbox_duration_parse_ms, and, through outbox__props_parse on a table
 * with one property of every value type (with and without ranges), the
 * parsers of whole numbers, sizes ("64k", "1m"), booleans and choices.
 *
 * Input: the text of a value, as given after "key=".
 *
 * Beyond memory errors it checks that the two duration parsers agree and
 * that a duration is -1 or not negative.
 */
#include "fuzz.h"
#include "internal.h"

#include <stddef.h>

typedef struct config {
    int64_t n, n_range, d, d_range, s, s_range;
    int b, e;
    char *text;
} config;

static const outbox_prop props[] = {
    {.name = "n", .type = OUTBOX_PROP_INT, .offset = offsetof(config, n), .doc = "int"},
    {.name = "nr",
     .type = OUTBOX_PROP_INT,
     .offset = offsetof(config, n_range),
     .range = "-5..1024",
     .doc = "int in range"},
    {.name = "d", .type = OUTBOX_PROP_DURATION, .offset = offsetof(config, d), .doc = "duration"},
    {.name = "dr",
     .type = OUTBOX_PROP_DURATION,
     .offset = offsetof(config, d_range),
     .range = "1ms..1h",
     .doc = "duration in range"},
    {.name = "s", .type = OUTBOX_PROP_SIZE, .offset = offsetof(config, s), .doc = "size"},
    {.name = "sr",
     .type = OUTBOX_PROP_SIZE,
     .offset = offsetof(config, s_range),
     .range = "1k..",
     .doc = "size in range"},
    {.name = "b", .type = OUTBOX_PROP_BOOL, .offset = offsetof(config, b), .doc = "bool"},
    {.name = "e",
     .type = OUTBOX_PROP_ENUM,
     .offset = offsetof(config, e),
     .range = "none|gzip|zstd",
     .doc = "choice"},
    {.name = "t",
     .type = OUTBOX_PROP_SECRET,
     .offset = offsetof(config, text),
     .default_value = "x",
     .doc = "text"},
    OUTBOX_PROPS_END};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_fields f;
    int64_t ms;
    size_t i;

    if (size > 1024 || fuzz_fields_split(&f, data, size, 1) != 0) return 0;
    ms = outbox__duration_parse_ms(f.field[0]);
    if (ms != outbox_duration_parse_ms(f.field[0]) || ms < -1) abort();

    for (i = 0; props[i].name; i++) {
        size_t key_len = strlen(props[i].name), len = strlen(f.field[0]);
        char *option = malloc(key_len + 1 + len + 1);
        const char *options[2] = {option, NULL};
        outbox_url url;
        outbox_error err;
        config c;
        if (option == NULL) abort();
        memcpy(option, props[i].name, key_len);
        option[key_len] = '=';
        memcpy(option + key_len + 1, f.field[0], len + 1);
        if (outbox__props_options(&url, "fuzz", options, &err) == OUTBOX_OK) {
            memset(&c, 0, sizeof c);
            if (outbox__props_parse(props, "fuzz destination", &url, &c, &err) == OUTBOX_OK) {
                if (c.n_range < -5 || c.n_range > 1024 || c.d_range < 0 || c.d_range > 3600000 ||
                    (i == 5 && c.s_range < 1024) || (i == 3 && c.d_range < 1) || c.d < 0 ||
                    c.s < 0 || (c.b != 0 && c.b != 1) || c.e < 0 || c.e > 2)
                    abort();
            }
            outbox__props_free(props, &c);
            outbox__url_free(&url);
        }
        free(option);
    }
    fuzz_fields_free(&f);
    return 0;
}

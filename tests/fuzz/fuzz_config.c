/*
 * fuzz_config.c - the relay's configuration file (`outbox relay --config`,
 * `outbox config check`): cli_config_read, the INI reader, the key table,
 * every value parser the keys share with the command-line flags, the
 * secrets' *_file keys and the checks across relays.
 *
 * Input: the file's bytes, read from memory (fmemopen).  The reader sees
 * the environment as the process has it (OUTBOX_<RELAY>_<KEY> overrides):
 * run the fuzzer without such variables.
 *
 * Beyond memory errors it checks that an accepted file has at least one
 * relay, each with a name, a store and a destination.  The reader's
 * messages (one line per problem) go to a sink: the fuzzer's own output,
 * and the sanitizers' reports, are written to the real standard error.
 */
#include "config.h"
#include "fuzz.h"

#include <stdio.h>

static FILE *sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cli_config *config = NULL;
    FILE *f;

    if (sink == NULL) {
        sink = fopen("/dev/null", "w");
        if (sink == NULL) abort();
        stderr = sink; /* cli_usage and the reader print with fprintf(stderr) */
    }
    /* fmemopen refuses a buffer of 0 bytes: an empty file is read as one
     * empty line, which the reader treats alike. */
    f = size ? fmemopen((void *)data, size, "r") : fmemopen((void *)"\n", 1, "r");
    if (f == NULL) return 0;
    if (cli_config_read("config", "fuzz.conf", f, NULL, 0, &config) == CLI_EXIT_OK) {
        if (config == NULL || config->relay_count == 0) abort();
        for (size_t i = 0; i < config->relay_count; i++) {
            const cli_config_relay *r = config->relays[i];
            if (r == NULL || r->name == NULL || r->text == NULL) abort();
            if (r->settings.opts.name == NULL || r->settings.store == NULL ||
                r->settings.to == NULL)
                abort();
        }
        cli_config_free(config);
    } else if (config != NULL) {
        abort();
    }
    fclose(f);
    return 0;
}

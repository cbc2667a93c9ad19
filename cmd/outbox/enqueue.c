/*
 * enqueue.c - `outbox enqueue`: adds one message to the outbox in a
 * transaction of its own and prints the message id.
 *
 * For scripts, tests and operators; applications enqueue inside their own
 * transaction with outbox_enqueue_sqlite().  Bad input writes nothing
 * (guarantee 7): the whole message is built and validated before the store
 * is opened.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char usage[] =
    "usage: outbox enqueue --store URL --type T --aggregate-id ID [--aggregate-type T]\n"
    "                      [--payload JSON | --payload-file F] [--header K=V]...\n"
    "                      [--headers JSON] [--id UUID]\n"
    "\n"
    "Adds one message to the outbox (in a transaction of its own) and prints its id.\n"
    "Everything is validated first: bad input writes nothing and exits 2.  Each\n"
    "option except --header is given at most once.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --type T             event type, e.g. OrderPlaced (required)\n"
    "  --aggregate-id ID    ordering and partition key, e.g. 42 (required)\n"
    "  --aggregate-type T   e.g. Order (default: none)\n"
    "  --payload JSON       any JSON value (default {})\n"
    "  --payload-file F     read the payload from file F; - reads stdin\n"
    "  --header K=V         add header K with value V (repeatable); applied after --headers\n"
    "  --headers JSON       all headers as a JSON object of strings (default {})\n"
    "                       a traceparent header must be W3C trace-context\n"
    "  --id UUID            use this message id (default: a new UUIDv7; not the nil UUID)\n"
    "  --max-message-bytes N  size limit of the whole message, 1024..1073741824\n"
    "                       (default 1048576); give the relay the same value\n"
    "  --max-field-bytes N  size limit of the type, aggregate type and id, 16..1048576\n"
    "                       (default 256); give the relay the same value\n" CLI_GLOBAL_HELP "\n"
    "Example:\n"
    "  outbox enqueue --store sqlite:app.db --type OrderPlaced --aggregate-type Order \\\n"
    "      --aggregate-id 42 --payload '{\"total\":12.5}' --header correlation_id=abc\n";

enum {
    OPT_STORE = CLI_OPT_COMMAND_BASE,
    OPT_TYPE,
    OPT_AGGREGATE_ID,
    OPT_AGGREGATE_TYPE,
    OPT_PAYLOAD,
    OPT_PAYLOAD_FILE,
    OPT_HEADER,
    OPT_HEADERS,
    OPT_ID,
    OPT_MAX_MESSAGE_BYTES,
    OPT_MAX_FIELD_BYTES
};

/* Reads all of path ("-": stdin) into *out (caller frees), refusing more
 * than limit bytes and NUL bytes.  Returns an exit code (message printed). */
static int read_payload(const char *cmd, const char *path, size_t limit, char **out)
{
    FILE *f = NULL;
    struct stat st;
    char *data = NULL;
    size_t len = 0, cap = 0;
    int rc = CLI_EXIT_FAILURE;
    int is_stdin = strcmp(path, "-") == 0;

    *out = NULL;
    f = is_stdin ? stdin : fopen(path, "rb");
    if (!f || (!is_stdin && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode))) {
        rc = cli_usage(cmd, "--payload-file %s: %s; give a readable file or - for stdin", path,
                       f ? strerror(EISDIR) : strerror(errno));
        goto out;
    }
    for (;;) {
        size_t n;
        if (cap - len < 4096) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *p = realloc(data, ncap + 1);
            if (!p) {
                rc = cli_failure(cmd, "out of memory reading --payload-file %s", path);
                goto out;
            }
            data = p;
            cap = ncap;
        }
        n = fread(data + len, 1, cap - len, f);
        len += n;
        if (len > limit) {
            rc = cli_usage(cmd,
                           "--payload-file %s is larger than the message limit of %zu bytes; "
                           "send a smaller payload or raise the limit with "
                           "--max-message-bytes N",
                           path, limit);
            goto out;
        }
        if (n == 0) {
            if (ferror(f)) {
                rc = cli_failure(cmd, "--payload-file %s: read error: %s", path, strerror(errno));
                goto out;
            }
            break;
        }
    }
    data[len] = '\0';
    if (memchr(data, '\0', len)) {
        rc = cli_usage(cmd, "--payload-file %s contains a NUL byte; the payload must be JSON text",
                       path);
        goto out;
    }
    *out = data;
    data = NULL;
    rc = CLI_EXIT_OK;
out:
    if (f && !is_stdin) fclose(f);
    free(data);
    return rc;
}

/* The library's size errors name its C setting (outbox_limit ...); on the
 * command line the setting is an option, so the message names that. */
static void limit_hint(outbox_error *err)
{
    static const struct {
        const char *api, *option;
    } names[] = {
        {"outbox_limit OUTBOX_LIMIT_MESSAGE_BYTES", "--max-message-bytes"},
        {"outbox_limit OUTBOX_LIMIT_FIELD_BYTES", "--max-field-bytes"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *at = strstr(err->message, names[i].api);
        if (at) {
            size_t alen = strlen(names[i].api), olen = strlen(names[i].option);
            memmove(at + olen, at + alen, strlen(at + alen) + 1);
            memcpy(at, names[i].option, olen);
        }
    }
}

/* Validates and stores one message.  Exit 0 (id printed), 1 (store error,
 * duplicate id, no schema) or 2 (bad input: nothing written). */
int cmd_enqueue(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"type", required_argument, NULL, OPT_TYPE},
        {"aggregate-id", required_argument, NULL, OPT_AGGREGATE_ID},
        {"aggregate-type", required_argument, NULL, OPT_AGGREGATE_TYPE},
        {"payload", required_argument, NULL, OPT_PAYLOAD},
        {"payload-file", required_argument, NULL, OPT_PAYLOAD_FILE},
        {"header", required_argument, NULL, OPT_HEADER},
        {"headers", required_argument, NULL, OPT_HEADERS},
        {"id", required_argument, NULL, OPT_ID},
        {"max-message-bytes", required_argument, NULL, OPT_MAX_MESSAGE_BYTES},
        {"max-field-bytes", required_argument, NULL, OPT_MAX_FIELD_BYTES},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "enqueue";
    const char *store_opt = NULL, *url = NULL, *type = NULL, *aggregate_id = NULL;
    const char *aggregate_type = NULL, *payload = NULL, *payload_file = NULL;
    const char *headers_json = NULL, *id = NULL;
    const char **header_args = NULL;
    size_t nheaders = 0;
    char *file_payload = NULL, *name = NULL;
    outbox_msg *msg = NULL;
    outbox_store *store = NULL;
    outbox_error err = {0, ""};
    uint64_t seen = 0, n;
    int c, rc;

    header_args = calloc((size_t)argc + 1, sizeof *header_args);
    if (!header_args) return cli_failure(cmd, "out of memory");
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if (c != OPT_HEADER && (rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) goto out;
        switch (c) {
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_TYPE:
            type = optarg;
            break;
        case OPT_AGGREGATE_ID:
            aggregate_id = optarg;
            break;
        case OPT_AGGREGATE_TYPE:
            aggregate_type = optarg;
            break;
        case OPT_PAYLOAD:
            payload = optarg;
            break;
        case OPT_PAYLOAD_FILE:
            payload_file = optarg;
            break;
        case OPT_HEADER:
            header_args[nheaders++] = optarg;
            break;
        case OPT_HEADERS:
            headers_json = optarg;
            break;
        case OPT_ID:
            id = optarg;
            break;
        case OPT_MAX_MESSAGE_BYTES:
            if ((rc = cli_parse_uint(cmd, "--max-message-bytes", optarg, 1024, 1073741824, &n)) !=
                CLI_EXIT_OK)
                goto out;
            outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, (size_t)n);
            break;
        case OPT_MAX_FIELD_BYTES:
            if ((rc = cli_parse_uint(cmd, "--max-field-bytes", optarg, 16, 1048576, &n)) !=
                CLI_EXIT_OK)
                goto out;
            outbox_limit(OUTBOX_LIMIT_FIELD_BYTES, (size_t)n);
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) goto out;
        }
    }
    if (optind < argc) {
        rc = cli_usage(cmd,
                       "unexpected argument '%s'; values go after their option "
                       "(e.g. --payload '{...}')",
                       argv[optind]);
        goto out;
    }
    if ((rc = cli_store_url(cmd, store_opt, &url)) != CLI_EXIT_OK) goto out;
    if (!type) {
        rc = cli_usage(cmd, "--type is required (the event type, e.g. OrderPlaced)");
        goto out;
    }
    if (!aggregate_id) {
        rc = cli_usage(cmd, "--aggregate-id is required (the ordering key, e.g. the order "
                            "number 42)");
        goto out;
    }
    if (payload && payload_file) {
        rc = cli_usage(cmd, "--payload and --payload-file are exclusive; give one of them");
        goto out;
    }
    if (payload_file) {
        rc = read_payload(cmd, payload_file, outbox_limit(OUTBOX_LIMIT_MESSAGE_BYTES, 0),
                          &file_payload);
        if (rc != CLI_EXIT_OK) goto out;
        payload = file_payload;
    }

    /* Build and validate everything before the store is touched. */
    if ((rc = outbox_msg_new(&msg, type, aggregate_type, aggregate_id, payload, &err)) != OUTBOX_OK)
        goto fail;
    if (headers_json && (rc = outbox_msg_set_headers_json(msg, headers_json, &err)) != OUTBOX_OK)
        goto fail;
    for (size_t i = 0; i < nheaders; i++) {
        const char *eq = strchr(header_args[i], '=');
        if (!eq || eq == header_args[i]) {
            rc = cli_usage(cmd,
                           "--header '%s' is not NAME=VALUE; write e.g. --header "
                           "correlation_id=abc",
                           header_args[i]);
            goto out;
        }
        free(name);
        name = strndup(header_args[i], (size_t)(eq - header_args[i]));
        if (!name) {
            rc = cli_failure(cmd, "out of memory");
            goto out;
        }
        if ((rc = outbox_msg_set_header(msg, name, eq + 1, &err)) != OUTBOX_OK) goto fail;
    }
    if (id && (rc = outbox_msg_set_id(msg, id, &err)) != OUTBOX_OK) goto fail;

    if ((rc = cli_store_open(cmd, url, &store)) != CLI_EXIT_OK) goto out;
    if ((rc = outbox_store_enqueue(store, msg, &err)) != OUTBOX_OK) goto fail;
    printf("%s\n", outbox_msg_id(msg));
    rc = CLI_EXIT_OK;
    goto out;

fail:
    limit_hint(&err);
    rc = cli_fail(cmd, rc, &err);
out:
    outbox_store_close(store);
    outbox_msg_free(msg);
    free(name);
    free(file_payload);
    free(header_args);
    return rc;
}

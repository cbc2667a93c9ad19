/*
 * status.c - `outbox status`: counts per status, how long the oldest
 * pending message has waited, when the next retry is due, and which relay
 * holds the lease.  Text for people, --json for scripts and monitoring.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox status --store URL [--json]\n"
    "\n"
    "Shows the outbox's counts per status (pending, of which due and retrying;\n"
    "sent; failed), the age of the oldest pending message, when the next retry\n"
    "is due, and the relay holding the lease.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --json               one JSON object instead of text (default: text)\n"
    CLI_GLOBAL_HELP
    "\n"
    "Example:\n"
    "  outbox status --store sqlite:app.db --json\n";

enum { OPT_STORE = CLI_OPT_COMMAND_BASE, OPT_JSON };

static int print_text(const char *shown, const outbox_status *st, int64_t now)
{
    char a[32], b[32];
    printf("outbox %s  (schema %d)\n", shown, st->schema_version);
    printf("  pending   %lld", (long long)st->pending);
    if (st->pending > 0) {
        cli_format_duration((now - st->oldest_pending_us) / 1000, a, sizeof a);
        printf("  (due %lld, retrying %lld, oldest %s ago)", (long long)st->pending_due,
               (long long)st->retrying, a);
    }
    printf("\n  sent      %lld\n  failed    %lld\n", (long long)st->sent, (long long)st->failed);
    if (st->retrying > 0 && st->next_due_us > 0) {
        if (st->next_due_us > now) {
            cli_format_duration((st->next_due_us - now) / 1000, a, sizeof a);
            printf("  next retry in %s\n", a);
        } else {
            printf("  next retry due now\n");
        }
    }
    if (st->lease_owner[0]) {
        int64_t left = st->lease_expires_us - now;
        cli_format_duration(left / 1000, b, sizeof b);
        printf("  relay     %s (lease expires in %s)\n", st->lease_owner, b);
    } else {
        printf("  relay     none\n");
    }
    return CLI_EXIT_OK;
}

static int print_json(const char *cmd, const char *shown, const outbox_status *st, int64_t now)
{
    json_t *o = json_object(), *relay;
    int rc;
    if (!o)
        return cli_failure(cmd, "out of memory");
    json_object_set_new(o, "store", json_string(shown));
    json_object_set_new(o, "schema_version", json_integer(st->schema_version));
    json_object_set_new(o, "pending", json_integer(st->pending));
    json_object_set_new(o, "pending_due", json_integer(st->pending_due));
    json_object_set_new(o, "retrying", json_integer(st->retrying));
    json_object_set_new(o, "sent", json_integer(st->sent));
    json_object_set_new(o, "failed", json_integer(st->failed));
    json_object_set_new(o, "oldest_pending_age_ms",
                        st->pending > 0 && st->oldest_pending_us > 0
                            ? json_integer(now > st->oldest_pending_us
                                               ? (now - st->oldest_pending_us) / 1000 : 0)
                            : json_null());
    json_object_set_new(o, "next_retry_in_ms",
                        st->retrying > 0 && st->next_due_us > 0
                            ? json_integer(st->next_due_us > now
                                               ? (st->next_due_us - now) / 1000 : 0)
                            : json_null());
    if (st->lease_owner[0]) {
        relay = json_object();
        json_object_set_new(relay, "owner", json_string(st->lease_owner));
        json_object_set_new(relay, "lease_expires_in_ms",
                            json_integer(st->lease_expires_us > now
                                             ? (st->lease_expires_us - now) / 1000 : 0));
    } else {
        relay = json_null();
    }
    json_object_set_new(o, "relay", relay);
    rc = cli_print_json(cmd, o);
    json_decref(o);
    return rc;
}

/* Prints the store's status.  Exit 0, 1 (missing schema, store error) or 2. */
int cmd_status(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"json", no_argument, NULL, OPT_JSON},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "status", *store_opt = NULL, *url = NULL;
    outbox_store store = {NULL, NULL};
    outbox_status st;
    outbox_error err = {0, ""};
    char shown[512];
    int c, rc, as_json = 0;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_STORE: store_opt = optarg; break;
        case OPT_JSON: as_json = 1; break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE)
                return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox status --help", argv[optind]);
    if ((rc = cli_store_url(cmd, store_opt, &url)) != CLI_EXIT_OK)
        return rc;
    if ((rc = cli_store_open(cmd, url, &store)) != CLI_EXIT_OK)
        return rc;

    memset(&st, 0, sizeof st);
    if ((rc = store.ops->status(store.state, &st, &err)) != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    st.lease_owner[sizeof st.lease_owner - 1] = '\0';
    outbox__url_redact(url, shown, sizeof shown);
    if (as_json)
        rc = print_json(cmd, shown, &st, outbox__now_us());
    else
        rc = print_text(shown, &st, outbox__now_us());
out:
    outbox__store_close(&store);
    return rc;
}

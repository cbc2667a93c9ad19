/*
 * status.c - `outbox status`: counts per status, the pending messages held
 * behind a Failed one, how long the oldest pending message has waited,
 * when the next retry is due, and which relay holds the lease (and whether
 * it is still alive), and for PostgreSQL WAL capture how far its replication
 * slot lags.  Text for people, --json for scripts and monitoring;
 * --check turns it into a probe for cron, systemd timers and containers.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: outbox status --store URL [--json]\n"
    "       outbox status --store URL --check [--max-failed N] [--max-age DUR]\n"
    "                     [--max-blocked N] [--json]\n"
    "\n"
    "Shows the outbox's counts per status (pending, of which due and retrying;\n"
    "blocked: pending messages held behind a Failed message of their aggregate;\n"
    "sent; failed), the age of the oldest pending message, when the next retry\n"
    "is due, and the relay holding the lease (or that it is gone).  A\n"
    "PostgreSQL store with a replication slot for WAL capture (outbox init\n"
    "--capture wal) also shows the slot: the WAL the server keeps for it\n"
    "(bytes written since the relay last confirmed), how long the relay is\n"
    "behind, and whether a relay streams from it.\n" CLI_FAILED_HELP "\n"
    "With --check it is a probe: it exits 0 when the outbox is within the\n"
    "limits, printing nothing, and 1 with one line on stderr per limit exceeded\n"
    "(e.g. \"failed 3 > --max-failed 0\").  --check alone means --max-failed 0\n"
    "--max-blocked 0; given any --max-* option (which implies --check), only the\n"
    "limits given are checked.  With --json the status is printed as well, with\n"
    "a \"check\" member.\n"
    "\n"
    "Options:\n"
    "  --store URL          the database (required; default $OUTBOX_STORE)\n"
    "  --json               one JSON object instead of text (default: text)\n"
    "  --check              exit 1 when a limit is exceeded (default limits above)\n"
    "  --max-failed N       at most N Failed messages\n"
    "  --max-blocked N      at most N pending messages held behind Failed ones\n"
    "  --max-age DUR        the oldest pending message waited at most DUR\n" CLI_GLOBAL_HELP "\n"
    "Durations: 500ms, 30s, 5m, 2h, 7d (a bare number is seconds).\n"
    "\n"
    "Example:\n"
    "  outbox status --store sqlite:app.db --json\n"
    "  outbox status --store sqlite:app.db --check --max-age 5m   # every 5 min from cron\n";

enum {
    OPT_STORE = CLI_OPT_COMMAND_BASE,
    OPT_JSON,
    OPT_CHECK,
    OPT_MAX_FAILED,
    OPT_MAX_BLOCKED,
    OPT_MAX_AGE
};

/* The limits of --check; -1: not checked. */
typedef struct limits {
    int64_t max_failed, max_blocked, max_age_ms;
    const char *max_age_text; /* as given, for the message */
} limits;

static int64_t oldest_age_ms(const outbox_status *st, int64_t now)
{
    if (st->pending <= 0 || st->oldest_pending_us <= 0 || now <= st->oldest_pending_us) return 0;
    return (now - st->oldest_pending_us) / 1000;
}

static void print_relay_text(const outbox_status *st, int64_t now)
{
    char left[32];
    if (!st->lease_owner[0]) {
        printf("  relay     none\n");
        return;
    }
    cli_format_duration((st->lease_expires_us - now) / 1000, left, sizeof left);
    printf("  relay     ");
    cli_fputs_escaped(st->lease_owner, stdout);
    if (st->lease_pid > 0 || st->lease_host[0]) {
        printf(" (pid %lld on ", (long long)st->lease_pid);
        cli_fputs_escaped(st->lease_host[0] ? st->lease_host : "?", stdout);
        if (st->lease_holder_gone)
            printf(") is gone; its lease expires in %s\n", left);
        else
            printf("; lease expires in %s)\n", left);
    } else if (st->lease_holder_gone) {
        printf(" is gone; its lease expires in %s\n", left);
    } else {
        printf(" (lease expires in %s)\n", left);
    }
    if (st->relay_note[0]) {
        printf("            ");
        cli_fputs_escaped(st->relay_note, stdout);
        putchar('\n');
    }
}

static void print_text(const char *shown, const outbox_status *st, int counts_blocked, int64_t now)
{
    char a[32];
    printf("outbox %s  (schema %d)\n", shown, st->schema_version);
    printf("  pending   %lld", (long long)st->pending);
    if (st->pending > 0) {
        cli_format_duration(oldest_age_ms(st, now), a, sizeof a);
        printf("  (due %lld, retrying %lld, oldest %s ago)", (long long)st->pending_due,
               (long long)st->retrying, a);
    }
    if (!counts_blocked)
        printf("\n  blocked   unknown (this store does not count them)");
    else if (st->blocked > 0)
        printf("\n  blocked   %lld  (behind a Failed message, in %lld aggregate%s)",
               (long long)st->blocked, (long long)st->aggregates_blocked,
               st->aggregates_blocked == 1 ? "" : "s");
    else
        printf("\n  blocked   0");
    printf("\n  sent      %lld\n  failed    %lld\n", (long long)st->sent, (long long)st->failed);
    if (st->retrying > 0 && st->next_due_us > 0) {
        if (st->next_due_us > now) {
            cli_format_duration((st->next_due_us - now) / 1000, a, sizeof a);
            printf("  next retry in %s\n", a);
        } else {
            printf("  next retry due now\n");
        }
    }
    print_relay_text(st, now);
    if (st->wal_slot_exists) {
        printf("  wal slot  %s  lag %lld bytes", st->wal_slot, (long long)st->wal_lag_bytes);
        if (st->wal_lag_us > 0) { /* 0: caught up, or the server does not say */
            cli_format_duration(st->wal_lag_us / 1000, a, sizeof a);
            printf(", %s behind", a);
        }
        printf("  (%s)\n", st->wal_slot_active ? "a relay streams from it"
                                               : "no relay reads it: the server keeps its WAL");
    }
}

/* The replication slot of WAL capture, null when the store has none. */
static json_t *wal_json(const outbox_status *st)
{
    json_t *wal;
    if (!st->wal_slot_exists) return json_null();
    wal = json_object();
    json_object_set_new(wal, "slot", json_string(st->wal_slot));
    json_object_set_new(wal, "active", json_boolean(st->wal_slot_active));
    json_object_set_new(wal, "lag_bytes", json_integer(st->wal_lag_bytes));
    json_object_set_new(wal, "lag_ms", json_integer(st->wal_lag_us / 1000));
    return wal;
}

static json_t *relay_json(const outbox_status *st, int counts_blocked, int64_t now)
{
    json_t *relay;
    if (!st->lease_owner[0]) return json_null();
    relay = json_object();
    json_object_set_new(relay, "owner", json_string(st->lease_owner));
    json_object_set_new(
        relay, "lease_expires_in_ms",
        json_integer(st->lease_expires_us > now ? (st->lease_expires_us - now) / 1000 : 0));
    json_object_set_new(relay, "pid",
                        st->lease_pid > 0 ? json_integer(st->lease_pid) : json_null());
    json_object_set_new(relay, "host",
                        st->lease_host[0] ? json_string(st->lease_host) : json_null());
    json_object_set_new(relay, "gone",
                        counts_blocked ? json_boolean(st->lease_holder_gone) : json_null());
    json_object_set_new(relay, "note",
                        st->relay_note[0] ? json_string(st->relay_note) : json_null());
    return relay;
}

/* Adds the status members to o. */
static void status_json(json_t *o, const char *shown, const outbox_status *st, int counts_blocked,
                        int64_t now)
{
    json_object_set_new(o, "store", json_string(shown));
    json_object_set_new(o, "schema_version", json_integer(st->schema_version));
    json_object_set_new(o, "pending", json_integer(st->pending));
    json_object_set_new(o, "pending_due", json_integer(st->pending_due));
    json_object_set_new(o, "retrying", json_integer(st->retrying));
    json_object_set_new(o, "blocked", counts_blocked ? json_integer(st->blocked) : json_null());
    json_object_set_new(o, "aggregates_blocked",
                        counts_blocked ? json_integer(st->aggregates_blocked) : json_null());
    json_object_set_new(o, "sent", json_integer(st->sent));
    json_object_set_new(o, "failed", json_integer(st->failed));
    json_object_set_new(o, "oldest_pending_age_ms",
                        st->pending > 0 && st->oldest_pending_us > 0
                            ? json_integer(oldest_age_ms(st, now))
                            : json_null());
    json_object_set_new(
        o, "next_retry_in_ms",
        st->retrying > 0 && st->next_due_us > 0
            ? json_integer(st->next_due_us > now ? (st->next_due_us - now) / 1000 : 0)
            : json_null());
    json_object_set_new(o, "relay", relay_json(st, counts_blocked, now));
    json_object_set_new(o, "wal", wal_json(st));
}

/* One exceeded limit: its line on stderr and, when exceeded is not NULL,
 * an entry {"limit", "value", "max"} in it. */
static void exceeded_limit(const char *cmd, json_t *exceeded, const char *limit, const char *line,
                           int64_t value, int64_t max)
{
    cli_failure(cmd, "%s", line);
    if (exceeded) {
        json_t *e = json_object();
        json_object_set_new(e, "limit", json_string(limit));
        json_object_set_new(e, "value", json_integer(value));
        json_object_set_new(e, "max", json_integer(max));
        json_object_set_new(e, "message", json_string(line));
        json_array_append_new(exceeded, e);
    }
}

/* Checks st against lim; returns how many limits are exceeded, after
 * printing a line for each (and adding it to exceeded when not NULL). */
static int check_limits(const char *cmd, const outbox_status *st, const limits *lim,
                        json_t *exceeded, int64_t now)
{
    char line[256], age[32];
    int64_t age_ms = oldest_age_ms(st, now);
    int count = 0;
    if (lim->max_failed >= 0 && st->failed > lim->max_failed) {
        snprintf(line, sizeof line, "failed %lld > --max-failed %lld", (long long)st->failed,
                 (long long)lim->max_failed);
        exceeded_limit(cmd, exceeded, "max_failed", line, st->failed, lim->max_failed);
        count++;
    }
    if (lim->max_blocked >= 0 && st->blocked > lim->max_blocked) {
        snprintf(line, sizeof line, "blocked %lld > --max-blocked %lld (in %lld aggregate%s)",
                 (long long)st->blocked, (long long)lim->max_blocked,
                 (long long)st->aggregates_blocked, st->aggregates_blocked == 1 ? "" : "s");
        exceeded_limit(cmd, exceeded, "max_blocked", line, st->blocked, lim->max_blocked);
        count++;
    }
    if (lim->max_age_ms >= 0 && age_ms > lim->max_age_ms) {
        cli_format_duration(age_ms, age, sizeof age);
        snprintf(line, sizeof line, "oldest pending %s > --max-age %s", age, lim->max_age_text);
        exceeded_limit(cmd, exceeded, "max_age_ms", line, age_ms, lim->max_age_ms);
        count++;
    }
    return count;
}

/* Prints the store's status, or checks it against limits.  Exit 0; 1
 * (a limit exceeded, missing schema, store error); 2 (bad options). */
int cmd_status(int argc, char **argv)
{
    static const struct option options[] = {
        {"store", required_argument, NULL, OPT_STORE},
        {"json", no_argument, NULL, OPT_JSON},
        {"check", no_argument, NULL, OPT_CHECK},
        {"max-failed", required_argument, NULL, OPT_MAX_FAILED},
        {"max-blocked", required_argument, NULL, OPT_MAX_BLOCKED},
        {"max-age", required_argument, NULL, OPT_MAX_AGE},
        CLI_GLOBAL_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "status", *store_opt = NULL, *url = NULL;
    outbox_store *store = NULL;
    outbox_status st;
    outbox_error err = {0, ""};
    limits lim = {-1, -1, -1, NULL};
    json_t *o = NULL, *check = NULL, *exceeded = NULL;
    char shown[512];
    int c, rc, as_json = 0, checking = 0, limit_given = 0, counts_blocked, over;
    uint64_t seen = 0, n;
    int64_t now;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if ((rc = cli_once(cmd, options, c, &seen)) != CLI_EXIT_OK) return rc;
        switch (c) {
        case OPT_STORE:
            store_opt = optarg;
            break;
        case OPT_JSON:
            as_json = 1;
            break;
        case OPT_CHECK:
            checking = 1;
            break;
        case OPT_MAX_FAILED:
        case OPT_MAX_BLOCKED:
            if ((rc = cli_parse_uint(cmd, c == OPT_MAX_FAILED ? "--max-failed" : "--max-blocked",
                                     optarg, 0, INT64_MAX, &n)) != CLI_EXIT_OK)
                return rc;
            *(c == OPT_MAX_FAILED ? &lim.max_failed : &lim.max_blocked) = (int64_t)n;
            checking = limit_given = 1;
            break;
        case OPT_MAX_AGE:
            if ((rc = cli_parse_duration(cmd, "--max-age", optarg, INT64_MAX / 1000,
                                         &lim.max_age_ms)) != CLI_EXIT_OK)
                return rc;
            lim.max_age_text = optarg;
            checking = limit_given = 1;
            break;
        default:
            if ((rc = cli_option(cmd, c, argv, usage)) != CLI_CONTINUE) return rc;
        }
    }
    if (optind < argc)
        return cli_usage(cmd, "unexpected argument '%s'; see outbox status --help", argv[optind]);
    if ((rc = cli_store_connect(cmd, store_opt, &store, &url)) != CLI_EXIT_OK) return rc;

    if ((rc = outbox_store_status(store, &st, sizeof st, &err)) != OUTBOX_OK) {
        rc = cli_fail(cmd, rc, &err);
        goto out;
    }
    counts_blocked = st.blocked_counted;
    if (checking && !limit_given) {
        lim.max_failed = 0;
        lim.max_blocked = counts_blocked ? 0 : -1;
    }
    if (checking && lim.max_blocked >= 0 && !counts_blocked) {
        rc = cli_usage(cmd,
                       "--max-blocked: this %s store does not count blocked messages; "
                       "drop the option or upgrade outbox",
                       outbox_store_scheme(store));
        goto out;
    }
    outbox_url_redact(url, shown, sizeof shown);
    now = cli_now_us();

    if (as_json) {
        if (!(o = json_object())) {
            rc = cli_failure(cmd, "out of memory");
            goto out;
        }
        status_json(o, shown, &st, counts_blocked, now);
    }
    rc = CLI_EXIT_OK;
    if (checking) {
        if (as_json) {
            check = json_object();
            exceeded = json_array();
        }
        over = check_limits(cmd, &st, &lim, exceeded, now);
        if (as_json) {
            json_object_set_new(check, "ok", json_boolean(over == 0));
            json_object_set_new(check, "exceeded", exceeded);
            json_object_set_new(o, "check", check);
        }
        rc = over > 0 ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
    }
    if (as_json) {
        int prc = cli_print_json(cmd, o);
        if (prc != CLI_EXIT_OK) rc = prc;
    } else if (!checking) {
        print_text(shown, &st, counts_blocked, now);
    }
out:
    json_decref(o);
    outbox_store_close(store);
    return rc;
}

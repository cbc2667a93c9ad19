/*
 * service_options.c - the command-line options every CampusCafe service
 * takes (`campuscafe <service> --dir DIR ...`), checked into its
 * cafe_config before anything starts.
 */
#include "cafe.h"

#if defined(OUTBOX_HAVE_MHD) && defined(OUTBOX_HAVE_CURL)

#include "service.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Options
 * ---------------------------------------------------------------------- */

static void usage(const cafe_service_def *def, FILE *to)
{
    fprintf(to,
            "usage: campuscafe %s --dir DIR [--port N] [options]\n"
            "  --dir DIR               database DIR/%s.db, ready file DIR/%s.ready (required)\n"
            "  --port N                event endpoint 127.0.0.1:N (POST /events, GET /stats)\n"
            "  --api-port N            order only: the public API (POST /orders, GET /orders/ID)\n"
            "  --order-url URL         where events for each service go\n"
            "  --inventory-url URL     (http://127.0.0.1:P/events)\n"
            "  --payment-url URL\n"
            "  --notification-url URL\n"
            "  --bus webhook|nats://H:P|amqp://H:P  event transport (default webhook)\n"
            "  --mode outbox|naive     outbox + inbox (default) or direct sends\n"
            "  --relay inproc|process  relay on a thread (default) or an `outbox relay` child\n"
            "  --secret-file F         webhook signing secret (whsec_...)\n"
            "  --seed N                seeds every random choice (default 1)\n"
            "  --fail-rate F           payment only: fraction declined, 0..1 (default 0.2)\n"
            "  --stock item=qty,...    inventory only (default " CAFE_DEFAULT_STOCK ")\n"
            "  --crash-rate F          order only: SIGKILL self at a crash point, 0..1\n"
            "  --crash-points LIST     after_commit,after_send,mid_request\n"
            "  --naive-variant V       order, naive mode: save-then-send (default) or\n"
            "                          send-then-save\n",
            def->name, def->name, def->name);
}

static int parse_rate(const char *opt, const char *text, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0 && v <= 1)) {
        fprintf(stderr, "campuscafe: %s '%s' is not a number from 0 to 1\n", opt, text);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_port(const char *opt, const char *text, unsigned *out)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(text, &end, 10);
    if (errno || end == text || *end || v == 0 || v > 65535) {
        fprintf(stderr, "campuscafe: %s '%s' is not a port number 1..65535\n", opt, text);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_crash_points(const char *text, unsigned *out)
{
    char buf[256], *tok, *save = NULL;
    snprintf(buf, sizeof buf, "%s", text);
    *out = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "after_commit") == 0)
            *out |= CAFE_CRASH_AFTER_COMMIT;
        else if (strcmp(tok, "after_send") == 0)
            *out |= CAFE_CRASH_AFTER_SEND;
        else if (strcmp(tok, "mid_request") == 0)
            *out |= CAFE_CRASH_MID_REQUEST;
        else {
            fprintf(stderr,
                    "campuscafe: --crash-points: unknown point '%s'; use after_commit, "
                    "after_send, mid_request\n",
                    tok);
            return -1;
        }
    }
    return 0;
}

static int read_secret(cafe_config *cfg)
{
    FILE *f = fopen(cfg->secret_file, "r");
    size_t n;
    if (!f) {
        fprintf(stderr, "campuscafe: cannot read --secret-file %s: %s\n", cfg->secret_file,
                strerror(errno));
        return -1;
    }
    n = fread(cfg->secret, 1, sizeof cfg->secret - 1, f);
    fclose(f);
    cfg->secret[n] = '\0';
    while (n > 0 &&
           (cfg->secret[n - 1] == '\n' || cfg->secret[n - 1] == '\r' || cfg->secret[n - 1] == ' '))
        cfg->secret[--n] = '\0';
    if (n == 0) {
        fprintf(stderr, "campuscafe: --secret-file %s is empty; put a whsec_ secret in it\n",
                cfg->secret_file);
        return -1;
    }
    return 0;
}

/* 0, or the exit code (2 usage, or -1 for --help handled). */
int cafe_parse_options(cafe_service *svc, int argc, char **argv)
{
    enum {
        O_DIR = 256,
        O_PORT,
        O_API,
        O_OURL,
        O_IURL,
        O_PURL,
        O_NURL,
        O_BUS,
        O_MODE,
        O_RELAY,
        O_SECRET,
        O_SEED,
        O_FAIL,
        O_STOCK,
        O_CRATE,
        O_CPOINTS,
        O_VARIANT,
        O_HELP
    };
    static const struct option longopts[] = {{"dir", required_argument, NULL, O_DIR},
                                             {"port", required_argument, NULL, O_PORT},
                                             {"api-port", required_argument, NULL, O_API},
                                             {"order-url", required_argument, NULL, O_OURL},
                                             {"inventory-url", required_argument, NULL, O_IURL},
                                             {"payment-url", required_argument, NULL, O_PURL},
                                             {"notification-url", required_argument, NULL, O_NURL},
                                             {"bus", required_argument, NULL, O_BUS},
                                             {"mode", required_argument, NULL, O_MODE},
                                             {"relay", required_argument, NULL, O_RELAY},
                                             {"secret-file", required_argument, NULL, O_SECRET},
                                             {"seed", required_argument, NULL, O_SEED},
                                             {"fail-rate", required_argument, NULL, O_FAIL},
                                             {"stock", required_argument, NULL, O_STOCK},
                                             {"crash-rate", required_argument, NULL, O_CRATE},
                                             {"crash-points", required_argument, NULL, O_CPOINTS},
                                             {"naive-variant", required_argument, NULL, O_VARIANT},
                                             {"help", no_argument, NULL, O_HELP},
                                             {NULL, 0, NULL, 0}};
    cafe_config *cfg = &svc->cfg;
    const cafe_service_def *def = svc->def;
    int c, i;

    for (i = 0; cafe_service_names[i]; i++)
        if (strcmp(cafe_service_names[i], def->name) == 0) cfg->service = i;
    cfg->bus = "webhook";
    cfg->seed = 1;
    cfg->fail_rate = 0.2;
    cfg->stock = CAFE_DEFAULT_STOCK;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_DIR:
            cfg->dir = optarg;
            break;
        case O_PORT:
            if (parse_port("--port", optarg, &cfg->port)) return 2;
            break;
        case O_API:
            if (parse_port("--api-port", optarg, &cfg->api_port)) return 2;
            break;
        case O_OURL:
            cfg->peer_url[CAFE_ORDER] = optarg;
            break;
        case O_IURL:
            cfg->peer_url[CAFE_INVENTORY] = optarg;
            break;
        case O_PURL:
            cfg->peer_url[CAFE_PAYMENT] = optarg;
            break;
        case O_NURL:
            cfg->peer_url[CAFE_NOTIFICATION] = optarg;
            break;
        case O_BUS:
            if (strcmp(optarg, "webhook") != 0 && strncmp(optarg, "nats://", 7) != 0 &&
                strncmp(optarg, "amqp://", 7) != 0) {
                fprintf(stderr,
                        "campuscafe: --bus '%s': use webhook, nats://HOST:PORT or "
                        "amqp://HOST:PORT\n",
                        optarg);
                return 2;
            }
            cfg->bus = optarg;
            break;
        case O_MODE:
            if (strcmp(optarg, "outbox") != 0 && strcmp(optarg, "naive") != 0) {
                fprintf(stderr, "campuscafe: --mode '%s': use outbox or naive\n", optarg);
                return 2;
            }
            cfg->naive = strcmp(optarg, "naive") == 0;
            break;
        case O_RELAY:
            if (strcmp(optarg, "inproc") != 0 && strcmp(optarg, "process") != 0) {
                fprintf(stderr, "campuscafe: --relay '%s': use inproc or process\n", optarg);
                return 2;
            }
            cfg->relay_process = strcmp(optarg, "process") == 0;
            break;
        case O_SECRET:
            cfg->secret_file = optarg;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            cfg->seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "campuscafe: --seed '%s' is not a whole number\n", optarg);
                return 2;
            }
            break;
        }
        case O_FAIL:
            if (parse_rate("--fail-rate", optarg, &cfg->fail_rate)) return 2;
            break;
        case O_STOCK:
            cfg->stock = optarg;
            break;
        case O_CRATE:
            if (parse_rate("--crash-rate", optarg, &cfg->crash_rate)) return 2;
            break;
        case O_CPOINTS:
            if (parse_crash_points(optarg, &cfg->crash_points)) return 2;
            break;
        case O_VARIANT:
            if (strcmp(optarg, "save-then-send") != 0 && strcmp(optarg, "send-then-save") != 0) {
                fprintf(stderr,
                        "campuscafe: --naive-variant '%s': use save-then-send or "
                        "send-then-save\n",
                        optarg);
                return 2;
            }
            cfg->send_then_save = strcmp(optarg, "send-then-save") == 0;
            break;
        case O_HELP:
            usage(def, stdout);
            return -1;
        default:
            fprintf(stderr, "campuscafe %s: unknown or incomplete option '%s' (see --help)\n",
                    def->name, argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "campuscafe %s: unexpected argument '%s' (see --help)\n", def->name,
                argv[optind]);
        return 2;
    }
    if (!cfg->dir) {
        fprintf(stderr, "campuscafe %s: --dir DIR is required (the service's database folder)\n",
                def->name);
        return 2;
    }
    if (cfg->naive && strcmp(cfg->bus, "webhook") != 0) {
        fprintf(stderr, "campuscafe %s: --mode naive works with --bus webhook only\n", def->name);
        return 2;
    }
    if (strcmp(cfg->bus, "webhook") == 0) {
        if (!cfg->port) {
            fprintf(stderr, "campuscafe %s: --port N is required with --bus webhook\n", def->name);
            return 2;
        }
        for (i = 0; def->emits[i]; i++) {
            int t = cafe_event_target(def->emits[i]);
            if (t >= 0 && !cfg->peer_url[t]) {
                fprintf(stderr,
                        "campuscafe %s: --%s-url is required (where %s events go), e.g. "
                        "http://127.0.0.1:P/events\n",
                        def->name, cafe_service_names[t], def->emits[i]);
                return 2;
            }
        }
    }
#ifndef OUTBOX_HAVE_RABBITMQ
    if (strncmp(cfg->bus, "amqp://", 7) == 0) {
        fprintf(stderr, "campuscafe: --bus amqp:// needs a build with librabbitmq\n");
        return 2;
    }
#endif
#ifndef OUTBOX_HAVE_NATS
    if (strncmp(cfg->bus, "nats://", 7) == 0) {
        fprintf(stderr, "campuscafe: --bus nats:// needs a build with nats.c\n");
        return 2;
    }
#endif
    if (cfg->secret_file && read_secret(cfg)) return 2;
    if (cfg->service == CAFE_INVENTORY) {
        outbox_error err;
        memset(&err, 0, sizeof err);
        if (cafe_stock_parse(cfg->stock, NULL, NULL, &err) != OUTBOX_OK) {
            fprintf(stderr, "campuscafe %s: %s\n", def->name, err.message);
            return 2;
        }
    }
    return 0;
}

#endif /* OUTBOX_HAVE_MHD && OUTBOX_HAVE_CURL */

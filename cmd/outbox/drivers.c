/*
 * drivers.c - what the CLI says about stores and destinations, all of it
 * made from the library's driver list (outbox_driver_get): the "use one
 * of" lists in errors, the driver sections of relay --help, `outbox help
 * drivers`, and (with --markdown) the driver sections of docs/CLI.md,
 * which `make docs` writes and tests/test_docs.sh compares.  Nothing here
 * names a driver, so help and docs cannot drift from the code.
 *
 * The Markdown lists every driver the project has, built or not, so the
 * committed docs do not depend on the libraries of the machine that made
 * them; the help for people marks what this build lacks.
 */
#include "cli.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define TEXT_WIDTH 79

static const outbox_driver_info *driver_find(int kind, const char *scheme, size_t n)
{
    const outbox_driver_info *d;
    for (size_t i = 0; (d = outbox_driver_get(kind, i)) != NULL; i++)
        if (strlen(d->scheme) == n && strncasecmp(d->scheme, scheme, n) == 0) return d;
    return NULL;
}

void cli_scheme_list(cli_buf *b, int kind)
{
    const outbox_driver_info *d;
    int first = 1;
    for (size_t i = 0; (d = outbox_driver_get(kind, i)) != NULL; i++) {
        if (!d->built) continue;
        cli_buf_printf(b, "%s%s", first ? "" : ", ", d->usage);
        first = 0;
    }
}

void cli_scheme_names(FILE *out, int kind)
{
    const outbox_driver_info *d;
    int first = 1;
    for (size_t i = 0; (d = outbox_driver_get(kind, i)) != NULL; i++) {
        if (!d->built) continue;
        fprintf(out, "%s%s", first ? "" : " ", d->scheme);
        first = 0;
    }
}

int cli_check_scheme(const char *cmd, const char *what, const char *url, int kind)
{
    const char *noun = kind == CLI_STORES ? "store" : "destination";
    const outbox_driver_info *d;
    char shown[512];
    size_t n = strcspn(url, ":");
    const char *schemes;
    cli_buf list;
    int rc, valid = url[n] == ':' && n > 0;

    for (size_t i = 0; valid && i < n; i++)
        if (!isalnum((unsigned char)url[i]) && url[i] != '+' && url[i] != '-' && url[i] != '.')
            valid = 0;
    d = valid ? driver_find(kind, url, n) : NULL;
    if (d && d->built) return CLI_EXIT_OK;

    outbox_url_redact(url, shown, sizeof shown);
    cli_buf_init(&list);
    cli_scheme_list(&list, kind);
    if ((schemes = cli_buf_text(&list)) == NULL) {
        cli_buf_free(&list);
        return cli_failure(cmd, "out of memory");
    }
    if (!valid)
        rc = cli_usage(cmd, "%s '%s' has no scheme; use one of %s", what, shown, schemes);
    else if (d)
        rc = cli_usage(cmd,
                       "%s '%s': this build has no %.*s %s (not built with its "
                       "library); use one of %s, or rebuild with it",
                       what, shown, (int)n, url, noun, schemes);
    else
        rc = cli_usage(cmd, "%s '%s': unknown %s scheme '%.*s'; use one of %s", what, shown, noun,
                       (int)n, url, schemes);
    cli_buf_free(&list);
    return rc;
}

/* ------------------------------------------------------------------------
 * Text for people
 * ---------------------------------------------------------------------- */

/* Writes text wrapped at TEXT_WIDTH, every line indented by indent. */
static void print_wrapped(FILE *out, const char *text, int indent)
{
    const char *p = text;
    while (*p) {
        int col = indent;
        fprintf(out, "%*s", indent, "");
        for (;;) {
            size_t word = strcspn(p, " ");
            if (col > indent && col + 1 + (int)word > TEXT_WIDTH) break;
            if (col > indent) {
                fputc(' ', out);
                col++;
            }
            fwrite(p, 1, word, out);
            col += (int)word;
            p += word;
            while (*p == ' ')
                p++;
            if (!*p) break;
        }
        fputc('\n', out);
    }
}

/* "(default 5s; 1ms..1h)", "(default 16)", "" into buf. */
static void prop_notes(const outbox_driver_prop *p, char *buf, size_t len)
{
    const char *range = p->range && strcmp(p->type, "enum") != 0 ? p->range : NULL;
    if (p->default_value && range)
        snprintf(buf, len, "(default %s; %s)", p->default_value, range);
    else if (p->default_value)
        snprintf(buf, len, "(default %s)", p->default_value);
    else if (range)
        snprintf(buf, len, "(%s)", range);
    else
        buf[0] = '\0';
}

/* The driver i of kind shares the settings of an earlier one: that one. */
static const outbox_driver_info *same_props(int kind, size_t i)
{
    const outbox_driver_info *d = outbox_driver_get(kind, i), *e;
    for (size_t j = 0; j < i && d->props; j++)
        if ((e = outbox_driver_get(kind, j))->props == d->props) return e;
    return NULL;
}

void cli_drivers_help(FILE *out, int kind, int built_only)
{
    const outbox_driver_info *d, *same;
    char notes[160];
    for (size_t i = 0; (d = outbox_driver_get(kind, i)) != NULL; i++) {
        if (built_only && !d->built) continue;
        fprintf(out, "  %s%s\n", d->usage, d->built ? "" : "  (not in this build)");
        print_wrapped(out, d->doc, 6);
        if ((same = same_props(kind, i)) != NULL) {
            fprintf(out, "      Settings: as for %s\n", same->usage);
            continue;
        }
        for (size_t k = 0; k < d->prop_count; k++) {
            const outbox_driver_prop *p = &d->props[k];
            prop_notes(p, notes, sizeof notes);
            fprintf(out, "      %s=%s%s%s\n", p->name, p->placeholder, notes[0] ? "  " : "", notes);
            print_wrapped(out, p->doc, 10);
        }
    }
}

/* ------------------------------------------------------------------------
 * Markdown for docs/CLI.md
 * ---------------------------------------------------------------------- */

/* Writes s for a Markdown table cell: '|' escaped. */
static void md_cell(FILE *out, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|') fputc('\\', out);
        fputc(*s, out);
    }
}

static void markdown_kind(FILE *out, int kind, const char *title)
{
    const outbox_driver_info *d, *same;
    fprintf(out, "### %s\n", title);
    for (size_t i = 0; (d = outbox_driver_get(kind, i)) != NULL; i++) {
        fprintf(out, "\n#### `%s`\n\n%s\n", d->usage, d->doc);
        if ((same = same_props(kind, i)) != NULL) {
            fprintf(out, "\nSettings: as for `%s`.\n", same->usage);
            continue;
        }
        if (d->prop_count == 0) continue;
        fputs("\n| setting | type | default | range | meaning |\n|---|---|---|---|---|\n", out);
        for (size_t k = 0; k < d->prop_count; k++) {
            const outbox_driver_prop *p = &d->props[k];
            fputs("| `", out);
            md_cell(out, p->name);
            fputc('=', out);
            md_cell(out, p->placeholder);
            fprintf(out, "` | %s | ", p->type);
            if (p->default_value) {
                fputc('`', out);
                md_cell(out, p->default_value);
                fputc('`', out);
            }
            fputs(" | ", out);
            if (p->range) {
                fputc('`', out);
                md_cell(out, p->range);
                fputc('`', out);
            }
            fputs(" | ", out);
            md_cell(out, p->doc);
            fputs(" |\n", out);
        }
    }
}

static void print_markdown(FILE *out)
{
    fputs("Made by `outbox help drivers --markdown` from the drivers' own tables (`make docs`\n"
          "writes it here). Stores take their settings as URL query parameters; destinations as\n"
          "query parameters or `relay --to-opt KEY=VALUE` (HTTP: `--to-opt` only, the URL's\n"
          "query is the target's). Durations: `500ms`, `30s`, `5m`, `2h`, `7d`; sizes: `512`,\n"
          "`64k`, `1m`, `2g`; booleans: `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).\n"
          "An unknown setting, or a value that does not parse or is out of range, stops the\n"
          "relay at start-up (exit 2).\n\n",
          out);
    markdown_kind(out, CLI_STORES, "Stores");
    fputc('\n', out);
    markdown_kind(out, CLI_DESTINATIONS, "Destinations");
}

static const char drivers_usage[] =
    "usage: outbox help drivers [--markdown]\n"
    "\n"
    "Lists the stores and destinations the project has, each with its URL form,\n"
    "what it is, and its settings (name=VALUE, default, range).  Drivers whose\n"
    "library this build left out are marked.  --markdown prints the same for\n"
    "docs/CLI.md, with every driver, whatever this build has.\n";

int cli_help_drivers(int argc, char **argv)
{
    int markdown = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--markdown") == 0) {
            markdown = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(drivers_usage, stdout);
            return CLI_EXIT_OK;
        } else {
            return cli_usage("help", "unexpected argument '%s'; see outbox help drivers --help",
                             argv[i]);
        }
    }
    if (markdown) {
        print_markdown(stdout);
    } else {
        fputs("Stores (--store URL):\n", stdout);
        cli_drivers_help(stdout, CLI_STORES, 0);
        fputs("\nDestinations (relay --to URL; settings as URL query parameters or --to-opt):\n",
              stdout);
        cli_drivers_help(stdout, CLI_DESTINATIONS, 0);
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        return cli_failure("help", "cannot write to standard output");
    return CLI_EXIT_OK;
}

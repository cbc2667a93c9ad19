/*
 * test_lease.c - one relay per SQLite outbox, enforced by the lease, with
 * real `outbox relay` processes.
 *
 *   - a second relay exits 1 naming the live holder; after the holder is
 *     SIGKILLed a new relay takes over at once (dead pid, same host) and
 *     drains; SIGTERM makes a relay exit 0 and release the lease, so the
 *     next relay starts at once;
 *   - a relay with --wait-lease stands by while the holder runs (publishes
 *     nothing) and takes over when the holder is killed;
 *   - a holder that is alive but frozen (SIGSTOP) loses its lease after the
 *     TTL to a standby; thawed, it finds the lease lost and exits 1;
 *   - two relays with the same --name, started together with --wait-lease
 *     while messages keep coming: one publishes, the other stands by, and
 *     nothing is published twice (a name is not an identity).
 *
 * Each relay writes to its own file, so the test sees who published what;
 * the files, concatenated in the order the relays held the lease, must
 * contain every message, in per-aggregate order.
 */
#include "support/chaos.h"

#include <signal.h>
#include <sys/stat.h>

typedef struct relay_proc {
    char store[700], to[700];
    const char *argv[20];
    char out[CH_PATH], err[CH_PATH];
    pid_t pid;
} relay_proc;

/* Starts `outbox relay --store sqlite:db --to file:out` with extra args. */
static void relay_start(relay_proc *r, const char *db, const char *tag, const char *const *extra)
{
    char name[64];
    int i = 0;
    snprintf(name, sizeof name, "%s.jsonl", tag);
    ch_path(r->out, name);
    snprintf(name, sizeof name, "%s.err", tag);
    ch_path(r->err, name);
    snprintf(r->store, sizeof r->store, "sqlite:%s", db);
    snprintf(r->to, sizeof r->to, "file:%s", r->out);
    r->argv[i++] = test_outbox_bin();
    r->argv[i++] = "relay";
    r->argv[i++] = "--store";
    r->argv[i++] = r->store;
    r->argv[i++] = "--to";
    r->argv[i++] = r->to;
    for (int j = 0; extra && extra[j] && i < 19; j++)
        r->argv[i++] = extra[j];
    r->argv[i] = NULL;
    r->pid = ch_spawn(r->argv, NULL, NULL, r->err);
}

static int64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

static void check_stream(const char *label, const char *const *files, const ch_producer *p)
{
    char all[CH_PATH];
    ch_path(all, "all.jsonl");
    ch_report r;
    ch_concat(all, files);
    ch_check_file(all, p, &r);
    ch_report_print(label, &r);
    ASSERT_EQ(r.expected, p->committed);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.foreign, 0);
    ASSERT_EQ(r.torn, 0);
    ASSERT_EQ(r.violations, 0);
}

static ch_producer producer(const char *db)
{
    ch_producer p;
    memset(&p, 0, sizeof p);
    p.db_path = db;
    p.aggregates = 50;
    p.max_txn = 20;
    p.seed = 42;
    return p;
}

TEST(second_relay_refused_then_takeover)
{
    char db[CH_PATH];
    ch_path(db, "takeover.db");
    ch_init_store(db);
    ch_producer p = producer(db);
    ch_produce(&p, 500);

    const char *ttl[] = {"--lease-ttl", "30s", NULL};
    const char *ttl_once[] = {"--lease-ttl", "30s", "--once", NULL};
    relay_proc a, b, c, d;
    relay_start(&a, db, "take-a", ttl);
    ch_wait_drained(db, a.pid, 20000, a.err);

    /* A second relay is refused while the first lives, and says who holds. */
    relay_start(&b, db, "take-b", ttl_once);
    int code = ch_wait_or_die(b.pid, 10000, "second relay");
    char *msg = test_read_file(b.err, NULL);
    fprintf(stderr, "second relay: exit %d: %s", code, msg ? msg : "(no stderr)\n");
    ASSERT_EQ(code, 1);
    char pid_text[32];
    snprintf(pid_text, sizeof pid_text, "%d", (int)a.pid);
    ASSERT_CONTAINS(msg, pid_text);
    free(msg);
    ASSERT_EQ(file_size(b.out), 0);
    ASSERT(ch_alive(a.pid));

    /* The holder dies: a new relay takes over at once (TTL is 30 s). */
    ASSERT_EQ(ch_kill9(a.pid), 137);
    ch_produce(&p, 500);
    int64_t t0 = ch_now_ms();
    relay_start(&c, db, "take-c", ttl);
    ch_wait_drained(db, c.pid, 10000, c.err);
    fprintf(stderr, "takeover after SIGKILL drained in %lld ms\n", (long long)(ch_now_ms() - t0));
    ASSERT(ch_alive(c.pid));

    /* SIGTERM: exit 0 and the lease is released. */
    kill(c.pid, SIGTERM);
    code = ch_wait_or_die(c.pid, 10000, "relay after SIGTERM");
    if (code != 0) ch_dump("relay stderr", c.err);
    ASSERT_EQ(code, 0);
    ch_produce(&p, 200);
    t0 = ch_now_ms();
    relay_start(&d, db, "take-d", ttl_once);
    code = ch_wait_or_die(d.pid, 10000, "relay --once after a released lease");
    if (code != 0) ch_dump("relay stderr", d.err);
    ASSERT_EQ(code, 0);
    fprintf(stderr, "relay after SIGTERM'd holder: done in %lld ms\n",
            (long long)(ch_now_ms() - t0));
    ASSERT_EQ(ch_outbox_count(db, "pending"), 0);

    const char *files[] = {a.out, c.out, d.out, NULL};
    check_stream("takeover", files, &p);
    ch_producer_free(&p);
}

TEST(wait_lease_stands_by_then_takes_over)
{
    char db[CH_PATH];
    ch_path(db, "standby.db");
    ch_init_store(db);
    ch_producer p = producer(db);
    ch_produce(&p, 300);

    const char *ttl[] = {"--lease-ttl", "30s", NULL};
    const char *wait[] = {"--lease-ttl", "30s", "--wait-lease", NULL};
    relay_proc e, f;
    relay_start(&e, db, "standby-e", ttl);
    ch_wait_drained(db, e.pid, 20000, e.err);
    relay_start(&f, db, "standby-f", wait);
    ch_sleep_ms(500);
    ASSERT(ch_alive(f.pid));

    /* While e lives, e publishes and f publishes nothing. */
    ch_produce(&p, 300);
    ch_wait_drained(db, e.pid, 20000, e.err);
    ASSERT(ch_alive(f.pid));
    ASSERT_EQ(file_size(f.out), 0);

    ASSERT_EQ(ch_kill9(e.pid), 137);
    ch_produce(&p, 300);
    int64_t t0 = ch_now_ms();
    ch_wait_drained(db, f.pid, 15000, f.err);
    fprintf(stderr, "standby took over and drained in %lld ms\n", (long long)(ch_now_ms() - t0));
    ASSERT(file_size(f.out) > 0);

    kill(f.pid, SIGTERM);
    int code = ch_wait_or_die(f.pid, 10000, "standby relay after SIGTERM");
    if (code != 0) ch_dump("relay stderr", f.err);
    ASSERT_EQ(code, 0);

    const char *files[] = {e.out, f.out, NULL};
    check_stream("standby", files, &p);
    ch_producer_free(&p);
}

TEST(frozen_holder_loses_lease_after_ttl)
{
    char db[CH_PATH];
    ch_path(db, "frozen.db");
    ch_init_store(db);
    ch_producer p = producer(db);
    ch_produce(&p, 200);

    const char *ttl[] = {"--lease-ttl", "1s", NULL};
    const char *wait[] = {"--lease-ttl", "1s", "--wait-lease", NULL};
    relay_proc g, h;
    relay_start(&g, db, "frozen-g", ttl);
    ch_wait_drained(db, g.pid, 20000, g.err);

    /* g is alive but frozen: its pid exists, so only the TTL frees the lease.
     * It must not be frozen inside one of its short write transactions (the
     * lease renewal): a frozen SQLite writer blocks every other writer of the
     * file, whatever the lease says.  So freeze, check that the write lock is
     * free, and thaw and try again when it is not. */
    for (int tries = 0;; tries++) {
        sqlite3 *probe = ch_db_open(db);
        int rc;
        kill(g.pid, SIGSTOP);
        ch_sleep_ms(5);
        sqlite3_busy_timeout(probe, 200);
        rc = sqlite3_exec(probe, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc == SQLITE_OK) sqlite3_exec(probe, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(probe);
        if (rc == SQLITE_OK) break;
        if (tries == 50) TEST_FAIL_("could not freeze the relay outside a write transaction");
        kill(g.pid, SIGCONT);
        ch_sleep_ms(37);
    }
    relay_start(&h, db, "frozen-h", wait);
    ch_produce(&p, 200);
    int64_t t0 = ch_now_ms();
    ch_wait_drained(db, h.pid, 20000, h.err);
    int64_t took = ch_now_ms() - t0;
    fprintf(stderr, "standby took over a frozen holder's lease in %lld ms\n", (long long)took);

    /* Thawed, g must notice that its lease is gone and stop (exit 1). */
    kill(g.pid, SIGCONT);
    int code = ch_wait(g.pid, 10000);
    if (code == -1) {
        ch_kill9(g.pid);
        ch_kill9(h.pid);
        ch_dump("thawed relay stderr", g.err);
        TEST_FAIL_("the thawed relay kept running after its lease was taken over");
    }
    if (code != 1) ch_dump("thawed relay stderr", g.err);
    ASSERT_EQ(code, 1);

    ch_produce(&p, 100);
    ch_wait_drained(db, h.pid, 10000, h.err);
    kill(h.pid, SIGTERM);
    code = ch_wait_or_die(h.pid, 10000, "relay after SIGTERM");
    ASSERT_EQ(code, 0);

    const char *files[] = {g.out, h.out, NULL};
    check_stream("frozen", files, &p);
    ch_producer_free(&p);
}

TEST(same_name_relays_never_share)
{
    char db[CH_PATH];
    ch_path(db, "samename.db");
    ch_init_store(db);
    ch_producer p = producer(db);
    int total = test_scaled(10000, 2000);
    ch_produce(&p, total / 2);

    /* What every service file does: a fixed name, and a standby. */
    const char *same[] = {"--name", "same", "--lease-ttl", "30s", "--wait-lease", NULL};
    relay_proc x, y;
    relay_start(&x, db, "same-x", same);
    relay_start(&y, db, "same-y", same);
    p.total = p.committed + total - total / 2;
    ch_producer_start(&p);
    ch_producer_join(&p);
    ch_wait_drained(db, x.pid, 60000, x.err);
    ASSERT(ch_alive(y.pid));

    /* Exactly one of them published. */
    int64_t xs = file_size(x.out), ys = file_size(y.out);
    fprintf(stderr, "same-name relays: %lld and %lld bytes published\n", (long long)xs,
            (long long)ys);
    ASSERT((xs == 0) != (ys == 0));

    kill(x.pid, SIGTERM);
    kill(y.pid, SIGTERM);
    ASSERT_EQ(ch_wait_or_die(x.pid, 10000, "relay x after SIGTERM"), 0);
    ASSERT_EQ(ch_wait_or_die(y.pid, 10000, "relay y after SIGTERM"), 0);

    const char *files[] = {x.out, y.out, NULL};
    char all[CH_PATH];
    ch_report r;
    ch_path(all, "samename-all.jsonl");
    ch_concat(all, files);
    ch_check_file(all, &p, &r);
    ch_report_print("same name", &r);
    ASSERT_EQ(r.expected, total);
    ASSERT_EQ(r.lost, 0);
    ASSERT_EQ(r.duplicates, 0);
    ASSERT_EQ(r.violations, 0);
    ASSERT_EQ(r.torn, 0);
    ch_producer_free(&p);
}

int main(void)
{
    RUN(second_relay_refused_then_takeover);
    RUN(wait_lease_stands_by_then_takes_over);
    RUN(frozen_holder_loses_lease_after_ttl);
    RUN(same_name_relays_never_share);
    return 0;
}

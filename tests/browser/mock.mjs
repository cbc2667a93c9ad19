// mock.mjs - a stand-in for the relay's HTTP server, for working on the
// console page without a relay built with --listen: serves
// src/monitor/console.html with the relay's CSP and answers the console's
// JSON API from an outbox store through the `outbox` command (status, list,
// retry, drop).  Relay-only data (history, relays) is canned.
//
//   node mock.mjs --store sqlite:PATH --port N [--token-file F] [--bin outbox]
//
// Prints "listening PORT" when ready.  Not used by the ctest run (which
// drives the real relay); see console.test.mjs.
import { createServer } from 'node:http';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: { store: { type: 'string' }, port: { type: 'string', default: '0' },
             'token-file': { type: 'string' }, bin: { type: 'string', default: 'outbox' } },
});
const page = new URL('../../src/monitor/console.html', import.meta.url);
const token = opt['token-file'] ? readFileSync(opt['token-file'], 'utf8').trim() : null;
const CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' " +
  "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";
const started = Date.now() / 1000;

const cli = (...args) => JSON.parse(execFileSync(opt.bin, [...args, '--store', opt.store, '--json'],
                                                 { encoding: 'utf8' }));

function summary() {
  const s = cli('status');
  const now = Date.now() / 1000;
  return {
    version: 'mock', now, admin: token !== null, refreshed_at: now,
    store: { url: s.store, scheme: 'sqlite', schema_version: s.schema_version,
             pending: s.pending, pending_due: s.pending_due, retrying: s.retrying,
             blocked: s.blocked, aggregates_blocked: s.aggregates_blocked, sent: s.sent,
             failed: s.failed,
             oldest_pending_age_seconds: s.oldest_pending_age_ms === null ? null
               : s.oldest_pending_age_ms / 1000, relay: s.relay },
    relays: [{ name: 'mock', store: s.store, destination: 'discard:', state: 'running',
               lease_held: true, partitions_owned: 1, destination_up: true,
               destination_backoff_seconds: 0, last_error: null, published: 0, retried: 0,
               failed: s.failed, publish_errors: 0, quarantined: 0, publish_rate: 0,
               commit_to_publish_p50_seconds: null, commit_to_publish_p99_seconds: null }],
  };
}

function history() {
  const now = Date.now() / 1000, points = [];
  for (let t = Math.max(started, now - 900); t <= now; t += 10)
    points.push({ t, pending: 3 + Math.round(3 * Math.sin(t / 60)), oldest_pending_age_seconds: 2,
                  published_total: Math.round(t - started), publish_rate: 1 + Math.sin(t / 90),
                  commit_to_publish_p50_seconds: 0.02, commit_to_publish_p99_seconds: 0.15 });
  return { interval_seconds: 10, points };
}

function send(res, code, body, type = 'application/json') {
  res.writeHead(code, { 'Content-Type': type, 'Cache-Control': 'no-store',
                        'Content-Security-Policy': CSP, 'X-Content-Type-Options': 'nosniff' });
  res.end(type === 'application/json' ? JSON.stringify(body) : body);
}

createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const limit = Number(url.searchParams.get('limit') || 100);
  try {
    if (req.method === 'GET' && url.pathname === '/')
      return send(res, 200, readFileSync(page), 'text/html; charset=utf-8');
    if (req.method === 'GET' && url.pathname === '/api/summary') return send(res, 200, summary());
    if (req.method === 'GET' && url.pathname === '/api/history') return send(res, 200, history());
    if (req.method === 'GET' && url.pathname === '/api/failed') {
      const all = cli('list', '--status', 'failed', '--limit', '100000');
      return send(res, 200, { total: all.length, messages: all.slice(0, limit).map((m) => ({
        id: m.id, type: m.type, aggregate_type: m.aggregate_type, aggregate_id: m.aggregate_id,
        attempts: m.attempts, last_error: m.last_error, created_at: m.occurred_at })) });
    }
    if (req.method === 'GET' && url.pathname === '/api/blocked') {
      const failed = cli('list', '--status', 'failed', '--limit', '100000');
      const pending = cli('list', '--status', 'pending', '--limit', '100000');
      const aggs = failed.map((f) => ({ aggregate_type: f.aggregate_type, aggregate_id: f.aggregate_id,
        failed_id: f.id, held: pending.filter((p) => p.aggregate_id === f.aggregate_id).length }))
        .filter((a) => a.held > 0);
      return send(res, 200, { total: aggs.length, aggregates: aggs.slice(0, limit) });
    }
    const m = url.pathname.match(/^\/api\/messages\/([^/]+)\/(retry|drop)$/);
    if (m && req.method === 'POST') {
      if (token === null) return send(res, 403, { error: 'read-only: no --admin-token-file' });
      if (req.headers.authorization !== 'Bearer ' + token) return send(res, 401, { error: 'unauthorized' });
      const id = decodeURIComponent(m[1]);
      let msg;
      try { msg = cli('show', id); } catch { return send(res, 404, { error: 'no such message' }); }
      if (msg.status !== 'failed') return send(res, 409, { error: 'not failed' });
      execFileSync(opt.bin, [m[2], '--store', opt.store, id]);
      return send(res, 200, { ok: true, count: 1 });
    }
    send(res, 404, { error: 'not found' });
  } catch (e) {
    send(res, 500, { error: String(e.message) });
  }
}).listen(Number(opt.port), '127.0.0.1', function () {
  console.log('listening ' + this.address().port);
});

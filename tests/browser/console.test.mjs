// console.test.mjs - the relay's web console in a real browser: headless
// Chromium (the system's, /usr/bin/chromium; never a downloaded one) driven
// through the DevTools protocol by playwright-core.  Run by
// tests/test_console_browser.sh, which prepares the store and the relays and
// passes everything in the environment:
//
//   CONSOLE_URL   the relay's base URL (http://127.0.0.1:PORT)
//   MODE          admin: the relay has --admin-token-file; readonly: it has none
//   ADMIN_TOKEN   the token (admin mode)
//   OUTBOX_BIN, STORE   to compare with `outbox status/show --json`
//   XSS_ID        a Failed message whose type is <script>alert(1)</script>
//   DROP_ID       another Failed message (admin mode: dropped through the page)
//   SCREENSHOT    where to save a screenshot (optional)
//   CHROMIUM      the browser (default /usr/bin/chromium)
//
// Checks: the page loads with no console error and no page error; the counts
// shown equal `outbox status --json`; stored text (a type that is a script
// tag, an error holding an img tag) shows as text, with no dialog and no
// element made from it; Retry without the token is refused (the page says
// so, the message stays Failed), with it the message is requeued and then
// published; Drop asks for a second click, then drops; a relay without a
// token shows a read-only console whose buttons are off and whose API
// refuses with 403.  Exits 0 when all pass, 1 otherwise.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = process.env;
const base = env.CONSOLE_URL;
const mode = env.MODE || 'admin';
const XSS = '<script>alert(1)</script>';
let failures = 0, passes = 0;

function check(what, ok, detail) {
  if (ok) { passes++; return; }
  failures++;
  console.log('FAIL: ' + what + (detail !== undefined ? ': ' + JSON.stringify(detail) : ''));
}

const cli = (...args) => JSON.parse(execFileSync(env.OUTBOX_BIN,
  [...args, '--store', env.STORE, '--json'], { encoding: 'utf8' }));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last === true) return true; } catch (e) { last = String(e); }
    await sleep(200);
  }
  check(what, false, last);
  return false;
}

// The page's counts, by data-count key.
const shownCounts = (page) => page.$$eval('[data-count]', (dds) =>
  Object.fromEntries(dds.map((d) => [d.getAttribute('data-count'), d.textContent])));

const KEYS = ['pending', 'pending_due', 'retrying', 'blocked', 'aggregates_blocked', 'failed', 'sent'];

async function countsMatch(page) {
  const shown = await shownCounts(page), status = cli('status');
  const diff = KEYS.filter((k) => shown[k] !== String(status[k]));
  return diff.length === 0 ? true : { shown, status };
}

const profile = mkdtempSync(join(tmpdir(), 'outbox-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
const consoleErrors = [], dialogs = [];
let expectRefusal = null; // the status (401/403) the next refused request may log
try {
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    // Chromium logs every non-2xx response as a console error; the refusals
    // this test provokes on purpose are expected, nothing else is.
    const url = m.location().url || '';
    if (expectRefusal && m.text().includes('status of ' + expectRefusal) &&
        /\/api\/messages\/[^/]+\/(retry|drop)$/.test(url))
      return;
    consoleErrors.push(m.text() + ' @ ' + url);
  });
  page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));
  page.on('dialog', (d) => { dialogs.push(d.type() + ': ' + d.message()); d.dismiss().catch(() => {}); });

  const resp = await page.goto(base + '/', { waitUntil: 'load' });
  check('GET / answers 200', resp && resp.status() === 200, resp && resp.status());
  check('the page has the CSP', (resp.headers()['content-security-policy'] || '').includes("default-src 'self'"),
        resp.headers()['content-security-policy']);
  await page.waitForSelector('body[data-loaded="1"]', { timeout: 15000 });
  await until('the counts shown equal outbox status --json', () => countsMatch(page));

  // Stored text stays text.
  const xssRow = `tr[data-id="${env.XSS_ID}"]`;
  await until('the XSS message is listed', async () => (await page.$(xssRow)) !== null);
  const cells = await page.$$eval(`${xssRow} td`, (tds) => tds.map((t) => t.textContent));
  check('the script-tag type shows as text', cells[1] === XSS, cells);
  check('the img-tag error shows as text', cells[4].includes('<img src=x onerror=alert(2)>'), cells);
  const dom = await page.evaluate(() => ({
    scripts: document.scripts.length, imgs: document.images.length,
    onerror: document.querySelectorAll('[onerror]').length, pwned: window.__pwned || null }));
  check('no element made from stored text', dom.scripts === 1 && dom.imgs === 0 && dom.onerror === 0 &&
        dom.pwned === null, dom);

  if (mode === 'readonly') {
    const note = await page.textContent('#admin-note');
    check('the console says it is read-only', /read-only/.test(note), note);
    const states = await page.$$eval('button[data-action]', (bs) => bs.map((b) => b.disabled));
    check('Retry and Drop are off', states.length > 0 && states.every(Boolean), states);
    check('the token field is off', await page.isDisabled('#token'));
    expectRefusal = 403;
    const status = await page.evaluate((id) => fetch('/api/messages/' + id + '/retry',
      { method: 'POST', headers: { Authorization: 'Bearer guess' } }).then((r) => r.status), env.XSS_ID);
    check('the API refuses a retry with 403', status === 403, status);
    check('the message stays Failed', cli('show', env.XSS_ID).status === 'failed');
  } else {
    if (env.SCREENSHOT) {
      await page.waitForTimeout(500);
      await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
    }
    // Without the token: refused, shown, nothing changes.
    expectRefusal = 401;
    await page.click(`${xssRow} button[data-action="retry"]`);
    await until('the refusal is shown', async () =>
      (await page.getAttribute('#status-line', 'class')) === 'error' &&
      /refused/.test(await page.textContent('#status-line')) ? true : await page.textContent('#status-line'));
    check('the message stays Failed after a refused retry', cli('show', env.XSS_ID).status === 'failed');

    // A wrong token: refused too.
    await page.fill('#token', env.ADMIN_TOKEN + 'x');
    await page.click(`${xssRow} button[data-action="retry"]`);
    await until('a wrong token is refused', async () =>
      /refused/.test(await page.textContent('#status-line')) &&
      /Retry of/.test(await page.textContent('#status-line')) ? true : await page.textContent('#status-line'));
    check('the message stays Failed after a wrong token', cli('show', env.XSS_ID).status === 'failed');
    expectRefusal = null;

    // With the token: requeued, then published by the relay.
    await page.fill('#token', env.ADMIN_TOKEN);
    await page.click(`${xssRow} button[data-action="retry"]`);
    await until('the retry is confirmed', async () =>
      (await page.getAttribute('#status-line', 'class')) === 'ok' ? true : await page.textContent('#status-line'));
    await until('the retried message is published', () => {
      const st = cli('show', env.XSS_ID).status;
      return st === 'sent' ? true : st;
    });
    await until('the page no longer lists it as Failed', async () => (await page.$(xssRow)) === null);

    // Drop: a first click only asks; the second drops.
    if (env.DROP_ID) {
      const dropBtn = `tr[data-id="${env.DROP_ID}"] button[data-action="drop"]`;
      await page.click(dropBtn);
      check('Drop asks for confirmation', /Really drop/.test(await page.textContent(dropBtn)));
      check('nothing dropped yet', cli('show', env.DROP_ID).status === 'failed');
      await page.click(dropBtn);
      await until('the drop is confirmed', async () =>
        (await page.getAttribute('#status-line', 'class')) === 'ok' ? true : await page.textContent('#status-line'));
      let gone = false;
      try { cli('show', env.DROP_ID); } catch { gone = true; }
      check('the dropped message is gone', gone);
    }
    await until('the counts shown equal outbox status --json afterwards', () => countsMatch(page));
  }
  check('no dialog opened', dialogs.length === 0, dialogs);
  check('no console error or page error', consoleErrors.length === 0, consoleErrors);
} catch (e) {
  check('the browser run', false, String(e && e.stack || e));
} finally {
  await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(`${mode}: ${passes} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);

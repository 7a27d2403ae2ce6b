// Drives /admin in headless Chromium for tests/api/admin.rs: a failed upload retried once the
// server can take it, then a whole folder of photos through the folder picker.
//
// Talks with the test on stdin and stdout, one JSON line each way:
// 1. With the database cut off (the test did it), one photo is uploaded: its row must fail
//    with the server's reason and a Retry button. Prints {"step": "failed", ...} and waits.
// 2. The test restores the database and writes a line. The Retry button must get it uploaded.
// 3. The folder FOLDER is chosen with "Choose a folder" and uploaded: every file must be done,
//    with never more than 3 uploads in flight. Prints {"step": "done", ...}.
//
// Environment: BASE, KEY, CHROMIUM as for admin.test.mjs; ONE (a photo's path); FOLDER (a
// folder of photos).
import readline from 'node:readline';
import { check, launch, waitUntil as waitUntilIn } from './common.mjs';

const { BASE, KEY, ONE, FOLDER } = process.env;
const WAIT = { timeout: 60000 };
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const browser = await launch();

try {
  const page = await browser.newPage();
  const waitUntil = (what, fn, ...args) => waitUntilIn(page, WAIT.timeout, what, fn, ...args);
  const problems = [];
  page.on('dialog', async (d) => {
    problems.push(`a ${d.type()} dialog`);
    await d.dismiss();
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Requests in flight, counted in the page: from send() until the answer is complete (before
  // the page's own handlers run, which may send the next).
  await page.evaluateOnNewDocument(() => {
    window.uploadsInFlight = { now: 0, most: 0 };
    const send = XMLHttpRequest.prototype.send;
    XMLHttpRequest.prototype.send = function counted(body) {
      const count = window.uploadsInFlight;
      count.now += 1;
      count.most = Math.max(count.most, count.now);
      this.addEventListener('readystatechange', () => {
        if (this.readyState === XMLHttpRequest.DONE) count.now -= 1;
      });
      return send.call(this, body);
    };
  });

  await page.goto(`${BASE}/admin`, { waitUntil: 'load' });
  await page.waitForSelector('input[name="api-key"]', { visible: true, ...WAIT });
  await page.type('input[name="api-key"]', KEY);
  await page.click('[data-action="sign-in"]');
  await page.waitForSelector('#admin-view:not([hidden])', WAIT);

  // 1. The database is away: the upload fails, with the reason, and can be retried.
  const name = ONE.split('/').pop();
  const row = `[data-upload="${name}"]`;
  await (await page.$('input[type="file"]')).uploadFile(ONE);
  await waitUntil('the photo to be ready', (s) => document.querySelector(s)?.dataset.state === 'queued', row);
  await page.click('[data-action="upload"]');
  await waitUntil('the upload to fail', (s) => document.querySelector(s)?.dataset.state === 'failed', row);
  const reason = await page.$eval(row, (r) => r.querySelector('.status').firstChild.textContent);
  await waitUntil('the health box to show the database down', () => document.querySelector('[data-health]').dataset.health === 'degraded'
    || /connection failed/.test(document.querySelector('[data-health]').textContent));
  console.log(JSON.stringify({ step: 'failed', reason }));
  await lines.next(); // the database is back

  await page.click(`${row} [data-action="retry"]`);
  await waitUntil('the retried upload to be done', (s) => document.querySelector(s)?.dataset.state === 'done', row);

  // 3. A whole folder, through the folder picker.
  const folder = await page.$('input[type="file"][webkitdirectory]');
  await folder.uploadFile(FOLDER);
  await waitUntil('the folder\'s files listed', () => document.querySelectorAll('[data-upload][data-state="queued"]').length > 0
    && [...document.querySelectorAll('[data-upload]')].every((r) => r.dataset.state !== 'queued' || /press Upload/.test(r.textContent)));
  const count = await page.$$eval('[data-upload]', (rows) => rows.length - 1);
  await page.click('[data-action="upload"]');
  await waitUntil('every file of the folder to be done', () => [...document.querySelectorAll('[data-upload]')]
    .every((r) => r.dataset.state === 'done'));
  const overall = await page.$eval('#overall-text', (t) => t.textContent);
  await waitUntil('the folder in the grid', (n) => document.querySelectorAll('[data-photo-id]').length >= Math.min(n, 30), count + 1);
  const most = await page.evaluate(() => window.uploadsInFlight.most);
  check(problems.length === 0, problems.join('; '));
  console.log(JSON.stringify({ step: 'done', reason, count, most, overall }));
} catch (e) {
  console.error(`${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  process.stdin.destroy();
}

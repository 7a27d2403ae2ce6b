// Drives /admin in headless Chromium, as the photographer would, for tests/api/admin.rs, which
// starts the server, prepares the files and then checks the database and storage against what
// this prints: one JSON line on stdout (`{"ok": true, ...}`), or a failure on stderr and exit 1.
//
// Environment: BASE (the server, http://127.0.0.1:PORT), KEY (the admin key), FILES (a folder
// with the files named below), CHROMIUM (the browser), SCREENSHOT (optional: where to save a
// picture of the page with photos).
import { check, launch, waitUntil as waitUntilIn } from './common.mjs';

const { BASE, KEY, FILES, SCREENSHOT } = process.env;
const PHOTOS = ['harbour.jpg', 'forest.jpg', 'dunes.jpg'];
const XSS = '<img src=x onerror=alert(1)>.jpg';
const NOT_JPEG = ['notes.txt', 'fake.jpg']; // refused in the page: by name, by content
const WAIT = { timeout: 20000 };

const browser = await launch();

const problems = [];
try {
  const page = await browser.newPage();
  const waitUntil = (what, fn, ...args) => waitUntilIn(page, WAIT.timeout, what, fn, ...args);
  await page.setViewport({ width: 1200, height: 900 });
  page.on('dialog', async (d) => {
    problems.push(`a ${d.type()} dialog: ${d.message()}`);
    await d.dismiss();
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Any policy violation (an inline script, a request elsewhere) is recorded by the page.
  await page.evaluateOnNewDocument(() => {
    // Reading a file's first bytes takes 300 ms here, as on a slow disk or a large folder:
    // Upload is pressed while the page is still checking (below).
    const read = Blob.prototype.arrayBuffer;
    Blob.prototype.arrayBuffer = function slowly() {
      return new Promise((resolve) => { setTimeout(resolve, 300); }).then(() => read.call(this));
    };
    window.violations = [];
    document.addEventListener('securitypolicyviolation',
      (e) => window.violations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  const posts = [];
  page.on('request', (r) => {
    if (r.method() === 'POST') posts.push(new URL(r.url()).pathname);
    if (r.url().includes(KEY)) problems.push(`the key in a URL: ${r.url()}`);
    if (!r.url().startsWith(BASE) && !r.url().startsWith('data:')) {
      problems.push(`a request off the server: ${r.url()}`);
    }
  });

  const response = await page.goto(`${BASE}/admin`, { waitUntil: 'load' });
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && csp.includes("frame-ancestors 'none'"), `CSP: ${csp}`);
  check(response.headers()['x-content-type-options'] === 'nosniff', 'nosniff');
  await page.waitForSelector('input[name="api-key"]', { visible: true, ...WAIT });

  const signInMessage = () => page.$eval('#sign-in-message', (m) => m.textContent);
  const adminShown = () => page.$eval('#admin-view', (v) => !v.hidden);

  // A wrong key, twice: said plainly, nothing shown.
  for (let i = 0; i < 2; i += 1) {
    await page.type('input[name="api-key"]', `wrong-${i}`);
    await page.click('[data-action="sign-in"]');
    await waitUntil('the wrong key to be said wrong', () => /wrong/.test(document.querySelector('#sign-in-message').textContent));
    await page.$eval('input[name="api-key"]', (i) => { i.value = ''; });
  }
  check(!(await adminShown()), 'signed in with a wrong key');
  // The third is throttled (the test server allows 2 in a row): the wait is shown, and the
  // button comes back when it is over.
  await page.type('input[name="api-key"]', 'wrong-2');
  await page.click('[data-action="sign-in"]');
  await waitUntil("the throttle's wait to be shown", () => /Try again in \d+ s/.test(document.querySelector('#sign-in-message').textContent));
  const throttled = await signInMessage();
  check(await page.$eval('[data-action="sign-in"]', (b) => b.disabled), 'the button stays on while throttled');
  await waitUntil('the sign-in button to come back', () => !document.querySelector('[data-action="sign-in"]').disabled);

  // The right key, by keyboard: typed, then Enter.
  await page.$eval('input[name="api-key"]', (i) => { i.value = ''; });
  await page.focus('input[name="api-key"]');
  await page.keyboard.type(KEY);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#admin-view:not([hidden])', WAIT);
  await waitUntil('the database to show as connected', () => /Database: connected/.test(document.querySelector('[data-health]').textContent));
  const health = await page.$eval('[data-health]', (h) => h.textContent);
  const stored = await page.evaluate(() => ({ cookie: document.cookie, local: localStorage.length, url: location.href }));
  check(stored.cookie === '' && stored.local === 0 && !stored.url.includes(KEY), `the key kept outside the tab: ${JSON.stringify(stored)}`);

  // Still signed in after a reload (the tab's sessionStorage).
  await page.reload({ waitUntil: 'load' });
  await page.waitForSelector('#admin-view:not([hidden])', WAIT);

  // Upload: three photos, the file named like markup, and two files that are not JPEGs, with
  // Upload pressed at once, while the page is still reading the files' first bytes: the JPEGs
  // go when they have passed, the others never do.
  await page.type('input[name="category"]', 'Travel');
  const picker = await page.$('input[type="file"]');
  await picker.uploadFile(...[...PHOTOS, XSS, ...NOT_JPEG].map((n) => `${FILES}/${n}`));
  await page.click('[data-action="upload"]');
  const row = (name) => `[data-upload="${name.replace(/["\\]/g, '\\$&')}"]`;
  for (const name of NOT_JPEG) {
    await waitUntil('a non-JPEG to be refused in the page', (s) => document.querySelector(s)?.dataset.state === 'failed', row(name));
  }
  const refusedText = await Promise.all(NOT_JPEG.map((n) => page.$eval(row(n), (r) => r.textContent)));
  check(/only \.jpg\/\.jpeg/.test(refusedText[0]) && /not a JPEG/.test(refusedText[1]), `refusals: ${refusedText}`);
  for (const name of [...PHOTOS, XSS]) {
    await waitUntil('an upload to be done', (s) => document.querySelector(s)?.dataset.state === 'done', row(name));
  }
  check(posts.filter((p) => p === '/api/upload').length === 4, `uploads sent: ${posts}`);
  const overall = await page.$eval('#overall-text', (t) => t.textContent);
  const overallBar = await page.$eval('#overall-bar', (b) => b.value);
  check(/4 of 4 uploaded/.test(overall) && overallBar === 1, `overall: ${overall} ${overallBar}`);

  // The markup in the name is text: no element made of it, no dialog.
  const xss = await page.$eval(row(XSS), (r) => ({ text: r.querySelector('.name').textContent, imgs: r.querySelectorAll('img').length }));
  check(xss.text === XSS && xss.imgs === 0, `the name as markup: ${JSON.stringify(xss)}`);

  // The same photo again: a duplicate, said so.
  await picker.uploadFile(`${FILES}/${PHOTOS[0]}`);
  await page.click('[data-action="upload"]');
  await waitUntil('the second upload of a name to be a duplicate', (s) => document.querySelectorAll(s)[1]?.dataset.state === 'duplicate', row(PHOTOS[0]));

  // The grid shows the new photos at once (no cached listing), each with a thumbnail.
  await waitUntil('four photos in the grid', () => document.querySelectorAll('[data-photo-id]').length === 4);
  await waitUntil('every thumbnail to load', () => [...document.querySelectorAll('[data-photo-id] img')].every((i) => i.complete && i.naturalWidth > 0));
  if (SCREENSHOT) await page.screenshot({ path: SCREENSHOT, fullPage: true });

  // Change the first photo's category, by keyboard.
  const cards = await page.$$eval('[data-photo-id]', (cs) => cs.map((c) => c.dataset.photoId));
  const [edited, deleted] = cards;
  const inCard = (id, s) => `[data-photo-id="${id}"] ${s}`;
  await page.focus(inCard(edited, '[data-action="edit-category"]'));
  await page.keyboard.press('Enter');
  await page.waitForSelector(inCard(edited, 'input[name="category"]'), WAIT);
  await page.keyboard.down('Control');
  await page.keyboard.press('KeyA');
  await page.keyboard.up('Control');
  await page.keyboard.type('Street  Life');
  await page.keyboard.press('Enter');
  await waitUntil('the new category on the card', (s) => document.querySelector(s)?.textContent === 'street life', inCard(edited, '.category'));

  // Delete the second: asked in the page, then confirmed, by keyboard.
  await page.focus(inCard(deleted, '[data-action="delete"]'));
  await page.keyboard.press('Enter');
  await page.waitForSelector(inCard(deleted, '[data-action="confirm"]'), WAIT);
  check(await page.$eval(inCard(deleted, '[data-action="confirm"]'), (b) => b === document.activeElement), 'confirm focused');
  await page.keyboard.press('Enter');
  await waitUntil('the deleted card to go', (s) => !document.querySelector(s), `[data-photo-id="${deleted}"]`);

  // What the page shows now, after a fresh load.
  await page.reload({ waitUntil: 'load' });
  await waitUntil('three photos after a reload', () => document.querySelectorAll('[data-photo-id]').length === 3);
  const shown = await page.$$eval('[data-photo-id]', (cs) => cs.map((c) => ({
    id: Number(c.dataset.photoId),
    filename: c.querySelector('.name').textContent,
    category: c.querySelector('.category').textContent,
  })));

  // A phone-width screen: nothing wider than it.
  await page.setViewport({ width: 375, height: 812 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 375, `wider than a phone: ${overflow}px`);

  // Signing out forgets the key.
  await page.click('[data-action="sign-out"]');
  await page.waitForSelector('input[name="api-key"]', { visible: true, ...WAIT });
  const forgotten = await page.evaluate(() => sessionStorage.length);
  check(forgotten === 0, 'the key kept after signing out');

  const violations = await page.evaluate(() => window.violations);
  check(violations.length === 0, `policy violations: ${violations}`);
  check(problems.length === 0, problems.join('; '));
  console.log(JSON.stringify({
    ok: true, csp, health, throttled, shown, edited: Number(edited), deleted: Number(deleted),
  }));
} catch (e) {
  console.error(`${e.stack || e}${problems.length ? `\nalso: ${problems.join('; ')}` : ''}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}

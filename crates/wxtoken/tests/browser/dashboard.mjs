// The dashboard in a real browser: Debian's Chromium, headless, driven through the DevTools
// protocol by playwright-core (no browser download). Run by crates/wxtoken/tests/stories/dashboard.rs
// with NODE_PATH naming a node_modules holding playwright-core, and WXTOKEN_UI (the internal
// listener), WXTOKEN_ADMIN_KEY, WXTOKEN_READER_KEY (not an admin key), WXTOKEN_COMPONENT,
// WXTOKEN_APPIDS (comma-separated, active), WXTOKEN_LOST_APPID (needs re-authorization),
// WXTOKEN_ACTIVE_COUNT, CHROMIUM (the browser) and SCREENSHOTS (a folder for the pictures).
// Uses only loopback.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set');
  return v;
};
const UI = env('WXTOKEN_UI');
const ADMIN = env('WXTOKEN_ADMIN_KEY');
const READER = env('WXTOKEN_READER_KEY');
const COMPONENT = env('WXTOKEN_COMPONENT');
const APPIDS = env('WXTOKEN_APPIDS').split(',');
const LOST = env('WXTOKEN_LOST_APPID');
const ACTIVE = env('WXTOKEN_ACTIVE_COUNT');
const SHOTS = env('SCREENSHOTS');

function assert(cond, what) {
  if (!cond) throw new Error('assertion failed: ' + what);
}
const step = (name) => console.log('ok: ' + name);
const text = async (page, selector) => (await page.locator(selector).first().innerText()).trim();

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  // (playwright gives the browser a new, empty profile of its own)
});
try {
  const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const blocked = [];
  page.on('request', (r) => { if (!r.url().startsWith('http://127.0.0.1')) blocked.push(r.url()); });

  await page.goto(UI + '/ui/');
  assert(page.url().endsWith('/ui/login'), 'signed out: the sign-in page, got ' + page.url());
  await page.screenshot({ path: join(SHOTS, '1-sign-in.png') });

  // A key that is not an admin key is refused.
  await page.getByLabel('Admin API key').fill(READER);
  await page.getByRole('button', { name: 'Sign in' }).click();
  const refused = await text(page, '#error');
  assert(refused.includes('not an admin key'), 'a reader key is refused: ' + refused);
  step('a key that is not an admin key is refused');

  await page.getByLabel('Admin API key').fill(ADMIN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(UI + '/ui/');
  assert(!page.url().includes(ADMIN), 'the key never appears in a URL');
  assert((await text(page, '#count-active-' + COMPONENT)) === ACTIVE, 'the active count');
  assert((await text(page, '#count-needs_reauth-' + COMPONENT)) === '1', 'the needs_reauth count');
  await page.screenshot({ path: join(SHOTS, '2-overview.png'), fullPage: true });
  step('signed in; the overview counts are the server\'s');

  await page.getByRole('link', { name: 'Authorizers' }).click();
  const target = APPIDS[0];
  await page.getByLabel('Find by appid').fill(target.slice(0, 12));
  await page.getByRole('button', { name: 'Find' }).click();
  assert((await text(page, '#authorizers')).includes(target), 'the search finds ' + target);
  await page.screenshot({ path: join(SHOTS, '3-authorizers.png'), fullPage: true });
  step('search by appid prefix');

  await page.getByRole('link', { name: target }).click();
  const before = Number(await text(page, '#generation'));
  await page.screenshot({ path: join(SHOTS, '4-authorizer.png'), fullPage: true });
  await page.getByRole('button', { name: 'Refresh now' }).click();
  await page.waitForLoadState();
  const after = Number(await text(page, '#generation'));
  assert(after > before, 'refresh now grows the generation: ' + before + ' -> ' + after);
  step('details; refresh now: generation ' + before + ' -> ' + after);

  // A forged CSRF token is refused, and changes nothing.
  await page.evaluate(() => { document.querySelector('#refresh-form input[name=csrf]').value = 'forged'; });
  const forged = await Promise.all([
    page.waitForResponse((r) => r.url().includes('/refresh')),
    page.getByRole('button', { name: 'Refresh now' }).click(),
  ]);
  assert(forged[0].status() === 403, 'a forged CSRF token gets 403, got ' + forged[0].status());
  await page.goto(UI + '/ui/authorizers/' + target);
  assert(Number(await text(page, '#generation')) === after, 'nothing refreshed by the forged form');
  step('a forged CSRF token is refused');

  await page.goto(UI + '/ui/authorizers/' + LOST);
  assert((await text(page, '#status')).startsWith('needs_reauth'), 'needs_reauth shown');
  const link = await text(page, '#rebind');
  assert(link.endsWith('/authorize?biz_appid=' + LOST), 'the re-bind link: ' + link);
  await page.screenshot({ path: join(SHOTS, '5-needs-reauth.png'), fullPage: true });
  await page.locator('#rebind').click();
  await page.waitForLoadState();
  assert(page.url().includes('/authorize'), 'the authorization flow: ' + page.url());
  await page.screenshot({ path: join(SHOTS, '6-rebind-target.png') });
  step('the re-bind link leads to the authorization page');

  await page.goto(UI + '/ui/');
  await page.getByRole('link', { name: 'Clients' }).click();
  await page.getByLabel('Name (e.g. order-service)').fill('billing-service');
  await page.getByLabel('Appids it may read (space or comma separated; * for all)').fill(APPIDS.join(' '));
  await page.getByRole('button', { name: 'Add' }).click();
  assert((await text(page, '#new-key')).startsWith('wxt_'), 'the new key is shown once');
  await page.goto(UI + '/ui/clients');
  assert((await text(page, '#clients')).includes('billing-service'), 'the new client is listed');
  await page.screenshot({ path: join(SHOTS, '7-clients.png'), fullPage: true });
  step('a client added from the clients page');

  await page.goto(UI + '/ui/');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(UI + '/ui/login');
  await page.goto(UI + '/ui/');
  assert(page.url().endsWith('/ui/login'), 'signed out for good');
  step('signed out');

  const foreign = blocked.filter((u) => !u.startsWith('http://localhost'));
  // The re-bind flow may go on to the simulator's consent page, which is on loopback too.
  assert(foreign.length === 0, 'no request left loopback: ' + foreign.join(', '));
  console.log('all steps passed');
} finally {
  await browser.close();
}

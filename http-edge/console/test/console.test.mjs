// The operator console's browser test: a headless Chromium drives GET /console of a running
// seckill (started with --auth header) through a whole sale, while this process plays the
// shoppers with fetch():
//
//   sign in (a wrong key first: refused, the sign-in stays) -> create a promotion with the
//   form (in-page validation first, then the API's own refusal of a clashing body) -> its
//   row and countdown -> its live view -> Start -> 300 shoppers buy, some cancel, some pay,
//   one item sells out -> the live view's figures and charts moved -> Stop -> the report
//   matches what the load did (the report trails SQL by seconds: polled up to 15 s) -> an
//   order looked up by id (and an unknown one) -> sign out.
//
// Any console error, uncaught page error, failed request (but the live-stream fetches the
// page aborts itself) or HTTP error answer the step did not expect fails the test.
// Screenshots of the live view, the report and the order go to SCREENSHOT_DIR.
//
// Environment: SECKILL_URL (http://127.0.0.1:PORT), SECKILL_ADMIN_KEY, SCREENSHOT_DIR
// (default ./screenshots), CHROMIUM (default /usr/bin/chromium). Exit code 0 only when every
// step held.

import { mkdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE_URL = requiredEnv('SECKILL_URL').replace(/\/+$/, '');
const ADMIN_KEY = requiredEnv('SECKILL_ADMIN_KEY');
const SCREENSHOT_DIR = path.resolve(process.env.SCREENSHOT_DIR || 'screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const KEY_STORAGE = 'seckill.console.adminKey';

// Bounds on every wait, so a broken page fails with a message instead of hanging.
const ACTION_TIMEOUT_MS = 10_000;
const LIVE_EVENT_TIMEOUT_MS = 15_000;
const REPORT_TIMEOUT_MS = 15_000;
const WHOLE_TEST_TIMEOUT_MS = 240_000;
const HTTP_TIMEOUT_MS = 15_000;

// The sale: two items of 200; 300 shoppers each buy item A (so it sells out and `sold_out`
// refusals appear), the first 150 also buy item B. In each batch two A orders are cancelled
// and one A and one B order paid at once, well inside the 10 s payment timeout.
const STOCK = 200;
const PRICE_A_CENTS = 1999;
const PRICE_B_CENTS = 500;
const PAYMENT_TIMEOUT_S = 10;
const SHOPPERS = 300;
const B_BUYERS = 150;
const BATCH = 25;
const BATCH_PAUSE_MS = 500;

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`console test: set ${name}`);
    process.exit(2);
  }
  return value;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- what the page must not do ------------------------------------------------------------

const problems = [];
// HTTP statuses the current step provokes on purpose (a wrong key, a clashing create).
let expectedStatuses = new Set();

function isExpectedConsoleError(text) {
  // Chromium logs each HTTP error answer as "Failed to load resource: ... status of 409 (...)".
  const match = /status of (\d{3})/.exec(text);
  return match !== null && expectedStatuses.has(Number(match[1]));
}

function watch(page) {
  page.on('console', (message) => {
    if (message.type() !== 'error' || isExpectedConsoleError(message.text())) return;
    const where = message.location();
    problems.push(`console error: ${message.text()} (${where.url || '?'}:${where.lineNumber ?? '?'})`);
  });
  page.on('pageerror', (error) => problems.push(`uncaught error in the page: ${error.stack || error.message}`));
  page.on('requestfailed', (request) => {
    const failure = request.failure()?.errorText ?? 'unknown';
    // The page aborts the live stream itself when the view closes (or a stream stalls).
    if (/\/live$/.test(new URL(request.url()).pathname) && /ERR_ABORTED/.test(failure)) return;
    problems.push(`request failed: ${request.method()} ${request.url()}: ${failure}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400 && !expectedStatuses.has(response.status())) {
      problems.push(`HTTP ${response.status()} for ${response.request().method()} ${response.url()}`);
    }
  });
}

/** Runs `fn` with answers of `statuses` allowed (and the console lines Chromium logs for them). */
async function expecting(statuses, fn) {
  expectedStatuses = new Set(statuses);
  try {
    return await fn();
  } finally {
    // Console and response events arrive a moment after the page handled the answer.
    await sleep(300);
    expectedStatuses = new Set();
  }
}

// ---- steps and waits ----------------------------------------------------------------------

class StepFailed extends Error {}

const tally = { passed: 0, failed: 0 };

async function step(name, fn) {
  const startedMs = Date.now();
  process.stdout.write(`- ${name} ... `);
  try {
    await fn();
  } catch (error) {
    console.log('FAILED');
    tally.failed += 1;
    throw new StepFailed(`${name}: ${error.message}`);
  }
  const found = problems.splice(0);
  if (found.length > 0) {
    console.log('FAILED');
    tally.failed += 1;
    throw new StepFailed(`${name}: the page misbehaved:\n  ${found.join('\n  ')}`);
  }
  tally.passed += 1;
  console.log(`ok (${Date.now() - startedMs} ms)`);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Polls `probe` (returns {ok, seen}) until ok, for at most `timeoutMs`. */
async function waitUntil(what, probe, timeoutMs = ACTION_TIMEOUT_MS, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let seen = 'nothing';
  for (;;) {
    try {
      const result = await probe();
      if (result.ok) return result;
      seen = result.seen;
    } catch (error) {
      seen = `error: ${error.message}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not so within ${timeoutMs / 1000} s (last seen: ${JSON.stringify(seen)})`);
    }
    await sleep(everyMs);
  }
}

// ---- the API, as the shoppers and the test see it -----------------------------------------

async function call(method, urlPath, { user, admin, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (user) headers['X-User-Id'] = user;
  if (admin) headers.Authorization = `Bearer ${ADMIN_KEY}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(BASE_URL + urlPath, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: `text` says what it was.
  }
  return { status: response.status, json, text };
}

async function promotionFromApi(id) {
  const answer = await call('GET', `/admin/promotions/${encodeURIComponent(id)}`, { admin: true });
  check(answer.status === 200, `GET /admin/promotions/${id} answered ${answer.status}: ${answer.text}`);
  return answer.json;
}

/** The sale from the shoppers' side; returns what happened, for the report's check. */
async function runLoad(promotionId, skuA, skuB) {
  const run = randomBytes(3).toString('hex');
  const outcome = { orders: [], paid: [], cancelled: [], soldOut: 0, unexpected: [] };
  const base = `/promotions/${encodeURIComponent(promotionId)}/items`;

  const purchase = async (user, sku, requestId) => {
    const answer = await call('POST', `${base}/${encodeURIComponent(sku)}/purchase`,
      { user, body: { request_id: requestId, quantity: 1 } });
    if (answer.status === 201) {
      const order = { ...answer.json, user };
      outcome.orders.push(order);
      return order;
    }
    if (answer.status === 409 && answer.json?.error?.code === 'sold_out' && sku === skuA) {
      outcome.soldOut += 1;
      return null;
    }
    outcome.unexpected.push(`purchase of ${sku} by ${user}: ${answer.status} ${answer.text}`);
    return null;
  };
  const cancel = async (order) => {
    const answer = await call('POST', `/orders/${encodeURIComponent(order.order_id)}/cancel`, { user: order.user });
    if (answer.status === 200 && answer.json?.status === 'cancelled') outcome.cancelled.push(order);
    else outcome.unexpected.push(`cancel of ${order.order_id}: ${answer.status} ${answer.text}`);
  };
  const pay = async (order) => {
    const paymentRef = `pay-${order.order_id}`.slice(0, 64);
    const answer = await call('POST', `/admin/orders/${encodeURIComponent(order.order_id)}/pay`,
      { admin: true, body: { payment_ref: paymentRef, amount_cents: order.amount_cents } });
    if (answer.status === 200 && answer.json?.status === 'paid') outcome.paid.push({ ...order, payment_ref: paymentRef });
    else outcome.unexpected.push(`pay of ${order.order_id}: ${answer.status} ${answer.text}`);
  };

  for (let first = 0; first < SHOPPERS; first += BATCH) {
    const purchases = [];
    for (let i = first; i < Math.min(first + BATCH, SHOPPERS); i += 1) {
      const user = `u-${run}-${i}`;
      purchases.push(purchase(user, skuA, `r-${run}-${i}-a`));
      if (i < B_BUYERS) purchases.push(purchase(user, skuB, `r-${run}-${i}-b`));
    }
    const made = (await Promise.all(purchases)).filter(Boolean);
    const ofA = made.filter((order) => order.sku === skuA);
    const ofB = made.filter((order) => order.sku === skuB);
    await Promise.all([...ofA.slice(0, 2).map(cancel), ...ofA.slice(2, 3).map(pay), ...ofB.slice(0, 1).map(pay)]);
    await sleep(BATCH_PAUSE_MS);
  }
  return outcome;
}

// ---- the test -----------------------------------------------------------------------------

async function main() {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  // --no-sandbox: CI runs as root; a container's small /dev/shm would crash the renderer.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
    headless: true,
  });
  let page = null;
  try {
    // UTC in the page, so the datetime-local values typed below are UTC times.
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, timezoneId: 'UTC' });
    page = await context.newPage();
    page.setDefaultTimeout(ACTION_TIMEOUT_MS);
    watch(page);
    await sale(page);
    console.log('console test: every step held');
  } catch (error) {
    if (page) {
      await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'failure.png'), fullPage: true }).catch(() => {});
    }
    throw error;
  } finally {
    // Closing ends the page's open streams; what the browser reports then is not the page's doing.
    if (page) await Promise.resolve(page.removeAllListeners()).catch(() => {});
    await browser.close();
  }
}

async function sale(page) {
  const byId = (id) => page.getByTestId(id);
  const text = async (id) => ((await byId(id).textContent()) ?? '').trim();
  // Short waits inside polls: an element that is not there yet is simply polled again.
  const value = (id) => byId(id).getAttribute('data-value', { timeout: 2000 });
  const screenshot = (name) => page.screenshot({ path: path.join(SCREENSHOT_DIR, name), fullPage: true });

  const suffix = randomBytes(4).toString('hex');
  const id = `console-${suffix}`;
  const skuA = `c${suffix}-a`;
  const skuB = `c${suffix}-b`;
  let createPosts = 0;
  page.on('request', (request) => {
    if (request.method() === 'POST' && new URL(request.url()).pathname === '/admin/promotions') createPosts += 1;
  });

  await step('GET /console answers the page under its Content-Security-Policy', async () => {
    const response = await page.goto(`${BASE_URL}/console`, { waitUntil: 'load' });
    check(response && response.status() === 200, `GET /console answered ${response && response.status()}`);
    const headers = response.headers();
    check((headers['content-type'] || '').startsWith('text/html'), `content-type ${headers['content-type']}`);
    const policy = headers['content-security-policy'] || '';
    check(policy.includes("default-src 'self'"), `Content-Security-Policy is "${policy}"`);
    await byId('signin').waitFor({ state: 'visible' });
  });

  await step('a wrong admin key is refused and the sign-in stays', async () => {
    await expecting([401], async () => {
      await byId('admin-key').fill(`wrong-${suffix}`);
      await byId('sign-in').click();
      await waitUntil('the sign-in error', async () => {
        const shown = await byId('signin-error').isVisible() ? await text('signin-error') : '';
        return { ok: shown.includes('401'), seen: shown };
      });
    });
    check(await byId('signin').isVisible(), 'the sign-in form is gone after a refused key');
    check(!(await byId('main').isVisible()), 'the console shows after a refused key');
    const stored = await page.evaluate((key) => sessionStorage.getItem(key), KEY_STORAGE);
    check(stored === null, 'a refused key is still in sessionStorage');
  });

  await step('sign in with the admin key', async () => {
    await byId('admin-key').fill(ADMIN_KEY);
    await byId('sign-in').click();
    await byId('main').waitFor({ state: 'visible' });
    const stored = await page.evaluate((key) => sessionStorage.getItem(key), KEY_STORAGE);
    check(stored === ADMIN_KEY, 'the key is not in sessionStorage');
    const local = await page.evaluate(() => localStorage.length);
    check(local === 0, 'the console wrote to localStorage');
  });

  // Upcoming: starts in an hour (minute precision, as the form types it), then Start makes it live.
  const startsMs = Math.floor(Date.now() / 60_000) * 60_000 + 3_600_000;
  const endsMs = startsMs + 3_600_000;
  const utcInput = (ms) => new Date(ms).toISOString().slice(0, 16);

  await step('the create form refuses bad input in the page, sending nothing', async () => {
    await byId('show-create').click();
    await byId('panel-create').waitFor({ state: 'visible' });
    await byId('create-id').fill(id);
    await byId('create-name').fill(`Console test ${suffix}`);
    await byId('create-starts-at').fill(utcInput(startsMs));
    await byId('create-ends-at').fill(utcInput(endsMs));
    await byId('create-payment-timeout').fill('5');
    await byId('create-require-token').uncheck();
    await byId('item-sku-0').fill(skuA);
    await byId('item-title-0').fill('Item A');
    await byId('item-stock-0').fill(String(STOCK));
    await byId('item-price-cents-0').fill(String(PRICE_A_CENTS));
    await byId('item-per-user-limit-0').fill('1');
    await byId('add-item').click();
    await byId('item-sku-1').fill(skuA); // twice: refused
    await byId('item-stock-1').fill(String(STOCK));
    await byId('item-price-cents-1').fill(String(PRICE_B_CENTS));
    await byId('item-per-user-limit-1').fill('1');
    const postsBefore = createPosts;
    await byId('create-submit').click();
    await byId('create-error').waitFor({ state: 'visible' });
    const shown = await text('create-error');
    check(shown.includes('appears twice'), `no duplicate-sku message: ${shown}`);
    check(shown.includes('payment_timeout_s: must be 10..=86400'), `no payment_timeout_s message: ${shown}`);
    await sleep(300);
    check(createPosts === postsBefore, 'the form sent a body it should have refused');
  });

  await step('create the promotion with the form (2 items, no token)', async () => {
    await byId('item-sku-1').fill(skuB);
    await byId('item-title-1').fill('Item B');
    await byId('create-payment-timeout').fill(String(PAYMENT_TIMEOUT_S));
    await byId('create-submit').click();
    await waitUntil('the create result', async () => {
      const shown = await byId('create-result').isVisible() ? await text('create-result') : '';
      const error = await byId('create-error').isVisible() ? await text('create-error') : '';
      return { ok: shown.includes(`Created promotion ${id}`), seen: shown || error };
    });
    const promotion = await promotionFromApi(id);
    check(promotion.status === 'upcoming', `status ${promotion.status}`);
    check(promotion.require_token === false, 'require_token is not false');
    check(promotion.payment_timeout_s === PAYMENT_TIMEOUT_S, `payment_timeout_s ${promotion.payment_timeout_s}`);
    check(Date.parse(promotion.starts_at) === startsMs, `starts_at ${promotion.starts_at}, typed ${utcInput(startsMs)} UTC`);
    check(Date.parse(promotion.ends_at) === endsMs, `ends_at ${promotion.ends_at}`);
    const items = promotion.items.map((item) => `${item.sku}:${item.stock}:${item.price_cents}:${item.per_user_limit}`).sort();
    const wanted = [`${skuA}:${STOCK}:${PRICE_A_CENTS}:1`, `${skuB}:${STOCK}:${PRICE_B_CENTS}:1`].sort();
    check(JSON.stringify(items) === JSON.stringify(wanted), `items ${items}, not ${wanted}`);
  });

  await step("the API's own refusal is shown (same id, another body: 409 already_exists)", async () => {
    await expecting([409], async () => {
      await byId('create-name').fill(`Another name ${suffix}`);
      await byId('create-submit').click();
      await waitUntil('the refusal', async () => {
        const shown = await byId('create-error').isVisible() ? await text('create-error') : '';
        return { ok: shown.includes('409 already_exists'), seen: shown };
      });
    });
    const promotion = await promotionFromApi(id);
    check(promotion.name === `Console test ${suffix}`, `the refused create changed the name to ${promotion.name}`);
  });

  await step('the list shows the promotion, upcoming, with a countdown to its start', async () => {
    await byId(`promo-row-${id}`).waitFor({ state: 'visible' });
    await waitUntil('the status and countdown', async () => {
      const status = await text(`promo-status-${id}`);
      const countdown = await text(`promo-countdown-${id}`);
      return { ok: status === 'upcoming' && /^starts in (5\dm|1h)/.test(countdown), seen: { status, countdown } };
    });
    const first = await text(`promo-countdown-${id}`);
    await waitUntil('the countdown ticking', async () => {
      const now = await text(`promo-countdown-${id}`);
      return { ok: now !== first, seen: now };
    }, 5000);
  });

  await step('open the live view: the stream connects and shows the stock', async () => {
    await byId(`promo-live-${id}`).click();
    await byId('panel-live').waitFor({ state: 'visible' });
    await waitUntil('a first stats event', async () => {
      const state = await byId('live-state').getAttribute('data-state');
      const remaining = await value(`remaining-${skuA}`).catch(() => null);
      const status = await text('live-status');
      return { ok: state === 'connected' && remaining === String(STOCK) && status === 'upcoming', seen: { state, remaining, status } };
    }, LIVE_EVENT_TIMEOUT_MS);
    check(await value(`remaining-${skuB}`) === String(STOCK), `remaining of ${skuB} is not ${STOCK}`);
  });

  await step('start it from the live view', async () => {
    await byId('live-start').click();
    await waitUntil('status live', async () => {
      const status = await text('live-status');
      return { ok: status === 'live', seen: status };
    });
    const promotion = await promotionFromApi(id);
    check(promotion.status === 'live', `the API says ${promotion.status}`);
  });

  let outcome;
  await step(`${SHOPPERS} shoppers buy while the live view watches; ${skuA} sells out`, async () => {
    outcome = await runLoad(id, skuA, skuB);
    const ofA = outcome.orders.filter((order) => order.sku === skuA).length;
    const ofB = outcome.orders.filter((order) => order.sku === skuB).length;
    console.log(`\n    orders: ${ofA} of ${skuA}, ${ofB} of ${skuB}; sold_out: ${outcome.soldOut}; ` +
      `paid: ${outcome.paid.length}; cancelled: ${outcome.cancelled.length}`);
    check(outcome.unexpected.length === 0, `unexpected answers:\n  ${outcome.unexpected.slice(0, 10).join('\n  ')}`);
    check(ofA >= STOCK, `only ${ofA} orders of ${skuA} with ${STOCK} in stock`);
    check(ofB === B_BUYERS, `${ofB} orders of ${skuB}, not ${B_BUYERS}`);
    check(outcome.soldOut > 0, `no sold_out refusal for ${skuA}`);
    check(outcome.paid.length > 0 && outcome.cancelled.length > 0, 'nothing paid or nothing cancelled');
  });

  await step("the live view's figures and charts moved", async () => {
    await waitUntil(`remaining of ${skuA} below ${STOCK}, orders and refusals charted`, async () => {
      const remaining = Number(await value(`remaining-${skuA}`));
      const peak = Number(await byId('orders-per-s').getAttribute('data-peak'));
      const ordersCharted = Number(await byId('chart-orders').getAttribute('data-nonzero'));
      const refusalSeries = (await byId('chart-refusals').getAttribute('data-series')) || '';
      const refusalsCharted = Number(await byId('chart-refusals').getAttribute('data-nonzero'));
      const ok = remaining < STOCK && peak > 0 && ordersCharted > 0
        && refusalSeries.split(',').includes('sold_out') && refusalsCharted > 0;
      return { ok, seen: { remaining, peak, ordersCharted, refusalSeries, refusalsCharted } };
    }, LIVE_EVENT_TIMEOUT_MS);
    const canvases = await page.locator('[data-testid="chart-orders"] canvas').count();
    check(canvases > 0, 'the orders chart has no canvas');
    await screenshot('live.png');
  });

  await step('stop it from the live view (the button asks twice)', async () => {
    await byId('live-stop').click();
    check((await text('live-stop')).includes('Confirm'), 'Stop did not ask for a confirmation');
    await byId('live-stop').click();
    await waitUntil('status ended', async () => {
      const status = await text('live-status');
      return { ok: status === 'ended', seen: status };
    });
    const promotion = await promotionFromApi(id);
    check(promotion.status === 'ended', `the API says ${promotion.status}`);
  });

  await step('the report matches the sale (polled while SQL catches up)', async () => {
    const total = outcome.orders.length;
    const paid = outcome.paid.length;
    const cancelled = outcome.cancelled.length;
    const paidCents = outcome.paid.reduce((sum, order) => sum + order.amount_cents, 0);
    await byId('live-report').click();
    await byId('panel-report').waitFor({ state: 'visible' });
    await waitUntil('the report of the sale', async () => {
      await byId('report-refresh').click();
      await sleep(500);
      const seen = {
        paid: Number(await value('report-orders-paid')),
        paidUnits: Number(await value('report-units-paid')),
        paidCents: Number(await value('report-revenue-paid')),
        cancelled: Number(await value('report-orders-cancelled')),
        pending: Number(await value('report-orders-pending_payment')),
        expired: Number(await value('report-orders-expired')),
        funnelOrders: Number(await value('funnel-orders')),
        funnelPaid: Number(await value('funnel-paid')),
      };
      const ok = seen.paid === paid && seen.paidUnits === paid && seen.paidCents === paidCents
        && seen.cancelled === cancelled && seen.pending + seen.expired === total - paid - cancelled
        && seen.funnelOrders === total && seen.funnelPaid === paid;
      return { ok, seen: { ...seen, wanted: { total, paid, cancelled, paidCents } } };
    }, REPORT_TIMEOUT_MS, 500);
    const revenueText = await text('report-revenue-paid');
    check(revenueText === (paidCents / 100).toFixed(2).replace(/\B(?=(\d{3})+(?!\d))/g, ','),
      `paid revenue shows "${revenueText}" for ${paidCents} cents`);
    await screenshot('report.png');
  });

  await step('look up a paid order by id', async () => {
    const order = outcome.paid[0];
    await byId('order-id').fill(order.order_id);
    await byId('order-lookup').click();
    await byId('panel-order').waitFor({ state: 'visible' });
    await waitUntil('the order fields', async () => {
      const status = await text('order-field-status').catch(() => '');
      return { ok: status === 'paid', seen: status };
    });
    check(await text('order-field-order_id') === order.order_id, 'another order_id is shown');
    check(await text('order-field-payment_ref') === order.payment_ref, 'another payment_ref is shown');
    check(await text('order-field-amount_cents') === String(order.amount_cents), 'another amount is shown');
    await screenshot('order.png');
  });

  await step("an unknown order shows the API's 404", async () => {
    await expecting([404], async () => {
      await byId('order-id').fill(`no-such-order-${suffix}`);
      await byId('order-lookup').click();
      await waitUntil('the lookup error', async () => {
        const shown = await byId('order-error').isVisible() ? await text('order-error') : '';
        return { ok: shown.includes('404 not_found'), seen: shown };
      });
    });
  });

  await step('sign out drops the key', async () => {
    await byId('sign-out').click();
    await byId('signin').waitFor({ state: 'visible' });
    check(!(await byId('main').isVisible()), 'the console still shows');
    const stored = await page.evaluate((key) => sessionStorage.getItem(key), KEY_STORAGE);
    check(stored === null, 'the key is still in sessionStorage');
  });
}

const watchdog = setTimeout(() => {
  console.error(`console test: not finished within ${WHOLE_TEST_TIMEOUT_MS / 1000} s`);
  process.exit(1);
}, WHOLE_TEST_TIMEOUT_MS);

try {
  await main();
  clearTimeout(watchdog);
} catch (error) {
  clearTimeout(watchdog);
  if (!(error instanceof StepFailed)) tally.failed += 1;
  console.error(`console test FAILED: ${error.message}`);
  if (!(error instanceof StepFailed) && error.stack) console.error(error.stack);
  console.error(`screenshots in ${SCREENSHOT_DIR}`);
  process.exitCode = 1;
}
// The closing line CI reads: steps run, steps failed (a failed step ends the run).
console.log(`console: ${tally.passed} passed, ${tally.failed} failed`);

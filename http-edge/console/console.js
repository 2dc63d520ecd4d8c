// The seckill operator console: one ES module, no build step, no framework. Served by the
// server itself at /console under a strict Content-Security-Policy (own scripts only), so
// every handler is attached here, never inline. Charts are uPlot (vendored; a classic script
// that defines window.uPlot before this module runs).
//
// The admin key lives in sessionStorage only (gone when the tab closes) and goes with every
// call as `Authorization: Bearer`. A 401 drops it and shows the sign-in again.
//
// Times: the server's clock rules every countdown. Its offset from this browser's clock is
// bounded by each answer's `Date` header (whole seconds) and by the live stream's
// `server_time`; see `clock` below.

const KEY_STORAGE = 'seckill.console.adminKey';
const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const ID_RULE = 'must match [A-Za-z0-9_.:-]{1,64}';
// The API's bounds (api.md, "Operator routes"; engine/src/validate.rs).
const ITEMS_MAX = 1000;
const STOCK_MAX = 1_000_000_000;
const PAYMENT_TIMEOUT_S_MIN = 10;
const PAYMENT_TIMEOUT_S_MAX = 86_400;
const TOKEN_MULTIPLIER_MIN = 1;
const TOKEN_MULTIPLIER_MAX = 100;
const TEXT_BYTES_MAX = 256;
const U32_MAX = 4_294_967_295;

const LIST_REFRESH_MS = 3000;
const REPORT_REFRESH_MS = 5000;
const CLOCK_TICK_MS = 1000;
// The live stream sends one event a second: 300 points are its last 5 minutes.
const HISTORY_POINTS = 300;
// No event for this long means a dead connection (a proxy that holds it open, say).
const LIVE_STALL_MS = 10_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
// Stopping cannot be undone (an ended promotion cannot start again): the button asks twice.
const STOP_CONFIRM_MS = 4000;
const CHART_HEIGHT_PX = 220;
const PALETTE = ['#2f6fde', '#d9822b', '#23804a', '#c62f2f', '#7b4fd1', '#0f8b8d', '#a0522d', '#c2185b'];
const ORDER_FIELDS = ['order_id', 'promotion_id', 'sku', 'user_id', 'quantity', 'price_cents',
  'amount_cents', 'status', 'created_at', 'pay_before', 'paid_at', 'payment_ref', 'closed_at'];
const PANELS = ['panel-create', 'panel-live', 'panel-report', 'panel-order'];

// The API's root: the page is `<root>/console`, so a proxy may mount the server under a prefix.
const API_ROOT = location.pathname.replace(/\/console\/?$/, '');

// ---- DOM helpers --------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes (`text` sets its text, `dataset` its data-*) and children. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = String(value);
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name === 'testid') node.dataset.testid = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children);
  return node;
}

/**
 * Shows `text` in `node`, or hides `node` when `text` is empty. `kind` ("error" or
 * "message") styles it; without one, the node's class in the page applies.
 */
function say(node, text, kind) {
  if (node.dataset.kind === undefined) node.dataset.kind = node.className;
  node.className = kind || node.dataset.kind;
  node.textContent = text || '';
  node.hidden = !text;
}

function setText(id, text) {
  const node = $(id);
  if (node.textContent !== text) node.textContent = text;
}

// ---- formatting ---------------------------------------------------------------------------

/** 3725000 ms as "1h 02m 05s". */
function formatDuration(ms) {
  let s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const two = (n) => String(n).padStart(2, '0');
  if (d > 0) return `${d}d ${h}h ${two(m)}m`;
  if (h > 0) return `${h}h ${two(m)}m ${two(s)}s`;
  if (m > 0) return `${m}m ${two(s)}s`;
  return `${s}s`;
}

/** Integer cents as currency units, exactly: 123456 -> "1,234.56". */
function formatCents(cents) {
  const n = Number(cents);
  if (!Number.isFinite(n)) return '–';
  const abs = Math.abs(Math.trunc(n));
  const units = Math.floor(abs / 100).toLocaleString('en-US');
  return `${n < 0 ? '-' : ''}${units}.${String(abs % 100).padStart(2, '0')}`;
}

function formatRate(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return '–';
  const n = Number(value);
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

function formatCount(value) {
  const n = Number(value);
  return Number.isFinite(n) ? n.toLocaleString('en-US') : '–';
}

function formatLocal(iso) {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? String(iso) : new Date(ms).toLocaleString();
}

function sumOf(values) {
  return values.reduce((total, value) => total + (Number(value) || 0), 0);
}

// ---- the server's clock -------------------------------------------------------------------

// Bounds on (server clock - browser clock), narrowed by each sample; a sample outside them
// (a clock was set) starts over from that sample.
const clock = { lowMs: -Infinity, highMs: Infinity, offsetMs: 0 };

function clockSample(lowMs, highMs) {
  let low = Math.max(clock.lowMs, lowMs);
  let high = Math.min(clock.highMs, highMs);
  if (low > high) {
    low = lowMs;
    high = highMs;
  }
  clock.lowMs = low;
  clock.highMs = high;
  clock.offsetMs = (low + high) / 2;
}

/** The `Date` header: the server's clock read [date, date + 1 s) between send and receipt. */
function noteDateHeader(response, sentMs, receivedMs) {
  const serverMs = Date.parse(response.headers.get('Date') || '');
  if (Number.isNaN(serverMs)) return;
  clockSample(serverMs - receivedMs, serverMs + 1000 - sentMs);
}

/** A `server_time` of the live stream, read before it reached us at `receivedMs`. */
function noteServerTime(serverMs, receivedMs) {
  const lowMs = serverMs - receivedMs;
  const highMs = Number.isFinite(clock.highMs) ? Math.max(clock.highMs, lowMs) : lowMs + 100;
  clockSample(lowMs, highMs);
}

function serverNow() {
  return Date.now() + clock.offsetMs;
}

// ---- the admin key ------------------------------------------------------------------------

function adminKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

function dropKey() {
  try {
    sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage unavailable: nothing was stored.
  }
}

// ---- calling the API ----------------------------------------------------------------------

/** An answer that is not a success: `status` 0 when the server could not be reached. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

function isAbort(error) {
  return error instanceof DOMException && error.name === 'AbortError';
}

/** What to show a person for `error`: the API's own message, with its status and code. */
function describe(error) {
  if (error instanceof ApiError) {
    return error.status ? `${error.message} (${error.status} ${error.code})` : error.message;
  }
  return String((error && error.message) || error);
}

/** Runs `task`, sending any failure but an abort to `onError` (never an unhandled rejection). */
function spawn(task, onError) {
  Promise.resolve()
    .then(task)
    .catch((error) => {
      if (isAbort(error)) return;
      if (onError) onError(error);
      else console.warn('seckill console:', error);
    });
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(new DOMException('aborted', 'AbortError'));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(new DOMException('aborted', 'AbortError'));
    };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function errorOf(response, body) {
  const error = body && body.error;
  if (error && typeof error.message === 'string') {
    return new ApiError(response.status, error.code || 'error', error.message);
  }
  return new ApiError(response.status, `http_${response.status}`,
    `the server answered ${response.status} ${response.statusText}`.trim());
}

function authHeaders() {
  const key = adminKey();
  if (!key) throw new ApiError(401, 'unauthorized', 'not signed in');
  return { Authorization: `Bearer ${key}` };
}

/** `fetch` with the admin key; a 401 signs out before it throws. */
async function authorizedFetch(path, init) {
  const headers = { ...authHeaders(), ...(init.headers || {}) };
  const sentMs = Date.now();
  let response;
  try {
    response = await fetch(API_ROOT + path, { cache: 'no-store', ...init, headers });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError(0, 'network', `cannot reach the server (${error.message})`);
  }
  noteDateHeader(response, sentMs, Date.now());
  if (response.status === 401) {
    const body = await readJson(response).catch(() => null);
    signOut('The server refused the admin key (401 unauthorized): sign in again.');
    throw errorOf(response, body);
  }
  return response;
}

/** A JSON call: `{status, data}` on success, an ApiError otherwise. */
async function api(method, path, { body, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await authorizedFetch(path, {
    method,
    headers,
    signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await readJson(response);
  if (!response.ok) throw errorOf(response, data);
  return { status: response.status, data };
}

const enc = encodeURIComponent;

// ---- signing in and out -------------------------------------------------------------------

const session = { listTimer: 0, tickTimer: 0, listInFlight: false, listFailed: false };

function showSignIn(message) {
  $('main').hidden = true;
  $('sign-out').hidden = true;
  $('signin').hidden = false;
  say($('signin-error'), message);
  $('admin-key').value = '';
  $('admin-key').focus();
}

function showConsole() {
  $('signin').hidden = true;
  say($('signin-error'), '');
  $('main').hidden = false;
  $('sign-out').hidden = false;
  clearInterval(session.listTimer);
  clearInterval(session.tickTimer);
  session.listTimer = setInterval(refreshList, LIST_REFRESH_MS);
  session.tickTimer = setInterval(tick, CLOCK_TICK_MS);
  tick();
}

/** Drops the key and everything it showed; `message` says why on the sign-in form. */
function signOut(message) {
  dropKey();
  clearInterval(session.listTimer);
  clearInterval(session.tickTimer);
  closePanels();
  promotions.clear();
  $('promotion-rows').replaceChildren();
  $('list-empty').hidden = true;
  say($('list-message'), '');
  showSignIn(message);
}

/** Checks the stored key with a first list call; shows the console when it holds. */
async function enter() {
  try {
    const { data } = await api('GET', '/admin/promotions');
    showConsole();
    renderList(data.promotions || []);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // signOut said it
    dropKey();
    showSignIn(`Cannot sign in: ${describe(error)}`);
  }
}

function onSignIn(event) {
  event.preventDefault();
  const key = $('admin-key').value.trim();
  if (!key) {
    say($('signin-error'), 'Type the admin key.');
    return;
  }
  try {
    storeKey(key);
  } catch {
    say($('signin-error'), 'This browser refuses session storage, where the console keeps the key.');
    return;
  }
  spawn(enter, (error) => say($('signin-error'), describe(error)));
}

// ---- the promotions list ------------------------------------------------------------------

// id -> { promotion, row, cells }; rows stay in place between refreshes, so a button is never
// swapped under the pointer.
const promotions = new Map();

function refreshList() {
  if (session.listInFlight || !adminKey()) return;
  session.listInFlight = true;
  spawn(async () => {
    try {
      const { data } = await api('GET', '/admin/promotions');
      renderList(data.promotions || []);
      if (session.listFailed) say($('list-message'), '');
      session.listFailed = false;
    } finally {
      session.listInFlight = false;
    }
  }, (error) => {
    if (error instanceof ApiError && error.status === 401) return;
    session.listFailed = true;
    say($('list-message'), `Cannot refresh the list: ${describe(error)}`, 'error');
  });
}

const STATUS_RANK = { live: 0, upcoming: 1, ended: 2 };

function listOrder(a, b) {
  const rank = (STATUS_RANK[a.status] ?? 3) - (STATUS_RANK[b.status] ?? 3);
  if (rank !== 0) return rank;
  // Live and upcoming: the soonest first; ended: the latest first.
  const key = (p) => Date.parse(p.status === 'ended' ? p.ends_at : p.starts_at) || 0;
  return a.status === 'ended' ? key(b) - key(a) : key(a) - key(b);
}

function renderList(list) {
  // An answer that arrives after a sign-out shows nothing.
  if (!adminKey()) return;
  const seen = new Set();
  const sorted = [...list].sort(listOrder);
  for (const promotion of sorted) {
    seen.add(promotion.id);
    let entry = promotions.get(promotion.id);
    if (!entry) {
      entry = makeRow(promotion.id);
      promotions.set(promotion.id, entry);
    }
    entry.promotion = promotion;
    fillRow(entry);
  }
  for (const [id, entry] of promotions) {
    if (!seen.has(id)) {
      entry.row.remove();
      promotions.delete(id);
    }
  }
  const tbody = $('promotion-rows');
  const rows = sorted.map((p) => promotions.get(p.id).row);
  const inOrder = rows.length === tbody.children.length && rows.every((row, i) => tbody.children[i] === row);
  if (!inOrder) tbody.append(...rows);
  $('list-empty').hidden = rows.length > 0;
}

function makeRow(id) {
  const cell = (name) => el('td', { testid: `promo-${name}-${id}` });
  const cells = {
    id: el('td', { testid: `promo-id-${id}`, text: id }),
    name: cell('name'),
    status: el('td', {}, el('span', { class: 'pill', testid: `promo-status-${id}` })),
    starts: cell('starts'),
    ends: cell('ends'),
    countdown: cell('countdown'),
    items: cell('items'),
    stock: cell('stock'),
  };
  const live = el('button', { type: 'button', class: 'secondary', testid: `promo-live-${id}`, text: 'Live' });
  const report = el('button', { type: 'button', class: 'secondary', testid: `promo-report-${id}`, text: 'Report' });
  const start = el('button', { type: 'button', testid: `promo-start-${id}`, text: 'Start now' });
  const stop = el('button', { type: 'button', class: 'danger', testid: `promo-stop-${id}`, text: 'Stop' });
  live.addEventListener('click', () => openLive(id));
  report.addEventListener('click', () => openReport(id));
  start.addEventListener('click', () => runAction(id, 'start', start, $('list-message')));
  stop.addEventListener('click', () => confirmThen(stop, () => runAction(id, 'stop', stop, $('list-message'))));
  const actions = el('td', { class: 'actions' }, live, report, start, stop);
  const row = el('tr', { testid: `promo-row-${id}` }, ...Object.values(cells), actions);
  return { row, cells, buttons: { start, stop }, promotion: null };
}

function fillRow(entry) {
  const p = entry.promotion;
  const items = p.items || [];
  entry.cells.name.textContent = p.name;
  const pill = entry.cells.status.firstChild;
  pill.textContent = p.status;
  pill.className = `pill ${p.status}`;
  entry.cells.starts.textContent = formatLocal(p.starts_at);
  entry.cells.starts.title = p.starts_at;
  entry.cells.ends.textContent = formatLocal(p.ends_at);
  entry.cells.ends.title = p.ends_at;
  entry.cells.items.textContent = String(items.length);
  const remaining = sumOf(items.map((item) => item.remaining));
  const stock = sumOf(items.map((item) => item.stock));
  entry.cells.stock.textContent = `${formatCount(remaining)} / ${formatCount(stock)}`;
  if (!entry.buttons.stop.classList.contains('confirm')) {
    entry.buttons.stop.disabled = p.status === 'ended';
  }
  entry.buttons.start.disabled = p.status !== 'upcoming';
  entry.cells.countdown.textContent = countdownOf(p);
}

/** "starts in 5m 03s" for an upcoming promotion, "ends in ..." for a live one. */
function countdownOf(p) {
  const now = serverNow();
  if (p.status === 'upcoming') {
    const ms = Date.parse(p.starts_at) - now;
    return ms > 0 ? `starts in ${formatDuration(ms)}` : 'starting…';
  }
  if (p.status === 'live') {
    const ms = Date.parse(p.ends_at) - now;
    return ms > 0 ? `ends in ${formatDuration(ms)}` : 'ending…';
  }
  return 'ended';
}

function tick() {
  const now = new Date(serverNow());
  const clockNode = $('server-clock');
  clockNode.textContent = now.toLocaleTimeString();
  clockNode.title = now.toISOString();
  for (const entry of promotions.values()) {
    const text = countdownOf(entry.promotion);
    if (entry.cells.countdown.textContent !== text) entry.cells.countdown.textContent = text;
  }
}

/** Arms `button` on the first click ("Confirm stop"), runs `action` on a second one. */
function confirmThen(button, action) {
  if (button.classList.contains('confirm')) {
    clearTimeout(Number(button.dataset.disarm));
    disarm(button);
    action();
    return;
  }
  button.dataset.label = button.textContent;
  button.textContent = 'Confirm stop';
  button.classList.add('confirm');
  button.dataset.disarm = String(setTimeout(() => disarm(button), STOP_CONFIRM_MS));
}

function disarm(button) {
  button.classList.remove('confirm');
  button.textContent = button.dataset.label || 'Stop';
}

/** POST .../start or .../stop; the outcome goes to `messageNode`. */
function runAction(id, action, button, messageNode) {
  button.disabled = true;
  spawn(async () => {
    const { data } = await api('POST', `/admin/promotions/${enc(id)}/${action}`);
    say(messageNode, action === 'start' ? `${id} is live from now.` : `${id} has ended.`, 'message');
    mergePromotion(data);
    if (live && live.id === id) live.showStatus(data.status);
  }, (error) => {
    say(messageNode, `Cannot ${action} ${id}: ${describe(error)}`, 'error');
    button.disabled = false;
  });
}

function mergePromotion(promotion) {
  if (!promotion || !promotion.id) return;
  const list = [...promotions.values()].map((entry) => entry.promotion)
    .filter((p) => p.id !== promotion.id);
  list.push(promotion);
  renderList(list);
}

// ---- panels -------------------------------------------------------------------------------

let live = null;
let report = null;

/** Shows panel `id`, closing the others (a live view's stream is stopped with it). */
function openPanel(id) {
  for (const panel of PANELS) {
    if (panel !== id) closePanel(panel);
  }
  $(id).hidden = false;
}

function closePanel(id) {
  $(id).hidden = true;
  if (id === 'panel-live' && live) {
    live.close();
    live = null;
  }
  if (id === 'panel-report' && report) {
    report.close();
    report = null;
  }
}

function closePanels() {
  for (const panel of PANELS) closePanel(panel);
}

// ---- creating a promotion -----------------------------------------------------------------

function pad2(n) {
  return String(n).padStart(2, '0');
}

/** Browser-local "YYYY-MM-DDTHH:MM", what a datetime-local input holds. */
function toLocalInput(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

/** A datetime-local value (browser-local time) as RFC 3339 UTC, or null. */
function localInputToIso(value) {
  if (!value) return null;
  const ms = new Date(value).getTime(); // no offset in the string: local time (ECMAScript)
  if (Number.isNaN(ms)) return null;
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}

/** The create form's input called `name`. */
function field(name) {
  return $('create-form').elements.namedItem(name);
}

function openCreate() {
  openPanel('panel-create');
  if (!field('starts_at').value) {
    // Upcoming by default: an hour from the next whole minute, for an hour.
    const nextMinuteMs = Math.ceil(serverNow() / 60_000) * 60_000;
    field('starts_at').value = toLocalInput(nextMinuteMs + 3_600_000);
    field('ends_at').value = toLocalInput(nextMinuteMs + 7_200_000);
  }
  if ($('item-rows').children.length === 0) addItemRow();
  field('name').focus();
}

function addItemRow() {
  const input = (name, type, attrs = {}) => el('input', { type, 'data-field': name, spellcheck: 'false', ...attrs });
  const remove = el('button', { type: 'button', class: 'secondary', text: 'Remove', 'data-remove': '' });
  const row = el('tr', {},
    el('td', {}, input('sku', 'text')),
    el('td', {}, input('title', 'text', { placeholder: 'the sku' })),
    el('td', {}, input('stock', 'number', { min: 0, max: STOCK_MAX, value: 100 })),
    el('td', {}, input('price_cents', 'number', { min: 0, value: 100 })),
    el('td', {}, input('per_user_limit', 'number', { min: 1, value: 1 })),
    el('td', {}, remove));
  remove.addEventListener('click', () => {
    row.remove();
    numberItemRows();
  });
  $('item-rows').append(row);
  numberItemRows();
  row.querySelector('[data-field="sku"]').focus();
}

/** Test ids follow the rows' order: item-sku-0, item-stock-1, item-remove-0, ... */
function numberItemRows() {
  const rows = [...$('item-rows').children];
  rows.forEach((row, index) => {
    for (const input of row.querySelectorAll('input[data-field]')) {
      input.dataset.testid = `item-${input.dataset.field.replaceAll('_', '-')}-${index}`;
    }
    const remove = row.querySelector('[data-remove]');
    remove.dataset.testid = `item-remove-${index}`;
    remove.disabled = rows.length === 1;
  });
  $('add-item').disabled = rows.length >= ITEMS_MAX;
}

/** Collects problems as the API words them: "field: rule". */
class Problems {
  constructor() {
    this.list = [];
  }

  add(input, field, rule) {
    this.list.push(`${field}: ${rule}`);
    if (input) input.classList.add('invalid');
  }

  /** The integer in `input` within [min, max], or undefined (a problem) when it is not. */
  integer(input, field, min, max, rule) {
    const text = input.value.trim();
    const value = Number(text);
    if (text === '' || !Number.isSafeInteger(value) || value < min || value > max) {
      this.add(input, field, rule);
      return undefined;
    }
    return value;
  }
}

function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/** The create body from the form, validated like the API does; `problems` lists what is wrong. */
function readCreateForm() {
  for (const input of $('create-form').querySelectorAll('.invalid')) input.classList.remove('invalid');
  const problems = new Problems();
  const body = {};
  const id = field('id').value.trim();
  if (id) {
    if (ID_PATTERN.test(id)) body.id = id;
    else problems.add(field('id'), 'id', ID_RULE);
  }
  body.name = field('name').value;
  if (!body.name.trim() || byteLength(body.name) > TEXT_BYTES_MAX) {
    problems.add(field('name'), 'name', 'must be 1 to 256 bytes');
  }
  readWindow(body, problems);
  body.payment_timeout_s = problems.integer(field('payment_timeout_s'), 'payment_timeout_s',
    PAYMENT_TIMEOUT_S_MIN, PAYMENT_TIMEOUT_S_MAX, 'must be 10..=86400');
  body.require_token = field('require_token').checked;
  body.token_multiplier = problems.integer(field('token_multiplier'), 'token_multiplier',
    TOKEN_MULTIPLIER_MIN, TOKEN_MULTIPLIER_MAX, 'must be 1..=100');
  body.items = readItems(problems);
  return { body, problems: problems.list };
}

function readWindow(body, problems) {
  body.starts_at = localInputToIso(field('starts_at').value);
  body.ends_at = localInputToIso(field('ends_at').value);
  if (!body.starts_at) problems.add(field('starts_at'), 'starts_at', 'must be a date and time');
  if (!body.ends_at) problems.add(field('ends_at'), 'ends_at', 'must be a date and time');
  if (body.starts_at && body.ends_at && Date.parse(body.ends_at) <= Date.parse(body.starts_at)) {
    problems.add(field('ends_at'), 'ends_at', 'must be after starts_at');
  }
}

function readItems(problems) {
  const rows = [...$('item-rows').children];
  if (rows.length < 1 || rows.length > ITEMS_MAX) {
    problems.add(null, 'items', 'must hold 1 to 1000 items');
  }
  const skus = new Set();
  return rows.map((row, index) => {
    const input = (name) => row.querySelector(`[data-field="${name}"]`);
    const at = `items[${index}]`;
    const item = { sku: input('sku').value.trim() };
    if (!ID_PATTERN.test(item.sku)) problems.add(input('sku'), `${at}.sku`, ID_RULE);
    else if (skus.has(item.sku)) problems.add(input('sku'), `${at}.sku`, `${item.sku} appears twice in the promotion`);
    skus.add(item.sku);
    const title = input('title').value.trim();
    if (title) {
      if (byteLength(title) > TEXT_BYTES_MAX) problems.add(input('title'), `${at}.title`, 'must be 1 to 256 bytes');
      item.title = title;
    }
    item.stock = problems.integer(input('stock'), `${at}.stock`, 0, STOCK_MAX, 'must be 0..=1000000000');
    item.price_cents = problems.integer(input('price_cents'), `${at}.price_cents`, 0,
      Number.MAX_SAFE_INTEGER, 'must be an integer >= 0');
    item.per_user_limit = problems.integer(input('per_user_limit'), `${at}.per_user_limit`, 1,
      U32_MAX, 'must be an integer >= 1');
    return item;
  });
}

function onCreate(event) {
  event.preventDefault();
  say($('create-result'), '');
  const { body, problems } = readCreateForm();
  if (problems.length > 0) {
    say($('create-error'), `Not sent, fix these first:\n${problems.join('\n')}`);
    return;
  }
  say($('create-error'), '');
  const submit = event.submitter || $('create-form').querySelector('[type="submit"]');
  submit.disabled = true;
  spawn(async () => {
    try {
      const { status, data } = await api('POST', '/admin/promotions', { body });
      const result = $('create-result');
      result.dataset.promotionId = data.id;
      say(result, status === 201
        ? `Created promotion ${data.id} (${data.status}).`
        : `Promotion ${data.id} already existed with this very body: nothing changed.`);
      mergePromotion(data);
    } finally {
      submit.disabled = false;
    }
  }, (error) => say($('create-error'), `Not created: ${describe(error)}`));
}

// ---- the live view ------------------------------------------------------------------------

/** Server-Sent Events from text chunks: calls `onEvent(name, data)` per complete event. */
class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.eventName = '';
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    const buffer = this.buffer;
    let lineStart = 0;
    let i = 0;
    while (i < buffer.length) {
      const c = buffer.charCodeAt(i);
      if (c !== 10 && c !== 13) {
        i += 1;
        continue;
      }
      // A CR last in the chunk may be the first half of a CRLF: wait for the next chunk.
      if (c === 13 && i + 1 === buffer.length) break;
      this.line(buffer.slice(lineStart, i));
      i += c === 13 && buffer.charCodeAt(i + 1) === 10 ? 2 : 1;
      lineStart = i;
    }
    this.buffer = buffer.slice(lineStart);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return; // a comment (keep-alive)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.eventName = value;
    else if (field === 'data') this.data.push(value);
    // `id` and `retry` are not used: the console reconnects with its own backoff.
  }

  dispatch() {
    if (this.data.length > 0) this.onEvent(this.eventName || 'message', this.data.join('\n'));
    this.eventName = '';
    this.data = [];
  }
}

async function readEventStream(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    parser.push(decoder.decode(value, { stream: true }));
  }
  parser.push(decoder.decode());
  // An event cut off by the end of the stream is dropped, as EventSource does.
}

/** One uPlot chart in `container`, remade when its series change. */
class Chart {
  constructor(container, unit) {
    this.container = container;
    this.unit = unit;
    this.plot = null;
    this.key = null;
  }

  /** `series`: [{label, bars?}]; `columns`: one array of values per series, aligned to `xs`. */
  update(xs, series, columns) {
    const Plot = globalThis.uPlot;
    this.container.dataset.points = String(xs.length);
    this.container.dataset.series = series.map((s) => s.label).join(',');
    this.container.dataset.nonzero = String(xs.filter((_, i) => columns.some((c) => Number(c[i]) > 0)).length);
    if (!Plot) {
      this.container.textContent = 'Charts unavailable: uPlot did not load.';
      return;
    }
    if (series.length === 0 || xs.length === 0) {
      this.destroy();
      this.container.textContent = 'Nothing yet.';
      this.key = '';
      return;
    }
    const key = series.map((s) => `${s.label}:${s.bars ? 'b' : 'l'}`).join('\n');
    const data = [xs, ...columns];
    if (this.plot && key === this.key) {
      this.plot.setData(data);
      return;
    }
    this.destroy();
    this.container.textContent = '';
    this.key = key;
    this.plot = new Plot(this.options(Plot, series), data, this.container);
  }

  options(Plot, series) {
    return {
      width: this.width(),
      height: CHART_HEIGHT_PX,
      scales: { x: { time: true } },
      axes: [{}, { label: this.unit, size: 60 }],
      series: [{ label: 'time' }, ...series.map((s, i) => seriesOptions(Plot, s, i))],
    };
  }

  width() {
    return Math.max(300, Math.floor(this.container.clientWidth || 600));
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: CHART_HEIGHT_PX });
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

function seriesOptions(Plot, s, index) {
  const color = PALETTE[index % PALETTE.length];
  const options = { label: s.label, stroke: color, width: 2, points: { show: false } };
  if (s.bars) {
    options.fill = `${color}99`;
    options.paths = Plot.paths.bars({ size: [0.6, 40] });
  }
  return options;
}

/** A promotion's live view: the `/live` stream, its item table and its charts. */
class LiveView {
  constructor(id) {
    this.id = id;
    this.controller = new AbortController();
    this.closed = false;
    this.history = [];
    this.skus = [];
    this.codes = new Set();
    this.rows = new Map();
    this.peakOrdersPerS = 0;
    this.eventsThisConnection = 0;
    this.charts = {
      orders: new Chart($('chart-orders'), 'orders/s'),
      refusals: new Chart($('chart-refusals'), 'refusals/s'),
      latency: new Chart($('chart-latency'), 'ms'),
      lag: new Chart($('chart-lag'), 's'),
    };
  }

  open() {
    setText('live-title', this.id);
    $('live-items').replaceChildren();
    for (const id of ['live-status', 'orders-per-s', 'refusals-per-s', 'latency-p99', 'flusher-lag', 'live-time']) {
      setText(id, '–');
    }
    $('orders-per-s').dataset.peak = '0';
    say($('live-error'), '');
    for (const chart of Object.values(this.charts)) chart.update([], [], []);
    const known = promotions.get(this.id);
    if (known) this.showStatus(known.promotion.status);
    this.setState('connecting');
    spawn(() => this.run(), (error) => this.fail(describe(error)));
  }

  close() {
    this.closed = true;
    this.controller.abort();
    for (const chart of Object.values(this.charts)) chart.destroy();
  }

  setState(state, detail) {
    const pill = $('live-state');
    pill.textContent = detail ? `${state}: ${detail}` : state;
    pill.className = `pill ${state}`;
    pill.dataset.state = state;
  }

  fail(message) {
    this.setState('stopped');
    say($('live-error'), message);
  }

  showStatus(status) {
    setText('live-status', status);
    $('live-start').disabled = status !== 'upcoming';
    if (!$('live-stop').classList.contains('confirm')) $('live-stop').disabled = status === 'ended';
  }

  /** Connects, reads until the stream ends, reconnects with backoff until closed. */
  async run() {
    let backoffMs = BACKOFF_MIN_MS;
    while (!this.closed) {
      this.eventsThisConnection = 0;
      try {
        await this.connectOnce();
        if (this.closed) return;
        this.dropped('the server ended the stream');
      } catch (error) {
        if (this.closed) return;
        if (error instanceof ApiError && [401, 404].includes(error.status)) {
          this.fail(`The live stream is refused: ${describe(error)}`);
          return;
        }
        this.dropped(describe(error));
      }
      if (this.eventsThisConnection > 0) backoffMs = BACKOFF_MIN_MS;
      this.setState('disconnected', `reconnecting in ${(backoffMs / 1000).toFixed(1)} s`);
      await sleep(backoffMs, this.controller.signal);
      backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
    }
  }

  dropped(reason) {
    say($('live-error'), `Live stream dropped (${reason}); reconnecting.`);
  }

  async connectOnce() {
    // Aborted by close() (the view's controller) or by the stall timer (this attempt only).
    const attempt = new AbortController();
    const abortAttempt = () => attempt.abort();
    this.controller.signal.addEventListener('abort', abortAttempt, { once: true });
    let stalled = false;
    let stallTimer = 0;
    const armStall = () => {
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => {
        stalled = true;
        attempt.abort();
      }, LIVE_STALL_MS);
    };
    try {
      armStall();
      const response = await authorizedFetch(`/admin/promotions/${enc(this.id)}/live`, {
        headers: { Accept: 'text/event-stream' },
        signal: attempt.signal,
      });
      if (!response.ok) throw errorOf(response, await readJson(response));
      if (!response.body) throw new Error('this browser cannot read a streamed answer');
      this.setState('connected');
      await readEventStream(response.body, (name, data) => {
        armStall();
        if (name === 'stats') this.onStats(data);
      });
    } catch (error) {
      if (stalled && !this.closed) throw new Error(`no event for ${LIVE_STALL_MS / 1000} s`);
      throw error;
    } finally {
      clearTimeout(stallTimer);
      this.controller.signal.removeEventListener('abort', abortAttempt);
    }
  }

  onStats(raw) {
    if (this.closed) return;
    let stats;
    try {
      stats = JSON.parse(raw);
    } catch {
      say($('live-error'), 'A stats event was not JSON; skipped.');
      return;
    }
    const receivedMs = Date.now();
    let serverMs = Date.parse(stats.server_time);
    if (Number.isNaN(serverMs)) serverMs = serverNow();
    else noteServerTime(serverMs, receivedMs);
    if (this.eventsThisConnection === 0) say($('live-error'), '');
    this.eventsThisConnection += 1;
    this.renderFigures(stats, serverMs);
    this.renderItems(stats.items || []);
    this.record(stats, serverMs);
    this.drawCharts();
  }

  renderFigures(stats, serverMs) {
    if (stats.status) this.showStatus(stats.status);
    const ordersPerS = Number(stats.orders_per_s) || 0;
    this.peakOrdersPerS = Math.max(this.peakOrdersPerS, ordersPerS);
    setText('orders-per-s', formatRate(stats.orders_per_s));
    $('orders-per-s').dataset.peak = String(this.peakOrdersPerS);
    setText('refusals-per-s', formatRate(sumOf(Object.values(stats.refusals_per_s || {}))));
    setText('latency-p99', stats.latency_p99_ms === null ? 'no requests' : formatRate(stats.latency_p99_ms));
    setText('flusher-lag', stats.flusher_lag_s === null ? 'no SQL flusher' : formatRate(stats.flusher_lag_s));
    setText('live-time', new Date(serverMs).toLocaleTimeString());
  }

  renderItems(items) {
    const tbody = $('live-items');
    for (const item of items) {
      let cells = this.rows.get(item.sku);
      if (!cells) {
        cells = this.makeItemRow(item.sku);
        tbody.append(cells.row);
      }
      cells.title.textContent = item.title ?? item.sku;
      for (const field of ['stock', 'remaining', 'reserved', 'sold', 'tokens_outstanding']) {
        cells[field].textContent = formatCount(item[field]);
        cells[field].dataset.value = String(item[field]);
      }
      cells.tokens_outstanding.title = `${formatCount(item.tokens_issued)} tokens issued in all`;
      cells.orders_per_s.textContent = formatRate(item.orders_per_s);
      const refusals = Object.entries(item.refusals_per_s || {});
      cells.refusals_per_s.textContent = refusals.length === 0 ? '0'
        : refusals.map(([code, rate]) => `${code} ${formatRate(rate)}`).join(', ');
    }
  }

  makeItemRow(sku) {
    const cell = (name) => el('td', { class: 'num', testid: `${name}-${sku}` });
    const cells = {
      title: el('td', { testid: `title-${sku}` }),
      stock: cell('stock'),
      remaining: cell('remaining'),
      reserved: cell('reserved'),
      sold: cell('sold'),
      tokens_outstanding: cell('tokens-outstanding'),
      orders_per_s: cell('orders-per-s'),
      refusals_per_s: el('td', { testid: `refusals-per-s-${sku}` }),
    };
    cells.row = el('tr', { testid: `live-item-${sku}` }, el('td', { text: sku }), cells.title,
      cells.stock, cells.remaining, cells.reserved, cells.sold, cells.tokens_outstanding,
      cells.orders_per_s, cells.refusals_per_s);
    this.rows.set(sku, cells);
    return cells;
  }

  record(stats, serverMs) {
    const perItem = {};
    for (const item of stats.items || []) {
      perItem[item.sku] = Number(item.orders_per_s) || 0;
      if (!this.skus.includes(item.sku)) this.skus.push(item.sku);
    }
    const refusals = stats.refusals_per_s || {};
    for (const code of Object.keys(refusals)) this.codes.add(code);
    const number = (value) => (value === null || value === undefined ? null : Number(value));
    this.history.push({
      t: serverMs / 1000,
      orders: Number(stats.orders_per_s) || 0,
      perItem,
      refusals,
      p99: number(stats.latency_p99_ms),
      lag: number(stats.flusher_lag_s),
    });
    if (this.history.length > HISTORY_POINTS) this.history.shift();
  }

  drawCharts() {
    const h = this.history;
    const xs = h.map((p) => p.t);
    const skus = this.skus;
    // A code or sku missing from an event had no answers that second: 0, not a gap.
    this.charts.orders.update(xs,
      [{ label: 'total' }, ...skus.map((sku) => ({ label: sku }))],
      [h.map((p) => p.orders), ...skus.map((sku) => h.map((p) => p.perItem[sku] ?? 0))]);
    const codes = [...this.codes].sort();
    this.charts.refusals.update(xs, codes.map((code) => ({ label: code })),
      codes.map((code) => h.map((p) => Number(p.refusals[code]) || 0)));
    this.charts.latency.update(xs, [{ label: 'p99' }], [h.map((p) => p.p99)]);
    this.charts.lag.update(xs, [{ label: 'flusher lag' }], [h.map((p) => p.lag)]);
  }

  resize() {
    for (const chart of Object.values(this.charts)) chart.resize();
  }
}

function openLive(id) {
  openPanel('panel-live');
  live = new LiveView(id);
  live.open();
}

// ---- the sale report ----------------------------------------------------------------------

class ReportView {
  constructor(id) {
    this.id = id;
    // A read in flight when the view closes is let finish and ignored (not aborted): it is
    // short, and an aborted request would look like a failure in the browser's log.
    this.closed = false;
    this.timer = 0;
    this.inFlight = false;
    this.again = false;
    this.chart = new Chart($('chart-report'), 'per minute');
  }

  open() {
    setText('report-title', this.id);
    $('report-rows').replaceChildren();
    for (const id of ['funnel-tokens', 'funnel-orders', 'funnel-orders-pct', 'funnel-paid', 'funnel-paid-pct', 'report-lag']) {
      setText(id, '–');
    }
    setText('report-updated', '');
    say($('report-error'), '');
    this.chart.update([], [], []);
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REPORT_REFRESH_MS);
  }

  close() {
    this.closed = true;
    clearInterval(this.timer);
    this.chart.destroy();
  }

  refresh() {
    if (this.closed) return;
    if (this.inFlight) {
      this.again = true;
      return;
    }
    this.inFlight = true;
    spawn(async () => {
      try {
        const { data } = await api('GET', `/admin/promotions/${enc(this.id)}/report`);
        if (this.closed) return;
        this.render(data);
        say($('report-error'), '');
      } finally {
        this.inFlight = false;
      }
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    }, (error) => {
      this.inFlight = false;
      this.again = false;
      if (!this.closed) say($('report-error'), `Cannot read the report: ${describe(error)}`);
    });
  }

  render(data) {
    this.renderStatuses(data.by_status || []);
    this.renderFunnel(data.funnel || {});
    setText('report-lag', data.sql_lag_s === null || data.sql_lag_s === undefined
      ? 'lag unknown' : `${formatRate(data.sql_lag_s)} s behind`);
    const updated = $('report-updated');
    updated.textContent = `updated ${new Date(serverNow()).toLocaleTimeString()}`;
    updated.dataset.count = String(Number(updated.dataset.count || 0) + 1);
    const minutes = data.orders_per_minute || [];
    this.chart.update(minutes.map((m) => Date.parse(m.minute) / 1000),
      [{ label: 'orders', bars: true }, { label: 'units' }],
      [minutes.map((m) => m.orders), minutes.map((m) => m.units)]);
  }

  renderStatuses(rows) {
    const numberCell = (testid, value, text) => el('td', { class: 'num', testid, dataset: { value: String(value) }, text });
    const tableRow = (name, orders, units, cents) => el('tr', { testid: `report-row-${name}` },
      el('td', { text: name.replaceAll('_', ' ') }),
      numberCell(`report-orders-${name}`, orders, formatCount(orders)),
      numberCell(`report-units-${name}`, units, formatCount(units)),
      numberCell(`report-revenue-${name}`, cents, formatCents(cents)));
    const body = rows.map((r) => tableRow(r.status, r.orders, r.units, r.revenue_cents));
    body.push(tableRow('total', sumOf(rows.map((r) => r.orders)), sumOf(rows.map((r) => r.units)),
      sumOf(rows.map((r) => r.revenue_cents))));
    body[body.length - 1].classList.add('total');
    $('report-rows').replaceChildren(...body);
  }

  renderFunnel(funnel) {
    const put = (id, value) => {
      setText(id, formatCount(value));
      $(id).dataset.value = String(value ?? '');
    };
    const percent = (part, whole) => (Number(whole) > 0 ? `${((100 * Number(part)) / Number(whole)).toFixed(1)} %` : '–');
    put('funnel-tokens', funnel.tokens_issued);
    put('funnel-orders', funnel.orders);
    put('funnel-paid', funnel.paid_orders);
    setText('funnel-orders-pct', percent(funnel.orders, funnel.tokens_issued));
    setText('funnel-paid-pct', percent(funnel.paid_orders, funnel.orders));
  }
}

function openReport(id) {
  openPanel('panel-report');
  report = new ReportView(id);
  report.open();
}

// ---- order lookup -------------------------------------------------------------------------

function onLookUpOrder(event) {
  event.preventDefault();
  const id = $('order-id').value.trim();
  openPanel('panel-order');
  setText('order-title', id);
  $('order-fields').replaceChildren();
  if (!ID_PATTERN.test(id)) {
    say($('order-error'), `An order id ${ID_RULE}.`);
    return;
  }
  say($('order-error'), '');
  spawn(async () => {
    const { data } = await api('GET', `/admin/orders/${enc(id)}`);
    renderOrder(data);
  }, (error) => say($('order-error'), `Cannot look up ${id}: ${describe(error)}`));
}

function renderOrder(order) {
  const fields = [...ORDER_FIELDS, ...Object.keys(order).filter((k) => !ORDER_FIELDS.includes(k))];
  const rows = fields.filter((field) => order[field] !== undefined).map((field) => {
    const value = order[field];
    const cell = el('td', { testid: `order-field-${field}`, text: typeof value === 'object' ? JSON.stringify(value) : String(value) });
    if (field.endsWith('_cents')) cell.title = formatCents(value);
    else if (typeof value === 'string' && /^\d{4}-\d\d-\d\dT/.test(value)) cell.title = formatLocal(value);
    return el('tr', {}, el('th', { text: field }), cell);
  });
  $('order-fields').replaceChildren(...rows);
}

// ---- wiring -------------------------------------------------------------------------------

let resizeFrame = 0;

function onResize() {
  cancelAnimationFrame(resizeFrame);
  resizeFrame = requestAnimationFrame(() => {
    if (live) live.resize();
    if (report) report.chart.resize();
  });
}

function init() {
  $('signin-form').addEventListener('submit', onSignIn);
  $('sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('show-create').addEventListener('click', openCreate);
  $('refresh-list').addEventListener('click', refreshList);
  $('add-item').addEventListener('click', addItemRow);
  $('create-form').addEventListener('submit', onCreate);
  $('order-form').addEventListener('submit', onLookUpOrder);
  $('report-refresh').addEventListener('click', () => report && report.refresh());
  $('live-start').addEventListener('click', () => live && runAction(live.id, 'start', $('live-start'), $('live-error')));
  $('live-stop').addEventListener('click', () => confirmThen($('live-stop'),
    () => live && runAction(live.id, 'stop', $('live-stop'), $('live-error'))));
  $('live-report').addEventListener('click', () => live && openReport(live.id));
  for (const button of document.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => closePanel(button.dataset.close));
  }
  window.addEventListener('resize', onResize);
  if (adminKey()) spawn(enter, (error) => showSignIn(describe(error)));
  else showSignIn('');
}

init();

// Shared harness for the pusher-js end-to-end scenarios.
//
// Every scenario is a standalone script: `node tests/e2e/js/NAME.mjs [ARGS]`, configured by
// PARLEY_E2E_HOST / _PORT / _APP_ID / _KEY / _SECRET. It prints what it does, then exits 0
// when every assertion held, or 1 with the reason (and the last frames each client saw).
// Nothing sleeps and hopes: every wait is on an event, a frame or an HTTP answer, with a
// deadline. Absence is proven with a barrier: a later frame that the server must send after
// the one that should not come (the server writes each connection's frames in order).

import http from 'node:http';
import readline from 'node:readline';
import Pusher from 'pusher-js';
import PusherServer from 'pusher';

export { Pusher, PusherServer };

const env = process.env;
export const cfg = {
  host: env.PARLEY_E2E_HOST || '127.0.0.1',
  port: Number(env.PARLEY_E2E_PORT),
  appId: env.PARLEY_E2E_APP_ID || '4242',
  key: env.PARLEY_E2E_KEY || 'test-key',
  secret: env.PARLEY_E2E_SECRET || 'test-secret',
  waitMs: Number(env.PARLEY_E2E_WAIT_MS || 8000),
  tls: Boolean(env.PARLEY_E2E_TLS), // wss and https (the CA in NODE_EXTRA_CA_CERTS)
};
if (!cfg.port) {
  console.error('PARLEY_E2E_PORT is not set');
  process.exit(2);
}
if (env.PARLEY_E2E_DEBUG) Pusher.logToConsole = true;

const started = Date.now();
export function log(...args) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(3)}]`, ...args);
}

export class Failure extends Error {}

export function check(condition, message, detail) {
  if (!condition) {
    throw new Failure(detail === undefined ? message : `${message}: ${show(detail)}`);
  }
}

export function equal(actual, expected, message) {
  const a = show(actual);
  const e = show(expected);
  if (a !== e) throw new Failure(`${message}: expected ${e}, got ${a}`);
}

export function show(value) {
  return typeof value === 'string' ? JSON.stringify(value) : JSON.stringify(sorted(value));
}

function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]));
  }
  return value;
}

let counter = 0;
export function unique(prefix) {
  counter += 1;
  return `${prefix}${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

// -- waiting ---------------------------------------------------------------------------------

/** A promise settled by `executor(resolve, reject)`, rejected after `ms` with `what`. */
export function within(what, executor, ms = cfg.waitMs) {
  let timer;
  let cleanup = () => {};
  const promise = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${ms} ms waiting for ${what}`)), ms);
    const result = executor(resolve, reject);
    if (typeof result === 'function') cleanup = result;
  });
  return promise.finally(() => {
    clearTimeout(timer);
    cleanup();
  });
}

/** The first argument of the next `event` emitted by a pusher-js Dispatcher. */
export function once(emitter, event, what = event, ms) {
  return onceArgs(emitter, event, what, ms).then((args) => args[0]);
}

/** All arguments of the next `event`, e.g. [data, metadata] for a channel event. */
export function onceArgs(emitter, event, what = event, ms) {
  return within(
    what,
    (resolve) => {
      const handler = (...args) => resolve(args);
      emitter.bind(event, handler);
      return () => emitter.unbind(event, handler);
    },
    ms,
  );
}

/** Poll `probe()` (an async HTTP question) until it returns a truthy value. */
export async function until(what, probe, ms = cfg.waitMs) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Failure(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// -- pusher-js clients -----------------------------------------------------------------------

const clients = [];

/**
 * A pusher-js client pointed at Parley only: ws on wsHost:wsPort, no TLS, no fallback, no
 * stats. Every frame it receives is kept in `client.frames` (decoded by pusher-js).
 */
export function client(label, options = {}) {
  const pusher = new Pusher(cfg.key, {
    cluster: 'parley', // pusher-js 8 demands one; unused because wsHost is set
    wsHost: cfg.host,
    wsPort: cfg.port,
    wssPort: cfg.port,
    forceTLS: cfg.tls,
    enabledTransports: ['ws'], // with forceTLS: wss
    disableStats: true,
    ...options,
  });
  return adopt(pusher, label);
}

/** Track a pusher-js client made elsewhere (e.g. by laravel-echo): log its frames. */
export function adopt(pusher, label) {
  pusher.label = label;
  pusher.frames = [];
  pusher.connection.bind('message', (message) => pusher.frames.push(message));
  clients.push(pusher);
  return pusher;
}

/** Resolves once the client is connected (now or later). */
export function connected(pusher) {
  if (pusher.connection.state === 'connected') return Promise.resolve(pusher.connection.socket_id);
  return within(`${pusher.label} to connect`, (resolve, reject) => {
    const handler = ({ current }) => {
      if (current === 'connected') resolve(pusher.connection.socket_id);
      if (current === 'failed') reject(new Failure(`${pusher.label}: connection failed`));
    };
    pusher.connection.bind('state_change', handler);
    return () => pusher.connection.unbind('state_change', handler);
  });
}

/** Subscribe and wait for pusher:subscription_succeeded; rejects on subscription_error. */
export function subscribe(pusher, name) {
  const channel = pusher.subscribe(name);
  return within(`${pusher.label} to subscribe to ${name}`, (resolve, reject) => {
    const ok = (data) => resolve(channel);
    const bad = (error) => reject(new Failure(`${pusher.label}: subscription_error on ${name}: ${show(error)}`));
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', bad);
    return () => {
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', bad);
    };
  });
}

/** A frame received by `pusher` matching `predicate`: from index `since` of its log on. */
export function frame(pusher, predicate, what, since = pusher.frames.length) {
  return within(`${pusher.label}: ${what}`, (resolve) => {
    const seen = pusher.frames.slice(since).find(predicate);
    if (seen) {
      resolve(seen);
      return undefined;
    }
    const handler = (message) => {
      if (predicate(message)) resolve(message);
    };
    pusher.connection.bind('message', handler);
    return () => pusher.connection.unbind('message', handler);
  });
}

/**
 * Barrier on one connection: subscribe to a fresh public channel, wait for its
 * subscription_succeeded, unsubscribe. The server handles each connection's frames in order,
 * so every frame `pusher` sent before has been processed, and every frame the server wrote to
 * it before has arrived.
 */
export async function sync(pusher) {
  const name = unique('sync-');
  await subscribe(pusher, name);
  pusher.unsubscribe(name);
}

/** Frames of `pusher` (from index `since`) for `channel`, optionally named `event`. */
export function framesFor(pusher, channel, event, since = 0) {
  return pusher.frames
    .slice(since)
    .filter((m) => m.channel === channel && (event === undefined || m.event === event));
}

/** Wait until the client has signed in and its #server-to-user channel is subscribed. */
export function signedIn(pusher, userId, since = 0) {
  return frame(
    pusher,
    (m) =>
      m.event === 'pusher_internal:subscription_succeeded' &&
      m.channel === `#server-to-user-${userId}`,
    `signin as ${userId} (#server-to-user-${userId} subscribed)`,
    since,
  );
}

// -- the npm `pusher` server SDK -------------------------------------------------------------

export function serverSdk(extra = {}) {
  return new PusherServer({
    appId: cfg.appId,
    key: cfg.key,
    secret: cfg.secret,
    host: cfg.host,
    port: String(cfg.port),
    useTLS: cfg.tls,
    timeout: cfg.waitMs,
    ...extra,
  });
}

/** GET /apps/{id}/channels/{name} with `info`, as parsed JSON. */
export async function channelInfo(sdk, name, info) {
  const params = info ? { info } : {};
  const res = await sdk.get({ path: `/channels/${encodeURIComponent(name)}`, params });
  return res.json();
}

// -- the auth endpoint: a real HTTP server signing with the npm SDK ---------------------------

/**
 * POST /pusher/auth (also any path ending in /auth, e.g. /broadcasting/auth) and
 * POST /pusher/user-auth, form-encoded as pusher-js sends them. Extra form fields, sent by
 * pusher-js from `params`, steer the answer:
 *   user_id, user_info (JSON)  presence member, or signin user
 *   watchlist                  comma-separated ids (signin)
 *   mode=bad-signature         sign with the wrong secret
 *   mode=signin-only           presence: sign socket_id:channel only, no channel_data
 * `requests` keeps every request's fields.
 */
export async function authServer(sdk) {
  const wrong = serverSdk({ secret: `${cfg.secret}-but-wrong` });
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const form = Object.fromEntries(new URLSearchParams(body));
      requests.push({ path: req.url, method: req.method, headers: req.headers, form });
      let answer;
      try {
        answer = authorize(req.url, form);
      } catch (error) {
        res.writeHead(403, { 'content-type': 'text/plain' });
        res.end(String(error));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
  });

  function authorize(path, form) {
    if (path.endsWith('/user-auth')) {
      const user = { id: form.user_id };
      if (form.user_info) user.user_info = JSON.parse(form.user_info);
      if (form.watchlist) user.watchlist = form.watchlist.split(',');
      return sdk.authenticateUser(form.socket_id, user);
    }
    if (path.endsWith('/auth')) {
      const signer = form.mode === 'bad-signature' ? wrong : sdk;
      const name = form.channel_name;
      if (name.startsWith('presence-') && form.mode !== 'signin-only') {
        const member = { user_id: form.user_id };
        if (form.user_info) member.user_info = JSON.parse(form.user_info);
        return signer.authorizeChannel(form.socket_id, name, member);
      }
      return signer.authorizeChannel(form.socket_id, name);
    }
    throw new Error(`no such auth path ${path}`);
  }

  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    requests,
    channelEndpoint: `${base}/pusher/auth`,
    userEndpoint: `${base}/pusher/user-auth`,
    close: () => server.close(),
    /** pusher-js options for a client authenticating here with these extra form fields. */
    options(params = {}, userParams = params) {
      return {
        channelAuthorization: { endpoint: `${base}/pusher/auth`, transport: 'ajax', params },
        userAuthentication: { endpoint: `${base}/pusher/user-auth`, transport: 'ajax', params: userParams },
      };
    },
  };
}

// -- coordination with the pytest side --------------------------------------------------------

let stdinLines;
/** Print `@@step NAME` and wait for the test to answer `@@go NAME` on stdin. */
export function step(name, ms = 30000) {
  if (!stdinLines) {
    const rl = readline.createInterface({ input: process.stdin });
    stdinLines = [];
    stdinLines.waiters = [];
    rl.on('line', (line) => {
      stdinLines.push(line.trim());
      stdinLines.waiters.forEach((w) => w());
    });
  }
  console.log(`@@step ${name}`);
  return within(`the test to answer step ${name}`, (resolve) => {
    const look = () => {
      if (stdinLines.includes(`@@go ${name}`)) resolve();
    };
    stdinLines.waiters.push(look);
    look();
  }, ms);
}

// -- running ---------------------------------------------------------------------------------

function dumpFrames() {
  for (const pusher of clients) {
    const tail = pusher.frames.slice(-15).map((m) => `    ${show(m)}`).join('\n');
    console.log(`  ${pusher.label} (state ${pusher.connection.state}, socket ${pusher.connection.socket_id}), last frames:\n${tail}`);
  }
}

function finish(code, message) {
  if (message) console.log(message);
  if (code !== 0) dumpFrames();
  for (const pusher of clients) {
    try {
      pusher.disconnect();
    } catch {
      // already gone
    }
  }
  // Let stdout flush before leaving.
  process.stdout.write('', () => process.exit(code));
}

/** Run `body` with a hard deadline: exit 0 on success, 1 on any failure. */
export function run(name, body, { timeoutMs = 25000 } = {}) {
  const deadline = setTimeout(() => finish(1, `FAIL ${name}: hard timeout of ${timeoutMs} ms`), timeoutMs);
  process.on('unhandledRejection', (error) => finish(1, `FAIL ${name}: unhandled rejection ${error?.stack || error}`));
  log(`scenario ${name} against ${cfg.host}:${cfg.port}`);
  Promise.resolve()
    .then(body)
    .then(
      () => {
        clearTimeout(deadline);
        finish(0, `PASS ${name}`);
      },
      (error) => {
        clearTimeout(deadline);
        const text = error instanceof Failure ? error.message : error?.stack || String(error);
        finish(1, `FAIL ${name}: ${text}`);
      },
    );
}

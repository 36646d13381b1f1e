// pusher-js in Debian's Chromium, driven by playwright-core (never a downloaded browser). The
// browser's own WebSocket does the handshake, whose 101 answer carries
// pusher:connection_established in the same write. Two page connections subscribe to a public
// and a private channel (signed by the npm SDK, as an app server would), receive an event
// triggered with the SDK and exchange a client event; a wrong app key gets pusher-js's error
// 4001 and stays unconnected.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { cfg, check, equal, log, run, serverSdk, unique } from './lib.mjs';

const require = createRequire(import.meta.url);
const pusherJs = readFileSync(require.resolve('pusher-js/dist/web/pusher.min.js'), 'utf8');

// Runs in the page: a promise that fails after `ms` unless `arm` resolves it.
const IN_PAGE = `
window.within = (what, arm, ms = 8000) => new Promise((resolve, reject) => {
  const t = setTimeout(() => reject(new Error('timed out: ' + what)), ms);
  arm((v) => { clearTimeout(t); resolve(v); });
});`;

run('browser', async () => {
  const sdk = serverSdk();
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => log('page error:', e.message));
    await page.exposeFunction('authorize', (socketId, name) => sdk.authorizeChannel(socketId, name).auth);
    await page.addScriptTag({ content: pusherJs });
    await page.addScriptTag({ content: IN_PAGE });
    const options = { wsHost: cfg.host, wsPort: cfg.port, forceTLS: false, enabledTransports: ['ws'], cluster: 'local' };
    const channel = unique('browser-');
    const privateChannel = `private-${unique('browser-')}`;

    const ids = await page.evaluate(async ({ key, options, channel, privateChannel }) => {
      const open = (name) => {
        const p = new Pusher(key, {
          ...options,
          channelAuthorization: {
            customHandler: ({ socketId, channelName }, cb) =>
              window.authorize(socketId, channelName).then((auth) => cb(null, { auth }), (e) => cb(e, null)),
          },
        });
        window[name] = p;
        return window.within(`${name} connected`, (ok) => p.connection.bind('connected', ok));
      };
      await Promise.all([open('a'), open('b')]);
      window.fromApi = [];
      window.hello = [];
      const pub = window.a.subscribe(channel);
      pub.bind('from-api', (d) => window.fromApi.push(d));
      window.privA = window.a.subscribe(privateChannel);
      const privB = window.b.subscribe(privateChannel);
      privB.bind('client-hello', (d) => window.hello.push(d));
      await Promise.all([pub, window.privA, privB].map((c) =>
        window.within(`${c.name} subscribed`, (ok) => c.bind('pusher:subscription_succeeded', ok))));
      return [window.a.connection.socket_id, window.b.connection.socket_id];
    }, { key: cfg.key, options, channel, privateChannel });
    check(ids.every((id) => /^\d+\.\d+$/.test(id)) && ids[0] !== ids[1], 'two socket ids', ids);
    log('two Chromium connections subscribed:', ids.join(', '));

    const payload = { text: 'ünïcødé ✓', n: 7 };
    const res = await sdk.trigger(channel, 'from-api', payload);
    equal(res.status, 200, 'trigger status');
    const gotApi = await page.evaluate(() => window.within('from-api', (ok) => {
      const poll = () => (window.fromApi.length ? ok(window.fromApi) : setTimeout(poll, 10));
      poll();
    }));
    equal(gotApi, [payload], 'the SDK event reached the browser');

    const gotHello = await page.evaluate(() => {
      window.privA.trigger('client-hello', { from: 'a' });
      return window.within('client-hello', (ok) => {
        const poll = () => (window.hello.length ? ok(window.hello) : setTimeout(poll, 10));
        poll();
      });
    });
    equal(gotHello, [{ from: 'a' }], 'the client event reached the other connection');
    log('SDK event and client event delivered in the browser');

    const refused = await page.evaluate(async (options) => {
      const p = new Pusher('no-such-key', options);
      const error = await window.within('error 4001', (ok) => p.connection.bind('error', ok));
      const state = p.connection.state;
      p.disconnect();
      // pusher-js 8 hands the server's pusher:error on as {type: 'WebSocketError', error: {type: 'PusherError', data}}
      return { code: error?.error?.data?.code, state, raw: JSON.stringify(error).slice(0, 300) };
    }, options);
    equal(refused.code, 4001, `a wrong key gets 4001 (${refused.raw})`);
    check(refused.state !== 'connected', 'and is not connected', refused.state);
    log('wrong key refused with 4001 in the browser, state', refused.state);
  } finally {
    await browser.close();
  }
});

// Drain and restart: the test stops the server (SIGTERM: every connection closed with 4200),
// then starts it again on the same port. pusher-js reconnects by itself, with a new socket_id,
// signs in again and resubscribes every channel, and events flow again.
//
// Timing: pusher-js retries at once on 4200, while the port is closed between the two server
// processes. Under Node (faye-websocket) that refused attempt is only given up when the
// connection strategy's 15 s timeout fires, so the reconnect takes ~15 s here; hence the
// longer deadlines. (A browser's WebSocket reports the refusal at once.)
import {
  authServer, check, client, connected, equal, log, once, run, serverSdk, signedIn,
  step, subscribe, unique,
} from './lib.mjs';

const RECONNECT_MS = 40000;

run('reconnect_drain', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const names = [unique('news-'), unique('private-inbox-'), unique('presence-room-')];

  const a = client('a', auth.options({ user_id: 'ann', user_info: '{"name":"Ann"}' }, { user_id: 'ann' }));
  a.signin();
  const firstSocket = await connected(a);
  await signedIn(a, 'ann', 0);
  const channels = await Promise.all(names.map((n) => subscribe(a, n)));

  const closeCodes = [];
  const states = [];
  a.connection.bind('error', (e) => {
    if (e && e.type === 'WebSocketError' && e.error && e.error.data) closeCodes.push(e.error.data.code);
  });
  a.connection.bind('state_change', ({ current }) => states.push(current));
  const resubscribed = names.map((n, i) => once(channels[i], 'pusher:subscription_succeeded', `resubscription to ${n}`, RECONNECT_MS));
  const since = a.frames.length;

  log('asking the test to drain and restart the server');
  await step('drain');

  await Promise.all(resubscribed);
  const secondSocket = await connected(a);
  log('reconnected as', secondSocket, 'states', states.join(' > '));
  check(closeCodes.includes(4200), 'pusher-js saw the drain close code 4200', closeCodes);
  check(secondSocket !== firstSocket, 'a new socket_id after reconnecting', { firstSocket, secondSocket });
  check(!states.includes('failed'), 'never failed', states);
  const drainError = a.frames.slice(since).find((m) => m.event === 'pusher:error');
  check(drainError && drainError.data.code === 4200, 'the drain was announced with pusher:error 4200', drainError);

  // Signed in again on the new connection, and every channel delivers.
  await signedIn(a, 'ann', since);
  for (const [i, name] of names.entries()) {
    const got = once(channels[i], 'after-restart', `${name}: after-restart`);
    await sdk.trigger(name, 'after-restart', { i });
    equal(await got, { i }, `event on ${name} after the restart`);
  }
  equal(channels[2].members.me, { id: 'ann', info: { name: 'Ann' } }, 'presence members.me after resubscribing');
  const direct = once(a.user, 'welcome-back', 'ann: welcome-back');
  await sdk.sendToUser('ann', 'welcome-back', {});
  await direct;
  log('events flow again after the restart');
  auth.close();
}, { timeoutMs: 55000 });

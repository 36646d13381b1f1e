// subscription_count (app option on): pusher-js emits pusher:subscription_count with the
// number of connections on the channel, every time it changes; never on presence channels.
// With PARLEY_E2E_PORTS (three nodes of a cluster), clients a, b and c each talk to another
// node, and every count is the cluster's.
import {
  authServer, channelInfo, client, connected, equal, log, once, run, serverSdk, subscribe, unique,
} from './lib.mjs';

const PORTS = (process.env.PARLEY_E2E_PORTS || '').split(',').filter(Boolean).map(Number);
/** The connection options of the i-th client: its own node in a cluster. */
const at = (i) => (PORTS.length ? { wsPort: PORTS[i % PORTS.length], wssPort: PORTS[i % PORTS.length] } : {});

function counts(channel) {
  const seen = [];
  channel.bind('pusher:subscription_count', (data) => seen.push(data.subscription_count));
  return seen;
}

function countIs(channel, n, who) {
  return new Promise((resolve, reject) => {
    once(channel, 'pusher:subscription_count', `${who}: subscription_count ${n}`).then((data) => {
      if (data.subscription_count === n) resolve(data);
      else reject(new Error(`${who}: subscription_count ${data.subscription_count}, expected ${n}`));
    }, reject);
  });
}

async function countPart(sdk, name, options) {
  const [a, b, c] = ['a', 'b', 'c'].map((l, i) => client(`${l} on ${name}`, { ...options, ...at(i) }));
  await Promise.all([a, b, c].map(connected));

  const chA = a.subscribe(name);
  const seenA = counts(chA);
  await countIs(chA, 1, 'a alone');
  equal(chA.subscriptionCount, 1, 'channel.subscriptionCount with a alone');

  const toA2 = countIs(chA, 2, 'a after b joined');
  const chB = b.subscribe(name);
  const seenB = counts(chB);
  await Promise.all([toA2, countIs(chB, 2, 'b after joining')]);

  const toA3 = countIs(chA, 3, 'a after c joined');
  const toB3 = countIs(chB, 3, 'b after c joined');
  await subscribe(c, name);
  await Promise.all([toA3, toB3]);
  equal((await channelInfo(sdk, name, 'subscription_count')).subscription_count, 3, 'HTTP API agrees');

  const toA2again = countIs(chA, 2, 'a after b left');
  b.unsubscribe(name);
  await toA2again;
  const toA1 = countIs(chA, 1, 'a after c disconnected');
  c.disconnect();
  await toA1;
  equal(chA.subscriptionCount, 1, 'channel.subscriptionCount at the end');
  equal(seenA, [1, 2, 3, 2, 1], 'every count a was told');
  equal(seenB, [2, 3], 'every count b was told');
  log(`${name}: counts ${seenA.join(' ')}`);
}

run('subscription_count', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  await countPart(sdk, unique('counted-'), {});
  await countPart(sdk, unique('private-counted-'), auth.options());

  // Presence channels have member counts instead: no subscription_count events.
  const room = unique('presence-room-');
  const p = client('p', auth.options({ user_id: 'p1' }));
  const q = client('q', auth.options({ user_id: 'q1' }));
  await Promise.all([connected(p), connected(q)]);
  const chP = await subscribe(p, room);
  const seenP = counts(chP);
  await subscribe(q, room);
  const barrier = once(chP, 'barrier', 'p: barrier');
  await sdk.trigger(room, 'barrier', {});
  await barrier;
  equal(seenP, [], 'subscription_count events on a presence channel');
  auth.close();
});

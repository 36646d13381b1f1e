// Three Parley nodes on one Redis and one PostgreSQL (PARLEY_E2E_PORTS: their ports), used
// by unmodified pusher-js and the npm SDK as if they were one server. Each client and each
// SDK talks to one node. Every subscriber, whatever its node, gets every event exactly once,
// and all of them in the same order: the channel's offsets, assigned once per event.
import {
  authServer, check, client, connected, equal, log, run, serverSdk, subscribe, unique, within,
} from './lib.mjs';

const PORTS = (process.env.PARLEY_E2E_PORTS || '').split(',').map(Number);
check(PORTS.length === 3, 'PARLEY_E2E_PORTS names three ports', PORTS);
const node = (i, options = {}) => ({ wsPort: PORTS[i], wssPort: PORTS[i], ...options });

/** The data of the events named `event` on `channel` that `pusher` received, in order. */
function received(pusher, channel, event) {
  return pusher.frames
    .filter((m) => m.channel === channel && m.event === event)
    .map((m) => (typeof m.data === 'string' ? JSON.parse(m.data) : m.data));
}

/** The channel's history in offset order, through the node `sdk` talks to: [offset, data]. */
async function history(sdk, channel) {
  const res = await sdk.get({ path: `/channels/${encodeURIComponent(channel)}/history`, params: { limit: 1000 } });
  equal(res.status, 200, 'history status');
  const page = await res.json();
  return page.events.map((e) => [e.parley.offset, typeof e.data === 'string' ? JSON.parse(e.data) : e.data]);
}

function arrived(pusher, channel, event, count) {
  return within(`${pusher.label}: ${count} ${event} on ${channel}`, (resolve) => {
    const poll = () => received(pusher, channel, event).length >= count && resolve();
    poll();
    pusher.connection.bind('message', poll);
    return () => pusher.connection.unbind('message', poll);
  });
}

/** Every client got exactly `order` (the channel's offset order, from history). */
function inOffsetOrder(clients, channel, event, order) {
  for (const c of clients) equal(received(c, channel, event), order, `${c.label}: ${event} once each, in offset order`);
}

run('cluster', async () => {
  const auth = await authServer(serverSdk({ port: String(PORTS[0]) }));
  const users = ['ann', 'bob', 'cyd'];
  const clients = users.map((u, i) => client(`${u}@node${i + 1}`, node(i, auth.options({ user_id: u }))));
  await Promise.all(clients.map(connected));

  // 1. client events: each user sends a burst from its node; the others get them all
  const room = unique('private-room-');
  const channels = [];
  for (const c of clients) channels.push(await subscribe(c, room));
  const BURST = 100;
  channels.forEach((ch, i) => {
    for (let n = 0; n < BURST; n++) ch.trigger('client-msg', { from: users[i], n });
  });
  for (const c of clients) await arrived(c, room, 'client-msg', 2 * BURST);
  const stored = (await history(serverSdk({ port: String(PORTS[2]) }), room)).map(([, d]) => d);
  equal(stored.length, 3 * BURST, 'history holds every client event once');
  for (const [i, c] of clients.entries()) {
    const events = received(c, room, 'client-msg');
    equal(events, stored.filter((d) => d.from !== users[i]), `${c.label}: the others' events in offset order`);
    for (const other of users.filter((u) => u !== users[i])) {
      equal(
        events.filter((d) => d.from === other).map((d) => d.n),
        Array.from({ length: BURST }, (_, n) => n),
        `${c.label}: ${other}'s events once each, in the order sent`,
      );
    }
  }
  log(`client events: ${BURST} from each of 3 nodes reached the other two in order`);

  // 2. HTTP API events through two different nodes: one order for everybody
  const news = unique('news-');
  for (const c of clients) await subscribe(c, news);
  const sdks = [serverSdk({ port: String(PORTS[1]) }), serverSdk({ port: String(PORTS[2]) })];
  const COUNT = 60;
  await Promise.all(sdks.map(async (sdk, s) => {
    for (let n = 0; n < COUNT; n++) {
      const res = await sdk.trigger(news, 'headline', { via: s, n });
      equal(res.status, 200, 'trigger status');
    }
  }));
  for (const c of clients) await arrived(c, news, 'headline', 2 * COUNT);
  const headlines = await history(sdks[0], news);
  equal(headlines.map(([o]) => o), Array.from({ length: 2 * COUNT }, (_, k) => k + 1), 'offsets 1.. without a gap');
  inOffsetOrder(clients, news, 'headline', headlines.map(([, d]) => d));
  log(`API events: ${2 * COUNT} through nodes 2 and 3 reached all three in one order`);
  auth.close();
});

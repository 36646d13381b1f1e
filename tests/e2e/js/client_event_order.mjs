// Ordering (PUSHER.md §1.6): a connection's frames are handled strictly in order, so a burst
// of client events from one sender reaches every other subscriber in the order sent, on a
// private and on a presence channel. Run with the client event rate limit lifted.
import { authServer, client, connected, equal, log, run, serverSdk, subscribe, unique, within } from './lib.mjs';

const BURST = 300;

async function burst(auth, name) {
  const a = client(`sender on ${name}`, auth.options({ user_id: 'sender' }));
  const b = client(`receiver on ${name}`, auth.options({ user_id: 'receiver' }));
  await Promise.all([connected(a), connected(b)]);
  const chA = await subscribe(a, name);
  const chB = await subscribe(b, name);
  const got = [];
  const all = within(`${BURST} client events on ${name}`, (resolve) => {
    chB.bind('client-n', (data) => {
      got.push(data.n);
      if (got.length === BURST) resolve();
    });
  });
  for (let i = 0; i < BURST; i++) chA.trigger('client-n', { n: i, pad: 'x'.repeat(i % 64) });
  await all;
  equal(got, Array.from({ length: BURST }, (_, i) => i), `order of client events on ${name}`);
  log(`${name}: ${BURST} client events arrived in order`);
}

run('client_event_order', async () => {
  const auth = await authServer(serverSdk());
  await burst(auth, unique('private-burst-'));
  await burst(auth, unique('presence-burst-'));
  auth.close();
});

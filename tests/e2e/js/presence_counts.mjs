// A presence channel whose member events are off (the app's presence_events_off matches
// presence-big-*): pusher-js still subscribes, has members.me and members.count from the
// subscription's answer, and follows the count through parley:member_count {count}; it gets
// no pusher:member_added / pusher:member_removed. Argument "me-only": the answer lists the
// joiner alone (members.each sees only members.me), as Parley sends it on such channels.
import {
  authServer, channelInfo, client, connected, equal, log, once, run, serverSdk, subscribe,
  unique,
} from './lib.mjs';

const meOnly = process.argv[2] === 'me-only';

function memberList(channel) {
  const out = {};
  channel.members.each((m) => (out[m.id] = m.info));
  return out;
}

function countIs(channel, n, who) {
  return new Promise((resolve, reject) => {
    once(channel, 'parley:member_count', `${who}: member count ${n}`).then((data) => {
      if (data.count === n) resolve(data);
      else reject(new Error(`${who}: parley:member_count ${data.count}, expected ${n}`));
    }, reject);
  });
}

run('presence_counts', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const as = (label, id, name) => client(label, auth.options({ user_id: id, user_info: JSON.stringify({ name }) }));
  const room = unique('presence-big-');

  const a = as('alice', 'alice', 'Alice');
  await connected(a);
  const roomA = a.subscribe(room);
  const seenA = [];
  const eventsA = [];
  roomA.bind('parley:member_count', (data) => seenA.push(data.count));
  roomA.bind('pusher:member_added', (m) => eventsA.push(['added', m.id]));
  roomA.bind('pusher:member_removed', (m) => eventsA.push(['removed', m.id]));
  const aloneA = countIs(roomA, 1, 'alice alone');
  await subscribe(a, room);
  await aloneA;
  equal(roomA.members.me, { id: 'alice', info: { name: 'Alice' } }, 'alice members.me');
  equal(roomA.members.count, 1, 'alice members.count');

  // bob joins: alice is told the count, not the member
  const b = as('bob', 'bob', 'Bob');
  await connected(b);
  const toA2 = countIs(roomA, 2, 'alice after bob joined');
  const roomB = await subscribe(b, room);
  await toA2;
  equal(roomB.members.me, { id: 'bob', info: { name: 'Bob' } }, 'bob members.me');
  equal(roomB.members.count, 2, 'bob members.count (the answer\'s count)');
  if (meOnly) equal(memberList(roomB), { bob: { name: 'Bob' } }, 'bob sees himself alone');

  // carol joins, bob leaves
  const c = as('carol', 'carol', 'Carol');
  await connected(c);
  const toA3 = countIs(roomA, 3, 'alice after carol joined');
  const toB3 = countIs(roomB, 3, 'bob after carol joined');
  const roomC = c.subscribe(room);
  const toC3 = countIs(roomC, 3, 'carol after joining'); // (before carol's own count arrives)
  await subscribe(c, room);
  await Promise.all([toA3, toB3, toC3]);
  equal(roomC.members.count, 3, 'carol members.count');
  const toA2again = countIs(roomA, 2, 'alice after bob left');
  const toC2 = countIs(roomC, 2, 'carol after bob left');
  b.disconnect();
  await Promise.all([toA2again, toC2]);

  // barrier: anything about those joins and leaves reached alice before this event
  const barrier = once(roomA, 'barrier', 'alice: barrier');
  await sdk.trigger(room, 'barrier', {});
  await barrier;
  equal(eventsA, [], 'no pusher:member_added / member_removed at alice');
  equal(seenA, [1, 2, 3, 2], 'every count alice was told');
  equal(roomA.members.me, { id: 'alice', info: { name: 'Alice' } }, 'alice members.me at the end');
  equal((await channelInfo(sdk, room, 'user_count')).user_count, 2, 'HTTP API user_count');
  const users = await (await sdk.get({ path: `/channels/${room}/users`, params: { limit: '1' } })).json();
  equal(users.users, [{ id: 'alice' }], 'first page of users (limit 1)');
  const rest = await (await sdk.get({ path: `/channels/${room}/users`, params: { after: String(users.next) } })).json();
  equal(rest, { users: [{ id: 'carol' }], next: null }, 'the page after it');
  log(`counts at alice: ${seenA.join(' ')}`);
  auth.close();
});

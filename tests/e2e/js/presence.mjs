// Presence: members.me, member_added / member_removed, count; and one user on two
// connections is one member (one member_added, no member_removed until both have left).
import {
  authServer, channelInfo, check, client, connected, equal, log, once, run, serverSdk,
  subscribe, unique, until,
} from './lib.mjs';

function memberList(channel) {
  const out = {};
  channel.members.each((m) => (out[m.id] = m.info));
  return out;
}

run('presence', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const as = (label, id, name) => client(label, auth.options({ user_id: id, user_info: JSON.stringify({ name }) }));
  const room = unique('presence-room-');

  // alice alone.
  const a = as('alice', 'alice', 'Alice');
  await connected(a);
  const roomA = await subscribe(a, room);
  equal(roomA.members.me, { id: 'alice', info: { name: 'Alice' } }, 'alice members.me');
  equal(roomA.members.count, 1, 'count with alice alone');

  const addedAtA = [];
  const removedAtA = [];
  roomA.bind('pusher:member_added', (m) => addedAtA.push(m));
  roomA.bind('pusher:member_removed', (m) => removedAtA.push(m));

  // bob joins: alice is told; bob sees both.
  const b = as('bob', 'bob', 'Bob');
  await connected(b);
  const bobAdded = once(roomA, 'pusher:member_added', 'alice: member_added bob');
  const roomB = await subscribe(b, room);
  equal(await bobAdded, { id: 'bob', info: { name: 'Bob' } }, 'member_added for bob');
  equal(roomB.members.me, { id: 'bob', info: { name: 'Bob' } }, 'bob members.me');
  equal(memberList(roomB), { alice: { name: 'Alice' }, bob: { name: 'Bob' } }, 'bob sees the members');
  equal(roomA.members.count, 2, 'alice count after bob joined');
  equal(roomB.members.count, 2, 'bob count');

  // carol on two connections: one member_added, count 3 everywhere.
  const c1 = as('carol-1', 'carol', 'Carol');
  const c2 = as('carol-2', 'carol', 'Carol');
  await Promise.all([connected(c1), connected(c2)]);
  const carolAdded = once(roomA, 'pusher:member_added', 'alice: member_added carol');
  await subscribe(c1, room);
  equal(await carolAdded, { id: 'carol', info: { name: 'Carol' } }, 'member_added for carol');
  const roomC2 = await subscribe(c2, room);
  equal(roomC2.members.count, 3, "carol's second connection counts 3 members");
  equal(roomC2.members.me, { id: 'carol', info: { name: 'Carol' } }, 'carol (2nd connection) members.me');

  // Barrier: an event triggered now reaches alice after anything about carol's 2nd join.
  // It is also a trigger with info: users are counted once, connections each.
  const barrier1 = once(roomA, 'barrier-1', 'alice: barrier-1');
  const counted = await (await sdk.trigger(room, 'barrier-1', {}, { info: 'user_count,subscription_count' })).json();
  await barrier1;
  equal(counted.channels[room].user_count, 3, 'trigger info user_count');
  if ('subscription_count' in counted.channels[room]) {
    equal(counted.channels[room].subscription_count, 4, 'trigger info subscription_count on presence');
  }
  equal(addedAtA.map((m) => m.id), ['bob', 'carol'], 'member_added events at alice (carol once)');
  equal(roomA.members.count, 3, 'alice count with carol twice');
  equal(await channelInfo(sdk, room, 'user_count,subscription_count'), { occupied: true, user_count: 3, subscription_count: 4 }, 'channel info');
  const users = await (await sdk.get({ path: `/channels/${room}/users` })).json();
  equal(users.users.map((u) => u.id).sort(), ['alice', 'bob', 'carol'], 'users endpoint lists carol once');

  // carol's first connection goes away: she is still a member.
  c1.disconnect();
  await until('the server to drop carol\'s first connection', async () => (await channelInfo(sdk, room, 'subscription_count')).subscription_count === 3);
  const barrier2 = once(roomA, 'barrier-2', 'alice: barrier-2');
  await sdk.trigger(room, 'barrier-2', {});
  await barrier2;
  equal(removedAtA, [], 'no member_removed while carol has a connection left');
  equal(roomA.members.count, 3, 'alice count after carol lost one connection');

  // ... and her last one: now she is removed, once.
  const carolRemoved = once(roomA, 'pusher:member_removed', 'alice: member_removed carol');
  c2.unsubscribe(room);
  equal(await carolRemoved, { id: 'carol', info: { name: 'Carol' } }, 'member_removed for carol');
  equal(roomA.members.count, 2, 'alice count after carol left');

  // bob leaves by disconnecting.
  const bobRemoved = once(roomA, 'pusher:member_removed', 'alice: member_removed bob');
  b.disconnect();
  equal((await bobRemoved).id, 'bob', 'member_removed for bob');
  equal(roomA.members.count, 1, 'alice alone again');
  equal(removedAtA.map((m) => m.id), ['carol', 'bob'], 'member_removed events at alice');
  check(roomA.members.get('alice'), 'alice is still a member');
  log('presence membership correct');
  auth.close();
});

// Signin through a real user-auth endpoint (npm SDK authenticateUser); sendToUser reaches
// every connection signed in as that user and no one else; watchlist online / offline.
import {
  authServer, channelInfo, check, client, connected, equal, log, once, run, serverSdk,
  signedIn, subscribe, unique, until,
} from './lib.mjs';

function signedInClient(auth, label, userId, extra = {}) {
  const pusher = client(label, auth.options({}, { user_id: userId, ...extra }));
  pusher.signin();
  return pusher;
}

async function sendToUserPart(sdk, auth) {
  const x1 = signedInClient(auth, 'user-1 #1', 'user-1', { user_info: '{"name":"One"}' });
  const x2 = signedInClient(auth, 'user-1 #2', 'user-1');
  const y = signedInClient(auth, 'user-2', 'user-2');
  const z = client('anonymous');
  await Promise.all([x1, x2, y, z].map(connected));
  await Promise.all([signedIn(x1, 'user-1', 0), signedIn(x2, 'user-1', 0), signedIn(y, 'user-2', 0)]);
  equal(x1.user.user_data, { id: 'user-1', user_info: { name: 'One' } }, 'pusher.user.user_data after signin');

  const userAuth = auth.requests.filter((r) => r.path === '/pusher/user-auth');
  equal(userAuth.length, 3, 'user-auth endpoint calls');
  equal(userAuth.map((r) => r.form.socket_id).sort(), [x1, x2, y].map((p) => p.connection.socket_id).sort(), 'user-auth got each socket_id');

  const seen = { y: [], z: [] };
  y.user.bind('notify', (d) => seen.y.push(d));
  z.bind_global((event, data) => seen.z.push([event, data]));
  const got1 = once(x1.user, 'notify', 'user-1 #1: notify');
  const got2 = once(x2.user, 'notify', 'user-1 #2: notify');
  const res = await sdk.sendToUser('user-1', 'notify', { text: 'for user-1' });
  equal(res.status, 200, 'sendToUser status');
  equal(await got1, { text: 'for user-1' }, 'first connection of user-1 got it');
  equal(await got2, { text: 'for user-1' }, 'second connection of user-1 got it');

  // Barrier for user-2: a message to user-2 arrives after anything sent before.
  const barrier = once(y.user, 'barrier', 'user-2: barrier');
  await sdk.sendToUser('user-2', 'barrier', {});
  await barrier;
  equal(seen.y, [], 'user-2 received what was sent to user-1');
  const zFrames = z.frames.filter((m) => String(m.channel || '').startsWith('#server-to-user'));
  equal(zFrames, [], 'an anonymous connection received server-to-user frames');
  log('sendToUser reached both connections of user-1 only');
}

async function watchlistPart(sdk, auth) {
  const b1Id = unique('bee-');
  const cId = unique('cee-');
  const watcherId = unique('watcher-');
  const a = client('watcher', auth.options({}, { user_id: watcherId, watchlist: `${b1Id},${cId}` }));
  const events = [];
  a.user.watchlist.bind('online', (e) => events.push(['online', e.user_ids]));
  a.user.watchlist.bind('offline', (e) => events.push(['offline', e.user_ids]));
  const initial = once(a.user.watchlist, 'offline', 'watcher: initial offline status');
  a.signin();
  await connected(a);
  await signedIn(a, watcherId, 0);
  const first = await initial;
  equal(first.user_ids.slice().sort(), [b1Id, cId].sort(), 'initial status: both watched users offline');

  // B signs in on one connection: online.
  const online = once(a.user.watchlist, 'online', 'watcher: online');
  const b1 = signedInClient(auth, 'bee #1', b1Id);
  await connected(b1);
  equal((await online).user_ids, [b1Id], 'online event names B');

  // B's second connection: B was already online, nothing new for the watcher.
  const b2 = signedInClient(auth, 'bee #2', b1Id);
  await connected(b2);
  await signedIn(b2, b1Id, 0);
  const probe = unique('probe-');
  await subscribe(b1, probe);
  const barrier1 = once(a.user, 'barrier', 'watcher: barrier 1');
  await sdk.sendToUser(watcherId, 'barrier', 1);
  await barrier1;
  equal(events.slice(1), [['online', [b1Id]]], 'watchlist events after B opened a second connection');

  // B closes one connection: still online.
  b1.disconnect();
  await until("the server to close B's first connection", async () => !(await channelInfo(sdk, probe)).occupied);
  const barrier2 = once(a.user, 'barrier', 'watcher: barrier 2');
  await sdk.sendToUser(watcherId, 'barrier', 2);
  await barrier2;
  equal(events.slice(1), [['online', [b1Id]]], 'watchlist events after B closed one of two connections');

  // B's last connection goes: offline.
  const offline = once(a.user.watchlist, 'offline', 'watcher: offline');
  b2.disconnect();
  equal((await offline).user_ids, [b1Id], 'offline event names B');
  equal(events.slice(1), [['online', [b1Id]], ['offline', [b1Id]]], 'all watchlist events after the initial status');
  check(!events.some(([, ids]) => ids.includes(watcherId)), 'the watcher is never told about itself');
  log('watchlist online/offline follow the first and last connection');
}

run('signin_user', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  await sendToUserPart(sdk, auth);
  await watchlistPart(sdk, auth);
  auth.close();
});

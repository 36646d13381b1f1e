// terminateUserConnections (npm SDK): every connection signed in as the user is closed with
// 4009, and pusher-js, seeing a 40xx close, does not reconnect. Other users, and a connection
// that only joined a presence channel under that id (no signin), are left alone.
import {
  authServer, channelInfo, check, client, connected, equal, log, once, run, serverSdk,
  signedIn, subscribe, unique, until,
} from './lib.mjs';

function watchClose(pusher) {
  const seen = { states: [], closeCodes: [], errorFrames: [] };
  pusher.connection.bind('state_change', ({ current }) => seen.states.push(current));
  pusher.connection.bind('error', (e) => {
    // WebSocketError wraps the close event's code; PusherError is the pusher:error frame.
    if (e && e.type === 'WebSocketError' && e.error && e.error.data) seen.closeCodes.push(e.error.data.code);
    if (e && e.type === 'PusherError' && e.data) seen.errorFrames.push(e.data.code);
  });
  return seen;
}

function disconnected(pusher) {
  if (pusher.connection.state === 'disconnected') return Promise.resolve();
  return once(pusher.connection, 'disconnected', `${pusher.label} to be disconnected`);
}

run('terminate', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const doomed = unique('doomed-');
  const probe = unique('probe-');
  const room = unique('presence-room-');

  const t1 = client('doomed #1', auth.options({}, { user_id: doomed }));
  const t2 = client('doomed #2', auth.options({}, { user_id: doomed }));
  const other = client('survivor', auth.options({}, { user_id: 'survivor' }));
  const presenceOnly = client('presence-only', auth.options({ user_id: doomed }));
  for (const p of [t1, t2, other]) p.signin();
  await Promise.all([t1, t2, other, presenceOnly].map(connected));
  await Promise.all([signedIn(t1, doomed, 0), signedIn(t2, doomed, 0), signedIn(other, 'survivor', 0)]);
  await Promise.all([subscribe(t1, probe), subscribe(t2, probe), subscribe(other, probe)]);
  await subscribe(presenceOnly, room);
  const seen1 = watchClose(t1);
  const seen2 = watchClose(t2);
  const seenOther = watchClose(other);
  const seenPresence = watchClose(presenceOnly);

  const res = await sdk.terminateUserConnections(doomed);
  equal(res.status, 200, 'terminate status');
  await Promise.all([disconnected(t1), disconnected(t2)]);
  equal(seen1.closeCodes, [4009], 'close code seen by pusher-js on #1');
  equal(seen2.closeCodes, [4009], 'close code seen by pusher-js on #2');
  log('both connections closed with 4009; pusher:error codes', seen1.errorFrames, seen2.errorFrames);

  // pusher-js treats 4000-4099 as "refused": no retry timer, no pending connection attempt.
  for (const p of [t1, t2]) {
    check(!p.connection.retryTimer && !p.connection.runner && !p.connection.connection, `${p.label}: no reconnect scheduled`, {
      retryTimer: Boolean(p.connection.retryTimer), runner: Boolean(p.connection.runner),
    });
  }
  // The server dropped both: only the survivor is left on the probe channel.
  await until('the server to drop the terminated connections', async () => (await channelInfo(sdk, probe, 'subscription_count')).subscription_count === 1);
  // Give pusher-js more than its 1 s retry delay to prove it stays down.
  await new Promise((r) => setTimeout(r, 1300));
  for (const [p, seen] of [[t1, seen1], [t2, seen2]]) {
    equal(p.connection.state, 'disconnected', `${p.label} state after the retry window`);
    check(!seen.states.includes('connecting'), `${p.label} never tried to reconnect`, seen.states);
  }
  equal((await channelInfo(sdk, probe, 'subscription_count')).subscription_count, 1, 'probe subscribers after the retry window');

  // The others are untouched and still served.
  for (const [p, seen] of [[other, seenOther], [presenceOnly, seenPresence]]) {
    equal(p.connection.state, 'connected', `${p.label} still connected`);
    equal(seen.states, [], `${p.label} state changes`);
  }
  const still = once(other.user, 'still-here', 'survivor: still-here');
  await sdk.sendToUser('survivor', 'still-here', { ok: true });
  equal(await still, { ok: true }, 'survivor still receives');
  auth.close();
});

// Presence authorized by signin (pusher-js >= 7.4): after pusher.signin(), the auth endpoint
// signs only socket_id:channel (authorizeChannel without presence data), the subscribe frame
// has no channel_data, and the member is the signed-in user.
import {
  authServer, check, client, connected, equal, frame, log, once, run, serverSdk, signedIn,
  subscribe, sync, unique,
} from './lib.mjs';

function recordOutbound(pusher) {
  const sent = [];
  const original = pusher.send_event.bind(pusher);
  pusher.send_event = (name, data, channel) => {
    sent.push({ name, data, channel });
    return original(name, data, channel);
  };
  return sent;
}

run('presence_signin', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const room = unique('presence-lobby-');

  // bob joins the classic way (channel_data from the auth endpoint).
  const b = client('bob', auth.options({ user_id: 'bob', user_info: '{"name":"Bob"}' }));
  await connected(b);
  const roomB = await subscribe(b, room);

  // sam signs in, then joins with a signature over socket_id:channel only.
  const s = client('sam', auth.options({ mode: 'signin-only' }, { user_id: 'sam', user_info: '{"name":"Sam"}' }));
  const sent = recordOutbound(s);
  s.signin();
  await connected(s);
  await signedIn(s, 'sam', 0);
  const added = once(roomB, 'pusher:member_added', 'bob: member_added sam');
  const roomS = await subscribe(s, room);

  const subscribeFrame = sent.find((m) => m.name === 'pusher:subscribe' && m.data.channel === room);
  check(subscribeFrame, 'sam sent pusher:subscribe');
  check(subscribeFrame.data.channel_data === undefined, 'no channel_data in the subscribe frame', subscribeFrame.data);
  const expectedAuth = sdk.authorizeChannel(s.connection.socket_id, room).auth;
  equal(subscribeFrame.data.auth, expectedAuth, 'auth signs socket_id:channel only');

  equal(roomS.members.me, { id: 'sam', info: { name: 'Sam' } }, 'members.me comes from signin');
  equal(roomS.members.count, 2, 'sam sees two members');
  equal(roomS.members.get('bob'), { id: 'bob', info: { name: 'Bob' } }, 'sam sees bob');
  equal(await added, { id: 'sam', info: { name: 'Sam' } }, 'bob is told about sam with his signin user_info');
  const users = await (await sdk.get({ path: `/channels/${room}/users` })).json();
  equal(users.users.map((u) => u.id).sort(), ['bob', 'sam'], 'users endpoint');

  // Client events from sam carry the signin id.
  const whisper = frame(b, (m) => m.channel === room && m.event === 'client-hi', 'client-hi from sam');
  roomS.trigger('client-hi', {});
  equal((await whisper).user_id, 'sam', 'client event user_id for a signin-based member');

  // Without signin, the same kind of signature is refused by the server.
  const anon = client('anonymous');
  await connected(anon);
  const other = unique('presence-lobby-');
  const refused = frame(anon, (m) => m.event === 'pusher:error', 'pusher:error for presence without channel_data or signin');
  anon.connection.send(JSON.stringify({
    event: 'pusher:subscribe',
    data: { channel: other, auth: sdk.authorizeChannel(anon.connection.socket_id, other).auth },
  }));
  const error = await refused;
  log('refused with', JSON.stringify(error.data));
  await sync(anon);
  equal(anon.frames.filter((m) => m.channel === other && m.event === 'pusher_internal:subscription_succeeded').length, 0, 'subscription_succeeded without signin');

  // sam leaving is seen by bob.
  const removed = once(roomB, 'pusher:member_removed', 'bob: member_removed sam');
  s.unsubscribe(room);
  equal((await removed).id, 'sam', 'member_removed sam');
  log('presence via signin works');
  auth.close();
});

// Client events on presence and private channels: delivered to the others, never echoed to
// the sender, and carrying the sender's real user_id (presence: metadata.user_id; private,
// after pusher.signin(): the frame's user_id, read from pusher.connection 'message' because
// pusher-js drops it for non-presence channels). A user_id forged by the sender, inside the
// data or as a top-level field of the frame, is never taken as the sender.
import {
  authServer, check, client, connected, equal, frame, framesFor, log, onceArgs, run, serverSdk,
  signedIn, subscribe, unique,
} from './lib.mjs';

/** `receiver` answers every `event` on `channel` with client-ack, so the sender has a barrier. */
function ackEverything(receiverChannel, events) {
  for (const event of events) {
    receiverChannel.bind(event, (data) => receiverChannel.trigger('client-ack', { for: event, n: data && data.n }));
  }
}

async function presencePart(auth) {
  const room = unique('presence-chat-');
  const a = client('alice', auth.options({ user_id: 'alice', user_info: '{"name":"Alice"}' }));
  const b = client('bob', auth.options({ user_id: 'bob', user_info: '{"name":"Bob"}' }));
  await Promise.all([connected(a), connected(b)]);
  const roomA = await subscribe(a, room);
  const roomB = await subscribe(b, room);

  // alice whispers; the payload claims to be from mallory.
  const got = onceArgs(roomB, 'client-typing', 'bob: client-typing');
  const sentA = a.frames.length;
  check(roomA.trigger('client-typing', { user_id: 'mallory', text: 'hi', n: 1 }), 'pusher-js sent the client event');
  const [data, metadata] = await got;
  equal(data, { user_id: 'mallory', text: 'hi', n: 1 }, 'client event data reaches bob unchanged');
  equal(metadata, { user_id: 'alice' }, 'presence client event metadata names the real sender');
  const raw = framesFor(b, room, 'client-typing').at(-1);
  equal(raw.user_id, 'alice', 'top-level user_id of the frame bob got');

  // A frame with a forged top-level user_id, written on the socket as is.
  const forged = onceArgs(roomB, 'client-forged', 'bob: client-forged');
  a.connection.send(JSON.stringify({ event: 'client-forged', channel: room, data: { n: 2 }, user_id: 'mallory' }));
  const [forgedData, forgedMeta] = await forged;
  equal(forgedData, { n: 2 }, 'forged frame data');
  equal(forgedMeta, { user_id: 'alice' }, 'forged top-level user_id replaced by the real sender');

  // Never echoed: bob acknowledges each event; by the ack, an echo would have arrived.
  ackEverything(roomB, ['client-echo-test']);
  const ack = onceArgs(roomA, 'client-ack', 'alice: client-ack from bob');
  roomA.trigger('client-echo-test', { n: 3 });
  const [ackData, ackMeta] = await ack;
  equal(ackData, { for: 'client-echo-test', n: 3 }, 'ack data');
  equal(ackMeta, { user_id: 'bob' }, 'ack metadata');
  const echoed = a.frames.slice(sentA).filter((m) => m.channel === room && m.event !== 'client-ack' && m.event.startsWith('client-'));
  equal(echoed, [], 'client events echoed back to alice');
  log('presence client events: delivered, user_id from membership, no echo');
}

async function privatePart(auth) {
  const room = unique('private-chat-');
  // alice signs in; bob does not.
  const a = client('alice-signed-in', auth.options({}, { user_id: 'alice' }));
  const b = client('bob-anonymous', auth.options());
  a.signin();
  await Promise.all([connected(a), connected(b)]);
  await signedIn(a, 'alice', 0);
  const roomA = await subscribe(a, room);
  const roomB = await subscribe(b, room);

  // alice -> bob: the frame carries user_id alice, whatever the payload says.
  const sentA = a.frames.length;
  const got = onceArgs(roomB, 'client-msg', 'bob: client-msg');
  roomA.trigger('client-msg', { user_id: 'mallory', n: 1 });
  const [data] = await got;
  equal(data, { user_id: 'mallory', n: 1 }, 'private client event data unchanged');
  const raw = framesFor(b, room, 'client-msg').at(-1);
  equal(raw.user_id, 'alice', 'private client event frame user_id (sender signed in as alice)');

  // alice forges a top-level user_id: still alice.
  const forged = frame(b, (m) => m.channel === room && m.event === 'client-forged', 'client-forged from alice');
  a.connection.send(JSON.stringify({ event: 'client-forged', channel: room, data: { n: 2 }, user_id: 'mallory' }));
  equal((await forged).user_id, 'alice', 'forged user_id from a signed-in sender');

  // bob (not signed in) claims to be alice: alice must not see user_id alice.
  const fromBob = frame(a, (m) => m.channel === room && m.event === 'client-impostor', 'client-impostor from bob');
  b.connection.send(JSON.stringify({ event: 'client-impostor', channel: room, data: { n: 3 }, user_id: 'alice' }));
  const impostor = await fromBob;
  check(impostor.user_id === undefined, 'an anonymous sender carries no user_id', impostor);

  // Never echoed on a private channel either.
  ackEverything(roomB, ['client-echo-test']);
  const ack = frame(a, (m) => m.channel === room && m.event === 'client-ack', 'client-ack from bob');
  roomA.trigger('client-echo-test', { n: 4 });
  await ack;
  const echoed = a.frames.slice(sentA).filter((m) => m.channel === room && ['client-msg', 'client-forged', 'client-echo-test'].includes(m.event));
  equal(echoed, [], 'client events echoed back to alice');
  log('private client events: delivered, user_id from signin, forgery ignored, no echo');
}

run('client_events', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  await presencePart(auth);
  await privatePart(auth);
  auth.close();
});

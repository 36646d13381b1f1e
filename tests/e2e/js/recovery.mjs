// Recovery with pusher-js and Parley's recovery helper (clients/js/parley-recovery.js):
// a client's socket is cut, 500 events are published meanwhile, pusher-js reconnects by
// itself and the helper resumes: exactly those 500 arrive, in order, then live ones. After the
// channel's history is deleted (new epoch), a resume answers recovered: false.
import { createRequire } from 'node:module';
import { check, client, connected, equal, log, run, serverSdk, subscribe, unique, until, within } from './lib.mjs';

const require = createRequire(import.meta.url);
const { ParleyRecovery } = require('../../../clients/js/parley-recovery.js');
// The SDK signs any method through its request module; it only exposes get and post.
const requests = require('pusher/lib/requests');

run('recovery', async () => {
  const sdk = serverSdk();
  const name = unique('feed-');
  const pusher = client('reader');
  const received = [];
  const resumed = [];
  const recovery = new ParleyRecovery(pusher, {
    onEvent: (e) => received.push(e),
    onResumed: (channel, recovered) => resumed.push({ channel, recovered }),
  });
  await connected(pusher);
  await subscribe(pusher, name);

  // Live events first: the helper learns its position from them.
  for (let i = 0; i < 3; i += 1) await sdk.trigger(name, 'tick', { i });
  await until('3 live events', () => received.length === 3);
  const before = recovery.position(name);
  check(before && before.offset === 3, 'position after 3 events', before);

  // Cut the socket under pusher-js (no close handshake): it will reconnect by itself.
  const socketIdBefore = pusher.connection.socket_id;
  const lost = within('the connection to drop', (resolve) => {
    const h = ({ current }) => current !== 'connected' && resolve();
    pusher.connection.bind('state_change', h);
    return () => pusher.connection.unbind('state_change', h);
  });
  const socket = pusher.connection.connection.transport.socket;
  check(socket._stream, 'faye-websocket exposes its TCP stream', Object.keys(socket));
  socket._stream.destroy();
  await lost;
  log('socket cut; publishing 500 events while the client is away');

  // 500 events while it is away (batches of 10 with the SDK).
  for (let i = 3; i < 503; i += 10) {
    const batch = [];
    for (let j = i; j < i + 10; j += 1) batch.push({ channel: name, name: 'tick', data: JSON.stringify({ i: j }) });
    await sdk.triggerBatch(batch);
  }
  await connected(pusher);
  check(pusher.connection.socket_id !== socketIdBefore, 'a new connection', pusher.connection.socket_id);
  await until('the resume to finish', () => resumed.length === 1, 15000);
  equal(resumed[0], { channel: name, recovered: true }, 'resumed');
  await until('503 events', () => received.length >= 503, 15000);
  // Then live ones.
  await sdk.trigger(name, 'tick', { i: 503 });
  await until('504 events', () => received.length === 504);
  equal(received.map((e) => e.data.i), Array.from({ length: 504 }, (_, i) => i), 'every event once, in order');
  equal(received.map((e) => e.parley.offset), Array.from({ length: 504 }, (_, i) => i + 1), 'offsets');
  check(received.every((e) => e.parley.publisher.type === 'server'), 'publisher stamped');
  log('recovered 500 missed events in order, then live ones');

  // A deleted history gives the channel a new epoch: the old position cannot be recovered.
  const res = await requests.send(sdk.config, { method: 'DELETE', path: `/channels/${name}/history` });
  check(res && res.status === 200, 'DELETE history', res && res.status);
  pusher.unsubscribe(name);
  await subscribe(pusher, name);
  await until('a second resume', () => resumed.length === 2);
  equal(resumed[1], { channel: name, recovered: false }, 'stale epoch');
  log('stale epoch answered recovered: false');

  // A client that had received no event at all before its connection dropped recovers too:
  // the helper asked for the channel's newest offset when it subscribed (its floor).
  const quiet = unique('quiet-');
  await sdk.trigger(quiet, 'before', { i: -1 }); // history before the subscription: not replayed
  const late = client('late');
  const lateEvents = [];
  const lateResumed = [];
  const lateRecovery = new ParleyRecovery(late, {
    onEvent: (e) => lateEvents.push(e),
    onResumed: (channel, recovered) => lateResumed.push({ channel, recovered }),
  });
  await connected(late);
  await subscribe(late, quiet);
  await until('the floor', () => lateRecovery.position(quiet) !== undefined);
  equal(lateRecovery.position(quiet).offset, 1, 'floor: the newest offset when subscribed');
  const lateLost = within('the quiet connection to drop', (resolve) => {
    const h = ({ current }) => current !== 'connected' && resolve();
    late.connection.bind('state_change', h);
    return () => late.connection.unbind('state_change', h);
  });
  late.connection.connection.transport.socket._stream.destroy();
  await lateLost;
  for (let i = 0; i < 5; i += 1) await sdk.trigger(quiet, 'tick', { i });
  await connected(late);
  await until('the quiet resume', () => lateResumed.length === 1, 15000);
  equal(lateResumed[0], { channel: quiet, recovered: true }, 'resumed with no event seen before');
  await until('5 events', () => lateEvents.length >= 5, 15000);
  equal(lateEvents.map((e) => e.data.i), [0, 1, 2, 3, 4], 'exactly what was missed, in order');
  log('a client that had seen no event recovered what it missed');
});

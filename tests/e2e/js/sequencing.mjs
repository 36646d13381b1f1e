// pusher-js's subscription sequencing laws (PUSHER.md §6, from pusher-js's own integration
// tests), on a public, a private and a presence channel:
//   sub-sub = sub, sub-wait-sub = sub, sub-unsub = NOP, sub-wait-unsub = NOP,
//   sub-unsub-sub = sub, sub-unsub-wait-sub = sub, sub-unsub-unsub = NOP
// "wait" = until the server has answered the subscribe. Afterwards an event is triggered on
// the channel: a "sub" law must deliver it exactly once, a "NOP" law must not deliver it at
// all (proven by a later event on a control channel), and the server's subscription count
// must agree.
//
// usage: node sequencing.mjs LAW     (LAW as above, e.g. sub-unsub-wait-sub)
import {
  authServer, channelInfo, check, client, connected, equal, frame, framesFor, log, once, run,
  serverSdk, subscribe, sync, unique,
} from './lib.mjs';

const LAWS = {
  'sub-sub': 'sub',
  'sub-wait-sub': 'sub',
  'sub-unsub': 'NOP',
  'sub-wait-unsub': 'NOP',
  'sub-unsub-sub': 'sub',
  'sub-unsub-wait-sub': 'sub',
  'sub-unsub-unsub': 'NOP',
};

const law = process.argv[2];
if (!(law in LAWS)) {
  console.error(`usage: sequencing.mjs LAW, one of ${Object.keys(LAWS).join(', ')}`);
  process.exit(2);
}

function state(pusher, name) {
  const ch = pusher.channel(name);
  return ch ? { subscribed: ch.subscribed, pending: ch.subscriptionPending, cancelled: ch.subscriptionCancelled } : undefined;
}

/** Wait until the server has answered the subscribe to `name` (pusher-js has acted on it). */
function answered(pusher, name, since) {
  return frame(pusher, (m) => m.channel === name && m.event === 'pusher_internal:subscription_succeeded', `server's answer to the subscribe to ${name}`, since);
}

async function apply(pusher, name) {
  const since = pusher.frames.length;
  const steps = law.split('-');
  for (const [i, op] of steps.entries()) {
    if (op === 'sub') pusher.subscribe(name);
    else if (op === 'unsub') pusher.unsubscribe(name);
    else if (op === 'wait') {
      if (steps[i - 1] === 'sub') {
        await once(pusher.channel(name), 'pusher:subscription_succeeded', `${name} subscription_succeeded`);
        equal(state(pusher, name), { subscribed: true, pending: false, cancelled: false }, 'state after waiting on sub');
      } else {
        // sub-unsub-wait: the cancelled subscription completes and pusher-js unsubscribes.
        await answered(pusher, name, since);
        equal(state(pusher, name), undefined, 'state after waiting on a cancelled sub');
      }
    }
  }
  // Let whatever the sequence still causes happen, then make sure the server has seen it all.
  if (LAWS[law] === 'sub') {
    const ch = pusher.channel(name);
    check(ch, 'pusher-js has the channel after a sub law');
    if (!ch.subscribed) await once(ch, 'pusher:subscription_succeeded', `${name} subscription_succeeded`);
  } else {
    await answered(pusher, name, since);
  }
  await sync(pusher);
}

async function verify(pusher, sdk, control, name) {
  const expectSub = LAWS[law] === 'sub';
  if (expectSub) {
    equal(state(pusher, name), { subscribed: true, pending: false, cancelled: false }, `${name}: pusher-js state`);
  } else {
    equal(state(pusher, name), undefined, `${name}: pusher-js state`);
  }
  const info = await channelInfo(sdk, name, 'subscription_count');
  equal(info.subscription_count, expectSub ? 1 : 0, `${name}: server's subscription_count`);

  const received = [];
  if (expectSub) pusher.channel(name).bind('probe', (d) => received.push(d));
  const since = pusher.frames.length;
  await sdk.trigger(name, 'probe', { law });
  const barrier = once(control, 'barrier', 'control barrier');
  await sdk.trigger(control.name, 'barrier', {});
  await barrier;
  const raw = framesFor(pusher, name, 'probe', since);
  if (expectSub) {
    equal(received, [{ law }], `${name}: probe delivered to the channel`);
    equal(raw.length, 1, `${name}: probe frames (exactly once)`);
  } else {
    equal(raw.length, 0, `${name}: probe frames after a NOP law`);
  }
}

run(`sequencing ${law}`, async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const p = client(law, auth.options({ user_id: 'seq', user_info: '{"law":"x"}' }));
  await connected(p);
  const control = await subscribe(p, unique('control-'));
  for (const prefix of ['', 'private-', 'presence-']) {
    const name = unique(`${prefix}seq-`);
    await apply(p, name);
    await verify(p, sdk, control, name);
    const subscribes = framesFor(p, name, 'pusher_internal:subscription_succeeded').length;
    log(`${law} on ${prefix || 'public '}channel: ${LAWS[law]} (${subscribes} subscription_succeeded frame(s))`);
  }
  auth.close();
});

// Conversations (docs/protocol.md, "Conversations") between two real clients: alice is this
// pusher-js client, signed in with pusher.signin(); bob is the Python test's raw client,
// connected with a token (`&token=<JWT>`). The test answers each `@@step` as bob: it reads
// his frames, sends his client events and makes his HTTP calls.
//
// alice asks bob for a direct conversation over HTTP (Bearer JWT), bob accepts, both join its
// `private-conv-{id}` channel (alice gets `parley:welcome`) and talk both ways. carol, another
// signed-in pusher-js client with a perfectly good channel signature, is refused there and
// reaches nobody. alice reacts to bob's message and may not edit it; bob edits it and alice
// hears. carol's own request to bob is declined and she hears `chat-declined`.
// Bearer tokens come from the test (PARLEY_E2E_TOKENS: {"alice": jwt, "carol": jwt}).
import crypto from 'node:crypto';
import {
  authServer, cfg, check, client, connected, equal, frame, framesFor, log, once, onceArgs, run,
  serverSdk, signedIn, step, subscribe, sync, within,
} from './lib.mjs';

const tokens = JSON.parse(process.env.PARLEY_E2E_TOKENS || '{}');
const base = `${cfg.tls ? 'https' : 'http'}://${cfg.host}:${cfg.port}/apps/${cfg.appId}`;

/** An HTTP API call as `user` (Bearer JWT): {status, body} with the body parsed as JSON. */
async function api(user, method, path, body) {
  check(tokens[user], `a token for ${user} in PARLEY_E2E_TOKENS`);
  const headers = { Authorization: `Bearer ${tokens[user]}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(cfg.waitMs),
  });
  const text = await res.text();
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  log(`${user}: ${method} ${path} -> ${res.status} ${text.slice(0, 200)}`);
  return { status: res.status, body: parsed };
}

/** The spec's direct id: "d_" + base64url(SHA-256(["parley-direct-v1", lo, hi]))[:22]. */
function directId(a, b) {
  const [lo, hi] = [a, b].sort();
  const digest = crypto.createHash('sha256').update(JSON.stringify(['parley-direct-v1', lo, hi])).digest();
  return `d_${digest.toString('base64url').slice(0, 22)}`;
}

/**
 * pusher-js rebuilds each frame as {event, channel, data, user_id}, dropping the `parley`
 * object (publisher, offset), and gives a private channel's handlers no metadata.user_id (only
 * presence channels get it). So, as clients/js/parley-recovery.js does, read the frames of the
 * socket under pusher-js too: `pusher.raw`, parsed as the server sent them.
 */
function tapRaw(pusher) {
  pusher.raw = [];
  pusher.rawWaiters = new Set();
  let socket;
  const attach = () => {
    const current = pusher.connection.connection?.transport?.socket;
    if (!current || current === socket) return;
    socket = current;
    socket.addEventListener('message', (message) => {
      pusher.raw.push(JSON.parse(String(message.data)));
      pusher.rawWaiters.forEach((look) => look());
    });
  };
  pusher.connection.bind('connected', attach);
  attach();
}

/** A raw frame of `pusher` matching `predicate`, from index `since` of `pusher.raw` on. */
function rawFrame(pusher, predicate, what, since = pusher.raw.length) {
  return within(`${pusher.label}: ${what}`, (resolve) => {
    const look = () => {
      const seen = pusher.raw.slice(since).find(predicate);
      if (seen) resolve(seen);
    };
    pusher.rawWaiters.add(look);
    look();
    return () => pusher.rawWaiters.delete(look);
  });
}

/** A pusher-js client signed in as `userId` through the auth server, on private-user-{id}. */
async function signedInUser(auth, userId) {
  const pusher = client(userId, auth.options({}, { user_id: userId }));
  tapRaw(pusher);
  pusher.signin();
  await connected(pusher);
  await signedIn(pusher, userId, 0);
  const notes = await subscribe(pusher, `private-user-${userId}`);
  return { pusher, notes };
}

const fromCarol = (m) => m.user_id === 'carol' || m.parley?.publisher?.id === 'carol';

run('conversations', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const alice = await signedInUser(auth, 'alice');
  const carol = await signedInUser(auth, 'carol');
  const a = alice.pusher;
  const c = carol.pusher;
  log('alice and carol signed in, each on their private-user channel');

  // 1. alice asks bob: a pending direct conversation whose id comes from the pair.
  const created = await api('alice', 'POST', '/conversations', { members: ['alice', 'bob'] });
  equal(created.status, 201, 'alice creates the conversation with bob');
  const id = created.body.id;
  const conv = `private-conv-${id}`;
  equal(id, directId('alice', 'bob'), 'the direct id derived from the pair');
  equal(
    [created.body.kind, created.body.state, created.body.channel, created.body.members, created.body.requested_by],
    ['direct', 'pending', conv, ['alice', 'bob'], 'alice'],
    'the new conversation',
  );
  const again = await api('alice', 'POST', '/conversations', { members: ['bob', 'alice'] });
  equal([again.status, again.body.id, again.body.state], [200, id, 'pending'], 'alice asking again, the other way round');

  // 2. bob (the test) reads chat-request and accepts; alice hears it on both her channels.
  const accepted = once(alice.notes, 'chat-accepted', 'alice: chat-accepted on private-user-alice');
  const acceptedToUser = once(a.user, 'chat-accepted', 'alice: chat-accepted on #server-to-user-alice');
  await step('bob-accepts');
  const note = { conversation_id: id, channel: conv, by: 'bob' };
  equal(await accepted, note, 'chat-accepted on private-user-alice');
  equal(await acceptedToUser, note, 'chat-accepted on #server-to-user-alice');
  log('bob accepted alice\'s request');

  // 3. alice joins: parley:welcome comes right after subscription_succeeded.
  const since = a.frames.length;
  const convA = await subscribe(a, conv);
  const welcome = await frame(a, (m) => m.event === 'parley:welcome' && m.channel === conv, 'alice: parley:welcome', since);
  const joinedAt = a.frames.findIndex(
    (m, i) => i >= since && m.event === 'pusher_internal:subscription_succeeded' && m.channel === conv,
  );
  equal(a.frames[joinedAt + 1]?.event, 'parley:welcome', 'the frame right after subscription_succeeded');
  const { conversation_id, members, bots, state, last_offset, epoch } = welcome.data; // later fields (receipts) aside
  equal(
    { conversation_id, members, bots, state, last_offset },
    { conversation_id: id, members: ['alice', 'bob'], bots: [], state: 'accepted', last_offset: 0 },
    'alice\'s welcome',
  );
  check(epoch !== undefined && epoch !== null, 'the welcome carries an epoch', welcome.data);

  // 4. bob joins and writes; alice writes back. Each side checks the sender.
  const fromBob = onceArgs(convA, 'client-msg', 'alice: client-msg from bob');
  const isMessage = (m) => m.channel === conv && m.event === 'client-msg';
  const fromBobFrame = frame(a, isMessage, 'alice: client-msg frame from bob');
  const fromBobRaw = rawFrame(a, isMessage, 'alice: raw client-msg frame from bob');
  await step('bob-joins');
  const [data] = await fromBob;
  equal(data, { text: 'hi alice' }, 'bob\'s message, to the channel\'s handler');
  equal((await fromBobFrame).user_id, 'bob', 'user_id of bob\'s message');
  const raw = await fromBobRaw;
  equal([raw.user_id, raw.parley?.publisher], ['bob', { type: 'user', id: 'bob' }], 'the sender stamped on the raw frame');
  check(convA.trigger('client-msg', { text: 'hi bob' }), 'alice sends client-msg');
  await step('bob-hears');
  log('alice and bob talked both ways');

  // 4b. Acts on a message name its offset (from the raw frame): alice may react to bob's
  // message but not edit it; bob edits his own, and alice's handler gets the edit.
  const bobOffset = raw.parley?.offset;
  check(Number.isInteger(bobOffset), 'bob\'s message carries its offset', raw.parley);
  const eSince = a.frames.length;
  check(convA.trigger('client-parley-edit', { ref: bobOffset, data: { text: 'forged' } }), 'alice tries to edit bob\'s message');
  const editRefusal = await frame(a, (m) => m.event === 'pusher:error', 'alice: refusal of her edit', eSince);
  check(editRefusal.data.message.includes('only the sender'), 'an edit by another is refused', editRefusal.data);
  check(convA.trigger('client-parley-reaction', { ref: bobOffset, reaction: '+1' }), 'alice reacts');
  const edited = onceArgs(convA, 'client-parley-edit', 'alice: bob\'s edit');
  await step('bob-edits');
  const [edit] = await edited;
  equal(edit, { ref: bobOffset, data: { text: 'hi alice!' } }, 'bob\'s edit, to alice\'s handler');
  log('alice reacted, bob edited');

  // 5. carol, signed in and with a valid channel signature, is refused there.
  const cSince = c.frames.length;
  let succeeded = false;
  const convC = c.subscribe(conv);
  convC.bind('pusher:subscription_succeeded', () => (succeeded = true));
  const refusal = await frame(c, (m) => m.event === 'pusher:error', 'carol: pusher:error refusing the subscription', cSince);
  equal(refusal.channel, conv, 'the refusal names the channel');
  equal(refusal.data.code, null, 'the refusal\'s code');
  check(refusal.data.message.includes("'carol' is not a member"), 'the refusal names the reason', refusal.data);
  check(
    auth.requests.some((r) => r.form.channel_name === conv && r.form.socket_id === c.connection.socket_id),
    'carol brought a channel signature from the auth endpoint',
  );
  await sync(c);
  check(!succeeded && !convC.subscribed, 'carol is not subscribed', { succeeded, subscribed: convC.subscribed });
  const joinedC = framesFor(c, conv, 'pusher_internal:subscription_succeeded', cSince);
  equal(joinedC.length, 0, 'subscription_succeeded frames for carol');

  const tSince = c.frames.length;
  convC.trigger('client-msg', { text: 'let me in' });
  const writeRefusal = await frame(c, (m) => m.event === 'pusher:error', 'carol: pusher:error refusing her client event', tSince);
  check(writeRefusal.data.message.includes('not subscribed'), 'the client event is refused', writeRefusal.data);
  await sync(c);
  equal(c.connection.state, 'connected', 'carol stays connected');
  equal(framesFor(c, conv, undefined, cSince).map((m) => m.event), ['pusher:error'], 'carol\'s frames on the conversation');
  const peek = await api('carol', 'GET', `/conversations/${id}`);
  equal(peek.status, 404, 'carol reading the conversation');

  // Barrier: alice writes after carol's attempts, bob (the test) checks that nothing from carol
  // came before it, and answers; nothing from carol came to alice before that answer.
  const answer = frame(
    a,
    (m) => m.channel === conv && m.event === 'client-msg' && m.data?.text === 'nothing from carol',
    'alice: bob\'s barrier',
  );
  check(convA.trigger('client-msg', { text: 'after carol' }), 'alice sends the barrier');
  await step('carol-tried');
  await answer;
  equal(framesFor(a, conv).filter(fromCarol), [], 'frames from carol at alice');
  check(!a.raw.some(fromCarol), 'alice got nothing from carol anywhere', a.raw.filter(fromCarol));
  log('carol was refused and reached nobody');

  // 6. carol asks bob; bob declines; carol hears chat-declined on her private-user channel.
  const asked = await api('carol', 'POST', '/conversations', { members: ['carol', 'bob'] });
  equal(asked.status, 201, 'carol creates a conversation with bob');
  equal([asked.body.state, asked.body.id], ['pending', directId('carol', 'bob')], 'carol\'s request');
  const declined = once(carol.notes, 'chat-declined', 'carol: chat-declined on private-user-carol');
  await step('bob-declines');
  equal(await declined, { conversation_id: asked.body.id, channel: asked.body.channel, by: 'bob' }, 'chat-declined');
  const dSince = c.frames.length;
  c.subscribe(asked.body.channel);
  const closed = await frame(
    c,
    (m) => m.event === 'pusher:error' && m.channel === asked.body.channel,
    'carol: refusal of the declined conversation',
    dSince,
  );
  check(closed.data.message.includes('declined'), 'a declined conversation refuses its requester', closed.data);
  log('bob declined carol\'s request');
  auth.close();
});

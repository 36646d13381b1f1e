// The flow a browser app needs with no backend but Parley: log in over HTTP, get a token,
// connect pusher-js with it through `wsPath` (/token/<jwt>), subscribe to presence and private
// channels through the built-in auth endpoints with the token as a Bearer header. Then each bad
// token (JSON array in PARLEY_E2E_BAD_TOKENS: [[label, token, reason], …]) is refused with 4009
// and pusher-js does not reconnect.
import { check, client, cfg, connected, equal, log, run, subscribe, unique, within } from './lib.mjs';

const base = `http://${cfg.host}:${cfg.port}/apps/${cfg.appId}`;

async function login(username, password) {
  const res = await fetch(`${base}/auth/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  equal(res.status, 200, `login ${username}`);
  return res.json();
}

function browserClient(label, token) {
  const auth = { headers: { Authorization: `Bearer ${token}` } };
  return client(label, {
    wsPath: `/token/${token}`,
    channelAuthorization: { endpoint: `${base}/pusher/auth`, transport: 'ajax', ...auth },
    userAuthentication: { endpoint: `${base}/pusher/user-auth`, transport: 'ajax', ...auth },
  });
}

run('builtin_flow', async () => {
  const room = process.env.PARLEY_E2E_ROOM;
  const team = process.env.PARLEY_E2E_TEAM;
  const alice = await login('alice', 'alice-password');
  const bob = await login('bob', 'bob-password');
  const a = browserClient('alice', alice.token);
  const b = browserClient('bob', bob.token);
  await Promise.all([connected(a), connected(b)]);
  log('both connected with their tokens through wsPath');

  const presenceA = await subscribe(a, room);
  equal(presenceA.members.me.id, 'alice', 'members.me from the token');
  equal(presenceA.members.me.info, { name: 'Alice' }, 'user info from the user store');
  const joined = within('member_added for bob', (resolve) => presenceA.bind('pusher:member_added', resolve));
  const presenceB = await subscribe(b, room);
  equal((await joined).id, 'bob', 'member_added');
  equal(presenceB.members.count, 2, 'two members');

  const teamA = await subscribe(a, team);
  const teamB = await subscribe(b, team);
  const got = within('bob to receive the client event', (resolve) => {
    b.connection.bind('message', (m) => m.event === 'client-hello' && resolve(m));
  });
  teamA.trigger('client-hello', { text: 'hi', user_id: 'bob' });
  const message = await got;
  equal(message.user_id, 'alice', 'sender stamped by the server');
  equal(message.data, { text: 'hi', user_id: 'bob' }, 'payload untouched (the claim inside is just data)');
  void teamB;

  // pusher.signin() through the built-in user-auth endpoint.
  const signedIn = within('signin_success', (resolve) => a.connection.bind('message', (m) => m.event === 'pusher:signin_success' && resolve(m)));
  a.signin();
  const signin = await signedIn;
  equal(JSON.parse(signin.data.user_data).id, 'alice', 'signin user id');
  log('presence, private and signin through the built-in endpoints');

  // Somebody else's notification channel is refused by the endpoint.
  const other = b.subscribe('private-user-alice');
  const refused = await within('subscription_error', (resolve) => other.bind('pusher:subscription_error', resolve));
  equal(refused.status, 403, 'private-user-alice refused to bob');

  for (const [label, token, reason] of JSON.parse(process.env.PARLEY_E2E_BAD_TOKENS)) {
    const bad = client(`bad-${label}`, { wsPath: `/token/${token}` });
    const error = await within(`${label}: pusher:error`, (resolve) => {
      // During the handshake pusher-js reports a pusher:error as {type: 'WebSocketError',
      // error: {type: 'PusherError', data: {code, message}}} on the connection's 'error' event.
      bad.connection.bind('error', (e) => {
        const data = e?.error?.data || e?.data;
        if (data && data.code === 4009) resolve(data);
      });
    });
    equal(error.code, 4009, `${label}: code`);
    check(error.message.includes(reason), `${label}: reason names the fault`, error.message);
    await within(`${label}: pusher-js stops`, (resolve) => {
      const done = () => ['unavailable', 'failed', 'disconnected'].includes(bad.connection.state) && resolve();
      done();
      bad.connection.bind('state_change', done);
    });
    bad.disconnect();
    log(`${label}: refused with 4009 (${error.message})`);
  }
});

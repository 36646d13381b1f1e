// Private channels through a real HTTP auth endpoint signing with the npm SDK
// (pusher.authorizeChannel), and a refused subscription when the endpoint signs wrongly.
import {
  authServer, channelInfo, check, client, connected, equal, frame, framesFor, log, once, run,
  serverSdk, subscribe, sync, unique,
} from './lib.mjs';

run('private_auth', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);

  // 1. A good signature: subscribed, and an SDK-triggered event arrives.
  const good = client('good', auth.options());
  const socketId = await connected(good);
  const room = unique('private-room-');
  const channel = await subscribe(good, room);
  const request = auth.requests.find((r) => r.form.channel_name === room);
  check(request, 'the auth endpoint was called for the channel');
  equal(request.path, '/pusher/auth', 'auth endpoint path');
  equal(request.form.socket_id, socketId, 'auth endpoint got the socket_id');
  check(
    String(request.headers['content-type']).startsWith('application/x-www-form-urlencoded'),
    'form-encoded auth request',
    request.headers['content-type'],
  );
  const got = once(channel, 'secret-news', 'good: secret-news');
  await sdk.trigger(room, 'secret-news', { text: 'hello' });
  equal(await got, { text: 'hello' }, 'private event data');
  log('private subscribe via HTTP auth endpoint works');

  // 2. A signature made with the wrong secret: the server answers pusher:error and does not
  //    subscribe the connection; pusher-js never reports subscription_succeeded.
  const bad = client('bad', auth.options({ mode: 'bad-signature' }));
  await connected(bad);
  const denied = unique('private-denied-');
  const since = bad.frames.length;
  const errorFrame = frame(bad, (m) => m.event === 'pusher:error', 'pusher:error for a bad signature', since);
  const globalError = once(bad, 'pusher:error', 'bad: global pusher:error event');
  let succeeded = false;
  bad.subscribe(denied).bind('pusher:subscription_succeeded', () => (succeeded = true));
  const error = await errorFrame;
  log('refused with', JSON.stringify(error.data));
  check(error.data && typeof error.data.message === 'string', 'pusher:error data is an object with a message', error.data);
  check(error.data.code === null || (error.data.code >= 4000 && error.data.code < 4100), 'error code is null or 40xx', error.data);
  check(/signature|auth/i.test(error.data.message), 'error message says what is wrong', error.data.message);
  await globalError;
  // Barrier: anything the server would still send about `denied` came before this.
  await sync(bad);
  check(!succeeded, 'no pusher:subscription_succeeded for the refused channel');
  equal(framesFor(bad, denied, 'pusher_internal:subscription_succeeded').length, 0, 'subscription_succeeded frames for the refused channel');
  check(bad.channel(denied).subscriptionPending && !bad.channel(denied).subscribed, 'pusher-js still sees the subscription as not done');
  equal(bad.connection.state, 'connected', 'the connection stays open after a refused subscription');
  equal(await channelInfo(sdk, denied, 'subscription_count'), { occupied: false, subscription_count: 0 }, 'refused channel is not occupied');

  // An event on the refused channel does not reach the refused connection.
  await sdk.trigger(denied, 'should-not-arrive', {});
  await sync(bad);
  equal(framesFor(bad, denied).length, 0, 'frames for the refused channel');

  auth.close();
});

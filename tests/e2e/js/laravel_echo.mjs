// laravel-echo 2.5.0 with the `pusher` broadcaster, configured as a Laravel app would be
// (authEndpoint /broadcasting/auth, CSRF header), once with the Pusher class passed in and
// once with a ready pusher-js client.
import Echo from 'laravel-echo';
import {
  Pusher, adopt, authServer, cfg, check, client, connected, equal, log, run, serverSdk, unique, within,
} from './lib.mjs';

const clientOptions = {
  key: cfg.key,
  cluster: 'parley',
  wsHost: cfg.host,
  wsPort: cfg.port,
  wssPort: cfg.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
};

function next(what, register) {
  return within(what, (resolve) => register(resolve));
}

run('laravel_echo', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);
  const endpoint = `${auth.base}/broadcasting/auth`;

  // 1. Echo builds its own pusher-js client from the Pusher class.
  const echo = new Echo({
    broadcaster: 'pusher',
    Pusher,
    ...clientOptions,
    authEndpoint: endpoint,
    csrfToken: 'csrf-123',
    auth: { headers: {}, params: { user_id: 'echo-user', user_info: '{"name":"Echo"}' } },
  });
  const pusher1 = adopt(echo.connector.pusher, 'echo (Pusher class)');
  await connected(pusher1);
  equal(echo.socketId(), pusher1.connection.socket_id, 'echo.socketId()');
  equal(echo.connectionStatus(), 'connected', 'echo.connectionStatus()');

  const orders = unique('orders-');
  const ordersChannel = echo.channel(orders);
  await next('orders subscribed', (resolve) => ordersChannel.subscribed(resolve));
  const shipped = next('.OrderShipped', (resolve) => ordersChannel.listen('.OrderShipped', resolve));
  await sdk.trigger(orders, 'OrderShipped', { order: { id: 42 } });
  equal(await shipped, { order: { id: 42 } }, '.OrderShipped payload');

  // Without the leading dot Echo adds the App\Events namespace: a backslashed event name.
  const namespaced = next('App\\Events\\OrderPaid', (resolve) => ordersChannel.listen('OrderPaid', resolve));
  await sdk.trigger(orders, 'App\\Events\\OrderPaid', { paid: true });
  equal(await namespaced, { paid: true }, 'namespaced event payload');

  // Private channel through the auth endpoint, Laravel-style.
  const privateName = unique('invoices-');
  const invoices = echo.private(privateName);
  await next('private channel subscribed', (resolve) => invoices.subscribed(resolve));
  const authCall = auth.requests.find((r) => r.form.channel_name === `private-${privateName}`);
  check(authCall, 'the auth endpoint was called for the private channel');
  equal(authCall.path, '/broadcasting/auth', 'auth path');
  equal(authCall.headers['x-csrf-token'], 'csrf-123', 'CSRF header sent by Echo');
  const invoice = next('.InvoicePaid', (resolve) => invoices.listen('.InvoicePaid', resolve));
  await sdk.trigger(`private-${privateName}`, 'InvoicePaid', { amount: 10 });
  equal(await invoice, { amount: 10 }, 'private event via Echo');

  // 2. Echo around an existing pusher-js client.
  const pusher2 = client('echo (client)', {
    channelAuthorization: { endpoint, transport: 'ajax', params: { user_id: 'other-user', user_info: '{"name":"Other"}' } },
  });
  const echo2 = new Echo({ broadcaster: 'pusher', client: pusher2 });
  await connected(pusher2);
  const invoices2 = echo2.private(privateName);
  await next('echo2: private channel subscribed', (resolve) => invoices2.subscribed(resolve));

  // Whispers between the two.
  const whisper = next('whisper typing', (resolve) => invoices2.listenForWhisper('typing', resolve));
  invoices.whisper('typing', { name: 'Echo' });
  equal(await whisper, { name: 'Echo' }, 'whisper payload');

  // toOthers(): the API call carries the sender's socket id, which is left out.
  const seenByEcho1 = [];
  invoices.listen('.Updated', (d) => seenByEcho1.push(d));
  const toOthers = next('echo2: .Updated', (resolve) => invoices2.listen('.Updated', resolve));
  await sdk.trigger(`private-${privateName}`, 'Updated', { v: 1 }, { socket_id: echo.socketId() });
  equal(await toOthers, { v: 1 }, 'toOthers event at the other client');
  const after = next('.AfterUpdate', (resolve) => invoices.listen('.AfterUpdate', resolve));
  await sdk.trigger(`private-${privateName}`, 'AfterUpdate', {});
  await after;
  equal(seenByEcho1, [], 'the excluded sender got the toOthers event');

  // Presence with here / joining / leaving.
  const roomName = unique('room-');
  const here = next('here()', (resolve) => echo.join(roomName).here(resolve));
  equal(await here, [{ name: 'Echo' }], 'here() with one member');
  const joining = next('joining()', (resolve) => echo.join(roomName).joining(resolve));
  const here2 = next('echo2 here()', (resolve) => echo2.join(roomName).here(resolve));
  equal((await here2).map((u) => u.name).sort(), ['Echo', 'Other'], 'here() for the second member');
  equal(await joining, { name: 'Other' }, 'joining()');
  const leaving = next('leaving()', (resolve) => echo.join(roomName).leaving(resolve));
  echo2.leave(roomName);
  equal(await leaving, { name: 'Other' }, 'leaving()');
  log('laravel-echo: public, namespaced, private, whisper, toOthers and presence work');

  echo.disconnect();
  auth.close();
});

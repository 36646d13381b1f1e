// Public channels with the npm SDK: trigger (data arrives intact), trigger with `info`
// (per-channel counts), triggerBatch (every item delivered; `info` answered index-aligned).
import { channelInfo, check, client, connected, equal, log, once, run, serverSdk, subscribe, unique } from './lib.mjs';

run('public_events', async () => {
  const sdk = serverSdk();
  const a = client('a');
  const b = client('b');
  await Promise.all([connected(a), connected(b)]);
  check(/^\d+\.\d+$/.test(a.connection.socket_id), 'socket_id is digits.digits', a.connection.socket_id);

  const orders = unique('orders-');
  const news = unique('news-');
  const [ordersA, ordersB] = await Promise.all([subscribe(a, orders), subscribe(b, orders)]);
  const newsA = await subscribe(a, news);

  // 1. trigger: data (an object, JSON-encoded by the SDK) arrives as that object.
  const payload = { id: 7, items: ['a', 'b'], note: 'ünïcødé ✓', nested: { x: null, y: 1.5 } };
  const gotA = once(ordersA, 'order-placed', 'a: order-placed');
  const gotB = once(ordersB, 'order-placed', 'b: order-placed');
  const res = await sdk.trigger(orders, 'order-placed', payload);
  equal(res.status, 200, 'trigger status');
  equal(await res.json(), {}, 'trigger answer without info');
  equal(await gotA, payload, 'a received the data');
  equal(await gotB, payload, 'b received the data');
  log('trigger delivered to both subscribers');

  // A string payload is forwarded verbatim (not re-encoded).
  const gotText = once(ordersA, 'plain-text', 'a: plain-text');
  await sdk.trigger(orders, 'plain-text', 'just words');
  equal(await gotText, 'just words', 'string data');

  // 2. trigger with info: counts per channel, for a public and a presence channel.
  const empty = unique('empty-');
  const withInfo = await sdk.trigger([orders, empty], 'counted', { n: 1 }, { info: 'subscription_count' });
  const counts = await withInfo.json();
  equal(counts, { channels: { [orders]: { subscription_count: 2 }, [empty]: { subscription_count: 0 } } }, 'trigger info answer');
  log('trigger info:', JSON.stringify(counts));

  // socket_id excludes that connection from delivery.
  const excludedProbe = once(ordersB, 'exclusive', 'b: exclusive');
  const seenByA = [];
  ordersA.bind('exclusive', (d) => seenByA.push(d));
  await sdk.trigger(orders, 'exclusive', { only: 'b' }, { socket_id: a.connection.socket_id });
  equal(await excludedProbe, { only: 'b' }, 'b got the event sent with a excluded');
  // Barrier: an event triggered afterwards reaches a; the excluded one would have come first.
  const after = once(ordersA, 'after-exclusive', 'a: after-exclusive');
  await sdk.trigger(orders, 'after-exclusive', {});
  await after;
  equal(seenByA, [], 'a (the excluded socket_id) received nothing');

  // 3. triggerBatch: both items delivered, in order, to their channels.
  const batchOrders = once(ordersA, 'batch-1', 'a: batch-1');
  const batchNews = once(newsA, 'batch-2', 'a: batch-2');
  const batchRes = await sdk.triggerBatch([
    { channel: orders, name: 'batch-1', data: { k: 1 } },
    { channel: news, name: 'batch-2', data: 'two' },
  ]);
  equal(batchRes.status, 200, 'batch status');
  equal(await batchRes.json(), {}, 'batch answer without info');
  equal(await batchOrders, { k: 1 }, 'batch item 1');
  equal(await batchNews, 'two', 'batch item 2');

  const batchInfo = await sdk.triggerBatch([
    { channel: orders, name: 'batch-3', data: {}, info: 'subscription_count' },
    { channel: news, name: 'batch-4', data: {}, info: 'subscription_count' },
  ]);
  equal(
    await batchInfo.json(),
    { batch: [{ subscription_count: 2 }, { subscription_count: 1 }] },
    'batch info answer',
  );

  // The HTTP API agrees with what the clients did.
  equal(await channelInfo(sdk, orders, 'subscription_count'), { occupied: true, subscription_count: 2 }, 'channel info');
  log('triggerBatch delivered and counted');
});

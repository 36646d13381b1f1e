// Cache channels: an empty cache answers the subscribe with pusher:cache_miss; after a
// trigger, a new subscriber gets the last event right after subscription_succeeded.
import {
  authServer, channelInfo, check, client, connected, equal, framesFor, log, once, run, serverSdk,
  subscribe, unique,
} from './lib.mjs';

async function cachePart(sdk, name, options = {}) {
  const a = client(`first on ${name}`, options);
  await connected(a);
  const channel = a.subscribe(name);
  const miss = once(channel, 'pusher:cache_miss', `${name}: pusher:cache_miss`);
  await once(channel, 'pusher:subscription_succeeded', `${name}: subscription_succeeded`);
  await miss;
  log(`${name}: cache miss on an empty cache`);

  const got1 = once(channel, 'price', 'first: price 1');
  await sdk.trigger(name, 'price', { v: 1 });
  equal(await got1, { v: 1 }, 'live event 1');
  const got2 = once(channel, 'price', 'first: price 2');
  await sdk.trigger(name, 'price', { v: 2 });
  equal(await got2, { v: 2 }, 'live event 2');

  // A newcomer gets the last event, not a miss, right after its subscription_succeeded.
  const b = client(`second on ${name}`, options);
  await connected(b);
  const channelB = b.subscribe(name);
  const cached = once(channelB, 'price', 'second: cached price');
  let missed = false;
  channelB.bind('pusher:cache_miss', () => (missed = true));
  await once(channelB, 'pusher:subscription_succeeded', 'second: subscription_succeeded');
  equal(await cached, { v: 2 }, 'the cached event is the last one');
  check(!missed, 'no cache_miss when something is cached');
  const events = framesFor(b, name).map((m) => m.event);
  equal(events, ['pusher_internal:subscription_succeeded', 'price'], 'frames the newcomer got, in order');
  return a;
}

run('cache_channel', async () => {
  const sdk = serverSdk();
  const auth = await authServer(sdk);

  const name = unique('cache-ticker-');
  await cachePart(sdk, name);
  const info = await channelInfo(sdk, name, 'cache');
  check(info.cache && info.cache.ttl > 0, 'HTTP API reports the cache with a ttl', info);
  log('channel info:', JSON.stringify(info));

  // An event triggered while nobody is subscribed is cached too.
  const lonely = unique('cache-lonely-');
  await sdk.trigger(lonely, 'state', { on: true });
  const c = client('late');
  await connected(c);
  const ch = c.subscribe(lonely);
  equal(await once(ch, 'state', 'late: cached state'), { on: true }, 'event cached on an empty channel');

  // private-cache- works the same through the auth endpoint.
  await cachePart(sdk, unique('private-cache-ticker-'), auth.options());
  auth.close();
});

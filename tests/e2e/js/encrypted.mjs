// End-to-end encrypted channel: the npm SDK (encryptionMasterKeyBase64) encrypts on trigger
// and its authorizeChannel returns shared_secret; the server only relays ciphertext, and
// pusher-js decrypts.
import crypto from 'node:crypto';
import {
  authServer, check, client, connected, equal, framesFor, log, once, run, serverSdk, subscribe, unique,
} from './lib.mjs';

run('encrypted', async () => {
  const masterKey = crypto.randomBytes(32).toString('base64');
  const sdk = serverSdk({ encryptionMasterKeyBase64: masterKey });
  const auth = await authServer(sdk);
  const name = unique('private-encrypted-vault-');

  const a = client('a', auth.options());
  await connected(a);
  const channel = await subscribe(a, name);

  // The auth endpoint handed out the per-channel key, which is not sent to the server.
  const answer = auth.requests.find((r) => r.form.channel_name === name);
  check(answer, 'the auth endpoint was asked for the encrypted channel');
  const expected = crypto.createHash('sha256').update(Buffer.concat([Buffer.from(name), Buffer.from(masterKey, 'base64')])).digest('base64');
  equal(sdk.authorizeChannel(a.connection.socket_id, name).shared_secret, expected, 'SDK shared_secret');

  const secret = { pin: '0000', note: 'top secret ✓', list: [1, 2, 3] };
  const got = once(channel, 'secret', 'a: decrypted secret');
  const res = await sdk.trigger(name, 'secret', secret);
  equal(res.status, 200, 'trigger status');
  equal(await got, secret, 'pusher-js decrypted the event');

  const wire = framesFor(a, name, 'secret').at(-1);
  check(wire && typeof wire.data === 'object', 'the wire data is the encrypted envelope', wire);
  check(typeof wire.data.nonce === 'string' && typeof wire.data.ciphertext === 'string', 'envelope has nonce and ciphertext', wire.data);
  check(!JSON.stringify(wire).includes('top secret'), 'no plaintext on the wire', wire);

  // A batch item on an encrypted channel is encrypted too and decrypts.
  const got2 = once(channel, 'secret-2', 'a: decrypted secret-2');
  await sdk.triggerBatch([{ channel: name, name: 'secret-2', data: 'plain string secret' }]);
  equal(await got2, 'plain string secret', 'pusher-js decrypted the batch event');
  log('encrypted channel round trip works');
  auth.close();
});

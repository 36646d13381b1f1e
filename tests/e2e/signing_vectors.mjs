// Cross-checks clients/js/parley-signing.mjs against the Python reference (test_signing_js.py).
// stdin: one JSON object {seed_hex, appKey, channel, event, userId, data, mid, ts, head,
// python_sig}; other keys are ignored. stdout: {kid, canonical_hex, sig, verifies_python},
// or {error} and exit 1 when the library throws (a field holding a line break).
import { ed25519 } from "@noble/curves/ed25519.js";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
import { canonicalBytes, sign, verifySignature } from "../../clients/js/parley-signing.mjs";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { seed_hex, appKey, channel, event, userId, data, mid, ts, head, python_sig } =
  JSON.parse(input);

try {
  const seed = hexToBytes(seed_hex);
  const signed = sign(seed, { appKey, channel, event, userId, data, mid, ts, head });
  const fields = { appKey, channel, event, userId, data, ...signed };
  console.log(
    JSON.stringify({
      kid: signed.kid,
      canonical_hex: bytesToHex(canonicalBytes(fields)),
      sig: signed.sig,
      verifies_python: verifySignature(ed25519.getPublicKey(seed), fields, python_sig),
    }),
  );
} catch (error) {
  console.log(JSON.stringify({ error: String(error.message ?? error) }));
  process.exitCode = 1;
}

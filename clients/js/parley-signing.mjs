/*
 * Parley signed messages for JavaScript (browsers and Node): the canonical bytes a sender
 * signs, its Ed25519 signature and key id (`kid`), byte for byte as the Python reference
 * (src/parley/protocol/signed.py). The wire is fixed in docs/protocol.md, "Signed messages".
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, utf8ToBytes } from "@noble/hashes/utils.js";

const VERSION = "parley-sig-v1";
const NO_HEAD = "0:"; // the head a sender names before it has read the directory

/** base64url of `bytes`, without padding. */
export function b64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The bytes of unpadded, canonical base64url `text`; throws on anything else. */
export function fromB64url(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new Error("not unpadded base64url");
  }
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (b64url(bytes) !== text) throw new Error("not canonical base64url"); // stray trailing bits
  return bytes;
}

/** `kid`: base64url(SHA-256(raw 32-byte public key)), first 22 characters. */
export function keyId(publicKeyBytes) {
  if (publicKeyBytes.length !== 32) throw new Error("an Ed25519 public key is 32 bytes");
  return b64url(sha256(publicKeyBytes)).slice(0, 22);
}

/** The ten lines a sender signs, joined by \n; throws when a field holds a line break. */
export function canonicalBytes({ appKey, channel, event, userId, kid, mid, ts, head, data }) {
  if (!Number.isSafeInteger(ts) || ts < 0) throw new Error("ts must be whole milliseconds");
  const fields = [appKey, channel, event, userId, kid, mid, head, data];
  if (fields.some((field) => typeof field !== "string")) throw new Error("fields are strings");
  const lines = [
    VERSION,
    appKey,
    channel,
    event,
    userId,
    kid,
    mid,
    String(ts),
    bytesToHex(sha256(utf8ToBytes(data))),
    head,
  ];
  if (lines.some((line) => line.includes("\n"))) {
    throw new Error("a signed field may not contain a line break");
  }
  return utf8ToBytes(lines.join("\n"));
}

/** Sign one event as its sender does: the `parley.sig` object {kid, mid, ts, head, sig}. */
export function sign(
  privateSeed32,
  { appKey, channel, event, userId, data, mid, ts, head = NO_HEAD },
) {
  const kid = keyId(ed25519.getPublicKey(privateSeed32));
  const message = canonicalBytes({ appKey, channel, event, userId, kid, mid, ts, head, data });
  return { kid, mid, ts, head, sig: b64url(ed25519.sign(message, privateSeed32)) };
}

/** Whether `sigB64url` is `publicKeyBytes`'s signature of `fields` (as for canonicalBytes,
 * which throws on malformed fields); false, never a throw, for a bad signature or key.
 * Strict RFC 8032 encodings (not ZIP-215), as the Python reference (OpenSSL) checks. */
export function verifySignature(publicKeyBytes, fields, sigB64url) {
  const message = canonicalBytes(fields);
  try {
    return ed25519.verify(fromB64url(sigB64url), message, publicKeyBytes, { zip215: false });
  } catch {
    return false;
  }
}

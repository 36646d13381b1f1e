/*
 * The recipients' side of Parley signed messages for JavaScript (browsers and Node): follow an
 * app's key directory and give each delivered event one verdict. Same API and semantics as the
 * Python reference (src/parley/sdk/verifier.py), in camelCase; the wire is in docs/protocol.md,
 * "Signed messages and the key directory". A Verifier pins the server's directory key, refuses
 * a directory that no longer extends what it verified (DirectoryRewritten), alerts on keys of
 * its own user it did not add, and trusts nothing in a message but the signature: the sender
 * is the stamped `parley.publisher`, the key comes from the directory.
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, utf8ToBytes } from "@noble/hashes/utils.js";
import { canonicalBytes, fromB64url, keyId } from "./parley-signing.mjs";

const CLOCK_SKEW_MS = 5 * 60 * 1000; // a signature's ts against the server's stamp
const REPLAY_KEEP = 10000; // message ids remembered per channel, the newest
const HEAD_VERSION = "parley-head-v1";
const FIELDS = [
  "seq",
  "type",
  "user_id",
  "device_id",
  "kid",
  "ed25519",
  "x25519",
  "ts",
  "prev",
  "endorsed_by",
  "endorsement",
  "unendorsed",
];
const SIG_FIELDS = ["kid", "mid", "ts", "head", "sig"];
const KID_RE = /^[A-Za-z0-9_-]{22}$/;
const MID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const HEAD_RE = /^(?:0:|[1-9][0-9]{0,18}:[0-9a-f]{64})$/;

/** The directory served no longer extends the one verified before, or its head is not signed
 * by the pinned server key: rewritten or forked directory detected. */
export class DirectoryRewritten extends Error {
  name = "DirectoryRewritten";
}

const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);

/** JSON with every object's keys sorted and no whitespace, as orjson's OPT_SORT_KEYS. */
function sortedJson(value) {
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(",")}]`;
  if (!isObject(value)) return JSON.stringify(value);
  const keys = Object.keys(value).sort();
  return `{${keys.map((key) => `${JSON.stringify(key)}:${sortedJson(value[key])}`).join(",")}}`;
}

/** An entry's canonical encoding, byte for byte as Python's `KeyEntry.encoded()`: its twelve
 * wire fields (absent ones null, `unendorsed` false) as JSON, keys sorted, no whitespace. */
export function canonicalEntry(entry) {
  const wire = Object.fromEntries(FIELDS.map((f) => [f, entry[f] === undefined ? null : entry[f]]));
  if (entry.unendorsed === undefined) wire.unendorsed = false; // Python's default
  return utf8ToBytes(sortedJson(wire));
}

/** Lowercase hex SHA-256 of `canonicalEntry(entry)`: the next entry's `prev`, a head's hash. */
export function entryHash(entry) {
  return bytesToHex(sha256(canonicalEntry(entry)));
}

/** An entry as served, copied and frozen; throws when it is not one. */
function fromWire(value) {
  if (
    !isObject(value) ||
    Object.keys(value).length !== FIELDS.length ||
    !FIELDS.every((field) => Object.hasOwn(value, field))
  ) {
    throw new Error(`a key directory entry has exactly the fields ${FIELDS.join(", ")}`);
  }
  return Object.freeze(Object.fromEntries(FIELDS.map((field) => [field, value[field]])));
}

/** What is wrong with an entry's fields, or null (Python: KeyEntry.problem). */
function entryProblem(e) {
  const isText = (v) => typeof v === "string";
  if (!Number.isSafeInteger(e.seq) || e.seq < 1) return "seq must be a whole number >= 1";
  if (!["added", "revoked"].includes(e.type)) return "type must be added or revoked";
  if (!Number.isSafeInteger(e.ts) || e.ts < 0) return "ts must be whole milliseconds";
  if (![e.user_id, e.device_id, e.kid, e.ed25519, e.prev].every(isText)) {
    return "user_id, device_id, kid, ed25519 and prev are strings";
  }
  if (![e.x25519, e.endorsed_by, e.endorsement].every((v) => v === null || isText(v))) {
    return "x25519, endorsed_by and endorsement are strings or null";
  }
  if (typeof e.unendorsed !== "boolean") return "unendorsed is true or false";
  try {
    if (keyId(fromB64url(e.ed25519)) !== e.kid) return "kid is not the key id of ed25519";
  } catch {
    return "ed25519 must be a base64url 32-byte public key";
  }
  return null;
}

/** Why `entries` (consecutive, oldest first) do not extend `after`; null when they do. */
function chained(entries, after) {
  let previous = after;
  for (const entry of entries) {
    const expectedSeq = previous ? previous.seq + 1 : 1;
    if (entry.seq !== expectedSeq) return `entry ${entry.seq} follows ${expectedSeq - 1}`;
    if (entry.prev !== (previous ? entryHash(previous) : "")) {
      return `entry ${entry.seq} does not chain to the entry before it`;
    }
    previous = entry;
  }
  return null;
}

/** Whether `sig` (base64url) is `publicKey`'s strict (RFC 8032) Ed25519 signature of `message`. */
function signatureValid(publicKey, message, sig) {
  try {
    return ed25519.verify(fromB64url(sig), message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}

/** A `parley.sig` object as received; throws when a field is wrong. */
function parseSignature(value) {
  if (!isObject(value)) throw new Error("parley.sig must be an object {kid, mid, ts, head, sig}");
  if (Object.keys(value).some((key) => !SIG_FIELDS.includes(key))) {
    throw new Error("parley.sig has unknown fields");
  }
  const { kid, mid, ts, head, sig } = value;
  const ok =
    typeof kid === "string" &&
    KID_RE.test(kid) &&
    typeof mid === "string" &&
    MID_RE.test(mid) &&
    Number.isSafeInteger(ts) &&
    ts >= 0 &&
    typeof head === "string" &&
    HEAD_RE.test(head) &&
    typeof sig === "string" &&
    fromB64url(sig).length === 64; // throws on text that is not canonical base64url
  if (!ok) throw new Error("malformed parley.sig");
  return { kid, mid, ts, head, sig };
}

export class Verifier {
  #added = new Map(); // kid -> its `added` entry
  #revoked = new Map(); // kid -> its `revoked` entry
  #seen = new Map(); // channel -> Set of `${userId}\n${mid}`, the newest REPLAY_KEEP

  constructor(
    appKey,
    serverPublicKeyBytes,
    { ownUserId = null, ownKids = [], onAlert = null } = {},
  ) {
    this.appKey = appKey;
    this.serverPublicKey = serverPublicKeyBytes;
    this.ownUserId = ownUserId;
    this.ownKids = new Set(ownKids); // the keys this user added (on this or its other devices)
    this.onAlert = onAlert;
    this.entries = [];
    this.head = null; // the last head verified, {seq, hash, sig}
    this.alerts = []; // keys of our own user that we did not add
  }

  // -- the directory ------------------------------------------------------------------------

  /** Take the entries (as served) after those known, older ones skipped, then check `head`
   * if given. DirectoryRewritten, and nothing taken, when they do not chain to what was
   * verified before, or the head is not the server's or not the log's. */
  extend(entries, head = null) {
    const served = Array.from(entries, fromWire);
    for (const entry of served) {
      const problem = entryProblem(entry);
      if (problem !== null) throw new DirectoryRewritten(`entry ${entry.seq}: ${problem}`);
    }
    if (head != null && (!Number.isSafeInteger(head.seq) || head.seq < 0)) {
      throw new DirectoryRewritten("the head's seq is not a whole number");
    }
    const known = this.entries.length;
    const last = known ? this.entries[known - 1] : null;
    const fresh = served.filter((entry) => entry.seq > known);
    for (const entry of served) {
      // an entry we hold must be served unchanged
      const held = this.entries[entry.seq - 1];
      if (entry.seq <= known && (!held || entryHash(entry) !== entryHash(held))) {
        throw new DirectoryRewritten(`entry ${entry.seq} differs from the one verified before`);
      }
    }
    const problem = chained(fresh, last);
    if (problem !== null) throw new DirectoryRewritten(problem);
    if (head != null) {
      const { seq, hash, sig } = head;
      const message = utf8ToBytes(`${HEAD_VERSION}\n${this.appKey}\n${seq}\n${hash}`);
      if (!signatureValid(this.serverPublicKey, message, sig)) {
        throw new DirectoryRewritten("the head is not signed by the server's directory key");
      }
      const tip = fresh.length ? fresh[fresh.length - 1] : last;
      if ((tip ? tip.seq : 0) < seq) {
        throw new DirectoryRewritten(`the head names entry ${seq}, not served`);
      }
      const named = [...this.entries, ...fresh][seq - 1];
      if (seq && (!named || entryHash(named) !== hash)) {
        throw new DirectoryRewritten(`the head's hash is not that of entry ${seq}`);
      }
    }
    for (const entry of fresh) this.#take(entry);
    if (head != null) this.head = { seq: head.seq, hash: head.hash, sig: head.sig };
  }

  /** `extend` with entries and a head as the HTTP API serves them: in JS the same thing. */
  extendWire(entries, head = null) {
    this.extend(entries, head);
  }

  #take(entry) {
    this.entries.push(entry);
    if (entry.type === "added") {
      this.#added.set(entry.kid, entry);
      if (entry.user_id === this.ownUserId && !this.ownKids.has(entry.kid)) {
        this.alerts.push(entry);
        this.onAlert?.(entry);
      }
    } else {
      this.#revoked.set(entry.kid, entry);
    }
  }

  /** The head a message of ours names: the last one verified ("0:" before any). */
  namedHead() {
    return this.head && this.head.seq ? `${this.head.seq}:${this.head.hash}` : "0:";
  }

  // -- events -------------------------------------------------------------------------------

  /** The verdict {status, reason, userId, kid} on one delivered event frame (`event`,
   * `channel`, `data`, `parley`); `userId` is the stamped sender. */
  verify(frame) {
    const meta = isObject(frame.parley) ? frame.parley : {};
    const publisher = meta.publisher;
    if (!isObject(publisher)) return verdict("unverified", "sender-mismatch");
    const userId = publisher.id ?? null;
    const raw = meta.sig;
    if (raw == null) return verdict("server-verified", null, userId);
    let sig;
    try {
      sig = parseSignature(raw);
    } catch {
      return verdict("unverified", "malformed", userId);
    }
    return this.#check(frame, meta, publisher, sig);
  }

  #check(frame, meta, publisher, sig) {
    const userId = publisher.id ?? null;
    const no = (reason) => verdict("unverified", reason, userId, sig.kid);

    if (publisher.type !== "user" || typeof userId !== "string") return no("sender-mismatch");
    const key = this.#added.get(sig.kid);
    if (key === undefined) return no("unknown-key");
    if (key.user_id !== userId) return no("sender-mismatch");
    const revoked = this.#revoked.get(sig.kid);
    if (revoked !== undefined && sig.ts >= revoked.ts) return no("revoked-key");
    const stamped = meta.ts;
    if (Number.isInteger(stamped) && Math.abs(stamped - sig.ts) > CLOCK_SKEW_MS) {
      return no("clock-skew");
    }
    const { data, channel, event } = frame;
    if (![data, channel, event].every((field) => typeof field === "string")) return no("malformed");
    let message;
    try {
      message = canonicalBytes({ appKey: this.appKey, channel, event, userId, data, ...sig });
    } catch {
      return no("malformed");
    }
    if (!signatureValid(fromB64url(key.ed25519), message, sig.sig)) return no("bad-signature");
    if (this.#forked(sig.head)) return no("fork-suspected");
    if (!this.#seen.has(channel)) this.#seen.set(channel, new Set());
    const seen = this.#seen.get(channel);
    const replayKey = `${userId}\n${sig.mid}`; // per sender: nobody can use up another's ids
    if (seen.has(replayKey)) return no("replayed");
    seen.add(replayKey);
    if (seen.size > REPLAY_KEEP) seen.delete(seen.values().next().value);
    return verdict("verified", null, userId, sig.kid);
  }

  /** Whether a message names a head that differs from ours at that seq: the server showed its
   * sender another directory. */
  #forked(head) {
    const [seqText, hash] = head.split(":");
    const seq = Number(seqText);
    return seq > 0 && seq <= this.entries.length && entryHash(this.entries[seq - 1]) !== hash;
  }
}

function verdict(status, reason = null, userId = null, kid = null) {
  return { status, reason, userId, kid };
}

/*
 * Parley recovery for pusher-js: the seed of Parley's JavaScript SDK.
 *
 * pusher-js rebuilds every frame as {event, channel, data, user_id} and drops the `parley`
 * object (offset, epoch, publisher), so this helper reads the raw frames of the socket
 * pusher-js uses. It remembers each channel's position; after every (re)subscription it sends
 * `parley:resume {channel, since}` and holds that channel's events until `parley:resumed`,
 * then delivers, in offset order and without duplicates, what was missed and what came live.
 * Events go to `onEvent({channel, event, data, userId, parley})`; `onResumed(channel,
 * recovered)` says whether the gap was filled (recovered=false: reload the channel's state).
 *
 * A channel that has delivered no event yet still gets a position: after its first
 * subscription the helper asks for the newest event (`parley:history`, backward, limit 1) and
 * keeps that offset and epoch as the channel's floor. A connection that drops before any event
 * arrived resumes from the floor, so what was published while it was away is recovered too
 * (not only after an event was seen). An event published in the same few milliseconds as that
 * question, and not yet delivered when the connection drops, can be counted as seen.
 */
"use strict";

class ParleyRecovery {
  constructor(pusher, { onEvent = () => {}, onResumed = () => {} } = {}) {
    this.pusher = pusher;
    this.onEvent = onEvent;
    this.onResumed = onResumed;
    this.positions = new Map(); // channel -> {offset, epoch} of the last event delivered
    this.floors = new Map(); // channel -> {offset, epoch} when subscribed, before any event
    this.probing = new Set(); // channels whose floor was asked for
    this.pending = new Map(); // channel -> buffered frames while a resume is in flight
    this._socket = null;
    this._listener = (message) => this._onRaw(message.data);
    pusher.connection.bind("connected", () => this._attach());
    if (pusher.connection.state === "connected") this._attach();
  }

  /** Where the helper stands on `channel`: {offset, epoch} or undefined. */
  position(channel) {
    return this.positions.get(channel) || this.floors.get(channel);
  }

  _attach() {
    const transport = this.pusher.connection.connection && this.pusher.connection.connection.transport;
    const socket = transport && transport.socket;
    if (!socket || socket === this._socket) return;
    this._socket = socket;
    socket.addEventListener("message", this._listener);
  }

  _onRaw(text) {
    let frame;
    try {
      frame = JSON.parse(typeof text === "string" ? text : String(text));
    } catch (e) {
      return;
    }
    const channel = frame.channel;
    if (frame.event === "pusher_internal:subscription_succeeded") {
      const since = this.position(channel);
      if (since) {
        this.pending.set(channel, []);
        this.pusher.send_event("parley:resume", { channel, since });
      } else {
        this.probing.add(channel);
        this.pusher.send_event("parley:history", { channel, limit: 1, direction: "backward" });
      }
      return;
    }
    if (frame.event === "parley:history_page" && this.probing.has(channel)) {
      this.probing.delete(channel);
      const page = typeof frame.data === "string" ? JSON.parse(frame.data) : frame.data;
      const newest = page.events && page.events[0];
      if (!this.positions.has(channel)) {
        const offset = newest && newest.parley ? newest.parley.offset : 0;
        this.floors.set(channel, { offset, epoch: page.epoch });
      }
      return;
    }
    if (frame.event === "pusher:error" && this.probing.has(channel)) {
      this.probing.delete(channel); // a channel that keeps no history: nothing to resume
      return;
    }
    if (frame.event === "parley:resumed") {
      const data = typeof frame.data === "string" ? JSON.parse(frame.data) : frame.data;
      const name = data.channel || channel;
      const held = this.pending.get(name) || [];
      this.pending.delete(name);
      if (data.recovered === false) {
        this.positions.delete(name);
        this.floors.delete(name);
      }
      held.sort((a, b) => a.parley.offset - b.parley.offset);
      for (const f of held) this._deliver(f);
      this.onResumed(name, data.recovered !== false);
      return;
    }
    if (!channel || !frame.parley || typeof frame.parley.offset !== "number") return;
    const held = this.pending.get(channel);
    if (held) {
      held.push(frame);
      return;
    }
    this._deliver(frame);
  }

  _deliver(frame) {
    const { channel, parley } = frame;
    const last = this.positions.get(channel);
    if (last && last.epoch === parley.epoch && parley.offset <= last.offset) return; // already seen
    this.positions.set(channel, { offset: parley.offset, epoch: parley.epoch });
    let data = frame.data;
    if (typeof data === "string") {
      try {
        data = JSON.parse(data);
      } catch (e) {
        /* keep the string, as pusher-js does */
      }
    }
    this.onEvent({ channel, event: frame.event, data, userId: frame.user_id, parley });
  }
}

if (typeof module !== "undefined" && module.exports) module.exports = { ParleyRecovery };
if (typeof window !== "undefined") window.ParleyRecovery = ParleyRecovery;

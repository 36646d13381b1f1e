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
 */
"use strict";

class ParleyRecovery {
  constructor(pusher, { onEvent = () => {}, onResumed = () => {} } = {}) {
    this.pusher = pusher;
    this.onEvent = onEvent;
    this.onResumed = onResumed;
    this.positions = new Map(); // channel -> {offset, epoch}
    this.pending = new Map(); // channel -> buffered frames while a resume is in flight
    this._socket = null;
    this._listener = (message) => this._onRaw(message.data);
    pusher.connection.bind("connected", () => this._attach());
    if (pusher.connection.state === "connected") this._attach();
  }

  /** Where the helper stands on `channel`: {offset, epoch} or undefined. */
  position(channel) {
    return this.positions.get(channel);
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
      const since = this.positions.get(channel);
      if (since) {
        this.pending.set(channel, []);
        this.pusher.send_event("parley:resume", { channel, since });
      }
      return;
    }
    if (frame.event === "parley:resumed") {
      const data = typeof frame.data === "string" ? JSON.parse(frame.data) : frame.data;
      const name = data.channel || channel;
      const held = this.pending.get(name) || [];
      this.pending.delete(name);
      if (data.recovered === false) this.positions.delete(name);
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

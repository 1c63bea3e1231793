// Sluice's transports for phoenix.js: Server-Sent Events down and HTTP POST up (SSETransport),
// and a LongPoll that survives lost responses (ResilientLongPoll).
//
//   import {Socket} from "phoenix"
//   import {SSETransport, ResilientLongPoll} from "/js/sse-transport.js"
//
//   // SSE, falling back to ResilientLongPoll where a proxy holds the stream (recommended)
//   const socket = new Socket("/socket", {transport: SSETransport.withFallback(), params: {token}})
//   // a WebSocket first, then SSE, then ResilientLongPoll (phoenix.js's longPollFallbackMs, with SSE between)
//   const socket = new Socket("/socket", {transport: SSETransport.withFallback({webSocket: true}), params: {token}})
//   // or one of them alone
//   const socket = new Socket("/socket", {transport: SSETransport, params: {token}})
//   const socket = new Socket("/socket", {transport: ResilientLongPoll, params: {token}})
//
// phoenix.js drives a transport like a WebSocket: `new Transport(endPointURL, protocols)`, then
// it sets onopen/onerror/onmessage/onclose, `timeout` and `binaryType`, reads `readyState`
// (0 connecting, 1 open, 2 closing, 3 closed), `skipHeartbeat` and `bufferedAmount`, and calls
// send(frame) and close(code, reason). Any close it did not ask for, whatever the code, makes it
// reconnect with backoff and rejoin its channels: a new session, which starts each channel at
// its topic's head, so whatever was published meanwhile is missed. These transports therefore
// close only when the session is really gone or the network stayed broken for `retryMs`: a lost
// response, a 502, a cut or corrupted stream is repaired under phoenix's feet, safely, because
// Sluice de-duplicates frames by (session, topic, ref) and re-delivers from the client's cursor
// (the SSE event id, the long-poll token). The server side is sse/sse.go and longpoll/longpoll.go.

const CONNECTING = 0
const OPEN = 1
const CLOSING = 2
const CLOSED = 3
const MAX_BATCH = 100 // frames per POST: the server's limit, and phoenix's LongPoll's
const AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
// the SSE session credential goes in this header, never in a URL
const SESSION_HEADER = "X-Sluice-Session"
// the long-poll session token, likewise (phoenix.js 1.9's header; Sluice reads it first)
const LONGPOLL_TOKEN_HEADER = "X-Phoenix-Longpoll-Token"
// retries: the first waits about RETRY_BASE_MS, each later one twice as long, at most RETRY_MAX_MS
const RETRY_BASE_MS = 100
const RETRY_MAX_MS = 2000
const MAX_ATTEMPTS = 12
// consecutive undecodable events (with no good one between) before the socket is given up
const MAX_BAD_EVENTS = 5
const noop = () => {}

/**
 * Whether an HTTP outcome is worth repeating as is: no answer (0), a timeout, a 5xx (a proxy's
 * 502 page, an instance draining, a store not answering), 408, 425 or 429.
 * @param {number|string} status
 */
export function retryable(status){
  return status === 0 || status === "timeout" || status === 408 || status === 425 || status === 429 ||
    (typeof status === "number" && status >= 500 && status <= 599)
}

/**
 * Whether `data` is a frame phoenix.js can decode: for vsn 2 a JSON array of 5 whose join_ref and
 * ref are strings or null and whose topic and event are strings; for vsn 1 such an object.
 * Anything else (a cut event glued to the next one by a proxy, a proxy's error page) must never
 * reach phoenix.js, whose JSON.parse would throw into the page.
 * @param {string} data
 * @param {string} [vsn="2.0.0"]
 */
export function validFrame(data, vsn = "2.0.0"){
  if(typeof data !== "string"){ return false }
  let msg
  try { msg = JSON.parse(data) } catch { return false }
  const refLike = (v) => v === null || v === undefined || typeof v === "string"
  if(String(vsn).startsWith("1.")){
    return msg !== null && typeof msg === "object" && !Array.isArray(msg) &&
      typeof msg.topic === "string" && typeof msg.event === "string" && refLike(msg.ref)
  }
  return Array.isArray(msg) && msg.length === 5 && refLike(msg[0]) && refLike(msg[1]) &&
    typeof msg[2] === "string" && typeof msg[3] === "string"
}

// A wait before retry `attempt` (0-based): exponential, with "equal jitter" (between half and
// all of it) so that clients failed together do not return together.
function backoff(attempt, baseMs = RETRY_BASE_MS, maxMs = RETRY_MAX_MS){
  const d = Math.min(maxMs, baseMs * 2 ** attempt)
  return d / 2 + Math.random() * d / 2
}

// Retry-After in ms (seconds only), capped.
function retryAfterMs(value){
  const s = Number(value)
  return Number.isFinite(s) && s > 0 ? Math.min(s * 1000, 10000) : 0
}

// The outcome of a POST: 200, or what says why not (0: no answer, "timeout").
function postOutcome(r){
  if(r.failure){ return r.failure }
  if(r.http === 200 && r.json && r.json.status === 200){ return 200 }
  if(r.http !== 200){ return r.http }
  return r.json && typeof r.json.status === "number" ? r.json.status : 0
}

// The close that phoenix gets when a POST failed for good.
function closeFor(status){
  return status === 410 ? [3410, "session_gone"] : status === "timeout" ? [1005, "timeout"] : [1011, "internal server error"]
}

function authTokenOf(protocols){
  if(protocols && protocols.length === 2 && String(protocols[1]).startsWith(AUTH_TOKEN_PREFIX)){
    return atob(protocols[1].slice(AUTH_TOKEN_PREFIX.length))
  }
  return undefined
}

/**
 * What SSETransport and ResilientLongPoll share: phoenix's callbacks and states, and the upstream
 * pipeline. Frames sent in the same tick go in one POST (at most 100 frames); one POST is in flight
 * at a time and the others wait, so the server gets them in order; a POST that gets no answer, a
 * timeout, a 5xx or a 429 is repeated with the same batch (the server drops frames it already
 * applied) for up to `retryMs`, before a later batch may go.
 */
class HTTPTransport {
  constructor(){
    this.readyState = CONNECTING
    this.timeout = 20000 // phoenix sets its longpollerTimeout here; bounds each request
    this.binaryType = "arraybuffer"
    this.onopen = noop
    this.onerror = noop
    this.onmessage = noop
    this.onclose = noop
    // the same names as phoenix's LongPoll, which tools that wait for a socket to flush read
    this.currentBatch = null
    this.currentBatchTimer = null
    this.batchBuffer = []
    this.awaitingBatchAck = false
    this.inFlight = 0 // frames POSTed and not yet acknowledged
    this.reqs = new Set()
    this.waits = new Set()
    this.messageTimers = new Set()
    /** How long a failing request is repeated before the socket is given up, in ms. */
    this.retryMs = this.constructor.retryMs
    this.withCredentials = this.constructor.withCredentials
  }

  /** Frames handed to send() and not yet acknowledged by the server; phoenix waits for 0 before closing. */
  get bufferedAmount(){
    return this.inFlight + this.batchBuffer.length + (this.currentBatch ? this.currentBatch.length : 0)
  }

  isActive(){ return this.readyState === OPEN || this.readyState === CONNECTING }

  /**
   * Sends one frame, batched with the others of this tick.
   * @param {string|ArrayBuffer} body - a serialized frame
   */
  send(body){
    // as phoenix's LongPoll does; Sluice refuses binary frames with a clear 400
    if(typeof body !== "string"){ body = arrayBufferToBase64(body) }
    if(this.currentBatch){
      this.currentBatch.push(body)
    } else if(this.awaitingBatchAck){
      this.batchBuffer.push(body)
    } else {
      this.currentBatch = [body]
      this.currentBatchTimer = setTimeout(() => {
        const batch = this.currentBatch
        this.currentBatch = null
        this.batchSend(batch)
      }, 0)
    }
  }

  async batchSend(frames){
    this.awaitingBatchAck = true
    for(let i = 0; i < frames.length; i += MAX_BATCH){
      const status = await this.postWithRetry(frames.slice(i, i + MAX_BATCH))
      if(status === null){ return } // stopped meanwhile
      if(status !== 200){
        const [code, reason] = closeFor(status)
        return this.fail(status, code, reason)
      }
      if(this.afterBatch && this.afterBatch(frames.slice(i + MAX_BATCH))){ return }
    }
    if(this.batchBuffer.length > 0){
      const next = this.batchBuffer
      this.batchBuffer = []
      this.batchSend(next)
    } else {
      this.awaitingBatchAck = false
    }
  }

  // Resolves 200, the status that failed for good, or null once stopped.
  async postWithRetry(batch){
    const started = Date.now()
    this.inFlight += batch.length
    for(let attempt = 0; ; attempt++){
      const target = this.postTarget()
      const r = await this.request("POST", target.url, {"Content-Type": "application/x-ndjson", ...target.headers}, batch.join("\n"))
      if(r === null){ return null }
      const status = postOutcome(r)
      if(status === 200){
        this.inFlight -= batch.length
        return 200
      }
      if(!retryable(status) || attempt + 1 >= MAX_ATTEMPTS || Date.now() - started >= this.retryMs){ return status }
      if(!(await this.wait(Math.max(backoff(attempt), r.retryAfter)))){ return null }
    }
  }

  /**
   * One HTTP request with `timeout`. Resolves {http, json, retryAfter, failure} (failure: 0 for no
   * answer, "timeout"), or null if the transport stopped meanwhile.
   */
  async request(method, url, headers, body){
    const controller = new AbortController()
    this.reqs.add(controller)
    let timedOut = false
    const timer = this.timeout ? setTimeout(() => { timedOut = true; controller.abort() }, this.timeout) : null
    let out
    try {
      const res = await globalThis.fetch(url, {
        method, headers, body, signal: controller.signal, cache: "no-store",
        credentials: this.withCredentials ? "include" : "same-origin",
      })
      const text = await res.text()
      let json = null
      try { json = text === "" ? null : JSON.parse(text) } catch { json = null }
      out = {http: res.status, json, retryAfter: retryAfterMs(res.headers.get("retry-after")), failure: null}
    } catch {
      out = {http: 0, json: null, retryAfter: 0, failure: timedOut ? "timeout" : 0}
    } finally {
      clearTimeout(timer)
    }
    return this.reqs.delete(controller) ? out : null
  }

  // Resolves true after ms, or false as soon as the transport stops.
  wait(ms){
    return new Promise((resolve) => {
      const w = {resolve, timer: setTimeout(() => { this.waits.delete(w); resolve(true) }, ms)}
      this.waits.add(w)
    })
  }

  // Each frame in its own task, as a WebSocket delivers them (see phoenix's LongPoll): promise
  // callbacks of one message run before the next message is handled.
  deliver(data){
    const timer = setTimeout(() => {
      this.messageTimers.delete(timer)
      this.onmessage({data})
    }, 0)
    this.messageTimers.add(timer)
  }

  /**
   * Fails the transport: onerror, then an unclean close with `code` (never 1000), after which
   * phoenix reconnects with backoff and rejoins its channels.
   * @param {*} error - passed to onerror (phoenix passes it to the socket's onError callbacks)
   * @param {number} code
   * @param {string} reason
   */
  fail(error, code, reason){
    if(this.readyState === CLOSED || this.readyState === CLOSING){ return }
    // no longer open while the callbacks run, as a failed WebSocket; onerror may close us
    this.stop(CLOSING)
    this.onerror(error)
    if(this.readyState === CLOSING){
      this.readyState = CLOSED
      this.emitClose(code, reason, false)
    }
  }

  stop(readyState){
    this.readyState = readyState
    const reqs = this.reqs
    this.reqs = new Set()
    for(const controller of reqs){ controller.abort() }
    for(const w of this.waits){ clearTimeout(w.timer); w.resolve(false) }
    this.waits.clear()
    for(const timer of this.messageTimers){ clearTimeout(timer) }
    this.messageTimers.clear()
    clearTimeout(this.currentBatchTimer)
    this.currentBatchTimer = null
    this.currentBatch = null
    this.batchBuffer = []
    this.awaitingBatchAck = false
    this.inFlight = 0
  }

  emitClose(code, reason, wasClean){
    const init = {code, reason, wasClean}
    this.onclose(typeof CloseEvent !== "undefined" ? new CloseEvent("close", init) : init)
  }
}

/**
 * phoenix.js transport over Sluice's `/socket/sse` endpoint, for `new Socket(url, {transport: SSETransport})`.
 *
 * An `EventSource` carries every server frame (one unnamed event each, whose id resumes the stream
 * exactly); client frames are POSTed as `application/x-ndjson` batches, in order, to the path named
 * by the stream's `session` event, with the session's credential in the `X-Sluice-Session` header
 * (a server that sends no credential names a `?session=` URL instead, which is used as is).
 *
 * The transport manages the stream itself rather than leaving reconnection to EventSource: when a
 * stream ends, drops or is refused, it closes it and opens a new one at
 * `?lastEventId=<id of the last event it handed to phoenix>` (so a proxy that strips the
 * Last-Event-ID header changes nothing, and a 502 does not stop it as it stops a native
 * EventSource), after a short jittered wait that grows while streams keep failing. Every event
 * is checked before phoenix sees it: one that is not a decodable frame with a new id (a cut event
 * glued to the next stream by a proxy) closes the stream, which resumes from the last good id.
 * The socket only sees a close (and reconnects, rejoining its channels) when the session is gone,
 * a stream is refused for good (a 4xx the polyfill reports), the first stream failed
 * `streamAttempts` times, or streams or a POST kept failing for `retryMs`.
 *
 * Options are static properties, so that a subclass can carry its own:
 * `class MySSE extends SSETransport { static withCredentials = true }`.
 */
export class SSETransport extends HTTPTransport {
  /**
   * EventSource constructor to use; `null` uses `globalThis.EventSource`. Set it where there
   * is none, e.g. in Node: `SSETransport.EventSource = (await import("eventsource")).EventSource`.
   * @type {?Function}
   */
  static EventSource = null

  /** Send cookies cross-origin (EventSource `withCredentials`, fetch `credentials: "include"`);
   * the server must run with `--cors-credentials`. @type {boolean} */
  static withCredentials = false

  /** Heartbeat lag spread, in ms, taken as a buffering proxy (see onHeartbeat). @type {number} */
  static lateMs = 5000

  /** How many of the server's first heartbeats are judged for buffering. @type {number} */
  static probeHeartbeats = 4

  /** How long streams, or a POST, may keep failing before the socket is given up, in ms. @type {number} */
  static retryMs = 15000

  /** Attempts at the first stream before the socket is given up (withFallback then tries long-polling). @type {number} */
  static streamAttempts = 3

  /**
   * @param {string} endPoint - phoenix's endPointURL(): `ws(s)://host/socket/websocket?params&vsn=2.0.0`
   * @param {string[]} [protocols] - `["phoenix", "base64url.bearer.phx.<token>"]` when the socket has an authToken
   */
  constructor(endPoint, protocols){
    super()
    const options = this.constructor
    // phoenix.js sends its own heartbeat every 30 s over any transport but LongPoll. We keep it:
    // it is a tiny POST whose reply must come back down the stream, so it proves the whole loop
    // works and bounds how long a stream that silently stopped delivering (half-open TCP, a
    // proxy that started buffering) passes for open.
    this.skipHeartbeat = false
    /** Called (by withFallback) when the heartbeats show a buffering proxy. */
    this.onbuffering = null
    this.lateMs = options.lateMs
    this.probeHeartbeats = options.probeHeartbeats
    this.streamAttempts = options.streamAttempts
    this.authToken = authTokenOf(protocols)
    this.streamURL = SSETransport.streamURL(endPoint, this.authToken)
    this.vsn = new URL(this.streamURL).searchParams.get("vsn") || "2.0.0"
    this.sessionId = null
    this.credential = null
    this.postURL = null
    /** The id of the last event handed to phoenix (or of the session event): where a new stream resumes. */
    this.lastEventId = null
    this.es = null
    this.streamStarted = false // the current stream sent its session event
    this.streamFailures = 0 // streams in a row that ended before their session event, or corrupt
    this.failingSince = null
    this.badEvents = 0
    this.reopenTimer = null
    this.handoff = null
    this.heartbeats = 0
    this.lagMin = Infinity
    this.lagMax = -Infinity
    // like LongPoll: start on the next tick, once phoenix has set our callbacks (it may also
    // close us first), and so that a missing EventSource is reported as an error, not thrown
    this.startTimer = setTimeout(() => this.openStream(), 0)
  }

  /**
   * The stream URL for phoenix's endpoint URL: http(s), `/websocket` → `/sse`, and the
   * authToken as the `token` query parameter, as EventSource cannot set headers.
   * @param {string} endPoint
   * @param {string} [authToken]
   * @returns {string}
   */
  static streamURL(endPoint, authToken){
    const base = globalThis.location ? globalThis.location.href : undefined
    const url = new URL(endPoint.replace(/^ws(s?):/, "http$1:"), base)
    url.pathname = url.pathname.replace(/\/websocket$/, "/sse")
    if(authToken){ url.searchParams.set("token", authToken) }
    return url.href
  }

  /** The URL of the next stream: streamURL, resuming after lastEventId (a public event id, not a credential). */
  resumeURL(){
    if(!this.lastEventId){ return this.streamURL }
    const url = new URL(this.streamURL)
    url.searchParams.set("lastEventId", this.lastEventId)
    return url.href
  }

  openStream(){
    this.reopenTimer = null
    if(!this.isActive() || this.handoff){ return }
    const EventSourceImpl = this.constructor.EventSource || globalThis.EventSource
    let es
    try {
      if(!EventSourceImpl){ throw new Error("no EventSource in this environment") }
      es = new EventSourceImpl(this.resumeURL(), {withCredentials: this.withCredentials})
    } catch(err){
      return this.fail(err, 1006, "no EventSource")
    }
    this.es = es
    this.streamStarted = false
    // events of a stream we closed are ignored (a polyfill may still dispatch the rest of a
    // chunk it was parsing)
    const mine = (fn) => (ev) => { if(this.es === es){ fn(ev) } }
    es.addEventListener("session", mine((ev) => this.onSession(ev)))
    es.addEventListener("heartbeat", mine((ev) => this.onHeartbeat(ev)))
    es.addEventListener("session_gone", mine(() => this.fail(410, 3410, "session_gone")))
    es.addEventListener("message", mine((ev) => this.onFrame(ev)))
    es.addEventListener("error", mine((ev) => this.onStreamEnd(ev)))
  }

  closeStream(){
    if(this.es){
      const es = this.es
      this.es = null
      es.close()
    }
  }

  // An EventSource error: the stream ended (the server's maximum lifetime, a drain), dropped, or
  // was refused. EventSource would reconnect by itself with Last-Event-ID (unless refused); we
  // close it and resume ourselves, with the id in the URL.
  onStreamEnd(ev){
    const started = this.streamStarted
    this.closeStream()
    // the npm polyfill says which HTTP status refused the stream; browsers do not
    const status = ev && typeof ev.code === "number" ? ev.code : 0
    if(status >= 400 && status < 500 && !retryable(status)){
      // a bad token, another user's session, a malformed id: repeating cannot help
      return this.fail(status, this.sessionId === null ? 1006 : 1011, "sse stream refused")
    }
    if(!started){ this.streamFailed() }
    this.scheduleReopen()
  }

  streamFailed(){
    this.streamFailures++
    this.failingSince ??= Date.now()
  }

  scheduleReopen(){
    if(!this.isActive() || this.handoff){ return }
    if(this.sessionId === null ? this.streamFailures >= this.streamAttempts
      : this.streamFailures > 1 && Date.now() - this.failingSince >= this.retryMs){
      // the first stream never came, or streams kept failing: phoenix reconnects (with backoff,
      // and withFallback tries long-polling)
      return this.fail("stream failed", this.sessionId === null ? 1006 : 1011, "sse stream failed")
    }
    // a stream that ended after working resumes at once (jittered, for the herd of a drain)
    const delay = this.streamFailures === 0 ? 20 + Math.random() * 180 : backoff(this.streamFailures - 1, 250, 5000)
    clearTimeout(this.reopenTimer)
    this.reopenTimer = setTimeout(() => this.openStream(), delay)
  }

  // An event that cannot be trusted: never handed to phoenix, and its id is not our resume point.
  // The stream is corrupt from here on: resume after the last good event.
  onBadEvent(){
    this.closeStream()
    if(++this.badEvents >= MAX_BAD_EVENTS){
      return this.fail("undecodable events", 1011, "undecodable events")
    }
    this.streamFailed()
    this.scheduleReopen()
  }

  onSession(ev){
    let info = null
    try { info = JSON.parse(ev.data) } catch { info = null }
    // a stream has one session event, its first: another one is the start of a stream a proxy
    // glued on (which replays from where that stream began), as is a garbled one
    if(this.streamStarted || !info || typeof info.session !== "string" || typeof info.post !== "string"){ return this.onBadEvent() }
    if(this.sessionId !== null && info.session !== this.sessionId){
      // the server no longer had our session and started a new one: like LongPoll's 410, fail
      // so that phoenix reconnects and rejoins its channels
      return this.fail(410, 3410, "session_gone")
    }
    // the credential proves the session on POSTs (a header value: printable ASCII)
    if(typeof info.credential === "string" && /^[\x21-\x7e]+$/.test(info.credential)){ this.credential = info.credential }
    this.postURL = new URL(info.post, this.streamURL).href
    if(ev.lastEventId){ this.lastEventId = ev.lastEventId }
    this.streamStarted = true
    this.streamFailures = 0
    this.failingSince = null
    if(this.sessionId === null){
      this.sessionId = info.session
      this.readyState = OPEN
      this.onopen({})
    }
    // else: the same session, resumed exactly after the last event we handed on
  }

  onFrame(ev){
    const id = ev.lastEventId
    // every frame the server sends has an id of its own: none (or the previous one, which is
    // what a browser reports for an event without an id line) means a broken event
    if(!this.streamStarted || !id || id === this.lastEventId || !validFrame(ev.data, this.vsn)){
      return this.onBadEvent()
    }
    this.badEvents = 0
    this.lastEventId = id
    this.deliver(ev.data)
  }

  // The server sends a `heartbeat` event, its clock in unix ms, when a stream is idle. Our
  // arrival time minus that is the clock offset plus the delay; its spread over the first few
  // heartbeats is the delay added on the way, whatever the clocks. A proxy that buffers shows
  // itself from the start, by heartbeats that arrive late or several at once. Only the first
  // ones are judged: much later, a laptop waking up or a frozen tab also gets a backlog at once.
  onHeartbeat(ev){
    const sent = Number(ev.data)
    if(!Number.isFinite(sent) || this.heartbeats >= this.probeHeartbeats){ return }
    this.heartbeats++
    const lag = Date.now() - sent
    this.lagMin = Math.min(this.lagMin, lag)
    this.lagMax = Math.max(this.lagMax, lag)
    if(this.lagMax - this.lagMin > this.lateMs && this.onbuffering){
      this.heartbeats = Infinity // once
      this.onbuffering({spreadMs: this.lagMax - this.lagMin})
    }
  }

  postTarget(){
    return {url: this.postURL, headers: this.credential ? {[SESSION_HEADER]: this.credential} : {}}
  }

  /** The long-poll token of this session at lastEventId (the credential in place of the session id), or null. */
  longPollToken(){
    const id = this.lastEventId
    if(!id || !this.sessionId || !id.startsWith(this.sessionId + ".")){ return null }
    return this.credential ? this.credential + id.slice(this.sessionId.length) : id
  }

  /**
   * Stops the stream and hands the session over to a long-poll transport (withFallback, once
   * heartbeats showed a buffering proxy): resolves {token, frames} once no POST is in flight,
   * where token resumes the session after the last event handed to phoenix and frames were sent
   * to us but not POSTed yet. Frames already received still reach onmessage, in order.
   * @returns {Promise<{token: string, frames: string[]}>}
   */
  handOff(){
    this.closeStream()
    clearTimeout(this.reopenTimer)
    return new Promise((resolve, reject) => {
      const token = this.longPollToken()
      if(!this.isActive() || token === null){ return reject(new Error("no session to hand over")) }
      this.handoff = {resolve, reject}
      clearTimeout(this.currentBatchTimer)
      if(!this.awaitingBatchAck){
        this.finishHandOff(this.currentBatch || [])
      } else if(this.currentBatch){
        this.batchBuffer.push(...this.currentBatch)
      }
      this.currentBatch = null
    })
  }

  // batchSend calls this after each POST: during a hand-off the rest goes to the long-poll.
  afterBatch(rest){
    if(!this.handoff){ return false }
    this.finishHandOff(rest.concat(this.batchBuffer))
    return true
  }

  finishHandOff(frames){
    const {resolve} = this.handoff
    const token = this.longPollToken()
    // closed for phoenix, but the frames already received keep their delivery timers
    this.readyState = CLOSED
    clearTimeout(this.startTimer)
    this.batchBuffer = []
    this.awaitingBatchAck = false
    this.inFlight = 0
    resolve({token, frames})
  }

  /**
   * Closes the stream and drops what was not sent, like WebSocket#close. phoenix calls it to
   * disconnect or to replace the transport; it does not reconnect after a close it asked for.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code, reason){
    if(this.readyState === CLOSED){ return }
    this.stop(CLOSED)
    this.emitClose(code || 1005, reason || "", true)
  }

  stop(readyState){
    super.stop(readyState)
    clearTimeout(this.startTimer)
    clearTimeout(this.reopenTimer)
    this.closeStream()
    if(this.handoff){
      const {reject} = this.handoff
      this.handoff = null
      reject(new Error("the SSE transport stopped during the hand-off"))
    }
  }

  /**
   * A transport class that tries SSE and falls back to long-polling; see {@link withFallback}.
   * Uses this class (or a subclass) for the SSE attempt.
   * @param {Function|FallbackOptions} [LongPoll=ResilientLongPoll] - the long-poll transport class
   * @param {FallbackOptions} [opts]
   * @returns {Function}
   */
  static withFallback(LongPoll, opts = {}){
    if(LongPoll !== null && typeof LongPoll === "object"){ [LongPoll, opts] = [undefined, LongPoll] }
    return withFallback(LongPoll, {...opts, SSE: this})
  }
}

/**
 * Phoenix's LongPoll protocol, made to survive lost responses: a drop-in `transport:` for
 * phoenix.js's Socket (tested with 1.8.16), for `new Socket(url, {transport: ResilientLongPoll})`.
 *
 * phoenix.js's own LongPoll treats any failed request (no answer, a proxy's 502, a timeout) as
 * the end of the session: it reconnects without its session token, so a new session starts and
 * whatever was published meanwhile is missed. This one repeats a poll that failed with the same
 * session token (Sluice answers it with the same messages: nothing is acknowledged until the next
 * token is presented) and a POST that failed with the same batch (Sluice drops the frames it
 * already applied), with jittered backoff, for up to `retryMs`; only then, or when the server
 * says the session is gone (410), does phoenix see a close and reconnect. The session token
 * travels in the `X-Phoenix-Longpoll-Token` header, never in the URL.
 */
export class ResilientLongPoll extends HTTPTransport {
  /** How long a failing poll or POST is repeated before the socket is given up, in ms. @type {number} */
  static retryMs = 15000

  /** Send cookies cross-origin (fetch `credentials: "include"`). @type {boolean} */
  static withCredentials = false

  /**
   * @param {string} endPoint - phoenix's endPointURL(): `ws(s)://host/socket/websocket?params&vsn=2.0.0`
   * @param {string[]} [protocols] - `["phoenix", "base64url.bearer.phx.<token>"]` when the socket has an authToken
   */
  constructor(endPoint, protocols){
    super()
    this.authToken = authTokenOf(protocols)
    this.token = null
    this.skipHeartbeat = true // as phoenix's LongPoll: every poll proves the session alive
    this.pollEndpoint = this.normalizeEndpoint(endPoint)
    const vsn = /[?&]vsn=([^&#]*)/.exec(this.pollEndpoint)
    this.vsn = vsn ? decodeURIComponent(vsn[1]) : "2.0.0"
    this.startTimer = setTimeout(() => this.poll(), 0)
  }

  normalizeEndpoint(endPoint){
    return endPoint.replace("ws://", "http://").replace("wss://", "https://").replace(/(.*)\/websocket/, "$1/longpoll")
  }

  headers(){
    const h = {}
    if(this.token !== null){ h[LONGPOLL_TOKEN_HEADER] = this.token }
    if(this.authToken){ h["X-Phoenix-AuthToken"] = this.authToken }
    return h
  }

  postTarget(){ return {url: this.pollEndpoint, headers: this.headers()} }

  async poll(){
    let failingSince = null
    let attempt = 0
    while(this.isActive()){
      const r = await this.request("GET", this.pollEndpoint, {"Accept": "application/json", ...this.headers()}, null)
      if(r === null || !this.isActive()){ return }
      const body = r.json
      const status = body && typeof body.status === "number" ? body.status : null
      const ok = (status === 200 || status === 204 || status === 410) && typeof body.token === "string" &&
        (status !== 200 || (Array.isArray(body.messages) && body.messages.every((m) => validFrame(m, this.vsn))))
      if(!ok && status !== 403 && status !== 410){
        // no answer, a timeout, a proxy's page, a 5xx, a store not answering (500), a garbled
        // body: the same poll again, with the same token, which gets the same messages
        failingSince ??= Date.now()
        if(Date.now() - failingSince >= this.retryMs || attempt + 1 >= MAX_ATTEMPTS * 2){
          return r.failure === "timeout" ? this.fail("timeout", 1005, "timeout") : this.fail(status ?? 500, 1011, "internal server error")
        }
        if(!(await this.wait(Math.max(backoff(attempt++), r.retryAfter)))){ return }
        continue
      }
      failingSince = null
      attempt = 0
      switch(status){
        case 200:
          this.token = body.token
          for(const msg of body.messages){ this.deliver(msg) }
          break
        case 204:
          this.token = body.token
          break
        case 410:
          if(this.token !== null){ return this.fail(410, 3410, "session_gone") }
          if(typeof body.token !== "string"){ return this.fail(410, 1011, "no session token") }
          this.token = body.token
          this.readyState = OPEN
          this.onopen({})
          break
        case 403:
          this.onerror(403)
          return this.close(1008, "forbidden", false)
      }
    }
  }

  /**
   * Takes over a session another transport started (withFallback's hand-off from SSE): open at
   * once, sending what is sent meanwhile once `ready` gives the session's token and the frames
   * the other transport did not POST.
   * @param {Promise<{token: string, frames: string[]}>} ready
   */
  adopt(ready){
    clearTimeout(this.startTimer)
    this.readyState = OPEN
    this.awaitingBatchAck = true // sends wait in batchBuffer
    ready.then(({token, frames}) => {
      if(!this.isActive()){ return }
      this.token = token
      const pending = frames.concat(this.batchBuffer)
      this.batchBuffer = []
      if(pending.length > 0){ this.batchSend(pending) } else { this.awaitingBatchAck = false }
      this.poll()
    }, (err) => this.fail(err, 1011, "hand-off failed"))
  }

  /**
   * Closes the transport and drops what was not sent, as phoenix's LongPoll#close.
   * @param {number} [code]
   * @param {string} [reason]
   * @param {boolean} [wasClean=true]
   */
  close(code, reason, wasClean = true){
    if(this.readyState === CLOSED){ return }
    this.stop(CLOSED)
    this.emitClose(code || 1005, reason || "", wasClean)
  }

  stop(readyState){
    super.stop(readyState)
    clearTimeout(this.startTimer)
  }
}

/**
 * @typedef {Object} FallbackOptions
 * @property {boolean|Function} [webSocket=false] - try a WebSocket first (`/socket/websocket`, the
 *   transport phoenix.js uses by default), then SSE, then long-polling: `true` uses the global
 *   `WebSocket` (none: SSE first); a class with the browser WebSocket's API (npm `ws` in Node) is used instead
 * @property {number} [webSocketMs=3000] - time for the WebSocket to open and echo a heartbeat
 *   (phoenix.js's `longPollFallbackMs`)
 * @property {number} [fallbackMs=3000] - time for the SSE stream to open and echo a heartbeat
 * @property {number} [rememberMs=600000] - how long a fallback is remembered (later connections
 *   go straight to the transport that worked): 10 minutes, then the first choice is tried again
 * @property {?Storage} [storage] - where the decision is remembered; default `sessionStorage` when available, `null` for none
 * @property {string} [storageKey="sluice:sse-fallback"]
 * @property {Function} [SSE=SSETransport] - the SSE transport class to try
 */

/**
 * Returns a phoenix.js transport class that tries SSE first and uses long-polling when SSE does
 * not work on this network: `new Socket("/socket", {transport: withFallback()})`. With
 * `{webSocket: true}` it tries a WebSocket before SSE: the choice phoenix.js's
 * `longPollFallbackMs` makes, with SSE between the two.
 *
 * A transport on trial counts as working once it opened and a heartbeat sent up came back down
 * it, within its window (`webSocketMs` for the WebSocket, `fallbackMs` for SSE: the health check
 * phoenix.js makes before trusting a WebSocket with `longPollFallbackMs`). Until the check passes
 * the socket sees a transport that is still connecting, so phoenix.js sends nothing (it keeps
 * its pushes and joins until the socket opens); on failure the next transport takes its place
 * silently, and nothing sent by the app is lost or sent twice.
 *
 * The WebSocket fails its trial when it errors or closes before its echo (a proxy that answers
 * the upgrade with an error), or no echo came within `webSocketMs` (a proxy that swallows the
 * upgrade or the frames); then SSE is tried. Once a WebSocket passed, the class keeps using
 * WebSocket without trials: a later WebSocket that does not open (a restart, a drain) is a close
 * for phoenix.js, which reconnects with backoff and rejoins its channels, over WebSocket again.
 *
 * For SSE, a single dropped or refused stream, or a failed POST, is not evidence: the SSE
 * transport repeats them itself. What makes the socket use long-polling is evidence: no echo
 * within `fallbackMs` (a proxy that buffers the stream), the SSE transport giving up (its first
 * stream failed `streamAttempts` times), no EventSource at all, or, once open, heartbeats that
 * arrive late or batched (see SSETransport#onHeartbeat). Heartbeats that show buffering after the
 * socket opened hand the same session over to the long-poll transport (no reconnect, no rejoin)
 * when it can take one over (ResilientLongPoll can), else the socket reconnects over long-polling.
 *
 * A fallback is remembered once the transport fallen back to works: for `rememberMs`, in
 * `storage` and in memory for this class, later connections start with it (SSE or long-polling);
 * then the first choice is tried again.
 *
 * @param {Function|FallbackOptions} [LongPoll=ResilientLongPoll] - the long-poll transport class;
 *   phoenix's own LongPoll works too, without its resilience
 * @param {FallbackOptions} [opts]
 * @returns {Function} a transport class for the Socket's `transport` option
 */
export function withFallback(LongPoll = ResilientLongPoll, opts = {}){
  if(LongPoll !== null && typeof LongPoll === "object"){ [LongPoll, opts] = [ResilientLongPoll, LongPoll] }
  LongPoll ??= ResilientLongPoll
  const {
    webSocket = false, webSocketMs = 3000, fallbackMs = 3000, rememberMs = 10 * 60 * 1000,
    storage, storageKey = "sluice:sse-fallback", SSE = SSETransport,
  } = opts
  const store = storage !== undefined ? storage : defaultSessionStorage()
  // the WebSocket class to try first, or null (looked up late: a test may install one)
  const webSocketClass = () => webSocket === true ? (globalThis.WebSocket ?? null) : (typeof webSocket === "function" ? webSocket : null)
  // the remembered fallback of this class ({transport, until}), also kept in storage
  let remembered = null
  // a WebSocket of this class passed its trial: later ones are not judged
  let webSocketWorked = false
  const recall = () => {
    if(remembered && remembered.until > Date.now()){ return remembered.transport }
    // {until}: anything else (an earlier version's "LongPoll", garbage) is not a decision
    const saved = safely(() => store && JSON.parse(store.getItem(storageKey)))
    if(!saved || typeof saved.until !== "number" || saved.until <= Date.now()){ return null }
    return saved.transport === "SSE" ? "SSE" : "LongPoll"
  }
  const remember = (transport, reason) => {
    remembered = {transport, until: Date.now() + rememberMs}
    safely(() => store && store.setItem(storageKey, JSON.stringify({transport, reason, until: remembered.until})))
  }
  let probes = 0

  return class SSEWithFallback {
    constructor(endPoint, protocols){
      this.onopen = noop
      this.onerror = noop
      this.onmessage = noop
      this.onclose = noop
      this.args = [endPoint, protocols]
      const vsn = /[?&]vsn=([^&#]*)/.exec(endPoint)
      this.vsn = vsn ? decodeURIComponent(vsn[1]) : "2.0.0"
      this.settings = {}
      this.probeRef = null
      this.trial = null // the transport on trial (a WebSocket or SSE) until it echoes a heartbeat
      this.checked = false // the transport passed its trial, or is the last resort
      this.closed = false // phoenix closed us
      this.retiring = null // the SSE transport that handed its session over
      this.reason = null // why we fell back
      this.fellBack = false // on long-polling
      const WebSocketImpl = webSocketClass()
      if(WebSocketImpl && webSocketWorked){
        this.checked = true
        this.use(new WebSocketImpl(endPoint, protocols))
        return
      }
      switch(recall() ?? (WebSocketImpl ? "WebSocket" : "SSE")){
        case "WebSocket": this.tryWebSocket(WebSocketImpl); break
        case "SSE": this.trySSE(); break
        default: this.useLongPoll()
      }
    }

    /** The transport in use: a WebSocket, an SSETransport, or the long-poll transport. */
    get transport(){ return this.current }
    get readyState(){
      // connecting until the health check passed, so that phoenix does not send yet
      const state = this.current.readyState
      return state === OPEN && !this.checked ? CONNECTING : state
    }
    get skipHeartbeat(){ return this.current.skipHeartbeat }
    get bufferedAmount(){ return this.current.bufferedAmount }
    get currentBatch(){ return this.current.currentBatch }
    get awaitingBatchAck(){ return this.current.awaitingBatchAck }
    // phoenix sets these after construction; they go to whichever transport is in use
    set timeout(ms){ this.settings.timeout = ms; this.current.timeout = ms }
    get timeout(){ return this.current.timeout }
    set binaryType(t){ this.settings.binaryType = t; this.current.binaryType = t }
    get binaryType(){ return this.current.binaryType }

    tryWebSocket(WebSocketImpl){
      let ws
      try {
        ws = new WebSocketImpl(...this.args)
      } catch {
        // a WebSocket the page may not open (a content security policy, a bad URL)
        this.reason = "no websocket"
        return this.trySSE()
      }
      this.trial = ws
      this.use(ws)
      this.fallbackTimer = setTimeout(() => this.fallBack("no heartbeat echo within webSocketMs"), webSocketMs)
    }

    trySSE(){
      this.trial = new SSE(...this.args)
      this.use(this.trial)
      this.fallbackTimer = setTimeout(() => this.fallBack("no heartbeat echo within fallbackMs"), fallbackMs)
    }

    useLongPoll(){
      this.trial = null
      this.fellBack = true
      this.use(new LongPoll(...this.args))
    }

    use(transport){
      this.current = transport
      Object.assign(transport, this.settings)
      // the transport on trial is judged until it passes; the last resort is forwarded as is
      const judged = () => this.trial === transport && !this.checked && !this.closed
      const mine = (fn) => (arg) => { if(this.current === transport){ fn(arg) } }
      transport.onmessage = (ev) => {
        if(this.current === transport){ return judged() ? this.checkReply(ev) : this.onmessage(ev) }
        // frames the SSE stream received before it handed its session over
        if(this.retiring === transport){ this.onmessage(ev) }
      }
      const failed = () => this.fallBack(transport instanceof SSE ? "sse failed" : "websocket failed")
      transport.onerror = mine((err) => judged() ? failed() : this.onerror(err))
      transport.onclose = mine((ev) => judged() ? failed() : this.onclose(ev))
      transport.onopen = mine((ev) => {
        if(judged()){ return this.sendProbe() }
        this.checked = true
        if(this.reason){ remember("LongPoll", this.reason) }
        this.onopen(ev)
      })
      if(transport instanceof SSE){ transport.onbuffering = mine(() => this.handOver()) }
    }

    // A phoenix heartbeat with our own ref; the server's reply must come back.
    sendProbe(){
      this.probeRef = `sluice-probe:${++probes}`
      const frame = this.vsn.startsWith("1.")
        ? {topic: "phoenix", event: "heartbeat", payload: {}, ref: this.probeRef}
        : [null, this.probeRef, "phoenix", "heartbeat", {}]
      this.current.send(JSON.stringify(frame))
    }

    checkReply(ev){
      let msg
      try { msg = JSON.parse(ev.data) } catch { return }
      const ref = Array.isArray(msg) ? msg[1] : msg && msg.ref
      if(ref !== this.probeRef){ return }
      clearTimeout(this.fallbackTimer)
      this.checked = true
      if(this.current instanceof SSE){
        if(this.reason){ remember("SSE", this.reason) }
      } else {
        webSocketWorked = true
      }
      this.onopen({})
    }

    // The transport on trial failed it: the next one takes its place, phoenix sees nothing.
    fallBack(reason){
      const failed = this.current
      if(this.checked || this.closed || failed !== this.trial){ return }
      clearTimeout(this.fallbackTimer)
      this.reason = reason
      if(failed instanceof SSE){
        this.useLongPoll()
        failed.close(1000, "falling back to long-polling")
      } else {
        this.trySSE()
        failed.close(1000, "falling back to SSE")
      }
    }

    // Heartbeats showed a buffering proxy after the socket opened: the long-poll transport
    // continues the same session where it can, else the socket reconnects over long-polling.
    handOver(){
      const sse = this.current
      if(this.closed || !(sse instanceof SSE)){ return }
      remember("LongPoll", "buffering")
      if(typeof LongPoll.prototype.adopt !== "function" || sse.longPollToken() === null){
        return sse.fail("buffering", 4000, "buffering proxy: reconnecting over long-polling")
      }
      const lp = new LongPoll(...this.args)
      this.retiring = sse
      this.trial = null
      this.fellBack = true
      this.use(lp)
      lp.adopt(sse.handOff())
    }

    send(data){ this.current.send(data) }

    close(code, reason){
      this.closed = true
      clearTimeout(this.fallbackTimer)
      if(this.retiring){ this.retiring.stop(CLOSED) }
      this.current.close(code, reason)
    }
  }
}

function defaultSessionStorage(){
  // reading sessionStorage throws in sandboxed iframes and with storage disabled
  return safely(() => globalThis.sessionStorage) || null
}

function safely(fn){
  try { return fn() } catch { return undefined }
}

function arrayBufferToBase64(buffer){
  let binary = ""
  const bytes = new Uint8Array(buffer)
  for(let i = 0; i < bytes.byteLength; i++){ binary += String.fromCharCode(bytes[i]) }
  return btoa(binary)
}

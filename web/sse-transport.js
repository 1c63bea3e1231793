// Sluice's SSE transport for phoenix.js: Server-Sent Events down, HTTP POST up.
//
//   import {Socket, LongPoll} from "phoenix"
//   import {SSETransport} from "/js/sse-transport.js"
//
//   const socket = new Socket("/socket", {transport: SSETransport, params: {token}})
//   // or: try SSE, fall back to LongPoll when a proxy holds the stream
//   const socket = new Socket("/socket", {transport: SSETransport.withFallback(LongPoll), params: {token}})
//
// phoenix.js drives a transport like a WebSocket: `new Transport(endPointURL, protocols)`, then
// it sets onopen/onerror/onmessage/onclose, `timeout` and `binaryType`, reads `readyState`
// (0 connecting, 1 open, 2 closing, 3 closed), `skipHeartbeat` and `bufferedAmount`, and calls
// send(frame) and close(code, reason). Any close it did not ask for, whatever the code, makes it
// reconnect with backoff and rejoin its channels. The server side is sse/sse.go.

const CONNECTING = 0
const OPEN = 1
const CLOSING = 2
const CLOSED = 3
const ES_CLOSED = 2 // EventSource.CLOSED: it will not reconnect by itself
const MAX_BATCH = 100 // frames per POST: the server's limit, and phoenix's LongPoll's
const AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
const noop = () => {}

/**
 * phoenix.js transport over Sluice's `/socket/sse` endpoint, for `new Socket(url, {transport: SSETransport})`.
 *
 * One `EventSource` carries every server frame (one unnamed event each, whose id resumes the
 * stream exactly); client frames are POSTed as `application/x-ndjson` batches, in order, to
 * the URL named by the stream's `session` event. When the stream drops or the server ends it
 * (its maximum lifetime), EventSource reconnects by itself and sends Last-Event-ID: the same
 * session resumes with nothing lost or repeated, and phoenix.js never notices. The socket
 * only sees a close (and reconnects, rejoining its channels) when the session is gone, a POST
 * fails, or the EventSource gives up (a non-200 answer such as a 403).
 *
 * Options are static properties, so that a subclass can carry its own:
 * `class MySSE extends SSETransport { static withCredentials = true }`.
 */
export class SSETransport {
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

  /**
   * @param {string} endPoint - phoenix's endPointURL(): `ws(s)://host/socket/websocket?params&vsn=2.0.0`
   * @param {string[]} [protocols] - `["phoenix", "base64url.bearer.phx.<token>"]` when the socket has an authToken
   */
  constructor(endPoint, protocols){
    const options = this.constructor
    this.readyState = CONNECTING
    // phoenix.js sends its own heartbeat every 30 s over any transport but LongPoll. We keep it:
    // it is a tiny POST whose reply must come back down the stream, so it proves the whole loop
    // works and bounds how long a stream that silently stopped delivering (half-open TCP, a
    // proxy that started buffering, an EventSource retrying against a dead server) passes for
    // open. The server needs no more: an open stream keeps the session alive by itself.
    this.skipHeartbeat = false
    this.timeout = 20000 // phoenix sets its longpollerTimeout here; bounds each POST
    this.binaryType = "arraybuffer"
    this.onopen = noop
    this.onerror = noop
    this.onmessage = noop
    this.onclose = noop
    /** Called (by withFallback) when the heartbeats show a buffering proxy. */
    this.onbuffering = null
    this.withCredentials = options.withCredentials
    this.lateMs = options.lateMs
    this.probeHeartbeats = options.probeHeartbeats
    if(protocols && protocols.length === 2 && String(protocols[1]).startsWith(AUTH_TOKEN_PREFIX)){
      this.authToken = atob(protocols[1].slice(AUTH_TOKEN_PREFIX.length))
    }
    this.streamURL = SSETransport.streamURL(endPoint, this.authToken)
    this.sessionId = null
    this.postURL = null
    this.credential = null
    this.es = null
    // the same names as LongPoll's, which tools that wait for a socket to flush already read
    this.currentBatch = null
    this.currentBatchTimer = null
    this.batchBuffer = []
    this.awaitingBatchAck = false
    this.inFlight = 0 // frames POSTed and not yet acknowledged
    this.reqs = new Set()
    this.messageTimers = new Set()
    this.heartbeats = 0
    this.lagMin = Infinity
    this.lagMax = -Infinity
    // like LongPoll: start on the next tick, once phoenix has set our callbacks (it may also
    // close us first), and so that a missing EventSource is reported as an error, not thrown
    this.startTimer = setTimeout(() => this.start(), 0)
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

  /** Frames handed to send() and not yet acknowledged by the server; phoenix waits for 0 before closing. */
  get bufferedAmount(){
    return this.inFlight + this.batchBuffer.length + (this.currentBatch ? this.currentBatch.length : 0)
  }

  start(){
    if(this.readyState !== CONNECTING){ return }
    const EventSourceImpl = this.constructor.EventSource || globalThis.EventSource
    let es
    try {
      if(!EventSourceImpl){ throw new Error("no EventSource in this environment") }
      es = new EventSourceImpl(this.streamURL, {withCredentials: this.withCredentials})
    } catch(err){
      return this.fail(err, 1006, "no EventSource")
    }
    this.es = es
    // events of an EventSource we already closed are ignored (a polyfill may still dispatch
    // the rest of a chunk it was parsing)
    const mine = (fn) => (ev) => { if(this.es === es){ fn(ev) } }
    es.addEventListener("session", mine((ev) => this.onSession(ev)))
    es.addEventListener("heartbeat", mine((ev) => this.onHeartbeat(ev)))
    es.addEventListener("session_gone", mine(() => this.fail(410, 3410, "session_gone")))
    es.addEventListener("message", mine((ev) => this.deliver(ev.data)))
    es.addEventListener("error", mine(() => {
      if(this.readyState === CONNECTING){
        // the stream never opened: fail like a WebSocket that cannot connect, so that phoenix
        // backs off and reports it (and withFallback tries LongPoll)
        this.fail("stream error", 1006, "sse stream failed")
      } else if(es.readyState === ES_CLOSED){
        // EventSource gave up (a 4xx/5xx or wrong content type): phoenix reconnects afresh
        this.fail("stream closed", 1011, "sse stream closed")
      }
      // otherwise the stream dropped or ended (the server's max lifetime) and EventSource
      // reconnects by itself with Last-Event-ID, resuming the same session: nothing to do
    }))
  }

  onSession(ev){
    let info
    try { info = JSON.parse(ev.data) } catch { info = null }
    if(!info || typeof info.session !== "string" || typeof info.post !== "string"){
      return this.fail("bad session event", 1011, "bad session event")
    }
    if(this.sessionId === null){
      this.sessionId = info.session
      this.postURL = new URL(info.post, this.streamURL).href
      // The session's credential: sent in a header of every POST, never in a URL (proxies log URLs)
      this.credential = typeof info.credential === "string" ? info.credential : null
      this.readyState = OPEN
      this.onopen({})
    } else if(info.session !== this.sessionId){
      // EventSource resumed, but the server no longer had our session and started a new one:
      // like LongPoll's 410, fail so that phoenix reconnects and rejoins its channels
      this.fail(410, 3410, "session_gone")
    }
    // same session: resumed exactly after the last event we received
  }

  // Each frame in its own task, as a WebSocket delivers them (see LongPoll's comment): promise
  // callbacks of one message run before the next message is handled.
  deliver(data){
    const timer = setTimeout(() => {
      this.messageTimers.delete(timer)
      this.onmessage({data})
    }, 0)
    this.messageTimers.add(timer)
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

  /**
   * Sends one frame. Frames sent in the same tick go in one POST; one POST is in flight at a
   * time and the others wait, so the server gets them in order (as LongPoll does).
   * @param {string|ArrayBuffer} body - a serialized frame
   */
  send(body){
    // as LongPoll does; Sluice refuses binary frames with a clear 400, which fails the socket
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
      const batch = frames.slice(i, i + MAX_BATCH)
      const status = await this.post(batch)
      if(status === null){ return } // stopped meanwhile
      if(status !== 200){
        const [code, reason] = status === "timeout" ? [1005, "timeout"]
          : status === 410 ? [3410, "session_gone"] : [1011, "internal server error"]
        return this.fail(status, code, reason)
      }
    }
    if(this.batchBuffer.length > 0){
      const next = this.batchBuffer
      this.batchBuffer = []
      this.batchSend(next)
    } else {
      this.awaitingBatchAck = false
    }
  }

  // Resolves 200, another status (0 for a network error), "timeout", or null once stopped.
  async post(batch){
    const controller = new AbortController()
    this.reqs.add(controller)
    this.inFlight += batch.length
    let timedOut = false
    const timer = this.timeout ? setTimeout(() => { timedOut = true; controller.abort() }, this.timeout) : null
    let status
    try {
      const res = await globalThis.fetch(this.postURL, {
        method: "POST",
        headers: this.credential ? {"Content-Type": "application/x-ndjson", "X-Sluice-Session": this.credential} : {"Content-Type": "application/x-ndjson"},
        body: batch.join("\n"),
        signal: controller.signal,
        credentials: this.withCredentials ? "include" : "same-origin",
      })
      const json = await res.json().catch(() => null)
      const ok = res.status === 200 && json && json.status === 200
      status = ok ? 200 : res.status !== 200 ? res.status : (json && json.status) || 0
    } catch {
      status = timedOut ? "timeout" : 0
    } finally {
      clearTimeout(timer)
    }
    if(!this.reqs.delete(controller)){ return null }
    this.inFlight -= batch.length
    return status
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

  /**
   * Fails the transport: onerror, then an unclean close with `code` (never 1000), after
   * which phoenix reconnects with backoff and rejoins its channels.
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
    clearTimeout(this.startTimer)
    if(this.es){ this.es.close(); this.es = null }
    const reqs = this.reqs
    this.reqs = new Set()
    for(const controller of reqs){ controller.abort() }
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

  /**
   * A transport class that tries SSE and falls back to `LongPoll`; see {@link withFallback}.
   * Uses this class (or a subclass) for the SSE attempt.
   * @param {Function} LongPoll - phoenix's LongPoll class (`import {LongPoll} from "phoenix"`)
   * @param {FallbackOptions} [opts]
   * @returns {Function}
   */
  static withFallback(LongPoll, opts = {}){
    return withFallback(LongPoll, {...opts, SSE: this})
  }
}

/**
 * @typedef {Object} FallbackOptions
 * @property {number} [fallbackMs=3000] - time for the stream to open and echo a heartbeat
 * @property {?Storage} [storage] - where the decision is remembered; default `sessionStorage` when available, `null` for none
 * @property {string} [storageKey="sluice:sse-fallback"]
 * @property {Function} [SSE=SSETransport] - the SSE transport class to try
 */

/**
 * Returns a phoenix.js transport class that tries SSE first and uses `LongPoll` when SSE does
 * not work on this network: `new Socket("/socket", {transport: withFallback(LongPoll)})`.
 *
 * SSE counts as working once its stream opened and a heartbeat POSTed up came back down it,
 * within `fallbackMs` (the same health check phoenix.js makes before trusting a WebSocket with
 * `longPollFallbackMs`); a proxy that buffers the stream fails it, as do a stream that errors
 * and an environment without EventSource. Until then the socket sees a transport that is still
 * connecting; on failure it silently swaps in a LongPoll, whose callbacks reach the socket as
 * if it had been the transport from the start. Heartbeats that later arrive late or batched
 * (see SSETransport#onHeartbeat) fail the open socket so that it reconnects, over LongPoll.
 * Once a fallback LongPoll opened, the decision is remembered (in `storage`, and in memory for
 * this class) and later connections go straight to LongPoll.
 *
 * @param {Function} LongPoll - phoenix's LongPoll class
 * @param {FallbackOptions} [opts]
 * @returns {Function} a transport class for the Socket's `transport` option
 */
export function withFallback(LongPoll, {fallbackMs = 3000, storage, storageKey = "sluice:sse-fallback", SSE = SSETransport} = {}){
  const store = storage !== undefined ? storage : defaultSessionStorage()
  let remembered = false
  const useLongPoll = () => remembered || safely(() => store && store.getItem(storageKey) === "LongPoll")
  const remember = () => {
    remembered = true
    safely(() => store && store.setItem(storageKey, "LongPoll"))
  }
  let probes = 0

  return class SSEWithFallback {
    constructor(endPoint, protocols){
      this.onopen = noop
      this.onerror = noop
      this.onmessage = noop
      this.onclose = noop
      this.args = [endPoint, protocols]
      this.settings = {}
      this.probeRef = null
      this.checked = false // SSE passed the health check, or we fell back
      this.closed = false // phoenix closed us
      this.fellBack = useLongPoll()
      if(this.fellBack){
        this.use(new LongPoll(endPoint, protocols))
      } else {
        this.use(new SSE(endPoint, protocols))
        this.fallbackTimer = setTimeout(() => this.fallBack(), fallbackMs)
      }
    }

    /** The transport in use: an SSETransport, or the LongPoll it fell back to. */
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

    use(transport){
      this.current = transport
      Object.assign(transport, this.settings)
      // the SSE attempt is judged until it passes the health check; a LongPoll is forwarded as is
      const judged = () => transport instanceof SSE && !this.checked && !this.closed
      const mine = (fn) => (arg) => { if(this.current === transport){ fn(arg) } }
      transport.onmessage = mine((ev) => judged() ? this.checkReply(ev) : this.onmessage(ev))
      transport.onerror = mine((err) => judged() ? this.fallBack() : this.onerror(err))
      transport.onclose = mine((ev) => judged() ? this.fallBack() : this.onclose(ev))
      transport.onopen = mine((ev) => {
        if(judged()){ return this.sendProbe() }
        this.checked = true
        if(this.fellBack){ remember() }
        this.onopen(ev)
      })
      transport.onbuffering = mine(() => {
        remember()
        transport.fail("buffering", 4000, "buffering proxy: reconnecting over long-polling")
      })
    }

    // A phoenix heartbeat with our own ref; the server's reply must come down the stream.
    sendProbe(){
      this.probeRef = `sse-probe:${++probes}`
      const vsn = new URL(this.current.streamURL).searchParams.get("vsn") || ""
      const frame = vsn.startsWith("1.")
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
      this.onopen({})
    }

    fallBack(){
      if(this.fellBack || this.checked || this.closed){ return }
      clearTimeout(this.fallbackTimer)
      const sse = this.current
      this.fellBack = true
      this.use(new LongPoll(...this.args))
      sse.close(1000, "falling back to long-polling")
    }

    send(data){ this.current.send(data) }

    close(code, reason){
      this.closed = true
      clearTimeout(this.fallbackTimer)
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

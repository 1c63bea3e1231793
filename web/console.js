// Sluice's debug console (served at / by web.RegisterConsole): connect a phoenix.js Socket over
// SSE or LongPoll, join and leave topics, push events, watch every raw frame and each topic's
// presence, and run the transport self-test against /socket/selftest. Plain ES module, no build
// step; everything it loads comes from the gateway itself.

import {Socket, LongPoll, Presence} from "./js/phoenix.mjs"
import {SSETransport} from "./js/sse-transport.js"

const MAX_FRAMES = 500 // raw log entries kept
const MAX_TOPIC_LOG = 50 // replies and events kept per topic
const LONG_FRAME = 600 // characters shown before "more"
const PUSH_TIMEOUT = 10000

const $ = (id) => document.getElementById(id)

/** Creates an element: el("li", {class: "x", dataset: {k: "v"}}, child, "text", ...). */
function el(tag, attrs = {}, ...children){
  const node = document.createElement(tag)
  for(const [k, v] of Object.entries(attrs)){
    if(v === undefined || v === null || v === false){ continue }
    if(k === "class"){ node.className = v }
    else if(k === "dataset"){ Object.assign(node.dataset, v) }
    else if(k === "text"){ node.textContent = v }
    else if(k.startsWith("on")){ node.addEventListener(k.slice(2), v) }
    else { node.setAttribute(k, v === true ? "" : v) }
  }
  for(const c of children){
    if(c !== null && c !== undefined){ node.append(c) }
  }
  return node
}

const pad = (n, w = 2) => String(n).padStart(w, "0")
/** Local wall-clock time with milliseconds: 14:03:27.512 */
function clock(ms){
  const d = new Date(ms)
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
}

/** Parses text as JSON; returns {value} or {error} (a readable message). */
function parseJSON(text, {object = true} = {}){
  const src = text.trim() === "" ? "{}" : text
  let value
  try { value = JSON.parse(src) } catch(e){ return {error: `invalid JSON: ${e.message}`} }
  if(object && (value === null || typeof value !== "object" || Array.isArray(value))){
    return {error: "must be a JSON object: {...}"}
  }
  return {value}
}

const compact = (v) => { try { return JSON.stringify(v) } catch { return String(v) } }

// ---------------------------------------------------------------------------------------------
// Raw frames log

const frames = [] // {t, dir, text, el}
const frameList = $("frames")
const filter = {text: "", dir: "all", hideHeartbeats: false}
// phoenix heartbeats and their replies: topic "phoenix"
const HEARTBEAT = /^\[[^,]*,[^,]*,"phoenix",/

function frameVisible(f){
  if(filter.dir !== "all" && f.dir !== filter.dir){ return false }
  if(filter.hideHeartbeats && HEARTBEAT.test(f.text)){ return false }
  if(filter.text && !f.text.toLowerCase().includes(filter.text)){ return false }
  return true
}

/** Logs one frame: dir is "in" (server to browser), "out" (browser to server) or "sys". */
function logFrame(dir, text){
  const f = {t: Date.now(), dir, text: String(text)}
  const arrow = dir === "in" ? "←" : dir === "out" ? "→" : "·"
  const body = el("code", {class: "text", text: f.text.length > LONG_FRAME ? f.text.slice(0, LONG_FRAME) : f.text})
  let more = null
  if(f.text.length > LONG_FRAME){
    more = el("button", {type: "button", class: "more", text: `… +${f.text.length - LONG_FRAME} chars`})
    more.addEventListener("click", () => { body.textContent = f.text; more.remove() })
  }
  f.el = el("li", {class: `frame ${dir}`, dataset: {dir}},
    el("time", {text: clock(f.t), datetime: new Date(f.t).toISOString()}),
    el("span", {class: "dir", title: dir, text: arrow}), body, more)
  f.el.hidden = !frameVisible(f)
  frames.push(f)
  frameList.append(f.el)
  while(frames.length > MAX_FRAMES){ frames.shift().el.remove() }
  $("frame-count").textContent = String(frames.length)
  if($("frame-follow").checked){ frameList.scrollTop = frameList.scrollHeight }
}

function applyFilter(){
  filter.text = $("frame-filter").value.trim().toLowerCase()
  filter.dir = $("frame-dir").value
  filter.hideHeartbeats = $("frame-hide-hb").checked
  for(const f of frames){ f.el.hidden = !frameVisible(f) }
  if($("frame-follow").checked){ frameList.scrollTop = frameList.scrollHeight }
}

$("frame-filter").addEventListener("input", applyFilter)
$("frame-dir").addEventListener("change", applyFilter)
$("frame-hide-hb").addEventListener("change", applyFilter)
$("frame-clear").addEventListener("click", () => {
  frames.length = 0
  frameList.replaceChildren()
  $("frame-count").textContent = "0"
})

// ---------------------------------------------------------------------------------------------
// Transports that record what crosses the wire. phoenix.js hands a transport each serialized
// frame with send(body) and receives frames by calling the onmessage it assigned: a subclass
// intercepts both, so the log shows exactly the text on the wire (one frame per entry; SSE
// POSTs and LongPoll batches join several with newlines).

function tapped(Base, name){
  const Tapped = class extends Base {
    send(body){
      logFrame("out", typeof body === "string" ? body : `<binary frame, ${body.byteLength} bytes>`)
      return super.send(body)
    }
    get onmessage(){ return this.tapMessage }
    set onmessage(fn){
      this.tapMessage = (ev) => {
        logFrame("in", typeof ev.data === "string" ? ev.data : `<binary frame, ${ev.data.byteLength} bytes>`)
        return fn(ev)
      }
    }
    get onopen(){ return this.tapOpen }
    set onopen(fn){
      this.tapOpen = (ev) => {
        const session = this.sessionId ? ` (session ${this.sessionId})` : ""
        logFrame("sys", `${name} open${session}`)
        return fn(ev)
      }
    }
    get onclose(){ return this.tapClose }
    set onclose(fn){
      this.tapClose = (ev) => {
        logFrame("sys", `${name} closed: code ${ev && ev.code}${ev && ev.reason ? ` (${ev.reason})` : ""}`)
        return fn(ev)
      }
    }
  }
  Object.defineProperty(Tapped, "name", {value: name})
  return Tapped
}

const TRANSPORTS = {
  sse: tapped(SSETransport, "SSE"),
  longpoll: tapped(LongPoll, "LongPoll"),
}

// ---------------------------------------------------------------------------------------------
// Connection

let socket = null
let transportName = ""
let connErrors = 0
let lastClose = null

function defaultBase(){
  // the page's origin (and path prefix, if a proxy mounts the gateway under one)
  return new URL(".", location.href).href.replace(/\/$/, "")
}

function endpoint(){
  const base = $("server-base").value.trim().replace(/\/+$/, "")
  let path = $("socket-path").value.trim().replace(/\/+$/, "")
  if(!path.startsWith("/")){ path = `/${path}` }
  return {base, path, url: `${base}${path}`}
}

function setConnState(){
  const state = socket ? socket.connectionState() : "closed"
  $("conn-badge").dataset.state = state
  $("conn-state").textContent = socket ? `${state} · ${transportName}` : "closed"
  $("connect").disabled = socket !== null
  $("disconnect").disabled = socket === null
  $("transport").disabled = socket !== null
  $("token").readOnly = socket !== null
  $("join").disabled = socket === null
  const parts = []
  if(socket){ parts.push(`endpoint ${endpoint().url}`) }
  if(connErrors){ parts.push(`${connErrors} transport error${connErrors === 1 ? "" : "s"} (phoenix.js retries with backoff)`) }
  if(lastClose){ parts.push(`last close: code ${lastClose.code}${lastClose.reason ? ` ${lastClose.reason}` : ""}`) }
  $("conn-detail").textContent = parts.join(" · ")
}

function connect(){
  const {url} = endpoint()
  const token = $("token").value.trim()
  const kind = $("transport").value
  transportName = kind === "sse" ? "SSE" : "LongPoll"
  connErrors = 0
  lastClose = null
  socket = new Socket(url, {transport: TRANSPORTS[kind], authToken: token || undefined, timeout: PUSH_TIMEOUT})
  const mine = socket
  let diagnosed = false
  socket.onOpen(() => { if(socket === mine){ setConnState() } })
  socket.onError((err) => {
    if(socket !== mine){ return }
    connErrors++
    logFrame("sys", `transport error: ${typeof err === "object" && err !== null ? (err.type || err.message || "error") : err}`)
    // an EventSource hides why its stream failed: ask once, with a plain request
    const conn = socket.conn
    if(kind === "sse" && !diagnosed && conn && conn.streamURL && conn.sessionId === null){
      diagnosed = true
      diagnoseStream(conn.streamURL)
    }
    setConnState()
  })
  socket.onClose((ev) => {
    if(socket !== mine){ return }
    lastClose = ev
    setConnState()
  })
  logFrame("sys", `connecting to ${url} over ${transportName}${token ? "" : " without a token"}`)
  socket.connect()
  setConnState()
}

/** Requests the SSE stream once to show why it failed (EventSource reports no status or body). */
async function diagnoseStream(url){
  const controller = new AbortController()
  try {
    const res = await fetch(url, {cache: "no-store", headers: {Accept: "text/event-stream"}, signal: controller.signal})
    if(res.status === 200){
      logFrame("sys", "SSE diagnosis: a plain request to the stream got 200; the failure is on the way (a proxy?) or was transient")
    } else {
      const body = (await res.text()).trim()
      logFrame("sys", `SSE diagnosis: the stream answers HTTP ${res.status} ${body.slice(0, 300)}`)
    }
  } catch(e){
    logFrame("sys", `SSE diagnosis: the stream cannot be reached: ${e.message}`)
  } finally {
    controller.abort()
  }
}

async function disconnect(){
  if(!socket){ return }
  const s = socket
  socket = null
  // leave first, so that presence leaves at once, then close once the leaves went out:
  // phoenix's disconnect waits for bufferedAmount, which its LongPoll does not keep
  const joined = [...topics.values()].filter((t) => t.channel.isJoined() || t.channel.isJoining())
  for(const t of joined){ t.channel.leave() }
  for(const t of [...topics.values()]){ removeTopic(t) }
  setConnState()
  const deadline = Date.now() + 2000
  while(joined.length && s.isConnected() && Date.now() < deadline){
    const conn = s.conn
    if(!conn || (!conn.currentBatch && !conn.awaitingBatchAck && !conn.bufferedAmount && s.sendBuffer.length === 0)){ break }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  s.disconnect(() => logFrame("sys", "disconnected"))
}

$("connect-form").addEventListener("submit", (ev) => {
  ev.preventDefault()
  if(!socket){ connect() }
})
$("disconnect").addEventListener("click", disconnect)
setInterval(setConnState, 500)

// ---------------------------------------------------------------------------------------------
// Topics: join, leave, push, replies, presence

const topics = new Map() // topic -> {topic, channel, presence, el, ...}

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault()
  const err = $("join-error")
  err.textContent = ""
  if(!socket){ err.textContent = "connect first"; return }
  const topic = $("join-topic").value.trim()
  if(!topic){ err.textContent = "a topic is needed"; return }
  if(topics.has(topic)){ err.textContent = `${topic} is already joined here`; return }
  const params = parseJSON($("join-params").value)
  if(params.error){ err.textContent = `join params: ${params.error}`; return }
  joinTopic(topic, params.value)
})

function joinTopic(topic, params){
  const channel = socket.channel(topic, params)
  const presence = new Presence(channel)
  const t = {topic, channel, presence, refused: false}
  buildTopicPanel(t)
  topics.set(topic, t)

  // every event the channel accepts (replies are shown with their push)
  const previous = channel.onMessage.bind(channel)
  channel.onMessage = (event, payload, ref, joinRef) => {
    const out = previous(event, payload, ref, joinRef)
    // replies show with their push, presence in its list; the raw log has everything
    if(!/^(phx_|chan_reply_|presence_(state|diff)$)/.test(event)){
      topicLog(t, "event", event, compact(payload))
    }
    return out
  }
  presence.onSync(() => renderPresence(t))
  channel.onError(() => setTopicState(t))
  channel.onClose(() => setTopicState(t))
  channel.join(PUSH_TIMEOUT)
    .receive("ok", (resp) => { topicLog(t, "ok", "join", compact(resp)); setTopicState(t) })
    .receive("error", (resp) => {
      // phoenix would retry a refused join forever; a console stops and shows why
      t.refused = true
      t.leaveButton.textContent = "Remove"
      topicLog(t, "error", "join", compact(resp))
      channel.leave()
      setTopicState(t)
    })
    .receive("timeout", () => { topicLog(t, "timeout", "join", "no reply (phoenix.js retries)"); setTopicState(t) })
  setTopicState(t)
}

function buildTopicPanel(t){
  const eventInput = el("input", {type: "text", value: "nuevo_mensaje", spellcheck: "false", class: "push-event", "aria-label": "event"})
  const payloadInput = el("textarea", {rows: "2", spellcheck: "false", class: "push-payload", "aria-label": "payload (JSON)"})
  payloadInput.value = `{"contenido": "hola"}`
  const pushError = el("span", {class: "error push-error", role: "alert"})
  const pushForm = el("form", {class: "push", autocomplete: "off"},
    el("div", {class: "grid-push"},
      el("label", {}, "Event ", eventInput),
      el("label", {}, "Payload (JSON) ", payloadInput)),
    el("div", {class: "row"},
      el("button", {type: "submit", class: "primary push-send", text: "Push"}),
      pushError))
  pushForm.addEventListener("submit", (ev) => {
    ev.preventDefault()
    pushError.textContent = ""
    const event = eventInput.value.trim()
    if(!event){ pushError.textContent = "an event name is needed"; return }
    const payload = parseJSON(payloadInput.value)
    if(payload.error){ pushError.textContent = `payload: ${payload.error}`; return } // never sent
    pushEvent(t, event, payload.value)
  })
  const leave = el("button", {type: "button", class: "leave", text: "Leave"})
  leave.addEventListener("click", () => leaveTopic(t))
  t.leaveButton = leave
  t.stateEl = el("span", {class: "topic-state"})
  t.presenceEl = el("ul", {class: "presence"})
  t.presenceCount = el("span", {class: "muted presence-count", text: "0"})
  t.logEl = el("ol", {class: "replies"})
  t.el = el("section", {class: "panel topic", dataset: {topic: t.topic}},
    el("div", {class: "topic-head"},
      el("h3", {text: t.topic}), t.stateEl, leave),
    pushForm,
    el("div", {class: "topic-cols"},
      el("div", {},
        el("h4", {}, "Presence ", t.presenceCount),
        t.presenceEl),
      el("div", {},
        el("h4", {text: "Replies and events"}),
        t.logEl)))
  $("topics").prepend(t.el)
}

function setTopicState(t){
  const state = t.refused ? "refused" : t.channel.state
  t.stateEl.textContent = state
  t.el.dataset.state = state
}

function topicLog(t, status, what, text){
  const li = el("li", {class: `reply ${status}`, dataset: {status, what}},
    el("time", {text: clock(Date.now())}),
    el("span", {class: "status", text: status}),
    el("span", {class: "what", text: what}),
    el("code", {text: text.length > LONG_FRAME ? `${text.slice(0, LONG_FRAME)}…` : text}))
  t.logEl.prepend(li)
  while(t.logEl.children.length > MAX_TOPIC_LOG){ t.logEl.lastElementChild.remove() }
}

function pushEvent(t, event, payload){
  t.channel.push(event, payload, PUSH_TIMEOUT)
    .receive("ok", (resp) => topicLog(t, "ok", event, compact(resp)))
    .receive("error", (resp) => topicLog(t, "error", event, compact(resp)))
    .receive("timeout", () => topicLog(t, "timeout", event, `no reply within ${PUSH_TIMEOUT / 1000} s`))
}

function renderPresence(t){
  const list = t.presence.list((key, {metas}) => ({key, metas}))
  list.sort((a, b) => a.key.localeCompare(b.key, undefined, {numeric: true}))
  t.presenceCount.textContent = String(list.length)
  t.presenceEl.replaceChildren(...list.map(({key, metas}) => el("li", {class: "presence-entry", dataset: {key}},
    el("b", {class: "key", text: key}),
    el("span", {class: "muted", text: metas.length === 1 ? "1 meta" : `${metas.length} metas`}),
    el("ul", {class: "metas"}, ...metas.map((m) => el("li", {}, ...Object.entries(m).map(([k, v]) => el("span", {class: "pair"},
      el("span", {class: "k", text: `${k}: `}),
      el("span", {class: "v", text: typeof v === "string" ? v : compact(v)})))))))))
}

function leaveTopic(t){
  if(t.channel.isJoined() || t.channel.isJoining() || t.channel.state === "errored"){
    t.channel.leave(PUSH_TIMEOUT)
      .receive("ok", () => logFrame("sys", `left ${t.topic}`))
  }
  removeTopic(t)
}

function removeTopic(t){
  topics.delete(t.topic)
  t.el.remove()
}

// ---------------------------------------------------------------------------------------------
// Transport self-test

const STREAM_COUNT = 10
const STREAM_INTERVAL_MS = 250
let selftest = null // AbortController of the running self-test

/**
 * Reads a fetch Response as server-sent events: yields {event, data, id, at} (at: arrival,
 * performance.now()) until the response ends. Consumers read to the end rather than stop early,
 * so that the browser sees the response complete (not aborted); finish(ms) gives the server ms
 * to end it after the last event expected, then cancels it.
 */
async function* readEvents(res, finish = {}){
  const reader = res.body.getReader()
  let timer = null
  finish.after = (ms) => { timer = timer || setTimeout(() => reader.cancel().catch(() => {}), ms) }
  try { yield* parseEvents(reader) } finally { clearTimeout(timer) }
}

async function* parseEvents(reader){
  const decoder = new TextDecoder()
  let buf = ""
  for(;;){
    const {value, done} = await reader.read()
    if(done){ return }
    const at = performance.now()
    buf = (buf + decoder.decode(value, {stream: true})).replace(/\r\n/g, "\n")
    let end
    while((end = buf.indexOf("\n\n")) >= 0){
      const block = buf.slice(0, end)
      buf = buf.slice(end + 2)
      const ev = {event: "message", data: [], id: null, at}
      for(const line of block.split("\n")){
        if(line === "" || line.startsWith(":")){ continue }
        const i = line.indexOf(":")
        const field = i < 0 ? line : line.slice(0, i)
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "")
        if(field === "event"){ ev.event = val }
        else if(field === "data"){ ev.data.push(val) }
        else if(field === "id"){ ev.id = val }
      }
      if(ev.data.length){ ev.data = ev.data.join("\n"); yield ev }
    }
  }
}

const ms = (x) => `${Math.round(x)} ms`
const secs = (x) => `${(x / 1000).toFixed(x < 10000 ? 1 : 0)} s`

function showCheck(id, status, text, data = {}){
  const li = $(id)
  li.dataset.status = status
  for(const [k, v] of Object.entries(data)){ li.dataset[k] = String(v) }
  li.querySelector(".result").textContent = text
}

/**
 * Stream check: STREAM_COUNT events sent STREAM_INTERVAL_MS apart. Arrival spread much smaller
 * than the send spread (or everything at the end) means the path buffers streams.
 */
async function streamCheck({base, path}, signal){
  const url = `${base}${path}/selftest/stream?count=${STREAM_COUNT}&interval=${STREAM_INTERVAL_MS}ms`
  const t0 = performance.now()
  const res = await fetch(url, {cache: "no-store", headers: {Accept: "text/event-stream"}, signal})
  if(res.status !== 200 || !/^text\/event-stream/.test(res.headers.get("content-type") || "")){
    const body = await res.text().catch(() => "")
    return {ok: false, text: `GET ${url} answered HTTP ${res.status} ${body.slice(0, 200)}`}
  }
  const headersMs = performance.now() - t0
  const ticks = []
  let done = false
  const finish = {}
  try {
    for await (const ev of readEvents(res, finish)){
      if(ev.event === "tick"){
        const d = JSON.parse(ev.data)
        ticks.push({sent: d.sent, at: ev.at})
        showCheck("check-stream", "running", `${ticks.length}/${STREAM_COUNT} events…`)
      } else if(ev.event === "done" || ev.event === "aborted"){
        done = ev.event === "done"
        finish.after(2000)
      }
    }
  } catch(e){
    if(signal.aborted){ throw e }
    if(!done){ return {ok: false, text: `the stream broke after ${ticks.length} of ${STREAM_COUNT} events: ${e.message}`} }
  }
  if(ticks.length < STREAM_COUNT || !done){
    return {ok: false, text: `the stream ended after ${ticks.length} of ${STREAM_COUNT} events`}
  }
  const sendSpread = ticks[ticks.length - 1].sent - ticks[0].sent
  const arrivalSpread = ticks[ticks.length - 1].at - ticks[0].at
  const firstMs = ticks[0].at - t0
  const totalMs = ticks[ticks.length - 1].at - t0
  // events sent over sendSpread ms arriving within half of it: held and released together
  const buffered = arrivalSpread < sendSpread * 0.5
  let gaps = 0
  for(let i = 1; i < ticks.length; i++){ if(ticks[i].at - ticks[i - 1].at < STREAM_INTERVAL_MS * 0.2){ gaps++ } }
  const text = buffered
    ? `this path buffers streams: ${STREAM_COUNT} events sent over ${ms(sendSpread)} arrived within ${ms(arrivalSpread)}` +
      ` (${gaps} together with the one before), the first after ${ms(firstMs)}`
    : `no buffering: ${STREAM_COUNT} events sent over ${ms(sendSpread)} arrived over ${ms(arrivalSpread)}; ` +
      `headers after ${ms(headersMs)}, first event after ${ms(firstMs)}, all after ${ms(totalMs)}`
  return {ok: true, buffered, text, sendSpread, arrivalSpread, firstMs}
}

/**
 * Long-poll check: a LongPoll connect (410 with a session token), a heartbeat POSTed, and the
 * poll that brings its reply.
 */
async function longpollCheck({base, path}, token, signal){
  const url = `${base}${path}/longpoll`
  const opts = {cache: "no-store", headers: {Accept: "application/json"}, signal}
  const q = new URLSearchParams({vsn: "2.0.0"})
  if(token){ q.set("token", token) }
  let t = performance.now()
  let res = await fetch(`${url}?${q}`, opts)
  let body = await res.json().catch(() => null)
  const connectMs = performance.now() - t
  if(!body || typeof body.status !== "number"){
    return {ok: false, text: `GET ${url} answered HTTP ${res.status}, not a LongPoll envelope`}
  }
  if(body.status === 403){
    return {ok: true, partial: true, text: `the path works (answer after ${ms(connectMs)}), but the server refused the ` +
      `${token ? "token" : "connection without a token"}: ${body.error || "403"}; give a valid token for a full round trip`}
  }
  if(body.status !== 410 || typeof body.token !== "string"){
    return {ok: false, text: `connect answered status ${body.status} ${body.error || ""}`}
  }
  const session = new URLSearchParams({vsn: "2.0.0", token: body.token})
  const ref = `selftest:${Date.now()}`
  t = performance.now()
  res = await fetch(`${url}?${session}`, {...opts, method: "POST", headers: {"Content-Type": "application/x-ndjson"},
    body: JSON.stringify([null, ref, "phoenix", "heartbeat", {}])})
  body = await res.json().catch(() => null)
  const postMs = performance.now() - t
  if(!body || body.status !== 200){
    return {ok: false, text: `POST answered HTTP ${res.status} status ${body && body.status} ${(body && body.error) || ""}`}
  }
  t = performance.now()
  let polls = 0
  for(let sessionToken = session; polls < 3; polls++){
    res = await fetch(`${url}?${sessionToken}`, opts)
    body = await res.json().catch(() => null)
    if(!body || (body.status !== 200 && body.status !== 204)){
      return {ok: false, text: `poll answered HTTP ${res.status} status ${body && body.status}`}
    }
    if(body.status === 200 && body.messages.some((m) => m.includes(JSON.stringify(ref)))){
      const pollMs = performance.now() - t
      return {ok: true, text: `connect ${ms(connectMs)}, POST ${ms(postMs)}, poll with the reply ${ms(pollMs)}`, connectMs, postMs, pollMs}
    }
    sessionToken = new URLSearchParams({vsn: "2.0.0", token: body.token})
  }
  return {ok: false, text: `the heartbeat's reply did not come back in ${polls} polls`}
}

/**
 * Idle check: one event, then silence for `limit` seconds, then "still-open". A cut before
 * that tells after how much silence the path drops a connection.
 */
async function idleCheck({base, path}, limit, signal){
  const url = `${base}${path}/selftest/idle?seconds=${limit}`
  const t0 = performance.now()
  const res = await fetch(url, {cache: "no-store", headers: {Accept: "text/event-stream"}, signal})
  if(res.status !== 200){
    const body = await res.text().catch(() => "")
    return {ok: false, text: `GET ${url} answered HTTP ${res.status} ${body.slice(0, 200)}`}
  }
  let openAt = null
  let last = performance.now()
  let result = null // once the server's last event came
  const finish = {}
  const tick = setInterval(() => {
    if(result){ return }
    const since = openAt === null ? "waiting for the first event" : `silent for ${secs(performance.now() - openAt)} of ${limit} s`
    showCheck("check-idle", "running", since)
  }, 500)
  try {
    for await (const ev of readEvents(res, finish)){
      last = ev.at
      if(ev.event === "open"){ openAt = ev.at }
      else if(ev.event === "still-open"){
        const silence = ev.at - (openAt ?? t0)
        result = openAt !== null && silence < limit * 500
          // the first event was held back until the end: a buffering path
          ? {ok: true, cut: false, buffered: true, text: `the first event only arrived with the last one (${ms(silence)} apart instead of ${limit} s): the path buffers`}
          : {ok: true, cut: false, text: `no cut within ${limit} s of silence`, silenceMs: silence}
        finish.after(2000)
      } else if(ev.event === "aborted"){
        result = {ok: false, text: "the server ended the test early (shutting down)"}
        finish.after(2000)
      }
    }
    if(result){ return result }
    // ended without still-open: the path closed it
    const idle = performance.now() - (openAt ?? last)
    return {ok: true, cut: true, cutMs: idle, text: `the path ended the connection after ${secs(idle)} of silence (limit ${limit} s)`}
  } catch(e){
    if(signal.aborted){ throw e }
    if(result){ return result }
    const idle = performance.now() - (openAt ?? last)
    return {ok: true, cut: true, cutMs: idle, text: `the path cut the connection after ${secs(idle)} of silence (${e.message})`}
  } finally {
    clearInterval(tick)
  }
}

function verdictOf(stream, lp, idle){
  const reasons = []
  const lpNote = lp.ok ? (lp.partial ? "LongPoll reaches the server (token refused)" : "LongPoll works as a fallback") : "LongPoll failed too"
  if(!stream.ok || stream.buffered){
    reasons.push(stream.ok ? stream.text : `the stream check failed: ${stream.text}`)
    if(!lp.ok){
      return {verdict: "none", title: "Neither transport works from here", reasons: [...reasons, `long-poll: ${lp.text}`]}
    }
    reasons.push(`long-poll: ${lp.text}`)
    if(idle.cut && idle.cutMs < 12000){
      reasons.push(`the path cuts silent connections after ${secs(idle.cutMs)}: keep --longpoll-window below it`)
    }
    return {verdict: "longpoll", title: "LongPoll", reasons: ["SSE will not work well on this path: events would be held back", ...reasons]}
  }
  reasons.push(stream.text)
  if(idle.ok && idle.cut){
    const cut = idle.cutMs / 1000
    const beat = Math.max(1, Math.floor(cut / 2))
    reasons.push(`the path cut a silent connection after ${cut.toFixed(1)} s: run sluice with --sse-heartbeat ${beat}s or less` +
      (beat >= 15 ? " (the default 15s already is)" : " (the default is 15s)"))
    if(cut < 12){ reasons.push("keep --longpoll-window below the cut too (default 10s)") }
    reasons.push(lpNote)
    return {verdict: "sse-heartbeat", title: "SSE with a short --sse-heartbeat below the idle cut", reasons}
  }
  reasons.push(idle.ok ? idle.text : `idle check: ${idle.text}`)
  reasons.push(lpNote)
  return {verdict: "sse", title: "SSE", reasons}
}

async function runSelfTest(){
  if(selftest){ return }
  const controller = new AbortController()
  selftest = controller
  const {signal} = controller
  const ep = endpoint()
  const token = $("token").value.trim()
  const limit = Number($("selftest-idle").value)
  $("selftest-run").disabled = true
  $("selftest-stop").disabled = false
  const verdictEl = $("selftest-verdict")
  verdictEl.hidden = true
  verdictEl.dataset.verdict = ""
  for(const id of ["check-stream", "check-longpoll", "check-idle"]){ showCheck(id, "pending", "waiting") }
  const guard = async (id, fn) => {
    showCheck(id, "running", "running…")
    try {
      const r = await fn()
      const status = !r.ok ? "fail" : (r.buffered || r.cut || r.partial) ? "warn" : "pass"
      showCheck(id, status, r.text, {buffered: !!r.buffered, cut: !!r.cut})
      return r
    } catch(e){
      if(signal.aborted){ showCheck(id, "fail", "stopped"); throw e }
      const r = {ok: false, text: `${e.name}: ${e.message}`}
      showCheck(id, "fail", r.text)
      return r
    }
  }
  try {
    const stream = await guard("check-stream", () => streamCheck(ep, signal))
    const lp = await guard("check-longpoll", () => longpollCheck(ep, token, signal))
    // the server answers the idle test's end after `limit` s; give the path 15 s more
    const watchdog = setTimeout(() => controller.abort(new Error("watchdog")), (limit + 15) * 1000)
    let idle
    try {
      idle = await guard("check-idle", () => idleCheck(ep, limit, signal))
    } finally { clearTimeout(watchdog) }
    const v = verdictOf(stream, lp, idle)
    verdictEl.dataset.verdict = v.verdict
    verdictEl.replaceChildren(
      el("p", {}, "Verdict: ", el("strong", {class: "verdict-title", text: v.title})),
      el("ul", {}, ...v.reasons.map((r) => el("li", {text: r}))))
    verdictEl.hidden = false
  } catch(e){
    const why = signal.reason instanceof Error && signal.reason.message === "watchdog"
      ? "the idle test did not end: the path holds the end of the response back (buffering)" : "stopped"
    verdictEl.dataset.verdict = "stopped"
    verdictEl.replaceChildren(el("p", {text: `Self-test ${why}.`}))
    verdictEl.hidden = false
  } finally {
    selftest = null
    $("selftest-run").disabled = false
    $("selftest-stop").disabled = true
  }
}

$("selftest-run").addEventListener("click", runSelfTest)
$("selftest-stop").addEventListener("click", () => selftest && selftest.abort())

// ---------------------------------------------------------------------------------------------
// Start: defaults, the token from the fragment (#token=...), a test-only idle limit (?selftest_idle=3)

function init(){
  $("server-base").value = defaultBase()
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""))
  if(hash.get("token")){ $("token").value = hash.get("token") }
  if(hash.get("transport") in TRANSPORTS){ $("transport").value = hash.get("transport") }
  const idle = Number(new URLSearchParams(location.search).get("selftest_idle"))
  if(Number.isInteger(idle) && idle >= 1 && idle <= 600){
    const sel = $("selftest-idle")
    if(![...sel.options].some((o) => Number(o.value) === idle)){
      sel.append(el("option", {value: String(idle), text: `${idle} s`}))
    }
    sel.value = String(idle)
  }
  setConnState()
  document.body.dataset.ready = "true"
}

init()

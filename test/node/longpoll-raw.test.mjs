// The LongPoll envelope with plain fetch (no phoenix.js), against what a real Phoenix server
// (1.7.24 on Bandit) was recorded answering, and Sluice's documented differences
// (docs/protocol.md, "LongPoll").

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {createHmac, pbkdf2Sync} from "node:crypto"
import {execFileSync} from "node:child_process"
import {startServer, newUserId, lp, frame, sleep, SLUICE_BIN, WINDOW_MS, SESSION_TIMEOUT_MS} from "./helpers.mjs"

let server
before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

const userToken = (name = "Raw") => server.token(newUserId(), name)

/** Creates a session with a fresh user token; returns {user, session}. */
async function newSession(){
  const user = userToken()
  const r = await lp(server, "GET", {tokens: [user]})
  assert.equal(r.body && r.body.status, 410, `session-creating GET -> ${r.status} ${r.text}`)
  return {user, session: r.body.token}
}

/**
 * Polls (tokens: user first, session last, as phoenix.js does) until `want(frames)` is true.
 * Updates s.session with the token of each answer.
 */
async function pollUntil(s, want, timeout = 6000){
  const frames = []
  const deadline = Date.now() + timeout
  while(Date.now() < deadline){
    const r = await lp(server, "GET", {tokens: [s.user, s.session]})
    assert.equal(r.status, 200)
    assert.ok(r.body && [200, 204].includes(r.body.status), `poll -> ${r.text}`)
    // Phoenix echoes the same token; a server may also hand out a new one (e.g. carrying a
    // cursor). phoenix.js always uses the latest, and so do we.
    assert.equal(typeof r.body.token, "string", "a poll must echo a token")
    assert.ok(r.body.token !== "", "a poll must echo a token")
    s.session = r.body.token
    assert.ok(Array.isArray(r.body.messages))
    for(const m of r.body.messages){
      assert.equal(typeof m, "string", `messages must be JSON strings, got ${JSON.stringify(m)}`)
      frames.push(JSON.parse(m))
    }
    if(want(frames)){ return frames }
  }
  throw new Error(`poll did not deliver what was expected within ${timeout} ms; got ${JSON.stringify(frames).slice(0, 2000)}`)
}

/** The token with one character in its last third changed. */
function tamper(token){
  const i = Math.floor(token.length * 0.8)
  return token.slice(0, i) + (token[i] === "A" ? "B" : "A") + token.slice(i + 1)
}

const isReply = (ref) => (f) => f[1] === ref && f[3] === "phx_reply"

test("first GET creates a session: HTTP 200, JSON {status:410, token, messages:[]}, cache-control no-store", async () => {
  const r = await lp(server, "GET", {tokens: [userToken()]})
  assert.equal(r.status, 200)
  assert.match(r.headers.get("content-type") || "", /^application\/json/)
  assert.match(r.headers.get("cache-control") || "", /no-store/)
  assert.equal(r.body.status, 410)
  assert.equal(typeof r.body.token, "string")
  assert.ok(r.body.token.length > 0)
  assert.deepEqual(r.body.messages, [])
  // phoenix.js' first GET ends with a bare "&" (token=null serializes to nothing)
  const url = `${server.longpollUrl}?token=${encodeURIComponent(userToken())}&vsn=2.0.0&`
  const r2 = await fetch(url, {headers: {accept: "application/json"}})
  const body2 = await r2.json()
  assert.equal(body2.status, 410)
  assert.notEqual(body2.token, r.body.token, "each session gets its own token")
})

test("OPTIONS preflight: 200 with access-control-allow-methods; other methods: 400", async () => {
  const pre = await fetch(server.longpollUrl, {
    method: "OPTIONS",
    headers: {
      origin: "http://example.com",
      "access-control-request-method": "POST",
      "access-control-request-headers": "content-type",
    },
  })
  await pre.text()
  assert.equal(pre.status, 200)
  const methods = (pre.headers.get("access-control-allow-methods") || "").toLowerCase()
  assert.match(methods, /get/)
  assert.match(methods, /post/)
  assert.ok(pre.headers.get("access-control-allow-origin"), "preflight lacks access-control-allow-origin")
  for(const method of ["PUT", "DELETE", "PATCH"]){
    const r = await lp(server, method, {tokens: [userToken()]})
    assert.equal(r.status, 400, `${method} -> ${r.status} ${r.text}`)
  }
})

test("GET with a bad, missing or expired user token, or vsn=3.0.0, answers {\"status\":403}", async () => {
  for(const [what, opts] of [
    ["garbage token", {tokens: ["garbage"]}],
    ["no token", {tokens: []}],
    ["tampered token", {tokens: [tamper(userToken())]}],
    ["vsn=3.0.0", {tokens: [userToken()], vsn: "3.0.0"}],
  ]){
    const r = await lp(server, "GET", opts)
    assert.equal(r.status, 200, `${what}: HTTP ${r.status}`)
    assert.equal(r.body && r.body.status, 403, `${what}: ${r.text}`)
  }
  // a token signed with another secret
  const other = execFileSync(SLUICE_BIN, ["token", "--secret", "f".repeat(64), "--user", "42"], {encoding: "utf8"}).trim()
  const r = await lp(server, "GET", {tokens: [other]})
  assert.equal(r.body && r.body.status, 403, `token of another secret: ${r.text}`)
})

test("GET with an expired user token (Phoenix.Token signed 90000 s ago) answers {\"status\":403}", async (t) => {
  const fresh = server.token(42)
  const forged = forgeExpired(fresh, server.secret)
  if(!forged){
    t.skip("sluice's user tokens are not Phoenix.Token (salt \"user socket\"), so an expired one cannot be made here")
    return
  }
  const ok = await lp(server, "GET", {tokens: [forged.sameAge]})
  assert.equal(ok.body && ok.body.status, 410, `re-signed token with the original time must work: ${ok.text}`)
  const r = await lp(server, "GET", {tokens: [forged.expired]})
  assert.equal(r.body && r.body.status, 403, `expired token: ${r.text}`)
})

test("POST with a garbage or missing session token answers {\"status\":410}", async () => {
  const body = frame("1", "1", "sala:lobby", "phx_join", {})
  for(const tokens of [[userToken(), "garbage"], [], ["garbage"]]){
    const r = await lp(server, "POST", {tokens, body, contentType: "application/x-ndjson"})
    assert.equal(r.status, 200)
    assert.equal(r.body && r.body.status, 410, `tokens ${JSON.stringify(tokens)}: ${r.text}`)
  }
})

test("ndjson batch of join + ping + heartbeat: POST 200, the next GET has the replies as JSON strings", async () => {
  const s = await newSession()
  const body = [
    frame("1", "1", "sala:lobby", "phx_join", {}),
    frame("1", "2", "sala:lobby", "ping", {hola: "mundo", n: [1, 2]}),
    frame(null, "3", "phoenix", "heartbeat", {}),
  ].join("\n")
  const post = await lp(server, "POST", {tokens: [s.user, s.session], body, contentType: "application/x-ndjson"})
  assert.equal(post.status, 200)
  assert.deepEqual(post.body, {status: 200})

  const frames = await pollUntil(s, (fs) =>
    fs.some(isReply("1")) && fs.some(isReply("2")) && fs.some(isReply("3")) &&
    fs.some((f) => f[3] === "presence_state"))
  const join = frames.find(isReply("1"))
  assert.deepEqual(join.slice(0, 4), ["1", "1", "sala:lobby", "phx_reply"])
  assert.equal(join[4].status, "ok")
  assert.ok(Array.isArray(join[4].response.mensajes))
  assert.deepEqual(frames.find(isReply("2")), ["1", "2", "sala:lobby", "phx_reply", {status: "ok", response: {hola: "mundo", n: [1, 2]}}])
  assert.deepEqual(frames.find(isReply("3")), [null, "3", "phoenix", "phx_reply", {status: "ok", response: {}}])
  // replies come in the order the frames were sent; pushes of the channel carry join_ref, ref null
  assert.ok(frames.findIndex(isReply("1")) < frames.findIndex(isReply("2")))
  const state = frames.find((f) => f[3] === "presence_state")
  assert.deepEqual(state.slice(0, 3), ["1", null, "sala:lobby"])
  assert.ok(frames.findIndex(isReply("1")) < frames.indexOf(state), "the join reply must come before presence_state")
  const estado = frames.find((f) => f[3] === "estado_actual")
  assert.ok(estado, "estado_actual was not pushed")
  assert.deepEqual(estado.slice(0, 3), ["1", null, "sala:lobby"])
})

test("a push to a topic the session has not joined gets an \"unmatched topic\" error reply", async () => {
  const s = await newSession()
  const body = frame("9", "9", "sala:lobby", "ping", {})
  const post = await lp(server, "POST", {tokens: [s.user, s.session], body, contentType: "application/x-ndjson"})
  assert.deepEqual(post.body, {status: 200})
  const frames = await pollUntil(s, (fs) => fs.some(isReply("9")))
  const reply = frames.find(isReply("9"))
  assert.equal(reply[2], "sala:lobby")
  assert.deepEqual(reply[4], {status: "error", response: {reason: "unmatched topic"}})
})

test("a GET with nothing pending answers {status:204} after the poll window and echoes the token", async () => {
  const s = await newSession()
  const r = await lp(server, "GET", {tokens: [s.user, s.session]})
  assert.equal(r.status, 200)
  assert.equal(r.body.status, 204, r.text)
  assert.equal(typeof r.body.token, "string")
  assert.ok(r.body.token !== "", "a 204 must echo a token")
  assert.deepEqual(r.body.messages, [])
  assert.ok(r.ms >= WINDOW_MS - 250, `204 came after ${r.ms} ms, before the ${WINDOW_MS} ms window`)
  assert.ok(r.ms < WINDOW_MS + 3000, `204 came after ${r.ms} ms`)
  assert.match(r.headers.get("cache-control") || "", /no-store/)
  // the session is still there afterwards, reached with the echoed token
  const again = await lp(server, "POST", {tokens: [s.user, r.body.token], body: frame(null, "1", "phoenix", "heartbeat", {}), contentType: "application/x-ndjson"})
  assert.deepEqual(again.body, {status: 200})
})

test("the session token is read from the LAST token query parameter", async () => {
  const s = await newSession()
  // phoenix.js order: user token first, session token last
  const post = await lp(server, "POST", {
    tokens: [s.user, s.session], contentType: "application/x-ndjson",
    body: frame(null, "5", "phoenix", "heartbeat", {}),
  })
  assert.deepEqual(post.body, {status: 200}, "user token first, session token last must reach the session")
  await pollUntil(s, (fs) => fs.some(isReply("5")))
  // session token first, garbage last: the garbage is what counts
  const wrong = await lp(server, "POST", {
    tokens: [s.session, "garbage"], contentType: "application/x-ndjson",
    body: frame(null, "6", "phoenix", "heartbeat", {}),
  })
  assert.equal(wrong.body && wrong.body.status, 410, wrong.text)
})

test("a session nobody polls expires: POST then answers 410, GET gets a new session (or 403)", {timeout: 30_000}, async () => {
  const s = await newSession()
  await sleep(SESSION_TIMEOUT_MS + WINDOW_MS + 2500)
  const post = await lp(server, "POST", {tokens: [s.user, s.session], body: frame(null, "1", "phoenix", "heartbeat", {}), contentType: "application/x-ndjson"})
  assert.equal(post.body && post.body.status, 410, post.text)
  const get = await lp(server, "GET", {tokens: [s.user, s.session]})
  assert.ok(get.body && [410, 403].includes(get.body.status), get.text)
  if(get.body.status === 410){ assert.notEqual(get.body.token, s.session) }
})

// ---------------------------------------------------------------------------------------------
// Phoenix.Token (docs/protocol.md, "User tokens"): used only to make an expired user token.

function b64url(buf){ return Buffer.from(buf).toString("base64url") }

/** ETF of {data :: integer, signed_ms, max_age} with small/int/small_big encodings. */
function etfTriple(data, signedMs, maxAge){
  const intTerm = (n) => {
    if(Number.isInteger(n) && n >= 0 && n < 256){ return Buffer.from([97, n]) }
    if(Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31){ const b = Buffer.alloc(5); b[0] = 98; b.writeInt32BE(n, 1); return b }
    let v = BigInt(n); const bytes = []
    const neg = v < 0n; if(neg){ v = -v }
    while(v > 0n){ bytes.push(Number(v & 0xffn)); v >>= 8n }
    return Buffer.from([110, bytes.length, neg ? 1 : 0, ...bytes])
  }
  return Buffer.concat([Buffer.from([131, 104, 3]), intTerm(data), intTerm(signedMs), intTerm(maxAge)])
}

function parseEtfTriple(buf){
  if(buf[0] !== 131 || buf[1] !== 104 || buf[2] !== 3){ return null }
  let i = 3
  const out = []
  for(let k = 0; k < 3; k++){
    const tag = buf[i]
    if(tag === 97){ out.push(buf[i + 1]); i += 2 }
    else if(tag === 98){ out.push(buf.readInt32BE(i + 1)); i += 5 }
    else if(tag === 110){
      const n = buf[i + 1]; const sign = buf[i + 2]; let v = 0n
      for(let j = n - 1; j >= 0; j--){ v = (v << 8n) | BigInt(buf[i + 3 + j]) }
      out.push(Number(sign ? -v : v)); i += 3 + n
    } else { return null }
  }
  return out
}

function signPhoenix(secret, salt, payload){
  const key = pbkdf2Sync(secret, salt, 1000, 32, "sha256")
  const signed = `SFMyNTY.${b64url(payload)}`
  return `${signed}.${b64url(createHmac("sha256", key).update(signed).digest())}`
}

/** If `token` is a Phoenix.Token made with salt "user socket", returns re-signed variants. */
function forgeExpired(token, secret){
  const parts = token.split(".")
  if(parts.length !== 3 || parts[0] !== "SFMyNTY"){ return null }
  const payload = Buffer.from(parts[1], "base64url")
  const triple = parseEtfTriple(payload)
  if(!triple){ return null }
  if(signPhoenix(secret, "user socket", payload) !== token){ return null }
  const [data, signedMs, maxAge] = triple
  return {
    sameAge: signPhoenix(secret, "user socket", etfTriple(data, signedMs, maxAge)),
    expired: signPhoenix(secret, "user socket", etfTriple(data, signedMs - 90_000_000, 86_400)),
  }
}

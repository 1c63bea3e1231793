// The seed scenario through a hostile proxy (hostile-proxy.mjs), one sluice instance (the memory
// store, or Redis when SLUICE_TEST_REDIS is set): phoenix.js clients over the module's SSE
// (withFallback and alone) and ResilientLongPoll, and over stock phoenix.js LongPoll, in
// sala:lobby, each pushing numbered nuevo_mensaje while /api/broadcast messages flow. For every
// hostility, every published message must reach every client of the module exactly once, in
// order per sender, with no reconnect; stock LongPoll must be as good where the proxy loses no
// response, and never duplicates or reorders. The figures of each run are printed as a table.
//
// HOSTILE_SEED=<seed> repeats a run's draws (the seed is printed first).

import {test, after} from "node:test"
import assert from "node:assert/strict"
import {Serializer} from "phoenix"
import {SSETransport, ResilientLongPoll} from "../../web/sse-transport.js"
import {openClient, closeAllClients, join, pushOk, memberRoom, until, sleep, TEST_REDIS} from "./helpers.mjs"
import {startSluice} from "./sse-helpers.mjs"
import {seededRandom, suiteSeed, startHostileProxy} from "./hostile-proxy.mjs"
import {HOSTILITIES, SERVER_FLAGS, TOPIC, runScenario, problems, summarize, reportTable} from "./hostile-scenario.mjs"

const seed = suiteSeed("hostile, one instance")
const rows = []
after(() => { if(rows.length){ console.log(reportTable(`hostile, one instance, ${TEST_REDIS ? "Redis" : "memory"} store`, seed, rows)) } })

for(const h of HOSTILITIES){
  test(`lossless through a proxy that does: ${h.name}`, {timeout: 120_000}, async () => {
    const srv = await startSluice([...SERVER_FLAGS, ...h.server])
    try {
      const run = await runScenario({
        server: srv, upstreams: [srv.base], hostility: h, seed: seededRandom(seed).fork(h.name).seed,
        broadcast: (payload) => srv.broadcast(TOPIC, "anuncio", payload),
      })
      rows.push({hostility: h.name, summary: summarize(run), proxy: run.proxy})
      assert.ok(h.bites(run.proxy), `the proxy did not do what it should: ${JSON.stringify(run.proxy)}`)
      assert.deepEqual(problems(h, run), [], `seed ${seed}: ${JSON.stringify(run.results.map(({missedIds, ...r}) => r))}`)
    } finally {
      await srv.stop()
    }
  })
}

// ---------------------------------------------------------------------------------------------
// The module's repairs, one at a time

/** Numbered broadcasts to a fresh member room of `client`; resolves the numbers received, in order. */
async function numbered(srv, client, {count, every = 20}){
  const {topic} = await memberRoom(srv, [client])
  const ch = client.channel(topic)
  let joins = 0
  ch.joinPush.receive("ok", () => { joins++ })
  await join(ch, 10_000)
  for(let n = 1; n <= count; n++){
    await srv.broadcast(topic, "numerado", {n})
    await sleep(every)
  }
  await ch.rec.waitFor("numerado", (p) => p.n === count, {timeout: 15_000})
  await sleep(300) // a duplicate would show up now
  return {got: ch.rec.all("numerado").map((p) => p.n), joins: () => joins, ch}
}

const upTo = (count) => Array.from({length: count}, (_, i) => i + 1)

test("a proxy that splices a cut stream onto the next one: nothing undecodable reaches phoenix.js, the stream resumes from the last good event", {timeout: 60_000}, async () => {
  const srv = await startSluice([...SERVER_FLAGS])
  const proxy = await startHostileProxy([srv.base], {seed: seededRandom(seed).fork("splice").seed, spliceAfterMs: 300})
  try {
    let badEvents = 0
    class Counting extends SSETransport {
      onBadEvent(){ badEvents++; return super.onBadEvent() }
    }
    // phoenix.js decodes with JSON.parse, which would throw on what the proxy glued together
    let undecodable = 0
    const decode = (raw, callback) => {
      try { JSON.parse(raw) } catch { undecodable++ }
      return Serializer.decode(raw, callback)
    }
    const ana = await openClient({...srv, socketUrl: proxy.socketUrl}, {name: "Ana", openTimeout: 15_000, socketOpts: {transport: Counting, decode, timeout: 10_000}})
    const closes = []
    ana.socket.onClose((ev) => closes.push(ev.code))
    const conn = ana.socket.conn
    const count = 120
    const {got, joins} = await numbered(srv, ana, {count})
    assert.deepEqual(got, upTo(count), "every message exactly once, in order")
    assert.ok(proxy.stats.spliced >= 3, `the proxy spliced ${proxy.stats.spliced} times`)
    assert.ok(badEvents >= 1, "no glued event was seen: the test did not test anything")
    assert.equal(undecodable, 0, "phoenix.js was handed undecodable frames")
    assert.deepEqual(closes, [], "phoenix.js saw the transport close")
    assert.equal(joins(), 1, "the channel rejoined")
    assert.equal(ana.socket.conn, conn, "the socket replaced its transport")
    console.log(`[splice] ${proxy.stats.spliced} splices, ${badEvents} glued or replayed events refused, ${got.length} messages once each`)
  } finally {
    await closeAllClients()
    await proxy.close()
    await srv.stop()
  }
})

test("ResilientLongPoll: a lost poll is repeated with the same session token, which never travels in a URL", {timeout: 60_000}, async () => {
  const srv = await startSluice([...SERVER_FLAGS])
  const proxy = await startHostileProxy([srv.base], {seed: seededRandom(seed).fork("lp-drop").seed, dropShare: 0.25, log: true})
  try {
    const ana = await openClient({...srv, socketUrl: proxy.socketUrl}, {name: "Ana", openTimeout: 15_000, socketOpts: {transport: ResilientLongPoll, timeout: 10_000}})
    const conn = ana.socket.conn
    assert.ok(conn instanceof ResilientLongPoll)
    const count = 40
    const {got, joins} = await numbered(srv, ana, {count, every: 30})
    assert.deepEqual(got, upTo(count), "every message exactly once, in order")
    assert.equal(joins(), 1, "the channel rejoined")
    assert.equal(ana.socket.conn, conn, "the socket replaced its transport")

    const polls = proxy.log.filter((r) => r.method === "GET" && r.url.startsWith("/socket/longpoll"))
    const lost = polls.filter((r, i) => r.action === "dropped" && r.lpToken !== null && polls[i + 1])
    assert.ok(lost.length >= 1, `no poll with a token was dropped: ${JSON.stringify(proxy.stats)}`)
    for(const r of lost){
      const again = polls[polls.indexOf(r) + 1]
      assert.equal(again.lpToken, r.lpToken, "the poll after a lost one did not repeat its token")
    }
    const tokens = new Set(polls.map((r) => r.lpToken).filter(Boolean))
    const leaked = proxy.log.filter((r) => [...tokens].some((t) => r.url.includes(encodeURIComponent(t)) || r.url.includes(t)))
    assert.deepEqual(leaked, [], "a session token travelled in a URL")
    const posts = proxy.log.filter((r) => r.method === "POST")
    assert.ok(posts.length > 0 && posts.every((r) => r.lpToken !== null), "a POST without its session token header")
  } finally {
    await closeAllClients()
    await proxy.close()
    await srv.stop()
  }
})

test("ResilientLongPoll: a session the server ended closes with 3410, and phoenix.js reconnects and rejoins", {timeout: 30_000}, async () => {
  const srv = await startSluice([...SERVER_FLAGS])
  try {
    const ana = await openClient(srv, {name: "Ana", openTimeout: 15_000, socketOpts: {transport: ResilientLongPoll}})
    const closes = []
    ana.socket.onClose((ev) => closes.push(ev.code))
    const first = ana.socket.conn
    const {topic} = await memberRoom(srv, [ana])
    const ch = ana.channel(topic)
    let joins = 0
    ch.joinPush.receive("ok", () => { joins++ })
    await join(ch)
    const res = await srv.api("POST", "/api/disconnect", {socket_id: `user_socket:${ana.userId}`})
    assert.ok(res.status >= 200 && res.status < 300, `${res.status} ${res.text}`)
    await until(() => joins === 2 && ch.isJoined(), "the channel rejoined", 10_000)
    assert.deepEqual(closes, [3410])
    assert.notEqual(ana.socket.conn, first)
    assert.ok(ana.socket.conn instanceof ResilientLongPoll)
    assert.deepEqual(await pushOk(ch, "ping", {n: 1}), {n: 1})
  } finally {
    await closeAllClients()
    await srv.stop()
  }
})

// WebSocket next to SSE and LongPoll on several sluice instances sharing one Redis, behind the
// round-robin proxy of rrproxy.mjs (which passes upgrades through, as a load balancer does):
//   1. a phoenix.js client over WebSocket (npm ws), one over SSE (web/sse-transport.js with the npm
//      eventsource) and one over LongPoll, their long-lived connections on three different
//      instances, share sala:lobby: each sees the others' messages (in one same order), typing,
//      and presence joins, updates and leaves, every one exactly once and in order; the WebSocket
//      client's leave is its socket closing, announced at once;
//   2. SIGTERM to the instance holding a WebSocket: it closes the socket with 1012 and exits by
//      itself; phoenix.js reconnects through the proxy to another instance and rejoins, and what
//      the room said meanwhile is in the rejoin's history (phoenix.js has no resume over
//      WebSocket: the new connection is a new session, so the others see the old meta leave and
//      a new one join).
// Each test starts its own cluster (cluster-helpers' startCluster: a fresh SLUICE_REDIS_PREFIX on
// SLUICE_TEST_REDIS, default redis://127.0.0.1:6379/0) and deletes its keys at the end.

import {test, afterEach} from "node:test"
import assert from "node:assert/strict"
import {EventSource} from "eventsource"
import WebSocket from "ws"
import {LongPoll} from "phoenix"
import {SSETransport} from "../../web/sse-transport.js"
import {openClient, closeAllClients, join, pushOk, pushNoReply, until, sleep, SHORT} from "./helpers.mjs"
import {startCluster} from "./cluster-helpers.mjs"

SSETransport.EventSource = EventSource

const TOPIC = "sala:lobby"
// after the last expected event, how long to keep listening for a duplicate
const SETTLE_MS = 1000

afterEach(closeAllClients)

/** Whether a presence_diff joins (and does not also leave) key: a new presence. */
const joins = (key) => (d) => d.joins?.[key] && !d.leaves?.[key]
/** Whether a presence_diff leaves (and does not also join) key. */
const leaves = (key) => (d) => d.leaves?.[key] && !d.joins?.[key]
/** Whether a presence_diff updates key (joins its new meta and leaves the old one). */
const updates = (key) => (d) => d.joins?.[key] && d.leaves?.[key]

/** The presence events of `keys` in a channel's record, as ["join"|"update"|"leave", key]. */
function presenceEvents(channel, keys){
  const out = []
  for(const d of channel.rec.all("presence_diff")){
    for(const key of keys){
      if(updates(key)(d)){ out.push(["update", key]) } else if(joins(key)(d)){ out.push(["join", key]) } else if(leaves(key)(d)){ out.push(["leave", key]) }
    }
  }
  return out
}

/** The proxy's upstream for the first request whose URL matches `re` and carries the user's token. */
function upstreamOf(proxy, re, token){
  const rec = proxy.log.find((r) => re.test(r.url) && r.url.includes(encodeURIComponent(token)))
  return rec?.upstream
}

test("a WebSocket, an SSE and a LongPoll client on three instances share sala:lobby: messages in one order, typing, presence joins, updates and leaves, each exactly once", {timeout: 60_000}, async () => {
  const cluster = await startCluster({n: 3, label: "ws-mixed"})
  try {
    const {server, proxy} = cluster
    // Olga watches everything; then Ana (WebSocket), Beto (SSE), Carla (LongPoll)
    const olga = await openClient(server, {name: "Olga", socketOpts: {transport: WebSocket}})
    const ana = await openClient(server, {name: "Ana", socketOpts: {transport: WebSocket}})
    const beto = await openClient(server, {name: "Beto", socketOpts: {transport: SSETransport}})
    const carla = await openClient(server, {name: "Carla"})
    assert.equal(ana.socket.conn.constructor, WebSocket)
    assert.ok(beto.socket.conn instanceof SSETransport)
    assert.ok(carla.socket.conn instanceof LongPoll)
    const people = [ana, beto, carla]
    const keys = people.map((c) => c.key)

    const {channel: chO} = await olga.join(TOPIC)
    await chO.rec.waitFor("presence_state", (s) => s[olga.key])
    const ch = new Map()
    for(const c of people){
      const {channel} = await c.join(TOPIC)
      ch.set(c, channel)
      const state = await channel.rec.waitFor("presence_state", (s) => s[c.key])
      // everyone who joined before is in the newcomer's presence_state
      for(const before of [olga, ...people.slice(0, people.indexOf(c))]){
        assert.ok(state[before.key], `${c.name}'s presence_state lacks ${before.name}: ${JSON.stringify(state)}`)
      }
      // and everyone already there sees the newcomer join
      for(const other of [olga, ...people.slice(0, people.indexOf(c))]){
        const otherCh = other === olga ? chO : ch.get(other)
        await otherCh.rec.waitFor("presence_diff", joins(c.key))
      }
    }

    // three instances: Ana's WebSocket and Beto's stream on two of them, Carla's polls on the third too
    const anaAt = upstreamOf(proxy, /^\/socket\/websocket\?/, ana.token)
    const betoAt = upstreamOf(proxy, /^\/socket\/sse\?/, beto.token)
    assert.ok(anaAt !== undefined && betoAt !== undefined, "the proxy log names Ana's and Beto's instances")
    assert.notEqual(anaAt, betoAt, "Ana's WebSocket and Beto's SSE stream are on the same instance")
    const third = [0, 1, 2].find((i) => i !== anaAt && i !== betoAt)
    assert.ok(proxy.log.some((r) => r.upstream === third && r.url.startsWith("/socket/longpoll")), "none of Carla's polls reached the third instance")

    // messages: all three send at once; everyone gets all of them, once, in one same order
    const PER = 6
    const tag = `m${Date.now()}`
    await Promise.all(people.map(async (c) => {
      for(let i = 0; i < PER; i++){ await pushOk(ch.get(c), "nuevo_mensaje", {contenido: `${tag} ${c.name} ${i}`}) }
    }))
    const everyone = [[olga, chO], ...people.map((c) => [c, ch.get(c)])]
    const ours = (channel) => channel.rec.all("mensaje_recibido").filter((m) => m.contenido.startsWith(tag))
    for(const [c, channel] of everyone){
      await until(() => ours(channel).length >= 3 * PER, `${c.name} receives all ${3 * PER} messages`, SHORT * 2)
    }

    // typing: each one's reaches the other three, not the typist
    for(const c of people){ pushNoReply(ch.get(c), "escribiendo", {}) }
    for(const [c, channel] of everyone){
      await until(() => channel.rec.all("usuario_escribiendo").length >= (c === olga ? 3 : 2), `${c.name} sees the others typing`)
    }

    // presence updates, one after the other
    for(const c of people){
      await pushOk(ch.get(c), "estado", {estado: "ausente"})
      for(const [o, channel] of everyone){
        await channel.rec.waitFor("presence_diff", updates(c.key)).catch((e) => { throw new Error(`${o.name}: ${e.message}`) })
      }
    }

    // leaves: Ana's tab closes (her WebSocket ends: no phx_leave), Beto and Carla leave the channel
    ana.socket.disconnect()
    for(const [o, channel] of [[olga, chO], [beto, ch.get(beto)], [carla, ch.get(carla)]]){
      await channel.rec.waitFor("presence_diff", leaves(ana.key)).catch((e) => { throw new Error(`${o.name}: ${e.message}`) })
    }
    ch.get(beto).leave()
    for(const channel of [chO, ch.get(carla)]){ await channel.rec.waitFor("presence_diff", leaves(beto.key)) }
    ch.get(carla).leave()
    await chO.rec.waitFor("presence_diff", leaves(carla.key))
    await sleep(SETTLE_MS)

    // exactly once, in order
    const expected = [
      ["join", ana.key], ["join", beto.key], ["join", carla.key],
      ["update", ana.key], ["update", beto.key], ["update", carla.key],
      ["leave", ana.key], ["leave", beto.key], ["leave", carla.key],
    ]
    assert.deepEqual(presenceEvents(chO, keys), expected, "Olga's presence events")
    // each of the others sees the same, from its own join until it left
    for(const c of people){
      const from = expected.findIndex(([kind, k]) => kind === "join" && k === c.key)
      const to = expected.findIndex(([kind, k]) => kind === "leave" && k === c.key)
      assert.deepEqual(presenceEvents(ch.get(c), keys), expected.slice(from, to), `${c.name}'s presence events`)
    }
    const order = (channel) => ours(channel).map((m) => m.id)
    for(const [c, channel] of everyone){
      const got = ours(channel)
      assert.equal(got.length, 3 * PER, `${c.name} got ${got.length} messages, want ${3 * PER}`)
      assert.equal(new Set(got.map((m) => m.id)).size, 3 * PER, `${c.name} got a message twice`)
      for(const sender of people){
        const seq = got.filter((m) => m.autor === sender.name).map((m) => Number(m.contenido.split(" ").pop()))
        assert.deepEqual(seq, [...Array(PER).keys()], `${c.name} got ${sender.name}'s messages out of order`)
      }
      assert.deepEqual(order(channel), order(chO), `${c.name} and Olga got the messages in different orders`)
      const typists = channel.rec.all("usuario_escribiendo").map((t) => String(t.user_id)).sort()
      assert.deepEqual(typists, people.filter((p) => p !== c).map((p) => p.key).sort(), `${c.name}'s usuario_escribiendo`)
    }
    for(const c of [olga, ...people]){
      assert.deepEqual(c.errors, [], `${c.name}'s socket had an error`)
    }
    assert.deepEqual([olga, beto, carla].flatMap((c) => c.transportCloses), [], "a socket was closed under a client")
  } finally {
    await closeAllClients()
    await cluster.stop()
    await cluster.cleanKeys()
  }
})

test("SIGTERM to the instance holding a WebSocket: it closes it with 1012 and exits by itself; phoenix.js reconnects to another instance and rejoins, and the rejoin's history holds what the room said meanwhile", {timeout: 60_000}, async () => {
  const cluster = await startCluster({n: 3, label: "ws-drain"})
  try {
    const {server, proxy, instances} = cluster
    const ana = await openClient(server, {name: "Ana", socketOpts: {transport: WebSocket}})
    const beto = await openClient(server, {name: "Beto"}) // LongPoll: on every instance in turn
    const chA = ana.channel(TOPIC)
    const joinReplies = []
    chA.joinPush.receive("ok", (r) => joinReplies.push(r))
    await join(chA)
    const {channel: chB} = await beto.join(TOPIC)
    const stateB = await chB.rec.waitFor("presence_state", (s) => s[beto.key])
    assert.ok(stateB[ana.key], "Beto sees Ana")
    const anaAt = upstreamOf(proxy, /^\/socket\/websocket\?/, ana.token)
    const victim = instances[anaAt]

    // Beto talks all along; the instance holding Ana's WebSocket is told to stop
    const tag = `d${Date.now()}`
    const sent = []
    let stop = false
    const sender = (async () => {
      for(let i = 0; !stop && i < 45; i++){
        await pushOk(chB, "nuevo_mensaje", {contenido: `${tag} ${i}`})
        sent.push(i)
        await sleep(50)
      }
    })()
    await until(() => sent.length >= 5, "Beto's first messages")
    const termAt = Date.now()
    victim.child.kill("SIGTERM")
    const exit = await Promise.race([victim.exited, sleep(10_000).then(() => null)])
    assert.deepEqual(exit, {code: 0, signal: null}, `${victim.name} did not drain and exit by itself within 10 s after SIGTERM`)
    await until(() => joinReplies.length >= 2 && chA.isJoined(), "Ana's channel rejoined", SHORT * 2)
    const rejoinedAt = sent.length
    await until(() => sent.length >= rejoinedAt + 5 || sent.length === 45, "more of Beto's messages after the rejoin")
    stop = true
    await sender
    const tagged = (m) => m.contenido.startsWith(tag)
    const number = (m) => Number(m.contenido.split(" ").pop())
    await until(() => chA.rec.all("mensaje_recibido").filter(tagged).some((m) => number(m) === sent.at(-1)), "Ana gets Beto's last message")

    // Ana was closed with 1012 and reconnected through the proxy to another instance; a
    // reconnect the proxy sent to the draining instance meanwhile was refused (503: phoenix.js
    // sees an error and a 1006 close, and tries again)
    const attempts = proxy.log.filter((r) => r.url.startsWith("/socket/websocket?") && r.url.includes(encodeURIComponent(ana.token)))
    const upgrades = attempts.filter((r) => r.status === 101)
    const refusedByVictim = attempts.filter((r) => r.status === 503 && r.upstream === anaAt)
    assert.equal(attempts.length, upgrades.length + refusedByVictim.length, `Ana's upgrades: ${JSON.stringify(attempts)}`)
    assert.deepEqual(ana.transportCloses.map((c) => c.code), [1012, ...refusedByVictim.map(() => 1006)], "Ana's socket closes")
    assert.equal(ana.errors.length, refusedByVictim.length, "Ana's socket errors")
    assert.equal(upgrades.length, 2, `Ana's WebSocket upgrades: ${JSON.stringify(upgrades)}`)
    assert.notEqual(upgrades[1].upstream, anaAt, "Ana reconnected to the instance that was shutting down")
    assert.ok(upgrades[1].start > termAt)

    // nothing the room said was lost: each message came live, or in the rejoin's history
    const live = chA.rec.all("mensaje_recibido").filter(tagged).map(number)
    const history = joinReplies.at(-1).mensajes.filter(tagged).map(number)
    const missing = sent.filter((i) => !live.includes(i) && !history.includes(i))
    assert.deepEqual(missing, [], `lost: live ${JSON.stringify(live)}, rejoin history ${JSON.stringify(history)}`)
    assert.deepEqual(live, [...live].sort((a, b) => a - b), "live messages out of order")
    assert.equal(new Set(live).size, live.length, "a message came twice")

    // Beto saw Ana's old presence leave once and a new one join once (a new session)
    await sleep(SETTLE_MS)
    const seen = presenceEvents(chB, [ana.key])
    assert.deepEqual(seen.filter(([kind]) => kind !== "update").map(([kind]) => kind).sort(), ["join", "leave"], `Beto's presence events of Ana: ${JSON.stringify(seen)}`)
    assert.deepEqual(beto.errors, [], "Beto's socket had an error")
  } finally {
    await closeAllClients()
    await cluster.stop()
    await cluster.cleanKeys()
  }
})

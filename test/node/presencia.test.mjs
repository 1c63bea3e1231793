// Phoenix.Presence as seen by phoenix.js: estado updates (presence_diff with phx_ref_prev),
// leaves on channel leave and on session expiry, the JS Presence class, several sockets per user.

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {
  startServer, openClient, closeAllClients, join, push, pushOk, memberRoom, presenceView, until, sleep,
  flushed, newUserId, stallClient, overLongPoll, SESSION_TIMEOUT_MS, WINDOW_MS, SHORT,
} from "./helpers.mjs"

let server
before(async () => { server = await startServer() })
afterEach(closeAllClients)
after(async () => { await closeAllClients(); await server?.stop() })

const ownRef = async (client, channel) => {
  const state = await channel.rec.waitFor("presence_state", (s) => s[client.key] !== undefined)
  assert.equal(state[client.key].metas.length, 1)
  return state[client.key].metas[0].phx_ref
}

test("estado: an update reaches every member as one presence_diff (join with phx_ref_prev + leave of the old meta)", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {channel: chA} = await ana.join("sala:lobby")
  const {channel: chB} = await beto.join("sala:lobby")
  const ref0 = await ownRef(ana, chA)
  await ownRef(beto, chB)

  const markA = chA.rec.mark()
  const markB = chB.rec.mark()
  await pushOk(chA, "estado", {estado: "ausente"})
  const isUpdateOfAna = (d) => d.joins && d.joins[ana.key] && d.leaves && d.leaves[ana.key]
  const diffB = await chB.rec.waitFor("presence_diff", isUpdateOfAna, {since: markB})
  const diffA = await chA.rec.waitFor("presence_diff", isUpdateOfAna, {since: markA})
  for(const diff of [diffA, diffB]){
    const joined = diff.joins[ana.key].metas
    const left = diff.leaves[ana.key].metas
    assert.equal(joined.length, 1, JSON.stringify(diff))
    assert.equal(left.length, 1, JSON.stringify(diff))
    assert.equal(joined[0].estado, "ausente")
    assert.equal(joined[0].nombre, "Ana")
    assert.equal(joined[0].phx_ref_prev, ref0, "the new meta must carry phx_ref_prev = the old phx_ref")
    assert.notEqual(joined[0].phx_ref, ref0, "the new meta must get a new phx_ref")
    assert.equal(left[0].phx_ref, ref0)
    assert.equal(left[0].estado, "activo")
  }
  assert.deepEqual(diffA, diffB)
  const ref1 = diffA.joins[ana.key].metas[0].phx_ref

  // invalid values are refused and change nothing
  for(const payload of [{estado: "durmiendo"}, {estado: ""}, {}]){
    const r = await push(chA, "estado", payload)
    assert.equal(r.status, "error", `estado ${JSON.stringify(payload)} should be refused, got ${r.status} ${JSON.stringify(r.response)}`)
  }
  const markC = chB.rec.mark()
  await pushOk(chA, "estado", {estado: "activo"})
  const back = await chB.rec.waitFor("presence_diff", isUpdateOfAna, {since: markC})
  assert.equal(back.joins[ana.key].metas[0].estado, "activo")
  assert.equal(back.joins[ana.key].metas[0].phx_ref_prev, ref1, "a refused estado must not have changed the presence")
  assert.equal(back.leaves[ana.key].metas[0].phx_ref, ref1)
  // exactly two updates of Ana happened
  assert.equal(chB.rec.all("presence_diff", markB).filter(isUpdateOfAna).length, 2)
})

test("leaving the channel removes the presence at once (presence_diff leave to the others)", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const {channel: chA} = await ana.join(topic)
  const {channel: chB} = await beto.join(topic)
  const refB = await ownRef(beto, chB)
  await chA.rec.waitFor("presence_diff", (d) => d.joins[beto.key])

  const mark = chA.rec.mark()
  chB.leave()
  const diff = await chA.rec.waitFor("presence_diff", (d) => d.leaves && d.leaves[beto.key], {since: mark})
  assert.deepEqual(diff.leaves[beto.key].metas.map((m) => m.phx_ref), [refB])
  assert.deepEqual(diff.joins, {})
  // Beto's socket is still connected: it can join again and is back in the room
  assert.ok(beto.socket.isConnected())
})

test("a client that stops polling without leaving is removed after the session timeout, not before", {timeout: 30_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const {channel: chA} = await ana.join(topic)
  const {channel: chB} = await beto.join(topic)
  const refB = await ownRef(beto, chB)

  // While Beto keeps polling (idle, nothing to receive) he must stay present, well past the
  // session timeout and poll window.
  const idle = 2 * SESSION_TIMEOUT_MS + WINDOW_MS
  await sleep(idle)
  assert.equal(chA.rec.all("presence_diff").filter((d) => d.leaves && d.leaves[beto.key]).length, 0,
    `Beto was removed while still polling (idle ${idle} ms)`)
  await pushOk(chB, "ping", {vivo: true})

  // Now Beto's tab dies: no phx_leave, polling just stops.
  const stoppedAt = Date.now()
  beto.socket.disconnect()
  const limit = SESSION_TIMEOUT_MS + WINDOW_MS + 6000
  const diff = await chA.rec.waitFor("presence_diff", (d) => d.leaves && d.leaves[beto.key], {timeout: limit})
  const after = Date.now() - stoppedAt
  assert.deepEqual(diff.leaves[beto.key].metas.map((m) => m.phx_ref), [refB])
  assert.ok(after < limit, `leave after ${after} ms`)
  // exactly once
  await sleep(300)
  assert.equal(chA.rec.all("presence_diff").filter((d) => d.leaves && d.leaves[beto.key]).length, 1)
})

test("phoenix.js Presence (syncState/syncDiff, onSync) ends with the same list as a fresh client's presence_state", {timeout: 30_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const celia = await openClient(server, {name: "Celia"})
  const diego = await openClient(server, {name: "Diego"})
  const {topic} = await memberRoom(server, [ana, beto, celia, diego])

  const chA = ana.channel(topic)
  const presence = new Presence(chA)
  let syncs = 0
  const joins = []
  const leaves = []
  presence.onSync(() => { syncs++ })
  presence.onJoin((key, current, joined) => joins.push([key, joined.metas.map((m) => m.phx_ref)]))
  presence.onLeave((key, current, left) => leaves.push([key, left.metas.map((m) => m.phx_ref)]))
  await join(chA)
  await until(() => presence.list().length === 1, "Ana sees herself")
  assert.deepEqual(presence.list((key) => key), [ana.key])

  const {channel: chB} = await beto.join(topic)
  const {channel: chC} = await celia.join(topic)
  await until(() => presence.list().length === 3, "Ana sees Beto and Celia")
  await pushOk(chB, "estado", {estado: "ausente"})
  await until(() => presence.state[beto.key] && presence.state[beto.key].metas[0].estado === "ausente", "Ana sees Beto ausente")
  chC.leave()
  await until(() => !presence.state[celia.key], "Ana sees Celia leave")

  const {channel: chD} = await diego.join(topic)
  const fresh = await chD.rec.waitFor("presence_state", (s) => s[diego.key] !== undefined)
  await until(() => presence.state[diego.key], "Ana sees Diego")

  const expected = presenceView(fresh)
  assert.deepEqual(Object.keys(expected), [ana.key, beto.key, diego.key].sort())
  assert.deepEqual(presenceView(presence.state), expected)
  assert.deepEqual(presence.list((key, p) => [key, p.metas[0].nombre]).sort(),
    [[ana.key, "Ana"], [beto.key, "Beto"], [diego.key, "Diego"]].sort())
  assert.equal(expected[beto.key].length, 1, "an update must not leave the old meta behind")
  assert.equal(expected[beto.key][0].estado, "ausente")
  assert.ok(syncs >= 5, `onSync ran ${syncs} times`)
  assert.ok(leaves.some(([k]) => k === celia.key), "onLeave for Celia")
  assert.ok(joins.some(([k]) => k === diego.key), "onJoin for Diego")
})

test("two sockets of the same user: one key with two metas; closing one leaves one meta", {timeout: 20_000}, async () => {
  const otto = await openClient(server, {name: "Otto"})
  const uid = newUserId()
  const tab1 = await openClient(server, {userId: uid, name: "Carla"})
  const tab2 = await openClient(server, {userId: uid, name: "Carla"})
  const luis = await openClient(server, {name: "Luis"})
  const {topic} = await memberRoom(server, [otto, tab1, luis])

  const chO = otto.channel(topic)
  const presence = new Presence(chO)
  await join(chO)
  const {channel: ch1} = await tab1.join(topic)
  const {channel: ch2} = await tab2.join(topic)
  const key = String(uid)
  await until(() => presence.state[key] && presence.state[key].metas.length === 2, "Otto sees Carla's two tabs")
  const refs = presence.state[key].metas.map((m) => m.phx_ref)
  assert.notEqual(refs[0], refs[1])
  assert.deepEqual(presence.list().length, 2, "two keys: Otto and Carla")

  // the second tab's own presence_state lists both of Carla's metas
  const state2 = await ch2.rec.waitFor("presence_state", (s) => s[key] !== undefined)
  assert.deepEqual(state2[key].metas.map((m) => m.phx_ref).sort(), [...refs].sort())

  ch2.leave()
  await flushed(tab2.socket)
  await until(() => presence.state[key] && presence.state[key].metas.length === 1, "one of Carla's metas leaves", SHORT)
  const left = presence.state[key].metas[0].phx_ref
  assert.ok(refs.includes(left))

  const {channel: chL} = await luis.join(topic)
  const fresh = await chL.rec.waitFor("presence_state", (s) => s[luis.key] !== undefined)
  assert.deepEqual(fresh[key].metas.map((m) => m.phx_ref), [left])
  assert.ok(ch1.isJoined())
})

// LongPoll only: it stalls phoenix.js's HTTP requests. A WebSocket is its session: a connection
// that stops answering is closed by the server's pings and idle timeout (websocket/ Go tests).
test("a client whose polling stalls past the session timeout is told its session is gone, then reconnects, rejoins and gets the missed messages", {timeout: 30_000, skip: !overLongPoll() && "LongPoll only"}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const chA = ana.channel(topic)
  const joinReplies = []
  chA.joinPush.receive("ok", (resp) => joinReplies.push(resp))
  await join(chA)
  const {channel: chB} = await beto.join(topic)
  const refA = await ownRef(ana, chA)

  // Ana's laptop sleeps: her requests stop reaching the server
  const release = stallClient(ana)
  const leave = await chB.rec.waitFor("presence_diff", (d) => d.leaves && d.leaves[ana.key],
    {timeout: SESSION_TIMEOUT_MS + 2 * WINDOW_MS + 6000})
  assert.deepEqual(leave.leaves[ana.key].metas.map((m) => m.phx_ref), [refA])
  await pushOk(chB, "nuevo_mensaje", {contenido: "¿sigues ahí, Ana?"})
  assert.deepEqual(ana.errors, [], "nothing reached Ana yet")

  // she wakes up: her next poll learns the session is gone; phoenix.js reconnects and rejoins
  const mark = chB.rec.mark()
  release()
  await until(() => ana.errors.length > 0, "Ana's socket reports the lost session", SHORT)
  await until(() => joinReplies.length >= 2 && chA.isJoined(), "Ana's channel rejoined by itself", SHORT + WINDOW_MS)
  const rejoin = joinReplies[joinReplies.length - 1]
  assert.ok(rejoin.mensajes.some((m) => m.contenido === "¿sigues ahí, Ana?"),
    `the rejoin reply must carry the message sent while Ana was away: ${JSON.stringify(rejoin.mensajes)}`)
  const back = await chB.rec.waitFor("presence_diff", (d) => d.joins && d.joins[ana.key], {since: mark})
  assert.notEqual(back.joins[ana.key].metas[0].phx_ref, refA)
  assert.deepEqual(await pushOk(chA, "ping", {despierta: true}), {despierta: true})
})

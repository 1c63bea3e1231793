// The HTTP API: bearer key required (and a refused call changes nothing), and
// POST /api/disconnect, after which phoenix.js reconnects and rejoins by itself.

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import {Presence} from "phoenix"
import {
  startServer, openClient, closeAllClients, join, joinRefused, pushOk, memberRoom, newRoomId, newUserId,
  until, sleep, WINDOW_MS,
} from "./helpers.mjs"

let server
before(async () => { server = await startServer() })
afterEach(closeAllClients)
after(async () => { await closeAllClients(); await server?.stop() })

test("API calls without the right bearer key are refused with 401/403 and a JSON error, and change nothing", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const roomId = newRoomId("auth")
  const calls = [
    ["PUT", `/api/salas/${roomId}`, {miembros: [ana.userId]}],
    ["POST", "/api/broadcast", {topic: "sala:lobby", event: "anuncio", payload: {mensaje: "no autorizado"}}],
    ["POST", "/api/disconnect", {socket_id: `user_socket:${ana.userId}`}],
  ]
  const {channel} = await ana.join("sala:lobby")
  await channel.rec.waitFor("presence_state")
  for(const [method, apiPath, body] of calls){
    for(const key of [null, "wrong-key", `${server.apiKey}x`, ""]){
      const res = await server.api(method, apiPath, body, {key})
      assert.ok(res.status === 401 || res.status === 403,
        `${method} ${apiPath} with key ${JSON.stringify(key)} -> ${res.status} ${res.text}`)
      assert.ok(res.body !== null && typeof res.body === "object",
        `${method} ${apiPath} with key ${JSON.stringify(key)}: body is not a JSON object: ${JSON.stringify(res.text)}`)
    }
  }
  // also the API key sent as a query parameter or a non-Bearer scheme is not enough
  const basic = await fetch(`${server.base}/api/broadcast`, {
    method: "POST",
    headers: {"content-type": "application/json", authorization: `Basic ${server.apiKey}`},
    body: JSON.stringify(calls[1][2]),
  })
  await basic.text()
  assert.ok(basic.status === 401 || basic.status === 403, `Basic scheme -> ${basic.status}`)

  // nothing happened: the room does not exist, the lobby got no anuncio, Ana was not disconnected
  assert.deepEqual(await joinRefused(ana.channel(`sala:${roomId}`)), {reason: "acceso denegado"})
  await server.broadcast("sala:lobby", "anuncio", {mensaje: "marcador"})
  await channel.rec.waitFor("anuncio", (p) => p.mensaje === "marcador")
  assert.deepEqual(channel.rec.all("anuncio"), [{mensaje: "marcador"}])
  assert.deepEqual(ana.errors, [], "Ana's socket had a transport error")
  assert.ok(channel.isJoined())
})

test("API with the right key: PUT /api/salas answers 200/201, bad bodies are rejected", {timeout: 20_000}, async () => {
  const id = newRoomId("api")
  const created = await server.api("PUT", `/api/salas/${id}`, {miembros: [1, 2]})
  assert.ok(created.status === 200 || created.status === 201, `${created.status} ${created.text}`)
  const replaced = await server.api("PUT", `/api/salas/${id}`, {miembros: [3]})
  assert.ok(replaced.status === 200 || replaced.status === 201, `${replaced.status} ${replaced.text}`)

  const bad = await fetch(`${server.base}/api/salas/${newRoomId("bad")}`, {
    method: "PUT",
    headers: {authorization: `Bearer ${server.apiKey}`, "content-type": "application/json"},
    body: "{not json",
  })
  await bad.text()
  assert.ok(bad.status >= 400 && bad.status < 500, `malformed JSON body -> ${bad.status}`)
  const wrongType = await server.api("PUT", `/api/salas/${newRoomId("bad")}`, {miembros: "todos"})
  assert.ok(wrongType.status >= 400 && wrongType.status < 500, `miembros as a string -> ${wrongType.status} ${wrongType.text}`)
  const noTopic = await server.api("POST", "/api/broadcast", {event: "anuncio", payload: {}})
  assert.ok(noTopic.status >= 400 && noTopic.status < 500, `broadcast without topic -> ${noTopic.status} ${noTopic.text}`)
})

test("POST /api/disconnect closes every session of that socket id; phoenix.js reconnects and rejoins by itself", {timeout: 30_000}, async () => {
  const uid = newUserId()
  const tab1 = await openClient(server, {userId: uid, name: "Carlos"})
  const tab2 = await openClient(server, {userId: uid, name: "Carlos"})
  const otra = await openClient(server, {name: "Olga"})
  const {topic} = await memberRoom(server, [uid, otra.userId])

  const watch = otra.channel(topic)
  const presence = new Presence(watch)
  await join(watch)
  const tabs = []
  for(const tab of [tab1, tab2]){
    const ch = tab.channel(topic)
    let okJoins = 0
    ch.joinPush.receive("ok", () => { okJoins++ })
    await join(ch)
    tabs.push({tab, ch, joins: () => okJoins})
  }
  const key = String(uid)
  await until(() => presence.state[key] && presence.state[key].metas.length === 2, "Olga sees both of Carlos' tabs")
  const refsBefore = presence.state[key].metas.map((m) => m.phx_ref).sort()
  // give the long polls time to be parked on the server, as in real use
  await sleep(300)

  const res = await server.api("POST", "/api/disconnect", {socket_id: `user_socket:${uid}`})
  assert.ok(res.status >= 200 && res.status < 300, `/api/disconnect -> ${res.status} ${res.text}`)

  const limit = WINDOW_MS + 6000
  for(const {tab, ch, joins} of tabs){
    // LongPoll: the next poll fails (an error); WebSocket: the server closes the connection (1001)
    await until(() => tab.errors.length > 0 || tab.transportCloses.length > 0, `Carlos' socket reports an error or a close after /api/disconnect`, limit)
    await until(() => joins() >= 2 && ch.isJoined(), "the channel rejoined by itself", limit)
    assert.equal(ch.state, "joined")
    assert.ok(tab.socket.isConnected())
    assert.deepEqual(await pushOk(ch, "ping", {otra: "vez"}), {otra: "vez"})
  }
  // the other user was not disconnected
  assert.deepEqual(otra.errors, [])
  assert.deepEqual(otra.transportCloses, [])
  assert.ok(watch.isJoined())
  // Carlos' presence is back with two fresh metas
  await until(() => presence.state[key] && presence.state[key].metas.length === 2 &&
    presence.state[key].metas.every((m) => !refsBefore.includes(m.phx_ref)), "Olga sees Carlos' two new metas", limit)

  // the other socket ids are untouched by a disconnect of an unknown one
  const none = await server.api("POST", "/api/disconnect", {socket_id: `user_socket:${newUserId()}`})
  assert.ok(none.status >= 200 && none.status < 500, `disconnect of an unknown socket id -> ${none.status}`)
  await sleep(WINDOW_MS + 500)
  assert.deepEqual(otra.errors, [])
  assert.deepEqual(otra.transportCloses, [])
})

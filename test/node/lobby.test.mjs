// sala:lobby with real phoenix.js clients: join reply, estado_actual, presence, messages,
// history, and Endpoint.broadcast from outside (POST /api/broadcast).

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import {
  startServer, openClient, closeAllClients, pushOk, isoUtc, newRoomId,
} from "./helpers.mjs"

let server
before(async () => { server = await startServer() })
afterEach(closeAllClients)
after(async () => { await closeAllClients(); await server?.stop() })

function assertMessageShape(m){
  assert.equal(typeof m, "object")
  for(const k of ["id", "contenido", "autor", "timestamp"]){
    assert.ok(k in m, `message lacks "${k}": ${JSON.stringify(m)}`)
  }
  assert.ok(typeof m.id === "number" || (typeof m.id === "string" && m.id !== ""), `bad id ${JSON.stringify(m.id)}`)
  assert.equal(typeof m.contenido, "string")
  assert.ok(!Number.isNaN(Date.parse(m.timestamp)), `timestamp is not a date: ${JSON.stringify(m.timestamp)}`)
}

test("join sala:lobby: ok with mensajes, then estado_actual and presence_state with the user's meta", {timeout: 20_000}, async () => {
  const carlos = await openClient(server, {name: "Carlos"})
  const {channel, reply} = await carlos.join("sala:lobby")

  assert.ok(Array.isArray(reply.mensajes), `join reply has no mensajes list: ${JSON.stringify(reply)}`)
  assert.ok(reply.mensajes.length <= 50, `join reply has ${reply.mensajes.length} mensajes, more than 50`)
  reply.mensajes.forEach(assertMessageShape)

  const estado = await channel.rec.waitFor("estado_actual")
  assert.ok(Array.isArray(estado.usuarios), `estado_actual.usuarios is not a list: ${JSON.stringify(estado)}`)

  const state = await channel.rec.waitFor("presence_state", (s) => s[carlos.key] !== undefined)
  const metas = state[carlos.key].metas
  assert.equal(metas.length, 1, `expected one meta for ${carlos.key}: ${JSON.stringify(metas)}`)
  const meta = metas[0]
  assert.equal(meta.nombre, "Carlos")
  assert.equal(meta.estado, "activo")
  assert.match(meta.en_linea_desde, isoUtc, "en_linea_desde must be ISO 8601 UTC")
  assert.ok(Math.abs(Date.parse(meta.en_linea_desde) - Date.now()) < 60_000, `en_linea_desde is not now: ${meta.en_linea_desde}`)
  assert.equal(typeof meta.phx_ref, "string")
  assert.ok(meta.phx_ref.length > 0)
})

test("two clients in the lobby see each other (presence) and each other's messages", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const {channel: chA} = await ana.join("sala:lobby")
  await chA.rec.waitFor("presence_state", (s) => s[ana.key] !== undefined)

  const beto = await openClient(server, {name: "Beto"})
  const {channel: chB} = await beto.join("sala:lobby")

  // Beto's presence_state already lists Ana; Ana gets a presence_diff with Beto's join.
  const stateB = await chB.rec.waitFor("presence_state", (s) => s[beto.key] !== undefined)
  assert.ok(stateB[ana.key], `Beto's presence_state lacks Ana (${ana.key}): ${JSON.stringify(stateB)}`)
  assert.equal(stateB[ana.key].metas[0].nombre, "Ana")
  const diff = await chA.rec.waitFor("presence_diff", (d) => d.joins && d.joins[beto.key])
  assert.equal(diff.joins[beto.key].metas[0].nombre, "Beto")
  assert.deepEqual(diff.leaves, {})

  const text = `¡Hola a todos! ${newRoomId("m")}`
  const reply = await pushOk(chA, "nuevo_mensaje", {contenido: text})
  assert.equal(typeof reply, "object")
  const seenByA = await chA.rec.waitFor("mensaje_recibido", (m) => m.contenido === text)
  const seenByB = await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === text)
  assertMessageShape(seenByA)
  assert.equal(seenByA.autor, "Ana")
  assert.deepEqual(seenByB, seenByA, "both members must get the same mensaje_recibido")

  const answer = `Hola Ana, soy Beto ${newRoomId("m")}`
  await pushOk(chB, "nuevo_mensaje", {contenido: answer})
  const answerAtA = await chA.rec.waitFor("mensaje_recibido", (m) => m.contenido === answer)
  assert.equal(answerAtA.autor, "Beto")
  assert.notEqual(answerAtA.id, seenByA.id, "two messages got the same id")
  await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === answer)

  // Each message is delivered once per member.
  assert.equal(chA.rec.all("mensaje_recibido").filter((m) => m.contenido === text).length, 1)
  assert.equal(chB.rec.all("mensaje_recibido").filter((m) => m.contenido === text).length, 1)
})

test("lobby messages appear, oldest first, in the mensajes of a later join", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const {channel} = await ana.join("sala:lobby")
  const tag = newRoomId("h")
  const sent = []
  for(const n of [1, 2, 3]){
    const contenido = `historia ${tag} #${n}`
    await pushOk(channel, "nuevo_mensaje", {contenido})
    sent.push(await channel.rec.waitFor("mensaje_recibido", (m) => m.contenido === contenido))
  }

  const luis = await openClient(server, {name: "Luis"})
  const {reply} = await luis.join("sala:lobby")
  assert.ok(Array.isArray(reply.mensajes))
  assert.ok(reply.mensajes.length >= 3 && reply.mensajes.length <= 50, `got ${reply.mensajes.length} mensajes`)
  // Nobody else writes to this server's lobby during this test: our three are the newest.
  assert.deepEqual(reply.mensajes.slice(-3), sent)
})

test("POST /api/broadcast to sala:lobby reaches every lobby member", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {channel: chA} = await ana.join("sala:lobby")
  const {channel: chB} = await beto.join("sala:lobby")
  // wait until both are fully set up server-side
  await chA.rec.waitFor("presence_state")
  await chB.rec.waitFor("presence_state")

  const payload = {mensaje: "El servidor se reiniciará en 5 minutos", id: newRoomId("a")}
  await server.broadcast("sala:lobby", "anuncio", payload)
  assert.deepEqual(await chA.rec.waitFor("anuncio", (p) => p.id === payload.id), payload)
  assert.deepEqual(await chB.rec.waitFor("anuncio", (p) => p.id === payload.id), payload)
})

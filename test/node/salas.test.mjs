// Join authorization: sala:privada:<id> (password), sala:<id> (members), notificaciones:<user>
// (own user only, niveles filter applied to /api/broadcast), unmatched topics.

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import {
  startServer, openClient, closeAllClients, join, joinRefused, pushOk, memberRoom, newRoomId, sleep,
} from "./helpers.mjs"

let server
before(async () => { server = await startServer() })
afterEach(closeAllClients)
after(async () => { await closeAllClients(); await server?.stop() })

test("sala:privada:<id>: the right password joins, a wrong or missing one is refused", {timeout: 20_000}, async () => {
  const id = newRoomId("priv")
  await server.createRoom(id, {password: "secreto ñandú"})
  const topic = `sala:privada:${id}`
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const eva = await openClient(server, {name: "Eva"})

  const wrong = await joinRefused(eva.channel(topic, {password: "Secreto ñandú"}))
  assert.deepEqual(wrong, {reason: "contraseña incorrecta"})
  await joinRefused(eva.channel(topic, {}))
  await joinRefused(eva.channel(topic, {password: ""}))

  const {channel: chA, reply} = await ana.join(topic, {password: "secreto ñandú"})
  assert.ok(Array.isArray(reply.mensajes), `private join reply: ${JSON.stringify(reply)}`)
  const {channel: chB} = await beto.join(topic, {password: "secreto ñandú"})
  await pushOk(chA, "nuevo_mensaje", {contenido: "solo para quien sabe la contraseña"})
  const m = await chB.rec.waitFor("mensaje_recibido")
  assert.equal(m.contenido, "solo para quien sabe la contraseña")
  assert.equal(m.autor, "Ana")
  // Eva never got in, so she got nothing
  for(const ch of eva.channels){ assert.deepEqual(ch.rec.all("mensaje_recibido"), []) }

  // a private room that does not exist cannot be joined with any password
  await joinRefused(eva.channel(`sala:privada:${newRoomId("nope")}`, {password: "secreto ñandú"}))
})

test("sala:<id>: members join, non-members get \"no autorizado\", a missing room \"acceso denegado\"", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const eva = await openClient(server, {name: "Eva"})
  const {id, topic} = await memberRoom(server, [ana, beto])

  const {reply} = await ana.join(topic)
  assert.deepEqual(reply.mensajes, [])
  await beto.join(topic)
  assert.deepEqual(await joinRefused(eva.channel(topic)), {reason: "no autorizado"})
  assert.deepEqual(await joinRefused(eva.channel(`sala:${newRoomId("nope")}`)), {reason: "acceso denegado"})

  // PUT replaces the room: Beto is no longer a member, Eva now is
  await server.createRoom(id, {miembros: [ana.userId, eva.userId]})
  await join(eva.channel(topic))
  const beto2 = await openClient(server, {userId: beto.userId, name: "Beto"})
  assert.deepEqual(await joinRefused(beto2.channel(topic)), {reason: "no autorizado"})
})

test("sala:<id> behaves like the lobby for members: presence and messages", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const {channel: chA} = await ana.join(topic)
  await chA.rec.waitFor("estado_actual")
  const {channel: chB} = await beto.join(topic)
  const state = await chB.rec.waitFor("presence_state", (s) => s[beto.key] !== undefined)
  assert.deepEqual(Object.keys(state).sort(), [ana.key, beto.key].sort())
  await pushOk(chB, "nuevo_mensaje", {contenido: "hola sala"})
  assert.equal((await chA.rec.waitFor("mensaje_recibido")).contenido, "hola sala")
})

test("unknown topic: join refused with \"unmatched topic\"", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  assert.deepEqual(await joinRefused(ana.channel("nada:1")), {reason: "unmatched topic"})
  assert.deepEqual(await joinRefused(ana.channel("salas")), {reason: "unmatched topic"})
  // the socket is still usable
  const {channel} = await ana.join("sala:lobby")
  assert.deepEqual(await pushOk(channel, "ping", {ok: 1}), {ok: 1})
})

test("notificaciones:<id>: only that user may join", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const eva = await openClient(server, {name: "Eva"})
  await join(ana.channel(`notificaciones:${ana.userId}`, {niveles: ["info"]}))
  assert.deepEqual(await joinRefused(eva.channel(`notificaciones:${ana.userId}`, {niveles: ["info"]})), {reason: "no autorizado"})
  assert.deepEqual(await joinRefused(eva.channel(`notificaciones:${ana.userId}`)), {reason: "no autorizado"})
})

test("notificaciones: /api/broadcast of nueva_notificacion is filtered per socket by its niveles", {timeout: 20_000}, async () => {
  const uid = (await openClient(server, {name: "Ana"})).userId
  const tabAlta = await openClient(server, {userId: uid, name: "Ana"})
  const tabBaja = await openClient(server, {userId: uid, name: "Ana"})
  const tabAmbas = await openClient(server, {userId: uid, name: "Ana"})
  const topic = `notificaciones:${uid}`
  const chAlta = tabAlta.channel(topic, {niveles: ["alta"]})
  const chBaja = tabBaja.channel(topic, {niveles: ["baja"]})
  const chAmbas = tabAmbas.channel(topic, {niveles: ["baja", "alta"]})
  await Promise.all([join(chAlta), join(chBaja), join(chAmbas)])

  const n1 = {nivel: "baja", texto: "Tienes un nuevo seguidor", n: 1}
  const n2 = {nivel: "alta", texto: "Alguien entró en tu cuenta", n: 2}
  const n3 = {nivel: "media", texto: "nadie la quiere", n: 3}
  await server.broadcast(topic, "nueva_notificacion", n1)
  await server.broadcast(topic, "nueva_notificacion", n2)
  await server.broadcast(topic, "nueva_notificacion", n3)
  const fin = {nivel: "alta", texto: "fin", n: 4}
  await server.broadcast(topic, "nueva_notificacion", fin)
  const finBaja = {nivel: "baja", texto: "fin", n: 5}
  await server.broadcast(topic, "nueva_notificacion", finBaja)

  await chAlta.rec.waitFor("nueva_notificacion", (p) => p.n === 4)
  await chBaja.rec.waitFor("nueva_notificacion", (p) => p.n === 5)
  await chAmbas.rec.waitFor("nueva_notificacion", (p) => p.n === 5)
  await sleep(200)
  assert.deepEqual(chAlta.rec.all("nueva_notificacion"), [n2, fin])
  assert.deepEqual(chBaja.rec.all("nueva_notificacion"), [n1, finBaja])
  assert.deepEqual(chAmbas.rec.all("nueva_notificacion"), [n1, n2, fin, finBaja])
})

test("notificaciones: without niveles every level is delivered", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const topic = `notificaciones:${ana.userId}`
  const ch = ana.channel(topic)
  await join(ch)
  const sent = [{nivel: "baja", n: 1}, {nivel: "media", n: 2}, {nivel: "alta", n: 3}]
  for(const p of sent){ await server.broadcast(topic, "nueva_notificacion", p) }
  await ch.rec.waitFor("nueva_notificacion", (p) => p.n === 3)
  assert.deepEqual(ch.rec.all("nueva_notificacion"), sent)
})

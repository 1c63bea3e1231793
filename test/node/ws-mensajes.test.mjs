// mensajes.test.mjs over WebSocket: the same scenarios, phoenix.js with the npm ws client.
import {useWebSocket} from "./ws-helpers.mjs"

useWebSocket()
await import("./mensajes.test.mjs")

// The phoenix.js suites over WebSocket. Node 20 has no global WebSocket, so phoenix.js is given
// the npm `ws` client as its transport, as phoenix.js documents for environments without one:
// `new Socket(url, {transport: WebSocket})`. Each ws-<suite>.test.mjs file calls useWebSocket()
// and then imports <suite>.test.mjs, whose clients (helpers.mjs' openClient) then connect to
// /socket/websocket instead of /socket/longpoll.

import WebSocket from "ws"
import {useTransport} from "./helpers.mjs"

export {WebSocket}

/** Makes helpers.mjs' openClient use phoenix.js over WebSocket in this test process. */
export function useWebSocket(){ useTransport(WebSocket) }

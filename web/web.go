// Package web serves Sluice's browser assets from the binary: the phoenix.js
// transport for the SSE endpoint, so that a page loads it from the gateway it
// talks to and the two always match.
//
//	<script type="module">
//	  import {Socket, LongPoll} from "https://cdn.jsdelivr.net/npm/phoenix@1.8.16/priv/static/phoenix.mjs"
//	  import {SSETransport} from "https://gateway.example/js/sse-transport.js"
//	  const socket = new Socket("https://gateway.example/socket", {transport: SSETransport.withFallback(LongPoll)})
//	</script>
package web

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// SSETransportPath is where Register serves sse-transport.js.
const SSETransportPath = "/js/sse-transport.js"

// sseTransport is web/sse-transport.js: an ES module exporting SSETransport
// (a phoenix.js transport over /socket/sse) and withFallback (SSE, else
// Phoenix's LongPoll).
//
//go:embed sse-transport.js
var sseTransport []byte

// sseTransportETag lets browsers revalidate with a 304 once max-age passed.
var sseTransportETag = func() string {
	sum := sha256.Sum256(sseTransport)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}()

// Register serves the assets on e: GET and HEAD /js/sse-transport.js as
// text/javascript, cacheable for five minutes (short, so that a deploy
// reaches clients soon) with an ETag, and readable cross-origin, which a page
// on another origin needs to import a module.
func Register(e *echo.Echo) {
	serve := func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("ETag", sseTransportETag)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Access-Control-Allow-Origin", "*")
		// ServeContent answers If-None-Match, Range and HEAD.
		http.ServeContent(c.Response(), c.Request(), "sse-transport.js", time.Time{}, bytes.NewReader(sseTransport))
		return nil
	}
	e.GET(SSETransportPath, serve)
	e.HEAD(SSETransportPath, serve)
}

// Package web serves Sluice's browser assets from the binary: the phoenix.js
// transport for the SSE endpoint, so that a page loads it from the gateway it
// talks to and the two always match; and the debug console (RegisterConsole)
// with the transport self-test it runs (RegisterSelfTest).
//
//	<script type="module">
//	  import {Socket} from "https://cdn.jsdelivr.net/npm/phoenix@1.8.16/priv/static/phoenix.mjs"
//	  import {SSETransport} from "https://gateway.example/js/sse-transport.js"
//	  const socket = new Socket("https://gateway.example/socket", {transport: SSETransport.withFallback()})
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

// Paths of the console and its assets (RegisterConsole). The page refers to
// them relatively, so that it also works behind a proxy that mounts the
// gateway under a path prefix.
const (
	// ConsolePath is the debug console's page.
	ConsolePath = "/"
	// ConsoleScriptPath is the console's ES module.
	ConsoleScriptPath = "/console.js"
	// ConsoleStylePath is the console's style sheet.
	ConsoleStylePath = "/console.css"
	// PhoenixPath is phoenix.js 1.8.16 as an ES module (web/vendor/phoenix.mjs).
	PhoenixPath = "/js/phoenix.mjs"
)

// sseTransport is web/sse-transport.js: an ES module exporting SSETransport
// (a phoenix.js transport over /socket/sse), ResilientLongPoll (Phoenix's
// LongPoll protocol, repeating lost requests instead of starting a new
// session) and withFallback (SSE, else ResilientLongPoll).
//
//go:embed sse-transport.js
var sseTransport []byte

//go:embed console.html
var consoleHTML []byte

//go:embed console.js
var consoleJS []byte

//go:embed console.css
var consoleCSS []byte

// phoenixJS is the npm package phoenix 1.8.16's priv/static/phoenix.mjs.
//
//go:embed vendor/phoenix.mjs
var phoenixJS []byte

// asset is one embedded file and how it is served.
type asset struct {
	name         string // for http.ServeContent (ranges, HEAD)
	body         []byte
	contentType  string
	cacheControl string
	etag         string
	// extra headers (the console page's security policy)
	headers map[string]string
}

func newAsset(name string, body []byte, contentType, cacheControl string) *asset {
	sum := sha256.Sum256(body)
	return &asset{
		name: name, body: body, contentType: contentType, cacheControl: cacheControl,
		// lets browsers revalidate with a 304 once max-age passed
		etag: `"` + hex.EncodeToString(sum[:8]) + `"`,
	}
}

// serve answers GET and HEAD with the asset; ServeContent answers
// If-None-Match, Range and HEAD.
func (a *asset) serve(c echo.Context) error {
	h := c.Response().Header()
	h.Set("Content-Type", a.contentType)
	h.Set("Cache-Control", a.cacheControl)
	h.Set("ETag", a.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	for k, v := range a.headers {
		h.Set(k, v)
	}
	http.ServeContent(c.Response(), c.Request(), a.name, time.Time{}, bytes.NewReader(a.body))
	return nil
}

func (a *asset) register(e *echo.Echo, path string) {
	e.GET(path, a.serve)
	e.HEAD(path, a.serve)
}

// Modules are cacheable for five minutes (short, so that a deploy reaches
// clients soon) and readable cross-origin, which a page on another origin
// needs to import a module.
const moduleCache = "public, max-age=300"

func module(name string, body []byte) *asset {
	a := newAsset(name, body, "text/javascript; charset=utf-8", moduleCache)
	a.headers = map[string]string{"Access-Control-Allow-Origin": "*"}
	return a
}

// Register serves the assets on e: GET and HEAD /js/sse-transport.js as
// text/javascript, cacheable for five minutes (short, so that a deploy
// reaches clients soon) with an ETag, and readable cross-origin, which a page
// on another origin needs to import a module.
func Register(e *echo.Echo) {
	module("sse-transport.js", sseTransport).register(e, SSETransportPath)
}

// consoleCSP confines the console page: its scripts and styles come from
// the gateway only; it may connect anywhere (the server base is a form
// field); nobody may frame it (it holds a token).
const consoleCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src *; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// RegisterConsole serves the debug console on e (GET and HEAD): the page at
// ConsolePath, its script and style sheet, and phoenix.js at PhoenixPath,
// which the console imports with Register's sse-transport.js (so Register
// must be called too). The console connects with a token over SSE or
// LongPoll, joins and leaves topics, pushes events, shows every raw frame
// and each topic's presence, and runs the transport self-test that
// RegisterSelfTest serves. Plain HTML, JavaScript and CSS, no build step.
// Leave it out to turn the console off.
func RegisterConsole(e *echo.Echo) {
	page := newAsset("console.html", consoleHTML, "text/html; charset=utf-8", "no-cache")
	page.headers = map[string]string{
		"Content-Security-Policy": consoleCSP,
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
	}
	page.register(e, ConsolePath)
	// the console's own files are revalidated each time: they change with
	// the binary, and a stale script with a new page would break
	newAsset("console.js", consoleJS, "text/javascript; charset=utf-8", "no-cache").register(e, ConsoleScriptPath)
	newAsset("console.css", consoleCSS, "text/css; charset=utf-8", "no-cache").register(e, ConsoleStylePath)
	module("phoenix.mjs", phoenixJS).register(e, PhoenixPath)
}

package websocket_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	gws "github.com/gorilla/websocket"

	"github.com/sluicegw/sluice/internal/testroom"
	"github.com/sluicegw/sluice/websocket"
)

func isEvent(topic, event string) func(testroom.Frame) bool {
	return func(f testroom.Frame) bool { return f.Topic == topic && f.Event == event }
}

func diffWith(topic, side, key string) func(testroom.Frame) bool {
	return func(f testroom.Frame) bool {
		if f.Topic != topic || f.Event != "presence_diff" {
			return false
		}
		var d map[string]map[string]json.RawMessage
		_ = json.Unmarshal(f.Payload, &d)
		_, ok := d[side][key]
		return ok
	}
}

// The channel lifecycle over one WebSocket: join (reply, then the pushes of
// after_join), push and reply, broadcast to every member, heartbeat, an
// unknown event, leave (reply, phx_close, and a presence leave for the
// others); and the metrics of all that.
func TestJoinPushReplyBroadcastHeartbeatLeave(t *testing.T) {
	e := newEnv(t, envConfig{})
	a := e.connect(t, "1")
	b := e.connect(t, "2")
	if a.Subprotocol != "" {
		t.Errorf("no subprotocol was offered, but the server chose %q", a.Subprotocol)
	}

	a.join("room:lobby", "1")
	state := a.waitFrame("presence_state", isEvent("room:lobby", "presence_state"))
	if state.JoinRef == nil || *state.JoinRef != "1" || !strings.Contains(string(state.Payload), `"1":{"metas"`) {
		t.Errorf("presence_state after the join: %+v %s", state, state.Payload)
	}
	b.join("room:lobby", "7")
	a.waitFrame("Beto's join in a presence_diff", diffWith("room:lobby", "joins", "2"))

	a.send(`["1","2","room:lobby","ping",{"n":1,"s":"¿qué?"}]`)
	testroom.RequireFrame(t, a.reply("room:lobby", "2").String(), `["1","2","room:lobby","phx_reply",{"status":"ok","response":{"n":1,"s":"¿qué?"}}]`)

	b.send(`["7","8","room:lobby","shout",{"hola":"todos"}]`)
	for _, c := range []*client{a, b} {
		f := c.waitFrame("the shout", isEvent("room:lobby", "shouted"))
		testroom.RequireFrame(t, f.String(), `[null,null,"room:lobby","shouted",{"hola":"todos"}]`)
	}
	b.reply("room:lobby", "8")

	a.send(`[null,"3","phoenix","heartbeat",{}]`)
	testroom.RequireFrame(t, a.reply("phoenix", "3").String(), `[null,"3","phoenix","phx_reply",{"status":"ok","response":{}}]`)

	a.send(`["1","4","room:lobby","nope",{}]`)
	if f := a.reply("room:lobby", "4"); !strings.Contains(string(f.Payload), `"status":"error"`) {
		t.Errorf("unknown event: %s", f.Payload)
	}

	a.send(`["1","5","room:lobby","phx_leave",{}]`)
	a.reply("room:lobby", "5")
	a.waitFrame("phx_close", isEvent("room:lobby", "phx_close"))
	b.waitFrame("Ana's leave in a presence_diff", diffWith("room:lobby", "leaves", "1"))

	o := e.obs
	if n := o.open(); n != 2 {
		t.Errorf("open websocket connections: %d, want 2", n)
	}
	for deadline := time.Now().Add(5 * time.Second); o.count(&o.received, "websocket") < 7 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // counted after the frames were applied, maybe after their replies arrived
	}
	if n := o.count(&o.received, "websocket"); n != 7 {
		t.Errorf("frames received over websocket: %d, want 7", n)
	}
	// A delivery is counted once written, after the client may already have
	// read it: wait for the count rather than race it.
	for _, kind := range []string{"reply", "broadcast", "presence", "control"} {
		deadline := time.Now().Add(5 * time.Second)
		for o.count(&o.delivered, "websocket/"+kind) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if o.count(&o.delivered, "websocket/"+kind) == 0 {
			t.Errorf("no %s frame counted as delivered over websocket", kind)
		}
	}
}

// A V1 (vsn 1.0.0) client speaks JSON objects, and gets no join_ref.
func TestV1Serializer(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.dial(t, query(t, "5", "1.0.0"), nil)
	c.send(`{"topic":"room:v1","event":"phx_join","payload":{},"ref":"1"}`)
	select {
	case s := <-c.frames:
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatalf("V1 frame is not an object: %s", s)
		}
		if string(m["event"]) != `"phx_reply"` || string(m["ref"]) != `"1"` || !strings.Contains(string(m["payload"]), `"status":"ok"`) {
			t.Errorf("V1 join reply: %s", s)
		}
		if _, ok := m["join_ref"]; ok {
			t.Errorf("V1 frame with a join_ref: %s", s)
		}
	case <-time.After(waitFor):
		t.Fatal("no V1 join reply")
	}
}

// phoenix.js's authToken goes in the Sec-WebSocket-Protocol header as
// "base64url.bearer.phx.<btoa(token) without =>" next to "phoenix"; the
// server takes it, answers "phoenix" and never echoes the token entry.
// X-Phoenix-AuthToken works too.
func TestAuthTokenSubprotocolAndHeader(t *testing.T) {
	e := newEnv(t, envConfig{})
	tok := userToken(t, "77")
	entry := "base64url.bearer.phx." + strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(tok)), "=")
	hdr := http.Header{"Sec-WebSocket-Protocol": {"phoenix, " + entry}}
	conn, res, err := (&gws.Dialer{HandshakeTimeout: waitFor}).Dial(e.url+"?vsn=2.0.0", hdr)
	if err != nil {
		t.Fatalf("dial with the auth subprotocol: %v", err)
	}
	conn.Close()
	if got := res.Header.Values("Sec-WebSocket-Protocol"); len(got) != 1 || got[0] != "phoenix" {
		t.Errorf("Sec-WebSocket-Protocol answered %q, want only phoenix", got)
	}

	c := e.dial(t, "vsn=2.0.0", hdr)
	c.join("room:auth", "1")
	st := c.waitFrame("presence_state", isEvent("room:auth", "presence_state"))
	if !strings.Contains(string(st.Payload), `"77":`) {
		t.Errorf("the subprotocol token did not authenticate user 77: %s", st.Payload)
	}

	h := e.dial(t, "vsn=2.0.0", http.Header{"X-Phoenix-AuthToken": {userToken(t, "78")}})
	h.join("room:auth", "1")
	h.waitFrame("presence_state with 78", func(f testroom.Frame) bool {
		return f.Event == "presence_state" && strings.Contains(string(f.Payload), `"78":`)
	})

	bad := http.Header{"Sec-WebSocket-Protocol": {"phoenix, base64url.bearer.phx.!!!"}}
	e.refusal(t, "an auth subprotocol that is not base64", "vsn=2.0.0", bad, http.StatusForbidden)
}

// A refused connect is an HTTP answer before any upgrade, with a JSON error,
// and opens nothing.
func TestRefusedBeforeUpgrade(t *testing.T) {
	e := newEnv(t, envConfig{Origins: []string{"//good.example"}})
	cases := []struct {
		what   string
		query  string
		hdr    http.Header
		status int
	}{
		{"no token", "vsn=2.0.0", nil, http.StatusForbidden},
		{"a forged token", "vsn=2.0.0&token=" + userToken(t, "1") + "x", nil, http.StatusForbidden},
		{"an unsupported vsn", query(t, "1", "3.0.0"), nil, http.StatusForbidden},
		{"an Origin not allowed", query(t, "1", "2.0.0"), http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden},
	}
	for _, c := range cases {
		e.refusal(t, c.what, c.query, c.hdr, c.status)
	}
	// an allowed Origin connects
	e.dial(t, query(t, "1", "2.0.0"), http.Header{"Origin": {"https://good.example"}}).join("room:o", "1")

	// a plain GET is told what this endpoint is
	res, err := http.Get(e.srv.URL + wsPath + "?" + query(t, "1", "2.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct{ Error string }
	if res.StatusCode != http.StatusBadRequest || json.NewDecoder(res.Body).Decode(&body) != nil || !strings.Contains(body.Error, "WebSocket") {
		t.Errorf("plain GET: HTTP %d %q", res.StatusCode, body.Error)
	}
	o := e.obs
	if o.count(&o.refused, "websocket/unauthorized") != 3 || o.count(&o.refused, "websocket/origin") != 1 {
		t.Errorf("refusals counted: %v", o.refused)
	}
	if n := o.count(&o.ended, "closed"); n != 0 {
		t.Errorf("%d sessions ended: a refused connect must create none", n)
	}
}

// --max-sockets: an upgrade over the limit is answered 503 (phoenix.js
// retries, elsewhere); a closed socket frees its place.
func TestMaxSockets(t *testing.T) {
	e := newEnv(t, envConfig{ws: websocket.Config{MaxSockets: 1}})
	first := e.connect(t, "1")
	first.join("room:m", "1")
	e.refusal(t, "a second socket over --max-sockets 1", query(t, "2", "2.0.0"), nil, http.StatusServiceUnavailable)
	first.close()
	until(t, "the first socket to be released", func() bool { return e.obs.open() == 0 })
	e.connect(t, "2").join("room:m", "1")
}

// Phoenix's 100-channel cap holds over WebSocket.
func TestMaxChannels(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "1")
	for i := 1; i <= 100; i++ {
		c.send(fmt.Sprintf(`["%d","%d","room:%d","phx_join",{}]`, i, i, i))
	}
	c.reply("room:100", "100")
	c.send(`["101","101","room:101","phx_join",{}]`)
	f := c.reply("room:101", "101")
	testroom.RequireFrame(t, f.String(), `["101","101","room:101","phx_reply",{"status":"error","response":{"reason":"too many channels joined"}}]`)
}

// The connection is the session: when it closes, cleanly or not, the
// session ends at once (its presence leaves), not after the session timeout
// (a minute here).
func TestClosedConnectionEndsSessionAtOnce(t *testing.T) {
	e := newEnv(t, envConfig{})
	watcher := e.connect(t, "9")
	watcher.join("room:c", "1")
	clean := e.connect(t, "1")
	clean.join("room:c", "1")
	watcher.waitFrame("1's join", diffWith("room:c", "joins", "1"))
	cut := e.connect(t, "2")
	cut.join("room:c", "1")
	watcher.waitFrame("2's join", diffWith("room:c", "joins", "2"))

	if err := clean.conn.WriteControl(gws.CloseMessage, gws.FormatCloseMessage(gws.CloseNormalClosure, ""), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if code, _ := clean.waitClosed("a client's clean close"); code != gws.CloseNormalClosure {
		t.Errorf("the server answered a close with %d, want 1000", code)
	}
	watcher.waitFrame("1's leave after a clean close", diffWith("room:c", "leaves", "1"))

	_ = cut.conn.NetConn().Close() // a tab killed, a network cut
	watcher.waitFrame("2's leave after the connection was cut", diffWith("room:c", "leaves", "2"))
	until(t, "two sessions ended as closed", func() bool { return e.obs.count(&e.obs.ended, "closed") == 2 })
	watcher.requireOpen("room:c", "2")
}

// Drain closes every socket with 1012 (phoenix.js reconnects, elsewhere),
// ends their sessions, and refuses new upgrades with 503.
func TestDrainClosesWith1012(t *testing.T) {
	e := newEnv(t, envConfig{})
	a := e.connect(t, "1")
	b := e.connect(t, "2")
	a.join("room:d", "1")
	b.join("room:d", "1")
	e.gw.Drain()
	for _, c := range []*client{a, b} {
		if code, text := c.waitClosed("drain"); code != gws.CloseServiceRestart || !strings.Contains(text, "shutting down") {
			t.Errorf("drain closed with %d %q, want 1012", code, text)
		}
	}
	e.refusal(t, "an upgrade while draining", query(t, "3", "2.0.0"), nil, http.StatusServiceUnavailable)
	until(t, "both sessions ended", func() bool { return e.obs.count(&e.obs.ended, "closed") == 2 })
}

// /api/disconnect (Gateway.Disconnect) closes that user's sockets with 1001,
// Phoenix's code for it, which every phoenix.js reconnects after; other
// users' sockets stay.
func TestDisconnectClosesWith1001(t *testing.T) {
	e := newEnv(t, envConfig{})
	a := e.connect(t, "1")
	a2 := e.connect(t, "1")
	b := e.connect(t, "2")
	for _, c := range []*client{a, a2, b} {
		c.join("room:x", "1")
	}
	n, err := e.gw.Disconnect(context.Background(), "user_socket:1")
	if err != nil || n != 2 {
		t.Fatalf("Disconnect: %d, %v; want 2 sessions", n, err)
	}
	for _, c := range []*client{a, a2} {
		if code, _ := c.waitClosed("disconnect"); code != gws.CloseGoingAway {
			t.Errorf("disconnect closed with %d, want 1001", code)
		}
	}
	b.requireOpen("room:x", "2")
}

// A client that stops reading is dropped once a write has waited the write
// timeout, its session ends, and the other members go on receiving.
func TestSlowReaderIsDropped(t *testing.T) {
	// The watcher reads all the time, but on a loaded machine (CI runs
	// -race beside other suites) it can stall for a fraction of a second:
	// a deadline that short dropped it too. The slow reader never reads, so
	// any deadline drops it.
	e := newEnv(t, envConfig{ws: websocket.Config{WriteTimeout: 3 * time.Second}})
	watcher := e.connect(t, "9")
	watcher.join("room:s", "1")
	slow, _, err := e.tryDial(query(t, "1", "2.0.0"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if err := slow.WriteMessage(gws.TextMessage, []byte(`["1","1","room:s","phx_join",{}]`)); err != nil {
		t.Fatal(err)
	}
	watcher.waitFrame("the slow reader's join", diffWith("room:s", "joins", "1"))

	// Far more than the socket buffers of both ends hold.
	payload := map[string]string{"pad": strings.Repeat("x", 32<<10)}
	const count = 400
	for i := range count {
		if err := e.gw.Broadcast(context.Background(), "room:s", "big", payload); err != nil {
			t.Fatalf("broadcast %d: %v", i, err)
		}
	}
	watcher.waitFrame("the slow reader's leave", diffWith("room:s", "leaves", "1"))
	got := 0
	for _, s := range watcher.seen {
		if strings.Contains(s, `"big"`) {
			got++
		}
	}
	for got < count {
		watcher.waitFrame("every broadcast", isEvent("room:s", "big"))
		got++
	}
	until(t, "the slow reader's socket to be released", func() bool { return e.obs.open() == 1 })
}

// Pings notice a peer that stopped answering: without pongs (or anything
// else) for the idle timeout, it is closed and its session ends; a peer that
// answers pings stays connected however long it is silent.
func TestDeadPeerNoticedByPing(t *testing.T) {
	e := newEnv(t, envConfig{ws: websocket.Config{PingInterval: 100 * time.Millisecond, IdleTimeout: time.Second}})
	alive := e.connect(t, "9")
	alive.join("room:p", "1")
	dead, _, err := e.tryDial(query(t, "1", "2.0.0"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	if err := dead.WriteMessage(gws.TextMessage, []byte(`["1","1","room:p","phx_join",{}]`)); err != nil {
		t.Fatal(err)
	}
	alive.waitFrame("the dead peer's join", diffWith("room:p", "joins", "1"))
	start := time.Now()
	alive.waitFrame("the dead peer's leave", diffWith("room:p", "leaves", "1"))
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Errorf("the dead peer was dropped after %v, before the idle timeout (1s)", waited)
	}
	time.Sleep(1500 * time.Millisecond) // silent, but answering pings
	alive.requireOpen("room:p", "2")
}

// Bad input closes the connection with the close code that says why; the
// frame is not applied.
func TestBadFramesClose(t *testing.T) {
	e := newEnv(t, envConfig{MaxPayload: 1024, ws: websocket.Config{MaxMessageBytes: 8192}})
	watcher := e.connect(t, "9")
	watcher.join("room:b", "1")
	big := strings.Repeat("x", 2000)
	cases := []struct {
		what string
		typ  int
		msg  string
		code int
	}{
		{"malformed JSON", gws.TextMessage, `["1","2","room:b","shout"`, gws.CloseInvalidFramePayloadData},
		{"a binary frame", gws.BinaryMessage, "\x00\x01", gws.CloseUnsupportedData},
		{"text that is not UTF-8", gws.TextMessage, "[\"1\",\"2\",\"room:b\",\"shout\",{\"a\":\"\xff\"}]", gws.CloseInvalidFramePayloadData},
		{"a payload over --max-payload", gws.TextMessage, `["1","2","room:b","shout",{"a":"` + big + `"}]`, gws.CloseMessageTooBig},
		{"a message over the read limit", gws.TextMessage, `["1","2","room:b","shout",{"a":"` + strings.Repeat(big, 5) + `"}]`, gws.CloseMessageTooBig},
	}
	for i, c := range cases {
		cl := e.connect(t, fmt.Sprint(i+1))
		cl.join("room:b", "1")
		if err := cl.conn.WriteMessage(c.typ, []byte(c.msg)); err != nil {
			t.Fatal(err)
		}
		if code, text := cl.waitClosed(c.what); code != c.code {
			t.Errorf("%s: closed with %d %q, want %d", c.what, code, text, c.code)
		}
	}
	watcher.requireOpen("room:b", "2")
	for _, s := range watcher.seen {
		if strings.Contains(s, "shouted") {
			t.Errorf("a refused frame was applied: %s", s)
		}
	}
}

// Over --post-rate a session is slowed down, not refused: every frame is
// applied, in order.
func TestRateLimitSlowsDown(t *testing.T) {
	e := newEnv(t, envConfig{PostRate: 2, PostBurst: 1}) // slow enough that a loaded machine still sends faster
	c := e.connect(t, "1")
	c.join("room:r", "1")
	for i := 2; i <= 6; i++ {
		c.send(fmt.Sprintf(`["1","%d","room:r","ping",{"i":%d}]`, i, i))
	}
	for i := 2; i <= 6; i++ {
		f := c.waitFrame("a reply", isEvent("room:r", "phx_reply"))
		if f.Ref == nil || *f.Ref != fmt.Sprint(i) {
			t.Fatalf("reply %d out of order: %s", i, f.String())
		}
	}
	if e.obs.count(&e.obs.refused, "websocket/rate_limited") == 0 {
		t.Error("no frame was counted as rate limited")
	}
}

package longpoll_test

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/token"
	"github.com/sluicegw/sluice/internal/testroom"
)

// requireJSONHeaders checks the headers every JSON LongPoll answer carries.
func requireJSONHeaders(t *testing.T, r *lpResp) {
	t.Helper()
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		t.Errorf("content-type: want application/json, got %q", r.Header.Get("Content-Type"))
	}
	if cc := r.Header.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
		t.Errorf("cache-control: want it to contain no-store, got %q", cc)
	}
	if o := r.Header.Get("Access-Control-Allow-Origin"); o != "*" {
		t.Errorf("access-control-allow-origin: want *, got %q", o)
	}
}

func requireKeys(t *testing.T, r *lpResp, keys ...string) {
	t.Helper()
	if len(r.Keys) != len(keys) {
		t.Fatalf("want exactly the keys %v, got %s", keys, r.Body)
	}
	for _, k := range keys {
		if !r.has(k) {
			t.Fatalf("want exactly the keys %v, got %s", keys, r.Body)
		}
	}
}

func TestConnectCreatesSession(t *testing.T) {
	e := newEnv(t, envConfig{})
	ut := userToken(t, "42")
	// phoenix.js's first GET: no session token yet, a trailing "&".
	r := e.request(t, http.MethodGet, "token="+qe(ut)+"&vsn=2.0.0&", map[string]string{"Accept": "application/json"}, "")
	if r.HTTPStatus != http.StatusOK {
		t.Fatalf("HTTP status: want 200, got %d", r.HTTPStatus)
	}
	requireJSONHeaders(t, r)
	requireKeys(t, r, "status", "token", "messages")
	if r.Status != 410 {
		t.Fatalf("status: want 410 (session created), got %s", r.Body)
	}
	if string(r.Keys["messages"]) != "[]" {
		t.Fatalf("messages: want [], got %s", r.Keys["messages"])
	}
	if r.Token == "" || strings.Contains(r.Token, ut) {
		t.Fatalf("token: want a fresh session token, got %q", r.Token)
	}
	if _, ok := gateway.ParseSessionToken(r.Token); !ok {
		t.Fatalf("token %q is not a session token", r.Token)
	}

	// Two connects make two sessions.
	r2 := e.request(t, http.MethodGet, "token="+qe(ut)+"&vsn=2.0.0", nil, "")
	if r2.Status != 410 || sessionID(t, r2.Token) == sessionID(t, r.Token) {
		t.Fatalf("second connect: want 410 with another session, got %s after %s", r2.Body, r.Body)
	}

	// The user token may also come in X-Phoenix-AuthToken (phoenix.js authToken).
	r3 := e.request(t, http.MethodGet, "vsn=2.0.0", map[string]string{"X-Phoenix-AuthToken": ut}, "")
	if r3.Status != 410 || r3.Token == "" {
		t.Fatalf("connect with X-Phoenix-AuthToken: want 410 with token, got %s", r3.Body)
	}
}

func TestConnectRefused(t *testing.T) {
	e := newEnv(t, envConfig{})
	expired, err := token.NewSigner(testSecret, gateway.UserSocketSalt).Sign(42, time.Now().Add(-48*time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherSecret, err := gateway.SignUserToken("another-secret-key-base-0123456789abcdefgh", "42", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good := userToken(t, "42")
	cases := []struct{ name, query string }{
		{"garbage token", "vsn=2.0.0&token=garbage"},
		{"missing token", "vsn=2.0.0"},
		{"empty token", "vsn=2.0.0&token="},
		{"expired token", "vsn=2.0.0&token=" + qe(expired)},
		{"token of another secret", "vsn=2.0.0&token=" + qe(otherSecret)},
		{"unsupported vsn", "vsn=3.0.0&token=" + qe(good)},
		{"malformed session-looking token", "vsn=2.0.0&token=" + strings.Repeat("a", 32) + ".x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := e.request(t, http.MethodGet, tc.query, nil, "")
			if r.HTTPStatus != http.StatusOK || r.Status != 403 {
				t.Fatalf("want HTTP 200 {status:403}, got HTTP %d %s", r.HTTPStatus, r.Body)
			}
			requireJSONHeaders(t, r)
			if r.Error == "" {
				t.Errorf("want an error string, got %s", r.Body)
			}
			if r.has("token") || r.has("messages") {
				t.Errorf("a refusal must carry no token or messages, got %s", r.Body)
			}
		})
	}
}

func TestJoinThenPoll(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")

	// A single JSON frame, as V1-era clients post it.
	r := c.post(t, "application/json", `["1","1","room:a","phx_join",{"name":"alice"}]`)
	requirePosted(t, r)
	requireJSONHeaders(t, r)
	requireKeys(t, r, "status")

	tok0 := c.tok
	pr := c.poll(t)
	requireJSONHeaders(t, pr)
	if pr.Status != 200 {
		t.Fatalf("poll after join: want status 200, got %s", pr.Body)
	}
	if sessionID(t, pr.Token) != sessionID(t, tok0) {
		t.Fatalf("poll answered for another session: %q vs %q", pr.Token, tok0)
	}
	msgs := pr.Messages
	if len(msgs) != 3 {
		t.Fatalf("want join reply, presence_diff, presence_state; got %q", msgs)
	}
	requireFrame(t, msgs[0], `["1","1","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`)

	diff := decodeV2(t, msgs[1])
	if diff.JoinRef != nil || diff.Ref != nil || diff.Topic != "room:a" || diff.Event != "presence_diff" {
		t.Fatalf("message 2: want [null,null,\"room:a\",\"presence_diff\",...], got %s", msgs[1])
	}
	var d presenceDiff
	if err := json.Unmarshal(diff.Payload, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Leaves) != 0 || len(d.Joins) != 1 || len(d.Joins["42"].Metas) != 1 || d.Joins["42"].Metas[0]["name"] != "alice" {
		t.Fatalf("presence_diff: want a join of 42 named alice, got %s", diff.Payload)
	}
	ref, _ := d.Joins["42"].Metas[0]["phx_ref"].(string)
	if ref == "" {
		t.Fatalf("presence meta without phx_ref: %s", diff.Payload)
	}

	state := decodeV2(t, msgs[2])
	if state.JoinRef == nil || *state.JoinRef != "1" || state.Ref != nil || state.Topic != "room:a" || state.Event != "presence_state" {
		t.Fatalf("message 3: want [\"1\",null,\"room:a\",\"presence_state\",...], got %s", msgs[2])
	}
	var ps presenceMap
	if err := json.Unmarshal(state.Payload, &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || len(ps["42"].Metas) != 1 || ps["42"].Metas[0]["phx_ref"] != ref {
		t.Fatalf("presence_state: want 42 with the diff's phx_ref %q, got %s", ref, state.Payload)
	}

	// Nothing pending: the poll is held for the window, then 204.
	tok1 := c.tok
	pr = c.pollWith(t, tok1)
	if pr.HTTPStatus != http.StatusOK || pr.Status != 204 {
		t.Fatalf("idle poll: want HTTP 200 {status:204}, got HTTP %d %s", pr.HTTPStatus, pr.Body)
	}
	requireJSONHeaders(t, pr)
	requireKeys(t, pr, "status", "token", "messages")
	if string(pr.Keys["messages"]) != "[]" {
		t.Fatalf("idle poll: messages want [], got %s", pr.Keys["messages"])
	}
	if pr.Token != tok1 {
		t.Fatalf("idle poll: want the presented token %q back, got %q", tok1, pr.Token)
	}
	if pr.Elapsed < e.window*9/10 {
		t.Fatalf("idle poll: answered after %v, before the %v window", pr.Elapsed, e.window)
	}
}

func TestNdjsonBatch(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")
	c.send(t,
		`["1","1","room:a","phx_join",{"name":"alice"}]`,
		`["1","2","room:a","ping",{"x":1}]`,
		`[null,"3","phoenix","heartbeat",{}]`,
	)
	msgs := c.recv(t)
	if got := strings.Join(events(t, msgs), ", "); got != "room:a phx_reply, room:a presence_diff, room:a presence_state, room:a phx_reply, phoenix phx_reply" {
		t.Fatalf("unexpected order: %s\n%s", got, strings.Join(msgs, "\n"))
	}
	requireFrame(t, msgs[0], `["1","1","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`)
	requireFrame(t, msgs[3], `["1","2","room:a","phx_reply",{"response":{"x":1},"status":"ok"}]`)
	requireFrame(t, msgs[4], `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`)

	// A heartbeat works before any join, in a batch with a trailing newline
	// and CRLF line ends.
	c2 := e.connect(t, "42", "2.0.0")
	r := c2.post(t, "application/x-ndjson", "[null,\"7\",\"phoenix\",\"heartbeat\",{}]\r\n[null,\"8\",\"phoenix\",\"heartbeat\",{}]\n")
	requirePosted(t, r)
	requireFrames(t, c2.recv(t),
		`[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]`,
		`[null,"8","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
}

func TestSessionTokenLookup(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")
	sid := sessionID(t, c.tok)

	t.Run("last token query parameter", func(t *testing.T) {
		// POST and GET with ?token=<user>&vsn=2.0.0&token=<session>.
		c.send(t, `[null,"1","phoenix","heartbeat",{}]`)
		r := c.pollWith(t, c.tok)
		if r.Status != 200 || sessionID(t, r.Token) != sid {
			t.Fatalf("want status 200 from session %s, got %s", sid, r.Body)
		}
		requireFrames(t, r.Messages, `[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
		c.tok = r.Token
	})

	t.Run("header wins over a bogus query token", func(t *testing.T) {
		hdr := map[string]string{"X-Phoenix-Longpoll-Token": c.tok, "Content-Type": "application/x-ndjson"}
		r := e.request(t, http.MethodPost, "vsn=2.0.0&token=bogus", hdr, `[null,"2","phoenix","heartbeat",{}]`)
		requirePosted(t, r)
		r = e.request(t, http.MethodGet, "vsn=2.0.0&token=bogus", map[string]string{"X-Phoenix-Longpoll-Token": c.tok}, "")
		if r.HTTPStatus != http.StatusOK || r.Status != 200 || sessionID(t, r.Token) != sid {
			t.Fatalf("GET with header token: want status 200 from session %s, got HTTP %d %s", sid, r.HTTPStatus, r.Body)
		}
		requireFrames(t, r.Messages, `[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
		c.tok = r.Token
	})

	t.Run("header alone", func(t *testing.T) {
		hdr := map[string]string{"X-Phoenix-Longpoll-Token": c.tok, "Content-Type": "application/x-ndjson"}
		requirePosted(t, e.request(t, http.MethodPost, "vsn=2.0.0", hdr, `[null,"3","phoenix","heartbeat",{}]`))
		r := e.request(t, http.MethodGet, "vsn=2.0.0", map[string]string{"X-Phoenix-Longpoll-Token": c.tok}, "")
		if r.Status != 200 || sessionID(t, r.Token) != sid {
			t.Fatalf("want status 200 from session %s, got %s", sid, r.Body)
		}
		requireFrames(t, r.Messages, `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
		c.tok = r.Token
	})

	t.Run("the first token parameter is not the session token", func(t *testing.T) {
		// Session token first, user token last: the last one is what counts,
		// and it is not a session token, so this is a new connect.
		r := e.request(t, http.MethodGet, "token="+qe(c.tok)+"&vsn=2.0.0&token="+qe(c.userTok), nil, "")
		if r.Status != 410 || sessionID(t, r.Token) == sid {
			t.Fatalf("want 410 with a new session, got %s", r.Body)
		}
	})
}

func TestWaitingPollAnsweredOnMessage(t *testing.T) {
	e := newEnv(t, envConfig{Window: 3 * time.Second})
	a := e.connect(t, "42", "2.0.0")
	b := e.connect(t, "43", "2.0.0")
	a.join(t, "room:s", "1", "alice")
	b.join(t, "room:s", "1", "bob")
	a.recv(t) // bob's presence_diff join

	start := time.Now()
	done := e.startGet(a.queryWith(a.tok))
	time.Sleep(150 * time.Millisecond)
	b.send(t, `["1","2","room:s","shout",{"m":"hi"}]`)

	r := await(t, done)
	if elapsed := time.Since(start); elapsed >= e.window {
		t.Fatalf("the waiting poll returned after %v, not before the %v window ended", elapsed, e.window)
	}
	if r.Status != 200 {
		t.Fatalf("want status 200 with the broadcast, got %s", r.Body)
	}
	requireFrames(t, r.Messages, `[null,null,"room:s","shouted",{"m":"hi"}]`)

	// A poll in flight also wakes on the session's own reply.
	a.tok = r.Token
	done = e.startGet(a.queryWith(a.tok))
	time.Sleep(150 * time.Millisecond)
	a.send(t, `[null,"9","phoenix","heartbeat",{}]`)
	r = await(t, done)
	if r.Status != 200 {
		t.Fatalf("want status 200 with the heartbeat reply, got %s", r.Body)
	}
	requireFrames(t, r.Messages, `[null,"9","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
}

func TestBroadcastReachesEverySubscriber(t *testing.T) {
	e := newEnv(t, envConfig{})
	a := e.connect(t, "42", "2.0.0")
	b := e.connect(t, "43", "2.0.0")
	a.join(t, "room:b", "1", "alice")
	b.join(t, "room:b", "5", "bob")
	a.recv(t) // bob's presence_diff join

	a.send(t, `["1","2","room:b","shout",{"m":"hello"}]`)
	// The broadcaster gets the broadcast, then its own reply.
	requireFrames(t, a.recv(t),
		`[null,null,"room:b","shouted",{"m":"hello"}]`,
		`["1","2","room:b","phx_reply",{"response":{},"status":"ok"}]`)
	requireFrames(t, b.recv(t), `[null,null,"room:b","shouted",{"m":"hello"}]`)
}

func TestPollRetryWithPreviousToken(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")
	c.send(t, `["1","1","room:a","phx_join",{"name":"alice"}]`)
	tok0 := c.tok
	first := c.pollWith(t, tok0)
	if first.Status != 200 || len(first.Messages) != 3 {
		t.Fatalf("want the join reply and presence pushes, got %s", first.Body)
	}
	// The answer was lost: the client polls again with the same token.
	again := c.pollWith(t, tok0)
	if again.Status != 200 {
		t.Fatalf("retried poll: want status 200 with the same messages, got %s", again.Body)
	}
	requireFrames(t, again.Messages, first.Messages...)
	if again.Token != first.Token {
		t.Fatalf("retried poll: want the same next token %q, got %q", first.Token, again.Token)
	}

	// With the newer token, nothing is repeated: only what is new.
	c.tok = first.Token
	c.send(t, `["1","2","room:a","ping",{"n":2}]`)
	next := c.poll(t)
	if next.Status != 200 {
		t.Fatalf("want status 200, got %s", next.Body)
	}
	requireFrames(t, next.Messages, `["1","2","room:a","phx_reply",{"response":{"n":2},"status":"ok"}]`)
	// Retrying that one repeats only it.
	again = c.pollWith(t, first.Token)
	requireFrames(t, again.Messages, next.Messages...)
}

func TestChannelProtocol(t *testing.T) {
	t.Run("unmatched topic join", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.send(t, `["1","1","nope","phx_join",{}]`)
		requireFrames(t, c.recv(t), `[null,"1","nope","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`)
	})

	t.Run("push to an unjoined topic", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.send(t, `["7","2","room:zzz","ping",{}]`)
		requireFrames(t, c.recv(t), `[null,"2","room:zzz","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`)
	})

	t.Run("refused join", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.send(t, `["12","12","room:forbidden","phx_join",{}]`)
		requireFrames(t, c.recv(t), `["12","12","room:forbidden","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]`)
		// Not joined afterwards.
		c.send(t, `["12","13","room:forbidden","ping",{}]`)
		requireFrames(t, c.recv(t), `[null,"13","room:forbidden","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`)
	})

	t.Run("duplicate join", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.join(t, "room:a", "1", "alice")
		c.send(t, `["5","5","room:a","phx_join",{"name":"alice2"}]`)
		msgs := c.recv(t)
		if len(msgs) < 2 {
			t.Fatalf("want the new join reply then the old phx_close, got %q", msgs)
		}
		requireFrame(t, msgs[0], `["5","5","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`)
		requireFrame(t, msgs[1], `["1","1","room:a","phx_close",{}]`)
		// The new join_ref works, the old one is stale.
		c.send(t, `["1","6","room:a","ping",{"old":true}]`, `["5","7","room:a","ping",{"new":true}]`)
		requireFrames(t, c.recv(t), `["5","7","room:a","phx_reply",{"response":{"new":true},"status":"ok"}]`)
	})

	t.Run("leave", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.join(t, "room:a", "1", "alice")
		c.send(t, `["1","3","room:a","phx_leave",{}]`)
		requireFrames(t, c.recv(t),
			`["1","3","room:a","phx_reply",{"response":{},"status":"ok"}]`,
			`["1","1","room:a","phx_close",{}]`)
		c.send(t, `["1","4","room:a","ping",{}]`)
		requireFrames(t, c.recv(t), `[null,"4","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`)
	})

	t.Run("stale join_ref is dropped", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.join(t, "room:a", "1", "alice")
		c.send(t, `["99","4","room:a","ping",{}]`, `[null,"5","phoenix","heartbeat",{}]`)
		requireFrames(t, c.recv(t), `[null,"5","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
		// A stale leave is dropped too: the channel stays joined.
		c.send(t, `["99","6","room:a","phx_leave",{}]`, `["1","7","room:a","ping",{}]`)
		requireFrames(t, c.recv(t), `["1","7","room:a","phx_reply",{"response":{},"status":"ok"}]`)
	})

	t.Run("null join_ref push is handled", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.join(t, "room:a", "1", "alice")
		c.send(t, `[null,"6","room:a","ping",{"y":2}]`)
		requireFrames(t, c.recv(t), `["1","6","room:a","phx_reply",{"response":{"y":2},"status":"ok"}]`)
	})

	t.Run("noreply", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		c.join(t, "room:a", "1", "alice")
		c.send(t, `["1","2","room:a","quiet",{}]`, `[null,"3","phoenix","heartbeat",{}]`)
		requireFrames(t, c.recv(t), `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
	})

	t.Run("crash", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		c := e.connect(t, "42", "2.0.0")
		other := e.connect(t, "43", "2.0.0")
		c.join(t, "room:a", "1", "alice")
		c.join(t, "room:b", "2", "alice")
		other.join(t, "room:a", "1", "bob")
		c.recv(t) // bob's join diff

		r := c.post(t, "application/x-ndjson", `["1","3","room:a","boom",{}]`)
		requirePosted(t, r)
		msgs := c.recv(t)
		requireFrames(t, msgs, `["1","1","room:a","phx_error",{"reason":"channel_crash"}]`)

		// The crashed channel is gone; the other one keeps working.
		c.send(t, `["1","4","room:a","ping",{}]`, `["2","5","room:b","ping",{"ok":true}]`)
		requireFrames(t, c.recv(t),
			`[null,"4","room:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`,
			`["2","5","room:b","phx_reply",{"response":{"ok":true},"status":"ok"}]`)

		// Others see the crashed channel's presence leave.
		omsgs := other.recv(t)
		f := decodeV2(t, omsgs[len(omsgs)-1])
		var d presenceDiff
		_ = json.Unmarshal(f.Payload, &d)
		if f.Event != "presence_diff" || len(d.Leaves["42"].Metas) != 1 || len(d.Joins) != 0 {
			t.Fatalf("other member: want a presence_diff leave of 42, got %q", omsgs)
		}

		// Rejoining after the crash works.
		c.join(t, "room:a", "6", "alice")
	})
}

func TestV1(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "1.0.0")

	r := c.post(t, "application/json", `{"topic":"room:v1","event":"phx_join","payload":{"name":"alice"},"ref":"1"}`)
	requirePosted(t, r)
	msgs := c.recv(t)
	if len(msgs) != 3 {
		t.Fatalf("want join reply, presence_diff, presence_state; got %q", msgs)
	}
	requireFrame(t, msgs[0], `{"topic":"room:v1","event":"phx_reply","payload":{"response":{"joined":"room:v1"},"status":"ok"},"ref":"1"}`)
	for _, m := range msgs {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(m), &obj); err != nil {
			t.Fatalf("V1 message is not a JSON object: %q", m)
		}
		if _, ok := obj["join_ref"]; ok {
			t.Fatalf("V1 message carries join_ref: %s", m)
		}
		for _, k := range []string{"topic", "event", "payload", "ref"} {
			if _, ok := obj[k]; !ok {
				t.Fatalf("V1 message lacks %q: %s", k, m)
			}
		}
	}
	var state struct {
		Event string          `json:"event"`
		Ref   *string         `json:"ref"`
		P     json.RawMessage `json:"payload"`
	}
	_ = json.Unmarshal([]byte(msgs[2]), &state)
	if state.Event != "presence_state" || state.Ref != nil {
		t.Fatalf("want a presence_state push with ref null, got %s", msgs[2])
	}

	// V1 objects can be batched as ndjson.
	c.send(t,
		`{"topic":"room:v1","event":"ping","payload":{"a":1},"ref":"2"}`,
		`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}`)
	requireFrames(t, c.recv(t),
		`{"topic":"room:v1","event":"phx_reply","payload":{"response":{"a":1},"status":"ok"},"ref":"2"}`,
		`{"topic":"phoenix","event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"3"}`)

	// A frame missing "ref" fails the whole batch.
	r = c.post(t, "application/x-ndjson",
		`{"topic":"room:v1","event":"ping","payload":{"b":1},"ref":"4"}`+"\n"+
			`{"topic":"room:v1","event":"ping","payload":{"b":2}}`)
	if r.HTTPStatus != http.StatusBadRequest || r.Status != 400 || r.Error == "" {
		t.Fatalf("V1 frame without ref: want HTTP 400 {status:400, error}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	requireJSONHeaders(t, r)
	c.send(t, `{"topic":"room:v1","event":"ping","payload":{"c":1},"ref":"5"}`)
	requireFrames(t, c.recv(t), `{"topic":"room:v1","event":"phx_reply","payload":{"response":{"c":1},"status":"ok"},"ref":"5"}`)

	// Without vsn the session speaks V1, as in Phoenix.
	r = e.request(t, http.MethodGet, "token="+qe(c.userTok), nil, "")
	if r.Status != 410 {
		t.Fatalf("connect without vsn: want 410, got %s", r.Body)
	}
	d := &client{e: e, userTok: c.userTok, vsn: "1.0.0", tok: r.Token}
	d.send(t, `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}`)
	requireFrames(t, d.recv(t), `{"topic":"phoenix","event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1"}`)
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")
	c.join(t, "room:a", "1", "alice")
	ref := 100
	// pingRoundTrip proves the session still works and that nothing of the
	// refused request was applied: the poll holds only the new reply.
	pingRoundTrip := func(t *testing.T) {
		t.Helper()
		ref++
		rs := strconv.Itoa(ref)
		c.send(t, `["1","`+rs+`","room:a","ping",{"ref":`+rs+`}]`)
		requireFrames(t, c.recv(t), `["1","`+rs+`","room:a","phx_reply",{"response":{"ref":`+rs+`},"status":"ok"}]`)
	}

	var tooMany strings.Builder
	for i := range 101 {
		if i > 0 {
			tooMany.WriteByte('\n')
		}
		fmt.Fprintf(&tooMany, `["1","b%d","room:a","ping",{}]`, i)
	}
	var atLimit strings.Builder
	for i := range 100 {
		if i > 0 {
			atLimit.WriteByte('\n')
		}
		fmt.Fprintf(&atLimit, `["1","c%d","room:a","quiet",{}]`, i)
	}

	cases := []struct {
		name, contentType, body string
		httpStatus              int
		errContains             string
	}{
		{"malformed JSON", "application/json", `["1","x","room:a","ping",{`, 400, ""},
		{"malformed JSON ndjson", "application/x-ndjson", `["1","x","room:a","ping",{`, 400, ""},
		{"V2 frame with 4 elements", "application/json", `["1","x","room:a","ping"]`, 400, ""},
		{"V2 frame with a non-string topic", "application/json", `["1","x",7,"ping",{}]`, 400, ""},
		{"V1 object to a V2 session", "application/json", `{"topic":"room:a","event":"ping","payload":{},"ref":"x"}`, 400, ""},
		{"bad second ndjson line", "application/x-ndjson", `["1","x1","room:a","ping",{}]` + "\n" + `["1","x2","room:a"`, 400, "frame 2"},
		{"body over MaxBodyBytes", "application/x-ndjson", `["1","x","room:a","ping",{"pad":"` + strings.Repeat("p", 5000) + `"}]`, 413, ""},
		{"101 frames", "application/x-ndjson", tooMany.String(), 413, "nothing was applied"},
		{"base64 line", "application/x-ndjson", `["1","x3","room:a","ping",{}]` + "\n" + "AAECAwQ=", 400, "binary"},
		{"empty body", "application/json", "", 400, ""},
		{"empty ndjson body", "application/x-ndjson", "\n\n", 400, ""},
		{"whitespace body", "application/json", "  \n ", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.post(t, tc.contentType, tc.body)
			if r.HTTPStatus != tc.httpStatus || r.Status != tc.httpStatus {
				t.Fatalf("want HTTP %d {status:%d}, got HTTP %d %s", tc.httpStatus, tc.httpStatus, r.HTTPStatus, r.Body)
			}
			requireJSONHeaders(t, r)
			if r.Error == "" || !strings.Contains(r.Error, tc.errContains) {
				t.Fatalf("want an error mentioning %q, got %s", tc.errContains, r.Body)
			}
			pingRoundTrip(t)
		})
	}

	t.Run("100 frames are accepted", func(t *testing.T) {
		requirePosted(t, c.post(t, "application/x-ndjson", atLimit.String()))
		pingRoundTrip(t)
	})

	t.Run("garbage or missing session token", func(t *testing.T) {
		for _, q := range []string{"vsn=2.0.0&token=garbage", "vsn=2.0.0", "token=" + qe(c.userTok) + "&vsn=2.0.0"} {
			r := e.request(t, http.MethodPost, q, map[string]string{"Content-Type": "application/json"}, `[null,"1","phoenix","heartbeat",{}]`)
			if r.HTTPStatus != http.StatusOK || r.Status != 410 {
				t.Fatalf("POST ?%s: want HTTP 200 {status:410}, got HTTP %d %s", q, r.HTTPStatus, r.Body)
			}
			requireJSONHeaders(t, r)
			if r.has("token") || r.has("messages") {
				t.Fatalf("POST ?%s: a 410 POST answer carries no token or messages, got %s", q, r.Body)
			}
		}
		pingRoundTrip(t)
	})
}

func TestOptionsAndOtherMethods(t *testing.T) {
	e := newEnv(t, envConfig{})
	r := e.request(t, http.MethodOptions, "vsn=2.0.0", map[string]string{
		"Origin":                         "http://example.com",
		"Access-Control-Request-Method":  "POST",
		"Access-Control-Request-Headers": "content-type, x-phoenix-longpoll-token",
	}, "")
	if r.HTTPStatus != http.StatusOK {
		t.Fatalf("OPTIONS: want HTTP 200, got %d %s", r.HTTPStatus, r.Body)
	}
	if len(r.Body) != 0 {
		t.Errorf("OPTIONS: want an empty body, got %q", r.Body)
	}
	for k, want := range map[string]string{
		"Access-Control-Allow-Origin":  "*",
		"Access-Control-Allow-Methods": "get, post, options",
		"Access-Control-Allow-Headers": "content-type, x-phoenix-longpoll-token",
		"Access-Control-Max-Age":       "3600",
	} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("OPTIONS %s: want %q, got %q", k, want, got)
		}
	}

	for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch} {
		r := e.request(t, m, "vsn=2.0.0", nil, "")
		if r.HTTPStatus != http.StatusBadRequest {
			t.Errorf("%s: want HTTP 400, got %d %s", m, r.HTTPStatus, r.Body)
		}
	}
}

func TestSessionExpiry(t *testing.T) {
	e := newEnv(t, envConfig{SessionTimeout: 100 * time.Millisecond})
	ctx := context.Background()
	gone := e.connect(t, "43", "2.0.0")
	stay := e.connect(t, "42", "2.0.0")
	gone.join(t, "room:x", "1", "bob")
	stay.join(t, "room:x", "1", "alice")
	gone.recv(t) // alice's join diff: gone's last poll
	goneTok := gone.tok

	// A session expires between SessionTimeout and SessionTimeout + Window
	// after its last poll ended (a poll answered early does not shorten its
	// deadline: that would cost a round trip to a remote store). stay keeps
	// polling through two windows, past gone's deadline; then only gone has
	// expired.
	if r := stay.poll(t); r.Status != 204 {
		t.Fatalf("want an idle poll, got %s", r.Body)
	}
	waiting := e.startGet(stay.queryWith(stay.tok))
	time.Sleep(200 * time.Millisecond)
	n, err := e.gw.ExpireSessions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("ExpireSessions: want 1 session expired (the idle one), got %d", n)
	}

	r0 := await(t, waiting)
	if r0.Status != 200 {
		t.Fatalf("the waiting poll: want the leave diff, got %s", r0.Body)
	}
	msgs := r0.Messages
	if len(msgs) != 1 {
		t.Fatalf("want one presence_diff leave, got %q", msgs)
	}
	f := decodeV2(t, msgs[0])
	var d presenceDiff
	if err := json.Unmarshal(f.Payload, &d); err != nil {
		t.Fatal(err)
	}
	if f.JoinRef != nil || f.Ref != nil || f.Topic != "room:x" || f.Event != "presence_diff" || len(d.Joins) != 0 || len(d.Leaves) != 1 || len(d.Leaves["43"].Metas) != 1 || d.Leaves["43"].Metas[0]["name"] != "bob" {
		t.Fatalf("want [null,null,\"room:x\",\"presence_diff\",{joins:{},leaves:{43:bob}}], got %s", msgs[0])
	}

	// The expired session's POSTs get 410.
	r := gone.post(t, "application/x-ndjson", `["1","2","room:x","ping",{}]`)
	if r.HTTPStatus != http.StatusOK || r.Status != 410 {
		t.Fatalf("POST to an expired session: want HTTP 200 {status:410}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}

	// Its GET, with the user token first, creates a new session.
	r = gone.pollWith(t, goneTok)
	if r.HTTPStatus != http.StatusOK || r.Status != 410 || r.Token == "" {
		t.Fatalf("GET with an expired session: want HTTP 200 {status:410, token}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	if sessionID(t, r.Token) == sessionID(t, goneTok) {
		t.Fatalf("GET with an expired session: want a new session, got the same id in %q", r.Token)
	}
	if string(r.Keys["messages"]) != "[]" {
		t.Fatalf("want messages [], got %s", r.Body)
	}
	// The new session starts with no channel joined.
	gone.tok = r.Token
	gone.send(t, `["1","3","room:x","ping",{}]`)
	requireFrames(t, gone.recv(t), `[null,"3","room:x","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`)
}

func TestDisconnectEndsWaitingPoll(t *testing.T) {
	e := newEnv(t, envConfig{Window: 3 * time.Second})
	ctx := context.Background()
	c := e.connect(t, "42", "2.0.0")
	other := e.connect(t, "43", "2.0.0")
	c.join(t, "room:d", "1", "alice")
	other.join(t, "room:d", "1", "bob")
	c.recv(t) // bob's join diff
	oldTok := c.tok

	start := time.Now()
	done := e.startGet(c.queryWith(oldTok))
	time.Sleep(150 * time.Millisecond)
	n, err := e.gw.Disconnect(ctx, "user_socket:42")
	if err != nil || n != 1 {
		t.Fatalf("Disconnect: want 1 session ended, got %d, %v", n, err)
	}

	r := await(t, done)
	if elapsed := time.Since(start); elapsed >= e.window {
		t.Fatalf("the waiting poll returned after %v, not before the %v window ended", elapsed, e.window)
	}
	// The user token is in the query, so the poll starts a new session:
	// phoenix.js, holding a token, reads 410 as "session gone" and rejoins.
	if r.HTTPStatus != http.StatusOK || r.Status != 410 || r.Token == "" {
		t.Fatalf("want HTTP 200 {status:410, token}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	if sessionID(t, r.Token) == sessionID(t, oldTok) {
		t.Fatalf("want a new session, got the old one back: %q", r.Token)
	}
	if len(r.Messages) != 0 {
		t.Fatalf("a disconnect sends nothing to the client, got %q", r.Messages)
	}

	// The old session is gone.
	c.tok = oldTok
	pr := c.post(t, "application/x-ndjson", `["1","5","room:d","ping",{}]`)
	if pr.HTTPStatus != http.StatusOK || pr.Status != 410 {
		t.Fatalf("POST with the disconnected session's token: want {status:410}, got HTTP %d %s", pr.HTTPStatus, pr.Body)
	}
	// Its presence left.
	msgs := other.recv(t)
	f := decodeV2(t, msgs[len(msgs)-1])
	var d presenceDiff
	_ = json.Unmarshal(f.Payload, &d)
	if f.Event != "presence_diff" || len(d.Leaves["42"].Metas) != 1 {
		t.Fatalf("other member: want a presence_diff leave of 42, got %q", msgs)
	}
	// The session the poll above created belongs to user 42 too. It has no
	// channel, so nothing but the session's end can wake its waiting poll.
	newTok := r.Token
	start = time.Now()
	done = e.startGet(c.queryWith(newTok))
	time.Sleep(150 * time.Millisecond)
	if n, err := e.gw.Disconnect(ctx, "user_socket:42"); err != nil || n != 1 {
		t.Fatalf("second Disconnect: want the new session ended, got %d, %v", n, err)
	}
	r = await(t, done)
	if elapsed := time.Since(start); elapsed >= e.window {
		t.Fatalf("a waiting poll of a session without channels returned after %v, not before the %v window ended", elapsed, e.window)
	}
	if r.Status != 410 || sessionID(t, r.Token) == sessionID(t, newTok) {
		t.Fatalf("want 410 with yet another session, got %s", r.Body)
	}
	// The other user is untouched.
	other.send(t, `["1","9","room:d","ping",{}]`)
	requireFrames(t, other.recv(t), `["1","9","room:d","phx_reply",{"response":{},"status":"ok"}]`)
}

// A session ended (disconnect or expiry) while one of its joins is being
// handled must not leave that join's presence behind: Gateway.Disconnect
// promises that "their presences leave". Other members would otherwise see
// a user who is gone in every presence_state, for good.
func TestSessionEndedDuringJoinLeavesNoPresence(t *testing.T) {
	for _, how := range []string{"disconnect", "expiry"} {
		t.Run(how, func(t *testing.T) {
			gate := testroom.NewGate()
			e := newEnv(t, envConfig{Gate: gate, SessionTimeout: 100 * time.Millisecond})
			ctx := context.Background()
			c := e.connect(t, "42", "2.0.0")

			posted := e.start(http.MethodPost, c.queryWith(c.tok), map[string]string{"Content-Type": "application/x-ndjson"},
				`["1","1","room:slow","phx_join",{"name":"alice"}]`)
			select {
			case <-gate.Started:
			case <-time.After(5 * time.Second):
				t.Fatal("the join never reached the handler")
			}
			// The session ends while its join is in the handler: ending waits
			// for the join to finish, then removes its presence too.
			ended := make(chan error, 1)
			go func() {
				var n int
				var err error
				switch how {
				case "disconnect":
					n, err = e.gw.Disconnect(ctx, "user_socket:42")
				case "expiry":
					time.Sleep(150 * time.Millisecond) // past the session's deadline
					n, err = e.gw.ExpireSessions(ctx)
				}
				if err == nil && n != 1 {
					err = fmt.Errorf("want 1 session ended, got %d", n)
				}
				ended <- err
			}()
			time.Sleep(200 * time.Millisecond)
			close(gate.Release)
			r := await(t, posted)
			if r.Status != 410 && r.Status != 200 {
				t.Fatalf("join POST: want {status:410} (session gone) or 200, got HTTP %d %s", r.HTTPStatus, r.Body)
			}
			select {
			case err := <-ended:
				if err != nil {
					t.Fatalf("%s: %v", how, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s did not finish after the join did", how)
			}
			// The session is gone either way.
			if pr := c.post(t, "application/x-ndjson", `[null,"2","phoenix","heartbeat",{}]`); pr.Status != 410 {
				t.Fatalf("POST after the session ended: want {status:410}, got %s", pr.Body)
			}

			// Another user joins the room: only they are present.
			other := e.connect(t, "43", "2.0.0")
			msgs := other.join(t, "room:slow", "1", "bob")
			i := slices.IndexFunc(msgs, func(m string) bool { return decodeV2(t, m).Event == "presence_state" })
			if i < 0 {
				t.Fatalf("no presence_state after join: %q", msgs)
			}
			var ps presenceMap
			if err := json.Unmarshal(decodeV2(t, msgs[i]).Payload, &ps); err != nil {
				t.Fatal(err)
			}
			if _, ghost := ps["42"]; ghost || len(ps) != 1 {
				t.Fatalf("presence_state: want only 43, got %s (user 42's session ended during its join)", decodeV2(t, msgs[i]).Payload)
			}
		})
	}
}

package sse_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluicegw/sluice/sse"
)

// join= at connect joins each topic named (repeated, comma-separated, with
// spaces) before the stream starts; the replies come down the stream with
// join_ref = ref = "join:<n>", in the order named.
func TestJoinAtConnect(t *testing.T) {
	e := newEnv(t, envConfig{})

	t.Run("one", func(t *testing.T) {
		s, h := e.connect(t, "42", "2.0.0", "join=room:one")
		requireJoined(t, s.frames(t, 3), "room:one", "join:1", "42")
		s.quiet(t)
		// Joined under join_ref join:1: pushes and broadcasts work.
		e.send(t, h, ping("join:1", "1", "room:one"))
		e.broadcast(t, "room:one", 7)
		s.expectInterleaved(t, pingReply("join:1", "1", "room:one"), news("room:one", 7))
	})

	t.Run("several", func(t *testing.T) {
		s, h := e.connect(t, "43", "2.0.0", "join="+qe("room:a, room:b")+"&join=room:c&join=")
		frames := s.collect(t)
		var replies []string
		states := map[string]string{}
		for _, f := range frames {
			fr := decodeV2(t, f.Data)
			switch fr.Event {
			case "phx_reply":
				replies = append(replies, f.Data)
			case "presence_state":
				states[fr.Topic] = *fr.JoinRef
			}
		}
		want := []string{
			`["join:1","join:1","room:a","phx_reply",{"response":{"joined":"room:a"},"status":"ok"}]`,
			`["join:2","join:2","room:b","phx_reply",{"response":{"joined":"room:b"},"status":"ok"}]`,
			`["join:3","join:3","room:c","phx_reply",{"response":{"joined":"room:c"},"status":"ok"}]`,
		}
		if len(replies) != len(want) {
			t.Fatalf("want 3 join replies, got %s", dataOf(frames))
		}
		for i := range want {
			requireFrame(t, replies[i], want[i])
		}
		if fmt.Sprint(states) != "map[room:a:join:1 room:b:join:2 room:c:join:3]" {
			t.Fatalf("presence_state per topic: want join:1..3, got %v", states)
		}
		if len(frames) != 9 {
			t.Fatalf("want 9 frames (reply, diff, state for 3 topics), got %s", dataOf(frames))
		}
		e.send(t, h, ping("join:3", "x", "room:c"), ping("join:2", "y", "room:b"))
		s.expect(t, pingReply("join:3", "x", "room:c"), pingReply("join:2", "y", "room:b"))
	})

	t.Run("unmatched and refused topics", func(t *testing.T) {
		s, _ := e.connect(t, "44", "2.0.0", "join=nope:x,room:forbidden")
		s.expect(t,
			`[null,"join:1","nope:x","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]`,
			`["join:2","join:2","room:forbidden","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]`)
	})

	t.Run("more topics than MaxFrames", func(t *testing.T) {
		topics := make([]string, 101)
		for i := range topics {
			topics[i] = "room:t" + strconv.Itoa(i)
		}
		r := e.request(t, http.MethodGet, ssePath+"?"+streamQuery(t, "45", "2.0.0")+"&join="+qe(strings.Join(topics, ",")), nil, "")
		requireJSONError(t, "join= with 101 topics", r, http.StatusBadRequest)
	})
}

// A V1 client (vsn=1.0.0, or no vsn) gets V1 frames and POSTs V1 frames:
// one, a JSON array, or ndjson.
func TestV1(t *testing.T) {
	e := newEnv(t, envConfig{})
	s, h := e.connect(t, "42", "1.0.0", "")
	requirePosted(t, e.post(t, h, "application/json", `{"topic":"room:v1","event":"phx_join","payload":{"name":"alice"},"ref":"1"}`))
	frames := s.frames(t, 3)
	// The reply and presence_state (mailbox) in that order; the
	// presence_diff (the topic's log) may come anywhere among them.
	var events []string
	for _, f := range frames {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(f.Data), &obj); err != nil {
			t.Fatalf("V1 frame is not a JSON object: %s", f.Data)
		}
		if _, ok := obj["join_ref"]; ok {
			t.Fatalf("V1 frame carries join_ref: %s", f.Data)
		}
		for _, k := range []string{"topic", "event", "payload", "ref"} {
			if _, ok := obj[k]; !ok {
				t.Fatalf("V1 frame lacks %q: %s", k, f.Data)
			}
		}
		var ev string
		_ = json.Unmarshal(obj["event"], &ev)
		if ev == "phx_reply" {
			requireFrame(t, f.Data, `{"topic":"room:v1","event":"phx_reply","payload":{"response":{"joined":"room:v1"},"status":"ok"},"ref":"1"}`)
		}
		events = append(events, ev)
	}
	if r := strings.Join(events, " "); r != "phx_reply presence_diff presence_state" && r != "phx_reply presence_state presence_diff" && r != "presence_diff phx_reply presence_state" {
		t.Fatalf("V1 join: want the reply, presence_diff and presence_state after the reply, got %s", dataOf(frames))
	}
	s.quiet(t)

	e.send(t, h,
		`{"topic":"room:v1","event":"ping","payload":{"a":1},"ref":"2"}`,
		`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}`)
	s.expect(t,
		`{"topic":"room:v1","event":"phx_reply","payload":{"response":{"a":1},"status":"ok"},"ref":"2"}`,
		`{"topic":"phoenix","event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"3"}`)

	requirePosted(t, e.post(t, h, "application/json",
		`[{"topic":"room:v1","event":"ping","payload":{"b":1},"ref":"4"},{"topic":"room:v1","event":"ping","payload":{"b":2},"ref":"5"}]`))
	s.expect(t,
		`{"topic":"room:v1","event":"phx_reply","payload":{"response":{"b":1},"status":"ok"},"ref":"4"}`,
		`{"topic":"room:v1","event":"phx_reply","payload":{"response":{"b":2},"status":"ok"},"ref":"5"}`)

	e.broadcast(t, "room:v1", 1)
	s.expect(t, `{"topic":"room:v1","event":"news","payload":{"n":1},"ref":null}`)

	// A V2 frame to a V1 session is refused, and nothing is applied.
	requireJSONError(t, "V2 frame to a V1 session", e.post(t, h, "application/x-ndjson",
		`{"topic":"room:v1","event":"ping","payload":{"c":0},"ref":"6"}`+"\n"+`["1","7","room:v1","ping",{}]`), http.StatusBadRequest)
	e.send(t, h, `{"topic":"room:v1","event":"ping","payload":{"c":1},"ref":"8"}`)
	s.expect(t, `{"topic":"room:v1","event":"phx_reply","payload":{"response":{"c":1},"status":"ok"},"ref":"8"}`)

	// Resume works for V1 as for V2.
	e.broadcast(t, "room:v1", 2)
	last := s.frames(t, 1)[0].ID
	s.close()
	e.broadcast(t, "room:v1", 3)
	r := e.resume(t, "42", "1.0.0", last, h.Session)
	r.expect(t, `{"topic":"room:v1","event":"news","payload":{"n":3},"ref":null}`)

	// join= speaks V1 too; without vsn the session is V1, as in Phoenix.
	s2 := e.open(t, "token="+qe(userToken(t, "43"))+"&join=room:w", nil)
	if h2 := s2.session(t); h2.Resumed {
		t.Fatalf("want a new session, got %+v", h2)
	}
	joined := s2.frames(t, 3)
	requireFrame(t, joined[0].Data, `{"topic":"room:w","event":"phx_reply","payload":{"response":{"joined":"room:w"},"status":"ok"},"ref":"join:1"}`)
}

// POST forms: one frame, a JSON array of frames, ndjson, a text/plain body
// (a CORS "simple" request, no preflight); a replayed POST is not applied
// twice.
func TestPost(t *testing.T) {
	e := newEnv(t, envConfig{})
	s, h := e.connect(t, "42", "2.0.0", "join=room:a")
	requireJoined(t, s.frames(t, 3), "room:a", "join:1", "42")

	r := e.post(t, h, "application/json", ping("join:1", "1", "room:a"))
	requirePosted(t, r)
	if len(r.Keys) != 1 {
		t.Fatalf("POST answer: want exactly {status:200}, got %s", r.Body)
	}
	if o := r.Header.Get("Access-Control-Allow-Origin"); o != "*" {
		t.Errorf("POST answer: Access-Control-Allow-Origin want *, got %q", o)
	}
	s.expect(t, pingReply("join:1", "1", "room:a"))

	requirePosted(t, e.post(t, h, "application/json; charset=utf-8", "[ "+ping("join:1", "2", "room:a")+",\n"+ping("join:1", "3", "room:a")+" ]"))
	s.expect(t, pingReply("join:1", "2", "room:a"), pingReply("join:1", "3", "room:a"))

	requirePosted(t, e.post(t, h, "application/x-ndjson", ping("join:1", "4", "room:a")+"\r\n\n"+ping("join:1", "5", "room:a")+"\n"))
	s.expect(t, pingReply("join:1", "4", "room:a"), pingReply("join:1", "5", "room:a"))

	requirePosted(t, e.post(t, h, "text/plain;charset=UTF-8", "["+ping("join:1", "6", "room:a")+"]"))
	s.expect(t, pingReply("join:1", "6", "room:a"))

	// The client did not see the answer and sends the same batch again.
	batch := ping("join:1", "7", "room:a") + "\n" + `["join:1","8","room:a","shout",{"m":"once"}]`
	requirePosted(t, e.post(t, h, "application/x-ndjson", batch))
	requirePosted(t, e.post(t, h, "application/x-ndjson", batch))
	s.expectInterleaved(t, pingReply("join:1", "7", "room:a"),
		`[null,null,"room:a","shouted",{"m":"once"}]`,
		`["join:1","8","room:a","phx_reply",{"response":{},"status":"ok"}]`)
	// A single-frame replay too.
	requirePosted(t, e.post(t, h, "application/json", ping("join:1", "7", "room:a")))
	e.send(t, h, ping("join:1", "9", "room:a"))
	s.expect(t, pingReply("join:1", "9", "room:a"))

	// The limits hold at the limit.
	var batch100 []string
	for i := range 100 {
		batch100 = append(batch100, fmt.Sprintf(`["join:1","q%d","room:a","quiet",{}]`, i))
	}
	e.send(t, h, batch100...)
	e.send(t, h, ping("join:1", "10", "room:a"))
	s.expect(t, pingReply("join:1", "10", "room:a"))
}

// Bad input is refused with a clear JSON error, nothing of it is applied,
// and the session and the others keep working.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envConfig{Heartbeat: 50 * time.Millisecond})
	s, h := e.connect(t, "42", "2.0.0", "join=room:a")
	requireJoined(t, s.frames(t, 3), "room:a", "join:1", "42")
	other, oh := e.connect(t, "43", "2.0.0", "join=room:a")
	requireJoined(t, other.frames(t, 3), "room:a", "join:1", "43")
	s.frames(t, 1) // 43's presence_diff join
	s.quiet(t)
	last := h.EventID
	ref := 0
	// roundTrip proves the session works and that nothing of a refused
	// request was applied: the stream holds only the new reply.
	roundTrip := func(t *testing.T) {
		t.Helper()
		ref++
		rs := "ok" + strconv.Itoa(ref)
		e.send(t, h, ping("join:1", rs, "room:a"))
		last = s.expect(t, pingReply("join:1", rs, "room:a"))[0].ID
	}
	// othersFine proves the other session's stream was not disturbed.
	othersFine := func(t *testing.T) {
		t.Helper()
		ref++
		rs := "o" + strconv.Itoa(ref)
		e.send(t, oh, ping("join:1", rs, "room:a"))
		other.expect(t, pingReply("join:1", rs, "room:a"))
	}

	t.Run("GET", func(t *testing.T) {
		good := streamQuery(t, "42", "2.0.0")
		foreign := streamQuery(t, "43", "2.0.0")
		cases := []struct {
			name   string
			query  string
			hdr    map[string]string
			status int
		}{
			{"malformed Last-Event-ID", good, map[string]string{"Last-Event-ID": "garbage"}, 400},
			{"numeric Last-Event-ID", good, map[string]string{"Last-Event-ID": "42"}, 400},
			{"Last-Event-ID with a bad cursor", good, map[string]string{"Last-Event-ID": h.Session + ".x"}, 400},
			{"Last-Event-ID with a non-hex session", good, map[string]string{"Last-Event-ID": strings.Repeat("z", 32) + ".1"}, 400},
			{"malformed lastEventId", good + "&lastEventId=garbage", nil, 400},
			{"malformed last_event_id", good + "&last_event_id=" + qe(h.Session+".1.x-y"), nil, 400},
			{"another user's session", foreign, map[string]string{"Last-Event-ID": last}, 403},
			{"another user's session by query", foreign + "&lastEventId=" + qe(last), nil, 403},
			{"bad token", "vsn=2.0.0&token=garbage", nil, 403},
			{"no token", "vsn=2.0.0", nil, 403},
			{"bad token with a valid Last-Event-ID", "vsn=2.0.0&token=garbage", map[string]string{"Last-Event-ID": last}, 403},
			{"vsn=3.0.0", streamQuery(t, "42", "3.0.0"), nil, 403},
			{"vsn=3.0.0 with a valid Last-Event-ID", streamQuery(t, "42", "3.0.0"), map[string]string{"Last-Event-ID": last}, 403},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := e.refused(t, ssePath+"?"+tc.query, tc.hdr)
				requireJSONError(t, "GET", r, tc.status)
				roundTrip(t)
			})
		}
		othersFine(t)
		// The session attacked with a foreign token is still its owner's.
		rs := e.resume(t, "42", "2.0.0", last, h.Session)
		rs.quiet(t)
		rs.close()
	})

	t.Run("POST", func(t *testing.T) {
		var tooMany []string
		for i := range 101 {
			tooMany = append(tooMany, fmt.Sprintf(`[null,"m%d","phoenix","heartbeat",{}]`, i))
		}
		cred := func(c string) map[string]string { return map[string]string{sse.SessionHeader: c} }
		unknown := strings.Repeat("ab", 16)
		forged := unknown + strings.Repeat("cd", 16)
		mine := cred(h.Credential)
		cases := []struct {
			name, target string
			hdr          map[string]string
			contentType  string
			body         string
			status       int
			errContains  string
		}{
			{"no credential", ssePath, nil, "application/json", ping("join:1", "x0", "room:a"), 403, sse.SessionHeader},
			{"a session id in the URL", ssePath + "?session=" + h.Session, nil, "application/json", ping("join:1", "x0", "room:a"), 403, "not enough"},
			{"an event id as credential", ssePath, cred(h.EventID), "application/json", ping("join:1", "x0", "room:a"), 400, "malformed"},
			{"the session id as credential", ssePath, cred(h.Session), "application/json", ping("join:1", "x0", "room:a"), 400, "malformed"},
			{"garbage credential", ssePath, cred("garbage"), "application/json", ping("join:1", "x0", "room:a"), 400, "malformed"},
			{"forged key", ssePath, cred(h.Session + strings.Repeat("0", 32)), "application/json", ping("join:1", "x0", "room:a"), 403, "invalid session credential"},
			{"unknown session with a forged key", ssePath, cred(forged), "application/json", ping("join:1", "x0", "room:a"), 403, "invalid session credential"},
			{"malformed JSON", h.Post, mine, "application/json", `["join:1","x1","room:a","ping",{`, 400, ""},
			{"malformed JSON array", h.Post, mine, "application/json", `[` + ping("join:1", "x1", "room:a") + `,["join:1"`, 400, ""},
			{"V2 frame with 4 elements", h.Post, mine, "application/json", `["join:1","x2","room:a","ping"]`, 400, ""},
			{"4-element frame in an array", h.Post, mine, "application/json", `[` + ping("join:1", "x3", "room:a") + `,["join:1","x4","room:a","ping"]]`, 400, "frame 2"},
			{"ndjson with a bad line", h.Post, mine, "application/x-ndjson", ping("join:1", "x5", "room:a") + "\n" + `["join:1","x6","room:a"`, 400, "frame 2"},
			{"ndjson with a base64 line", h.Post, mine, "application/x-ndjson", ping("join:1", "x7", "room:a") + "\nAAECAwQ=", 400, "binary"},
			{"V1 object to a V2 session", h.Post, mine, "application/json", `{"topic":"room:a","event":"ping","payload":{},"ref":"x8"}`, 400, ""},
			{"empty body", h.Post, mine, "application/json", "", 400, ""},
			{"empty array", h.Post, mine, "application/json", "[]", 400, ""},
			{"body over MaxBodyBytes", h.Post, mine, "application/x-ndjson", `["join:1","x9","room:a","ping",{"pad":"` + strings.Repeat("p", 5000) + `"}]`, 413, ""},
			{"101 frames", h.Post, mine, "application/x-ndjson", strings.Join(tooMany, "\n"), 413, "nothing was applied"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				hdr := map[string]string{"Content-Type": tc.contentType}
				for k, v := range tc.hdr {
					hdr[k] = v
				}
				r := e.request(t, http.MethodPost, tc.target, hdr, tc.body)
				requireJSONError(t, "POST", r, tc.status)
				if !strings.Contains(r.Error, tc.errContains) {
					t.Fatalf("want an error mentioning %q, got %s", tc.errContains, r.Body)
				}
				roundTrip(t)
			})
		}
		othersFine(t)
	})

	t.Run("expired session", func(t *testing.T) {
		e := newEnv(t, envConfig{SessionTimeout: 100 * time.Millisecond, Heartbeat: 50 * time.Millisecond})
		base := streamHandlers()
		s, h := e.connect(t, "42", "2.0.0", "")
		s.close()
		waitHandlers(t, base, handlerWait)
		time.Sleep(250 * time.Millisecond)
		if n, err := e.gw.ExpireSessions(context.Background()); err != nil || n != 1 {
			t.Fatalf("ExpireSessions: want 1, got %d, %v", n, err)
		}
		requireJSONError(t, "POST to an expired session", e.post(t, h, "application/json", `[null,"1","phoenix","heartbeat",{}]`), http.StatusGone)
	})
}

// The stream's headers and shape: no caching, transformation or buffering
// by intermediaries, retry: first and at once, optional padding, named
// heartbeats when idle, a clean end after MaxLifetime; CORS.
func TestStreamShape(t *testing.T) {
	t.Run("headers and opening", func(t *testing.T) {
		e := newEnv(t, envConfig{Heartbeat: 5 * time.Second, Retry: 2 * time.Second})
		start := time.Now()
		s := e.open(t, streamQuery(t, "42", "2.0.0"), nil)
		for k, want := range map[string]string{
			"Cache-Control":               "no-cache, no-store, no-transform",
			"X-Accel-Buffering":           "no",
			"Access-Control-Allow-Origin": "*",
			"Content-Type":                "text/event-stream; charset=utf-8",
		} {
			if got := s.resp.Header.Get(k); got != want {
				t.Errorf("%s: want %q, got %q", k, want, got)
			}
		}
		first := s.must(t)
		if first.Retry == "" || len(first.Comments) != 0 || first.HasData {
			t.Fatalf("without padding the stream must open with retry:, got %s", first)
		}
		ms, err := strconv.Atoi(first.Retry)
		if err != nil || ms < 1500 || ms > 2500 {
			t.Fatalf("retry: want 2000±25%% ms, got %q", first.Retry)
		}
		ev := s.must(t)
		if ev.Name != "session" {
			t.Fatalf("want the session event second, got %s", ev)
		}
		// Flushed at once, not after the first heartbeat.
		if el := ev.At.Sub(start); el > time.Second {
			t.Fatalf("the session event came after %v: the opening was not flushed", el)
		}
		// Retry is jittered per stream.
		seen := map[string]bool{first.Retry: true}
		for range 6 {
			s2 := e.open(t, streamQuery(t, "42", "2.0.0"), nil)
			seen[s2.must(t).Retry] = true
			s2.close()
		}
		if len(seen) < 2 {
			t.Errorf("retry: want jitter across streams, got %v every time", seen)
		}
	})

	t.Run("padding", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		s := e.open(t, streamQuery(t, "42", "2.0.0")+"&padding=1", nil)
		first := s.must(t)
		if len(first.Comments) != 1 || len(first.Comments[0])+1 < 2048 || first.HasData || first.Retry != "" || first.HasID {
			t.Fatalf("padding=1: want a comment of at least 2048 bytes first, alone, got %s", first)
		}
		if h := s.session(t); h.Resumed {
			t.Fatalf("want a new session after the padding, got %+v", h)
		}
		// Without padding=1 there is none.
		s2 := e.open(t, streamQuery(t, "42", "2.0.0")+"&padding=0", nil)
		if ev := s2.must(t); len(ev.Comments) != 0 {
			t.Fatalf("padding=0: want no padding, got %s", ev)
		}
	})

	t.Run("heartbeats", func(t *testing.T) {
		const hb = 100 * time.Millisecond
		e := newEnv(t, envConfig{Heartbeat: hb})
		s, h := e.connect(t, "42", "2.0.0", "")
		var beats []event
		for len(beats) < 4 {
			ev := s.must(t)
			if ev.Name != "heartbeat" {
				t.Fatalf("an idle stream: want only heartbeats, got %s", ev)
			}
			if ev.HasID {
				t.Fatalf("a heartbeat must not carry an id (it would move the resume point): %s", ev)
			}
			if _, err := strconv.ParseInt(ev.Data, 10, 64); err != nil {
				t.Fatalf("heartbeat data: want a timestamp, got %q", ev.Data)
			}
			beats = append(beats, ev)
		}
		for i := 1; i < len(beats); i++ {
			if gap := beats[i].At.Sub(beats[i-1].At); gap < hb*7/10 || gap > 5*hb {
				t.Errorf("heartbeat %d came %v after the previous one, want about %v", i, gap, hb)
			}
		}
		// A frame in between is delivered at once, not at the next beat.
		sent := time.Now()
		e.send(t, h, `[null,"1","phoenix","heartbeat",{}]`)
		f := s.frames(t, 1)[0]
		if d := f.At.Sub(sent); d > hb*8/10 {
			t.Errorf("a reply came %v after its POST, with %v heartbeats: delivery waits for the heartbeat", d, hb)
		}
	})

	t.Run("ends after MaxLifetime", func(t *testing.T) {
		const life = 500 * time.Millisecond
		e := newEnv(t, envConfig{MaxLifetime: life, Heartbeat: 100 * time.Millisecond})
		s, h := e.connect(t, "42", "2.0.0", "join=room:l")
		joined := s.frames(t, 3)
		evs := s.waitEnd(t, 3*time.Second)
		took := time.Since(s.opened)
		if s.endErr != nil {
			t.Fatalf("the stream ended uncleanly: %v", s.endErr)
		}
		if took < life*85/100 || took > life+time.Second {
			t.Fatalf("the stream ended after %v, want about %v", took, life)
		}
		// Heartbeats, then the clean end's short retry so the client
		// resumes at once.
		if len(evs) == 0 || evs[len(evs)-1].Retry != "100" || evs[len(evs)-1].HasData {
			t.Fatalf("want the stream to end with retry: 100, got %v", evs)
		}
		for _, ev := range evs[:len(evs)-1] {
			if ev.Name != "heartbeat" {
				t.Fatalf("want only heartbeats until the end, got %s", ev)
			}
		}
		waitHandlers(t, 0, handlerWait)
		// The client resumes from its last id.
		e.broadcast(t, "room:l", 1)
		r := e.resume(t, "42", "2.0.0", joined[2].ID, h.Session)
		r.expect(t, news("room:l", 1))
	})

	t.Run("CORS", func(t *testing.T) {
		e := newEnv(t, envConfig{})
		r := e.request(t, http.MethodOptions, ssePath+"?session=x", map[string]string{
			"Origin":                         "https://app.example",
			"Access-Control-Request-Method":  "POST",
			"Access-Control-Request-Headers": "content-type",
		}, "")
		if r.HTTPStatus != http.StatusNoContent && r.HTTPStatus != http.StatusOK {
			t.Fatalf("preflight: want 204 or 200, got %d %q", r.HTTPStatus, r.Body)
		}
		if m := r.Header.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "POST") || !strings.Contains(m, "GET") {
			t.Errorf("preflight: Access-Control-Allow-Methods want GET and POST, got %q", m)
		}
		if hd := strings.ToLower(r.Header.Get("Access-Control-Allow-Headers")); !strings.Contains(hd, "content-type") {
			t.Errorf("preflight: Access-Control-Allow-Headers want content-type, got %q", hd)
		}
		if age, err := strconv.Atoi(r.Header.Get("Access-Control-Max-Age")); err != nil || age < 60 {
			t.Errorf("preflight: want an Access-Control-Max-Age of at least a minute, got %q", r.Header.Get("Access-Control-Max-Age"))
		}
		if o := r.Header.Get("Access-Control-Allow-Origin"); o != "*" {
			t.Errorf("preflight: Access-Control-Allow-Origin want *, got %q", o)
		}

		c := newEnv(t, envConfig{AllowCredentials: true})
		origin := map[string]string{"Origin": "https://app.example"}
		pre := c.request(t, http.MethodOptions, ssePath, map[string]string{"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}, "")
		s := openStream(t, streamClient(), c.srv.URL+ssePath+"?"+streamQuery(t, "42", "2.0.0"), origin)
		h := s.session(t)
		post := c.request(t, http.MethodPost, h.Post, map[string]string{"Origin": "https://app.example", "Content-Type": "text/plain", sse.SessionHeader: h.Credential}, `[null,"1","phoenix","heartbeat",{}]`)
		requirePosted(t, post)
		bad := c.request(t, http.MethodGet, ssePath+"?vsn=2.0.0&token=garbage", origin, "")
		requireJSONError(t, "bad token with credentials", bad, http.StatusForbidden)
		for name, hdr := range map[string]http.Header{"preflight": pre.Header, "stream": s.resp.Header, "POST": post.Header, "error": bad.Header} {
			if o := hdr.Get("Access-Control-Allow-Origin"); o != "https://app.example" {
				t.Errorf("%s with AllowCredentials: Access-Control-Allow-Origin want the Origin echoed, got %q", name, o)
			}
			if cr := hdr.Get("Access-Control-Allow-Credentials"); cr != "true" {
				t.Errorf("%s with AllowCredentials: Access-Control-Allow-Credentials want true, got %q", name, cr)
			}
			if !strings.Contains(strings.Join(hdr.Values("Vary"), ","), "Origin") {
				t.Errorf("%s with AllowCredentials: an echoed Origin needs Vary: Origin, got %q", name, hdr.Values("Vary"))
			}
		}
		// Without an Origin (same-origin, curl) there is nothing to echo.
		s2 := c.open(t, streamQuery(t, "42", "2.0.0"), nil)
		if o := s2.resp.Header.Get("Access-Control-Allow-Origin"); o != "*" {
			t.Errorf("no Origin with AllowCredentials: want *, got %q", o)
		}
		if cr := s2.resp.Header.Get("Access-Control-Allow-Credentials"); cr != "" {
			t.Errorf("no Origin: want no Access-Control-Allow-Credentials, got %q", cr)
		}
	})
}

// A client that drops its connection mid-stream frees its handler at once;
// its session stays resumable until the gateway's SessionTimeout, then a
// resume starts a new session.
func TestClientDisconnect(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const timeout = 400 * time.Millisecond
	const hb = 100 * time.Millisecond
	e := newEnv(t, envConfig{SessionTimeout: timeout, Heartbeat: hb})
	// Earlier tests' parked streams may still be ending.
	waitHandlers(t, 0, handlerWait)

	keep, kh := e.connect(t, "43", "2.0.0", "join=room:d")
	requireJoined(t, keep.frames(t, 3), "room:d", "join:1", "43")

	var streams []*stream
	var hellos []hello
	for range 5 {
		s, h := e.connect(t, "42", "2.0.0", "join=room:d")
		requireJoined(t, s.frames(t, 3), "room:d", "join:1", "42")
		streams = append(streams, s)
		hellos = append(hellos, h)
	}
	keep.collect(t) // the others' presence diffs
	waitHandlers(t, 6, handlerWait)

	// Drop them mid-stream, one after another, with broadcasts in between
	// that the next ones may be writing when they go.
	e.broadcast(t, "room:d", 1)
	lastIDs := make([]string, len(streams))
	for i, s := range streams {
		evs := s.collect(t) // the later joiners' presence diffs, the broadcast
		if len(evs) != len(streams)-i || !jsonEqual(evs[len(evs)-1].Data, news("room:d", 1)) {
			t.Fatalf("stream %d: want %d presence diffs then the broadcast, got%s", i, len(streams)-i-1, dataOf(evs))
		}
		lastIDs[i] = evs[len(evs)-1].ID
	}
	for i, s := range streams {
		s.close()
		if i%2 == 0 {
			e.broadcast(t, "room:d", 100+i)
		}
	}
	waitHandlers(t, 1, handlerWait) // only keep's
	keep.expect(t, news("room:d", 1), news("room:d", 100), news("room:d", 102), news("room:d", 104))

	// Within SessionTimeout of the drop, a session is resumable, and gets
	// what was sent while it was away.
	time.Sleep(timeout * 6 / 10)
	if n, err := e.gw.ExpireSessions(context.Background()); err != nil || n != 0 {
		t.Fatalf("ExpireSessions %v after the drop, with SessionTimeout %v: want nothing expired, got %d, %v", timeout*6/10, timeout, n, err)
	}
	r := e.resume(t, "42", "2.0.0", lastIDs[1], hellos[1].Session)
	r.expect(t, news("room:d", 100), news("room:d", 102), news("room:d", 104))
	r.close()
	waitHandlers(t, 1, handlerWait)

	// Past SessionTimeout (plus the heartbeat wait in which it dropped),
	// the sessions are gone; a resume opens a new one, and the other user
	// saw them leave.
	time.Sleep(timeout + hb + 150*time.Millisecond)
	if n, err := e.gw.ExpireSessions(context.Background()); err != nil || n != len(streams) {
		t.Fatalf("ExpireSessions after SessionTimeout: want the %d dropped sessions expired, got %d, %v", len(streams), n, err)
	}
	gone := e.open(t, streamQuery(t, "42", "2.0.0"), map[string]string{"Last-Event-ID": lastIDs[0]})
	if gh := gone.session(t); gh.Resumed || gh.Session == hellos[0].Session {
		t.Fatalf("resume after expiry: want a new session, got %+v", gh)
	}
	gone.close()
	leaves := keep.collect(t)
	if len(leaves) == 0 {
		t.Fatal("the other user saw no presence leave of the expired sessions")
	}
	for _, l := range leaves {
		if f := decodeV2(t, l.Data); f.Event != "presence_diff" || !strings.Contains(string(f.Payload), `"leaves":{"42"`) {
			t.Fatalf("want presence_diff leaves of 42, got %s", l.Data)
		}
	}
	e.send(t, kh, ping("join:1", "k", "room:d"))
	keep.expect(t, pingReply("join:1", "k", "room:d"))
	keep.close()
	waitHandlers(t, 0, handlerWait)
	e.srv.Close()
	goleak.VerifyNone(t, ignore)
}

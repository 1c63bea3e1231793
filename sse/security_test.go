package sse_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/testroom"
	"github.com/sluicegw/sluice/sse"
)

// Everything public about a session (its id, its event ids) read from a
// proxy's log is not enough to write to it, and a session is refused to
// another user even with its credential: nothing of the attempt is applied,
// and the logs never name a session by anything that proves it.
func TestSessionTakeoverRefused(t *testing.T) {
	logs := &testroom.LogBuffer{}
	e := newEnv(t, envConfig{Log: logs})
	victim, vh := e.connect(t, "42", "2.0.0", "join=room:a")
	requireJoined(t, victim.frames(t, 3), "room:a", "join:1", "42")
	evil := ping("join:1", "evil", "room:a")
	ndjson := map[string]string{"Content-Type": "application/x-ndjson"}
	with := func(kv ...string) map[string]string {
		h := map[string]string{"Content-Type": "application/x-ndjson"}
		for i := 0; i < len(kv); i += 2 {
			h[kv[i]] = kv[i+1]
		}
		return h
	}
	attacks := []struct {
		name, target string
		hdr          map[string]string
		status       int
	}{
		{"the session id from the URL, no token", ssePath + "?session=" + vh.Session, ndjson, http.StatusForbidden},
		{"the session id with the attacker's own token", ssePath + "?session=" + vh.Session + "&token=" + qe(userToken(t, "666")), ndjson, http.StatusForbidden},
		{"the session id in the credential header", ssePath, with(sse.SessionHeader, vh.Session), http.StatusBadRequest},
		{"an event id in the credential header", ssePath, with(sse.SessionHeader, vh.EventID), http.StatusBadRequest},
		{"the session id with a made-up key", ssePath, with(sse.SessionHeader, vh.Session+strings.Repeat("f", 32)), http.StatusForbidden},
		{"the real credential with another user's token", ssePath, with(sse.SessionHeader, vh.Credential, "X-Phoenix-AuthToken", userToken(t, "666")), http.StatusForbidden},
		{"the real credential with another user's token in the URL", ssePath + "?token=" + qe(userToken(t, "666")), with(sse.SessionHeader, vh.Credential), http.StatusForbidden},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			r := e.request(t, http.MethodPost, a.target, a.hdr, evil)
			requireJSONError(t, "POST", r, a.status)
		})
	}
	// Nothing was applied: no reply to any of the pushes came down.
	victim.quiet(t)
	// The session is its owner's as before, with its own token too.
	e.send(t, vh, ping("join:1", "mine", "room:a"))
	victim.expect(t, pingReply("join:1", "mine", "room:a"))
	requirePosted(t, e.request(t, http.MethodPost, vh.Post, with(sse.SessionHeader, vh.Credential, "X-Phoenix-AuthToken", userToken(t, "42")), ping("join:1", "mine2", "room:a")))
	victim.expect(t, pingReply("join:1", "mine2", "room:a"))
	victim.close()

	out := logs.String()
	if !strings.Contains(out, gateway.SessionHandle(vh.Session)) {
		t.Fatalf("the logs should name the session by its handle %s; logs:\n%s", gateway.SessionHandle(vh.Session), out)
	}
	for what, secret := range map[string]string{"session id": vh.Session, "session key": vh.Credential[32:]} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs hold the %s %s:\n%s", what, secret, out)
		}
	}
}

// A stream refused for its ?join= (a topic over the field limit, too many
// topics) is refused before a session is made: a session nobody can use
// would count against --max-sessions-per-user until it expires, so two bad
// URLs locked a user with a limit of 2 out for the session timeout.
func TestRefusedJoinAtConnectMakesNoSession(t *testing.T) {
	e := newEnv(t, envConfig{MaxSessions: 1, MaxFrames: 3})
	long := "room:" + strings.Repeat("x", gateway.MaxFieldBytes)
	for _, join := range []string{long, "room:a,room:b,room:c,room:d", "room:a," + long} {
		r := e.refused(t, ssePath+"?"+streamQuery(t, "42", "2.0.0")+"&join="+qe(join), nil)
		requireJSONError(t, "GET ?join="+join[:min(len(join), 20)], r, http.StatusBadRequest)
	}
	// The user's one session is still free.
	s, _ := e.connect(t, "42", "2.0.0", "join=room:a")
	requireJoined(t, s.frames(t, 3), "room:a", "join:1", "42")
	s.close()
}

// An event id is public (clients that cannot set headers send it back in
// ?lastEventId=): the stream never writes a key in one, even when a resume
// presented its credential (or a LongPoll token) as Last-Event-ID.
func TestResumeNeverEchoesAKeyInAnEventID(t *testing.T) {
	e := newEnv(t, envConfig{})
	s, h := e.connect(t, "42", "2.0.0", "")
	s.close()
	r := e.open(t, streamQuery(t, "42", "2.0.0"), map[string]string{"Last-Event-ID": h.Credential + ".0"})
	defer r.close()
	got := r.session(t)
	if !got.Resumed || got.Session != h.Session {
		t.Fatalf("resume with the credential as Last-Event-ID: got %+v, want session %s resumed", got, h.Session)
	}
	if strings.Contains(got.EventID, h.Credential[32:]) {
		t.Fatalf("the session event's id %q holds the session's key", got.EventID)
	}
}

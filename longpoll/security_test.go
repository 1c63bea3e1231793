package longpoll_test

import (
	"net/http"
	"strings"
	"testing"
)

// A session's public id (the first part of its SSE event ids, what a log
// might name) is not a LongPoll token: it reads and writes nothing, with or
// without a user token, and a real session token is refused to another
// user. Nothing of the attempts is applied, and the owner goes on as before.
func TestSessionTakeoverRefused(t *testing.T) {
	e := newEnv(t, envConfig{})
	victim := e.connect(t, "42", "2.0.0")
	victim.join(t, "room:a", "1", "alice")
	// Something waits for the victim: a reply it has not polled yet.
	victim.send(t, `["1","mine","room:a","ping",{"secret":"for 42 only"}]`)
	publicID := sessionID(t, victim.tok)
	if strings.HasPrefix(victim.tok, publicID+".") {
		t.Fatalf("the session token %q is its public id and a cursor: it must carry a key", victim.tok)
	}
	attacker := userToken(t, "666")
	forged := []string{publicID + ".0", publicID + strings.Repeat("0", 32) + ".0"}

	for _, tok := range forged {
		// No user token: refused, saying why.
		r := e.request(t, http.MethodGet, "vsn=2.0.0&token="+qe(tok), nil, "")
		if r.Status != http.StatusForbidden || r.Error == "" || strings.Contains(string(r.Body), "for 42 only") {
			t.Fatalf("GET with the forged token %q and no user token: want {status:403, error}, got %s", tok, r.Body)
		}
		// The attacker's own token: a new session of the attacker's, never the victim's.
		r = e.request(t, http.MethodGet, "token="+qe(attacker)+"&vsn=2.0.0&token="+qe(tok), nil, "")
		if r.Status != http.StatusGone || r.Token == "" || sessionID(t, r.Token) == publicID || strings.Contains(string(r.Body), "for 42 only") {
			t.Fatalf("GET with the forged token %q and another user's token: want a new session of that user, got %s", tok, r.Body)
		}
		// POST: refused, nothing applied.
		r = e.request(t, http.MethodPost, "vsn=2.0.0&token="+qe(tok), map[string]string{"Content-Type": "application/json"}, `["1","evil","room:a","ping",{}]`)
		if r.HTTPStatus != http.StatusForbidden || r.Status != http.StatusForbidden || r.Error == "" {
			t.Fatalf("POST with the forged token %q: want HTTP 403 {status:403, error}, got HTTP %d %s", tok, r.HTTPStatus, r.Body)
		}
	}
	// The victim's real token with another user's token: refused, both ways.
	stolen := "token=" + qe(attacker) + "&vsn=2.0.0&token=" + qe(victim.tok)
	if r := e.request(t, http.MethodGet, stolen, nil, ""); r.HTTPStatus != http.StatusForbidden || r.Status != http.StatusForbidden || strings.Contains(string(r.Body), "for 42 only") {
		t.Fatalf("GET with the victim's token and another user's: want HTTP 403 {status:403}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	if r := e.request(t, http.MethodPost, stolen, map[string]string{"Content-Type": "application/json"}, `["1","evil2","room:a","ping",{}]`); r.HTTPStatus != http.StatusForbidden || r.Status != http.StatusForbidden {
		t.Fatalf("POST with the victim's token and another user's: want HTTP 403 {status:403}, got HTTP %d %s", r.HTTPStatus, r.Body)
	}
	// The owner gets exactly its own reply: none of the attackers' pushes was applied.
	requireFrames(t, victim.recv(t), `["1","mine","room:a","phx_reply",{"response":{"secret":"for 42 only"},"status":"ok"}]`)
	victim.send(t, `["1","again","room:a","ping",{}]`)
	requireFrames(t, victim.recv(t), `["1","again","room:a","phx_reply",{"response":{},"status":"ok"}]`)
}

package longpoll_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// TestExpiredSessionSaysHowToStartANewOne: a person polling by hand sends
// only the session token. Once the session expired, the GET and the POST
// say that it is gone and how to start a new one, instead of
// "unauthorized: missing token"; phoenix.js, which sends its user token,
// still gets a new session at once.
func TestExpiredSessionSaysHowToStartANewOne(t *testing.T) {
	e := newEnv(t, envConfig{SessionTimeout: 50 * time.Millisecond})
	c := e.connect(t, "42", "2.0.0")
	time.Sleep(100 * time.Millisecond)
	if n, err := e.gw.ExpireSessions(context.Background()); err != nil || n != 1 {
		t.Fatalf("ExpireSessions: %d, %v; want 1", n, err)
	}
	sayExpired := func(what string, r *lpResp) {
		t.Helper()
		if r.HTTPStatus != http.StatusOK || r.Status != http.StatusGone || r.has("token") {
			t.Fatalf("%s: want HTTP 200 {status:410} without a token, got HTTP %d %s", what, r.HTTPStatus, r.Body)
		}
		for _, want := range []string{"expired", "GET /socket/longpoll", "user token"} {
			if !strings.Contains(r.Error, want) {
				t.Errorf("%s: the error %q does not say %q", what, r.Error, want)
			}
		}
		if strings.Contains(string(r.Body), `\u003c`) || strings.Contains(string(r.Body), `\u003e`) {
			t.Errorf("%s: HTML escapes in a JSON error: %s", what, r.Body)
		}
	}
	sayExpired("GET with the session token alone", e.request(t, http.MethodGet, "token="+qe(c.tok), nil, ""))
	sayExpired("POST", c.post(t, "application/x-ndjson", `[null,"1","phoenix","heartbeat",{}]`))
	// With the user token too (phoenix.js): a new session.
	if r := c.pollWith(t, c.tok); r.Status != http.StatusGone || r.Token == "" {
		t.Fatalf("GET with the user token: want {status:410, token} (a new session), got %s", r.Body)
	}
}

// flakyStore is a session store that can be made to fail, as a Redis that
// stopped answering.
type flakyStore struct {
	gateway.SessionStore
	down atomic.Bool
}

var errStoreDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

func (s *flakyStore) Create(ctx context.Context, sess *gateway.Session, deadline time.Time, maxPerSocket int) error {
	if s.down.Load() {
		return errStoreDown
	}
	return s.SessionStore.Create(ctx, sess, deadline, maxPerSocket)
}

func (s *flakyStore) Load(ctx context.Context, id string) (*gateway.Session, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.SessionStore.Load(ctx, id)
}

func (s *flakyStore) LockLoad(ctx context.Context, id string) (func(), *gateway.Session, error) {
	if s.down.Load() {
		return nil, nil, errStoreDown
	}
	return s.SessionStore.LockLoad(ctx, id)
}

func (s *flakyStore) Touch(ctx context.Context, id string, deadline time.Time) (*gateway.Session, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.SessionStore.Touch(ctx, id, deadline)
}

// TestStoreDownStatusesAgree: while the store does not answer, the HTTP
// status and the body's status are the same 500, the one phoenix.js
// reconnects on (it throws on a body status it does not know, such as
// 503), with Retry-After and an error that says it is transient.
func TestStoreDownStatusesAgree(t *testing.T) {
	var store *flakyStore
	e := newEnv(t, envConfig{Limits: func(c *gateway.Config) {
		store = &flakyStore{SessionStore: c.Sessions}
		c.Sessions = store
	}})
	c := e.connect(t, "42", "2.0.0")
	store.down.Store(true)
	for what, r := range map[string]*lpResp{
		"connect": e.request(t, http.MethodGet, "vsn=2.0.0&token="+qe(userToken(t, "43")), nil, ""),
		"poll":    c.pollWith(t, c.tok),
		"POST":    c.post(t, "application/x-ndjson", `[null,"1","phoenix","heartbeat",{}]`),
	} {
		if r.HTTPStatus != http.StatusInternalServerError || r.Status != http.StatusInternalServerError {
			t.Errorf("%s with the store down: want HTTP 500 {status:500}, got HTTP %d %s", what, r.HTTPStatus, r.Body)
		}
		if r.Header.Get("Retry-After") == "" || !strings.Contains(r.Error, "temporarily unavailable") {
			t.Errorf("%s with the store down: want Retry-After and a transient error, got %v %s", what, r.Header, r.Body)
		}
	}
	store.down.Store(false)
	c.poll(t)
}

package sse

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/topics"
)

// FuzzLastEventID sends arbitrary resume points to the stream, as the
// Last-Event-ID header or the lastEventId parameter, without a user token:
// a malformed one is refused with 400, a well-formed one with 403 (whose
// session it names does not matter without a token), each with a JSON
// "error"; never a stream, never a panic. Its seed corpus is in
// testdata/fuzz/FuzzLastEventID/.
func FuzzLastEventID(f *testing.F) {
	store := gateway.NewMemoryStore()
	gw, err := gateway.New(gateway.Config{
		Router:       &topics.Router[gateway.Handler]{},
		Authenticate: gateway.TokenAuthenticator("sse-fuzz-secret-key-base-0123456789", time.Hour),
		Sessions:     store,
		Presence:     store,
		Broker:       topics.NewMemoryBroker(10, time.Hour),
		Logger:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		f.Fatal(err)
	}
	e := echo.New()
	New(gw, Config{Logger: slog.New(slog.DiscardHandler)}).Register(e, "/socket/sse")

	f.Add("0123456789abcdef0123456789abcdef.1795703617443181", false)
	f.Add("a482ae9057984cfbd8a83d1608017bf0.1795703617443185.0-1795703617443442", true)
	f.Add("not an id", false)
	f.Fuzz(func(t *testing.T, id string, inQuery bool) {
		target := "/socket/sse?vsn=2.0.0"
		req := httptest.NewRequest(http.MethodGet, target, nil)
		if inQuery {
			req = httptest.NewRequest(http.MethodGet, target+"&lastEventId="+url.QueryEscape(id), nil)
		} else {
			req.Header.Set("Last-Event-ID", id)
		}
		if got := lastEventID(req); got != id {
			t.Fatalf("lastEventID = %q, want %q", got, id)
		}
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		var body struct {
			Status int    `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error == "" || body.Status != rec.Code {
			t.Fatalf("Last-Event-ID %q: %d %q, want a JSON error", id, rec.Code, rec.Body)
		}
		_, wellFormed := gateway.ParseSessionToken(id)
		switch {
		case id == "" || wellFormed:
			// No resume point, or one that parses: the missing token decides.
			if rec.Code != http.StatusForbidden {
				t.Fatalf("Last-Event-ID %q without a token: %d %s, want 403", id, rec.Code, rec.Body)
			}
		case rec.Code != http.StatusBadRequest:
			t.Fatalf("malformed Last-Event-ID %q: %d %s, want 400", id, rec.Code, rec.Body)
		}
	})
}

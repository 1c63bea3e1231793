package sse_test

import (
	"net/http"
	"testing"
	"time"
)

// TestParkedStreamSaysItsConnectionCloses: an HTTP/1.1 stream is parked
// outside net/http, which closes its connection when the stream ends. The
// response must say Connection: close; otherwise a keep-alive client puts
// the connection back in its pool when the stream ends cleanly, and its
// next request on it (a POST of frames, which clients do not retry) fails
// with "server closed idle connection".
func TestParkedStreamSaysItsConnectionCloses(t *testing.T) {
	e := newEnv(t, envConfig{MaxLifetime: 300 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
	keepAlive := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	t.Cleanup(keepAlive.CloseIdleConnections)
	s := openStream(t, keepAlive, e.srv.URL+ssePath+"?"+streamQuery(t, "42", "2.0.0"), nil)
	if s.resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d", s.resp.StatusCode)
	}
	s.session(t)
	s.waitEnd(t, 3*time.Second)
	if s.endErr != nil {
		t.Fatalf("the stream ended uncleanly: %v", s.endErr)
	}
	if !s.resp.Close {
		t.Errorf("the stream's response does not say Connection: close (headers %v): a keep-alive client would reuse its closed connection", s.resp.Header)
	}
}

package gateway

import (
	"errors"
	"math/rand/v2"
	"time"
)

// StoreRetry is how a transport that holds a client's connection open (an
// SSE stream, a WebSocket) rides out a store that fails for a while: a Redis
// slow under load whose calls time out is not a Redis that is down, and
// must not end the connection. After a failed Subscription call the
// connection waits and tries again, with backoff; a Subscription
// acknowledges nothing it failed to deliver, so the retry delivers
// everything, in order. Only a session that is gone, or a store that failed
// every call for longer than the session timeout (by then the session may
// have expired, and the client is better served reconnecting, perhaps to
// another instance), ends it. The zero value is ready; it is used by one
// goroutine at a time.
type StoreRetry struct {
	since   time.Time // when the calls started failing; zero while they answer
	backoff time.Duration
}

// The first retry comes after MinStoreRetry, each next after twice the last,
// up to MaxStoreRetry, each jittered by ±25% so that the connections of an
// instance do not all retry at once.
const (
	MinStoreRetry = 50 * time.Millisecond
	MaxStoreRetry = 2 * time.Second
)

// Failed records a failed call of the Subscription at now and says how long
// to wait before the next, or retry=false when the connection must end
// instead: err is ErrNoSession, or the calls have failed for longer than
// the gateway's session timeout.
func (r *StoreRetry) Failed(g *Gateway, err error, now time.Time) (wait time.Duration, retry bool) {
	if errors.Is(err, ErrNoSession) {
		return 0, false
	}
	if r.since.IsZero() {
		r.since, r.backoff = now, MinStoreRetry
	} else {
		if now.Sub(r.since) > g.cfg.SessionTimeout {
			return 0, false
		}
		r.backoff = min(2*r.backoff, MaxStoreRetry)
	}
	jittered := float64(r.backoff) * (0.75 + 0.5*rand.Float64())
	return time.Duration(jittered), true
}

// Answered records a call that worked, ending a spell of failures; it
// returns how long that spell lasted (0 if there was none).
func (r *StoreRetry) Answered(now time.Time) time.Duration {
	if r.since.IsZero() {
		return 0
	}
	d := now.Sub(r.since)
	r.since = time.Time{}
	return d
}

// Failing reports whether the last call failed.
func (r *StoreRetry) Failing() bool { return !r.since.IsZero() }

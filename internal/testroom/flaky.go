package testroom

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// FlakyBroker is a broker whose reads fail on demand, as a Redis that is
// slow under load does (its reads time out): publishes still go through,
// so messages pile up in the log while nobody can read them.
type FlakyBroker struct {
	topics.Broker
	mu       sync.Mutex
	down     bool
	failures int
	// failed is signalled (without blocking) at every failed read.
	failed chan struct{}
}

// ErrSlowStore is what a FlakyBroker's failing reads return.
var ErrSlowStore = errors.New("read timed out (injected by the test)")

// NewFlakyBroker wraps b; its reads work until SetDown(true).
func NewFlakyBroker(b topics.Broker) *FlakyBroker {
	return &FlakyBroker{Broker: b, failed: make(chan struct{}, 1)}
}

// WrapFlaky returns a broker wrapper (a test env's WrapBroker) that makes
// the broker it is given a FlakyBroker and stores it in *fb.
func WrapFlaky(fb **FlakyBroker) func(topics.Broker) topics.Broker {
	return func(b topics.Broker) topics.Broker {
		*fb = NewFlakyBroker(b)
		return *fb
	}
}

// SetDown makes every read fail (true) or work again (false).
func (b *FlakyBroker) SetDown(down bool) {
	b.mu.Lock()
	b.down = down
	b.mu.Unlock()
}

// ReadMany implements topics.Broker, failing while the broker is down.
func (b *FlakyBroker) ReadMany(ctx context.Context, reqs []topics.ReadRequest) ([]topics.Batch, error) {
	b.mu.Lock()
	down := b.down
	if down {
		b.failures++
	}
	b.mu.Unlock()
	if down {
		select {
		case b.failed <- struct{}{}:
		default:
		}
		return nil, ErrSlowStore
	}
	return b.Broker.ReadMany(ctx, reqs)
}

// WaitFailures waits up to within until the broker has failed at least n
// reads, and fails the test if it has not.
func (b *FlakyBroker) WaitFailures(t testing.TB, n int, within time.Duration) {
	t.Helper()
	timeout := time.After(within)
	for {
		b.mu.Lock()
		got := b.failures
		b.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-b.failed:
		case <-timeout:
			t.Fatalf("want %d failed reads, got %d within %v", n, got, within)
		}
	}
}

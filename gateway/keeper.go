package gateway

import (
	"context"
	"sync"
	"time"
)

// keeper keeps the sessions of this instance's held subscriptions (parked
// SSE streams, WebSockets) alive: every period it collects those whose
// deadline needs moving and writes them all in batches (TouchMany), so an
// idle stream costs the store nothing of its own. A subscription whose
// session turns out gone is woken, and ends as one that finds it gone.
//
// Its goroutine runs only while it holds subscriptions.
type keeper struct {
	g *Gateway
	// period is how often it looks: a quarter of the session timeout, so a
	// deadline it keeps never gets nearer than half the timeout.
	period time.Duration

	mu   sync.Mutex
	subs map[*Subscription]keptSession
	// running: the goroutine is started and has not yet stopped.
	running bool
	// emptied tells the goroutine that the last subscription went, so it
	// stops at once (no idle timer left behind).
	emptied chan struct{}
}

// keptSession is what the keeper knows of one subscription's session.
type keptSession struct {
	// id is the session's (the subscription's token changes as it reads).
	id string
	// alive is the deadline last written.
	alive time.Time
	// extra is how far past the session timeout its deadline is written:
	// the subscription's check interval (as its own touches did), at most
	// the session timeout.
	extra time.Duration
}

// touchBatch bounds the ids of one TouchMany call: a pipeline's memory and
// the time one call holds the memory store's lock.
const touchBatch = 1000

func newKeeper(g *Gateway) *keeper {
	return &keeper{g: g, period: max(g.cfg.SessionTimeout/4, time.Millisecond), subs: make(map[*Subscription]keptSession), emptied: make(chan struct{}, 1)}
}

// add keeps sub's session alive from now on; its deadline was just written
// as alive.
func (k *keeper) add(sub *Subscription, alive time.Time, extra time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.subs[sub] = keptSession{id: sub.tok.SessionID, alive: alive, extra: min(extra, k.g.cfg.SessionTimeout)}
	if !k.running {
		k.running = true
		go k.run()
	}
}

// remove stops keeping sub's session alive.
func (k *keeper) remove(sub *Subscription) {
	k.mu.Lock()
	delete(k.subs, sub)
	empty := len(k.subs) == 0 && k.running
	k.mu.Unlock()
	if empty {
		select {
		case k.emptied <- struct{}{}:
		default:
		}
	}
}

// run makes a pass every period while there are subscriptions to keep.
func (k *keeper) run() {
	t := time.NewTicker(k.period)
	defer t.Stop()
	for {
		var now time.Time
		select {
		case now = <-t.C:
		case <-k.emptied:
		}
		k.mu.Lock()
		if len(k.subs) == 0 {
			k.running = false
			k.mu.Unlock()
			return
		}
		k.mu.Unlock()
		if !now.IsZero() {
			k.pass(context.Background(), now)
		}
	}
}

// due is one subscription whose deadline a pass moves.
type due struct {
	sub   *Subscription
	id    string
	until time.Time
}

// pass moves, in batches, the deadlines that would otherwise come nearer
// than half the session timeout before the next pass, and wakes the
// subscriptions whose session is gone. It returns how many deadlines it
// moved. A failed batch is logged and tried again at the next pass: a slow
// or restarting store does not end a stream, whose deadline is still at
// least half a session timeout away.
func (k *keeper) pass(ctx context.Context, now time.Time) int {
	timeout := k.g.cfg.SessionTimeout
	k.mu.Lock()
	var all []due
	for sub, ks := range k.subs {
		if ks.alive.Sub(now) <= timeout/2+k.period {
			all = append(all, due{sub, ks.id, now.Add(timeout + ks.extra)})
		}
	}
	k.mu.Unlock()
	moved := 0
	for len(all) > 0 {
		n := min(len(all), touchBatch)
		batch := all[:n]
		all = all[n:]
		moved += k.touch(ctx, batch)
	}
	return moved
}

// touch writes one batch of deadlines (the latest one for all: a few
// milliseconds apart at most) and returns how many it moved.
func (k *keeper) touch(ctx context.Context, batch []due) int {
	ids := make([]string, len(batch))
	until := batch[0].until
	for i, d := range batch {
		ids[i] = d.id
		until = maxTime(until, d.until)
	}
	ctx, cancel := context.WithTimeout(ctx, keeperTimeout)
	gone, err := k.g.cfg.Sessions.TouchMany(ctx, ids, until)
	cancel()
	if err != nil {
		k.g.log.Warn("keeping sessions alive", "sessions", len(ids), "err", err)
		return 0
	}
	goneSet := make(map[string]struct{}, len(gone))
	for _, id := range gone {
		goneSet[id] = struct{}{}
	}
	k.mu.Lock()
	var woken []*Subscription
	for _, d := range batch {
		ks, ok := k.subs[d.sub]
		if !ok {
			continue // closed meanwhile
		}
		if _, isGone := goneSet[d.id]; isGone {
			// Ended elsewhere without a mailbox record reaching it (its
			// data expired, or a record was lost): a reload finds it gone.
			delete(k.subs, d.sub)
			woken = append(woken, d.sub)
			continue
		}
		ks.alive = until
		k.subs[d.sub] = ks
	}
	k.mu.Unlock()
	for _, sub := range woken {
		sub.mailboxWoke.Store(true)
		sub.notify()
	}
	return len(batch) - len(gone)
}

// keeperTimeout bounds one batch's call to the store.
const keeperTimeout = 10 * time.Second

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

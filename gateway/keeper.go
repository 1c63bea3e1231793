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
// A pass only moves deadlines (on Redis, two commands per batch, whatever
// its size); a session's data is renewed (on Redis, one command per session)
// only once the deadline it was last renewed with is half the store's grace
// behind, so that a stream held for days never outlives its data.
//
// Its goroutine runs only while it holds subscriptions.
type keeper struct {
	g *Gateway
	// period is how often it looks: a quarter of the session timeout, so a
	// deadline it keeps never gets nearer than half the timeout.
	period time.Duration
	// renewAfter is how far a deadline may move past the one a session's
	// data was last renewed with before a pass renews it: half the store's
	// grace, so the data always outlives the deadline by half that grace.
	renewAfter time.Duration

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
	// renewed is the deadline the session's data was last renewed with
	// (its store keeps the data a grace past it).
	renewed time.Time
	// extra is how far past the session timeout its deadline is written:
	// the subscription's check interval (as its own touches did), at most
	// the session timeout.
	extra time.Duration
}

// touchBatch bounds the ids of one TouchMany call: a pipeline's memory and
// the time one call holds the memory store's lock.
const touchBatch = 1000

// graceTeller is a SessionStore that says how long it keeps a session's
// data past the deadline of its last renewal (see SessionStore.TouchMany).
type graceTeller interface{ dataGrace() time.Duration }

func newKeeper(g *Gateway) *keeper {
	grace := sessionGrace // a store that does not say (a wrapper): Redis's
	if gt, ok := g.cfg.Sessions.(graceTeller); ok {
		grace = gt.dataGrace()
	}
	return &keeper{
		g:          g,
		period:     max(g.cfg.SessionTimeout/4, time.Millisecond),
		renewAfter: grace / 2,
		subs:       make(map[*Subscription]keptSession),
		emptied:    make(chan struct{}, 1),
	}
}

// add keeps sub's session alive from now on; its deadline was just written
// as alive, with its data (Create or Touch).
func (k *keeper) add(sub *Subscription, alive time.Time, extra time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.subs[sub] = keptSession{id: sub.tok.SessionID, alive: alive, renewed: alive, extra: min(extra, k.g.cfg.SessionTimeout)}
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
// least half a session timeout away. The sessions whose data is due for
// renewal go in batches of their own, so the others' stay cheap.
func (k *keeper) pass(ctx context.Context, now time.Time) int {
	timeout := k.g.cfg.SessionTimeout
	k.mu.Lock()
	var moving, renewing []due
	for sub, ks := range k.subs {
		if ks.alive.Sub(now) <= timeout/2+k.period {
			d := due{sub, ks.id, now.Add(timeout + ks.extra)}
			// A period early: a batch writes its latest deadline, a
			// little later than d.until.
			if d.until.Sub(ks.renewed) >= k.renewAfter-k.period {
				renewing = append(renewing, d)
			} else {
				moving = append(moving, d)
			}
		}
	}
	k.mu.Unlock()
	return k.touchAll(ctx, moving, false) + k.touchAll(ctx, renewing, true)
}

// touchAll touches all in batches of touchBatch and returns how many
// deadlines it moved.
func (k *keeper) touchAll(ctx context.Context, all []due, renew bool) int {
	moved := 0
	for len(all) > 0 {
		n := min(len(all), touchBatch)
		batch := all[:n]
		all = all[n:]
		moved += k.touch(ctx, batch, renew)
	}
	return moved
}

// touch writes one batch of deadlines (the latest one for all: a few
// milliseconds apart at most), and with renew renews their data, and
// returns how many it moved.
func (k *keeper) touch(ctx context.Context, batch []due, renew bool) int {
	ids := make([]string, len(batch))
	until := batch[0].until
	for i, d := range batch {
		ids[i] = d.id
		until = maxTime(until, d.until)
	}
	ctx, cancel := context.WithTimeout(ctx, keeperTimeout)
	gone, err := k.g.cfg.Sessions.TouchMany(ctx, ids, until, renew)
	cancel()
	if err != nil {
		k.g.log.Warn("keeping sessions alive", "sessions", len(ids), "renew", renew, "err", err)
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
		if renew {
			ks.renewed = until
		}
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

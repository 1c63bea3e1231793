package gateway

import (
	"context"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// Subscription delivers a session's messages as they arrive, for a transport
// that holds one connection open and writes each delivery down it (SSE).
//
// It does what a loop of Poll calls does at a fraction of the cost per
// message: it keeps its wake-up registrations between deliveries, keeps the
// session it loaded until the session's mailbox says it changed (every join,
// leave, reply and end goes through the mailbox), and extends the session's
// deadline only when it has moved by half the session timeout, instead of at
// every delivery. A Subscription is used by one goroutine.
type Subscription struct {
	g   *Gateway
	tok SessionToken
	s   *Session
	// chTopics are s's channel topics, sorted, and chLogs their broker
	// topics (channelTopics(s), in the same order).
	chTopics, chLogs []string
	// reqs is collect's room for its read requests (an allocation per
	// delivery otherwise).
	reqs []topics.ReadRequest
	// timer times Next's waits; reused between them.
	timer *time.Timer

	// mailbox wakes on the session's own records: reload the session.
	mailbox *topics.Listener
	// channels wakes on the joined topics, listened as listened names.
	channels *topics.Listener
	listened []string
	// stale: the mailbox woke since the session was loaded.
	stale bool
	// woken: the channels woke since they were last read.
	woken bool
	// primed: a first read of everything was made.
	primed bool
	// more: the last read left records for the next (a read's limit).
	more bool

	// notify, for a SubscribeFunc subscription, is called on wake-ups;
	// mailboxWoke and channelsWoke record which.
	notify       func()
	mailboxWoke  atomic.Bool
	channelsWoke atomic.Bool
	// alive is the deadline last written to the store.
	alive time.Time
	// kept: the gateway's keeper keeps the session alive (a held stream).
	kept bool
	// acknowledges: the cursor it started from is one its client presented
	// as received (a long-poll's), so its first read drops the mailbox
	// records up to it (readFirst).
	acknowledges bool
}

// Subscribe starts delivering the session of tok after its cursor. It
// returns ErrNoSession when the session is gone. Close it when done.
func (g *Gateway) Subscribe(ctx context.Context, tok SessionToken) (*Subscription, error) {
	return g.subscribe(ctx, tok, subscribeOptions{})
}

// SubscribeFunc is Subscribe for a transport that holds no goroutine while
// a stream waits (an SSE connection parked outside net/http): instead of
// blocking in Next, it is told by wake that something may be ready, and
// then calls Ready. Until it is closed, the gateway keeps its session alive,
// with the other held subscriptions of this instance in batches (one store
// round trip for many sessions), a session timeout plus checkEvery (at most
// another session timeout) ahead: after this instance dies, the session
// ends within that. A session found gone wakes the subscription, whose
// Ready then returns ErrNoSession. wake runs on the publisher's goroutine,
// with the broker's hub locked: it must only schedule work and return.
func (g *Gateway) SubscribeFunc(ctx context.Context, tok SessionToken, checkEvery time.Duration, wake func()) (*Subscription, error) {
	return g.subscribe(ctx, tok, subscribeOptions{extra: checkEvery, notify: wake, kept: true})
}

// SubscribeOpened is SubscribeFunc (Subscribe if wake is nil) for the
// session ConnectAndHandle just made, in one store round trip less: it
// starts from the session as saved and the deadline it was created with,
// instead of touching and loading it (nobody else could change it before
// its client had its id). Use it once per Opened, for the stream that hands
// the id out; a zero Opened.session falls back to Subscribe(Func).
func (g *Gateway) SubscribeOpened(ctx context.Context, o Opened, checkEvery time.Duration, wake func()) (*Subscription, error) {
	if wake == nil {
		checkEvery = 0
	}
	var s *Session
	if o.session != nil {
		s = o.session.clone() // the subscription's own: o may be copied
	}
	return g.subscribe(ctx, o.Token, subscribeOptions{extra: checkEvery, notify: wake, kept: wake != nil, fresh: s, alive: o.alive})
}

// subscribeOptions says how subscribe starts a subscription.
type subscribeOptions struct {
	// extra is how long past the session timeout the session is kept alive.
	extra time.Duration
	// notify, if set, makes it a SubscribeFunc or PollFunc subscription.
	notify func()
	// kept: the keeper keeps the session alive from then on (a held
	// stream's); without, the deadline written now is all it gets (a poll's).
	kept bool
	// fresh, if set, is a session ConnectAndHandle just saved
	// (SubscribeOpened), adopted as it is, alive until alive, instead of
	// being touched and loaded.
	fresh *Session
	alive time.Time
}

// subscribe starts a subscription as o says.
func (g *Gateway) subscribe(ctx context.Context, tok SessionToken, o subscribeOptions) (*Subscription, error) {
	// Deliveries carry public tokens (SSE event ids): a transport that hands
	// out credentials adds the key itself (WithKey).
	tok.Key = ""
	sub := &Subscription{g: g, tok: tok}
	// Listen first, then load: nothing that happens in between is missed.
	sub.mailbox = g.cfg.Broker.Listen(mailboxTopic(tok.SessionID))
	if o.notify != nil {
		sub.notify = o.notify
		sub.mailbox.Notify(func() {
			sub.mailboxWoke.Store(true)
			sub.notify()
		})
	}
	if o.fresh != nil {
		sub.alive = o.alive
		sub.setSession(o.fresh)
	} else if err := sub.touch(ctx, time.Now().Add(g.cfg.SessionTimeout+o.extra)); err != nil {
		sub.release()
		return nil, err
	}
	if err := checkUser(ctx, sub.s); err != nil {
		sub.release()
		return nil, err
	}
	if o.kept {
		sub.kept = true
		g.keeper.add(sub, sub.alive, o.extra)
	}
	return sub, nil
}

// Token acknowledges everything delivered so far.
func (sub *Subscription) Token() SessionToken { return sub.tok }

// Close releases the subscription. The session stays, for the session
// timeout from now, so that its client can resume.
func (sub *Subscription) Close() {
	sub.release()
	// Give the session only the timeout from now, not from the end of a
	// wait its client gave up (TouchMany: a touch without loading it).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, _ = sub.g.cfg.Sessions.TouchMany(ctx, []string{sub.tok.SessionID}, time.Now().Add(sub.g.cfg.SessionTimeout), true)
	cancel()
}

// End releases the subscription and ends its session at once (see
// Gateway.EndSession), for a transport whose connection is the session.
func (sub *Subscription) End(ctx context.Context, reason string) (bool, error) {
	sub.release()
	return sub.g.EndSession(ctx, sub.tok.SessionID, reason)
}

// release stops the wake-ups and the keeping alive.
func (sub *Subscription) release() {
	if sub.kept {
		sub.g.keeper.remove(sub)
	}
	sub.mailbox.Close()
	if sub.channels != nil {
		sub.channels.Close()
	}
}

// touch extends the session's deadline to until and reloads it.
func (sub *Subscription) touch(ctx context.Context, until time.Time) error {
	s, err := sub.g.cfg.Sessions.Touch(ctx, sub.tok.SessionID, until)
	if err != nil {
		return err
	}
	sub.alive = until
	sub.setSession(s)
	return nil
}

// keepAlive keeps the session alive past a wait: it writes a new deadline
// only when that moved by half the session timeout, not at every delivery,
// and reports whether it did (which reloaded the session).
func (sub *Subscription) keepAlive(ctx context.Context, wait time.Duration) (bool, error) {
	timeout := sub.g.cfg.SessionTimeout
	until := time.Now().Add(wait + timeout)
	if until.Sub(sub.alive) <= timeout/2 {
		return false, nil
	}
	return true, sub.touch(ctx, until)
}

// setSession adopts s, listening on the topics it has joined.
func (sub *Subscription) setSession(s *Session) {
	sub.s, sub.stale = s, false
	sub.chTopics = slices.Sorted(maps.Keys(s.Channels))
	want := channelTopics(s)
	sub.chLogs = want
	if sub.channels != nil && slices.Equal(want, sub.listened) {
		return
	}
	// The new registration is made before the old one goes, and the caller
	// collects after this, so a publish in between is not missed.
	old := sub.channels
	sub.channels, sub.listened = sub.g.cfg.Broker.Listen(want...), want
	if sub.notify != nil {
		sub.channels.Notify(func() {
			sub.channelsWoke.Store(true)
			sub.notify()
		})
	}
	if old != nil {
		old.Close()
	}
}

// Next returns the next frames, waiting up to wait for some to arrive; with
// none, an empty Delivery. It returns at once, with nothing, when the
// instance starts draining. The Subscription acknowledges what it returns:
// the next call continues after it.
func (sub *Subscription) Next(ctx context.Context, wait time.Duration) (*Delivery, error) {
	g := sub.g
	if _, err := sub.keepAlive(ctx, wait); err != nil {
		return nil, err
	}
	var timer <-chan time.Time
	defer func() {
		if timer != nil {
			sub.timer.Stop()
		}
	}()
	for {
		// A mailbox record (a reply to a join or leave, a session end) is
		// published before what it causes on the channels' topics: look at
		// it first, so a channel's wake-up is read with the session as
		// changed, as Poll reads it.
		select {
		case <-sub.mailbox.C:
			sub.stale = true
		default:
		}
		select {
		case <-sub.channels.C:
			sub.woken = true
		default:
		}
		if mode, ok := sub.nextRead(); ok {
			d, err := sub.read(ctx, mode)
			if err != nil {
				return nil, err
			}
			if len(d.Frames) > 0 {
				return d, nil
			}
			continue // d.truncated with nothing for this client: read on
		}
		if timer == nil {
			if sub.timer == nil {
				sub.timer = time.NewTimer(wait)
			} else {
				sub.timer.Reset(wait) // Go 1.23 timers: no stale value to drain
			}
			timer = sub.timer.C
		}
		select {
		case <-sub.mailbox.C:
			sub.stale = true
		case <-sub.channels.C:
			sub.woken = true
		case <-g.draining:
			return &Delivery{Token: sub.tok}, nil
		case <-timer:
			// Nothing woke it. A wake-up from another instance lost with a
			// pub/sub connection is made up for by the broker, which wakes
			// every listener once subscribed again (and a poll's next
			// request starts with a read of everything).
			return &Delivery{Token: sub.tok}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Ready returns what is ready for a SubscribeFunc subscription now, without
// waiting: after a wake-up, the frames it announced (or an empty Delivery
// if they were not for this client). It acknowledges what it returns. When
// a read was cut at its limit, it calls wake again for the rest.
func (sub *Subscription) Ready(ctx context.Context) (*Delivery, error) {
	// The mailbox first (see Next).
	if sub.mailboxWoke.Swap(false) {
		sub.stale = true
	}
	if sub.channelsWoke.Swap(false) {
		sub.woken = true
	}
	for {
		mode, ok := sub.nextRead()
		if !ok {
			return &Delivery{Token: sub.tok}, nil
		}
		d, err := sub.read(ctx, mode)
		if err != nil {
			return nil, err
		}
		if len(d.Frames) > 0 {
			if sub.more {
				sub.notify()
			}
			return d, nil
		}
		if !sub.more {
			return d, nil
		}
	}
}

// nextRead says what to read now, if anything: everything on the first
// read, after the mailbox woke and when the last read stopped at its limit;
// the channels only (as Recent) when only they woke. Woken by its channels
// only, a subscription leaves its mailbox: a remote broker then answers
// every local subscriber of a broadcast from one read.
func (sub *Subscription) nextRead() (readMode, bool) {
	switch {
	case !sub.primed && sub.acknowledges:
		return readFirst, true
	case !sub.primed || sub.stale || sub.more:
		return readAll, true
	case sub.woken:
		return readWoken, true
	}
	return readAll, false
}

// read reloads the session if its mailbox woke, collects in mode, and
// acknowledges what it read (the token also covers records read but not for
// this client).
//
// After an error nothing is acknowledged and the next read is of everything
// with a fresh session, so a caller may simply try again later: what the
// wake-ups announced is not lost with the failed read.
func (sub *Subscription) read(ctx context.Context, mode readMode) (*Delivery, error) {
	if sub.stale {
		s, err := sub.g.cfg.Sessions.Load(ctx, sub.tok.SessionID)
		if err != nil {
			return nil, err
		}
		sub.setSession(s)
	}
	if cap(sub.reqs) < 1+len(sub.chTopics) {
		sub.reqs = make([]topics.ReadRequest, 0, 1+len(sub.chTopics))
	}
	d, err := sub.g.collect(ctx, sub.s, sub.chTopics, sub.chLogs, sub.tok.Cursor, mode, sub.reqs)
	if err != nil {
		sub.stale = true // the mailbox may have been skipped: read it too
		return nil, err
	}
	sub.primed, sub.woken, sub.more = true, false, d.truncated
	sub.tok = d.Token
	return d, nil
}

// Check is the periodic look of a SubscribeFunc subscription, which its
// transport may make at each heartbeat. It costs the store nothing, and
// finds nothing: the gateway keeps the session alive in batches (and wakes
// the subscription if it finds the session gone), and a wake-up that a
// remote broker lost is made up for by that broker, which wakes every
// listener once it hears again (topics.RedisBroker.Run), so the woken
// subscription reads the store then. It returns an empty Delivery.
func (sub *Subscription) Check(ctx context.Context, wait time.Duration) (*Delivery, error) {
	return &Delivery{Token: sub.tok}, nil
}

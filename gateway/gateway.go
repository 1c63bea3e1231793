package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// Config wires a Gateway.
type Config struct {
	// Router maps topic patterns to channel handlers.
	Router *topics.Router[Handler]
	// Authenticate verifies a connecting client (see TokenAuthenticator).
	Authenticate Authenticator
	// SessionSecret signs session keys (see SessionKey): every instance
	// sharing a store must have the same. Use the token secret. Empty: a
	// random one, for a single instance.
	SessionSecret []byte
	// Sessions, Presence and Broker hold the shared state.
	Sessions SessionStore
	Presence PresenceStore
	Broker   topics.Broker
	// SessionTimeout is how long a session lives after its client's last
	// request ended; a poll in progress keeps it alive. Default 15s.
	SessionTimeout time.Duration
	// MaxChannels is the number of channels one session may join (Phoenix's
	// max_channels_per_transport). Default 100.
	MaxChannels int
	// MaxPollMessages bounds the frames returned by one poll; the rest wait
	// for the next. Default 1000.
	MaxPollMessages int
	// MaxPayloadBytes bounds one message's payload; a batch holding a larger
	// one is refused whole with ErrPayloadTooLarge. Default 64 KiB.
	MaxPayloadBytes int
	// MaxSessionsPerUser bounds the live sessions of one socket id (tabs,
	// devices); Connect refuses more with ErrTooManySessions. 0: no limit.
	MaxSessionsPerUser int
	// PostRate bounds the requests per second one session may send to this
	// instance (a token bucket of PostBurst); Handle refuses the excess with
	// ErrRateLimited. 0: no limit.
	PostRate  float64
	PostBurst int
	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger
	// Observer is told what happens, for metrics. Default: nothing.
	Observer Observer
}

// Gateway is the channel core. It is safe for concurrent use; it keeps no
// per-session state of its own, so several Gateways (one per instance) can
// share the same stores.
type Gateway struct {
	cfg Config
	log *slog.Logger
	// draining is closed by Drain.
	draining  chan struct{}
	drainOnce sync.Once
	drainMu   sync.Mutex
	onDrain   []func()
	limiter   *postLimiter
	// records shares decoded broadcast records and their frames between
	// this instance's subscribers.
	records *recordCache
	keys    sessionKeys
	// keeper keeps the sessions of held subscriptions alive.
	keeper *keeper
	// createHead, set when the sessions and the broker share one Redis
	// client, creates a session and reads its mailbox's head in one round
	// trip.
	createHead func(ctx context.Context, s *Session, deadline time.Time, maxPerSocket int, topic string) (uint64, error)
}

// ConnectInfo is what a transport knows about a connecting client.
type ConnectInfo struct {
	// Params are the connect request's query parameters.
	Params url.Values
	// Token is the user token (from the `token` param or X-Phoenix-AuthToken).
	Token string
	// Vsn is the requested protocol version.
	Vsn string
}

// Identity is an authenticated user.
type Identity struct {
	// UserID is the id as the token carried it: a JSON number or string.
	UserID json.RawMessage
	// Name is the display name, if the token had one.
	Name string
}

// Authenticator verifies a connecting client, like a Phoenix socket's
// connect/3. An error refuses the connection.
type Authenticator func(ctx context.Context, info ConnectInfo) (Identity, error)

// ErrUnauthorized is returned by Connect when the Authenticator refuses.
var ErrUnauthorized = errors.New("unauthorized")

// ErrPayloadTooLarge is wrapped by the BatchError of a batch holding a
// message whose payload is over Config.MaxPayloadBytes.
var ErrPayloadTooLarge = errors.New("payload too large")

// ErrTooManySessions is returned by Connect for a user who already has
// Config.MaxSessionsPerUser live sessions (and by SessionStore.Create).
var ErrTooManySessions = errors.New("too many sessions for this user")

// tooManySessions is a SessionStore's refusal of a Create over its limit.
func tooManySessions(socketID string, live, limit int) error {
	return fmt.Errorf("%w: %s has %d live sessions, the limit is %d", ErrTooManySessions, socketID, live, limit)
}

// ErrDraining is returned by Connect once the instance is draining: the
// client should connect to another instance.
var ErrDraining = errors.New("this instance is shutting down; connect again")

// Drain starts a graceful shutdown of this instance: new sessions are
// refused with ErrDraining, and waiting polls return at once (empty), so
// that clients continue on other instances. Sessions themselves live on in
// the shared store. Safe to call more than once.
func (g *Gateway) Drain() {
	g.drainOnce.Do(func() {
		g.drainMu.Lock()
		close(g.draining)
		fns := g.onDrain
		g.onDrain = nil
		g.drainMu.Unlock()
		for _, f := range fns {
			go f()
		}
	})
}

// OnDrain arranges for f to run, in its own goroutine, when Drain is called
// (at once if it was): for waiters that hold no goroutine to watch Draining.
func (g *Gateway) OnDrain(f func()) {
	g.drainMu.Lock()
	defer g.drainMu.Unlock()
	select {
	case <-g.draining:
		go f()
	default:
		g.onDrain = append(g.onDrain, f)
	}
}

// Draining is closed when Drain is called; streams end when it is.
func (g *Gateway) Draining() <-chan struct{} { return g.draining }

// New returns a Gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	if cfg.Router == nil || cfg.Authenticate == nil || cfg.Sessions == nil || cfg.Presence == nil || cfg.Broker == nil {
		return nil, errors.New("gateway: Router, Authenticate, Sessions, Presence and Broker are required")
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 15 * time.Second
	}
	if cfg.MaxChannels <= 0 {
		cfg.MaxChannels = 100
	}
	if cfg.MaxPollMessages <= 0 {
		cfg.MaxPollMessages = 1000
	}
	if cfg.MaxPayloadBytes <= 0 {
		cfg.MaxPayloadBytes = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Observer == nil {
		cfg.Observer = NopObserver{}
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger, draining: make(chan struct{}), limiter: newPostLimiter(cfg.PostRate, cfg.PostBurst), records: newRecordCache(), keys: newSessionKeys(cfg.SessionSecret)}
	g.keeper = newKeeper(g)
	if rs, ok := cfg.Sessions.(*RedisStore); ok {
		if rb, ok := cfg.Broker.(*topics.RedisBroker); ok && rb.Client() == rs.rdb {
			g.createHead = func(ctx context.Context, s *Session, deadline time.Time, maxPerSocket int, topic string) (uint64, error) {
				return rs.createWithHead(ctx, s, deadline, maxPerSocket, rb, topic)
			}
		}
	}
	return g, nil
}

// SessionTimeout returns the configured session timeout.
func (g *Gateway) SessionTimeout() time.Duration { return g.cfg.SessionTimeout }

// Connect authenticates a client and creates its session. It returns the
// token the client resumes the session with.
func (g *Gateway) Connect(ctx context.Context, info ConnectInfo) (SessionToken, error) {
	o, err := g.connect(ctx, info)
	return o.Token, err
}

// ConnectAndHandle is Connect, then Handle of frames on the new session (an
// SSE connect's ?join=), in fewer store round trips: nobody else can know a
// session whose id has not been handed out yet, so the frames are applied
// to the session just created, without loading or locking it again, and it
// is saved once, after their records are published. The frames are decoded
// before the session is made: if one is malformed, no session is made and
// a *BatchError says which.
//
// If publishing or the save fails it returns the error (a transport answers
// 503): the client never learned the session, which expires, and its
// records are published no more than Handle would. If a join fails only
// because the broker could not be read (slow or down), it fails too,
// with that error, rather than hand out a session whose join said "join
// crashed": the transport answers 503 and the client retries. With no
// frames it is Connect, returning the session made for SubscribeOpened.
func (g *Gateway) ConnectAndHandle(ctx context.Context, info ConnectInfo, frames [][]byte) (Opened, error) {
	select {
	case <-g.draining:
		return Opened{}, ErrDraining // before anything else, as Connect
	default:
	}
	ser, err := SerializerFor(info.Vsn)
	if err != nil {
		return Opened{}, err
	}
	msgs, err := g.decodeBatch(ser, frames)
	if err != nil {
		return Opened{}, err
	}
	opened, err := g.connect(ctx, info)
	if err != nil || len(msgs) == 0 {
		return opened, err
	}
	s := opened.session
	// As Handle: the batch counts against the session's post rate (a new
	// session's limiter always allows its first batch).
	g.limiter.allow(s.ID, time.Now())
	// Applied whole even if the client goes away, as Handle does.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockWait)
	defer cancel()
	fx := g.applyBatch(ctx, s, msgs)
	// No outbox is saved before publishing: no request of this session can
	// come before the client has its id, so none could publish it.
	n, perr := publishRecords(ctx, g.cfg.Broker, fx.items)
	s.Outbox = nil
	if n < len(fx.items) {
		s.Outbox = slices.Clip(fx.items[n:])
	}
	fx.items = s.Outbox // what an ended session's untrack must still publish
	if err := g.saveBatch(ctx, s, fx); err != nil {
		return Opened{}, err
	}
	if perr != nil {
		return Opened{}, fmt.Errorf("publish what the session sent: %w", perr)
	}
	if fx.storeErr != nil {
		// A join failed only because the store was slow or down: fail the
		// connect, retryably, rather than hand out a session whose join
		// said "join crashed". The session (saved with what else it
		// joined, so that its expiry would end that too) ends now if the
		// store lets it; its client never learned it.
		if _, err := g.EndSession(ctx, s.ID, "closed"); err != nil {
			g.log.Warn("connect: end a session whose join failed", "session", LogSession(s.ID), "err", err)
		}
		return Opened{}, fx.storeErr
	}
	return opened, nil
}

// Opened is a session ConnectAndHandle made: its token, and the session as
// saved, from which the first subscription of its transport starts without
// reading it back from the store (SubscribeOpened).
type Opened struct {
	// Token is the session's, as Connect returns it.
	Token SessionToken
	// session is as saved; alive, the deadline it was created with.
	session *Session
	alive   time.Time
}

// connect is Connect; it also returns the session it created.
func (g *Gateway) connect(ctx context.Context, info ConnectInfo) (Opened, error) {
	select {
	case <-g.draining:
		return Opened{}, ErrDraining
	default:
	}
	ser, err := SerializerFor(info.Vsn)
	if err != nil {
		return Opened{}, err
	}
	id, err := g.cfg.Authenticate(ctx, info)
	if err != nil {
		return Opened{}, fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	s := &Session{ID: newSessionID(), UserID: id.UserID, Name: id.Name, Vsn: ser.Vsn(), CreatedAt: time.Now().UTC()}
	// The store checks the per-user limit atomically with the insertion:
	// a count read before creating would let parallel connects all pass.
	deadline := time.Now().Add(g.cfg.SessionTimeout)
	var head uint64
	if g.createHead != nil {
		// One round trip for both: nobody can publish to the mailbox of
		// an id not handed out yet, so its head may be read with the
		// creation.
		head, err = g.createHead(ctx, s, deadline, g.cfg.MaxSessionsPerUser, mailboxTopic(s.ID))
	} else if head, err = g.cfg.Broker.Head(ctx, mailboxTopic(s.ID)); err == nil {
		err = g.cfg.Sessions.Create(ctx, s, deadline, g.cfg.MaxSessionsPerUser)
	}
	if err != nil {
		if errors.Is(err, ErrTooManySessions) {
			return Opened{}, err
		}
		return Opened{}, fmt.Errorf("create session: %w", err)
	}
	g.log.Debug("session created", "session", LogSession(s.ID), "socket_id", s.SocketID(), "vsn", s.Vsn)
	g.cfg.Observer.SessionStarted()
	return Opened{Token: SessionToken{SessionID: s.ID, Cursor: Cursor{Mailbox: head}}, session: s, alive: deadline}, nil
}

// BatchError reports which frame of a batch could not be decoded. Nothing of
// the batch was applied.
type BatchError struct {
	Index int // 0-based
	Err   error
}

func (e *BatchError) Error() string { return fmt.Sprintf("frame %d: %v", e.Index+1, e.Err) }
func (e *BatchError) Unwrap() error { return e.Err }

// Handle applies the frames a client sent for its session, in order. Every
// frame is decoded first: if one is malformed, nothing is applied and a
// *BatchError says which. Replies and pushes go to the session's mailbox, to
// be delivered by its next poll or stream.
//
// A batch is applied exactly once, even when its request fails and is
// retried: its messages' refs are recorded as handled in the same Save as
// the state its handlers changed and the records it sends (Session.Outbox);
// the records are then published and the outbox cleared. If publishing
// fails, Handle returns the error (a transport answers 503, retry) and the
// records stay in the outbox: the retry finds its messages already handled
// and publishes the outbox instead, so its replies come after all; any other
// request of the session (and its end) publishes them first too, so records
// keep their order. A record is published twice only if the broker failed
// after taking it and before saying so (a timeout), or if the session could
// not be saved between a partial publish and the retry: phoenix.js ignores a
// reply to a ref it has already settled, a repeated broadcast is seen again.
// Refusing that would take an idempotent publish in the broker. What the
// handlers do outside the session (a presence, an application's database)
// is not part of the Save: if the Save itself fails, the retry runs them
// again.
func (g *Gateway) Handle(ctx context.Context, sessionID string, frames [][]byte) error {
	// A malformed id names no session: it costs no store round trip, and no
	// limiter state is ever kept for it.
	if !validSessionID(sessionID) {
		return ErrNoSession
	}
	// A session over its rate is refused before its lock, so that a flood
	// (from a holder of its credential) neither waits for the lock nor
	// holds up the session's own requests behind it. This spends no token:
	// the request that passes spends one below, after the user check.
	if g.limiter.spent(sessionID, time.Now()) {
		return ErrRateLimited
	}
	// The session is read under its lock, in the same round trip: the
	// batch must see what an earlier request of the session saved. The
	// checks below that refuse a request (another user's session, over
	// the rate, a malformed batch) release the lock having applied
	// nothing; they are rare, and reading the session once before locking
	// would cost every batch a round trip more.
	lctx, cancel := context.WithTimeout(ctx, lockWait)
	unlock, saveUnlock, s, err := g.lockLoad(lctx, sessionID)
	cancel()
	if err != nil {
		return err
	}
	defer unlock()
	if err := checkUser(ctx, s); err != nil {
		return err
	}
	// After the LockLoad: only sessions that exist get a rate limiter.
	if !g.limiter.allow(sessionID, time.Now()) {
		return ErrRateLimited
	}
	ser, err := SerializerFor(s.Vsn)
	if err != nil {
		return err
	}
	msgs, err := g.decodeBatch(ser, frames)
	if err != nil {
		return err
	}
	// Once started, a batch is applied whole even if the client gives up on
	// its request: stopping half way would record its refs as handled (so a
	// retry is dropped as a duplicate) without delivering their replies.
	ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), lockWait)
	defer cancel()
	// An earlier batch was applied but not all it sent was published (its
	// request failed): publish that first, before anything this batch sends.
	if err := g.publishOutbox(ctx, s, nil); err != nil {
		return err
	}
	fx := g.applyBatch(ctx, s, msgs)
	s.Outbox = fx.items
	if err := g.saveBatch(ctx, s, fx); err != nil {
		return err
	}
	// The save that clears the outbox also releases the lock, when the
	// store can do both in one round trip.
	return g.publishOutbox(ctx, s, saveUnlock)
}

// lockLoad is Sessions.LockLoad. saveUnlock, when the store can, saves a
// session and releases the lock in one round trip (unlock then does
// nothing); else it is nil.
func (g *Gateway) lockLoad(ctx context.Context, id string) (unlock func(), saveUnlock func(context.Context, *Session) error, s *Session, err error) {
	if ls, ok := g.cfg.Sessions.(lockSaver); ok {
		return ls.lockLoadSave(ctx, id)
	}
	unlock, s, err = g.cfg.Sessions.LockLoad(ctx, id)
	return unlock, nil, s, err
}

// lockSaver is a SessionStore whose LockLoad can also hand out a save that
// releases the lock in the same round trip (RedisStore).
type lockSaver interface {
	lockLoadSave(ctx context.Context, id string) (unlock func(), saveUnlock func(context.Context, *Session) error, s *Session, err error)
}

// decodeBatch decodes a batch of frames, refusing it whole (a *BatchError)
// if one is malformed or over the payload limit.
func (g *Gateway) decodeBatch(ser Serializer, frames [][]byte) ([]*Message, error) {
	msgs := make([]*Message, len(frames))
	for i, f := range frames {
		m, err := ser.Decode(f)
		if err != nil {
			return nil, &BatchError{Index: i, Err: err}
		}
		if n := len(m.Payload); n > g.cfg.MaxPayloadBytes {
			return nil, &BatchError{Index: i, Err: fmt.Errorf("%w: %d bytes, the limit is %d", ErrPayloadTooLarge, n, g.cfg.MaxPayloadBytes)}
		}
		msgs[i] = m
	}
	return msgs, nil
}

// applyBatch dispatches msgs on s, skipping those already handled, and
// returns what they sent. The caller holds s's lock, or s is not known to
// anyone else yet.
func (g *Gateway) applyBatch(ctx context.Context, s *Session, msgs []*Message) *effects {
	fx := &effects{}
	for _, m := range msgs {
		if m.Ref != nil && s.rememberRef(m.Topic+"\x00"+*m.Ref, 2*g.cfg.MaxChannels+100) {
			g.log.Debug("duplicate message ignored", "session", LogSession(s.ID), "topic", clip(m.Topic), "event", clip(m.Event), "ref", clip(*m.Ref))
			continue
		}
		g.dispatch(ctx, s, m, fx)
	}
	if s.assigned && !fx.mailboxed(s.ID) {
		// Subscriptions keep the session they loaded until its mailbox
		// wakes them; an assign with no reply must wake them too, or an
		// interceptor would see the old assigns.
		fx.mailbox(s.ID, &Message{Topic: TopicPhoenix, Event: eventSessionChanged, Payload: emptyObject})
	}
	return fx
}

// saveBatch saves s after a batch was applied to it. If the session ended
// meanwhile (its lock expired), it takes back the presences the batch
// tracked, and returns ErrNoSession.
func (g *Gateway) saveBatch(ctx context.Context, s *Session, fx *effects) error {
	err := g.cfg.Sessions.Save(ctx, s)
	if errors.Is(err, ErrNoSession) {
		for _, ch := range s.Channels {
			g.endChannel(g.context(ctx, s, ch, fx), "expired", false)
		}
		if ferr := fx.flush(ctx, g); ferr != nil {
			g.log.Error("untrack after session ended", "session", LogSession(s.ID), "err", ferr)
		}
	}
	return err
}

// publishOutbox publishes the session's saved Outbox, in order, and saves
// the session with it cleared. If publishing fails part way, it saves what is
// left (best effort: the store may be failing too) so that the next attempt
// does not publish again the records known published, and returns the error.
// The caller holds the session's lock. save, if not nil, is the save that
// clears the outbox once everything is published (one that also releases
// the lock); else Sessions.Save.
func (g *Gateway) publishOutbox(ctx context.Context, s *Session, save func(context.Context, *Session) error) error {
	if len(s.Outbox) == 0 {
		return nil
	}
	n, err := publishRecords(ctx, g.cfg.Broker, s.Outbox)
	pending := len(s.Outbox) - n
	s.Outbox = slices.Clip(s.Outbox[n:])
	if len(s.Outbox) == 0 {
		s.Outbox = nil
	}
	if err != nil {
		if n > 0 {
			if serr := g.cfg.Sessions.Save(ctx, s); serr != nil {
				g.log.Warn("outbox: record a partial publish", "session", LogSession(s.ID), "published", n, "pending", pending, "err", serr)
			}
		}
		return fmt.Errorf("publish what the session sent: %w", err)
	}
	if save == nil {
		save = g.cfg.Sessions.Save
	}
	if err := save(ctx, s); err != nil && !errors.Is(err, ErrNoSession) {
		// Everything is published, so the batch succeeded; only its
		// outbox is still listed, and will be published again.
		g.log.Warn("outbox: published but not cleared", "session", LogSession(s.ID), "records", n, "err", err)
	}
	return nil
}

// dispatch routes one client message as Phoenix's socket does (see
// docs/protocol.md, "Channels").
func (g *Gateway) dispatch(ctx context.Context, s *Session, m *Message, fx *effects) {
	reply := func(joinRef *string, status string, response any) {
		p, _ := marshalPayload(response)
		fx.mailbox(s.ID, &Message{JoinRef: joinRef, Ref: m.Ref, Topic: m.Topic, Event: EventReply, Payload: replyPayload(status, p)})
	}
	if m.Topic == TopicPhoenix && m.Event == EventHeartbeat {
		reply(nil, "ok", nil)
		return
	}
	ch := s.Channels[m.Topic]
	switch {
	case m.Event == EventJoin:
		g.join(ctx, s, m, fx, reply)
	case ch == nil && m.Event == EventLeave:
		reply(m.JoinRef, "ok", nil)
	case ch == nil:
		reply(nil, "error", map[string]string{"reason": "unmatched topic"})
	case m.JoinRef != nil && !sameRef(m.JoinRef, ch.JoinRef):
		// A message for an earlier join of this topic: dropped, as Phoenix does.
		g.log.Debug("stale join_ref dropped", "session", LogSession(s.ID), "topic", clip(m.Topic), "event", clip(m.Event), "join_ref", clip(refString(m.JoinRef)))
	case m.Event == EventLeave:
		reply(ch.JoinRef, "ok", nil)
		g.endChannel(g.context(ctx, s, ch, fx), "left", true)
	default:
		g.handleIn(g.context(ctx, s, ch, fx), m, reply)
	}
}

func (g *Gateway) context(ctx context.Context, s *Session, ch *ChannelState, fx *effects) *Context {
	h, _, _ := g.cfg.Router.Match(ch.Topic)
	return &Context{ctx: ctx, gw: g, session: s, channel: ch, handler: h, fx: fx}
}

func (g *Gateway) join(ctx context.Context, s *Session, m *Message, fx *effects, reply func(*string, string, any)) {
	h, pattern, ok := g.cfg.Router.Match(m.Topic)
	if !ok {
		g.log.Warn("join of unmatched topic", "session", LogSession(s.ID), "topic", clip(m.Topic))
		g.cfg.Observer.Joined("", "unmatched")
		reply(nil, "error", map[string]string{"reason": "unmatched topic"})
		return
	}
	old := s.Channels[m.Topic]
	if old == nil && len(s.Channels) >= g.cfg.MaxChannels {
		g.log.Error("too many channels joined", "session", LogSession(s.ID), "topic", clip(m.Topic), "limit", g.cfg.MaxChannels)
		g.cfg.Observer.Joined(pattern, "limit")
		reply(m.JoinRef, "error", map[string]string{"reason": "too many channels joined"})
		return
	}
	joinRef := m.JoinRef
	if joinRef == nil {
		joinRef = m.Ref // as Phoenix: the join's ref stands in for a V1 client's join_ref
	}
	ch := &ChannelState{Topic: m.Topic, JoinRef: joinRef, Slot: s.NextSlot}
	c := &Context{ctx: ctx, gw: g, session: s, channel: ch, handler: h, fx: fx}
	var r Reply
	if crashed := g.protect(c, "join", func() { r = h.Join(c, m.Payload) }); crashed {
		g.cfg.Observer.Joined(pattern, "crashed")
		reply(m.JoinRef, "error", map[string]string{"reason": "join crashed"})
		return
	}
	if r.status != "ok" {
		g.cfg.Observer.Joined(pattern, "error")
		if r.status == "" {
			r = Error(map[string]string{"reason": "join refused"})
		}
		p, _ := marshalPayload(r.response)
		reply(m.JoinRef, r.status, p)
		return
	}
	head, err := g.cfg.Broker.Head(ctx, channelTopic(m.Topic))
	if err != nil {
		g.log.Error("join: read topic head", "session", LogSession(s.ID), "topic", m.Topic, "err", err)
		fx.storeFailed(fmt.Errorf("join %s: read the channel's head: %w", clip(m.Topic), err))
		reply(m.JoinRef, "error", map[string]string{"reason": "join crashed"})
		return
	}
	g.cfg.Observer.Joined(pattern, "ok")
	ch.Since = head
	s.NextSlot++
	if s.Channels == nil {
		s.Channels = make(map[string]*ChannelState)
	}
	s.Channels[m.Topic] = ch
	p, _ := marshalPayload(r.response)
	reply(m.JoinRef, "ok", p)
	if old != nil {
		// Duplicate join: the new join's reply first, then the old channel's
		// phx_close, which the client discards by its stale join_ref.
		g.endChannel(&Context{ctx: ctx, gw: g, session: s, channel: old, handler: h, fx: fx}, "duplicate_join", true)
	}
	if r.stop {
		g.endChannel(c, "closed", true)
		return
	}
	if aj, ok := h.(AfterJoiner); ok {
		var err error
		if g.protect(c, "after_join", func() { err = aj.AfterJoin(c) }) || err != nil {
			if err != nil {
				g.log.Error("after_join failed", "session", LogSession(s.ID), "topic", m.Topic, "err", err)
			}
			g.crash(c)
		}
	}
}

func (g *Gateway) handleIn(c *Context, m *Message, reply func(*string, string, any)) {
	var r Reply
	if g.protect(c, m.Event, func() { r = c.handler.HandleIn(c, m.Event, m.Payload) }) {
		g.crash(c)
		return
	}
	if r.status != "" {
		p, _ := marshalPayload(r.response)
		reply(c.channel.JoinRef, r.status, p)
	}
	if r.stop {
		g.endChannel(c, "closed", true)
	}
}

// protect runs f and reports whether it panicked, logging the panic: a
// handler's crash ends its channel, never the process.
func (g *Gateway) protect(c *Context, what string, f func()) (crashed bool) {
	defer func() {
		if v := recover(); v != nil {
			crashed = true
			g.log.Error("channel crashed", "session", LogSession(c.session.ID), "topic", c.channel.Topic, "in", what, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	f()
	return false
}

// crash ends a channel whose handler failed: the client gets phx_error and
// rejoins, as with a crashed Phoenix channel process.
func (g *Gateway) crash(c *Context) {
	jr := c.channel.JoinRef
	c.fx.mailbox(c.session.ID, &Message{JoinRef: jr, Ref: jr, Topic: c.channel.Topic, Event: EventError, Payload: json.RawMessage(`{"reason":"channel_crash"}`)})
	g.endChannel(c, "crashed", false)
}

// endChannel removes a channel from its session, untracks its presence and
// tells the handler. With notify the client gets phx_close (ref = join_ref).
func (g *Gateway) endChannel(c *Context, reason string, notify bool) {
	if cur := c.session.Channels[c.channel.Topic]; cur == c.channel {
		delete(c.session.Channels, c.channel.Topic)
	}
	if notify {
		jr := c.channel.JoinRef
		c.fx.mailbox(c.session.ID, &Message{JoinRef: jr, Ref: jr, Topic: c.channel.Topic, Event: EventClose, Payload: emptyObject})
	}
	if err := g.untrackChannel(c); err != nil {
		g.log.Error("untrack presence", "session", LogSession(c.session.ID), "topic", c.channel.Topic, "err", err)
	}
	if t, ok := c.handler.(Terminator); ok {
		g.protect(c, "terminate", func() { t.Terminate(c, reason) })
	}
}

// Broadcast sends event to every subscriber of topic, like Phoenix's
// Endpoint.broadcast/3. Interceptors apply per subscriber.
func (g *Gateway) Broadcast(ctx context.Context, topic, event string, payload any) error {
	p, err := marshalPayload(payload)
	if err != nil {
		return fmt.Errorf("broadcast %s: %w", event, err)
	}
	return g.publish(ctx, topic, event, p, "")
}

func (g *Gateway) publish(ctx context.Context, topic, event string, payload json.RawMessage, from string) error {
	fx := &effects{}
	fx.topic(topic, event, payload, from)
	return fx.flush(ctx, g)
}

// Disconnect ends every session of socketID, like broadcasting "disconnect"
// to a Phoenix socket id: their channels end without a message, their
// presences leave, and their clients' next requests find no session (so
// phoenix.js reconnects and rejoins). It returns how many sessions ended.
func (g *Gateway) Disconnect(ctx context.Context, socketID string) (int, error) {
	ids, err := g.cfg.Sessions.BySocket(ctx, socketID)
	if err != nil {
		return 0, fmt.Errorf("disconnect %s: %w", socketID, err)
	}
	n := 0
	for _, id := range ids {
		ended, err := g.endSession(ctx, id, "disconnected")
		if err != nil {
			return n, fmt.Errorf("disconnect %s: %w", socketID, err)
		}
		if ended {
			n++
		}
	}
	return n, nil
}

// EndSession ends a session at once, as its expiry would: its channels end,
// their presences leave (exactly once across instances), and its waiting
// polls and subscriptions find it gone. It is for a transport whose
// connection is the session (WebSocket): when the connection ends, so does
// the session, rather than after the session timeout. reason labels the
// end in logs and metrics ("closed"). It reports false if the session was
// already gone.
func (g *Gateway) EndSession(ctx context.Context, sessionID, reason string) (bool, error) {
	ended, err := g.endSession(ctx, sessionID, reason)
	if err != nil {
		return false, fmt.Errorf("end session: %w", err)
	}
	return ended, nil
}

// endSession ends a session: under its lock (so that no join is half done),
// its channels end and their presences leave, then it is removed and polls
// waiting on it are woken. It reports false if the session was already gone.
// A failure part-way leaves the session in the store, to be expired again;
// presence leaves are exact, so a second attempt announces nothing twice.
func (g *Gateway) endSession(ctx context.Context, id, reason string) (bool, error) {
	lctx, cancel := context.WithTimeout(ctx, lockWait)
	unlock, s, err := g.cfg.Sessions.LockLoad(lctx, id)
	cancel()
	if errors.Is(err, ErrNoSession) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	defer unlock()
	fx := &effects{}
	topicsOf := slices.Sorted(maps.Keys(s.Channels))
	for _, t := range topicsOf {
		g.endChannel(g.context(ctx, s, s.Channels[t], fx), reason, false)
	}
	// Store the session without its channels before announcing the leaves,
	// so that its own waiting poll does not deliver them to it; tell its
	// subscriptions first, so that they reload it and do not deliver the
	// leaves either. The announcements go through the outbox, after what the
	// session's last batch left there: if publishing fails, the next attempt
	// to end the session publishes them (it could not make them again: the
	// presences are gone from the store).
	wake := PendingRecord{mailboxTopic(id), encodeRecord(&Message{Topic: TopicPhoenix, Event: eventSessionChanged, Payload: emptyObject}, "")}
	s.Outbox = slices.Concat(s.Outbox, []PendingRecord{wake}, fx.items)
	if err := g.cfg.Sessions.Save(ctx, s); errors.Is(err, ErrNoSession) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if err := g.publishOutbox(ctx, s, nil); err != nil {
		return false, err
	}
	g.limiter.forget(id)
	if _, err := g.cfg.Sessions.Remove(ctx, id); errors.Is(err, ErrNoSession) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	// Wake the session's waiting poll so it finds the session gone at once.
	if _, err := g.cfg.Broker.Publish(ctx, mailboxTopic(id), encodeRecord(&Message{Topic: TopicPhoenix, Event: EventClose, Payload: emptyObject}, "")); err != nil {
		g.log.Warn("end session: wake pollers", "session", LogSession(id), "err", err)
	}
	if err := g.cfg.Broker.Delete(ctx, mailboxTopic(id)); err != nil {
		g.log.Warn("end session: delete mailbox", "session", LogSession(id), "err", err)
	}
	g.log.Info("session ended", "session", LogSession(id), "socket_id", s.SocketID(), "reason", reason, "channels", len(topicsOf))
	g.cfg.Observer.SessionEnded(reason)
	return true, nil
}

// lockWait bounds how long a request waits for another request of the same
// session to finish.
const lockWait = 10 * time.Second

// expiryLease is how long a claimed expired session is left to its claimer
// before another instance may claim it again.
const expiryLease = 30 * time.Second

// ExpireSessions ends the sessions whose deadline passed and returns how many.
func (g *Gateway) ExpireSessions(ctx context.Context) (int, error) {
	n := 0
	for {
		batch, err := g.cfg.Sessions.Claim(ctx, time.Now(), expiryLease, 100)
		if err != nil {
			return n, fmt.Errorf("expire sessions: %w", err)
		}
		for _, s := range batch {
			ended, err := g.endSession(ctx, s.ID, "expired")
			if err != nil {
				g.log.Error("expire session", "session", LogSession(s.ID), "err", err)
				continue
			}
			if ended {
				n++
			}
		}
		if len(batch) < 100 {
			return n, nil
		}
	}
}

// Run expires idle sessions every interval until ctx is done.
func (g *Gateway) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			g.limiter.sweep(now)
			if _, err := g.ExpireSessions(ctx); err != nil && ctx.Err() == nil {
				g.log.Error("session expiry", "err", err)
			}
		}
	}
}

// ErrForeignSession is returned by Resume for a session of another user.
var ErrForeignSession = errors.New("the session belongs to another user")

// Resume checks that a client may take over an existing session: its user
// token must verify and name the session's user. A stream that reconnects
// with a resume point (an SSE Last-Event-ID) proves this way that the
// session is its own. It returns ErrNoSession if the session is gone,
// ErrForeignSession if it is another user's, an error wrapping
// ErrUnsupportedVsn if the requested vsn is not the session's, or an error
// wrapping ErrUnauthorized.
func (g *Gateway) Resume(ctx context.Context, info ConnectInfo, tok SessionToken) error {
	ser, err := SerializerFor(info.Vsn)
	if err != nil {
		return err
	}
	id, err := g.cfg.Authenticate(ctx, info)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	s, err := g.cfg.Sessions.Load(ctx, tok.SessionID)
	if err != nil {
		return err
	}
	if userKey(s.UserID) != userKey(id.UserID) {
		return ErrForeignSession
	}
	if ser.Vsn() != s.Vsn {
		return fmt.Errorf("%w: the session speaks vsn %s, the request asks for %s", ErrUnsupportedVsn, s.Vsn, ser.Vsn())
	}
	return nil
}

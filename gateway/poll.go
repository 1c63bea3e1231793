package gateway

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/sluicegw/sluice/topics"
)

// Delivery is what a poll returns: the encoded frames, oldest first, and the
// token that acknowledges them.
type Delivery struct {
	Frames [][]byte
	// Tokens[i] acknowledges Frames[:i+1]: a stream gives each frame its own
	// resume point (an SSE event id).
	Tokens []SessionToken
	// Token acknowledges every frame, and records read but not for this
	// client (a broadcast_from of its own, a filtered intercept).
	Token SessionToken
	// Kinds and Times describe each frame for metrics: its kind (see
	// Observer.Delivered) and when its record was made (unix nanoseconds).
	Kinds []string
	Times []int64

	// truncated: a source had more records than one read returns.
	truncated bool
}

// singleDelivery is a Delivery of one frame with its slices' arrays in the
// same allocation.
type singleDelivery struct {
	Delivery
	frame [1][]byte
	token [1]SessionToken
	kind  [1]string
	time  [1]int64
}

// Poll returns the frames for the session after the token's cursor, waiting
// up to wait for some to arrive. With none, it returns an empty Delivery and
// the same token. A retried poll with the same token gets the same frames:
// nothing is acknowledged until the client presents the returned token.
func (g *Gateway) Poll(ctx context.Context, tok SessionToken, wait time.Duration) (*Delivery, error) {
	// A poll in progress keeps its session alive; after it, the session has
	// SessionTimeout (plus what is left of the window, if it returned early)
	// for the next one. Touching once, with the load, keeps a poll that
	// returns messages at two round trips to a remote store.
	sub, err := g.subscribe(ctx, tok, subscribeOptions{extra: wait})
	if err != nil {
		return nil, err
	}
	sub.acknowledges = true
	defer sub.release()
	d, err := sub.Next(ctx, wait)
	if err != nil && ctx.Err() != nil {
		// The client went away mid-poll: give its session only the
		// timeout from now, not from the end of the window it gave up.
		_, _ = g.cfg.Sessions.Touch(context.WithoutCancel(ctx), tok.SessionID, time.Now().Add(g.cfg.SessionTimeout))
	}
	return d, err
}

// channelTopics lists, sorted, the broker topics of a session's channels.
func channelTopics(s *Session) []string {
	out := make([]string, 0, len(s.Channels))
	for t := range s.Channels {
		out = append(out, channelTopic(t))
	}
	slices.Sort(out)
	return out
}

// timedFrame is a frame with the time its record was made, to merge sources,
// and the source and position it came from, to compute per-frame cursors.
type timedFrame struct {
	time  int64
	frame []byte
	slot  int // -1: the mailbox
	seq   uint64
	kind  string
}

// readMode says what collect reads.
type readMode int

const (
	// readAll reads the mailbox and the channels' topics from the broker.
	readAll readMode = iota
	// readWoken reads the channels' topics only, as topics.ReadRequest.Recent:
	// for a subscription woken by its channels.
	readWoken
	// readFirst is readAll for the first read of a long-poll, after the
	// cursor its client presented: the client has every mailbox record up
	// to it, so the broker drops them (topics.ReadRequest.Acked). A retried
	// poll carries the same cursor and still finds what follows it. (An SSE
	// stream may be resumed from any earlier event id: it acknowledges
	// nothing.)
	readFirst
)

// collect reads what the session has after cursor from its mailbox and its
// channels' topics (as mode says), applies broadcast_from exclusions and
// interceptors, and encodes it with the session's serializer.
//
// chTopics are the session's channel topics, sorted, and logs their broker
// topics (channelTopics): the caller keeps both with the session it loaded.
// reqs is room for the read's requests, reused from call to call: it is
// used if it has room for 1+len(chTopics) (a ReadMany keeps none of it).
func (g *Gateway) collect(ctx context.Context, s *Session, chTopics, logs []string, cur Cursor, mode readMode, reqs []topics.ReadRequest) (*Delivery, error) {
	readMailbox := mode != readWoken
	ser, err := SerializerFor(s.Vsn)
	if err != nil {
		return nil, err
	}
	limit := g.cfg.MaxPollMessages
	next := Cursor{Mailbox: cur.Mailbox, Slots: make(map[int]uint64, len(s.Channels))}
	// Room for the usual delivery on the stack: out escapes nowhere (an
	// interceptor's frames come back from intercept, not through a closure
	// over out).
	var room [4]timedFrame
	out := room[:0]

	// One read of the mailbox and every joined topic: one round trip with a
	// remote broker.
	if cap(reqs) < 1+len(chTopics) {
		reqs = make([]topics.ReadRequest, 0, 1+len(chTopics))
	}
	reqs = reqs[:0]
	if readMailbox {
		reqs = append(reqs, topics.ReadRequest{Topic: mailboxTopic(s.ID), After: cur.Mailbox, Limit: limit, Acked: mode == readFirst && cur.Mailbox > 0})
	}
	for i, t := range chTopics {
		ch := s.Channels[t]
		after := ch.Since
		if c, ok := cur.Slots[ch.Slot]; ok && c > after {
			after = c
		}
		reqs = append(reqs, topics.ReadRequest{Topic: logs[i], After: after, Limit: limit, Recent: mode == readWoken})
	}
	batches, err := g.cfg.Broker.ReadMany(ctx, reqs)
	if err != nil {
		return nil, err
	}
	// chReqs[i] and chBatches[i] are channel i's, after the mailbox's if read.
	var mb topics.Batch
	chReqs, chBatches := reqs, batches
	if readMailbox {
		mb = batches[0]
		chReqs, chBatches = reqs[1:], batches[1:]
	}
	if mb.Gap {
		g.log.Warn("mailbox overflowed: replies were lost, channels must rejoin", "session", LogSession(s.ID))
	}
	for _, rec := range mb.Records {
		next.Mailbox = rec.Seq
		r, err := decodeRecord(rec.Data)
		if err != nil {
			g.log.Error("bad mailbox record", "session", LogSession(s.ID), "err", err)
			continue
		}
		if r.Topic == TopicPhoenix && (r.Event == EventClose || r.Event == eventSessionChanged) {
			continue // wake-ups for subscriptions, not for the client
		}
		out = g.emit(out, s, ser, r.Time, -1, rec.Seq, &r.Message)
	}

	truncated := limit > 0 && len(mb.Records) >= limit
	for i, t := range chTopics {
		ch := s.Channels[t]
		next.Slots[ch.Slot] = chReqs[i].After
		batch := chBatches[i]
		truncated = truncated || limit > 0 && len(batch.Records) >= limit
		if batch.Gap || mb.Gap {
			// Messages were dropped before this client read them: tell it, so
			// phoenix.js rejoins, rather than leave a silent gap.
			g.log.Warn("client fell behind the retained history", "session", LogSession(s.ID), "topic", t)
			g.cfg.Observer.Gap()
			out = g.emit(out, s, ser, time.Now().UnixNano(), ch.Slot, batch.Head, &Message{JoinRef: ch.JoinRef, Ref: ch.JoinRef, Topic: t, Event: EventError, Payload: json.RawMessage(`{"reason":"missed messages"}`)})
			next.Slots[ch.Slot] = batch.Head
			continue
		}
		// A Context and the owner string only where used: both were
		// allocations per subscriber per broadcast.
		var intercepts []string
		h, _, _ := g.cfg.Router.Match(ch.Topic)
		ic, _ := h.(Interceptor)
		if ic != nil {
			intercepts = ic.Intercepts()
		}
		var own string
		topic := chReqs[i].Topic
		for _, rec := range batch.Records {
			next.Slots[ch.Slot] = rec.Seq
			cr, err := g.records.get(topic, rec.Seq, rec.Data)
			if err != nil {
				g.log.Error("bad topic record", "topic", t, "err", err)
				continue
			}
			r := cr.rec
			if r.From != "" {
				if own == "" {
					own = owner(s.ID, ch.Slot)
				}
				if r.From == own {
					continue
				}
			}
			if ic != nil && slices.Contains(intercepts, r.Event) {
				out = append(out, g.intercept(ctx, s, ser, t, ch, h, ic, r, rec.Seq)...)
				continue
			}
			f, err := cr.frame(ser, t)
			if err != nil {
				g.log.Error("encode frame", "session", LogSession(s.ID), "topic", t, "event", r.Event, "err", err)
				continue
			}
			out = append(out, timedFrame{r.Time, f, ch.Slot, rec.Seq, cr.kind})
		}
	}
	out = mergeByTime(out)
	if len(out) == 1 {
		// The usual delivery of a broadcast: one allocation, not five.
		d := &singleDelivery{}
		d.Delivery = Delivery{Token: SessionToken{SessionID: s.ID, Cursor: next}, truncated: truncated}
		d.frame[0], d.kind[0], d.time[0], d.token[0] = out[0].frame, out[0].kind, out[0].time, d.Token
		d.Frames, d.Kinds, d.Times, d.Tokens = d.frame[:], d.kind[:], d.time[:], d.token[:]
		return &d.Delivery, nil
	}
	d := &Delivery{Token: SessionToken{SessionID: s.ID, Cursor: next}, Frames: make([][]byte, len(out)), Tokens: make([]SessionToken, len(out)),
		Kinds: make([]string, len(out)), Times: make([]int64, len(out)), truncated: truncated}
	// The cursor after each frame: where the client started, advanced by
	// the frames up to it.
	run := Cursor{Mailbox: cur.Mailbox, Slots: make(map[int]uint64, len(s.Channels))}
	for i, t := range chTopics {
		run.Slots[s.Channels[t].Slot] = chReqs[i].After
	}
	for i, f := range out {
		d.Frames[i] = f.frame
		d.Kinds[i], d.Times[i] = f.kind, f.time
		if f.slot < 0 {
			run.Mailbox = max(run.Mailbox, f.seq)
		} else {
			run.Slots[f.slot] = max(run.Slots[f.slot], f.seq)
		}
		d.Tokens[i] = SessionToken{SessionID: s.ID, Cursor: Cursor{Mailbox: run.Mailbox, Slots: maps.Clone(run.Slots)}}
	}
	if len(out) > 0 {
		// Past the last frame, everything read is acknowledged.
		d.Tokens[len(out)-1] = d.Token
	}
	return d, nil
}

// emit appends m's frame, encoded with ser, to out.
func (g *Gateway) emit(out []timedFrame, s *Session, ser Serializer, t int64, slot int, seq uint64, m *Message) []timedFrame {
	b, err := ser.Encode(m)
	if err != nil {
		g.log.Error("encode frame", "session", LogSession(s.ID), "topic", m.Topic, "event", m.Event, "err", err)
		return out
	}
	return append(out, timedFrame{t, b, slot, seq, frameKind(m)})
}

// intercept runs a channel's HandleOut on a record of topic it intercepts,
// and returns the frames the handler pushed.
func (g *Gateway) intercept(ctx context.Context, s *Session, ser Serializer, topic string, ch *ChannelState, h Handler, ic Interceptor, r *record, seq uint64) []timedFrame {
	var out []timedFrame
	c := &Context{ctx: ctx, gw: g, session: s, channel: ch, handler: h}
	c.deliver = func(m *Message) { out = g.emit(out, s, ser, r.Time, ch.Slot, seq, m) }
	var err error
	if g.protect(c, "handle_out", func() { err = ic.HandleOut(c, r.Event, r.Payload) }) || err != nil {
		g.log.Error("handle_out failed", "session", LogSession(s.ID), "topic", topic, "event", r.Event, "err", err)
	}
	return out
}

// mergeByTime orders frames by the time their records were made while
// keeping each source's own order (its log order, which is what "in order per
// topic" means): a k-way merge on the sources' heads. Instances' clocks may
// disagree, so a plain sort by time could reorder one topic's records.
func mergeByTime(frames []timedFrame) []timedFrame {
	if !slices.ContainsFunc(frames, func(f timedFrame) bool { return f.slot != frames[0].slot }) {
		return frames // one source: already in its order
	}
	var order []int                    // sources in order of first appearance
	bySource := map[int][]timedFrame{} // each in emission (log) order
	for _, f := range frames {
		if _, ok := bySource[f.slot]; !ok {
			order = append(order, f.slot)
		}
		bySource[f.slot] = append(bySource[f.slot], f)
	}
	out := make([]timedFrame, 0, len(frames))
	for len(out) < len(frames) {
		best, found := 0, false
		for _, src := range order {
			q := bySource[src]
			if len(q) > 0 && (!found || q[0].time < bySource[best][0].time) {
				best, found = src, true
			}
		}
		out = append(out, bySource[best][0])
		bySource[best] = bySource[best][1:]
	}
	return out
}

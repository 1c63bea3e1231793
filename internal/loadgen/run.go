package loadgen

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/token"
)

// engine is one run's shared state.
type engine struct {
	cfg        *Config
	pool       *dialPool
	signer     *token.Signer
	event      string // the measured event: the broadcast event, or mensaje_recibido
	chat       bool
	pad        string
	topicNames []string

	hist        Histogram
	connectHist Histogram // each client's time from its start to connected
	centrifugo  bool      // the target is Centrifugo
	errs        errorTable
	failKinds   errorTable
	measuring   atomic.Bool

	delivered, dups, reconnects, rejoins, roundTrips atomic.Int64
	emptyPolls                                       atomic.Int64 // round trips answered 204
	sendFailed, pubN                                 atomic.Int64
	claimed                                          atomic.Int64 // sends begun, against Config.Messages
	started, connected, failed, ready                atomic.Int64
	lastReady                                        atomic.Int64   // unix nanos of the last client connected or failed
	sent                                             []atomic.Int64 // successful publishes per topic
}

// runner is a client of any transport.
type runner interface {
	// prepare builds the client's URLs once its token is signed.
	prepare()
	run(ctx context.Context)
	core() *client
}

func (c *sseClient) core() *client { return &c.client }
func (c *lpClient) core() *client  { return &c.client }
func (c *wsClient) core() *client  { return &c.client }
func (c *cfClient) core() *client  { return &c.client }

// userTokenMaxAge is the max age the tool signs user tokens with.
const userTokenMaxAge = 24 * time.Hour

// Run runs the load described by cfg and returns its report. It stops by
// itself once the window and the drain are over; when ctx is cancelled
// (Ctrl-C) it stops early, still drains and still reports, marked
// interrupted. Errors are returned only for what prevents a run (bad
// configuration, unreadable --pid, chat rooms that cannot be created).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	logf := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }

	limit, err := RaiseFileLimit()
	if err != nil {
		logf("warning: %v", err)
	}
	perClient := 1
	if cfg.Transport == TransportLongPoll || cfg.Transport == TransportMix || cfg.Transport == TransportSSE && cfg.Scenario == ScenarioChat {
		perClient = 2 // a long-poll client's poll and its POSTs; an SSE pusher's stream and POSTs (a WebSocket has one)
	}
	if need := uint64(cfg.Clients*perClient + cfg.Publishers + 64); limit > 0 && limit < need {
		logf("warning: the open-file limit is %d, and %d clients may need %d: raise the hard limit (ulimit -Hn)", limit, cfg.Clients, need)
	}
	baseline, err := ReadProcs(cfg.PIDs)
	if err != nil {
		return nil, fmt.Errorf("--pid: %w", err)
	}
	toolStart, _ := ReadProcs([]int{0})

	e := &engine{
		cfg:        &cfg,
		signer:     token.NewSigner(cfg.Secret, gateway.UserSocketSalt),
		event:      cfg.Event,
		chat:       cfg.Scenario == ScenarioChat,
		centrifugo: cfg.Target == TargetCentrifugo,
		sent:       make([]atomic.Int64, cfg.Topics),
	}
	if e.chat {
		e.event = "mensaje_recibido"
	}
	if cfg.PayloadBytes > 0 {
		// About PayloadBytes in all: the rest of the payload is ~50 bytes.
		e.pad = strings.Repeat("x", max(1, cfg.PayloadBytes-50))
	}
	for i := range cfg.Topics {
		e.topicNames = append(e.topicNames, cfg.TopicName(i))
	}
	addrs := 1
	if allLoopback(cfg.URLs) {
		addrs = cfg.SourceAddrs
	}
	e.pool = newDialPool(addrs, cfg.Clients+cfg.Publishers+16)
	defer e.pool.close()

	var probe *redisProbe
	var redisStart, redisBefore redisSample
	if cfg.RedisURL != "" {
		if probe, err = newRedisProbe(cfg.RedisURL); err != nil {
			return nil, err
		}
		defer probe.close()
		if redisStart, err = probe.sample(ctx); err != nil {
			return nil, err
		}
	}
	if e.chat {
		logf("creating %d chat rooms", cfg.Topics)
		if err := e.createRooms(ctx); err != nil {
			return nil, err
		}
	}

	clients := make([]runner, cfg.Clients)
	for i := range clients {
		var c *client
		switch cfg.TransportOf(i) {
		case TransportSSE:
			if e.centrifugo {
				cc := &cfClient{}
				clients[i], c = cc, &cc.client
				break
			}
			sc := &sseClient{}
			clients[i], c = sc, &sc.client
		case TransportWebSocket:
			wc := &wsClient{}
			clients[i], c = wc, &wc.client
		default:
			lc := &lpClient{}
			clients[i], c = lc, &lc.client
		}
		e.initClient(c, i)
	}

	// Ramp: start client i at ramp*i/N. Clients run until stopClients,
	// whatever ctx does, so that an interrupted run still drains.
	clientCtx, stopClients := context.WithCancel(context.WithoutCancel(ctx))
	defer stopClients()
	var clientWG sync.WaitGroup
	launched := make(chan struct{})
	ramp := cfg.ramp()
	rampStart := time.Now()
	logf("connecting %d %s clients over %s to %s %s", cfg.Clients, cfg.Transport, ramp, cfg.Target, strings.Join(cfg.URLs, ", "))
	go func() {
		defer close(launched)
		for i, r := range clients {
			at := rampStart.Add(ramp * time.Duration(i) / time.Duration(len(clients)))
			if !sleepCtx(ctx, time.Until(at)) {
				return
			}
			e.started.Add(1)
			clientWG.Add(1)
			go func() {
				defer clientWG.Done()
				e.start(clientCtx, r)
			}()
		}
	}()

	rep := &Report{
		Target: cfg.Target, ConnectRate: cfg.ConnectRate, RampSeconds: ramp.Seconds(),
		Scenario: cfg.Scenario, Transport: cfg.Transport, TopicPattern: cfg.TopicPattern, URLs: cfg.URLs, Clients: cfg.Clients,
		Topics: cfg.Topics, Joins: cfg.Joins, RateTarget: cfg.Rate, FileLimit: limit, SourceAddrs: addrs,
	}
	interrupted := !e.waitConnected(ctx, launched, logf)
	connectedAt := time.Now()
	connected, _ := ReadProcs(cfg.PIDs)
	rep.ConnectSeconds = connectedAt.Sub(rampStart).Seconds()
	if last := e.lastReady.Load(); last > 0 {
		// Exact, rather than when the wait noticed (it looks every 100 ms).
		rep.ConnectSeconds = time.Unix(0, last).Sub(rampStart).Seconds()
	}
	logf("connected %d, failed %d, in %.1fs", e.connected.Load(), e.failed.Load(), rep.ConnectSeconds)
	if probe != nil {
		if s, err := probe.sample(context.WithoutCancel(ctx)); err != nil {
			logf("warning: %v", err)
		} else {
			rep.RedisConnect = redisDelta(redisStart, s)
			if n := e.connected.Load(); n > 0 {
				rep.RedisConnect.PerConnect = float64(rep.RedisConnect.Commands) / float64(n)
			}
		}
	}
	connectOnly := cfg.Scenario == ScenarioConnect
	if !interrupted && !connectOnly && !sleepCtx(ctx, cfg.Settle) {
		interrupted = true
	}

	idle, _ := ReadProcs(cfg.PIDs)
	if probe != nil {
		if redisBefore, err = probe.sample(context.WithoutCancel(ctx)); err != nil {
			logf("warning: %v", err)
			probe = nil
		}
	}
	for _, r := range clients {
		c := r.core()
		c.inWindow = c.state.Load() == stateConnected
	}

	// The window.
	windowStart := time.Now()
	windowEnd := windowStart
	if e.connected.Load() == 0 {
		logf("no client connected: nothing to measure")
	} else if !interrupted && !connectOnly {
		e.measuring.Store(true)
		end := windowStart.Add(cfg.Duration)
		wctx, cancel := context.WithDeadline(ctx, end)
		var pubWG sync.WaitGroup
		switch cfg.Scenario {
		case ScenarioBroadcast:
			rep.Publishers = cfg.Publishers
			for w := range cfg.Publishers {
				pubWG.Go(func() { e.runPublisher(wctx, w, windowStart, end) })
			}
		case ScenarioChat:
			m := cfg.pushers()
			rep.Publishers = m
			k := 0
			for _, r := range clients {
				c := r.core()
				if !c.pusher || !c.inWindow {
					continue
				}
				var push pushFunc
				switch rc := r.(type) {
				case *sseClient:
					push = rc.push
				case *lpClient:
					push = rc.push
				case *wsClient:
					push = rc.push
				}
				kk := k
				pubWG.Go(func() { e.runPusher(wctx, c, push, kk, m, windowStart, end) })
				k++
			}
			rep.Publishers = k
		}
		if cfg.Messages > 0 {
			logf("window: %s, %d messages or %s, whichever ends first", cfg.Scenario, cfg.Messages, cfg.Duration)
		} else {
			logf("window: %s for %s", cfg.Scenario, cfg.Duration)
		}
		if cfg.Messages > 0 && cfg.publishes() {
			// Publishers return early once Messages were sent: the window ends.
			go func() { pubWG.Wait(); cancel() }()
		}
		e.watchWindow(wctx, windowStart, logf)
		pubWG.Wait()
		cancel()
		windowEnd = time.Now()
		interrupted = ctx.Err() != nil
		e.drain(clients, cfg.Drain)
	}
	drainEnd := time.Now()
	end, _ := ReadProcs(cfg.PIDs)
	if probe != nil {
		after, err := probe.sample(context.WithoutCancel(ctx))
		if err != nil {
			logf("warning: %v", err)
		} else if !connectOnly {
			rep.Redis = redisDelta(redisBefore, after)
		}
	}
	e.measuring.Store(false)

	// Stop every client and wait for them (bounded: a stuck client must not
	// hang the report).
	stopClients()
	<-launched
	stopped := make(chan struct{})
	go func() { clientWG.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		logf("warning: some clients did not stop within 10s")
	}
	toolEnd, _ := ReadProcs([]int{0})

	rep.Interrupted = interrupted
	rep.WindowSeconds = windowEnd.Sub(windowStart).Seconds()
	rep.DrainSeconds = drainEnd.Sub(windowEnd).Seconds()
	e.fillClients(rep, clients)
	e.fillMessages(rep)
	if len(cfg.PIDs) > 0 {
		s := &ServerStats{
			PIDs:              cfg.PIDs,
			RSSBaselineBytes:  baseline.RSSBytes,
			RSSIdleBytes:      idle.RSSBytes,
			RSSEndBytes:       end.RSSBytes,
			CPUSeconds:        end.CPUSeconds - idle.CPUSeconds,
			CPUConnectSeconds: connected.CPUSeconds - baseline.CPUSeconds,
		}
		if rep.Connected > 0 {
			s.CPUPerConnectMs = 1000 * s.CPUConnectSeconds / float64(rep.Connected)
		}
		if rep.Connected > 0 {
			s.RSSIdlePerConn = float64(idle.RSSBytes-baseline.RSSBytes) / float64(rep.Connected)
			s.RSSEndPerConn = float64(end.RSSBytes-baseline.RSSBytes) / float64(rep.Connected)
		}
		if wall := end.At.Sub(idle.At).Seconds(); wall > 0 {
			s.CPUPercent = 100 * s.CPUSeconds / wall
		}
		if rep.Delivered > 0 {
			s.CPUPerMillion = s.CPUSeconds / float64(rep.Delivered) * 1e6
		}
		rep.Server = s
	}
	if rs := rep.Redis; rs != nil {
		if rep.Sent > 0 {
			rs.PerBroadcast = float64(rs.Commands) / float64(rep.Sent)
		}
		if rep.RoundTrips > 0 {
			rs.PerRoundTrip = float64(rs.Commands) / float64(rep.RoundTrips)
		}
		if rep.Delivered > 0 {
			rs.PerDelivery = float64(rs.Commands) / float64(rep.Delivered)
		}
	}
	rep.Tool = ToolStats{CPUSeconds: toolEnd.CPUSeconds - toolStart.CPUSeconds, RSSBytes: toolEnd.RSSBytes}
	if wall := toolEnd.At.Sub(toolStart.At).Seconds(); wall > 0 {
		rep.Tool.CPUPercent = 100 * rep.Tool.CPUSeconds / wall
	}
	rep.judge(cfg.MaxFailed)
	return rep, nil
}

// initClient sets up client i.
func (e *engine) initClient(c *client, i int) {
	cfg := e.cfg
	topics := cfg.topicsOf(i)
	c.e = e
	c.idx = i
	c.base = cfg.URLs[i%len(cfg.URLs)]
	c.http = e.pool.client(i)
	c.user = strconv.FormatInt(cfg.UserBase+int64(i), 10)
	c.pusher = e.chat && cfg.isPusher(i)
	c.topics = topics
	c.names = make([]string, len(topics))
	c.joinRef = make([]string, len(topics))
	c.joined = make([]bool, len(topics))
	c.rejoin = make([]bool, len(topics))
	for j, t := range topics {
		c.names[j] = e.topicNames[t]
	}
}

// start runs one client: sign its token, then connect and receive.
func (e *engine) start(ctx context.Context, r runner) {
	c := r.core()
	c.startedAt = time.Now()
	if e.centrifugo {
		c.token = centrifugoToken(c.user, e.cfg.Secret, c.startedAt, userTokenMaxAge)
	} else {
		data := any(c.user)
		if n, err := strconv.ParseInt(c.user, 10, 64); err == nil {
			data = n // as gateway.SignUserToken signs an all-digits user id
		}
		tok, err := e.signer.Sign(data, c.startedAt, userTokenMaxAge)
		if err != nil {
			c.markFailed("token", err.Error())
			return
		}
		c.token = tok
	}
	r.prepare()
	r.run(ctx)
	// A client stopped before it connected (the run ended) counts as
	// failed, so that the connect wait does not hang.
	c.markFailed("stopped", "the run ended before the client connected")
}

// noteReady records that a client just connected or failed.
func (e *engine) noteReady() {
	now := time.Now().UnixNano()
	for {
		last := e.lastReady.Load()
		if now <= last || e.lastReady.CompareAndSwap(last, now) {
			return
		}
	}
}

// waitConnected waits until every client launched is connected or failed,
// printing progress; false if ctx ended first.
func (e *engine) waitConnected(ctx context.Context, launched <-chan struct{}, logf func(string, ...any)) bool {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastLog := time.Now()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		done := false
		select {
		case <-launched:
			done = e.ready.Load() >= e.started.Load()
		default:
		}
		if done {
			return true
		}
		if time.Since(lastLog) >= 2*time.Second {
			lastLog = time.Now()
			logf("  started %d, connected %d, failed %d", e.started.Load(), e.connected.Load(), e.failed.Load())
		}
	}
}

// watchWindow prints progress until the window's context ends.
func (e *engine) watchWindow(ctx context.Context, start time.Time, logf func(string, ...any)) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			logf("  %4.0fs: sent %d, delivered %d, errors %d", time.Since(start).Seconds(), e.totalSent(), e.delivered.Load(), e.errs.total())
		}
	}
}

func (e *engine) totalSent() int64 {
	var n int64
	for i := range e.sent {
		n += e.sent[i].Load()
	}
	return n
}

// expectedOf returns how many messages client c should have received.
func (e *engine) expectedOf(c *client) int64 {
	var n int64
	for _, t := range c.topics {
		n += e.sent[t].Load()
	}
	return n
}

// drain waits up to d for deliveries in flight, returning early once every
// expected message arrived.
func (e *engine) drain(clients []runner, d time.Duration) {
	var want int64
	for _, r := range clients {
		if c := r.core(); c.inWindow {
			want += e.expectedOf(c)
		}
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && e.delivered.Load() < want {
		time.Sleep(20 * time.Millisecond)
	}
}

// fillClients counts clients and checks each one's deliveries.
func (e *engine) fillClients(rep *Report, clients []runner) {
	rep.Started = int(e.started.Load())
	rep.Connected = int(e.connected.Load())
	rep.Failed = int(e.failed.Load())
	rep.FailedByKind = e.failKinds.snapshot()
	for _, r := range clients {
		c := r.core()
		if c.state.Load() == stateConnected {
			switch r.(type) {
			case *sseClient, *cfClient:
				rep.ConnectedSSE++
			case *wsClient:
				rep.ConnectedWS++
			default:
				rep.ConnectedLP++
			}
			if c.nJoined == len(c.topics) {
				rep.JoinedAtEnd++
			}
		}
		if !c.inWindow || !e.cfg.publishes() {
			continue
		}
		v := c.check.verdict(e.expectedOf(c))
		rep.Expected += v.Expected
		rep.Missed += v.Missed
		rep.Extra += v.Extra
		rep.Duplicated += v.Dups
		rep.OutOfOrder += v.OutOfOrder
		if v.Missed > 0 {
			rep.ClientsMissing++
		}
	}
}

// fillMessages copies the message counters and latencies.
func (e *engine) fillMessages(rep *Report) {
	rep.Sent = e.totalSent()
	rep.SendFailed = e.sendFailed.Load()
	rep.Delivered = e.delivered.Load()
	rep.Reconnects = e.reconnects.Load()
	rep.Rejoins = e.rejoins.Load()
	rep.RoundTrips = e.roundTrips.Load()
	rep.EmptyPolls = e.emptyPolls.Load()
	if w := rep.WindowSeconds; w > 0 {
		rep.SentPerSecond = float64(rep.Sent) / w
		rep.DeliveredPerSec = float64(rep.Delivered) / w
		rep.RoundTripsPerSec = float64(rep.RoundTrips) / w
	}
	rep.Latency = latencyOf(&e.hist)
	rep.ConnectLatency = latencyOf(&e.connectHist)
	rep.Errors = e.errs.snapshot()
}

// latencyOf summarizes a histogram in milliseconds.
func latencyOf(h *Histogram) LatencyStats {
	return LatencyStats{
		Count: h.Count(), Mean: ms(h.Mean()), P50: ms(h.Percentile(0.5)), P90: ms(h.Percentile(0.9)),
		P99: ms(h.Percentile(0.99)), Max: ms(h.Max()),
	}
}

// claim reserves one send against Config.Messages and reports whether the
// publisher may send it.
func (e *engine) claim() bool {
	return e.cfg.Messages <= 0 || e.claimed.Add(1) <= e.cfg.Messages
}

// judge decides OK and lists the problems.
func (r *Report) judge(maxFailed int) {
	if r.Interrupted {
		r.Problems = append(r.Problems, "interrupted")
	}
	if r.Failed > maxFailed {
		r.Problems = append(r.Problems, fmt.Sprintf("%d clients failed (--max-failed %d)", r.Failed, maxFailed))
	}
	if r.Missed > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d messages missed", r.Missed))
	}
	if r.Duplicated > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d messages duplicated", r.Duplicated))
	}
	if r.OutOfOrder > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d messages out of order", r.OutOfOrder))
	}
	if r.Connected == 0 {
		r.Problems = append(r.Problems, "no client connected")
	}
	if fk, ok := r.FailedByKind["join_refused"]; ok && strings.Contains(fk.Example, "unmatched topic") {
		// The server has no channel for the topics: for the broadcast and
		// idle scenarios, its open topics are missing.
		hint := "joins refused with \"unmatched topic\": the server has no channel for " + r.TopicPattern
		if r.Scenario != ScenarioChat {
			hint += "; start it with --open-topics '" + openPattern(r.TopicPattern) + "'"
		}
		r.Problems = append(r.Problems, hint)
	}
	r.OK = len(r.Problems) == 0
}

// openPattern is the --open-topics pattern that matches the topics of a
// topic name pattern: "bench:%d" → "bench:*".
func openPattern(topicPattern string) string {
	if i := strings.Index(topicPattern, "%d"); i >= 0 {
		return topicPattern[:i] + "*"
	}
	return topicPattern
}

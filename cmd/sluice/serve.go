package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/cmd/sluice/chat"
	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/handback"
	"github.com/sluicegw/sluice/internal/redisurl"
	"github.com/sluicegw/sluice/longpoll"
	"github.com/sluicegw/sluice/metrics"
	"github.com/sluicegw/sluice/sse"
	"github.com/sluicegw/sluice/topics"
	"github.com/sluicegw/sluice/web"
	"github.com/sluicegw/sluice/websocket"
)

// serveConfig is the configuration of `sluice serve`.
type serveConfig struct {
	Addr            string
	Secret          string
	APIKey          string
	APIKeys         string
	OpenTopics      string
	Console         bool
	DebugAddr       string
	SelfTest        bool
	RedisURL        string
	RedisPrefix     string
	LongpollWindow  time.Duration
	SessionTimeout  time.Duration
	TokenMaxAge     time.Duration
	History         int
	HistoryTTL      time.Duration
	MailboxBytes    int
	MaxBodyBytes    int
	BodyTimeout     time.Duration
	ShutdownTimeout time.Duration
	DrainDelay      time.Duration
	SSERetry        time.Duration
	SSEHeartbeat    time.Duration
	SSEMaxLifetime  time.Duration
	SSEPadding      int
	CORSCredentials bool
	MaxPayload      int
	MaxSessions     int
	PostRate        float64
	PostBurst       int
	MaxStreams      int
	MaxSockets      int
	AllowedOrigins  string
	LogLevel        string
	LogFormat       string
}

// defaultMailboxBytes is the default of --mailbox-bytes: what a session keeps
// of its replies and pushes while its client is between polls. It must hold
// the largest burst a well-behaved client makes between two polls, or the
// client falls behind, rejoins and makes it again: one batch joining 100
// rooms (a session's limit of channels) whose join replies each carry the chat
// app's 50 last messages of up to 2000 characters is 100 × 106 KB = 10.1 MiB
// of ASCII text; 16 MiB leaves room for mostly Latin text and the presence
// pushes of each join. A client that sends and never polls can make its
// session keep no more than this (about 1.25 times this in Redis, for large
// records), instead of --history replies of up to --max-payload each
// (1000 × 64 KiB by default).
const defaultMailboxBytes = 16 << 20

func parseServeFlags(args []string, stderr io.Writer) (*serveConfig, error) {
	cfg := &serveConfig{}
	fs := newFlagSet("serve", "Runs the gateway: Phoenix WebSocket at /socket/websocket, LongPoll at /socket/longpoll, SSE at /socket/sse, the HTTP API at /api, /healthz, /readyz and /metrics.", stderr)
	fs.string(&cfg.Addr, "addr", "SLUICE_ADDR", ":4000", "address to listen on")
	fs.string(&cfg.Secret, "secret", "SLUICE_SECRET", "", "token signing secret (a Phoenix secret_key_base, at least 20 bytes); unset: a random one, and tokens made elsewhere will not verify")
	fs.string(&cfg.APIKey, "api-key", "SLUICE_API_KEY", "", "bearer key for every /api/* route; unset (and no --api-keys): /api/* answers 403")
	fs.string(&cfg.APIKeys, "api-keys", "SLUICE_API_KEYS", "", "per-route bearer keys, comma-separated route=key (routes: broadcast, disconnect, salas); a key opens only its route")
	fs.string(&cfg.OpenTopics, "open-topics", "SLUICE_OPEN_TOPICS", "", "comma-separated topic patterns (bench:*, news:sports) any authenticated user may join to receive what /api/broadcast sends there: no presence, pushes refused")
	fs.string(&cfg.RedisURL, "redis", "SLUICE_REDIS", "", "Redis URL for shared state (redis://[user:pass@]host:port/db, rediss:// for TLS; ?master_name=M for Sentinel; ?cluster=true for Cluster); empty: the embedded in-memory store (one instance). REDIS_URL is not read")
	fs.string(&cfg.RedisPrefix, "redis-prefix", "SLUICE_REDIS_PREFIX", "sluice:", "prefix of every Redis key, to share a Redis between deployments")
	fs.duration(&cfg.LongpollWindow, "longpoll-window", "SLUICE_LONGPOLL_WINDOW", 10*time.Second, "how long a long-poll waits for messages before answering 204 (keep under phoenix.js's 20s timeout)")
	fs.duration(&cfg.SessionTimeout, "session-timeout", "SLUICE_SESSION_TIMEOUT", 15*time.Second, "how long a session lives after its client's last poll ended; then its presence leaves (typing requests by hand: 5m)")
	fs.duration(&cfg.TokenMaxAge, "token-max-age", "SLUICE_TOKEN_MAX_AGE", 24*time.Hour, "max age of user tokens; a token signed with a shorter max age expires at its own (the smaller wins)")
	fs.int(&cfg.History, "history", "SLUICE_HISTORY", 1000, "messages kept per topic for clients that fall behind or resume")
	fs.duration(&cfg.HistoryTTL, "history-ttl", "SLUICE_HISTORY_TTL", time.Hour, "how long a topic's history is kept after its last message")
	fs.int(&cfg.MailboxBytes, "mailbox-bytes", "SLUICE_MAILBOX_BYTES", defaultMailboxBytes, "bytes of replies and pushes kept per session for its client between polls (the oldest dropped; a client behind them gets phx_error and rejoins)")
	fs.duration(&cfg.SSERetry, "sse-retry", "SLUICE_SSE_RETRY", 2*time.Second, "SSE reconnection delay sent as retry: (jittered ±25% per stream)")
	fs.duration(&cfg.SSEHeartbeat, "sse-heartbeat", "SLUICE_SSE_HEARTBEAT", 15*time.Second, "an idle SSE stream gets a heartbeat event this often (proxies cut idle streams after 60-100s)")
	fs.duration(&cfg.SSEMaxLifetime, "sse-max-lifetime", "SLUICE_SSE_MAX_LIFETIME", 2*time.Minute, "an SSE stream ends cleanly after this long (minus up to 10% jitter) and the client resumes: buffering proxies flush, load spreads")
	fs.int(&cfg.SSEPadding, "sse-padding", "SLUICE_SSE_PADDING", 0, "bytes of padding comment at the start of every SSE stream, for buffering proxies (a client may ask for 2 KiB with ?padding=1)")
	fs.boolean(&cfg.CORSCredentials, "cors-credentials", "SLUICE_CORS_CREDENTIALS", false, "answer SSE's CORS with the request's Origin and Allow-Credentials (EventSource withCredentials) instead of *, only to origins --allowed-origins admits")
	fs.int(&cfg.MaxPayload, "max-payload", "SLUICE_MAX_PAYLOAD", 64<<10, "largest message payload in bytes (larger: 413, nothing of the batch applied)")
	fs.int(&cfg.MaxSessions, "max-sessions-per-user", "SLUICE_MAX_SESSIONS_PER_USER", 0, "live sessions one user may hold (tabs, devices); 0: no limit")
	fs.float(&cfg.PostRate, "post-rate", "SLUICE_POST_RATE", 0, "POSTs per second one session may send to one instance (token bucket of --post-burst; over: 429); 0: no limit")
	fs.int(&cfg.PostBurst, "post-burst", "SLUICE_POST_BURST", 20, "burst of --post-rate")
	fs.int(&cfg.MaxStreams, "max-streams", "SLUICE_MAX_STREAMS", 0, "open SSE streams per instance; over it a stream is told to retry elsewhere; 0: no limit")
	fs.int(&cfg.MaxSockets, "max-sockets", "SLUICE_MAX_SOCKETS", 0, "open WebSocket connections per instance; over it an upgrade is answered 503 and phoenix.js retries, elsewhere; 0: no limit")
	fs.string(&cfg.AllowedOrigins, "allowed-origins", "SLUICE_ALLOWED_ORIGINS", "", "comma-separated Origins allowed to use the transports, as Phoenix's check_origin: //host (any scheme and port), https://host (https on 443 only), https://*.example.com, https://host:8443; empty: any")
	fs.int(&cfg.MaxBodyBytes, "max-body", "SLUICE_MAX_BODY", 1<<20, "largest request body in bytes (larger: 413)")
	fs.duration(&cfg.BodyTimeout, "body-timeout", "SLUICE_BODY_TIMEOUT", 10*time.Second, "time to receive a request body once its headers arrived (slower: 408 and the connection closed); streams and polls have no body and are not cut")
	fs.duration(&cfg.ShutdownTimeout, "shutdown-timeout", "SLUICE_SHUTDOWN_TIMEOUT", 15*time.Second, "how long a drain on SIGTERM/SIGINT may take in all")
	fs.duration(&cfg.DrainDelay, "drain-delay", "SLUICE_DRAIN_DELAY", 2*time.Second, "on SIGTERM/SIGINT, keep answering (readyz 503, polls and streams sent elsewhere) this long before closing the listener (at most half of --shutdown-timeout)")
	fs.boolean(&cfg.Console, "console", "SLUICE_CONSOLE", true, "serve the debug console at / (a page that connects with a user token; it holds no secret)")
	fs.boolean(&cfg.SelfTest, "selftest", "SLUICE_SELFTEST", true, "serve the transport self-test streams at /socket/selftest/* (no token; at most 100 at once)")
	fs.string(&cfg.DebugAddr, "debug-addr", "SLUICE_DEBUG_ADDR", "", "address of a second listener serving Go's /debug/pprof/ (profiles under load); keep it private, e.g. 127.0.0.1:6060; empty: none")
	fs.string(&cfg.LogLevel, "log-level", "SLUICE_LOG_LEVEL", "info", "debug, info, warn or error")
	fs.string(&cfg.LogFormat, "log-format", "SLUICE_LOG_FORMAT", "text", "text or json")
	if err := fs.parse(args); err != nil {
		return nil, err
	}
	switch {
	case cfg.LongpollWindow <= 0 || cfg.LongpollWindow >= 20*time.Second:
		return nil, fmt.Errorf("--longpoll-window must be between 0 and 20s (phoenix.js gives up on a request after 20s), got %s", cfg.LongpollWindow)
	case cfg.SessionTimeout <= 0:
		return nil, fmt.Errorf("--session-timeout must be positive, got %s", cfg.SessionTimeout)
	case cfg.TokenMaxAge <= 0:
		return nil, fmt.Errorf("--token-max-age must be positive, got %s", cfg.TokenMaxAge)
	case cfg.History <= 0:
		return nil, fmt.Errorf("--history must be positive, got %d", cfg.History)
	case cfg.MailboxBytes <= 0:
		return nil, fmt.Errorf("--mailbox-bytes must be positive, got %d", cfg.MailboxBytes)
	case cfg.SSEHeartbeat <= 0 || cfg.SSEMaxLifetime <= 0 || cfg.SSERetry <= 0:
		return nil, errors.New("--sse-heartbeat, --sse-max-lifetime and --sse-retry must be positive")
	case cfg.MaxPayload <= 0 || cfg.MaxSessions < 0 || cfg.PostRate < 0 || cfg.PostBurst <= 0 || cfg.MaxStreams < 0 || cfg.MaxSockets < 0:
		return nil, errors.New("--max-payload and --post-burst must be positive; --max-sessions-per-user, --post-rate, --max-streams and --max-sockets not negative")
	case cfg.SSEPadding < 0 || cfg.SSEPadding > 65536:
		return nil, fmt.Errorf("--sse-padding must be between 0 and 65536, got %d", cfg.SSEPadding)
	case cfg.MaxBodyBytes <= 0:
		return nil, fmt.Errorf("--max-body must be positive, got %d", cfg.MaxBodyBytes)
	case cfg.BodyTimeout <= 0:
		return nil, fmt.Errorf("--body-timeout must be positive, got %s", cfg.BodyTimeout)
	case cfg.Secret != "" && len(cfg.Secret) < 20:
		return nil, errors.New("--secret must be at least 20 bytes long (as Phoenix requires of secret_key_base)")
	}
	if cfg.RedisURL != "" {
		if _, err := redisurl.Parse(cfg.RedisURL); err != nil {
			return nil, fmt.Errorf("--redis: %w", err)
		}
	}
	return cfg, nil
}

func newLogger(cfg *serveConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, got %q", cfg.LogFormat)
}

func serveCommand(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseServeFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg, stderr)
	if err != nil {
		return err
	}
	if _, set := lookupEnv("REDIS_URL"); set && cfg.RedisURL == "" {
		// REDIS_URL is every app's variable: one exported for something
		// else must not silently become this gateway's store.
		log.Warn("REDIS_URL is set but sluice does not read it: set --redis or SLUICE_REDIS to use Redis; serving from the in-memory store")
	}
	if cfg.Secret == "" {
		var b [32]byte
		_, _ = rand.Read(b[:])
		cfg.Secret = hex.EncodeToString(b[:])
		log.Warn("no --secret or SLUICE_SECRET: using a random secret; tokens signed by other processes (sluice token, your Phoenix app) will not verify")
	}
	srv, err := newServer(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	if cfg.DebugAddr != "" {
		dln, err := net.Listen("tcp", cfg.DebugAddr)
		if err != nil {
			return fmt.Errorf("listen on --debug-addr %s: %w", cfg.DebugAddr, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		ds := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = ds.Serve(dln) }()
		defer ds.Close()
		log.Info("pprof listening", "addr", dln.Addr().String())
	}
	return srv.serve(ctx, ln)
}

// server is a running gateway with its HTTP front.
type server struct {
	cfg  *serveConfig
	log  *slog.Logger
	gw   *gateway.Gateway
	echo *echo.Echo
	// storeKind names the store for logs: "memory" or the Redis deployment.
	storeKind string
	// background runs until its context is done (expiry, sweeps, pub/sub).
	background []func(context.Context)
	// ready reports whether the shared state is reachable.
	ready func(context.Context) error
	// close releases the store's connections after shutdown.
	close func() error
	// dropped counts what a memory store loses at exit (nil with Redis).
	dropped func() int
	// apiKeys opens /api routes to bearer keys.
	apiKeys *apiKeys
	// longpoll parks its waiting polls once serve gives it a listener to
	// hand their connections back to.
	longpoll *longpoll.Transport
}

// mailboxBudget bounds sessions' mailboxes to --mailbox-bytes.
func mailboxBudget(cfg *serveConfig) topics.ByteBudget {
	return topics.ByteBudget{Prefix: gateway.MailboxTopicPrefix, MaxBytes: cfg.MailboxBytes}
}

// stores are the state backends the gateway and the app use.
type stores struct {
	sessions gateway.SessionStore
	presence gateway.PresenceStore
	broker   topics.Broker
	chat     chat.Store
}

func newServer(cfg *serveConfig, log *slog.Logger) (*server, error) {
	s := &server{cfg: cfg, log: log, echo: echo.New(), ready: func(context.Context) error { return nil }, close: func() error { return nil }}
	m := metrics.New()
	var st stores
	if cfg.RedisURL == "" {
		broker := topics.NewMemoryBroker(cfg.History, cfg.HistoryTTL, mailboxBudget(cfg))
		mem := gateway.NewMemoryStore()
		st = stores{sessions: mem, presence: mem, broker: broker, chat: chat.NewMemoryStore(chat.HistorySize * 10)}
		s.storeKind = "memory"
		s.dropped = mem.Count
		s.background = append(s.background, func(ctx context.Context) { broker.Run(ctx, time.Minute) })
	} else {
		redis.SetLogger(redisLogger{log})
		client, kind, err := newRedisClient(cfg.RedisURL)
		if err != nil {
			return nil, err
		}
		client.AddHook(m.RedisHook())
		broker := topics.NewRedisBroker(client, topics.RedisOptions{Prefix: cfg.RedisPrefix, MaxLen: cfg.History, ByteBudgets: []topics.ByteBudget{mailboxBudget(cfg)}, Retention: cfg.HistoryTTL, Logger: log})
		store := gateway.NewRedisStore(client, gateway.RedisOptions{Prefix: cfg.RedisPrefix, Logger: log})
		st = stores{sessions: store, presence: store, broker: broker, chat: chat.NewRedisStore(client, cfg.RedisPrefix+"chat:", chat.HistorySize*10)}
		s.storeKind = "redis " + kind
		s.background = append(s.background, func(ctx context.Context) {
			if err := broker.Run(ctx); err != nil {
				log.Error("redis pub/sub receiver stopped", "err", err)
			}
		})
		s.ready = func(ctx context.Context) error { return client.Ping(ctx).Err() }
		s.close = client.Close
	}
	app := chat.New(st.chat)
	router := &topics.Router[gateway.Handler]{}
	// Open topics first: an operator's explicit pattern wins over the app's.
	for _, pattern := range strings.Split(cfg.OpenTopics, ",") {
		if pattern = strings.TrimSpace(pattern); pattern != "" {
			router.Add(pattern, gateway.ReceiveOnly{})
		}
	}
	app.Register(router)
	gw, err := gateway.New(gateway.Config{
		Router:             router,
		Authenticate:       gateway.TokenAuthenticator(cfg.Secret, cfg.TokenMaxAge),
		SessionSecret:      []byte(cfg.Secret),
		Sessions:           st.sessions,
		Presence:           st.presence,
		Broker:             st.broker,
		SessionTimeout:     cfg.SessionTimeout,
		MaxPayloadBytes:    cfg.MaxPayload,
		MaxSessionsPerUser: cfg.MaxSessions,
		PostRate:           cfg.PostRate,
		PostBurst:          cfg.PostBurst,
		Logger:             log,
		Observer:           m,
	})
	if err != nil {
		return nil, err
	}
	s.gw = gw
	s.background = append(s.background, func(ctx context.Context) { gw.Run(ctx, time.Second) })
	e := s.echo
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.httpError
	e.JSONSerializer = jsonSerializer{}
	e.Use(accessLog(log))
	e.Use(noStore)
	e.Use(readBodyWithin(cfg.BodyTimeout, int64(cfg.MaxBodyBytes), gw.Observer()))
	origins, err := gateway.NewOriginChecker(strings.Split(cfg.AllowedOrigins, ","))
	if err != nil {
		return nil, fmt.Errorf("--allowed-origins: %w", err)
	}
	s.longpoll = longpoll.New(gw, longpoll.Config{Window: cfg.LongpollWindow, MaxBodyBytes: int64(cfg.MaxBodyBytes), Origins: origins, Logger: log})
	s.longpoll.Register(e, "/socket/longpoll")
	sse.New(gw, sse.Config{
		Retry:            cfg.SSERetry,
		Heartbeat:        cfg.SSEHeartbeat,
		MaxLifetime:      cfg.SSEMaxLifetime,
		Padding:          cfg.SSEPadding,
		MaxBodyBytes:     int64(cfg.MaxBodyBytes),
		AllowCredentials: cfg.CORSCredentials,
		MaxStreams:       cfg.MaxStreams,
		Origins:          origins,
		Logger:           log,
	}).Register(e, "/socket/sse")
	websocket.New(gw, websocket.Config{MaxSockets: cfg.MaxSockets, MaxMessageBytes: int64(cfg.MaxBodyBytes), Origins: origins, Logger: log}).Register(e, "/socket/websocket")
	web.Register(e)
	if cfg.Console {
		web.RegisterConsole(e)
	}
	if cfg.SelfTest {
		web.RegisterSelfTest(e, web.SelfTestPrefix, web.SelfTestConfig{Draining: gw.Draining()})
	}
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(m.Handler()))
	api := e.Group("/api", middleware.BodyLimit(strconv.Itoa(cfg.MaxBodyBytes)+"B"), s.requireAPIKey)
	s.registerAPI(api)
	app.RegisterAPI(api)
	var routes []string
	for _, r := range e.Routes() {
		if strings.HasPrefix(r.Path, "/api/") && !slices.Contains(routes, apiRoute(r.Path)) {
			routes = append(routes, apiRoute(r.Path))
		}
	}
	slices.Sort(routes)
	if s.apiKeys, err = parseAPIKeys(cfg.APIKey, cfg.APIKeys, routes); err != nil {
		return nil, err
	}
	return s, nil
}

// readyz answers 200 when the shared state is reachable, else 503 and why.
func (s *server) readyz(c echo.Context) error {
	select {
	case <-s.gw.Draining():
		return c.String(http.StatusServiceUnavailable, "not ready: draining\n")
	default:
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		return c.String(http.StatusServiceUnavailable, "not ready: "+s.storeKind+" unreachable: "+err.Error()+"\n")
	}
	return c.String(http.StatusOK, "ready\n")
}

// httpError answers errors as JSON {"error": "..."} so that curl users see why.
func (s *server) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	// Errors that are not a deliberate HTTP answer come from the store: say
	// it is transient.
	code, msg := http.StatusServiceUnavailable, "temporarily unavailable: the shared store did not answer; retry"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code = he.Code
		msg = fmt.Sprint(he.Message)
	} else {
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "err", err)
		c.Response().Header().Set("Retry-After", "1")
	}
	if code == http.StatusRequestEntityTooLarge {
		msg = fmt.Sprintf("request body larger than %d bytes", s.cfg.MaxBodyBytes)
	}
	// The message may quote input and is not HTML-escaped: forbid sniffing.
	c.Response().Header().Set("X-Content-Type-Options", "nosniff")
	_ = c.JSON(code, map[string]string{"error": msg})
}

// serve runs until ctx is done, then shuts down gracefully.
func (s *server) serve(ctx context.Context, ln net.Listener) error {
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	err := s.ready(pctx)
	pcancel()
	switch {
	case err != nil && permanentRedisError(err):
		// Redis answered and refused (a database it does not have, a wrong
		// password): waiting will not fix it. A Redis that is down is
		// waited for (below).
		_ = ln.Close()
		_ = s.close()
		return fmt.Errorf("%s refused the connection (%w); check --redis (its database number, user and password) and start again", s.storeKind, err)
	case err != nil:
		s.log.Error("store unreachable at startup; serving anyway, /readyz says 503 until it answers", "store", s.storeKind, "err", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	for _, run := range s.background {
		go run(runCtx)
	}
	hs := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	// Waiting long-polls are parked off net/http and their connections
	// handed back through this listener for the client's next poll.
	hl := handback.Wrap(ln)
	ln = hl
	s.longpoll.ParkWith(hl.Return, hs.IdleTimeout)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("sluice listening", "addr", ln.Addr().String(), "store", s.storeKind, "longpoll_window", s.cfg.LongpollWindow.String(), "session_timeout", s.cfg.SessionTimeout.String(), "api", s.apiKeys.enabled())
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Drain: refuse new sessions, answer waiting polls and end streams at
	// once (clients continue on other instances; with Redis their sessions
	// live on), let POSTs in flight finish, then stop.
	s.log.Info("draining", "timeout", s.cfg.ShutdownTimeout.String())
	s.gw.Drain()
	// Keep serving for a moment: /readyz says 503 so the balancer stops
	// sending here, requests already on their way are answered rather than
	// reset (net/http drops a request it reads once Shutdown has begun), and
	// without keep-alive every client's next request opens a connection the
	// balancer sends elsewhere.
	hs.SetKeepAlivesEnabled(false)
	delay := min(s.cfg.DrainDelay, s.cfg.ShutdownTimeout/2)
	time.Sleep(delay)
	// Stop accepting, then give the connections already accepted a moment
	// to send their requests before Shutdown: it would drop them unread.
	_ = ln.Close()
	time.Sleep(min(250*time.Millisecond, delay/2))
	sctx, scancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout-delay)
	defer scancel()
	if err := hs.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown deadline passed; closing connections", "err", err)
		_ = hs.Close()
	}
	cancel()
	if s.dropped != nil {
		if n := s.dropped(); n > 0 {
			s.log.Warn("memory store: sessions dropped at exit (their clients reconnect and rejoin; use --redis to keep sessions across restarts)", "sessions", n)
		}
	}
	if err := s.close(); err != nil {
		s.log.Warn("closing the store", "err", err)
	}
	s.log.Info("stopped")
	return nil
}

// trimBearer returns the key of an "Authorization: Bearer <key>" header.
func trimBearer(h string) (string, bool) {
	scheme, key, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(key), true
}

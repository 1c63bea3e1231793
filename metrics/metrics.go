// Package metrics exposes what Sluice does in the Prometheus format: it is a
// gateway.Observer, a go-redis hook, and the /metrics handler.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// Metrics holds Sluice's collectors in their own registry.
type Metrics struct {
	registry *prometheus.Registry

	sessionsStarted prometheus.Counter
	sessionsEnded   *prometheus.CounterVec
	joins           *prometheus.CounterVec
	received        *prometheus.CounterVec
	delivered       *prometheus.CounterVec
	// deliveredByLabel caches delivered's counters by [transport, kind].
	deliveredByLabel sync.Map
	latency          prometheus.Histogram
	open             *prometheus.GaugeVec
	refused          *prometheus.CounterVec
	resumes          *prometheus.CounterVec
	gaps             prometheus.Counter
	redisDuration    *prometheus.HistogramVec
	redisErrors      *prometheus.CounterVec
}

// New returns Metrics registered in a new registry, with the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		sessionsStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_sessions_started_total", Help: "Sessions created on this instance.",
		}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_sessions_ended_total", Help: "Sessions ended by this instance, by reason (expired, disconnected, closed: its WebSocket connection ended).",
		}, []string{"reason"}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_joins_total", Help: "Channel joins by topic pattern and outcome (ok, error, crashed, unmatched, limit).",
		}, []string{"pattern", "outcome"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_messages_in_total", Help: "Frames received from clients, by transport.",
		}, []string{"transport"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_messages_out_total", Help: "Frames written to clients, by transport and kind (reply, push, broadcast, presence, control).",
		}, []string{"transport", "kind"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_delivery_latency_seconds",
			Help:    "Time from a message being published to it being written to a client.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_open_requests", Help: "Open SSE streams, WebSocket connections and waiting long-polls on this instance, by transport.",
		}, []string{"transport"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_requests_refused_total", Help: "Requests refused or failed, by transport and reason.",
		}, []string{"transport", "reason"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_resumes_total", Help: "Streams resumed from their last event id, by transport.",
		}, []string{"transport"}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_gaps_total", Help: "Clients told they fell behind the retained history (their channel got phx_error).",
		}),
		redisDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_redis_command_duration_seconds",
			Help:    "Redis round trips by command (pipeline for pipelines).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"command"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_redis_errors_total", Help: "Redis round trips that failed, by command.",
		}, []string{"command"}),
	}
	m.registry.MustRegister(m.sessionsStarted, m.sessionsEnded, m.joins, m.received, m.delivered, m.latency,
		m.open, m.refused, m.resumes, m.gaps, m.redisDuration, m.redisErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// SessionStarted implements gateway.Observer.
func (m *Metrics) SessionStarted() { m.sessionsStarted.Inc() }

// SessionEnded implements gateway.Observer.
func (m *Metrics) SessionEnded(reason string) { m.sessionsEnded.WithLabelValues(reason).Inc() }

// Joined implements gateway.Observer.
func (m *Metrics) Joined(pattern, outcome string) { m.joins.WithLabelValues(pattern, outcome).Inc() }

// Received implements gateway.Observer.
func (m *Metrics) Received(transport string, frames int) {
	m.received.WithLabelValues(transport).Add(float64(frames))
}

// Delivered implements gateway.Observer.
func (m *Metrics) Delivered(transport, kind string, latency time.Duration) {
	// Called for every frame written: look the counter up once per label
	// pair, not by hashing the labels every time.
	key := [2]string{transport, kind}
	c, ok := m.deliveredByLabel.Load(key)
	if !ok {
		c, _ = m.deliveredByLabel.LoadOrStore(key, m.delivered.WithLabelValues(transport, kind))
	}
	c.(prometheus.Counter).Inc()
	if kind == "broadcast" || kind == "presence" || kind == "push" {
		m.latency.Observe(latency.Seconds())
	}
}

// Open implements gateway.Observer.
func (m *Metrics) Open(transport string, delta int) {
	m.open.WithLabelValues(transport).Add(float64(delta))
}

// Refused implements gateway.Observer.
func (m *Metrics) Refused(transport, reason string) {
	m.refused.WithLabelValues(transport, reason).Inc()
}

// Resumed implements gateway.Observer.
func (m *Metrics) Resumed(transport string) { m.resumes.WithLabelValues(transport).Inc() }

// Gap implements gateway.Observer.
func (m *Metrics) Gap() { m.gaps.Inc() }

// RedisHook returns a go-redis hook timing every round trip.
func (m *Metrics) RedisHook() redis.Hook { return redisHook{m} }

type redisHook struct{ m *Metrics }

func (h redisHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			h.m.redisErrors.WithLabelValues("dial").Inc()
		}
		return conn, err
	}
}

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.observe(commandName(cmd), start, err)
		return err
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.observe("pipeline", start, err)
		return err
	}
}

func (h redisHook) observe(name string, start time.Time, err error) {
	if name == "client" {
		return // go-redis's CLIENT SETINFO on connect, refused by Redis < 7.2
	}
	h.m.redisDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	if isFailure(err) {
		h.m.redisErrors.WithLabelValues(name).Inc()
	}
}

// isFailure tells real failures from answers that are part of normal work:
// a missing key, or a script not yet cached (the caller sends its source).
func isFailure(err error) bool {
	return err != nil && !errors.Is(err, redis.Nil) && !strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// commandName keeps label values few: scripts are one "evalsha" whatever
// their body.
func commandName(cmd redis.Cmder) string {
	return strings.ToLower(cmd.Name())
}

package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the result of a run. Rates are per second of the measurement
// window; latencies are in milliseconds.
type Report struct {
	// Target is the kind of server measured: sluice or centrifugo.
	Target    string `json:"target"`
	Scenario  string `json:"scenario"`
	Transport string `json:"transport"`
	// TopicPattern names the topics (Config.TopicPattern).
	TopicPattern string   `json:"topic_pattern"`
	URLs         []string `json:"urls"`
	Interrupted  bool     `json:"interrupted,omitempty"`

	// Clients.
	Clients      int                   `json:"clients"`
	Started      int                   `json:"started"`
	Connected    int                   `json:"connected"`
	ConnectedSSE int                   `json:"connected_sse"`
	ConnectedLP  int                   `json:"connected_longpoll"`
	ConnectedWS  int                   `json:"connected_websocket"`
	Failed       int                   `json:"failed"`
	FailedByKind map[string]ErrorCount `json:"failed_by_kind,omitempty"`
	JoinedAtEnd  int                   `json:"joined_at_end"`
	// ConnectSeconds is from the first connect to the last client
	// connected or failed.
	ConnectSeconds float64 `json:"connect_seconds"`
	// RampSeconds is what the connects were spread over, and ConnectRate
	// the connects per second asked for (0: --ramp was given instead).
	RampSeconds float64 `json:"ramp_seconds"`
	ConnectRate float64 `json:"connect_rate_target,omitempty"`
	// ConnectLatency is each connected client's time from its start to
	// connected and subscribed (for a long-poll client, its first polls).
	ConnectLatency   LatencyStats          `json:"connect_latency_ms"`
	Topics           int                   `json:"topics"`
	Joins            int                   `json:"joins_per_client"`
	Publishers       int                   `json:"publishers"`
	RateTarget       float64               `json:"rate_target"`
	FileLimit        uint64                `json:"file_limit"`
	SourceAddrs      int                   `json:"source_addrs"`
	WindowSeconds    float64               `json:"window_seconds"`
	DrainSeconds     float64               `json:"drain_seconds"`
	Sent             int64                 `json:"sent"`
	SendFailed       int64                 `json:"send_failed"`
	SentPerSecond    float64               `json:"sent_per_second"`
	Expected         int64                 `json:"expected"`
	Delivered        int64                 `json:"delivered"`
	DeliveredPerSec  float64               `json:"delivered_per_second"`
	Missed           int64                 `json:"missed"`
	Duplicated       int64                 `json:"duplicated"`
	OutOfOrder       int64                 `json:"out_of_order"`
	Extra            int64                 `json:"extra"`
	ClientsMissing   int                   `json:"clients_missing_messages"`
	Reconnects       int64                 `json:"reconnects"`
	Rejoins          int64                 `json:"rejoins"`
	RoundTrips       int64                 `json:"poll_round_trips"`
	RoundTripsPerSec float64               `json:"poll_round_trips_per_second"`
	EmptyPolls       int64                 `json:"polls_empty"`
	Latency          LatencyStats          `json:"latency_ms"`
	Errors           map[string]ErrorCount `json:"errors"`
	Server           *ServerStats          `json:"server,omitempty"`
	Tool             ToolStats             `json:"tool"`
	Redis            *RedisStats           `json:"redis,omitempty"`
	// RedisConnect is what Redis did from the run's start until every
	// client connected or failed.
	RedisConnect *RedisStats `json:"redis_connect,omitempty"`

	// OK is false when a message was missed, duplicated or out of order,
	// more than --max-failed clients failed, or the run was interrupted.
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
}

// LatencyStats are end-to-end latencies (receive time minus the send time
// in the payload), in milliseconds.
type LatencyStats struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// ServerStats are the server processes' RSS and CPU (summed over --pid).
type ServerStats struct {
	PIDs []int `json:"pids"`
	// RSS before any client connected, once all were connected (after the
	// settle pause), and at the end of the drain.
	RSSBaselineBytes int64 `json:"rss_baseline_bytes"`
	RSSIdleBytes     int64 `json:"rss_idle_bytes"`
	RSSEndBytes      int64 `json:"rss_end_bytes"`
	// Per connected client, above the baseline.
	RSSIdlePerConn float64 `json:"rss_idle_per_connection_bytes"`
	RSSEndPerConn  float64 `json:"rss_end_per_connection_bytes"`
	// CPU seconds from the window's start to the drain's end.
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUPercent is CPUSeconds over that wall time (100 = one core).
	CPUPercent float64 `json:"cpu_percent"`
	// CPUPerMillion is CPU seconds per million messages delivered.
	CPUPerMillion float64 `json:"cpu_seconds_per_million_deliveries,omitempty"`
	// CPUConnectSeconds is CPU seconds from the first connect to the last
	// client connected or failed (connecting and joining every client).
	CPUConnectSeconds float64 `json:"cpu_connect_seconds"`
	// CPUPerConnectMs is CPUConnectSeconds per client connected, in
	// milliseconds.
	CPUPerConnectMs float64 `json:"cpu_ms_per_connect,omitempty"`
}

// ToolStats is what the load generator itself used, for judging whether it
// was the bottleneck on a shared machine.
type ToolStats struct {
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPercent float64 `json:"cpu_percent"`
	RSSBytes   int64   `json:"rss_bytes"`
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return nil
}

// WriteText writes the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "  %s\t"+format+"\n", append([]any{k}, args...)...)
	}
	head := func(s string) { fmt.Fprintf(tw, "%s\n", s) }

	title := fmt.Sprintf("sluice bench: %s over %s, %d clients, %s %s", r.Scenario, r.Transport, r.Clients, r.Target, strings.Join(r.URLs, ", "))
	if r.Interrupted {
		title += " (interrupted)"
	}
	head(title)
	head("clients")
	line("connected", "%d of %d (sse %d, longpoll %d, websocket %d) in %.1fs (ramp %.1fs)", r.Connected, r.Clients, r.ConnectedSSE, r.ConnectedLP, r.ConnectedWS, r.ConnectSeconds, r.RampSeconds)
	if l := r.ConnectLatency; l.Count > 0 {
		line("connect ms", "p50 %.1f  p90 %.1f  p99 %.1f  max %.1f", l.P50, l.P90, l.P99, l.Max)
	}
	if r.Started < r.Clients {
		line("not started", "%d", r.Clients-r.Started)
	}
	line("failed", "%d", r.Failed)
	for _, k := range sortedKinds(r.FailedByKind) {
		ec := r.FailedByKind[k]
		line("  "+k, "%d  (%s)", ec.Count, clip(ec.Example, 100))
	}
	line("joined at end", "%d", r.JoinedAtEnd)
	line("topics", "%d, %d per client", r.Topics, r.Joins)
	line("reconnects", "%d", r.Reconnects)
	line("rejoins", "%d", r.Rejoins)
	line("file limit", "%d (source addresses %d)", r.FileLimit, r.SourceAddrs)

	if r.Scenario != ScenarioConnect {
		head(fmt.Sprintf("window %.1fs, drain %.1fs", r.WindowSeconds, r.DrainSeconds))
	}
	if r.Scenario == ScenarioBroadcast || r.Scenario == ScenarioChat {
		rate := "as fast as possible"
		if r.RateTarget > 0 {
			rate = fmt.Sprintf("%g/s", r.RateTarget)
		}
		line("sent", "%d (%.1f/s; target %s; %d publishers), %d failed", r.Sent, r.SentPerSecond, rate, r.Publishers, r.SendFailed)
		line("delivered", "%d of %d expected (%.1f/s)", r.Delivered, r.Expected, r.DeliveredPerSec)
		line("missed", "%d (%d clients)", r.Missed, r.ClientsMissing)
		line("duplicated", "%d", r.Duplicated)
		line("out of order", "%d", r.OutOfOrder)
		if r.Extra > 0 {
			line("extra", "%d (from publishes that reported failure)", r.Extra)
		}
		line("latency ms", "p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  mean %.1f  (%d samples)", r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max, r.Latency.Mean, r.Latency.Count)
	}
	if r.RoundTrips > 0 {
		line("poll round trips", "%d (%.1f/s), %d empty (204)", r.RoundTrips, r.RoundTripsPerSec, r.EmptyPolls)
	}
	if s := r.Server; s != nil {
		head(fmt.Sprintf("server (pids %v)", s.PIDs))
		line("RSS baseline", "%s", mib(s.RSSBaselineBytes))
		line("RSS connected", "%s  (%s per connection above baseline)", mib(s.RSSIdleBytes), kib(s.RSSIdlePerConn))
		line("RSS at end", "%s  (%s per connection above baseline)", mib(s.RSSEndBytes), kib(s.RSSEndPerConn))
		line("CPU connecting", "%.2fs (%.2f ms per connect)", s.CPUConnectSeconds, s.CPUPerConnectMs)
		if r.Scenario != ScenarioConnect {
			line("CPU window+drain", "%.2fs (%.0f%% of a core)", s.CPUSeconds, s.CPUPercent)
		}
		if s.CPUPerMillion > 0 {
			line("CPU per million deliveries", "%.1fs", s.CPUPerMillion)
		}
	}
	if rs := r.RedisConnect; rs != nil {
		head("redis while connecting")
		line("commands", "%d (%.2f per connect, %.1f/s)", rs.Commands, rs.PerConnect, rs.PerSecond)
		line("CPU", "%s", rs.cpuLine())
	}
	if rs := r.Redis; rs != nil {
		head("redis during the window")
		line("commands", "%d (%.1f/s)", rs.Commands, rs.PerSecond)
		line("CPU", "%s", rs.cpuLine())
		if rs.PerBroadcast > 0 {
			line("per broadcast", "%.2f", rs.PerBroadcast)
		}
		if rs.PerRoundTrip > 0 {
			line("per poll round trip", "%.2f", rs.PerRoundTrip)
		}
		if rs.PerDelivery > 0 {
			line("per delivery", "%.3f", rs.PerDelivery)
		}
		var top []string
		for _, c := range rs.Top {
			top = append(top, fmt.Sprintf("%s %d", c.Name, c.Calls))
		}
		if len(top) > 0 {
			line("top", "%s", strings.Join(top, ", "))
		}
	}
	head("tool")
	line("CPU", "%.2fs (%.0f%% of a core over the run), RSS %s", r.Tool.CPUSeconds, r.Tool.CPUPercent, mib(r.Tool.RSSBytes))
	if len(r.Errors) > 0 {
		head("errors")
		for _, k := range sortedKinds(r.Errors) {
			ec := r.Errors[k]
			line(k, "%d  (%s)", ec.Count, clip(ec.Example, 100))
		}
	}
	if r.OK {
		head("result: OK")
	} else {
		head("result: FAILED: " + strings.Join(r.Problems, "; "))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func kib(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }

// clip shortens s to n runes on one line.
func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

// cpuLine is the summary of Redis's CPU time: "0.41s (1.0% of a core; main
// thread 0.38s)".
func (rs *RedisStats) cpuLine() string {
	out := fmt.Sprintf("%.2fs (%.1f%% of a core", rs.CPUSeconds, rs.CPUPercent)
	if rs.MainThreadCPUSeconds != nil {
		out += fmt.Sprintf("; main thread %.2fs", *rs.MainThreadCPUSeconds)
	}
	return out + ")"
}

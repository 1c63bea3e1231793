// Package loadgen is the engine of `sluice bench`: a load generator that
// speaks Sluice's real protocols. N clients connect over SSE, LongPoll or
// WebSocket (or a mix of the three), each joining K topics, ramped up over a period; once every client
// is connected and joined, publishers send messages for a fixed window,
// through the HTTP API (POST /api/broadcast) or as chat pushes of clients
// (nuevo_mensaje); then the tool waits for deliveries in flight and checks
// that every connected client got every message of its topics once and in
// order. Each message carries its publisher, a sequence number and its send
// time, from which it measures end-to-end latency. It reads the server's RSS
// and CPU from /proc when given its process ids, and Redis's command counts
// when given its URL.
//
// Run is the entry point; Config says what to run; Report is the result.
package loadgen

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Scenarios: what is published, and how.
const (
	// ScenarioBroadcast publishes through POST /api/broadcast to topics the
	// clients join (open topics, `sluice serve --open-topics 'bench:*'`).
	ScenarioBroadcast = "broadcast"
	// ScenarioChat uses the chat app: rooms sala:<id> created with
	// PUT /api/salas/<id>, and a share of the clients push nuevo_mensaje.
	ScenarioChat = "chat"
	// ScenarioIdle publishes nothing: clients connect and hold their
	// connections, to measure what an idle connection costs the server.
	ScenarioIdle = "idle"
	// ScenarioConnect is a connect storm: clients connect (at
	// --connect-rate) and the run ends once every one connected or failed,
	// to measure what a connect costs the server and whether any fails.
	ScenarioConnect = "connect"
)

// Targets: which server the tool speaks to.
const (
	// TargetSluice speaks Sluice's Phoenix Channels transports and API.
	TargetSluice = "sluice"
	// TargetCentrifugo speaks Centrifugo's (v6) unidirectional SSE
	// transport (GET /connection/uni_sse) and its HTTP API (POST
	// /api/publish), so that the same run can be made against both.
	TargetCentrifugo = "centrifugo"
)

// Transports.
const (
	TransportSSE       = "sse"
	TransportLongPoll  = "longpoll"
	TransportWebSocket = "websocket"
	// TransportMix rotates: clients 0, 3, 6... SSE, 1, 4, 7... LongPoll,
	// 2, 5, 8... WebSocket.
	TransportMix = "mix"
)

// Config is what to run. Zero durations are not defaults: use
// DefaultConfig and change what you need.
type Config struct {
	// URLs are the targets' base URLs (http://host:port); clients and
	// publishers spread over them round-robin.
	URLs []string
	// Target is TargetSluice or TargetCentrifugo.
	Target string
	// Transport is TransportSSE, TransportLongPoll, TransportWebSocket or
	// TransportMix.
	Transport string
	// Scenario is ScenarioBroadcast, ScenarioChat, ScenarioIdle or
	// ScenarioConnect.
	Scenario string
	// Clients is how many clients connect.
	Clients int
	// TopicPattern names topic i: fmt.Sprintf(TopicPattern, i) when it holds
	// one %d, else the pattern itself (then Topics must be 1).
	TopicPattern string
	// Topics is how many distinct topics there are.
	Topics int
	// Joins is how many topics each client joins: client c joins topics
	// (c*Joins + j) mod Topics for j < Joins.
	Joins int
	// Rate is the total messages per second over all publishers; 0 sends as
	// fast as the publishers can (each waits for its previous request).
	Rate float64
	// Publishers is how many concurrent API publishers send (broadcast
	// scenario); each sends one request at a time.
	Publishers int
	// PushShare is the fraction of clients that push (chat scenario).
	PushShare float64
	// PayloadBytes pads each message's payload to about this many bytes.
	PayloadBytes int
	// Event is the event name of API broadcasts.
	Event string
	// Ramp spreads the clients' connects over this long.
	Ramp time.Duration
	// ConnectRate, when > 0, replaces Ramp: clients start at this many per
	// second (Ramp = Clients/ConnectRate).
	ConnectRate float64
	// ConnectTimeout is how long a client may take to connect and join
	// before it counts as failed.
	ConnectTimeout time.Duration
	// Settle is a pause between the last client joining and the window.
	Settle time.Duration
	// Duration is the measurement window: how long publishers publish (or,
	// idle, how long connections are held).
	Duration time.Duration
	// Messages, when > 0, ends the window once this many messages were
	// sent (attempted) in all, if Duration has not ended it first: a run of
	// a fixed amount of work, whatever the machine's speed.
	Messages int64
	// Drain is how long to wait after the window for deliveries in flight
	// (the wait ends early once everything expected arrived).
	Drain time.Duration
	// PollTimeout bounds one long-poll request (phoenix.js: 20 s).
	PollTimeout time.Duration
	// Secret is the server's token secret; the tool signs user tokens
	// (Centrifugo: client.token.hmac_secret_key, for HS256 JWTs).
	Secret string
	// APIKey is the key of the server's HTTP API (Sluice: a bearer key;
	// Centrifugo: http_api.key, sent in X-API-Key).
	APIKey string
	// UserBase is the user id of client 0; client i is UserBase+i.
	UserBase int64
	// SourceAddrs spreads client sockets over 127.0.0.1..127.0.0.N when
	// every URL is a loopback address.
	SourceAddrs int
	// PIDs are server processes whose RSS and CPU are reported (summed).
	PIDs []int
	// RedisURL, when set, is read (INFO) before and after the window to
	// report Redis commands per broadcast and per poll.
	RedisURL string
	// MaxFailed is how many clients may fail before the run is a failure.
	MaxFailed int
	// Progress, when set, receives a progress line every few seconds.
	Progress io.Writer
}

// DefaultConfig returns the defaults of `sluice bench`.
func DefaultConfig() Config {
	return Config{
		URLs:           []string{"http://127.0.0.1:4000"},
		Target:         TargetSluice,
		Transport:      TransportSSE,
		Scenario:       ScenarioBroadcast,
		Clients:        100,
		TopicPattern:   "bench:%d",
		Topics:         1,
		Joins:          1,
		Rate:           10,
		Publishers:     4,
		PushShare:      1,
		Event:          "bench",
		Ramp:           5 * time.Second,
		ConnectTimeout: 30 * time.Second,
		Settle:         2 * time.Second,
		Duration:       30 * time.Second,
		Drain:          3 * time.Second,
		PollTimeout:    25 * time.Second,
		UserBase:       1_000_000,
		SourceAddrs:    16,
	}
}

// chatPattern is the default topic pattern of the chat scenario.
const chatPattern = "sala:bench-%d"

// roomID is what the chat app accepts as a room id.
var roomID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// maxPayloadBytes bounds --payload-bytes (the server's default limit is 64 KiB).
const maxPayloadBytes = 1 << 20

// Validate checks the configuration and normalizes the URLs.
func (c *Config) Validate() error {
	if len(c.URLs) == 0 {
		return errors.New("at least one --url is required")
	}
	for i, s := range c.URLs {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--url %q: want http://host:port or https://host:port", s)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("--url %q: no query or fragment, just the base URL (the tool adds /socket/sse, /socket/longpoll, /socket/websocket, /api)", s)
		}
		c.URLs[i] = strings.TrimRight(u.String(), "/")
	}
	switch c.Transport {
	case TransportSSE, TransportLongPoll, TransportWebSocket, TransportMix:
	default:
		return fmt.Errorf("--transport must be sse, longpoll, websocket or mix, got %q", c.Transport)
	}
	switch c.Scenario {
	case ScenarioBroadcast, ScenarioChat, ScenarioIdle, ScenarioConnect:
	default:
		return fmt.Errorf("--scenario must be broadcast, chat, idle or connect, got %q", c.Scenario)
	}
	switch c.Target {
	case TargetSluice:
	case TargetCentrifugo:
		if c.Transport != TransportSSE {
			return fmt.Errorf("--target centrifugo speaks its uni_sse transport only: --transport must be sse, got %q", c.Transport)
		}
		if c.Scenario == ScenarioChat {
			return errors.New("--target centrifugo has no chat app: the scenario must be broadcast, idle or connect")
		}
	default:
		return fmt.Errorf("--target must be sluice or centrifugo, got %q", c.Target)
	}
	switch {
	case c.Clients < 1:
		return fmt.Errorf("--clients must be at least 1, got %d", c.Clients)
	case c.Topics < 1:
		return fmt.Errorf("--topics must be at least 1, got %d", c.Topics)
	case c.Joins < 1 || c.Joins > c.Topics:
		return fmt.Errorf("--joins must be between 1 and --topics (%d), got %d", c.Topics, c.Joins)
	case c.Joins > 100:
		return fmt.Errorf("--joins must be at most 100 (the server's channels per session), got %d", c.Joins)
	case c.Rate < 0:
		return fmt.Errorf("--rate must not be negative (0: as fast as possible), got %g", c.Rate)
	case c.Publishers < 1:
		return fmt.Errorf("--publishers must be at least 1, got %d", c.Publishers)
	case c.PushShare <= 0 || c.PushShare > 1:
		return fmt.Errorf("--push-share must be in (0, 1], got %g", c.PushShare)
	case c.PayloadBytes < 0 || c.PayloadBytes > maxPayloadBytes:
		return fmt.Errorf("--payload-bytes must be between 0 and %d, got %d", maxPayloadBytes, c.PayloadBytes)
	case c.Scenario == ScenarioChat && c.PayloadBytes > 1900:
		return fmt.Errorf("--payload-bytes must be at most 1900 in the chat scenario (the app refuses contenido over 2000 characters), got %d", c.PayloadBytes)
	case c.Duration <= 0:
		return fmt.Errorf("--duration must be positive, got %s", c.Duration)
	case c.Messages < 0:
		return fmt.Errorf("--messages must not be negative (0: no count), got %d", c.Messages)
	case c.Ramp < 0 || c.Settle < 0 || c.Drain < 0:
		return errors.New("--ramp, --settle and --drain must not be negative")
	case c.ConnectRate < 0:
		return fmt.Errorf("--connect-rate must not be negative (0: use --ramp), got %g", c.ConnectRate)
	case c.ConnectTimeout <= 0 || c.PollTimeout <= 0:
		return errors.New("--connect-timeout and --poll-timeout must be positive")
	case len(c.Secret) < 20:
		return errors.New("--secret (or SLUICE_SECRET) is required: the server's token secret, at least 20 bytes")
	case c.publishes() && c.APIKey == "":
		return fmt.Errorf("--api-key (or SLUICE_API_KEY) is required by the %s scenario (to %s)", c.Scenario, map[bool]string{true: "create chat rooms", false: "broadcast"}[c.Scenario == ScenarioChat])
	case c.UserBase < 0:
		return fmt.Errorf("--user-base must not be negative, got %d", c.UserBase)
	case c.SourceAddrs < 1 || c.SourceAddrs > 254:
		return fmt.Errorf("--source-addrs must be between 1 and 254, got %d", c.SourceAddrs)
	case c.MaxFailed < 0:
		return fmt.Errorf("--max-failed must not be negative, got %d", c.MaxFailed)
	case c.Event == "" || strings.ContainsAny(c.Event, "\"\\"):
		return fmt.Errorf("--event must be a plain name, got %q", c.Event)
	}
	for _, pid := range c.PIDs {
		if pid <= 0 {
			return fmt.Errorf("--pid must be a positive process id, got %d", pid)
		}
	}
	if err := c.validateTopics(); err != nil {
		return err
	}
	return nil
}

func (c *Config) validateTopics() error {
	p := c.TopicPattern
	n := strings.Count(p, "%d")
	switch {
	case p == "":
		return errors.New("--topic must not be empty")
	case strings.Contains(strings.ReplaceAll(p, "%d", ""), "%"):
		return fmt.Errorf("--topic %q: the only verb allowed is one %%d", p)
	case n > 1:
		return fmt.Errorf("--topic %q: at most one %%d", p)
	case n == 0 && c.Topics > 1:
		return fmt.Errorf("--topic %q has no %%d, so there is one topic, but --topics is %d", p, c.Topics)
	case strings.ContainsAny(p, ",\"\\ "):
		return fmt.Errorf("--topic %q: no commas, quotes, backslashes or spaces", p)
	}
	if c.Scenario == ScenarioChat {
		if !strings.HasPrefix(p, "sala:") {
			return fmt.Errorf("--topic %q: the chat scenario's topics are rooms of the chat app, sala:<id> (default %s)", p, chatPattern)
		}
		for _, i := range []int{0, c.Topics - 1} {
			id := strings.TrimPrefix(c.TopicName(i), "sala:")
			if id != "lobby" && !roomID.MatchString(id) {
				return fmt.Errorf("--topic %q: room id %q must be 1-64 letters, digits, '-' or '_'", p, id)
			}
		}
	}
	return nil
}

// publishes reports whether the scenario sends messages.
func (c *Config) publishes() bool {
	return c.Scenario == ScenarioBroadcast || c.Scenario == ScenarioChat
}

// ramp returns how long the clients' connects are spread over.
func (c *Config) ramp() time.Duration {
	if c.ConnectRate > 0 {
		return time.Duration(float64(c.Clients) / c.ConnectRate * float64(time.Second))
	}
	return c.Ramp
}

// TopicName returns the name of topic i.
func (c *Config) TopicName(i int) string {
	if !strings.Contains(c.TopicPattern, "%d") {
		return c.TopicPattern
	}
	return strings.Replace(c.TopicPattern, "%d", strconv.Itoa(i), 1)
}

// TransportOf returns the transport of client i.
func (c *Config) TransportOf(i int) string {
	if c.Transport == TransportMix {
		return [...]string{TransportSSE, TransportLongPoll, TransportWebSocket}[i%3]
	}
	return c.Transport
}

// topicsOf returns the topic indices client i joins.
func (c *Config) topicsOf(i int) []int {
	out := make([]int, c.Joins)
	for j := range out {
		out[j] = (i*c.Joins + j) % c.Topics
	}
	return out
}

// isPusher reports whether client i pushes in the chat scenario: pushers
// are spread evenly over the clients, so over the rooms.
func (c *Config) isPusher(i int) bool {
	m := c.pushers()
	return (i+1)*m/c.Clients != i*m/c.Clients
}

// pushers returns how many clients push in the chat scenario.
func (c *Config) pushers() int {
	m := int(float64(c.Clients)*c.PushShare + 0.5)
	return max(1, min(m, c.Clients))
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/sluicegw/sluice/internal/loadgen"
)

const benchSummary = `A load generator speaking Sluice's real protocols: N clients over SSE, LongPoll or WebSocket (or a mix), each
joining K topics, connected over --ramp; once all are joined (and --settle later), publishers send for
--duration through the HTTP API (/api/broadcast) or as chat pushes of clients (nuevo_mensaje); then it
waits up to --drain for deliveries in flight. It reports clients connected and failed, messages sent and
delivered, end-to-end latency percentiles (from a timestamp in each payload), errors by kind, and checks
that every client got every message of its topics once and in order (each carries a sequence number per
publisher and topic). With --pid it reports the server's RSS and CPU, with --redis Redis's commands
per broadcast and per poll. It exits 1 if a message was missed, duplicated or out of order, or more than
--max-failed clients failed. It stops by itself; Ctrl-C stops early and still reports (twice: at once).

The broadcast scenario needs topics any user may join: serve with --open-topics 'bench:*'.

Scenarios (S is the server's secret, K its API key, P its process id):
  (a) 10,000 idle SSE connections, server memory per connection:
      sluice bench --scenario idle --clients 10000 --ramp 20s --duration 10s --pid P --secret S
  (b) one topic, 2,000 SSE subscribers, API broadcasts at 100/s (0: as fast as possible):
      sluice bench --clients 2000 --rate 100 --duration 30s --pid P --secret S --api-key K
  (c) 2,000 long-poll clients in 100 chat rooms, 10% of them pushing 200 messages/s in all:
      sluice bench --scenario chat --transport longpoll --clients 2000 --topics 100 --push-share 0.1 \
        --rate 200 --pid P --secret S --api-key K
  (d) (b) or (c) against three instances sharing Redis (or one proxy URL in front of them):
      sluice bench --url http://127.0.0.1:4001,http://127.0.0.1:4002,http://127.0.0.1:4003 \
        --pid P1,P2,P3 --redis redis://127.0.0.1:6379/0 ...
  (e) Redis commands per broadcast and per poll: add --redis (Sluice must be Redis's only user).
  (f) WebSocket next to SSE: (a) and (b) again with --transport websocket.
  (connect storm) 10,000 connects at 1,000/s; reports failures by kind, the time to connect them all and the
      server's CPU per connect (with --redis, Redis commands per connect); the run ends once all are in:
      sluice bench --scenario connect --clients 10000 --connect-rate 1000 --pid P --secret S

Against Centrifugo (v6, for side-by-side figures: --target centrifugo), clients use its unidirectional SSE
transport, GET /connection/uni_sse with cf_connect {"token":JWT,"subs":{"<topic>":{}}}, and publishers
POST /api/publish with X-API-Key; --secret is its client.token.hmac_secret_key (HS256), --api-key its
http_api.key. The broadcast, idle and connect scenarios run against both, with the same checks and figures.
scripts/bench.sh writes a matching Centrifugo configuration.`

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func benchCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := loadgen.DefaultConfig()
	var urls, pids listFlag
	var jsonOut, idle, quiet bool
	var publish string
	var userBase, messages int
	fs := newFlagSet("bench", benchSummary, stderr)
	fs.string(&cfg.Target, "target", "", cfg.Target, "the server measured: sluice, or centrifugo (its uni_sse transport and HTTP API; transport sse; scenarios broadcast, idle, connect)")
	fs.Var(&urls, "url", "base URL of a target (repeatable, or comma-separated); clients and publishers spread over them round-robin (default http://127.0.0.1:4000)")
	fs.string(&cfg.Transport, "transport", "", cfg.Transport, "sse, longpoll, websocket, or mix (clients in turn over SSE, LongPoll and WebSocket)")
	fs.string(&cfg.Scenario, "scenario", "", cfg.Scenario, "broadcast (API publishers to open topics), chat (clients push nuevo_mensaje in sala:<id> rooms), idle (hold connections, publish nothing), or connect (a connect storm: the run ends once every client connected or failed)")
	fs.string(&publish, "publish", "", "", "api or push: another way to say --scenario broadcast or chat")
	fs.boolean(&idle, "idle", "", false, "same as --scenario idle")
	fs.int(&cfg.Clients, "clients", "", cfg.Clients, "number of clients")
	fs.string(&cfg.TopicPattern, "topic", "", cfg.TopicPattern, "topic name pattern, %d is the topic number (chat scenario default: sala:bench-%d)")
	fs.int(&cfg.Topics, "topics", "", cfg.Topics, "number of distinct topics")
	fs.int(&cfg.Joins, "joins", "", cfg.Joins, "topics each client joins, chosen round-robin")
	fs.float(&cfg.Rate, "rate", "", cfg.Rate, "messages per second in all (0: as fast as the publishers can, each waiting for its previous request)")
	fs.int(&cfg.Publishers, "publishers", "", cfg.Publishers, "concurrent API publishers (broadcast scenario); each has one request in flight")
	fs.float(&cfg.PushShare, "push-share", "", cfg.PushShare, "fraction of clients that push (chat scenario), spread evenly over the rooms")
	fs.int(&cfg.PayloadBytes, "payload-bytes", "", 0, "pad each message's payload to about this many bytes")
	fs.string(&cfg.Event, "event", "", cfg.Event, "event name of API broadcasts")
	fs.duration(&cfg.Ramp, "ramp", "", cfg.Ramp, "spread the clients' connects over this long")
	fs.float(&cfg.ConnectRate, "connect-rate", "", 0, "start clients at this many per second (replaces --ramp; 0: use --ramp)")
	fs.duration(&cfg.ConnectTimeout, "connect-timeout", "", cfg.ConnectTimeout, "a client not connected and joined this long after it started counts as failed")
	fs.duration(&cfg.Settle, "settle", "", cfg.Settle, "pause between the last join and the measurement window")
	fs.duration(&cfg.Duration, "duration", "", cfg.Duration, "the measurement window: how long publishers publish (idle: how long connections are held)")
	fs.int(&messages, "messages", "", 0, "end the window once this many messages were sent in all, if --duration has not ended it first (0: no count, the window lasts --duration)")
	fs.duration(&cfg.Drain, "drain", "", cfg.Drain, "after the window, wait up to this long for deliveries in flight")
	fs.duration(&cfg.PollTimeout, "poll-timeout", "", cfg.PollTimeout, "timeout of one long-poll request (keep it above the server's --longpoll-window)")
	fs.string(&cfg.Secret, "secret", "SLUICE_SECRET", "", "the server's token secret: the tool signs one user token per client (required; centrifugo: its HMAC secret key)")
	fs.string(&cfg.APIKey, "api-key", "SLUICE_API_KEY", "", "the server's API key, to broadcast and to create chat rooms (required unless idle or connect; centrifugo: http_api.key)")
	fs.int(&userBase, "user-base", "", int(cfg.UserBase), "user id of the first client; client i is user-base+i")
	fs.int(&cfg.SourceAddrs, "source-addrs", "", cfg.SourceAddrs, "spread client sockets over 127.0.0.1..127.0.0.N when the targets are loopback addresses (1: no spreading)")
	fs.Var(&pids, "pid", "process id of a server to read RSS and CPU of (repeatable, or comma-separated; summed)")
	fs.string(&cfg.RedisURL, "redis", "SLUICE_REDIS", "", "Redis the servers use (their --redis): report its commands per broadcast and per poll (INFO before and after the window)")
	fs.int(&cfg.MaxFailed, "max-failed", "", 0, "clients that may fail to connect before the run counts as failed")
	fs.boolean(&jsonOut, "json", "", false, "print the report as one JSON object")
	fs.boolean(&quiet, "quiet", "", false, "no progress lines on stderr")
	if err := fs.parse(args); err != nil {
		return err
	}
	if len(urls) > 0 {
		cfg.URLs = urls
	}
	for _, p := range pids {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			fmt.Fprintf(stderr, "sluice bench: --pid %q is not a process id\n", p)
			return errUsage
		}
		cfg.PIDs = append(cfg.PIDs, n)
	}
	cfg.UserBase = int64(userBase)
	cfg.Messages = int64(messages)
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if err := applyScenarioFlags(&cfg, publish, idle, given); err != nil {
		fmt.Fprintf(stderr, "sluice bench: %v\n", err)
		return errUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "sluice bench: %v\n", err)
		return errUsage
	}
	if !quiet {
		cfg.Progress = stderr
	}

	// A second Ctrl-C exits at once; the first stops the run, which still
	// drains and reports.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(c)
		select {
		case <-c:
			fmt.Fprintln(stderr, "sluice bench: interrupted twice, exiting without a report")
			os.Exit(130)
		case <-done:
		}
	}()

	rep, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if jsonOut {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if !rep.OK {
		return errBenchFailed
	}
	return nil
}

// errBenchFailed makes bench exit 1 after a report that says what failed.
var errBenchFailed = errors.New("the run failed its checks (see the report)")

// applyScenarioFlags reconciles --scenario with its shortcuts --publish and
// --idle, and gives the chat scenario its default topic pattern.
func applyScenarioFlags(cfg *loadgen.Config, publish string, idle bool, given map[string]bool) error {
	want := ""
	switch publish {
	case "":
	case "api":
		want = loadgen.ScenarioBroadcast
	case "push":
		want = loadgen.ScenarioChat
	default:
		return fmt.Errorf("--publish must be api or push, got %q", publish)
	}
	if idle {
		if want != "" {
			return errors.New("--idle publishes nothing: it cannot go with --publish")
		}
		want = loadgen.ScenarioIdle
	}
	if want != "" {
		if given["scenario"] && cfg.Scenario != want {
			return fmt.Errorf("--scenario %s contradicts --publish/--idle (%s)", cfg.Scenario, want)
		}
		cfg.Scenario = want
	}
	if cfg.Scenario == loadgen.ScenarioChat && !given["topic"] {
		cfg.TopicPattern = "sala:bench-%d"
	}
	return nil
}

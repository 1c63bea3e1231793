package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/internal/redisurl"
)

// redisProbe reads Redis's command counters and CPU time, to report what a
// broadcast and a poll cost Redis. Every command any client sends is counted, and so is
// every command a Lua script runs (an EVALSHA counts once, plus once per
// command it calls), so the numbers are only meaningful when this run's
// Sluice instances are Redis's only users: no other run's sessions still
// expiring (wait --session-timeout plus --longpoll-window between runs), no
// other program.
type redisProbe struct {
	client *redis.Client
}

// redisSample is one reading of the counters.
type redisSample struct {
	at    time.Time
	total int64            // total_commands_processed
	calls map[string]int64 // per command, from INFO commandstats
	// cpu is Redis's CPU seconds, system and user, all its threads (INFO
	// cpu used_cpu_sys + used_cpu_user).
	cpu float64
	// mainCPU is the main thread's (used_cpu_*_main_thread, Redis 6.2
	// and later), the one that runs commands; -1 if Redis does not say.
	mainCPU float64
}

// probeReads is how many commands one sample sends (INFO stats, INFO
// commandstats, INFO cpu): a later sample's counts include an earlier
// sample's.
const probeReads = 3

func newRedisProbe(rawURL string) (*redisProbe, error) {
	u, err := redisurl.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("--redis: %w", err)
	}
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("--redis: %w", err)
	}
	opts.PoolSize = 1
	opts.DisableIdentity = true
	return &redisProbe{client: redis.NewClient(opts)}, nil
}

func (p *redisProbe) close() error { return p.client.Close() }

// sample reads INFO stats, INFO commandstats and INFO cpu.
func (p *redisProbe) sample(ctx context.Context) (redisSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := redisSample{at: time.Now(), calls: map[string]int64{}, mainCPU: -1}
	stats, err := p.client.Info(ctx, "stats").Result()
	if err != nil {
		return s, fmt.Errorf("redis INFO stats: %w", err)
	}
	cmds, err := p.client.Info(ctx, "commandstats").Result()
	if err != nil {
		return s, fmt.Errorf("redis INFO commandstats: %w", err)
	}
	cpu, err := p.client.Info(ctx, "cpu").Result()
	if err != nil {
		return s, fmt.Errorf("redis INFO cpu: %w", err)
	}
	return parseRedisInfo(s, stats+"\n"+cmds+"\n"+cpu)
}

// parseRedisInfo fills s from the text of INFO stats, commandstats and cpu.
func parseRedisInfo(s redisSample, info string) (redisSample, error) {
	var err error
	found := false
	var cpuFields, mainFields int
	var mainCPU float64
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			if s.total, err = strconv.ParseInt(v, 10, 64); err != nil {
				return s, fmt.Errorf("redis INFO: total_commands_processed %q: %w", v, err)
			}
			found = true
		}
		if name, v, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(name, "used_cpu_") && !strings.HasSuffix(name, "_children") {
			secs, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return s, fmt.Errorf("redis INFO cpu: %s %q: %w", name, v, err)
			}
			switch name {
			case "used_cpu_sys", "used_cpu_user":
				s.cpu += secs
				cpuFields++
			case "used_cpu_sys_main_thread", "used_cpu_user_main_thread":
				mainCPU += secs
				mainFields++
			}
		}
		// cmdstat_get:calls=12,usec=34,usec_per_call=2.83,...
		if rest, ok := strings.CutPrefix(line, "cmdstat_"); ok {
			name, fields, _ := strings.Cut(rest, ":")
			for f := range strings.SplitSeq(fields, ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, _ := strconv.ParseInt(v, 10, 64)
					s.calls[name] = n
				}
			}
		}
	}
	if !found {
		return s, fmt.Errorf("redis INFO stats: no total_commands_processed")
	}
	if cpuFields != 2 {
		return s, fmt.Errorf("redis INFO cpu: no used_cpu_sys and used_cpu_user")
	}
	if mainFields == 2 {
		s.mainCPU = mainCPU
	}
	return s, nil
}

// RedisStats is what Redis did during the window (and drain), or during
// the connect phase.
type RedisStats struct {
	// Commands is the number of commands Redis processed (INFO
	// total_commands_processed, which counts the commands Lua scripts run),
	// less the tool's own INFO calls.
	Commands int64 `json:"commands"`
	// Seconds is the wall time between the two readings.
	Seconds float64 `json:"seconds"`
	// PerSecond is Commands per second: with no message published (the
	// idle scenario), what idle connections cost Redis.
	PerSecond float64 `json:"per_second"`
	// PerConnect is Commands per client connected (connect phase only).
	PerConnect float64 `json:"per_connect,omitempty"`
	// PerBroadcast is Commands per message published (broadcast or push).
	PerBroadcast float64 `json:"per_broadcast,omitempty"`
	// PerRoundTrip is Commands per long-poll round trip.
	PerRoundTrip float64 `json:"per_poll_round_trip,omitempty"`
	// PerDelivery is Commands per message delivered to a client.
	PerDelivery float64 `json:"per_delivery,omitempty"`
	// CPUSeconds is the CPU time Redis used meanwhile (system and user,
	// all its threads), whoever it served: like Commands, it is this run's
	// cost only when this run is Redis's only user.
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUPercent is CPUSeconds over Seconds, in % of one core.
	CPUPercent float64 `json:"cpu_percent"`
	// MainThreadCPUSeconds is the main thread's share of CPUSeconds (the
	// thread that runs commands), when Redis reports it (6.2 and later).
	MainThreadCPUSeconds *float64 `json:"main_thread_cpu_seconds,omitempty"`
	// Top lists the commands called most, with their calls.
	Top []RedisCommand `json:"top,omitempty"`
}

// RedisCommand is one command's calls during the window.
type RedisCommand struct {
	Name  string `json:"name"`
	Calls int64  `json:"calls"`
}

// redisDelta compares two samples.
func redisDelta(before, after redisSample) *RedisStats {
	rs := &RedisStats{
		Commands:   max(0, after.total-before.total-probeReads),
		Seconds:    after.at.Sub(before.at).Seconds(),
		CPUSeconds: max(0, after.cpu-before.cpu),
	}
	if rs.Seconds > 0 {
		rs.PerSecond = float64(rs.Commands) / rs.Seconds
		rs.CPUPercent = 100 * rs.CPUSeconds / rs.Seconds
	}
	if before.mainCPU >= 0 && after.mainCPU >= 0 {
		main := max(0, after.mainCPU-before.mainCPU)
		rs.MainThreadCPUSeconds = &main
	}
	for name, n := range after.calls {
		if name == "info" {
			continue
		}
		if d := n - before.calls[name]; d > 0 {
			rs.Top = append(rs.Top, RedisCommand{Name: name, Calls: d})
		}
	}
	sort.Slice(rs.Top, func(a, b int) bool {
		if rs.Top[a].Calls != rs.Top[b].Calls {
			return rs.Top[a].Calls > rs.Top[b].Calls
		}
		return rs.Top[a].Name < rs.Top[b].Name
	})
	if len(rs.Top) > 10 {
		rs.Top = rs.Top[:10]
	}
	return rs
}

package loadgen

import (
	"strings"
	"testing"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Secret = strings.Repeat("s", 32)
	c.APIKey = "k"
	return c
}

func TestValidate(t *testing.T) {
	c := validConfig()
	c.URLs = []string{"http://127.0.0.1:4000/"}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.URLs[0] != "http://127.0.0.1:4000" {
		t.Errorf("URL not normalized: %q", c.URLs[0])
	}
	for name, change := range map[string]func(*Config){
		"--url":          func(c *Config) { c.URLs = []string{"127.0.0.1:4000"} },
		"--transport":    func(c *Config) { c.Transport = "ws" },
		"--scenario":     func(c *Config) { c.Scenario = "storm" },
		"--clients":      func(c *Config) { c.Clients = 0 },
		"--joins":        func(c *Config) { c.Joins = 2 },
		"--rate":         func(c *Config) { c.Rate = -1 },
		"--secret":       func(c *Config) { c.Secret = "short" },
		"--api-key":      func(c *Config) { c.APIKey = "" },
		"--duration":     func(c *Config) { c.Duration = 0 },
		"--push-share":   func(c *Config) { c.PushShare = 1.5 },
		"--source-addrs": func(c *Config) { c.SourceAddrs = 0 },
		"--topic":        func(c *Config) { c.TopicPattern = "a:%s" },
		"has no %d":      func(c *Config) { c.TopicPattern = "bench:x"; c.Topics = 2 },
		"--pid":          func(c *Config) { c.PIDs = []int{-1} },
		"rooms":          func(c *Config) { c.Scenario = ScenarioChat },
		"room id":        func(c *Config) { c.Scenario = ScenarioChat; c.TopicPattern = "sala:a.b%d" },
		"2000":           func(c *Config) { c.Scenario = ScenarioChat; c.TopicPattern = "sala:r%d"; c.PayloadBytes = 5000 },
	} {
		c := validConfig()
		change(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), name) && !strings.Contains(err.Error(), strings.TrimPrefix(name, "--")) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	idle := validConfig()
	idle.Scenario, idle.APIKey = ScenarioIdle, ""
	if err := idle.Validate(); err != nil {
		t.Errorf("idle without an API key: %v", err)
	}
}

func TestTopicsAndPushers(t *testing.T) {
	c := validConfig()
	c.Clients, c.Topics, c.Joins = 10, 4, 2
	if got := c.topicsOf(3); got[0] != 2 || got[1] != 3 {
		t.Errorf("client 3 joins %v, want [2 3]", got)
	}
	if c.TopicName(3) != "bench:3" {
		t.Errorf("TopicName(3) = %q", c.TopicName(3))
	}
	c.PushShare = 0.3
	n := 0
	for i := range c.Clients {
		if c.isPusher(i) {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d pushers, want 3", n)
	}
	if c.TransportOf(1) != TransportSSE {
		t.Error("--transport sse: client 1 is not SSE")
	}
	c.Transport = TransportMix
	if c.TransportOf(0) != TransportSSE || c.TransportOf(1) != TransportLongPoll || c.TransportOf(2) != TransportWebSocket || c.TransportOf(3) != TransportSSE {
		t.Error("mix does not rotate over sse, longpoll and websocket")
	}
}

package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// centrifugoBinary returns a Centrifugo binary to smoke-test against:
// $CENTRIFUGO_BIN, ~/go/bin/centrifugo or centrifugo on the PATH; "" if
// there is none.
func centrifugoBinary() string {
	if p := os.Getenv("CENTRIFUGO_BIN"); p != "" {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "centrifugo")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, _ := exec.LookPath("centrifugo")
	return p
}

// syncBuffer collects a process's output for a failure message.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCentrifugoSmoke runs a small broadcast against a real Centrifugo (its
// memory engine, on a loopback port), when a binary is installed: the
// tool's token, connect request, push parsing and publishes must be what
// Centrifugo speaks, with every message delivered once and in order.
func TestCentrifugoSmoke(t *testing.T) {
	bin := centrifugoBinary()
	if bin == "" {
		t.Skip("no centrifugo binary ($CENTRIFUGO_BIN, ~/go/bin/centrifugo or PATH)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := map[string]any{
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"log":         map[string]any{"level": "warn"},
		"usage_stats": map[string]any{"disabled": true},
		"health":      map[string]any{"enabled": true},
		"client":      map[string]any{"token": map[string]any{"hmac_secret_key": testSecret}},
		"http_api":    map[string]any{"key": testAPIKey},
		"uni_sse":     map[string]any{"enabled": true},
		"channel": map[string]any{
			"namespaces": []any{map[string]any{"name": "bench", "allow_subscribe_for_client": true}},
		},
	}
	path := filepath.Join(t.TempDir(), "centrifugo.json")
	b, _ := json.Marshal(conf)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	cmd := exec.Command(bin, "--config", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if !waitHealthy(base+"/health", 30*time.Second) {
		t.Fatalf("centrifugo did not answer /health:\n%s", out.String())
	}

	cfg := testConfig(base)
	cfg.Target = TargetCentrifugo
	cfg.Clients, cfg.Rate, cfg.Publishers = 20, 20, 2
	cfg.Messages, cfg.Duration, cfg.Drain = 20, time.Minute, 10*time.Second
	cfg.PIDs = []int{cmd.Process.Pid}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, rep)
	if rep.Connected != 20 || rep.Sent != 20 || rep.Expected != 20*20 || rep.Server == nil {
		t.Errorf("connected %d, sent %d, expected %d, server %+v; want 20, 20, 400:\n%s", rep.Connected, rep.Sent, rep.Expected, rep.Server, out.String())
	}
}

// waitHealthy polls u until it answers 200 or limit passes (the process is
// starting: this is a readiness wait, not a measurement).
func waitHealthy(u string, limit time.Duration) bool {
	hc := &http.Client{Timeout: time.Second}
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		resp, err := hc.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				hc.CloseIdleConnections()
				return true
			}
		}
	}
	hc.CloseIdleConnections()
	return false
}

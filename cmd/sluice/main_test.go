package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/token"
)

const testSecret = "0123456789abcdefghijklmnopqrstuv"

// TestMain makes the commands read an empty environment: no SLUICE_*
// variable of the person running the tests changes what they test (tests
// that read variables set them with withEnv).
func TestMain(m *testing.M) {
	lookupEnv = func(string) (string, bool) { return "", false }
	os.Exit(m.Run())
}

// withEnv makes the commands see exactly env until the test ends.
func withEnv(t *testing.T, env map[string]string) {
	t.Helper()
	prev := lookupEnv
	lookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	t.Cleanup(func() { lookupEnv = prev })
}

func runCmd(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if env != nil {
		withEnv(t, env)
	}
	var out, errw bytes.Buffer
	code = run(context.Background(), args, &out, &errw)
	return code, out.String(), errw.String()
}

func TestTokenCommandPrintsOnlyAVerifiableToken(t *testing.T) {
	code, out, errOut := runCmd(t, nil, "token", "--secret", testSecret, "--user", "42")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	tok := strings.TrimSuffix(out, "\n")
	if strings.ContainsAny(tok, " \n") || tok == "" {
		t.Fatalf("stdout is not one token: %q", out)
	}
	data, err := token.NewSigner(testSecret, gateway.UserSocketSalt).Verify(tok, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if data != int64(42) {
		t.Errorf("an all-digit --user must be signed as an integer, as apps sign user.id; got %#v", data)
	}

	// From SLUICE_SECRET, with a name and a string id.
	code, out, _ = runCmd(t, map[string]string{"SLUICE_SECRET": testSecret}, "token", "--user", "ana", "--name", "Ana", "--max-age", "60s")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	data, err = token.NewSigner(testSecret, gateway.UserSocketSalt).Verify(strings.TrimSpace(out), 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := data.(map[string]any); !ok || m["id"] != "ana" || m["nombre"] != "Ana" {
		t.Errorf("token data = %#v, want %%{id: ana, nombre: Ana}", data)
	}
	if _, err := token.NewSigner(testSecret, gateway.UserSocketSalt).Verify(strings.TrimSpace(out), 0, time.Now().Add(2*time.Minute)); err == nil {
		t.Error("--max-age 60 token still valid after 2 minutes")
	}
}

func TestTokenCommandRefusesBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"token", "--user", "42"},                             // no secret
		{"token", "--secret", testSecret},                     // no user
		{"token", "--secret", testSecret, "--user", "1", "x"}, // stray argument
		{"token", "--secret", testSecret, "--user", "1", "--max-age", "0s"},
		{"token", "--secret", testSecret, "--user", "1", "--max-age", "86400"}, // a duration needs a unit
		{"token", "--secret", "short", "--user", "1"},
		{"nonsense"},
	} {
		code, out, errOut := runCmd(t, nil, args...)
		if code == 0 || out != "" || errOut == "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want a non-zero exit, nothing on stdout and a reason on stderr", args, code, out, errOut)
		}
	}
}

func TestServeFlagsAndEnvironment(t *testing.T) {
	withEnv(t, map[string]string{"SLUICE_ADDR": "127.0.0.1:9999", "SLUICE_LONGPOLL_WINDOW": "3s"})
	var errw bytes.Buffer
	cfg, err := parseServeFlags([]string{"--longpoll-window", "4s"}, &errw)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:9999" || cfg.LongpollWindow != 4*time.Second {
		t.Errorf("addr %q window %s: want the env addr and the flag's window (a flag wins over its variable)", cfg.Addr, cfg.LongpollWindow)
	}
	for _, args := range [][]string{
		{"--longpoll-window", "25s"},
		{"--secret", "too-short"},
		{"--session-timeout", "0s"},
		{"--sse-padding", "-1"},
		{"--body-timeout", "0s"},
		{"--log-level", "loud"},
	} {
		cfg, err := parseServeFlags(args, &errw)
		if err == nil {
			_, err = newLogger(cfg, &errw)
		}
		if err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	// Help lists every flag with its variable.
	errw.Reset()
	code, _, errOut := runCmd(t, nil, "serve", "--help")
	if code != 0 || !strings.Contains(errOut, "--redis (env SLUICE_REDIS)") || !strings.Contains(errOut, "--longpoll-window (env SLUICE_LONGPOLL_WINDOW) (default 10s)") {
		t.Errorf("serve --help: exit %d\n%s", code, errOut)
	}
}

func TestRedisURLKinds(t *testing.T) {
	for url, kind := range map[string]string{
		"redis://127.0.0.1:6379/0":                             "standalone",
		"rediss://user:pw@example.com:6380/2":                  "standalone",
		"redis://127.0.0.1:26379?master_name=m&addr=b:26379":   "sentinel",
		"redis://127.0.0.1:7000?cluster=true&addr=b:7001":      "cluster",
		"redis://127.0.0.1:6379/0?dial_timeout=5s&pool_size=3": "standalone",
	} {
		c, got, err := newRedisClient(url)
		if err != nil || got != kind {
			t.Errorf("%s: kind %q, err %v; want %s", url, got, err, kind)
			continue
		}
		_ = c.Close()
	}
	for _, bad := range []string{"http://x", "redis://127.0.0.1:6379?bogus=1", "::"} {
		if c, _, err := newRedisClient(bad); err == nil {
			_ = c.Close()
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestHealthcheckCommand(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer bad.Close()
	if code, out, _ := runCmd(t, nil, "healthcheck", "--url", ok.URL); code != 0 || out != "healthy\n" {
		t.Errorf("healthy server: exit %d, %q", code, out)
	}
	if code, _, errOut := runCmd(t, nil, "healthcheck", "--url", bad.URL); code != 1 || !strings.Contains(errOut, "503") {
		t.Errorf("503 server: exit %d, %q", code, errOut)
	}
	if code, _, _ := runCmd(t, nil, "healthcheck", "--url", "http://127.0.0.1:1/healthz", "--timeout", "200ms"); code != 1 {
		t.Errorf("nothing listening: exit %d", code)
	}
}

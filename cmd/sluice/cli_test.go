package main

import (
	"strings"
	"testing"
)

func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errOut := runCmd(t, nil, args...)
		if code != 0 || !strings.HasPrefix(out, "sluice ") || !strings.Contains(out, "commit ") || errOut != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want the version and commit on stdout", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, out, _ := runCmd(t, nil, args...)
		if code != 0 {
			t.Errorf("%v: exit %d", args, code)
		}
		for _, cmd := range []string{"serve", "token", "healthcheck", "bench", "version"} {
			if !strings.Contains(out, "\n  "+cmd+" ") {
				t.Errorf("%v does not list the command %s:\n%s", args, cmd, out)
			}
		}
		if strings.Contains(out, "--longpoll-window") {
			t.Errorf("%v prints serve's flags instead of the commands:\n%s", args, out)
		}
	}
	code, _, errOut := runCmd(t, nil, "serv")
	if code != 2 || !strings.Contains(errOut, `unknown command "serv" (did you mean "serve"?)`) {
		t.Errorf("sluice serv: exit %d, %q", code, errOut)
	}
}

// TestFlagMistakesAreOneLine: a mistake is said in one line naming the
// flag (with the closest one for an unknown flag) and where to look, not
// above the whole usage.
func TestFlagMistakesAreOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"serve", "--redis-url", "redis://x:6379"}, nil, "unknown flag --redis-url (did you mean --redis?)"},
		{[]string{"--heartbeat", "3s"}, nil, "unknown flag --heartbeat (did you mean --sse-heartbeat?)"},
		{[]string{"bench", "--redis-url", "redis://x:6379"}, nil, "unknown flag --redis-url (did you mean --redis?)"},
		{[]string{"serve", "--zzzzzzzz"}, nil, "unknown flag --zzzzzzzz\n"},
		{[]string{"serve", "--token-max-age", "86400"}, nil, `invalid value "86400" for --token-max-age: expected a duration such as 24h`},
		{[]string{"serve"}, map[string]string{"SLUICE_TOKEN_MAX_AGE": "86400"}, `invalid value "86400" in SLUICE_TOKEN_MAX_AGE (for --token-max-age): expected a duration such as 24h`},
		{[]string{"token", "--user", "1", "--max-age", "60"}, nil, `invalid value "60" for --max-age: expected a duration such as 24h`},
		{[]string{"serve", "--console=maybe"}, nil, `invalid value "maybe" for --console: expected true or false`},
		{[]string{"serve", "--secret"}, nil, "--secret needs a value"},
	} {
		code, out, errOut := runCmd(t, tc.env, tc.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errOut, tc.want)
		}
		if n := strings.Count(errOut, "\n"); n > 2 || strings.Contains(errOut, "Usage:") {
			t.Errorf("%v: %d lines on stderr, want the mistake and a pointer to --help:\n%s", tc.args, n, errOut)
		}
	}
}

// TestRedisFlagIsOneNameAndReadsNoREDIS_URL: --redis and SLUICE_REDIS in
// every command; a REDIS_URL exported for another program is not read.
func TestRedisFlagIsOneNameAndReadsNoREDIS_URL(t *testing.T) {
	withEnv(t, map[string]string{"REDIS_URL": "redis://elsewhere:6379/3"})
	cfg, err := parseServeFlags(nil, &strings.Builder{})
	if err != nil || cfg.RedisURL != "" {
		t.Errorf("with REDIS_URL set: --redis = %q, %v; want it unset", cfg.RedisURL, err)
	}
	withEnv(t, map[string]string{"SLUICE_REDIS": "redis://127.0.0.1:6379/2"})
	if cfg, err = parseServeFlags(nil, &strings.Builder{}); err != nil || cfg.RedisURL != "redis://127.0.0.1:6379/2" {
		t.Errorf("SLUICE_REDIS: --redis = %q, %v", cfg.RedisURL, err)
	}
	for _, cmd := range []string{"serve", "bench"} {
		_, _, errOut := runCmd(t, nil, cmd, "--help")
		if !strings.Contains(errOut, "--redis (env SLUICE_REDIS)") {
			t.Errorf("%s --help does not list --redis (env SLUICE_REDIS):\n%s", cmd, errOut)
		}
	}
}

func TestEditDistanceAndClosest(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"redis", "redis-url", 4}} {
		if got := editDistance(tc.a, tc.b); got != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
	}
}

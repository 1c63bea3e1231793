// Package redisurl checks a Redis URL before go-redis parses it, so that a
// mistake gets an error that says what a Redis URL looks like and never
// repeats the URL's password (url.Parse's errors quote the whole URL).
package redisurl

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Example is the shape of a Redis URL, for error messages.
const Example = "redis://[user:password@]host:port[/db] (rediss:// for TLS)"

// Parse parses raw as a Redis URL (schemes redis, rediss and unix). Its
// errors never contain the URL's password.
func Parse(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("empty Redis URL: expected %s", Example)
	}
	if !strings.Contains(raw, "://") {
		// "localhost:6379" or "127.0.0.1:6379": an address, not a URL.
		// Quote it only when it holds no credentials.
		if strings.Contains(raw, "@") {
			return nil, fmt.Errorf("the Redis URL has no scheme: it starts with redis:// or rediss://, as in %s", Example)
		}
		return nil, fmt.Errorf("the Redis URL %q has no scheme: it starts with redis:// or rediss:// (redis://%s)", raw, strings.TrimPrefix(raw, "//"))
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL it quotes
		}
		return nil, fmt.Errorf("the Redis URL does not parse (%v): expected %s", err, Example)
	}
	switch u.Scheme {
	case "redis", "rediss", "unix":
		return u, nil
	default:
		return nil, fmt.Errorf("the Redis URL %q has scheme %q: it starts with redis:// or rediss://, as in %s", u.Redacted(), u.Scheme, Example)
	}
}

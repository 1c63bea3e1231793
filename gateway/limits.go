package gateway

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// ErrRateLimited is returned by Handle when a session sends faster than
// Config.PostRate allows.
var ErrRateLimited = errors.New("too many requests for this session; slow down")

// postLimiter keeps a token bucket per session on this instance. Behind a
// round-robin balancer each instance enforces the rate on its own share, so
// a client gets at most instances × the rate: a bound against floods, not
// an exact quota.
type postLimiter struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	byID  map[string]*limiterEntry
}

type limiterEntry struct {
	lim  *rate.Limiter
	used time.Time
}

func newPostLimiter(perSecond float64, burst int) *postLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(perSecond))
	}
	return &postLimiter{rate: rate.Limit(perSecond), burst: burst, byID: make(map[string]*limiterEntry)}
}

// allow reports whether the session may send a request now.
func (p *postLimiter) allow(sessionID string, now time.Time) bool {
	if p == nil {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byID[sessionID]
	if e == nil {
		e = &limiterEntry{lim: rate.NewLimiter(p.rate, p.burst)}
		p.byID[sessionID] = e
	}
	e.used = now
	return e.lim.AllowN(now, 1)
}

// spent reports whether a session the limiter already keeps state for has
// no token now, without spending one: Handle asks before it takes the
// session's lock. A session it does not know is never spent (it gets its
// state, and its first token, once Handle has loaded it).
func (p *postLimiter) spent(sessionID string, now time.Time) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.byID[sessionID]
	return e != nil && e.lim.TokensAt(now) < 1
}

// forget drops the state of a session that ended.
func (p *postLimiter) forget(sessionID string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	delete(p.byID, sessionID)
	p.mu.Unlock()
}

// size returns the number of sessions the limiter keeps state for.
func (p *postLimiter) size() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byID)
}

// sweep forgets sessions idle for longer than a full bucket takes to refill.
func (p *postLimiter) sweep(now time.Time) {
	if p == nil {
		return
	}
	idle := time.Duration(float64(p.burst)/float64(p.rate)*float64(time.Second)) + time.Minute
	p.mu.Lock()
	for id, e := range p.byID {
		if now.Sub(e.used) > idle {
			delete(p.byID, id)
		}
	}
	p.mu.Unlock()
}

// OriginChecker decides whether a request's Origin may use the transports,
// with the semantics of Phoenix's check_origin list (Phoenix.Socket.Transport):
//
//   - "//host" matches host with any scheme and any port;
//   - "//host:port" matches host on that port, any scheme;
//   - "scheme://host" matches host with that scheme on the scheme's default
//     port only (https 443, http 80, wss 443, ws 80), because Elixir's
//     URI.parse fills the default port in: "https://app.example.com" does
//     not admit "https://app.example.com:8443";
//   - "scheme://host:port" matches exactly that scheme, host and port;
//   - a host "*.example.com" matches example.com and its subdomains (and
//     not "evilexample.com").
//
// Requests without an Origin header are not checked (they are not from a
// browser page on another site); an Origin without a host ("null",
// "file://") is refused.
type OriginChecker struct {
	allowAll bool
	patterns []originPattern
}

type originPattern struct {
	scheme, host, port string
	wildcard           bool
}

// defaultPorts are the ports Elixir's URI.parse fills in for a scheme given
// without one (URI.default_port), which Phoenix then compares.
var defaultPorts = map[string]string{"http": "80", "https": "443", "ws": "80", "wss": "443", "ftp": "21", "sftp": "22", "tftp": "69", "ldap": "389"}

// NewOriginChecker parses patterns; an empty list (or "*") allows every origin.
func NewOriginChecker(patterns []string) (*OriginChecker, error) {
	c := &OriginChecker{}
	for _, p := range patterns {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if p == "*" {
			c.allowAll = true
			continue
		}
		raw := p
		if strings.HasPrefix(p, "//") {
			raw = "placeholder:" + p
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || u.Hostname() == "" {
			return nil, errors.New("origin pattern " + p + ": want //host, scheme://host or scheme://host:port")
		}
		op := originPattern{host: strings.ToLower(u.Hostname()), port: u.Port()}
		if !strings.HasPrefix(p, "//") {
			op.scheme = strings.ToLower(u.Scheme)
			if op.port == "" {
				op.port = defaultPorts[op.scheme]
			}
		}
		if h, ok := strings.CutPrefix(op.host, "*."); ok {
			op.host, op.wildcard = h, true
		}
		c.patterns = append(c.patterns, op)
	}
	if len(c.patterns) == 0 {
		c.allowAll = true
	}
	return c, nil
}

// Allowed reports whether origin (an Origin header's value, "" if absent)
// may connect.
func (c *OriginChecker) Allowed(origin string) bool {
	if c == nil || c.allowAll || origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Hostname() == "" {
		return false
	}
	scheme, host, port := strings.ToLower(u.Scheme), strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = defaultPorts[scheme]
	}
	for _, p := range c.patterns {
		if p.scheme != "" && p.scheme != scheme {
			continue
		}
		if p.port != "" && p.port != port {
			continue
		}
		if host == p.host || p.wildcard && strings.HasSuffix(host, "."+p.host) {
			return true
		}
	}
	return false
}

// maxRecentRefsBytes bounds the JSON size of a session's RecentRefs, the
// de-duplication keys (topic+"\x00"+ref) of its latest messages, besides their
// count (2×MaxChannels+100, 300 by default).
//
// With MaxFieldBytes, a key is at most 255+1+255 = 511 bytes, whose JSON is
// at most 2+6×511 = 3,068 bytes (every byte escaped as \u00XX), so the count
// alone would allow 300 × 3,069 ≈ 900 KiB; this budget keeps it at 64 KiB,
// stored and read with the session on every request. Phoenix's clients send
// keys of 10-30 bytes: their 300 keys take under 10 KiB and never reach the
// budget, and one full batch (100 frames) of plain-text keys of the maximum
// size still fits, so that its retry is recognized whole.
const maxRecentRefsBytes = 64 << 10

// jsonStringSize returns the length of s encoded by encoding/json (quotes
// included): HTML characters and control characters escaped, invalid UTF-8
// replaced by \ufffd.
func jsonStringSize(s string) int {
	n := 2
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\' || b == '\n' || b == '\r' || b == '\t' || b == '\b' || b == '\f':
				n += 2
			case b < 0x20 || b == '<' || b == '>' || b == '&':
				n += 6
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1, r == '\u2028', r == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}

// clip shortens a client-chosen string (a topic, an event, a ref) for a log
// line: a log must not grow with what a client sends.
func clip(s string) string {
	const keep = 64
	if len(s) <= keep {
		return s
	}
	cut := keep
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
)

// A session id is public: it is part of every SSE event id, so it travels in
// Last-Event-ID headers and ?lastEventId= URLs and may be read from any
// proxy's logs. What proves a session is its key, an HMAC of the id under a
// key derived from the server secret. The key is handed out only inside the
// session's own answers (the LongPoll token of a poll answer, the SSE
// stream's session event); every instance sharing the secret verifies it
// without a store round trip, so a forged or guessed credential is refused
// before any state is read or created.

// ErrBadSessionKey is returned for a session credential whose key is missing
// or does not match its session id: forged, made with another secret, or
// a public id presented as if it were a credential.
var ErrBadSessionKey = errors.New("invalid session credential")

// sessionKeyLen is the key's length in hex characters (128 bits).
const sessionKeyLen = 32

// sessionKeyContext separates session keys from every other use of the
// server secret (user tokens are HMACs under keys derived from it too).
const sessionKeyContext = "sluice session key v1"

// sessionKeys signs and checks session keys.
type sessionKeys struct {
	secret []byte
}

// newSessionKeys derives the session-key secret from the server secret; an
// empty secret gets a random one (a single instance: keys made by it verify
// only on it).
func newSessionKeys(secret []byte) sessionKeys {
	if len(secret) == 0 {
		secret = make([]byte, 32)
		_, _ = rand.Read(secret)
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(sessionKeyContext))
	return sessionKeys{secret: m.Sum(nil)}
}

func (k sessionKeys) key(sessionID string) string {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte(sessionID))
	return hex.EncodeToString(m.Sum(nil)[:sessionKeyLen/2])
}

func (k sessionKeys) valid(sessionID, key string) bool {
	if len(key) != sessionKeyLen {
		return false
	}
	return hmac.Equal([]byte(k.key(sessionID)), []byte(key))
}

// SessionKey returns the key of a session: with its id, the credential that
// reads and writes it. Transports hand it only to the session's own client.
func (g *Gateway) SessionKey(sessionID string) string { return g.keys.key(sessionID) }

// SessionCredential returns the session's credential, its id followed by its
// key (64 hex characters): what an SSE client sends in X-Sluice-Session.
func (g *Gateway) SessionCredential(sessionID string) string {
	return sessionID + g.keys.key(sessionID)
}

// WithKey returns tok carrying its session's key, for a transport whose
// token is the session's credential (LongPoll's).
func (g *Gateway) WithKey(tok SessionToken) SessionToken {
	tok.Key = g.keys.key(tok.SessionID)
	return tok
}

// VerifySession checks that tok carries its session's key. It returns an
// error wrapping ErrBadSessionKey if it does not; it reads no store.
func (g *Gateway) VerifySession(tok SessionToken) error {
	if tok.Key == "" {
		return errors.New(ErrBadSessionKey.Error() + ": it has no key (a session id or event id alone is not a credential)")
	}
	if !g.keys.valid(tok.SessionID, tok.Key) {
		return ErrBadSessionKey
	}
	return nil
}

// ParseSessionCredential decodes a credential made by SessionCredential (a
// session token with a key and no cursor).
func ParseSessionCredential(s string) (SessionToken, bool) {
	if len(s) != 2*sessionKeyLen {
		return SessionToken{}, false
	}
	return ParseSessionToken(s + ".0")
}

// SessionHandle is how logs name a session: a short hash of its id (10 hex
// characters), enough to follow one session through the logs of every
// instance, and of no use to anyone who reads them.
func SessionHandle(sessionID string) string {
	sum := sha256.Sum256([]byte(sessionID))
	return hex.EncodeToString(sum[:5])
}

// LogSession is a log attribute value naming a session by its handle,
// computed only when the line is written.
func LogSession(sessionID string) slog.LogValuer { return sessionHandle(sessionID) }

type sessionHandle string

func (h sessionHandle) LogValue() slog.Value { return slog.StringValue(SessionHandle(string(h))) }

// userContextKey carries the user a request claims to be, besides its session
// credential (see AsUser).
type userContextKey struct{}

// AsUser returns a context saying that the request also presented a valid
// user token for user: Handle and Poll then refuse a session of another user
// with ErrForeignSession, before anything is applied. A request with a
// session credential and no user token is served as the session's user.
func AsUser(ctx context.Context, user json.RawMessage) context.Context {
	return context.WithValue(ctx, userContextKey{}, user)
}

// checkUser returns ErrForeignSession if ctx names a user other than s's.
func checkUser(ctx context.Context, s *Session) error {
	if u, ok := ctx.Value(userContextKey{}).(json.RawMessage); ok && userKey(u) != s.UserKey() {
		return ErrForeignSession
	}
	return nil
}

// Identify verifies a request's user token without creating anything, for a
// request that comes with a session credential: ok is false when there is no
// token or it does not verify (then the credential alone decides, as
// Phoenix's LongPoll does).
func (g *Gateway) Identify(ctx context.Context, info ConnectInfo) (Identity, bool) {
	if info.Token == "" {
		return Identity{}, false
	}
	id, err := g.cfg.Authenticate(ctx, info)
	return id, err == nil
}

// Package token signs and verifies Phoenix.Token tokens, byte-compatible with
// Elixir's Plug.Crypto.MessageVerifier (plug_crypto 2.x), so tokens minted by
// a Phoenix application verify here and vice versa.
//
// A token is "SFMyNTY.<payload>.<signature>": the payload is the unpadded
// base64url encoding of the Erlang External Term Format (ETF) of the tuple
// {data, signed_at_ms, max_age_seconds}, and the signature is an HMAC over
// "SFMyNTY.<payload>" keyed with PBKDF2-HMAC-SHA256(secret_key_base, salt,
// 1000 iterations, 32 bytes). Tokens are signed, not encrypted: anyone can
// read the data.
//
// Go values map to Erlang terms as follows: integers ↔ integers (decoded as
// int64), string ↔ binary, nil/bool ↔ the atoms nil/true/false, [Atom] ↔ other
// atoms, []any ↔ list, [Tuple] ↔ tuple, map[string]any ↔ map with binary keys
// (atom keys decode to their names), float64 ↔ float.
package token

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"strings"
	"time"
)

// Errors returned by [Signer.Verify]. They mirror Phoenix.Token's
// {:error, :missing | :invalid | :expired}; returned errors may wrap them with
// detail, so test with [errors.Is].
var (
	ErrMissing = errors.New("token: missing")
	ErrInvalid = errors.New("token: invalid")
	ErrExpired = errors.New("token: expired")
)

const (
	headerHS256 = "SFMyNTY" // base64url("HS256")
	headerHS384 = "SFMzODQ" // base64url("HS384")
	headerHS512 = "SFM1MTI" // base64url("HS512")

	defaultMaxAge = 86400 // seconds; Plug.Crypto's default and the legacy {data, signed} age
	keyIterations = 1000
	keyLength     = 32
	minSecretLen  = 20 // Phoenix.Token rejects shorter secret key bases

	// maxClockSkew is how far in the future signed_at may lie. plug_crypto
	// master rejects any future signed_at (a future-dated token would outlive
	// its max age), but tokens here are typically minted by an Elixir node on
	// another host, and a small clock offset must not reject fresh tokens.
	maxClockSkew = 60 * time.Second
)

var b64 = base64.RawURLEncoding.Strict() // Strict: one encoding per byte string

// decodeB64 decodes one part of a token. encoding/base64 skips CR and LF even
// when Strict, so a token with a line break in its signature would verify as
// another spelling of a genuine one: refuse them, as Phoenix does.
func decodeB64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("line break in base64")
	}
	return b64.DecodeString(s)
}

// Signer signs and verifies tokens for one secret key base and salt. It
// derives the key once, in [NewSigner], since PBKDF2 costs about a thousand
// HMACs. A Signer is immutable and safe for concurrent use.
type Signer struct {
	key []byte
	err error // configuration error, reported by every Sign and Verify
}

// NewSigner returns a Signer for the given secret key base (the Phoenix
// endpoint's secret_key_base) and salt (the salt argument of
// Phoenix.Token.sign/verify). As in Phoenix, the secret key base must be at
// least 20 bytes long; otherwise every Sign and Verify returns an error.
func NewSigner(secretKeyBase, salt string) *Signer {
	if len(secretKeyBase) < minSecretLen {
		return &Signer{err: fmt.Errorf("token: secret key base must be at least %d bytes", minSecretLen)}
	}
	key, err := pbkdf2.Key(sha256.New, secretKeyBase, []byte(salt), keyIterations, keyLength)
	if err != nil {
		return &Signer{err: fmt.Errorf("token: deriving key: %w", err)}
	}
	return &Signer{key: key}
}

// Sign returns an HS256 token carrying data, as Phoenix.Token.sign would with
// the signed_at and max_age options. signedAt is stored with millisecond
// precision. maxAge is stored in whole seconds; 0 means Phoenix's default of
// one day, and other values below one second are an error. Sign fails if data
// contains a type that has no Erlang equivalent (see the package doc).
func (s *Signer) Sign(data any, signedAt time.Time, maxAge time.Duration) (string, error) {
	if s.err != nil {
		return "", s.err
	}
	age := int64(defaultMaxAge)
	if maxAge != 0 {
		if maxAge < time.Second {
			return "", fmt.Errorf("token: max age %v is below one second", maxAge)
		}
		age = int64(maxAge / time.Second)
	}
	plain, err := appendTerm([]byte{etfVersion}, Tuple{data, signedAt.UnixMilli(), age}, 0)
	if err != nil {
		return "", fmt.Errorf("token: encoding data: %w", err)
	}
	signed := headerHS256 + "." + b64.EncodeToString(plain)
	return signed + "." + b64.EncodeToString(s.mac(sha256.New, signed)), nil
}

// Verify checks tok's signature and age at time now and returns the decoded
// data. If maxAge > 0 it overrides the max age embedded in the token; if
// maxAge == 0 the embedded one applies; maxAge < 0 always fails with
// ErrExpired, as max_age <= 0 does in Phoenix. A token whose signed_at lies
// more than a minute after now is invalid.
//
// The error is ErrMissing for an empty token, wraps ErrExpired for a token
// past its age, and wraps ErrInvalid for anything else wrong with the token.
func (s *Signer) Verify(tok string, maxAge time.Duration, now time.Time) (any, error) {
	return s.verify(tok, maxAge, false, now)
}

// VerifyAtMost is Verify where maxAge (> 0) caps the token's embedded max
// age instead of replacing it: the smaller of the two applies. A token
// signed to live one minute is refused after that minute even by a verifier
// that allows a day, and a token signed to live a year is refused after the
// verifier's maxAge. Phoenix.Token.verify's max_age option replaces the
// embedded age (as Verify does); this is the stricter reading, for a
// gateway whose operator and token issuer may each want the shorter limit.
func (s *Signer) VerifyAtMost(tok string, maxAge time.Duration, now time.Time) (any, error) {
	if maxAge <= 0 {
		return nil, fmt.Errorf("token: VerifyAtMost needs a positive max age, got %v", maxAge)
	}
	return s.verify(tok, maxAge, true, now)
}

// verify is Verify, or with capped VerifyAtMost.
func (s *Signer) verify(tok string, maxAge time.Duration, capped bool, now time.Time) (any, error) {
	if s.err != nil {
		return nil, s.err
	}
	if tok == "" {
		return nil, ErrMissing
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: want 3 dot-separated parts, got %d", ErrInvalid, len(parts))
	}
	var h func() hash.Hash
	switch parts[0] {
	case headerHS256:
		h = sha256.New
	case headerHS384:
		h = sha512.New384
	case headerHS512:
		h = sha512.New
	default:
		return nil, fmt.Errorf("%w: unknown header %q", ErrInvalid, parts[0])
	}
	plain, err := decodeB64(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrInvalid, err)
	}
	sig, err := decodeB64(parts[2])
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrInvalid, err)
	}
	if !hmac.Equal(sig, s.mac(h, parts[0]+"."+parts[1])) {
		return nil, fmt.Errorf("%w: bad signature", ErrInvalid)
	}

	// Only authenticated bytes reach the ETF decoder.
	term, err := decodeTerm(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrInvalid, err)
	}
	data, signedMs, embedded, err := unwrap(term)
	if err != nil {
		return nil, err
	}
	nowMs := now.UnixMilli()
	// The differences below are computed only when non-negative, so they fit in a uint64.
	if signedMs > nowMs && uint64(signedMs-nowMs) > uint64(maxClockSkew.Milliseconds()) {
		return nil, fmt.Errorf("%w: signed %v in the future", ErrInvalid, time.Duration(signedMs-nowMs)*time.Millisecond)
	}
	var ageMs int64
	if capped {
		// The embedded age alone, then the cap (-1 is :infinity).
		if ageMs, err = effectiveMaxAge(0, embedded); err != nil {
			return nil, err
		}
		if limit := maxAge.Milliseconds(); ageMs < 0 || ageMs > limit {
			ageMs = limit
		}
	} else if ageMs, err = effectiveMaxAge(maxAge, embedded); err != nil {
		return nil, err
	}
	if ageMs >= 0 && signedMs < nowMs && uint64(nowMs-signedMs) > uint64(ageMs) {
		return nil, ErrExpired
	}
	return data, nil
}

func (s *Signer) mac(h func() hash.Hash, msg string) []byte {
	m := hmac.New(h, s.key)
	io.WriteString(m, msg)
	return m.Sum(nil)
}

// unwrap accepts the plaintext forms Plug.Crypto does: {data, signed_ms,
// max_age}, the Plug.Crypto 1.1 form {data, signed_ms}, and the old Phoenix
// form %{data: data, signed: signed_ms}.
func unwrap(term any) (data any, signedMs int64, maxAge any, err error) {
	var signed any
	maxAge = int64(defaultMaxAge)
	switch t := term.(type) {
	case Tuple:
		switch len(t) {
		case 3:
			data, signed, maxAge = t[0], t[1], t[2]
		case 2:
			data, signed = t[0], t[1]
		default:
			return nil, 0, nil, fmt.Errorf("%w: payload is a %d-tuple", ErrInvalid, len(t))
		}
	case map[string]any:
		var ok1, ok2 bool
		data, ok1 = t["data"]
		signed, ok2 = t["signed"]
		if !ok1 || !ok2 {
			return nil, 0, nil, fmt.Errorf("%w: payload map lacks data or signed", ErrInvalid)
		}
	default:
		return nil, 0, nil, fmt.Errorf("%w: payload is a %T", ErrInvalid, term)
	}
	signedMs, ok := signed.(int64)
	if !ok {
		return nil, 0, nil, fmt.Errorf("%w: signed_at is a %T", ErrInvalid, signed)
	}
	return data, signedMs, maxAge, nil
}

// effectiveMaxAge returns the max age in milliseconds, or -1 for the atom
// :infinity. An age <= 0 yields ErrExpired, as in Plug.Crypto.
func effectiveMaxAge(override time.Duration, embedded any) (int64, error) {
	if override != 0 {
		if override < 0 {
			return 0, ErrExpired
		}
		return override.Milliseconds(), nil
	}
	switch a := embedded.(type) {
	case Atom:
		if a == "infinity" {
			return -1, nil
		}
	case int64:
		if a <= 0 {
			return 0, ErrExpired
		}
		if a > math.MaxInt64/1000 {
			return math.MaxInt64, nil
		}
		return a * 1000, nil
	case float64: // Elixir allows max_age: 1.5; Plug truncates max_age * 1000
		if a <= 0 {
			return 0, ErrExpired
		}
		if ms := math.Trunc(a * 1000); ms < math.MaxInt64 {
			return int64(ms), nil
		}
		return math.MaxInt64, nil
	}
	return 0, fmt.Errorf("%w: max age is %v", ErrInvalid, embedded)
}

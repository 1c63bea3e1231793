package loadgen

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"time"
)

// This file signs the connection tokens of Centrifugo's clients: JWTs
// signed with HMAC-SHA256 (client.token.hmac_secret_key), built here with
// the standard library rather than a JWT dependency, since the tool only
// ever signs one fixed shape of claims.

// jwtHS256Header is the encoded header {"alg":"HS256","typ":"JWT"}.
var jwtHS256Header = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// signHS256 returns the compact JWT of claims (a JSON object), signed with
// HMAC-SHA256 under secret.
func signHS256(claims []byte, secret string) string {
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, len(jwtHS256Header)+1+enc.EncodedLen(len(claims))+1+enc.EncodedLen(sha256.Size))
	buf = append(buf, jwtHS256Header...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, claims)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(buf)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, mac.Sum(nil))
	return string(buf)
}

// centrifugoToken returns a connection token for user: its subject, issued
// at now and expiring maxAge later.
func centrifugoToken(user, secret string, now time.Time, maxAge time.Duration) string {
	claims := make([]byte, 0, 64)
	claims = append(claims, `{"sub":`...)
	claims = strconv.AppendQuote(claims, user)
	claims = append(claims, `,"iat":`...)
	claims = strconv.AppendInt(claims, now.Unix(), 10)
	claims = append(claims, `,"exp":`...)
	claims = strconv.AppendInt(claims, now.Add(maxAge).Unix(), 10)
	claims = append(claims, '}')
	return signHS256(claims, secret)
}

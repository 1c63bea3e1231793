package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/sluicegw/sluice/gateway/token"
)

// UserSocketSalt is the salt the seed app signs user tokens with:
// Phoenix.Token.sign(conn, "user socket", user.id).
const UserSocketSalt = "user socket"

// TokenAuthenticator verifies the client's user token as the default app's
// UserSocket.connect/3 does: Phoenix.Token.verify(socket, "user socket",
// token, max_age: maxAge), except that a token signed with a shorter max
// age than maxAge expires at its own (the smaller wins; Phoenix lets the
// verifier's max_age replace the token's). The token's data is the user id
// (integer or string) or a map with "id" and an optional "nombre". A maxAge
// of 0 applies the token's own max age alone.
func TokenAuthenticator(secretKeyBase string, maxAge time.Duration) Authenticator {
	signer := token.NewSigner(secretKeyBase, UserSocketSalt)
	return func(_ context.Context, info ConnectInfo) (Identity, error) {
		if info.Token == "" {
			return Identity{}, errors.New("missing token")
		}
		var data any
		var err error
		if maxAge > 0 {
			data, err = signer.VerifyAtMost(info.Token, maxAge, time.Now())
		} else {
			data, err = signer.Verify(info.Token, 0, time.Now()) // the token's own max age
		}
		if err != nil {
			return Identity{}, err
		}
		return identityOf(data)
	}
}

// identityOf reads the user from a token's data.
func identityOf(data any) (Identity, error) {
	var id Identity
	if m, ok := data.(map[string]any); ok {
		data = m["id"]
		if n, ok := m["nombre"].(string); ok {
			id.Name = n
		}
	}
	switch v := data.(type) {
	case int64:
		id.UserID = json.RawMessage(strconv.FormatInt(v, 10))
	case string:
		if v == "" {
			return Identity{}, errors.New("token: empty user id")
		}
		id.UserID, _ = json.Marshal(v)
	default:
		return Identity{}, fmt.Errorf("token: user id must be an integer or a string, got %T", data)
	}
	return id, nil
}

// SignUserToken makes a user token as a Phoenix app would with
// Phoenix.Token.sign(conn, "user socket", data): data is the user id, as an
// integer when it is all digits (as apps sign user.id), or, when name is
// given, a map with "id" and "nombre".
func SignUserToken(secretKeyBase, userID, name string, maxAge time.Duration) (string, error) {
	if userID == "" {
		return "", errors.New("user id is required")
	}
	var id any = userID
	if n, err := strconv.ParseInt(userID, 10, 64); err == nil && n >= 0 && strconv.FormatInt(n, 10) == userID {
		id = n
	}
	data := id
	if name != "" {
		data = map[string]any{"id": id, "nombre": name}
	}
	return token.NewSigner(secretKeyBase, UserSocketSalt).Sign(data, time.Now(), maxAge)
}

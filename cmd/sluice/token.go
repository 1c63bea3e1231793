package main

import (
	"fmt"
	"io"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

func tokenCommand(args []string, stdout, stderr io.Writer) error {
	var secret, user, name string
	var maxAge time.Duration
	fs := newFlagSet("token", `Prints one user token on stdout and nothing else, so that TOKEN=$(sluice token --user 42) works.
The token is what a Phoenix app makes with Phoenix.Token.sign(conn, "user socket", data): data is the
user id (an integer when --user is all digits) or, with --name, %{"id" => id, "nombre" => name}.
The token embeds --max-age; sluice serve accepts it until the smaller of that and its own
--token-max-age has passed since it was signed.`, stderr)
	fs.string(&secret, "secret", "SLUICE_SECRET", "", "the secret_key_base to sign with (required; at least 20 bytes)")
	fs.string(&user, "user", "", "", "the user id (required)")
	fs.string(&name, "name", "", "", "the user's display name (optional)")
	fs.duration(&maxAge, "max-age", "", 24*time.Hour, "how long the token stays valid (whole seconds, at least 1s); the server's --token-max-age applies if it is shorter")
	if err := fs.parse(args); err != nil {
		return err
	}
	switch {
	case secret == "":
		return fs.usageError("--secret or SLUICE_SECRET is required (the same secret sluice serve uses)")
	case user == "":
		return fs.usageError("--user is required")
	case maxAge < time.Second:
		return fs.usageError(fmt.Sprintf("--max-age must be at least 1s, got %s", formatDuration(maxAge)))
	}
	tok, err := gateway.SignUserToken(secret, user, name, maxAge)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

func tokenCommand(args []string, stdout, stderr io.Writer) error {
	var secret, user, name string
	var maxAge int
	fs := newFlagSet("token", `Prints one user token on stdout and nothing else, so that TOKEN=$(sluice token --user 42) works.
The token is what a Phoenix app makes with Phoenix.Token.sign(conn, "user socket", data): data is the
user id (an integer when --user is all digits) or, with --name, %{"id" => id, "nombre" => name}.`, stderr)
	fs.string(&secret, "secret", "SLUICE_SECRET", "", "the secret_key_base to sign with (required; at least 20 bytes)")
	fs.string(&user, "user", "", "", "the user id (required)")
	fs.string(&name, "name", "", "", "the user's display name (optional)")
	fs.int(&maxAge, "max-age", "", 86400, "seconds the token stays valid")
	if err := fs.parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		fmt.Fprintln(stderr, err)
		return errUsage
	}
	switch {
	case secret == "":
		fmt.Fprintln(stderr, "sluice token: --secret or SLUICE_SECRET is required (the same secret sluice serve uses)")
		return errUsage
	case user == "":
		fmt.Fprintln(stderr, "sluice token: --user is required")
		return errUsage
	case maxAge <= 0:
		fmt.Fprintln(stderr, "sluice token: --max-age must be a positive number of seconds")
		return errUsage
	}
	tok, err := gateway.SignUserToken(secret, user, name, time.Duration(maxAge)*time.Second)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

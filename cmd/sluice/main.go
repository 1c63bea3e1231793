// Command sluice is a Phoenix Channels gateway for browsers that cannot keep
// a WebSocket open: it serves Phoenix's LongPoll transport so that unmodified
// phoenix.js clients connect, with its state in shared stores so that any
// instance answers any request.
//
//	sluice serve   run the gateway (the default)
//	sluice token   print a user token signed like Phoenix.Token
//	sluice healthcheck  check /healthz (the Docker HEALTHCHECK)
//	sluice bench   a load generator speaking the real protocols
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: sluice <command> [flags]

Commands:
  serve   run the gateway (default when no command is given)
  token   print a user token signed like Phoenix.Token.sign(secret, "user socket", data)
  healthcheck  exit 0 if a URL (default /healthz on 127.0.0.1:4000) answers 2xx
  bench   a load generator: SSE and LongPoll clients, publishers, delivery checks, latency, server RSS/CPU
  help    show this help

Run "sluice <command> --help" for a command's flags.
`

// run executes a command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serveCommand(ctx, args, stderr)
	case "token":
		err = tokenCommand(args, stdout, stderr)
	case "healthcheck":
		err = healthcheckCommand(args, stdout, stderr)
	case "bench":
		err = benchCommand(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "sluice %s: %v\n", cmd, err)
		return 1
	}
}

// errUsage reports a command line error already explained to the user.
var errUsage = errors.New("usage error")

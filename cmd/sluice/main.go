// Command sluice is a Phoenix Channels gateway for browsers that cannot keep
// a WebSocket open: it serves Phoenix's LongPoll transport so that unmodified
// phoenix.js clients connect, with its state in shared stores so that any
// instance answers any request.
//
//	sluice serve        run the gateway (the default)
//	sluice token        print a user token signed like Phoenix.Token
//	sluice healthcheck  check /healthz (the Docker HEALTHCHECK)
//	sluice bench        a load generator speaking the real protocols
//	sluice version      print the version and the commit it was built from
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
  serve        run the gateway (the default when the first argument is a flag)
  token        print a user token signed like Phoenix.Token.sign(secret, "user socket", data)
  healthcheck  exit 0 if a URL (default /healthz on 127.0.0.1:4000) answers 2xx
  bench        a load generator: SSE and LongPoll clients, publishers, delivery checks, latency, server RSS/CPU
  version      print the version and the commit it was built from (also --version)
  help         show this help (also --help)

Run "sluice <command> --help" for a command's flags.
`

// run executes a command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		switch first := args[0]; {
		case first == "-h" || first == "-help" || first == "--help":
			cmd, args = "help", args[1:]
		case first == "-version" || first == "--version":
			cmd, args = "version", args[1:]
		case first != "" && first[0] != '-':
			cmd, args = first, args[1:]
		}
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
	case "version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		hint := ""
		if near := closestCommand(cmd); near != "" {
			hint = fmt.Sprintf(" (did you mean %q?)", near)
		}
		fmt.Fprintf(stderr, "sluice: unknown command %q%s\nRun \"sluice --help\" to list the commands.\n", cmd, hint)
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

// commands are the command names, for suggestions.
var commands = []string{"serve", "token", "healthcheck", "bench", "version", "help"}

// closestCommand returns the command nearest to name, or "" if none is
// near enough to be what was meant.
func closestCommand(name string) string {
	best, bestDist := "", 3
	for _, c := range commands {
		if d := editDistance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// errUsage reports a command line error already explained to the user.
var errUsage = errors.New("usage error")

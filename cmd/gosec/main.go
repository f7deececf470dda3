// Command gosec is the userspace IPsec daemon and its control tool.
//
//	gosec start [--config F] [--secrets F] [--socket S] [--nofork] [--log F] [--log-format text|json] [--debug]
//	            [--user NAME] [--metrics ADDR] [--save-keys DIR]
//	gosec up CONN | down CONN | unroute CONN | status [--json] | statusall [--json] | reload | stop
//	gosec debug [CONN] [LEVEL] [--json]
//	gosec conf check [--config F] [--secrets F] [--dump] [--json]
package main

import (
	"fmt"
	"os"

	"github.com/gosec-ipsec/gosec/internal/cli"
)

const usage = `usage: gosec COMMAND [ARGS]

commands:
  start        start the daemon (returns once it answers; --nofork stays in the foreground;
               --user NAME drops privileges, --metrics ADDR serves Prometheus metrics,
               --save-keys DIR exports keys for Wireshark, --log-format json)
  up CONN      bring a connection up
  down CONN    take a connection down (its traffic stays blocked; auto=route keeps its trap)
  unroute CONN take it down and lift its trap and block: its traffic goes unprotected
  status       one line per connection and SA (--json for scripts)
  statusall    everything: connections, algorithms, SAs, counters, drops (--json)
  reload       re-read the configuration (log levels too)
  debug [CONN] [LEVEL]
               show or change the log level while the daemon runs: LEVEL is error, warn,
               info, debug (or strongSwan's -1..4, Libreswan's none/all); with CONN for that
               conn only (CONN default: back to the global level); until the next reload
  stop         stop the daemon (it removes everything it installed)
  conf check   check ipsec.conf and ipsec.secrets (--dump prints the resolved conns, --json)
  help         this text

Every command that reads configuration takes --config FILE (default
/etc/gosec/ipsec.conf, else /etc/ipsec.conf) and --secrets FILE (default:
ipsec.secrets beside the config). Commands that talk to the daemon take
--socket PATH (default /run/gosec/gosec.ctl).
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	env := cli.DefaultEnv()
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "start":
		return cli.Start(env, rest)
	case "up":
		return cli.Up(env, rest)
	case "down":
		return cli.Down(env, rest)
	case "unroute":
		return cli.Unroute(env, rest)
	case "status":
		return cli.Status(env, rest, false)
	case "statusall":
		return cli.Status(env, rest, true)
	case "reload":
		return cli.Reload(env, rest)
	case "stop":
		return cli.Stop(env, rest)
	case "debug":
		return cli.Debug(env, rest)
	case "conf":
		if len(rest) == 0 || rest[0] != "check" {
			fmt.Fprintln(os.Stderr, "usage: gosec conf check [--config FILE] [--secrets FILE] [--dump]")
			return 2
		}
		return cli.ConfCheck(env, rest[1:])
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "gosec: unknown command %q\n\n%s", cmd, usage)
	return 2
}

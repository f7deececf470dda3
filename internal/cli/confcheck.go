package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/gosec-ipsec/gosec/internal/conf"
)

// Exit statuses of gosec conf check.
const (
	ConfCheckOK      = 0 // every conn loads
	ConfCheckErrors  = 1 // the files have errors: gosec start would refuse them
	ConfCheckSkipped = 3 // valid, but some conns need a feature gosec lacks
)

// ConfCheck runs `gosec conf check`: it loads ipsec.conf and
// ipsec.secrets, prints every problem as file:line: message, with --dump
// each resolved conn, then a summary: the conns loaded, those skipped and
// why. It exits 0 when everything loads (warnings allowed), 1 when the
// files have errors and 3 when they are valid but some conns were skipped
// for a feature gosec lacks (gosec start then runs the others).
func ConfCheck(env Env, args []string) int {
	fs := flag.NewFlagSet("gosec conf check", flag.ContinueOnError)
	var cf ConfigFlags
	cf.Register(fs)
	dump := fs.Bool("dump", false, "print each resolved conn")
	pos, ok := parse(env, fs, args)
	if !ok {
		return 2
	}
	if len(pos) != 0 {
		fmt.Fprintln(env.Stderr, "usage: gosec conf check [--config FILE] [--secrets FILE] [--dump]")
		return 2
	}
	cf.Resolve()
	cfg, err := conf.Load(cf.Config, conf.Options{})
	for _, d := range cfg.Diags {
		fmt.Fprintln(env.Stderr, d)
	}
	failed := err != nil
	sec, serr := loadSecretsFor(cfg, cf.Secrets)
	if sec != nil {
		for _, d := range sec.Diags {
			fmt.Fprintln(env.Stderr, d)
		}
	}
	if serr != nil {
		failed = true
		if sec == nil {
			fmt.Fprintf(env.Stderr, "%s: %v\n", cf.Secrets, serr)
		}
	}
	if *dump {
		for _, c := range cfg.Conns {
			c.Dump(env.Stdout)
			fmt.Fprintln(env.Stdout)
		}
		if sec != nil {
			sec.Dump(env.Stdout)
		}
	}
	if failed {
		errs := len(cfg.Diags.Errors())
		if sec != nil {
			errs += len(sec.Diags.Errors())
		}
		fmt.Fprintf(env.Stderr, "%s: %d errors; gosec start would refuse this configuration\n", cf.Config, max(errs, 1))
		return ConfCheckErrors
	}
	if len(cfg.Skipped) == 0 {
		fmt.Fprintf(env.Stderr, "%s: %d conns, configuration OK\n", cf.Config, len(cfg.Conns))
		return ConfCheckOK
	}
	fmt.Fprintf(env.Stderr, "%s: %d conns loaded, %d skipped: %s\n", cf.Config, len(cfg.Conns), len(cfg.Skipped), skipSummary(cfg.Skipped))
	return ConfCheckSkipped
}

// skipSummary groups the skipped conns by the feature they need:
// "IPv6: a, b; XAUTH: c".
func skipSummary(skipped []conf.Skipped) string {
	var order []string
	names := map[string][]string{}
	for _, s := range skipped {
		if _, ok := names[s.Feature]; !ok {
			order = append(order, s.Feature)
		}
		names[s.Feature] = append(names[s.Feature], s.Name)
	}
	parts := make([]string, len(order))
	for i, f := range order {
		parts[i] = fmt.Sprintf("%s (%s)", f, strings.Join(names[f], ", "))
	}
	return strings.Join(parts, "; ")
}

// loadSecretsFor loads the secrets file; a missing one is fine when no
// conn needs a secret (manual keying, for example).
func loadSecretsFor(cfg *conf.Config, path string) (*conf.Secrets, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		for _, c := range cfg.Conns {
			if !c.Manual && c.Auto != "ignore" && c.AuthBy == "secret" {
				return nil, fmt.Errorf("conn %s uses authby=secret but there is no secrets file", c.Name)
			}
		}
		return nil, nil
	}
	return conf.LoadSecrets(path)
}

// Package cli implements the gosec commands that talk to the daemon:
// start, stop, up, down, status, statusall and reload. cmd/gosec
// dispatches to them.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/control"
	"github.com/gosec-ipsec/gosec/internal/daemon"
	"github.com/gosec-ipsec/gosec/internal/loglevel"
	"github.com/gosec-ipsec/gosec/internal/metrics"
	"github.com/gosec-ipsec/gosec/internal/privs"
)

// Env is what a command reads and writes; tests replace it.
type Env struct {
	Stdout, Stderr io.Writer
}

// DefaultEnv writes to the process's standard streams.
func DefaultEnv() Env { return Env{Stdout: os.Stdout, Stderr: os.Stderr} }

// daemonEnvMarker marks the re-executed, detached daemon process.
const daemonEnvMarker = "GOSEC_DAEMON_CHILD"

// ConfigFlags registers --config and --secrets on fs; DefaultConfigPaths
// fills in what was not given.
type ConfigFlags struct {
	Config, Secrets string
}

// Register adds the flags to fs.
func (c *ConfigFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.Config, "config", "", "ipsec.conf to load (default /etc/gosec/ipsec.conf, else /etc/ipsec.conf)")
	fs.StringVar(&c.Secrets, "secrets", "", "ipsec.secrets to load (default: ipsec.secrets beside the config)")
}

// Resolve applies the defaults.
func (c *ConfigFlags) Resolve() {
	if c.Config == "" {
		c.Config = "/etc/gosec/ipsec.conf"
		if _, err := os.Stat(c.Config); err != nil {
			c.Config = "/etc/ipsec.conf"
		}
	}
	if c.Secrets == "" {
		c.Secrets = filepath.Join(filepath.Dir(c.Config), "ipsec.secrets")
	}
}

// parse parses args with fs and reports usage errors as exit status 2.
// Flags may follow positional arguments (`gosec up NAME --socket S`).
func parse(env Env, fs *flag.FlagSet, args []string) ([]string, bool) {
	fs.SetOutput(env.Stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// Start runs `gosec start`.
func Start(env Env, args []string) int {
	fs := flag.NewFlagSet("gosec start", flag.ContinueOnError)
	var cf ConfigFlags
	cf.Register(fs)
	socket := fs.String("socket", control.DefaultSocket, "control socket path")
	nofork := fs.Bool("nofork", false, "stay in the foreground (for systemd)")
	debug := fs.Bool("debug", false, "log at debug level, every dropped packet included (slow), whatever charondebug=/plutodebug= say")
	logFile := fs.String("log", "", "log file (default: stderr with --nofork, else /var/log/gosec.log)")
	startTimeout := fs.Duration("start-timeout", 20*time.Second, "how long gosec start waits for the daemon it forked to answer on its control socket; a daemon that has not answered by then is stopped (SIGTERM, then SIGKILL after 15 s), so that a failed start leaves no daemon behind")
	local := fs.String("local", "", "which side of manually keyed conns is this host: left or right (default: by local addresses)")
	tunName := fs.String("tun", "gosec0", "name of the TUN device")
	mtu := fs.Int("mtu", 1500, "MTU of the path to the peers")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on ADDR (host:port), e.g. 127.0.0.1:9569 (default: metrics= in config setup, else off)")
	runAs := fs.String("user", "", "after opening sockets and devices, run as this user keeping only CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	saveKeys := fs.String("save-keys", "", "write every SA's keys to DIR in Wireshark's formats (ikev1_decryption_table, esp_sa); debugging only")
	afpacket := fs.Bool("afpacket", true, "send ESP and AH through AF_PACKET on the outgoing Ethernet link with a neighbour cache, the raw sockets only where that cannot be used (default); --afpacket=false sends everything through the raw IPv4 sockets")
	txring := fs.Bool("txring", true, "with --afpacket, write ESP and AH frames into an AF_PACKET TX ring and send each run with one system call (frames larger than a ring slot, 1992 octets of IP, and runs that find the ring full go out with sendmmsg); --txring=false sends everything with sendmmsg")
	rxring := fs.Bool("rxring", true, "receive ESP and AH through an AF_PACKET ring instead of the raw IPv4 sockets: the ring takes only the SPIs of inbound SAs (an eBPF filter) and the IP stack then drops at prerouting what it took instead of processing it again (before netfilter INPUT and rp_filter; the raw sockets still hold the protocols so the kernel sends no ICMP protocol-unreachable); --rxring=false receives through the raw sockets")
	ingressBypass := fs.Bool("ingress-bypass", true, "with --rxring, an eBPF program at tc ingress (TCX: Linux 6.6 and later) of each Ethernet interface with a local address hands the ESP and AH of inbound SAs to the ring before the IP stack processes them and drops those of unknown SPIs; --ingress-bypass=false leaves that to the prerouting chain")
	tunQueues := fs.Int("tun-queues", 0, "TUN queues, each read by its own goroutine and steered per destination prefix so that an SA keeps to one: 0 chooses one per core (at most 4), 1 a single queue")
	keepWarm := fs.Duration("keep-warm", time.Millisecond, "while packets have flowed within --keep-warm-for, wake the data plane this often, so that a sparse packet (ping, SSH, voice) is handled as fast as one in a stream; 0 turns it off (while on it costs about 3% of a core on our 2-vCPU VMs; nothing once idle)")
	keepWarmFor := fs.Duration("keep-warm-for", 2*time.Second, "how long after the last packet --keep-warm keeps waking the data plane")
	procs := fs.Int("procs", 0, "Go procs (GOMAXPROCS) of the daemon: 0 chooses by the machine (1 on machines of up to 2 CPUs, where it measured faster, else one per CPU) unless the GOMAXPROCS variable is set")
	workers := fs.Int("workers", 0, "goroutines that seal and open packets in parallel: 0 chooses by the machine, -1 has each reader (TUN, sockets) do its own cryptography with no hand-off")
	impair := fs.String("impair", "", "fault injection for tests: ACTION:MESSAGE[:DELAY][@CONN],... (drop, duplicate, delay or replay the first MM1..MM6 or QM1..QM3 gosec sends); never in production")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the daemon to this file until it stops (performance work)")
	if _, ok := parse(env, fs, args); !ok {
		return 2
	}
	impairments, ierr := ike.ParseImpairments(*impair)
	if ierr != nil {
		fmt.Fprintf(env.Stderr, "gosec start: --impair: %v\n", ierr)
		return 2
	}
	cf.Resolve()
	if *procs < 0 {
		fmt.Fprintf(env.Stderr, "gosec start: --procs cannot be negative\n")
		return 2
	}
	if *keepWarm < 0 || *keepWarmFor < 0 {
		fmt.Fprintf(env.Stderr, "gosec start: --keep-warm and --keep-warm-for cannot be negative\n")
		return 2
	}
	if *local != "" && *local != "left" && *local != "right" {
		fmt.Fprintf(env.Stderr, "gosec start: --local must be left or right, not %q\n", *local)
		return 2
	}
	if *logFormat != "text" && *logFormat != "json" {
		fmt.Fprintf(env.Stderr, "gosec start: --log-format must be text or json, not %q\n", *logFormat)
		return 2
	}
	if *startTimeout <= 0 {
		fmt.Fprintf(env.Stderr, "gosec start: --start-timeout must be positive\n")
		return 2
	}
	if !*nofork && os.Getenv(daemonEnvMarker) == "" {
		return forkDaemon(env, args, *socket, *logFile, *startTimeout)
	}

	setProcs(*procs)
	var logw io.Writer = env.Stderr
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
			return 1
		}
		defer f.Close()
		logw = f
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	// The format handler takes every level; loglevel's handler in front
	// of it applies the global and per-conn levels, which the daemon sets
	// from the configuration and `gosec debug` changes.
	var handler slog.Handler
	switch *logFormat {
	case "text":
		handler = slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})
	case "json":
		handler = slog.NewJSONHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})
	default:
		fmt.Fprintf(env.Stderr, "gosec start: --log-format must be text or json, not %q\n", *logFormat)
		return 2
	}
	levels := loglevel.New(level)
	log := slog.New(loglevel.NewHandler(handler, levels))
	// Not dumpable, whatever else happens: no core file with keys in it,
	// no ptrace or /proc/PID/mem by other processes of the same user.
	if err := privs.SetNotDumpable(); err != nil {
		fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
		return 1
	}
	drop := func() error {
		if os.Geteuid() == 0 {
			return nil // root without --user stays root
		}
		// Started by a service manager with ambient capabilities: give
		// back those needed only to start (CAP_BPF: privs.DropExtra).
		dropped, err := privs.DropExtra()
		if err != nil {
			return err
		}
		if len(dropped) > 0 {
			log.Info("start-up capabilities dropped", "capabilities", strings.Join(dropped, ","))
		}
		return nil
	}
	if *runAs != "" {
		uid, gid, err := privs.Lookup(*runAs)
		if err != nil {
			fmt.Fprintf(env.Stderr, "gosec start: --user: %v\n", err)
			return 1
		}
		drop = func() error {
			if err := privs.Drop(uid, gid); err != nil {
				return err
			}
			log.Info("privileges dropped", "user", *runAs, "uid", uid, "gid", gid, "capabilities", "cap_net_admin,cap_net_raw,cap_net_bind_service")
			return nil
		}
	}
	if *cpuProfile != "" {
		f, err := os.OpenFile(*cpuProfile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(env.Stderr, "gosec start: cpu profile: %v\n", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	mx := metrics.New()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := daemon.Run(ctx, daemon.Options{
		ConfigPath: cf.Config, SecretsPath: cf.Secrets, Socket: *socket,
		Local: *local, TUNName: *tunName, WireMTU: *mtu, Debug: *debug, Log: log, Levels: levels,
		SaveKeysDir: *saveKeys, Impair: impairments, Stopping: notifyStopping,
		RawSocketsOnly: !*afpacket, NoTxRing: !*txring, RxRing: *rxring, IngressBypass: *ingressBypass, CryptoWorkers: *workers, TUNQueues: *tunQueues,
		KeepWarm: *keepWarm, KeepWarmFor: *keepWarmFor,
		Started: func(d *daemon.Daemon) error {
			if err := startMetrics(ctx, mx, d, *metricsAddr, log); err != nil {
				return err
			}
			if err := drop(); err != nil {
				return err
			}
			return notifyReady(ctx, d, log)
		},
	})
	if err != nil {
		log.Error("gosec exited", "err", err)
		fmt.Fprintf(env.Stderr, "gosec: %v\n", err)
		return 1
	}
	return 0
}

// forkDaemon re-executes gosec detached and waits until its control socket
// answers, so that scripts can go on at once.
func forkDaemon(env Env, args []string, socket, logFile string, timeout time.Duration) int {
	if logFile == "" {
		logFile = "/var/log/gosec.log"
		args = append(args, "--log", logFile)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
		return 1
	}
	// A daemon already there?
	if _, err := call(socket, control.Request{Cmd: "ping"}, nil); err == nil {
		fmt.Fprintf(env.Stderr, "gosec start: a daemon is already running on %s\n", socket)
		return 1
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
		return 1
	}
	defer devnull.Close()
	startErr, err := os.CreateTemp("", "gosec-start-")
	if err != nil {
		fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
		return 1
	}
	defer os.Remove(startErr.Name())
	defer startErr.Close()
	cmd := exec.Command(self, append([]string{"start"}, args...)...)
	cmd.Env = append(os.Environ(), daemonEnvMarker+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, startErr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	w := startWait{socket: socket, logFile: logFile, timeout: timeout, grace: stopGrace,
		ready: func() bool { _, err := call(socket, control.Request{Cmd: "ping"}, nil); return err == nil }}
	return w.run(env, cmd, startErr.Name())
}

// stopGrace is how long gosec start gives a daemon it stops for not
// answering in time to exit after SIGTERM (gosec stop waits as long).
const stopGrace = 15 * time.Second

// startWait is how gosec start waits for the daemon it forked.
type startWait struct {
	socket, logFile string
	timeout         time.Duration // for the control socket to answer
	grace           time.Duration // after SIGTERM, before SIGKILL
	ready           func() bool   // the control socket answers
}

// run starts cmd and waits until the daemon answers (0), exits (1, with
// what it wrote to startErr) or does not answer within w.timeout (1): then
// it is stopped, so that a start that failed leaves no daemon that comes
// up later, or never, behind the administrator's back.
func (w startWait) run(env Env, cmd *exec.Cmd, startErr string) int {
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(env.Stderr, "gosec start: %v\n", err)
		return 1
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.NewTimer(w.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			msg, _ := os.ReadFile(startErr)
			fmt.Fprintf(env.Stderr, "gosec start: the daemon exited during start-up:\n%s", msg)
			return 1
		case <-deadline.C:
			fmt.Fprintf(env.Stderr, "gosec start: the daemon (pid %d) did not answer on %s within %v: stopping it (see %s)\n", pid, w.socket, w.timeout, w.logFile)
			_ = cmd.Process.Signal(syscall.SIGTERM)
			grace := time.NewTimer(w.grace)
			defer grace.Stop()
			select {
			case <-exited:
				fmt.Fprintf(env.Stderr, "gosec start: the daemon stopped\n")
			case <-grace.C:
				_ = cmd.Process.Kill()
				<-exited
				fmt.Fprintf(env.Stderr, "gosec start: the daemon did not stop within %v of SIGTERM and was killed; what it had set up stays until the next gosec start cleans it up\n", w.grace)
			}
			return 1
		case <-tick.C:
			if w.ready() {
				fmt.Fprintf(env.Stdout, "gosec started (pid %d, control socket %s, log %s)\n", pid, w.socket, w.logFile)
				_ = cmd.Process.Release()
				return 0
			}
		}
	}
}

func call(socket string, req control.Request, progress func(string)) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return control.Call(ctx, socket, req, progress)
}

// simple runs a command that takes at most one conn name.
func simple(env Env, name string, args []string, needConn bool) int {
	fs := flag.NewFlagSet("gosec "+name, flag.ContinueOnError)
	socket := fs.String("socket", control.DefaultSocket, "control socket path")
	pos, ok := parse(env, fs, args)
	if !ok {
		return 2
	}
	if needConn && len(pos) != 1 {
		fmt.Fprintf(env.Stderr, "usage: gosec %s CONN\n", name)
		return 2
	}
	if !needConn && len(pos) != 0 {
		fmt.Fprintf(env.Stderr, "usage: gosec %s\n", name)
		return 2
	}
	_, err := call(*socket, control.Request{Cmd: name, Args: pos}, func(line string) {
		fmt.Fprintln(env.Stdout, line)
	})
	if err != nil {
		fmt.Fprintf(env.Stderr, "gosec %s: %v\n", name, err)
		return 1
	}
	if name == "stop" {
		// Wait until the daemon has removed its state and gone.
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := call(*socket, control.Request{Cmd: "ping"}, nil); errors.Is(err, control.ErrNoDaemon) || (err != nil && strings.Contains(err.Error(), "connect")) {
				return 0
			}
			time.Sleep(50 * time.Millisecond)
		}
		fmt.Fprintln(env.Stderr, "gosec stop: the daemon is still running after 15 s")
		return 1
	}
	return 0
}

// Up runs `gosec up CONN`.
func Up(env Env, args []string) int { return simple(env, "up", args, true) }

// Down runs `gosec down CONN`.
func Down(env Env, args []string) int { return simple(env, "down", args, true) }

// Unroute runs `gosec unroute CONN`.
func Unroute(env Env, args []string) int { return simple(env, "unroute", args, true) }

// Reload runs `gosec reload`.
func Reload(env Env, args []string) int { return simple(env, "reload", args, false) }

// Stop runs `gosec stop`.
func Stop(env Env, args []string) int { return simple(env, "stop", args, false) }

// Status runs `gosec status` (all=false) or `gosec statusall`.
func Status(env Env, args []string, all bool) int {
	name := "status"
	if all {
		name = "statusall"
	}
	fs := flag.NewFlagSet("gosec "+name, flag.ContinueOnError)
	socket := fs.String("socket", control.DefaultSocket, "control socket path")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	pos, ok := parse(env, fs, args)
	if !ok {
		return 2
	}
	if len(pos) > 1 {
		fmt.Fprintf(env.Stderr, "usage: gosec %s [CONN] [--json]\n", name)
		return 2
	}
	raw, err := call(*socket, control.Request{Cmd: name}, nil)
	if err != nil {
		fmt.Fprintf(env.Stderr, "gosec %s: %v\n", name, err)
		return 1
	}
	var st daemon.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		fmt.Fprintf(env.Stderr, "gosec %s: bad reply: %v\n", name, err)
		return 1
	}
	if len(pos) == 1 {
		if !st.Filter(pos[0]) {
			fmt.Fprintf(env.Stderr, "gosec %s: no connection named %q\n", name, pos[0])
			return 1
		}
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(st)
		return 0
	}
	st.WriteText(env.Stdout, all)
	return 0
}

// Debug runs `gosec debug [CONN] [LEVEL]`.
func Debug(env Env, args []string) int {
	fs := flag.NewFlagSet("gosec debug", flag.ContinueOnError)
	socket := fs.String("socket", control.DefaultSocket, "control socket path")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	pos, ok := parse(env, fs, args)
	if !ok {
		return 2
	}
	if len(pos) > 2 {
		fmt.Fprintln(env.Stderr, "usage: gosec debug [CONN] [LEVEL]")
		return 2
	}
	raw, err := call(*socket, control.Request{Cmd: "debug", Args: pos}, nil)
	if err != nil {
		fmt.Fprintf(env.Stderr, "gosec debug: %v\n", err)
		return 1
	}
	var lv daemon.LogLevels
	if err := json.Unmarshal(raw, &lv); err != nil {
		fmt.Fprintf(env.Stderr, "gosec debug: bad reply: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(lv)
		return 0
	}
	fmt.Fprintln(env.Stdout, lv.String())
	return 0
}

// setProcs sets the daemon's GOMAXPROCS: n when positive, else
// daemon.AutoProcs unless the GOMAXPROCS variable chose already.
func setProcs(n int) {
	if n <= 0 {
		if os.Getenv("GOMAXPROCS") != "" {
			return
		}
		n = daemon.AutoProcs(runtime.NumCPU())
	}
	if n > 0 {
		runtime.GOMAXPROCS(n)
	}
}

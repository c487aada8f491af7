package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/s2strust/s2strust/internal/pki"
)

// ChildEnv is set in the environment of the processes the benchmark starts
// to run its agents; a test binary's TestMain runs ChildMain when it is set.
const ChildEnv = "S2STRUST_BENCH_CHILD"

// command is what the benchmark tells a child process, one JSON object a
// line on the child's standard input.
type command struct {
	// Op is init (issue certificates for Hosts, the first being agent
	// number First), start (connect every agent to Addr's Method, with a
	// fresh state), stop (disconnect every agent) or rss (report memory).
	Op     string   `json:"op"`
	Hosts  []string `json:"hosts,omitempty"`
	First  int      `json:"first,omitempty"`
	CACert []byte   `json:"ca_cert,omitempty"`
	CAKey  []byte   `json:"ca_key,omitempty"`
	Addr   string   `json:"addr,omitempty"`
	Method string   `json:"method,omitempty"`
	// Rate paces start: agent number i opens its first stream i/Rate
	// seconds after the command (0: all at once).
	Rate float64 `json:"rate,omitempty"`
}

// event is what a child tells the benchmark, one JSON object a line on
// its standard output.
type event struct {
	// E is ready (init done), started, stopped, answer (agent I had its
	// stream's first answer at T), desired (agent I received a Desired),
	// drain (agent I was told to reconnect later), resumed (agent I's
	// stream runs on a resumed TLS session), rss (B bytes resident,
	// Go heap and stacks H) or error (Err).
	E   string `json:"e"`
	I   int    `json:"i,omitempty"`
	T   int64  `json:"t,omitempty"`
	B   int64  `json:"b,omitempty"`
	H   int64  `json:"h,omitempty"`
	Err string `json:"err,omitempty"`
}

// ChildMain runs a benchmark child: simulated agents driven by commands
// on in, reporting events on out, until in ends.
func ChildMain(in io.Reader, out io.Writer) error {
	if err := lowerPriority(); err != nil {
		return fmt.Errorf("bench child: %w", err)
	}
	bw := bufio.NewWriterSize(out, 64<<10)
	c := &child{bufw: bw, enc: json.NewEncoder(bw), flushTicker: time.NewTicker(5 * time.Millisecond)}
	defer c.flushTicker.Stop()
	dec := json.NewDecoder(bufio.NewReader(in))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.flushLoop(ctx)
	for {
		var cmd command
		if err := dec.Decode(&cmd); err != nil {
			c.stopAgents()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("bench child: read a command: %w", err)
		}
		if err := c.do(ctx, cmd); err != nil {
			c.emit(event{E: "error", Err: err.Error()})
		}
		c.flush()
	}
}

// child is the state of one child process.
type child struct {
	mu          sync.Mutex
	enc         *json.Encoder
	bufw        *bufio.Writer
	flushTicker *time.Ticker

	first  int
	hosts  []string
	tls    []*tls.Config
	cancel context.CancelFunc
	group  *errgroup.Group
}

// flushLoop sends buffered events every few milliseconds: events come in
// bursts of thousands, and a write per event would cost the child more
// than the agents.
func (c *child) flushLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.flushTicker.C:
			c.flush()
		}
	}
}

func (c *child) emit(e event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.enc.Encode(e)
}

func (c *child) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bufw != nil {
		_ = c.bufw.Flush()
	}
}

func (c *child) do(ctx context.Context, cmd command) error {
	switch cmd.Op {
	case "init":
		if need := uint64(len(cmd.Hosts) + 64); need > 0 {
			if got, err := raiseFileLimit(need); got < need {
				return fmt.Errorf("%d agents need %d open files, the limit is %d: %v", len(cmd.Hosts), need, got, err)
			}
		}
		ca, err := pki.LoadCA(cmd.CACert, cmd.CAKey)
		if err != nil {
			return fmt.Errorf("load the controller's CA: %w", err)
		}
		cfgs, err := issueAgents(ca, cmd.Hosts)
		if err != nil {
			return err
		}
		c.first, c.hosts, c.tls = cmd.First, cmd.Hosts, cfgs
		c.emit(event{E: "ready"})
	case "start":
		c.stopAgents()
		actx, cancel := context.WithCancel(ctx)
		c.cancel, c.group = cancel, &errgroup.Group{}
		for i, host := range c.hosts {
			a := &agent{idx: c.first + i, host: host, tls: c.tls[i], method: cmd.Method, ev: c}
			var delay time.Duration
			if cmd.Rate > 0 {
				delay = time.Duration(float64(a.idx) / cmd.Rate * float64(time.Second))
			}
			c.group.Go(func() error { a.run(actx, cmd.Addr, delay); return nil })
		}
		c.emit(event{E: "started"})
	case "stop":
		c.stopAgents()
		c.emit(event{E: "stopped"})
	case "rss":
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, err := residentBytes("self")
		if err != nil {
			return err
		}
		c.emit(event{E: "rss", B: rss, H: int64(ms.HeapInuse + ms.StackInuse)})
	default:
		return fmt.Errorf("unknown command %q", cmd.Op)
	}
	return nil
}

func (c *child) stopAgents() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	_ = c.group.Wait()
	c.cancel, c.group = nil, nil
}

// issueAgents issues one host certificate per host, on every core.
func issueAgents(ca *pki.CA, hosts []string) ([]*tls.Config, error) {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	out := make([]*tls.Config, len(hosts))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	now := time.Now()
	for i, host := range hosts {
		g.Go(func() error {
			certPEM, keyPEM, err := ca.IssueHost(host, now, 24*time.Hour)
			if err != nil {
				return fmt.Errorf("issue a certificate for %s: %w", host, err)
			}
			cfg, err := pki.ClientTLSConfig(certPEM, keyPEM, ca.CertPEM(), "127.0.0.1")
			if err != nil {
				return err
			}
			cfg.RootCAs = pool // one pool for all, as one agent process would have
			out[i] = cfg
			return nil
		})
	}
	return out, g.Wait()
}

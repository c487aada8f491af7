package rollout

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Elector runs this replica in the controllers' leader election (etcd's
// concurrency package): every replica serves agents and the API, only the
// leader advances rollouts and chooses primaries. Its leadership is its
// election key, which lives as long as its session's lease: a leader that
// dies loses it within the lease TTL and another replica wins.
//
// It implements server.Leadership.
type Elector struct {
	cli    *clientv3.Client
	prefix string
	id     string
	ttl    time.Duration
	log    *slog.Logger

	mu     sync.Mutex
	leader bool
	key    string
	rev    int64
}

// NewElector returns an elector campaigning under prefix as id; ttl is the
// session's lease TTL (at least 1s), the longest a dead leader holds on.
func NewElector(cli *clientv3.Client, prefix, id string, ttl time.Duration, log *slog.Logger) *Elector {
	return &Elector{cli: cli, prefix: prefix, id: id, ttl: max(ttl, time.Second), log: log}
}

// IsLeader reports whether this replica leads now.
func (e *Elector) IsLeader() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leader
}

// Fence returns the comparison that holds only while this replica leads:
// its election key still exists with the create revision it won with.
// While not leading it returns a comparison that always fails.
func (e *Elector) Fence() []clientv3.Cmp {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.leader {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(e.prefix+"/none"), "=", -1)}
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(e.key), "=", e.rev)}
}

// Run campaigns until ctx ends. Each time this replica wins, lead runs
// with a context that ends when the leadership does (the session's lease
// lost, or ctx done); lead should return then. A new campaign follows.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context)) error {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := e.term(ctx, lead)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			e.log.Warn("leader election", "error", err, "retry_in", delay)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			delay = min(2*delay, 5*time.Second)
			continue
		}
		delay = 100 * time.Millisecond
	}
	return nil
}

func (e *Elector) term(ctx context.Context, lead func(ctx context.Context)) error {
	sess, err := concurrency.NewSession(e.cli, concurrency.WithTTL(int(e.ttl/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, e.prefix)
	if err := el.Campaign(ctx, e.id); err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.mu.Lock()
	e.leader, e.key, e.rev = true, el.Key(), el.Rev()
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.leader = false
		e.mu.Unlock()
	}()
	e.log.Info("leading the controllers", "id", e.id, "key", el.Key())
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(lctx)
	}()
	select {
	case <-sess.Done():
		e.mu.Lock()
		e.leader = false
		e.mu.Unlock()
		cancel()
		<-done
		return errors.New("leadership lost: the election session's lease expired")
	case <-done:
	case <-ctx.Done():
		cancel()
		<-done
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer rcancel()
	_ = el.Resign(rctx)
	return nil
}

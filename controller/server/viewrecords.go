package server

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/s2strust/s2strust/controller/rotation"
	"github.com/s2strust/s2strust/controller/secrets"
	"github.com/s2strust/s2strust/controller/store"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// What the last view (view.go) keeps besides the hosts, so that the read
// calls of rollouts, rotations, secrets, the audit trail and the topology
// history answer while etcd does not: the newest few of each, loaded with
// the hub's snapshot and followed by its watches, as the hosts are. Each
// is bounded whatever the fleet's size. A rollout or a rotation names its
// hosts (a rollout of 10,000 hosts is about 380 KB), so those are kept
// as stored and decoded only when read; a revision is kept without its
// document, a secret as its description only, never its sealed part.

// How many of each the view keeps. At most one rollout and one rotation
// is ever unfinished, and it is the newest (creating one aborts the
// running rollout; a rotation is refused while one is unfinished), so the
// newest few always hold the one that runs.
const (
	viewRollouts  = 8
	viewRotations = 8
	viewRevisions = 20
	viewAudit     = 500
)

// kept is one record of the view.
type kept[T any] struct {
	// id orders the records: a rollout's or rotation's number, a
	// revision's version, an audit record's create revision.
	id     uint64
	modRev int64
	val    T
}

// recent keeps the newest records of one key prefix, at most max of them.
type recent[T any] struct {
	max   int
	items []kept[T] // by id, oldest first
	// dropped says that older records exist than those kept.
	dropped bool
}

func (r *recent[T]) search(id uint64) (int, bool) {
	return slices.BinarySearchFunc(r.items, id, func(k kept[T], id uint64) int { return cmp.Compare(k.id, id) })
}

// load replaces the records with items (in any order); more says that
// etcd holds older ones.
func (r *recent[T]) load(items []kept[T], more bool) {
	slices.SortFunc(items, func(a, b kept[T]) int { return cmp.Compare(a.id, b.id) })
	if n := len(items) - r.max; n > 0 {
		items, more = items[n:], true
	}
	r.items, r.dropped = items, more
}

// put records a record stored, dropping the oldest beyond max.
func (r *recent[T]) put(k kept[T]) {
	i, found := r.search(k.id)
	switch {
	case found:
		r.items[i] = k
	case i == 0 && len(r.items) >= r.max:
		r.dropped = true // older than every record kept
	default:
		r.items = slices.Insert(r.items, i, k)
		if len(r.items) > r.max {
			r.items, r.dropped = slices.Delete(r.items, 0, 1), true
		}
	}
}

func (r *recent[T]) remove(id uint64) {
	if i, found := r.search(id); found {
		r.items = slices.Delete(r.items, i, i+1)
	}
}

// get returns record id (0: the newest). When it is not kept, older says
// whether it may exist all the same, older than the records kept.
func (r *recent[T]) get(id uint64) (k kept[T], ok, older bool) {
	if id == 0 {
		if len(r.items) == 0 {
			return k, false, r.dropped
		}
		return r.items[len(r.items)-1], true, false
	}
	i, found := r.search(id)
	if found {
		return r.items[i], true, false
	}
	return k, false, r.dropped && i == 0
}

// newest returns up to limit records older than before (0: from the
// newest), newest first. partial says the page reached the oldest record
// kept while older ones exist: a listing is cut short there.
func (r *recent[T]) newest(before uint64, limit int) (out []kept[T], partial bool) {
	end := len(r.items)
	if before > 0 {
		end, _ = r.search(before)
	}
	for i := end - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, r.items[i])
	}
	return out, r.dropped && len(out) == end
}

// from returns the records from id min on, oldest first. partial says
// that older ones than min may exist that are not kept.
func (r *recent[T]) from(min uint64) (out []kept[T], partial bool) {
	i, _ := r.search(min)
	return slices.Clone(r.items[i:]), r.dropped && i == 0
}

// records is what the view keeps besides the hosts.
type records struct {
	rollouts, rotations recent[[]byte]                // as stored
	revisions           recent[*store.TopologyRecord] // without their documents
	audit               recent[[]byte]                // as stored, by create revision
	secrets             map[string]*pb.Secret         // by name, without used_by
}

func newRecords() records {
	return records{rollouts: recent[[]byte]{max: viewRollouts}, rotations: recent[[]byte]{max: viewRotations},
		revisions: recent[*store.TopologyRecord]{max: viewRevisions}, audit: recent[[]byte]{max: viewAudit}, secrets: map[string]*pb.Secret{}}
}

// setRecords replaces the records, read as of the hub's snapshot.
func (v *fleetView) setRecords(recs records) {
	v.mu.Lock()
	v.records = recs
	v.bumpLocked()
	v.mu.Unlock()
}

// Selectors of what the view keeps, for viewGet, viewNewest and viewFrom.
func keptRollouts(r *records) *recent[[]byte]                 { return &r.rollouts }
func keptRotations(r *records) *recent[[]byte]                { return &r.rotations }
func keptRevisions(r *records) *recent[*store.TopologyRecord] { return &r.revisions }
func keptAudit(r *records) *recent[[]byte]                    { return &r.audit }

// viewGet is recent.get on what pick selects of the view.
func viewGet[T any](v *fleetView, pick func(*records) *recent[T], id uint64) (kept[T], bool, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return pick(&v.records).get(id)
}

// viewNewest is recent.newest on what pick selects of the view.
func viewNewest[T any](v *fleetView, pick func(*records) *recent[T], before uint64, limit int) ([]kept[T], bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return pick(&v.records).newest(before, limit)
}

// viewFrom is recent.from on what pick selects of the view.
func viewFrom[T any](v *fleetView, pick func(*records) *recent[T], min uint64) ([]kept[T], bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return pick(&v.records).from(min)
}

// secretsAfter describes up to limit secrets named after after, sorted by
// name, as last seen, and says whether more follow.
func (v *fleetView) secretsAfter(after string, limit int) ([]*pb.Secret, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	names := make([]string, 0, len(v.records.secrets))
	for n := range v.records.secrets {
		if n > after {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	more := len(names) > limit
	out := make([]*pb.Secret, 0, min(len(names), limit))
	for _, n := range names[:min(len(names), limit)] {
		s := v.records.secrets[n]
		out = append(out, &pb.Secret{Name: s.GetName(), Certificate: s.GetCertificate(), Version: s.GetVersion()})
	}
	return out, more
}

// recordPrefix is a key prefix the view keeps the newest records of, as
// stored.
type recordPrefix struct {
	prefix string
	// key is the key of record number n, for records numbered 1, 2, 3 …
	// by their key (rollouts, rotations); nil for records ordered by their
	// create revision (the audit trail, whose keys start with their kind).
	key  func(n uint64) string
	kept func(*records) *recent[[]byte]
}

// id is the record's place in its order; false for a key that has none
// (a deleted audit record: deletes carry no create revision).
func (p recordPrefix) id(kv *mvccpb.KeyValue) (uint64, bool) {
	if p.key == nil {
		return uint64(kv.CreateRevision), kv.CreateRevision > 0
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), p.prefix), 10, 64)
	return n, err == nil
}

// newest reads the newest n records as of etcd revision rev, and says
// whether older ones exist. Numbered records are never deleted, so their
// count is the newest number: a count and one bounded range read them,
// however many are stored. The audit trail is read sorted by create
// revision (etcd sorts it whole, as for ListAuditRecords).
func (p recordPrefix) newest(ctx context.Context, cli *clientv3.Client, n int, rev int64) ([]*mvccpb.KeyValue, bool, error) {
	if p.key == nil {
		resp, err := cli.Get(ctx, p.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(int64(n)))
		if err != nil {
			return nil, false, err
		}
		return resp.Kvs, resp.More, nil
	}
	count, err := cli.Get(ctx, p.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithCountOnly())
	if err != nil {
		return nil, false, err
	}
	from := uint64(max(count.Count-int64(n), 0)) + 1
	resp, err := cli.Get(ctx, p.key(from), clientv3.WithRange(clientv3.GetPrefixRangeEnd(p.prefix)), clientv3.WithRev(rev))
	if err != nil {
		return nil, false, err
	}
	return resp.Kvs, from > 1, nil
}

// storedRecords name the prefixes the view keeps records of as stored,
// as the watch loop names them.
var storedRecords = []string{"rollouts", "rotations", "audit"}

// recordPrefix is one of storedRecords; false for another name.
func (h *Hub) recordPrefix(what string) (recordPrefix, bool) {
	switch what {
	case "rollouts":
		return recordPrefix{prefix: h.rollouts.Prefix(), key: h.rollouts.Key, kept: keptRollouts}, true
	case "rotations":
		rs := rotation.NewStore(h.cfg.Store)
		return recordPrefix{prefix: rs.Prefix(), key: rs.Key, kept: keptRotations}, true
	case "audit":
		return recordPrefix{prefix: auditPrefix(h.cfg.Store), kept: keptAudit}, true
	}
	return recordPrefix{}, false
}

// loadRecords reads what the view keeps besides the hosts as of etcd
// revision rev, where the hub's watches start; secretKVs are the secrets
// the hub read with its snapshot.
func (h *Hub) loadRecords(ctx context.Context, rev int64, secretKVs []*mvccpb.KeyValue) (records, error) {
	st := h.cfg.Store
	recs := newRecords()
	for _, what := range storedRecords {
		p, _ := h.recordPrefix(what)
		keep := p.kept(&recs)
		kvs, more, err := p.newest(ctx, st.Client(), keep.max, rev)
		if err != nil {
			return records{}, fmt.Errorf("read the newest %s at revision %d: %w", what, rev, err)
		}
		items := make([]kept[[]byte], 0, len(kvs))
		for _, kv := range kvs {
			if id, ok := p.id(kv); ok {
				items = append(items, kept[[]byte]{id: id, modRev: kv.ModRevision, val: kv.Value})
			}
		}
		keep.load(items, more)
	}
	// The history is never rewritten, only added to, so a read after rev
	// overlaps the watch at worst; it numbers records stored before
	// sequence numbers, which the view could not.
	revs, err := st.ListTopologyRevisions(ctx, viewRevisions+1, 0)
	if err != nil {
		return records{}, err
	}
	items := make([]kept[*store.TopologyRecord], 0, len(revs))
	for _, r := range revs {
		r.Document = nil
		items = append(items, kept[*store.TopologyRecord]{id: r.Revision, val: r})
	}
	recs.revisions.load(items, len(revs) > viewRevisions)
	for _, kv := range secretKVs {
		name := strings.TrimPrefix(string(kv.Key), st.SecretsPrefix())
		if sec, err := secrets.Describe(name, kv.Value); err == nil {
			recs.secrets[name] = sec
		}
	}
	return recs, nil
}

// followRecords takes one watch response on a prefix the view keeps
// records of ("rollouts", "rotations", "audit", "topology", "secrets")
// into the view.
func (h *Hub) followRecords(what string, wr clientv3.WatchResponse) {
	st := h.cfg.Store
	p, asStored := h.recordPrefix(what)
	v := h.view
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, ev := range wr.Events {
		put := ev.Type == clientv3.EventTypePut
		key := string(ev.Kv.Key)
		switch {
		case asStored:
			id, ok := p.id(ev.Kv)
			switch {
			case !ok:
			case put:
				p.kept(&v.records).put(kept[[]byte]{id: id, modRev: ev.Kv.ModRevision, val: ev.Kv.Value})
			default:
				p.kept(&v.records).remove(id)
			}
		case what == "topology":
			rest, isRev := strings.CutPrefix(key, st.Key("topology/rev/"))
			n, err := strconv.ParseUint(rest, 10, 64)
			if !put || !isRev || err != nil {
				continue // topology/current: the hub takes it
			}
			if rec, err := store.DecodeTopology(ev.Kv.Value, int64(n)); err == nil {
				rec.Document = nil
				v.records.revisions.put(kept[*store.TopologyRecord]{id: n, modRev: ev.Kv.ModRevision, val: rec})
			}
		case what == "secrets":
			name := strings.TrimPrefix(key, st.SecretsPrefix())
			if !put {
				delete(v.records.secrets, name)
			} else if sec, err := secrets.Describe(name, ev.Kv.Value); err == nil {
				v.records.secrets[name] = sec
			}
		}
	}
	if v.lost == "" {
		v.freshAt = h.cfg.Now()
	}
}

// recordReader reads records of one kind whose view keeps the newest
// few: from etcd, or when etcd does not answer from the view, marked
// stale (see readOrStale). S is what the view keeps of a record, T what
// the service answers with.
type recordReader[T, S any] struct {
	hub *Hub
	// what names the records in messages ("rollouts"), and their names
	// ("rollouts/{id}").
	what  string
	keeps int
	kept  func(*records) *recent[S]
	// get reads record id (0: the newest) from etcd; list up to limit
	// older than before (0: from the newest), newest first.
	get  func(ctx context.Context, id uint64) (T, error)
	list func(ctx context.Context, limit int, before uint64) ([]T, error)
	// decode turns what the view keeps into the record.
	decode func(kept[S]) (T, error)
}

// read returns record id (0: the newest), and the stale mark when it
// comes from the view. A record older than the view keeps is UNAVAILABLE
// then; one the view did not know NOT_FOUND.
func (r recordReader[T, S]) read(ctx context.Context, id uint64) (T, *pb.Staleness, error) {
	var out T
	stale, err := readOrStale(ctx, r.hub, 0, func(ctx context.Context) error {
		var err error
		out, err = r.get(ctx, id)
		return err
	})
	if err != nil || stale == nil {
		return out, nil, err
	}
	name := fmt.Sprintf("%s/%d", r.what, id)
	k, ok, older := viewGet(r.hub.view, r.kept, id)
	switch {
	case ok:
		out, err = r.decode(k)
		return out, stale, err
	case older:
		return out, nil, status.Errorf(codes.Unavailable, "the store is unavailable (etcd has no quorum or cannot be reached) and the controller's last view keeps only the newest %d %s, not %s: %s",
			r.keeps, r.what, name, stale.GetReason())
	case id == 0:
		return out, nil, status.Errorf(codes.NotFound, "there were no %s when the controller last read etcd (%s)", r.what, stale.GetReason())
	}
	return out, nil, status.Errorf(codes.NotFound, "%s did not exist when the controller last read etcd (%s)", name, stale.GetReason())
}

// watch sends cur (as read answered, with its stale mark; sent is its
// mod revision) and then each newer version the view takes, and again
// whenever the answers turn stale or current, until finished(cur) or ctx
// ends. A record newer ones push out of the view has finished (only the
// newest runs): it is read once more from etcd and the watch ends.
func (r recordReader[T, S]) watch(ctx context.Context, id uint64, cur T, sent int64, stale *pb.Staleness, finished func(T) bool, send func(T, *pb.Staleness) error) error {
	v := r.hub.view
	if err := send(cur, stale); err != nil || finished(cur) {
		return err
	}
	wasLost := v.lostMark(r.hub.cfg.Now()) != nil
	for {
		changed := v.wait() // before reading, so no change is missed
		k, ok, older := viewGet(v, r.kept, id)
		if older {
			var err error
			if cur, err = r.get(ctx, id); err != nil {
				return toStatus(err)
			}
			if err := send(cur, nil); err != nil || finished(cur) {
				return err
			}
			return status.Errorf(codes.Unavailable, "%s/%d is no longer in the controller's view: watch it again", r.what, id)
		}
		stale := v.lostMark(r.hub.cfg.Now())
		// A view behind what etcd answered (its watch not there yet) has
		// nothing newer to send.
		newer := ok && k.modRev > sent
		if newer {
			var err error
			if cur, err = r.decode(k); err != nil {
				return toStatus(err)
			}
			sent = k.modRev
		}
		if newer || (stale != nil) != wasLost {
			if err := send(cur, stale); err != nil {
				return err
			}
			wasLost = stale != nil
		}
		if finished(cur) {
			return nil
		}
		if err := v.until(ctx, changed, nil); err != nil {
			return err
		}
	}
}

// page returns up to limit records older than before (0: from the
// newest), newest first, and the stale mark when they come from the view;
// its reason then says when older records exist that the view does not
// keep (the listing ends before them).
func (r recordReader[T, S]) page(ctx context.Context, limit int, before uint64) ([]T, *pb.Staleness, error) {
	var out []T
	stale, err := readOrStale(ctx, r.hub, 0, func(ctx context.Context) error {
		var err error
		out, err = r.list(ctx, limit, before)
		return err
	})
	if err != nil || stale == nil {
		return out, nil, err
	}
	items, partial := viewNewest(r.hub.view, r.kept, before, limit)
	out = make([]T, 0, len(items))
	for _, k := range items {
		rec, err := r.decode(k)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, rec)
	}
	if partial {
		keepsOnly(stale, r.keeps, r.what)
	}
	return out, stale, nil
}

// keepsOnly adds to a stale mark's reason that the view keeps only the
// newest n records of what, so that older ones are not in the answer.
func keepsOnly(st *pb.Staleness, n int, what string) {
	st.Reason += fmt.Sprintf("; the controller's last view keeps only the newest %d %s: older ones are not listed", n, what)
}

// secretView is the hub's last view of the stored secrets, which
// secrets.Service answers from while etcd does not.
type secretView struct{ hub *Hub }

// SecretView returns the view the secret API answers from while etcd
// does not answer.
func (h *Hub) SecretView() secrets.View { return secretView{hub: h} }

// ReadOrStale implements secrets.View.
func (s secretView) ReadOrStale(ctx context.Context, read func(context.Context) error) (*pb.Staleness, error) {
	return readOrStale(ctx, s.hub, 0, read)
}

// SecretsAfter implements secrets.View: the secrets as last seen, each
// used by the deployments of the current topology whose token issuer it
// is.
func (s secretView) SecretsAfter(after string, limit int) ([]*pb.Secret, bool) {
	list, more := s.hub.view.secretsAfter(after, limit)
	users := map[string][]string{}
	if c := s.hub.currentCompiled(); c != nil {
		for dep, hosts := range c.deployments {
			if len(hosts) > 0 {
				if name := c.hosts[hosts[0]].GetTokenIssuer().GetSecret(); name != "" {
					users[name] = append(users[name], dep)
				}
			}
		}
	}
	for _, sec := range list {
		sec.UsedBy = users[sec.GetName()]
		sort.Strings(sec.UsedBy)
	}
	return list, more
}

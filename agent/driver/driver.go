// Package driver defines how the agent reads and changes a product's
// configuration on its host. The powershell driver talks to the real
// products' management shells; the sim driver simulates their stores.
package driver

import (
	"context"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// Item names used in per-item errors and statuses. Partner items are
// "partner/<name>"; removals of stale partners "remove-partner/<name>".
const (
	ItemOAuthConfiguration = "oauth-configuration"
	ItemIssuerCertificate  = "issuer-certificate"
	ItemLocalReplica       = "local-replica"
	ItemProduct            = "product"
)

// PartnerItem is the item name of a partner application.
func PartnerItem(name string) string { return "partner/" + name }

// RemovePartnerItem is the item name of a stale partner to remove.
func RemovePartnerItem(name string) string { return "remove-partner/" + name }

// Driver reads and changes one host's product configuration.
//
// Apply and Verify take the whole desired configuration; a driver applies
// deployment-scope items (global Lync settings, the Exchange organization,
// the SharePoint farm) only when cfg.Primary is set, and host-scope items
// (the issuer certificate in the local store, the local replica) always.
// Both are idempotent: applying a configuration twice changes nothing the
// second time, so an agent killed mid-apply converges on restart.
type Driver interface {
	// Name is "sim" or "powershell".
	Name() string
	// Detect lists the products and versions installed on the host.
	Detect(ctx context.Context) ([]*pb.DetectedProduct, error)
	// Apply makes the actual state match cfg. It goes on past a failing
	// item and returns one error per failed item; nil means every item
	// applied. secrets holds the key material cfg refers to.
	Apply(ctx context.Context, cfg *pb.HostConfig, secrets []*pb.SecretMaterial) []*pb.ItemError
	// Verify reads the actual state and compares it with cfg, item by item.
	// The report carries the items (OK, FAILED, or PENDING when a
	// non-primary host still waits for the primary's change to reach its
	// replica), the partners in the shape of Get-CsPartnerApplication, the
	// OAuth configuration and the issuer certificate. Version, hash, clock
	// and drift are the agent's to fill in.
	Verify(ctx context.Context, cfg *pb.HostConfig) (*pb.StatusReport, error)
}

// Prober is implemented by drivers that can check metadata and prove trust
// from their host. The agent calls it beside Verify and puts the results in
// the StatusReport's metadata and probes; neither call changes anything.
type Prober interface {
	// CheckMetadata downloads, from this host's vantage point, the metadata
	// document of the host's own deployment (partner "") and of every
	// partner in cfg, and reports reachability, validity (with the
	// seed-style error and its cause) and the signing thumbprints found.
	CheckMetadata(ctx context.Context, cfg *pb.HostConfig) []*pb.MetadataCheck
	// Probe mints an actor token with this host's current signing key for
	// every host each deployment in cfg.TrustedBy lists (all of a small
	// deployment, a bounded sample of a large one: the controller chooses)
	// and presents it there; one result per target host.
	Probe(ctx context.Context, cfg *pb.HostConfig) []*pb.TrustProbe
}

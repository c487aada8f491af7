package syncer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/s2strust/s2strust/internal/atomicfile"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// lastGood is the configuration the agent last applied and verified,
// kept on disk so a restart resumes without re-applying and drift checks
// go on while the controller is away.
type lastGood struct {
	Version uint64          `json:"version"`
	Hash    string          `json:"hash"`
	Config  json.RawMessage `json:"config"`
	config  *pb.HostConfig
}

const stateFile = "agent-state.json"

func loadState(dir string) (*lastGood, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read agent state: %w", err)
	}
	var s lastGood
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read agent state %s: %w", filepath.Join(dir, stateFile), err)
	}
	s.config = &pb.HostConfig{}
	if err := protojson.Unmarshal(s.Config, s.config); err != nil {
		return nil, fmt.Errorf("read agent state %s: configuration: %w", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

func saveState(dir string, version uint64, hash string, cfg *pb.HostConfig) (*lastGood, error) {
	cj, err := protojson.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode agent state: %w", err)
	}
	s := &lastGood{Version: version, Hash: hash, Config: cj, config: cfg}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode agent state: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

package server

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

func TestCheckAgentMessage(t *testing.T) {
	lim := AgentLimits{MaxMessageBytes: 1000, MaxStringBytes: 10}.withDefaults()
	long := strings.Repeat("x", 11)
	tests := []struct {
		name  string
		msg   *pb.SyncRequest
		code  codes.Code
		field string
		text  string
	}{
		{"fine", &pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: "a.b.c"}}}, codes.OK, "", ""},
		{"exactly at the limit", &pb.SyncRequest{Message: &pb.SyncRequest_Ack{Ack: &pb.Ack{Nonce: strings.Repeat("n", 10)}}}, codes.OK, "", ""},
		{"a scalar", &pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Host: "h", AgentVersion: long}}},
			codes.InvalidArgument, "hello.agent_version", "hello.agent_version from host h is 11 bytes, over the limit of 10 bytes for a string field"},
		{"nested in a list", &pb.SyncRequest{Message: &pb.SyncRequest_Hello{Hello: &pb.Hello{Products: []*pb.DetectedProduct{{}, {Version: long}}}}},
			codes.InvalidArgument, "hello.products[1].version", "over the limit of 10 bytes"},
		{"a repeated string", &pb.SyncRequest{Message: &pb.SyncRequest_Status{Status: &pb.StatusReport{Metadata: []*pb.MetadataCheck{{Thumbprints: []string{"a", long}}}}}},
			codes.InvalidArgument, "status.metadata[0].thumbprints[1]", "over the limit"},
		{"too big", &pb.SyncRequest{Message: &pb.SyncRequest_Nack{Nack: &pb.Nack{Errors: make([]*pb.ItemError, 600)}}},
			codes.ResourceExhausted, "nack", "the nack from host h is 1203 bytes encoded, over the limit of 1000 bytes"},
	}
	for _, tc := range tests {
		err := checkAgentMessage(tc.msg, "h", lim)
		st := status.Convert(err)
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.text) {
			t.Errorf("%s: %v; want %s containing %q", tc.name, err, tc.code, tc.text)
			continue
		}
		if tc.code == codes.OK {
			continue
		}
		var got string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
				got = br.GetFieldViolations()[0].GetField()
			}
		}
		if got != tc.field {
			t.Errorf("%s: field violation %q; want %q", tc.name, got, tc.field)
		}
	}
}

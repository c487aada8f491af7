package bench

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/s2strust/s2strust/controller/app"

	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// floorMethod is the bare server's Sync stream.
const floorMethod = "/s2strust.bench.v1.Floor/Sync"

// floorServer is the floor: a bare gRPC server with the controller's mTLS
// and transport options and the agent protocol's messages, but no etcd, no
// authorization, no hub. A stream answers the Hello with UpToDate, then
// sends whatever fanOut hands it and reads ACKs.
type floorServer struct {
	gs   *grpc.Server
	lis  net.Listener
	done chan error

	mu      sync.Mutex
	streams map[string]chan *pb.Desired // host → its stream's push slot
	// onAck hears every ACK the floor reads: the floor "records" an ACK
	// by reading it, the least a server can do with it.
	onAck func(host string, version uint64)
}

func startFloor(tlsCfg *tls.Config, onAck func(host string, version uint64)) (*floorServer, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the floor server: %w", err)
	}
	s := &floorServer{lis: lis, done: make(chan error, 1), streams: map[string]chan *pb.Desired{}, onAck: onAck}
	// The controller's transport options (controller/app), so the floor
	// differs only in what the controller does per stream.
	s.gs = grpc.NewServer(append(app.TransportOptions(), grpc.Creds(credentials.NewTLS(tlsCfg)))...)
	s.gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: "s2strust.bench.v1.Floor",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{StreamName: "Sync", ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, stream grpc.ServerStream) error { return s.sync(stream) }}},
	}, nil)
	go func() { s.done <- s.gs.Serve(lis) }()
	return s, nil
}

func (s *floorServer) addr() string { return s.lis.Addr().String() }

func (s *floorServer) sync(stream grpc.ServerStream) error {
	ctx := stream.Context()
	first := &pb.SyncRequest{}
	if err := stream.RecvMsg(first); err != nil {
		return err
	}
	host := first.GetHello().GetHost()
	if host == "" {
		return errors.New("the first message must be a hello naming the host")
	}
	push := make(chan *pb.Desired, 1)
	s.mu.Lock()
	s.streams[host] = push
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.streams[host] == push {
			delete(s.streams, host)
		}
		s.mu.Unlock()
	}()
	if err := stream.SendMsg(&pb.SyncResponse{Message: &pb.SyncResponse_UpToDate{UpToDate: &pb.UpToDate{}}}); err != nil {
		return err
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			m := &pb.SyncRequest{}
			if err := stream.RecvMsg(m); err != nil {
				recvErr <- err
				return
			}
			if a := m.GetAck(); a != nil {
				s.onAck(host, a.GetVersion())
			}
		}
	}()
	for {
		select {
		case err := <-recvErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case d := <-push:
			if err := stream.SendMsg(&pb.SyncResponse{Message: &pb.SyncResponse_Desired{Desired: d}}); err != nil {
				return err
			}
		}
	}
}

// fanOut hands every connected stream its host's Desired; it returns how
// many streams it reached.
func (s *floorServer) fanOut(desired map[string]*pb.Desired) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for host, push := range s.streams {
		if d := desired[host]; d != nil {
			select {
			case push <- d:
				n++
			default:
			}
		}
	}
	return n
}

func (s *floorServer) stop() {
	s.gs.Stop()
	<-s.done
}

// Package natstest gives tests a NATS server with JetStream: the shared one
// of the machine (NATS_URL, else nats://127.0.0.1:4222), with a stream name
// and subject prefix of the test's own, or a private nats-server process a
// test may stop, kill and restart.
package natstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// URL returns the shared server's URL: NATS_URL, else the machine's
// default.
func URL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

// Connect connects to url, failing t with one line saying how to start a
// server when none answers; the connection is closed when t ends.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(5 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatalf("natstest: no NATS server with JetStream answers at %s (%v): start one with `nats-server -js` or set NATS_URL (.ci/run starts it)", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Names returns a stream name and a subject prefix no other test uses.
// The stream is deleted when t ends.
func Names(ctx context.Context, t testing.TB, nc *nats.Conn) (stream, prefix string) {
	t.Helper()
	id := strings.ToLower(nuid.Next())
	stream, prefix = "T_"+id, "t."+id
	t.Cleanup(func() {
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) && !nc.IsClosed() {
			t.Logf("natstest: deleting stream %s: %v", stream, err)
		}
	})
	return stream, prefix
}

// Server is a private nats-server process with JetStream, for tests that
// stop or kill the broker.
type Server struct {
	t    testing.TB
	Port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	runs atomic.Int32
}

// Binary is the nats-server executable: NATS_SERVER_BIN, else found on
// PATH or at /usr/sbin/nats-server.
func Binary() (string, error) {
	if b := os.Getenv("NATS_SERVER_BIN"); b != "" {
		return b, nil
	}
	if b, err := exec.LookPath("nats-server"); err == nil {
		return b, nil
	}
	if _, err := os.Stat("/usr/sbin/nats-server"); err == nil {
		return "/usr/sbin/nats-server", nil
	}
	return "", errors.New("natstest: no nats-server binary (install the nats-server package, or set NATS_SERVER_BIN)")
}

// Start starts a private server on a free port with its store in a
// directory of t's; it is killed when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: finding a free port: %v", err)
	}
	addr, ok := l.Addr().(*net.TCPAddr)
	_ = l.Close()
	if !ok {
		t.Fatalf("natstest: a TCP listener has address %v", l.Addr())
	}
	port := addr.Port
	s := &Server{t: t, Port: port, dir: t.TempDir()}
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// URL is the server's client URL.
func (s *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.Port) }

// Start starts the server (again), and waits until it answers.
func (s *Server) Start() {
	s.t.Helper()
	bin, err := Binary()
	if err != nil {
		s.t.Fatal(err.Error())
	}
	log, err := os.OpenFile(s.dir+"/server.log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	s.cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-js", "-sd", s.dir+"/store")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("natstest: starting %s: %v", bin, err)
	}
	s.runs.Add(1)
	done := make(chan struct{})
	s.done = done
	go func() { _ = s.cmd.Wait(); _ = log.Close(); close(done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		nc, err := nats.Connect(s.URL(), nats.Timeout(time.Second))
		if err == nil {
			js, jerr := jetstream.New(nc)
			if jerr == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, jerr = js.AccountInfo(ctx)
				cancel()
			}
			nc.Close()
			if jerr == nil {
				return
			}
			err = jerr
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.dir + "/server.log")
			s.t.Fatalf("natstest: nats-server on port %d did not answer in 20s: %v\n%s", s.Port, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server with SIGTERM (it flushes its store) and waits.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Kill kills the server with SIGKILL and waits.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		s.t.Errorf("natstest: nats-server ignored %v for 30s", sig)
	}
}

// String describes the server for messages.
func (s *Server) String() string {
	return fmt.Sprintf("nats-server :%d (started %d times)", s.Port, s.runs.Load())
}

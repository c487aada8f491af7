package pki

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readFiles(t *testing.T, paths ...string) map[string][]byte {
	t.Helper()
	m := make(map[string][]byte)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m[p] = b
	}
	return m
}

func wantMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode %v, want %v", filepath.Base(path), got, want)
	}
}

func TestEnsureDevPKI(t *testing.T) {
	now := time.Now()
	dir := filepath.Join(t.TempDir(), "data", "pki")

	ca, files, err := EnsureDevPKI(dir, []string{"controller.example.com"}, now)
	if err != nil {
		t.Fatalf("first EnsureDevPKI: %v", err)
	}
	if files.Dir != dir || files.CACert() != filepath.Join(dir, "ca.crt") || files.AdminKey() != filepath.Join(dir, "admin.key") {
		t.Errorf("unexpected paths %+v", files)
	}
	wantMode(t, dir, 0o700)
	for _, p := range []string{files.CAKey(), files.AdminKey(), files.ServerKey()} {
		wantMode(t, p, 0o600)
	}
	for _, p := range []string{files.CACert(), files.AdminCert(), files.ServerCert()} {
		wantMode(t, p, 0o644)
	}
	if ca.Cert.Subject.CommonName != DevCAName {
		t.Errorf("CA CN %q, want %q", ca.Cert.Subject.CommonName, DevCAName)
	}
	all := []string{files.CACert(), files.CAKey(), files.AdminCert(), files.AdminKey(), files.ServerCert(), files.ServerKey()}
	first := readFiles(t, all...)
	if !bytes.Equal(first[files.CACert()], ca.CertPEM()) {
		t.Error("ca.crt is not the returned CA")
	}
	admin := parseCertPEM(t, first[files.AdminCert()])
	if id, err := IdentityFromCert(admin); err != nil || id != (Identity{KindAdmin, DevAdminName, RoleAdmin}) {
		t.Errorf("admin identity %v, %v", id, err)
	}
	server := parseCertPEM(t, first[files.ServerCert()])
	for _, n := range []string{"controller.example.com", "localhost", "127.0.0.1", "::1"} {
		if err := server.VerifyHostname(n); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	if d := server.NotAfter.Sub(now); d < 4*365*24*time.Hour || d > 5*365*24*time.Hour {
		t.Errorf("server certificate valid for %s, want 5 years", d)
	}

	// The files work together: the dev admin connects to the dev server.
	serverCfg, err := ServerTLSConfig(first[files.ServerCert()], first[files.ServerKey()], first[files.CACert()])
	if err != nil {
		t.Fatal(err)
	}
	clientCfg, err := ClientTLSConfig(first[files.AdminCert()], first[files.AdminKey()], first[files.CACert()], "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, serverErr, clientErr := handshake(t, serverCfg, clientCfg); serverErr != nil || clientErr != nil {
		t.Fatalf("dev admin to dev server: server %v, client %v", serverErr, clientErr)
	}

	// Again, later, with the same names: nothing changes.
	ca2, _, err := EnsureDevPKI(dir, []string{"Controller.Example.com"}, now.Add(time.Hour))
	if err != nil {
		t.Fatalf("second EnsureDevPKI: %v", err)
	}
	if !bytes.Equal(ca2.Cert.Raw, ca.Cert.Raw) {
		t.Error("second call returned another CA")
	}
	second := readFiles(t, all...)
	for _, p := range all {
		if !bytes.Equal(first[p], second[p]) {
			t.Errorf("%s changed on an idempotent call", filepath.Base(p))
		}
	}

	// A new server name: only the server certificate is reissued.
	if _, _, err := EnsureDevPKI(dir, []string{"controller.example.com", "10.1.2.3"}, now.Add(2*time.Hour)); err != nil {
		t.Fatalf("third EnsureDevPKI: %v", err)
	}
	third := readFiles(t, all...)
	for _, p := range []string{files.CACert(), files.CAKey(), files.AdminCert(), files.AdminKey()} {
		if !bytes.Equal(first[p], third[p]) {
			t.Errorf("%s changed when only the server names did", filepath.Base(p))
		}
	}
	if bytes.Equal(first[files.ServerCert()], third[files.ServerCert()]) || bytes.Equal(first[files.ServerKey()], third[files.ServerKey()]) {
		t.Error("server certificate and key not reissued for a new name")
	}
	server = parseCertPEM(t, third[files.ServerCert()])
	for _, n := range []string{"controller.example.com", "10.1.2.3", "localhost", "127.0.0.1", "::1"} {
		if err := server.VerifyHostname(n); err != nil {
			t.Errorf("reissued server certificate: %v", err)
		}
	}
	if err := server.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("reissued server certificate not from the CA: %v", err)
	}
	wantMode(t, files.ServerKey(), 0o600)

	// Near expiry the server certificate is renewed, the rest kept.
	if _, _, err := EnsureDevPKI(dir, []string{"controller.example.com", "10.1.2.3"}, server.NotAfter.Add(-24*time.Hour)); err != nil {
		t.Fatalf("EnsureDevPKI near server expiry: %v", err)
	}
	fourth := readFiles(t, all...)
	if bytes.Equal(third[files.ServerCert()], fourth[files.ServerCert()]) {
		t.Error("server certificate not renewed a day before expiry")
	}
	if !bytes.Equal(first[files.AdminCert()], fourth[files.AdminCert()]) {
		t.Error("admin certificate replaced")
	}
}

func TestEnsureDevPKIRepairs(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	ca, files, err := EnsureDevPKI(dir, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := ca.CertPEM()

	// A lost admin certificate is issued again by the same CA.
	if err := os.Remove(files.AdminCert()); err != nil {
		t.Fatal(err)
	}
	// A server key that no longer matches its certificate is replaced.
	if err := os.Remove(files.ServerKey()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureDevPKI(dir, nil, now); err != nil {
		t.Fatalf("EnsureDevPKI after losing files: %v", err)
	}
	got := readFiles(t, files.CACert(), files.AdminCert(), files.AdminKey(), files.ServerCert(), files.ServerKey())
	if !bytes.Equal(got[files.CACert()], caPEM) {
		t.Error("CA replaced")
	}
	for _, pair := range [][2]string{{files.AdminCert(), files.AdminKey()}, {files.ServerCert(), files.ServerKey()}} {
		if err := checkIdentity(got[pair[0]], got[pair[1]], caPEM); err != nil {
			t.Errorf("%s: %v", filepath.Base(pair[0]), err)
		}
	}

	// An existing admin is never overwritten, even one the CA did not sign.
	other := newTestCA(t, now)
	foreign, foreignKey, err := other.IssueAdmin("admin", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.AdminCert(), foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.AdminKey(), foreignKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureDevPKI(dir, nil, now); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(files.AdminCert()); !bytes.Equal(b, foreign) {
		t.Error("existing admin certificate overwritten")
	}

	// A CA whose key is gone is an error, not a new CA.
	if err := os.Remove(files.CAKey()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureDevPKI(dir, nil, now); err == nil || !strings.Contains(err.Error(), "ca.key") {
		t.Errorf("EnsureDevPKI without ca.key: %v, want an error naming ca.key", err)
	}
	if b, _ := os.ReadFile(files.CACert()); !bytes.Equal(b, caPEM) {
		t.Error("ca.crt changed")
	}
}

func TestEnsureDevPKIRejectsBadNames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if _, _, err := EnsureDevPKI(dir, []string{"bad name"}, time.Now()); err == nil {
		t.Fatal("EnsureDevPKI accepted an invalid server name")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory created despite invalid input: %v", err)
	}
}

func TestWriteIdentity(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	other := newTestCA(t, now)
	certPEM, keyPEM, err := ca.IssueHost("ex01.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := ca.IssueHost("ex02.contoso.com", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "out")
	if err := WriteIdentity(dir, "agent", certPEM, keyPEM, ca.CertPEM()); err != nil {
		t.Fatalf("WriteIdentity: %v", err)
	}
	wantMode(t, dir, 0o700)
	wantMode(t, filepath.Join(dir, "agent.key"), 0o600)
	wantMode(t, filepath.Join(dir, "agent.crt"), 0o644)
	wantMode(t, filepath.Join(dir, "ca.crt"), 0o644)
	got := readFiles(t, filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key"), filepath.Join(dir, "ca.crt"))
	for name, want := range map[string][]byte{"agent.crt": certPEM, "agent.key": keyPEM, "ca.crt": ca.CertPEM()} {
		if !bytes.Equal(got[filepath.Join(dir, name)], want) {
			t.Errorf("%s content differs", name)
		}
	}
	// What was written is usable as it stands.
	if _, err := ClientTLSConfig(got[filepath.Join(dir, "agent.crt")], got[filepath.Join(dir, "agent.key")], got[filepath.Join(dir, "ca.crt")], "localhost"); err != nil {
		t.Errorf("ClientTLSConfig from written files: %v", err)
	}

	for _, tc := range []struct {
		name          string
		base          string
		cert, key, ca []byte
		want          string
	}{
		{"path in base name", "../agent", certPEM, keyPEM, ca.CertPEM(), "invalid base name"},
		{"base name ca", "ca", certPEM, keyPEM, ca.CertPEM(), "invalid base name"},
		{"empty base name", "", certPEM, keyPEM, ca.CertPEM(), "invalid base name"},
		{"mismatched key", "agent2", certPEM, otherKey, ca.CertPEM(), "load key pair"},
		{"other CA", "agent2", certPEM, keyPEM, other.CertPEM(), "not signed by the given ca"},
		{"no CA", "agent2", certPEM, keyPEM, nil, "no ca certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteIdentity(dir, tc.base, tc.cert, tc.key, tc.ca)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("WriteIdentity error %v, want one containing %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "agent2.key")); !os.IsNotExist(err) {
				t.Errorf("agent2.key written despite the error")
			}
		})
	}
}

// The CA bundle may hold several CAs (during a rotation, say).
func TestWriteIdentityCABundle(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	other := newTestCA(t, now)
	certPEM, keyPEM, err := ca.IssueAdmin("alice", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle := append(other.CertPEM(), ca.CertPEM()...)
	if err := WriteIdentity(t.TempDir(), "admin", certPEM, keyPEM, bundle); err != nil {
		t.Errorf("WriteIdentity with a CA bundle: %v", err)
	}
}

// TestEnsureDevPKIDropsRemovedName: a name no longer asked for (a
// --tls-san removed) stops being served.
func TestEnsureDevPKIDropsRemovedName(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if _, _, err := EnsureDevPKI(dir, []string{"ctl.example.test"}, now); err != nil {
		t.Fatal(err)
	}
	files := Files{Dir: dir}
	if c := parseCertPEM(t, mustReadFile(t, files.ServerCert())); c.VerifyHostname("ctl.example.test") != nil {
		t.Fatalf("server certificate names %v, want ctl.example.test among them", c.DNSNames)
	}
	if _, _, err := EnsureDevPKI(dir, nil, now); err != nil {
		t.Fatal(err)
	}
	if c := parseCertPEM(t, mustReadFile(t, files.ServerCert())); c.VerifyHostname("ctl.example.test") == nil {
		t.Errorf("server certificate still names ctl.example.test (%v) after it was dropped", c.DNSNames)
	}
}

// TestInstallDevPKI: a data dir with its own CA takes the shared one: CA,
// admin and server certificate all move to it.
func TestInstallDevPKI(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	own, files, err := EnsureDevPKI(dir, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	shared := newTestCA(t, now)
	_, replaced, err := InstallDevPKI(dir, shared, []string{"ctl.example.test"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !replaced {
		t.Error("InstallDevPKI did not report the replaced CA")
	}
	loaded, err := LoadDevCA(dir)
	if err != nil || !loaded.Cert.Equal(shared.Cert) {
		t.Fatalf("LoadDevCA after install: %v, %v; want the shared CA", loaded, err)
	}
	for _, f := range []string{files.AdminCert(), files.ServerCert()} {
		c := parseCertPEM(t, mustReadFile(t, f))
		if c.CheckSignatureFrom(shared.Cert) != nil || c.CheckSignatureFrom(own.Cert) == nil {
			t.Errorf("%s is not signed by the shared CA", f)
		}
	}
	before := mustReadFile(t, files.AdminCert())
	if _, replaced, err := InstallDevPKI(dir, shared, []string{"ctl.example.test"}, now); err != nil || replaced {
		t.Fatalf("second InstallDevPKI: replaced %v, %v", replaced, err)
	}
	if !bytes.Equal(before, mustReadFile(t, files.AdminCert())) {
		t.Error("second InstallDevPKI reissued the admin certificate")
	}
	if ca, err := LoadDevCA(t.TempDir()); ca != nil || err != nil {
		t.Errorf("LoadDevCA of an empty dir: %v, %v; want nil, nil", ca, err)
	}
}

func mustReadFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package powershell

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// The fake worker: this test binary, started by the driver as its
// "powershell" executable (TestMain switches on S2S_FAKE_WORKER), so that
// process start, the pipes, death, restart and the timeout's tree kill are
// all real. It answers from the golden files in testdata/golden/<script>/,
// and only when the request's args are exactly the golden request's.
func TestMain(m *testing.M) {
	switch mode := os.Getenv("S2S_FAKE_WORKER"); mode {
	case "":
		os.Exit(m.Run())
	case "sleeper":
		// A grandchild that outlives nothing: the tree kill must end it.
		time.Sleep(time.Hour)
		os.Exit(0)
	default:
		os.Exit(fakeWorker(mode))
	}
}

// fakeEnv is the environment that makes the test binary a fake worker.
func fakeEnv(t *testing.T, mode string) (log string) {
	t.Helper()
	log = filepath.Join(t.TempDir(), "fake.log")
	t.Setenv("S2S_FAKE_WORKER", mode)
	t.Setenv("S2S_FAKE_LOG", log)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("S2S_FAKE_GOLDEN", filepath.Join(wd, "testdata", "golden"))
	return log
}

type golden struct {
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response"`
	// Error, when set, is the structured error the worker answers instead.
	Error *ErrorRecord `json:"error,omitempty"`
}

func fakeWorker(mode string) int {
	logf, err := os.OpenFile(os.Getenv("S2S_FAKE_LOG"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 9
	}
	defer logf.Close()
	// The command line, one argument a line, then every request line.
	fmt.Fprintf(logf, "ARGS %q\n", os.Args[1:])
	script := ""
	if n := len(os.Args); n > 0 {
		script = strings.TrimSuffix(filepath.Base(os.Args[n-1]), ".ps1")
	}
	if mode == "die-at-start" {
		fmt.Fprintln(os.Stderr, "Import-Module : the specified module 'SkypeForBusiness' was not loaded")
		return 3
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	answer := func(v any) {
		b, _ := json.Marshal(v)
		out.Write(b)
		out.WriteString("\r\n") // as Windows writes it
		out.Flush()
	}
	for in.Scan() {
		line := in.Bytes()
		fmt.Fprintf(logf, "REQ %s\n", line)
		var req struct {
			ID   uint64          `json:"id"`
			Op   string          `json:"op"`
			Args json.RawMessage `json:"args"`
		}
		if err := json.Unmarshal(line, &req); err != nil {
			answer(map[string]any{"id": 0, "ok": false, "error": ErrorRecord{Message: "bad request line"}})
			continue
		}
		fail := func(rec ErrorRecord) { answer(map[string]any{"id": req.ID, "ok": false, "error": rec}) }
		switch {
		case req.Op == "init" && mode == "no-module":
			fail(ErrorRecord{Cmdlet: "Import-Module", FullyQualifiedErrorID: "S2SModuleNotInstalled", Category: "ObjectNotFound",
				Message: "neither the SkypeForBusiness nor the Lync module is installed on this host (Get-Module -ListAvailable found none)"})
			continue
		case req.Op == "init" && mode == "session-refused":
			fail(ErrorRecord{Cmdlet: "New-PSSession", FullyQualifiedErrorID: "AccessDenied,PSSessionOpenFailed", Category: "OpenError",
				Message: "Connecting to remote server ex01.contoso.com failed with the following error message : Access is denied."})
			continue
		case req.Op == "exit":
			fmt.Fprintln(os.Stderr, "Invoke-S2SWorker : the pipeline has been stopped")
			return 4
		case req.Op == "hang":
			// Start a grandchild, report its pid, then never answer.
			c := exec.Command(os.Args[0])
			c.Env = append(os.Environ(), "S2S_FAKE_WORKER=sleeper")
			if err := c.Start(); err == nil {
				fmt.Fprintf(logf, "GRANDCHILD %d\n", c.Process.Pid)
			}
			time.Sleep(time.Hour)
		case req.Op == "garbage":
			out.WriteString("WARNING: The names of some imported commands include unapproved verbs\n")
			out.Flush()
			continue
		case req.Op == "huge":
			out.WriteString(`{"id":` + strconv.FormatUint(req.ID, 10) + `,"ok":true,"result":"` + strings.Repeat("x", 5000) + "\"}\n")
			out.Flush()
			continue
		case req.Op == "wrong-id":
			answer(map[string]any{"id": req.ID + 7, "ok": true})
			continue
		case req.Op == "answer-then-exit":
			answer(map[string]any{"id": req.ID, "ok": true, "result": "bye"})
			return 0
		}
		if mode == "conformance" {
			root, host := conformanceContext(os.Args[len(os.Args)-1])
			res, rec := conformanceAnswer(root, host, script, req.Op, req.Args)
			if rec != nil {
				fail(*rec)
			} else {
				answer(map[string]any{"id": req.ID, "ok": true, "result": res})
			}
			continue
		}
		if mode == "stateful" && req.Op != "init" {
			if res, rec, ok := statefulAnswer(script, req.Op, req.Args); ok {
				if rec != nil {
					fail(*rec)
				} else {
					answer(map[string]any{"id": req.ID, "ok": true, "result": res})
				}
				continue
			}
		}
		g, err := findGolden(script, req.Op, req.Args)
		if err != nil {
			fail(ErrorRecord{FullyQualifiedErrorID: "S2SUnknownOperation", Category: "InvalidOperation", Message: "this worker has no operation " + req.Op})
			continue
		}
		if pfx := checkKeyFile(req.Args); pfx != "" {
			fmt.Fprintf(logf, "PFX %s\n", pfx)
		}
		if g == nil {
			fail(ErrorRecord{FullyQualifiedErrorID: "FakeArgsMismatch", Message: fmt.Sprintf("no golden %s/%s request matches args %s", script, req.Op, req.Args)})
			continue
		}
		if g.Error != nil {
			fail(*g.Error)
			continue
		}
		resp := regexp.MustCompile(`"\$env:([A-Z0-9_]+)"`).ReplaceAllFunc(g.Response, func(m []byte) []byte {
			b, _ := json.Marshal(os.Getenv(string(m[6 : len(m)-1])))
			return b
		})
		answer(map[string]any{"id": req.ID, "ok": true, "result": json.RawMessage(resp)})
	}
	return 0
}

// findGolden returns the golden exchange of script's op whose request
// matches args: <op>.json or one of its variants <op>@<variant>.json. It
// returns an error when the op has no golden file at all, and nil, nil when
// none matches.
func findGolden(script, op string, args json.RawMessage) (*golden, error) {
	dir := filepath.Join(os.Getenv("S2S_FAKE_GOLDEN"), script)
	files, _ := filepath.Glob(filepath.Join(dir, op+"@*.json"))
	if _, err := os.Stat(filepath.Join(dir, op+".json")); err == nil {
		files = append(files, filepath.Join(dir, op+".json"))
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no golden file for %s/%s", script, op)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var g golden
		if err := json.Unmarshal(b, &g); err != nil {
			return nil, fmt.Errorf("golden %s: %w", f, err)
		}
		if jsonEqual(args, g.Request) {
			return &g, nil
		}
	}
	return nil, nil
}

// jsonEqual compares a request's args with the golden request. In the
// golden file "<any>" matches any string (the one-time key file's path and
// password) and "$env:NAME" the test's value of NAME (a generated
// certificate's thumbprint).
func jsonEqual(got, golden json.RawMessage) bool {
	decode := func(r json.RawMessage) any {
		if len(bytes.TrimSpace(r)) == 0 {
			return nil
		}
		var v any
		if err := json.Unmarshal(r, &v); err != nil {
			return "invalid:" + string(r)
		}
		return v
	}
	g := decode(golden)
	if m, ok := g.(map[string]any); ok {
		for k, v := range m {
			if s, ok := v.(string); ok && strings.HasPrefix(s, "$env:") {
				m[k] = os.Getenv(strings.TrimPrefix(s, "$env:"))
			}
		}
		if gm, ok := decode(got).(map[string]any); ok {
			for k, v := range m {
				if v == "<any>" {
					if s, ok := gm[k].(string); ok && s != "" {
						m[k] = s
					}
				}
			}
		}
	}
	a, _ := json.Marshal(decode(got))
	b, _ := json.Marshal(g)
	return string(a) == string(b)
}

// checkKeyFile describes the key file a request names: its permissions,
// whether its password opens it, and its encryption (PBES2 AES or 3DES).
func checkKeyFile(args json.RawMessage) string {
	var a struct {
		PfxPath     string `json:"pfxPath"`
		PfxPassword string `json:"pfxPassword"`
	}
	if json.Unmarshal(args, &a) != nil || a.PfxPath == "" {
		return ""
	}
	fi, err := os.Stat(a.PfxPath)
	if err != nil {
		return "missing " + err.Error()
	}
	data, _ := os.ReadFile(a.PfxPath)
	opens := "opens"
	if _, _, _, err := pkcs12.DecodeChain(data, a.PfxPassword); err != nil {
		opens = "does-not-open: " + err.Error()
	}
	enc := "unknown"
	switch {
	case bytes.Contains(data, []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d}):
		enc = string(PFXModernAES) // PBES2, 1.2.840.113549.1.5.13
	case bytes.Contains(data, []byte{0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x03}):
		enc = string(PFXLegacy3DES) // pbeWithSHAAnd3-KeyTripleDES-CBC
	}
	return fmt.Sprintf("%s mode=%o %s %s", a.PfxPath, fi.Mode().Perm(), opens, enc)
}

package app

import (
	"reflect"
	"strings"
	"testing"
)

func TestControllerAddrs(t *testing.T) {
	got, err := controllerAddrs(" a.contoso.com:7443, b.contoso.com:7443,,a.contoso.com:7443,[::1]:7443")
	if want := []string{"a.contoso.com:7443", "b.contoso.com:7443", "[::1]:7443"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("controllerAddrs = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", ",", "a.contoso.com", "a.contoso.com:7443,b"} {
		if _, err := controllerAddrs(bad); err == nil || !strings.Contains(err.Error(), "--controller") {
			t.Errorf("controllerAddrs(%q) = %v, want an error naming --controller", bad, err)
		}
	}
}

func FuzzControllerAddrs(f *testing.F) {
	f.Add("a.contoso.com:7443,b.contoso.com:7443")
	f.Fuzz(func(t *testing.T, s string) {
		addrs, err := controllerAddrs(s)
		if err != nil {
			return
		}
		if len(addrs) == 0 {
			t.Fatal("no error and no address")
		}
		for _, a := range addrs {
			if strings.Contains(a, ",") || strings.TrimSpace(a) != a {
				t.Fatalf("address %q from %q is not one trimmed address", a, s)
			}
		}
	})
}

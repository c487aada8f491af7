package powershell

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/s2strust/s2strust/internal/products"
	pb "github.com/s2strust/s2strust/proto/s2strust/v1"
)

// productVersion maps what a host reports (a module version, a build
// number, the names Programs and Features lists) onto the topology's
// product versions. Where builds of two versions share a major version
// (Skype for Business 2019 and Subscription Edition: module 7.0; Exchange
// 2019 and SE: 15.2), the product's name decides.
func productVersion(p pb.Product, raw string, productNames []string) (string, error) {
	parts := strings.Split(strings.TrimSpace(raw), ".")
	num := func(i int) int {
		if i >= len(parts) {
			return -1
		}
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return -1
		}
		return n
	}
	named := func(s string) bool {
		for _, n := range productNames {
			if strings.Contains(strings.ToLower(n), strings.ToLower(s)) {
				return true
			}
		}
		return false
	}
	major, minor := num(0), num(1)
	switch p {
	case pb.Product_PRODUCT_LYNC:
		// Module versions: Lync Server 2013 5.0, Skype for Business
		// Server 2015 6.0, 2019 and Subscription Edition 7.0.
		// https://learn.microsoft.com/skypeforbusiness/sfb-server-updates
		switch {
		case major == 4:
			return "", fmt.Errorf("Lync Server 2010 (module %s) does not support server-to-server OAuth", raw)
		case major == 5:
			return "2013", nil
		case major == 6:
			return "2015", nil
		case major == 7 && named("Subscription Edition"):
			return "SE", nil
		case major == 7:
			return "2019", nil
		}
	case pb.Product_PRODUCT_EXCHANGE:
		// Builds: 14.x is Exchange 2010; 15.0 2013, 15.1 2016, 15.2 2019
		// and Subscription Edition.
		// https://learn.microsoft.com/exchange/new-features/build-numbers-and-release-dates
		switch {
		case major == 14:
			return "", fmt.Errorf("Exchange Server 2010 (build %s) does not support server-to-server OAuth", raw)
		case major == 15 && minor == 0:
			return "2013", nil
		case major == 15 && minor == 1:
			return "2016", nil
		case major == 15 && minor == 2 && named("Subscription Edition"):
			return "SE", nil
		case major == 15 && minor == 2:
			return "2019", nil
		}
	case pb.Product_PRODUCT_SHAREPOINT:
		// Builds: 14.0 is 2010, 15.0 2013; 16.0.4xxx 2016, 16.0.10xxx 2019,
		// 16.0.14xxx and later Subscription Edition.
		// https://learn.microsoft.com/officeupdates/sharepoint-updates
		build := num(2)
		switch {
		case major == 14:
			return "", fmt.Errorf("SharePoint Server 2010 (build %s) does not support server-to-server OAuth", raw)
		case major == 15:
			return "2013", nil
		case major == 16 && build >= 14000:
			return "SE", nil
		case major == 16 && build >= 10000:
			return "2019", nil
		case major == 16 && build >= 0:
			return "2016", nil
		}
	}
	return "", fmt.Errorf("%s reports version %q, which s2strust does not know", products.DisplayName(p), raw)
}

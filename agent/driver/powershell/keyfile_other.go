//go:build !windows

package powershell

import "os"

// writeOwnerOnly creates p readable and writable by its owner alone,
// refusing to overwrite anything.
func writeOwnerOnly(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

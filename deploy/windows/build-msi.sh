#!/usr/bin/env bash
# build-msi.sh OUTDIR: builds s2s-agent.exe for Windows (amd64), signs it,
# packages it with agent.yaml and the s2s-agent service into
# OUTDIR/s2s-agent.msi with wixl (msitools), signs the MSI, and checks the
# result: both signatures verify against the signing certificate, and the
# MSI's ServiceInstall table lists the s2s-agent service.
#
# Signing: SIGN_CERT and SIGN_KEY (PEM files) name the organisation's code
# signing certificate and key. Without them (CI) a throwaway self-signed
# code-signing certificate is made in a temporary directory: the package
# is signed the same way, but Windows will not trust it.
set -euo pipefail

out="${1:?usage: build-msi.sh OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="${VERSION:-0.1.0}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wixl || ! need msiinfo; then
  # Debian ships wixl in its own package (older releases inside msitools).
  apt-get update -qq
  apt-get install -y -qq msitools >/dev/null
  need wixl || apt-get install -y -qq wixl >/dev/null
fi
for tool in wixl msiinfo osslsigncode openssl go; do
  need "$tool" || { echo "build-msi: $tool is required" >&2; exit 2; }
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "build-msi: building s2s-agent.exe"
(cd "$root" && GOOS=windows GOARCH=amd64 CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/s2s-agent.exe" ./agent)

cert="${SIGN_CERT:-}"
key="${SIGN_KEY:-}"
if [ -z "$cert" ] || [ -z "$key" ]; then
  echo "build-msi: no SIGN_CERT/SIGN_KEY: signing with a throwaway test certificate"
  cert="$work/test-sign.pem"
  key="$work/test-sign-key.pem"
  openssl req -x509 -newkey rsa:3072 -sha256 -days 30 -nodes -subj "/CN=s2strust test code signing" \
    -addext "keyUsage=critical,digitalSignature" -addext "extendedKeyUsage=codeSigning" \
    -keyout "$key" -out "$cert" 2>/dev/null
fi

sign() { # sign IN OUT: Authenticode, SHA-256, no timestamp server (no network in CI).
  local log="$work/osslsigncode.log"
  rm -f "$2"
  osslsigncode sign -certs "$cert" -key "$key" -h sha256 -n "s2strust agent" -in "$1" -out "$2" >"$log" 2>&1 ||
    { echo "build-msi: signing $1 failed:" >&2; cat "$log" >&2; exit 1; }
  osslsigncode verify -CAfile "$cert" -in "$2" >"$log" 2>&1 ||
    { echo "build-msi: the signature of $2 does not verify:" >&2; cat "$log" >&2; exit 1; }
}

mkdir -p "$work/signed"
sign "$work/s2s-agent.exe" "$work/signed/s2s-agent.exe"

echo "build-msi: packaging"
# wixl resolves Source paths relative to its working directory only.
cp "$here/agent.yaml" "$here/s2s-agent.wxs" "$work/"
(cd "$work" && wixl -a x64 -D Version="$version" -D Exe=signed/s2s-agent.exe -D Config=agent.yaml \
  -o s2s-agent.unsigned.msi s2s-agent.wxs)
sign "$work/s2s-agent.unsigned.msi" "$out/s2s-agent.msi"
cp "$work/signed/s2s-agent.exe" "$out/s2s-agent.exe"

# The package lists the service, and the custom action that sets its recovery.
services="$(msiinfo export "$out/s2s-agent.msi" ServiceInstall)"
echo "$services" | grep -q $'\ts2s-agent\t' || { echo "build-msi: the MSI's ServiceInstall table does not list s2s-agent:" >&2; echo "$services" >&2; exit 1; }
msiinfo export "$out/s2s-agent.msi" CustomAction | grep -q "service set-recovery" || { echo "build-msi: the MSI has no set-recovery custom action" >&2; exit 1; }
echo "build-msi: $out/s2s-agent.msi (signed; service s2s-agent)"

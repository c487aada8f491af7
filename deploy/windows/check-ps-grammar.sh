#!/usr/bin/env bash
# check-ps-grammar.sh [FILE...]: parses every embedded PowerShell script
# (default: agent/driver/powershell/scripts/*.ps1) with a real PowerShell
# grammar, tree-sitter-powershell, and fails on a syntax error (an ERROR or
# MISSING node). It installs what it needs from the npm registry into a
# temporary directory: the grammar's WebAssembly build and web-tree-sitter,
# so nothing is compiled. Needs node and npm.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# Pinned: the grammar's ABI (15) must be one web-tree-sitter loads.
grammar_version=0.26.4
runtime_version=0.25.10

if [ "$#" -eq 0 ]; then
  set -- "$root"/agent/driver/powershell/scripts/*.ps1
fi
for f in "$@"; do
  [ -f "$f" ] || { echo "check-ps-grammar: $f: no such file" >&2; exit 2; }
done

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "check-ps-grammar: $tool is required (apt-get install -y nodejs npm)" >&2; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  npm init -y >/dev/null
  npm install --no-audit --no-fund --silent "web-tree-sitter@$runtime_version" >/dev/null
  npm pack --silent "tree-sitter-powershell@$grammar_version" >/dev/null
  tar xzf "tree-sitter-powershell-$grammar_version.tgz" package/tree-sitter-powershell.wasm
)
cp "$here/check-ps-grammar.mjs" "$work/check.mjs"
# The check must be able to fail: a script with an unclosed block is refused.
printf 'function Broken {\n    if ($true) {\n        Write-Output 1\n' > "$work/broken.ps1"
if (cd "$work" && node check.mjs "$work/package/tree-sitter-powershell.wasm" "$work/broken.ps1") >/dev/null 2>&1; then
  echo "check-ps-grammar: the grammar accepted a script with an unclosed block; the check is broken" >&2
  exit 2
fi
# Absolute paths: the checker runs from the temporary directory, where
# node resolves web-tree-sitter.
abs=()
for f in "$@"; do abs+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"); done
(cd "$work" && node check.mjs "$work/package/tree-sitter-powershell.wasm" "${abs[@]}")

#!/usr/bin/env bash
# Puts DuckDB's prebuilt shared library where the `duckdb` crate links against it
# (target/libduckdb/v1.5.6, named by .cargo/config.toml), instead of compiling DuckDB's C++ from
# source (the crate's `bundled` feature: 49 minutes on two cores). No Debian package of
# libduckdb exists; DuckDB's own release ships it inside the npm package
# @duckdb/node-bindings-linux-x64, fetched here from the npm registry and checked against a
# pinned SHA-256. Idempotent: a library already in place is checked and kept.
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.5.6
package_version=1.5.6-r.1
sha256=1b9f82478539bb9a1d1df44bd103121a12ae52142c07158dc52b97d2ec1d69ff
url="https://registry.npmjs.org/@duckdb/node-bindings-linux-x64/-/node-bindings-linux-x64-${package_version}.tgz"
dir="${TICKWIRE_LIBDUCKDB_DIR:-target/libduckdb/v${version}}"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "fetch-libduckdb: only linux-x86_64 is provided here; set DUCKDB_LIB_DIR to a libduckdb ${version} of your own" >&2
     exit 1 ;;
esac

if [ -f "$dir/libduckdb.so" ] && [ "$(cat "$dir/.sha256" 2>/dev/null)" = "$sha256" ]; then
  exit 0
fi
mkdir -p "$dir"
archive=$(mktemp "${TMPDIR:-/tmp}/libduckdb.XXXXXX")
trap 'rm -f "$archive"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -sSfL --retry 3 -o "$archive" "$url"
else
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$archive"
fi
echo "$sha256  $archive" | sha256sum --check --quiet - || {
  echo "fetch-libduckdb: $url does not match the pinned SHA-256 $sha256" >&2
  exit 1
}
tar -xzf "$archive" -C "$dir" --strip-components=1 package/libduckdb.so package/LICENSE
echo "$sha256" >"$dir/.sha256"
echo "fetch-libduckdb: libduckdb ${version} in $dir"

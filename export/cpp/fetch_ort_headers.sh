#!/usr/bin/env bash
# fetch_ort_headers.sh DEST: ONNX Runtime's C/C++ headers into DEST/usr/include/onnxruntime.
#
# Debian bookworm has no onnxruntime; trixie's libonnxruntime-dev .deb holds the headers. It is
# downloaded with apt-get through a private sources list derived from this machine's own Debian
# sources (same mirror and keyring, suite "trixie") and unpacked with dpkg -x, without installing
# anything: the system's package lists stay bookworm's. The library itself is the pip wheel's.
# Exit status 3: the package could not be fetched (no network or no such package).
set -euo pipefail

dest=${1:?usage: fetch_ort_headers.sh DEST}
header=$dest/usr/include/onnxruntime/onnxruntime_cxx_api.h
[[ -f $header ]] && exit 0

apt_dir=$dest/apt
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
deb822=/etc/apt/sources.list.d/debian.sources
one_line=/etc/apt/sources.list
if [[ -f $deb822 ]]; then
    # the first stanza that names a mirror, with its suites replaced by trixie
    awk 'BEGIN { RS = "" } /(^|\n)URIs:/ { print; exit }' "$deb822" \
        | sed -E 's/^Suites:.*/Suites: trixie/' > "$apt_dir/parts/trixie.sources"
    [[ -s $apt_dir/parts/trixie.sources ]] || { echo "error: $deb822 has no stanza with URIs:" >&2; exit 3; }
elif [[ -f $one_line ]] && grep -qE '^deb ' "$one_line"; then
    grep -m1 -E '^deb ' "$one_line" | awk '{ $3 = "trixie"; print }' > "$apt_dir/parts/trixie.list"
else
    echo "error: neither $deb822 nor a 'deb' line in $one_line: cannot derive a Debian package source" >&2
    exit 3
fi

apt_opts=(-o "Dir::Etc::sourceparts=$apt_dir/parts" -o Dir::Etc::sourcelist=/dev/null -o APT::Sandbox::User=root
          -o "Dir::State::lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
fail() { echo "error: cannot fetch Debian trixie's libonnxruntime-dev ($1) through $apt_dir/parts" >&2; exit 3; }
apt-get "${apt_opts[@]}" -qq update || fail "apt-get update failed"
(cd "$apt_dir" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev) || fail "apt-get download failed"
deb=$(ls "$apt_dir"/libonnxruntime-dev_*.deb)
dpkg -x "$deb" "$dest"
[[ -f $header ]] || { echo "error: $deb holds no $header" >&2; exit 3; }
rm -rf "$apt_dir/lists" "$apt_dir/cache"
echo "ONNX Runtime headers from $(basename "$deb") in $dest/usr/include/onnxruntime" >&2

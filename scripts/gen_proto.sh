#!/usr/bin/env bash
# Regenerates hami/_proto/ (betterproto2 messages + grpclib stubs) from proto/.
#   scripts/gen_proto.sh          rewrite hami/_proto/ in place
#   scripts/gen_proto.sh --check  generate into a temp dir and diff against the committed tree;
#                                 exit 1 when hami/_proto/ is stale
# Output depends only on the .proto files and the pinned betterproto2-compiler/grpcio-tools
# (pyproject dev extras): files are passed in a fixed (C-locale sorted) order.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
if [ -d "$ROOT/.venv/bin" ]; then
    # protoc finds the betterproto2 plugin (protoc-gen-python_betterproto2) on PATH.
    export PATH="$ROOT/.venv/bin:$PATH"
fi
PY="${PYTHON:-python3}"
TARGET="hami/_proto"

generate() {
    local dest="$1"
    local files
    rm -rf "$dest"
    mkdir -p "$dest"
    files=$(cd proto && find . -name '*.proto' -type f | sed 's|^\./||' | LC_ALL=C sort)
    if [ -z "$files" ]; then
        echo "gen_proto: no .proto files under proto/" >&2
        return 1
    fi
    # shellcheck disable=SC2086  # word splitting of the file list is intended (no spaces in names)
    (cd proto && "$PY" -m grpc_tools.protoc -I . \
        --python_betterproto2_out="$dest" \
        --python_betterproto2_opt=client_generation=async,server_generation=async \
        $files) >"$tmp/protoc.log" 2>&1 || { cat "$tmp/protoc.log" >&2; return 1; }
    # The compiler writes an empty top-level __init__.py; keep the package docstring instead.
    printf '"""Generated protobuf code (scripts/gen_proto.sh). Do not edit."""\n' >"$dest/__init__.py"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "${1:-}" = "--check" ]; then
    generate "$tmp/_proto"
    if ! diff -r -x __pycache__ "$TARGET" "$tmp/_proto" >"$tmp/diff.txt"; then
        echo "gen_proto: $TARGET is stale; run scripts/gen_proto.sh and commit the result" >&2
        head -n 40 "$tmp/diff.txt" >&2
        exit 1
    fi
    echo "gen_proto: $TARGET is up to date"
    exit 0
elif [ -n "${1:-}" ]; then
    echo "usage: $0 [--check]" >&2
    exit 2
fi

generate "$tmp/_proto"
rm -rf "$TARGET"
cp -r "$tmp/_proto" "$TARGET"
echo "gen_proto: wrote $TARGET"

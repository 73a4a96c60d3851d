# Developer shortcuts. Everything here is also a plain cargo command.

default: test

# Build the release binary.
build:
    cargo build --release

# Run the whole test suite (what CI runs).
test:
    cargo test

# Lints as CI runs them.
lint:
    cargo clippy --all-targets -- -D warnings
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

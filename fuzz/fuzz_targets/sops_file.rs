#![no_main]
//! Body: `endsys_bootstrap::fuzz_targets::sops_file` (also run over the seeds by `cargo test`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| endsys_bootstrap::fuzz_targets::sops_file(data));

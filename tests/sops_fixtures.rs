//! Files written by the real sops 3.11 binary (committed with their throw-away key) decrypt
//! in process, and every file in the bad-input corpus fails with its specific error.

use std::path::{Path, PathBuf};

use endsys_bootstrap::sops::{decrypt_yaml, AgeIdentities, SopsError};
use endsys_bootstrap::Doctor;
use serde_yaml_ng::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sops")
}

fn key() -> AgeIdentities {
    AgeIdentities::from_file(&fixtures().join("key.txt")).expect("fixture key loads")
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect()
}

#[test]
fn sops_written_files_decrypt_to_the_plaintext() {
    for name in ["secret", "talsecret", "multi"] {
        let enc_path = fixtures().join(format!("good/{name}.sops.yaml"));
        let enc = std::fs::read_to_string(&enc_path).expect("read");
        let plain = std::fs::read_to_string(fixtures().join(format!("good/{name}.plain.yaml")))
            .expect("read");
        let out = decrypt_yaml(&enc, &key(), &enc_path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(docs(&out), docs(&plain), "{name}");
        assert!(!out.contains("sops:"), "{name}: metadata must be removed");
    }
}

#[test]
fn decrypted_output_keeps_key_order() {
    let p = fixtures().join("good/secret.sops.yaml");
    let out = decrypt_yaml(&std::fs::read_to_string(&p).expect("read"), &key(), &p).expect("ok");
    let keys: Vec<String> = docs(&out)[0]
        .as_mapping()
        .expect("map")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    assert_eq!(keys, ["apiVersion", "kind", "metadata", "stringData"]);
}

/// Which error each corpus file must produce.
fn expected(name: &str, err: &SopsError) -> bool {
    match name {
        "truncated-enc.sops.yaml" | "bad-base64.sops.yaml" | "short-iv.sops.yaml" => {
            matches!(err, SopsError::MalformedEnc { .. })
        }
        "wrong-tag.sops.yaml" | "moved-value.sops.yaml" => {
            matches!(err, SopsError::ValueAuth { .. })
        }
        "edited-value.sops.yaml" | "removed-item.sops.yaml" | "mac-tampered.sops.yaml" => {
            matches!(err, SopsError::MacMismatch { .. })
        }
        "missing-sops.yaml" | "empty.sops.yaml" => matches!(err, SopsError::NotSopsFile { .. }),
        "wrong-recipient.sops.yaml" => matches!(err, SopsError::NotRecipient { .. }),
        "bad-armor.sops.yaml" => matches!(err, SopsError::MalformedDataKey { .. }),
        "unsupported-type.sops.yaml" => matches!(err, SopsError::UnsupportedType { .. }),
        "missing-mac.sops.yaml" => matches!(err, SopsError::InvalidMetadata { .. }),
        "invalid-yaml.sops.yaml" => matches!(err, SopsError::Yaml { .. }),
        "key-groups.sops.yaml" => matches!(err, SopsError::Unsupported { .. }),
        "pq-key.txt" => matches!(err, SopsError::PostQuantumKey { .. }),
        _ => false,
    }
}

#[test]
fn every_bad_input_gives_its_specific_error_without_panicking() {
    let dir = fixtures().join("bad");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("bad dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let result = std::panic::catch_unwind(|| {
            if name.ends_with(".txt") {
                AgeIdentities::from_file(&path).map(|_| String::new())
            } else {
                let text = std::fs::read_to_string(&path).expect("read");
                decrypt_yaml(&text, &key(), &path)
            }
        });
        let err = match result {
            Err(_) => panic!("{name}: panicked"),
            Ok(Ok(_)) => panic!("{name}: unexpectedly succeeded"),
            Ok(Err(e)) => e,
        };
        assert!(expected(&name, &err), "{name}: wrong error {err:?}");
        let msg = err.to_string();
        // Only the prefix may be named, never key material.
        assert!(
            !msg.contains("AGE-SECRET-KEY-1") && !msg.contains("QYQSZQGP"),
            "{name}: message leaks a key: {msg}"
        );
        if !name.ends_with(".txt") {
            assert!(
                msg.contains(&name),
                "{name}: message must name the file: {msg}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 10, "corpus has only {seen} files");
}

#[test]
fn not_recipient_lists_both_sides() {
    let p = fixtures().join("bad/wrong-recipient.sops.yaml");
    let err = decrypt_yaml(&std::fs::read_to_string(&p).expect("read"), &key(), &p)
        .expect_err("must fail");
    let ours = key().recipient_strings();
    let msg = err.to_string();
    assert!(msg.contains(&ours[0]), "{msg}");
    let other = std::fs::read_to_string(fixtures().join("other-key.txt")).expect("read");
    let other_pub = other
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line");
    assert!(msg.contains(other_pub), "{msg}");
}

#[test]
fn pq_message_says_what_to_do() {
    let err = AgeIdentities::from_file(&fixtures().join("bad/pq-key.txt")).expect_err("pq");
    let msg = err.explain();
    assert!(msg.contains("not supported by this tool"), "{msg}");
    assert!(msg.contains("classic X25519"), "{msg}");
}

//! Interop with the real `sops` and `age-keygen` binaries, both directions.
//! Tools come from `<repo>/.tools/bin` (see scripts/fetch-tools.sh), then PATH. A missing
//! tool fails the test when `CI` is set, and is a loud skip otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use endsys_bootstrap::sops::{
    decrypt_yaml, encrypt_yaml, AgeIdentities, EncryptionRules, SopsConfig,
};
use serde_yaml_ng::Value;

fn find_tool(name: &str) -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    if local.is_file() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Resolve the tools or decide to skip (None); panics under CI.
fn tools(names: &[&str]) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for n in names {
        match find_tool(n) {
            Some(p) => out.push(p),
            None => {
                if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
                    panic!("required tool `{n}` not found in .tools/bin or PATH; run scripts/fetch-tools.sh");
                }
                eprintln!(
                    "SKIPPED: `{n}` not found in .tools/bin or PATH (run scripts/fetch-tools.sh)"
                );
                return None;
            }
        }
    }
    Some(out)
}

struct Env {
    dir: tempfile::TempDir,
    sops: PathBuf,
    key_file: PathBuf,
    public: String,
}

impl Env {
    fn new() -> Option<Self> {
        let t = tools(&["sops", "age-keygen"])?;
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("keys.txt");
        let st = Command::new(&t[1])
            .arg("-o")
            .arg(&key_file)
            .output()
            .expect("run age-keygen");
        assert!(st.status.success(), "age-keygen failed: {st:?}");
        let text = std::fs::read_to_string(&key_file).expect("key file");
        let public = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("public key comment")
            .to_string();
        Some(Env {
            dir,
            sops: t[0].clone(),
            key_file,
            public,
        })
    }

    fn sops(&self, args: &[&str]) -> String {
        let out = Command::new(&self.sops)
            .args(args)
            .current_dir(self.dir.path())
            .env("SOPS_AGE_KEY_FILE", &self.key_file)
            .env_remove("SOPS_AGE_KEY")
            .env_remove("SOPS_AGE_RECIPIENTS")
            .output()
            .expect("run sops");
        assert!(
            out.status.success(),
            "sops {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    fn ids(&self) -> AgeIdentities {
        AgeIdentities::from_file(&self.key_file).expect("key")
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

const SECRET: &str = "apiVersion: v1
kind: Secret
metadata:
  name: cluster-secrets
  namespace: flux-system
type: Opaque
stringData:
  SECRET_DOMAIN: example.org
  SECRET_PORT: \"8443\"
  EMPTY: \"\"
---
apiVersion: v1
kind: Secret
metadata:
  name: second
data:
  token: dG9rZW4=
";

const TALSECRET: &str = "cluster:
  id: Y2x1c3Rlci1pZA==
  secret: c2VjcmV0
secrets:
  bootstraptoken: abcdef.0123456789abcdef
trustdinfo:
  token: wxyz.token
certs:
  etcd:
    crt: LS0tLS1CRUdJTiBDRVJU
    key: LS0tLS1CRUdJTiBLRVk=
  os:
    crt: b3MtY3J0
settings:
  port: 6443
  ratio: 0.75
  enabled: false
  nothing: null
  names: [one, two, three]
  nested:
    - name: a
      value: 1
    - name: b
      value: 2.5
  comment_unencrypted: kept in clear
";

#[test]
fn sops_encrypts_and_we_decrypt() {
    let Some(env) = Env::new() else { return };
    // Kubernetes Secret, endsys style: only data/stringData encrypted, MAC over those.
    let p = env.write("secret.yaml", SECRET);
    let enc = env.sops(&[
        "--encrypt",
        "--age",
        &env.public,
        "--encrypted-regex",
        "^(data|stringData)$",
        "--mac-only-encrypted",
        p.to_str().expect("path"),
    ]);
    assert!(
        enc.contains("name: cluster-secrets"),
        "metadata stays clear"
    );
    let out = decrypt_yaml(&enc, &env.ids(), &p).expect("decrypt sops secret");
    assert_eq!(docs(&out), docs(SECRET));

    // talsecret-like nested file: default unencrypted_suffix, full MAC (covers clear leaves).
    let p = env.write("talsecret.yaml", TALSECRET);
    let enc = env.sops(&["--encrypt", "--age", &env.public, p.to_str().expect("path")]);
    assert!(enc.contains("comment_unencrypted: kept in clear"));
    let out = decrypt_yaml(&enc, &env.ids(), &p).expect("decrypt sops talsecret");
    assert_eq!(docs(&out), docs(TALSECRET));
}

#[test]
fn we_encrypt_and_sops_decrypts() {
    let Some(env) = Env::new() else { return };
    let rcpt = env.ids().recipients();
    for (name, plain, rules) in [
        ("secret.sops.yaml", SECRET, EncryptionRules::kubernetes()),
        ("talsecret.sops.yaml", TALSECRET, EncryptionRules::default()),
    ] {
        let enc = encrypt_yaml(plain, &rcpt, &rules).expect("encrypt");
        assert!(enc.contains("version: 3.11.0"), "{enc}");
        let p = env.write(name, &enc);
        let out = env.sops(&["--decrypt", p.to_str().expect("path")]);
        assert_eq!(docs(&out), docs(plain), "{name}");
        // And our own decryptor agrees.
        let ours = decrypt_yaml(&enc, &env.ids(), &p).expect("self decrypt");
        assert_eq!(docs(&ours), docs(plain), "{name}");
    }
}

#[test]
fn encrypted_regex_rule_from_sops_yaml_is_honoured_both_ways() {
    let Some(env) = Env::new() else { return };
    let config = format!(
        "creation_rules:\n  - path_regex: kubernetes/.*\\.sops\\.ya?ml$\n    encrypted_regex: ^(data|stringData)$\n    mac_only_encrypted: true\n    age: >-\n      {}\n  - path_regex: .*\n    age: {}\n",
        env.public, env.public
    );
    let cfg_path = env.write(".sops.yaml", &config);

    // sops picks the rule from .sops.yaml in its working directory.
    let p = env.write("kubernetes/apps/secret.sops.yaml", SECRET);
    let enc = env.sops(&["--encrypt", "kubernetes/apps/secret.sops.yaml"]);
    let first = &docs(&enc)[0];
    assert_eq!(first["metadata"]["name"], Value::from("cluster-secrets"));
    assert!(first["stringData"]["SECRET_DOMAIN"]
        .as_str()
        .is_some_and(|s| s.starts_with("ENC[")));
    assert_eq!(
        first["sops"]["encrypted_regex"],
        Value::from("^(data|stringData)$")
    );
    let out = decrypt_yaml(&enc, &env.ids(), &p).expect("decrypt");
    assert_eq!(docs(&out), docs(SECRET));

    // Our side: same rule selection, output readable by sops.
    let cfg = SopsConfig::load(&cfg_path).expect("config");
    let rule = cfg.rule_for(&p).expect("rule");
    let ours = encrypt_yaml(SECRET, &rule.recipients, &rule.rules).expect("encrypt");
    let first = &docs(&ours)[0];
    assert_eq!(first["metadata"]["name"], Value::from("cluster-secrets"));
    assert_eq!(first["type"], Value::from("Opaque"));
    assert!(first["stringData"]["SECRET_PORT"]
        .as_str()
        .is_some_and(|s| s.starts_with("ENC[")));
    assert_eq!(first["sops"]["mac_only_encrypted"], Value::Bool(true));
    env.write("kubernetes/apps/ours.sops.yaml", &ours);
    let back = env.sops(&["--decrypt", "kubernetes/apps/ours.sops.yaml"]);
    assert_eq!(docs(&back), docs(SECRET));

    // A file outside kubernetes/ gets the catch-all rule: everything encrypted.
    let other = cfg
        .rule_for(&env.dir.path().join("talos/talsecret.sops.yaml"))
        .expect("rule");
    assert!(other
        .rules
        .should_encrypt(&["metadata".into(), "name".into()]));
}

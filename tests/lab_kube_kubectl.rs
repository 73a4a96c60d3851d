//! Interop: the real `kubectl` 1.35 against the lab's simulated Kubernetes API,
//! with the kubeconfig streamed by the simulated Talos nodes.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::path::{Path, PathBuf};

/// `.tools/bin/kubectl` (scripts/fetch-tools.sh), else PATH; only 1.35 or newer.
async fn kubectl() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    let mut candidates = vec![local];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join("kubectl")));
    }
    for c in candidates.into_iter().filter(|c| c.is_file()) {
        let Ok(out) = tokio::process::Command::new(&c)
            .args(["version", "--client", "-o", "json"])
            .output()
            .await
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let minor: u32 = v["clientVersion"]["minor"]
            .as_str()
            .unwrap_or("0")
            .trim_end_matches('+')
            .parse()
            .unwrap_or(0);
        if v["clientVersion"]["major"] == "1" && minor >= 35 {
            return Some(c);
        }
    }
    None
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    /// Runs kubectl (async: the API server lives on this same runtime).
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }
}

const CILIUM: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: cilium
  namespace: kube-system
  labels:
    k8s-app: cilium
spec:
  selector:
    matchLabels:
      k8s-app: cilium
  template:
    metadata:
      labels:
        k8s-app: cilium
    spec:
      hostNetwork: true
      containers:
        - name: cilium-agent
          image: quay.io/cilium/cilium:v1.19.5
---
apiVersion: v1
kind: Namespace
metadata:
  name: flux-system
";

#[tokio::test]
async fn kubectl_gets_applies_and_waits() {
    let Some(bin) = kubectl().await else {
        if std::env::var_os("CI").is_some() {
            panic!("kubectl >= 1.35 is required in CI (run scripts/fetch-tools.sh)");
        }
        eprintln!("SKIPPED: kubectl >= 1.35 not found (run scripts/fetch-tools.sh); the kubectl interop test did not run");
        return;
    };
    let kc = kubelab::up(157, "k157").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, &kc.kubeconfig).unwrap();
    let manifest = dir.path().join("cilium.yaml");
    std::fs::write(&manifest, CILIUM).unwrap();
    let k = Kubectl {
        bin,
        kubeconfig,
        cache: dir.path().join("cache"),
    };

    // Nodes register NotReady; kubectl prints them through server-side tables.
    let mut nodes = String::new();
    for _ in 0..2 {
        nodes = k.ok(&["get", "nodes"]).await;
        if nodes.matches("NotReady").count() == 3 {
            break;
        }
    }
    for n in ["node1", "node2", "node3"] {
        assert!(nodes.contains(n), "{nodes}");
    }

    let out = k
        .ok(&["apply", "--server-side", "-f", manifest.to_str().unwrap()])
        .await;
    assert!(
        out.contains("daemonset.apps/cilium serverside-applied"),
        "{out}"
    );
    assert!(
        out.contains("namespace/flux-system serverside-applied"),
        "{out}"
    );
    // Re-applying is accepted and changes nothing.
    k.ok(&["apply", "--server-side", "-f", manifest.to_str().unwrap()])
        .await;

    let out = k
        .ok(&[
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=20s",
        ])
        .await;
    assert_eq!(out.matches("condition met").count(), 3, "{out}");
    let nodes = k.ok(&["get", "nodes", "-o", "wide"]).await;
    assert!(!nodes.contains("NotReady"), "{nodes}");
    let out = k
        .ok(&[
            "get",
            "daemonset",
            "-n",
            "kube-system",
            "cilium",
            "-o",
            "jsonpath={.status.numberReady}",
        ])
        .await;
    assert_eq!(out.trim(), "3");
    let out = k.ok(&["get", "ns"]).await;
    assert!(out.contains("flux-system"), "{out}");
    // Discovery as kubectl sees it, and errors as it prints them.
    let out = k.ok(&["api-resources"]).await;
    assert!(
        out.contains("daemonsets") && out.contains("customresourcedefinitions"),
        "{out}"
    );
    let (ok, out) = k
        .run(&["get", "configmap", "-n", "default", "missing"])
        .await;
    assert!(
        !ok && out.contains("NotFound") && out.contains("\"missing\" not found"),
        "{out}"
    );
    let out = k.ok(&["delete", "namespace", "flux-system"]).await;
    assert!(out.contains("deleted"), "{out}");
}

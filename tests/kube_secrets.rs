//! SOPS secrets seeded into flux-system from the real sops-made fixtures:
//! decrypted in process, applied server-side (a re-run is unchanged); a missing
//! file is `None` (the step warns); a file that does not decrypt names itself.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::path::Path;

use endsys_bootstrap::engine::FlowError;
use endsys_bootstrap::flows::up::kube::secret_objects;
use endsys_bootstrap::kube::{client_from_kubeconfig, Applier, Change};
use endsys_bootstrap::sops::AgeIdentities;

fn key() -> AgeIdentities {
    AgeIdentities::from_file(Path::new("tests/fixtures/sops/key.txt")).expect("fixture key")
}

#[tokio::test]
async fn sops_fixtures_seed_flux_system_and_bad_files_are_named() {
    let repo = Path::new("tests/fixtures/sops");
    let ids = key();
    let objs = secret_objects(repo, Path::new("good/secret.sops.yaml"), Some(&ids))
        .expect("decrypts")
        .expect("present");
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].metadata.namespace.as_deref(), Some("flux-system"));

    let kc = kubelab::up(176, "k176").await;
    let client = client_from_kubeconfig(kc.kubeconfig.as_bytes())
        .await
        .expect("client");
    let mut applier = Applier::new(client).await.expect("discovery");
    let ns = endsys_bootstrap::kube::parse_manifests(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: flux-system}\n",
        "ns",
    )
    .expect("parses");
    applier.apply_all(ns, "default").await.expect("namespace");
    let first = applier
        .apply_all(objs.clone(), "flux-system")
        .await
        .expect("applies");
    assert_eq!(first[0].change, Change::Created);
    let again = applier
        .apply_all(objs, "flux-system")
        .await
        .expect("applies");
    assert_eq!(again[0].change, Change::Unchanged);
    let stored = kc
        .lab
        .kube()
        .get("Secret", Some("flux-system"), "cluster-secrets")
        .expect("stored");
    let domain = stored
        .pointer("/stringData/SECRET_DOMAIN")
        .or_else(|| stored.pointer("/data/SECRET_DOMAIN"))
        .and_then(|v| v.as_str())
        .expect("decrypted value stored");
    assert!(
        domain == "example.org" || domain == "ZXhhbXBsZS5vcmc=",
        "{domain}"
    );

    assert!(
        secret_objects(repo, Path::new("good/absent.sops.yaml"), Some(&ids))
            .expect("missing is not an error")
            .is_none()
    );
    for bad in [
        "bad/wrong-recipient.sops.yaml",
        "bad/mac-tampered.sops.yaml",
    ] {
        match secret_objects(repo, Path::new(bad), Some(&ids)) {
            Err(e @ FlowError::Sops { .. }) => {
                let detail = e.to_string();
                assert!(detail.starts_with("secrets: "), "{detail}");
                assert!(detail.contains(bad), "{detail}");
                assert!(detail.contains("does not decrypt"), "{detail}");
                // The SOPS error stays the source, not a string.
                assert!(std::error::Error::source(&e).is_some(), "{detail}");
            }
            other => panic!("{bad}: expected an error, got {other:?}"),
        }
    }
}

//! The lab's simulated Kubernetes API, driven by kube-rs with the kubeconfig the
//! simulated Talos nodes stream. Each test owns a /24 of 127.0.0.0/8.

mod common;
#[path = "common/kubelab.rs"]
mod kubelab;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::discovery::Discovery;
use kube::runtime::wait::{await_condition, conditions};
use kubelab::{client, up, WAIT};
use serde_json::json;

fn node_ready(n: &Node) -> Option<bool> {
    let c = n
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some(c.status == "True")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

fn api_status(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cilium() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "cilium", "namespace": "kube-system", "labels": {"k8s-app": "cilium"}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "cilium"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "cilium"}},
                "spec": {"hostNetwork": true, "containers": [{"name": "cilium-agent", "image": "quay.io/cilium/cilium:v1.19.5"}]},
            },
        },
    })
}

#[tokio::test]
async fn discovery_nodes_ready_after_cni_and_server_side_apply() {
    let kc = up(151, "k151").await;
    let client = client(&kc.kubeconfig).await;

    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.minor, "35");
    let d = Discovery::new(client.clone()).run().await.unwrap();
    for (g, v, k) in [
        ("", "v1", "Node"),
        ("", "v1", "ConfigMap"),
        ("apps", "v1", "Deployment"),
        ("apps", "v1", "DaemonSet"),
    ] {
        let (ar, _) = d
            .resolve_gvk(&GroupVersionKind::gvk(g, v, k))
            .unwrap_or_else(|| panic!("{k} not discovered"));
        assert_eq!(ar.kind, k);
    }
    let agg = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert!(agg
        .resolve_gvk(&GroupVersionKind::gvk("batch", "v1", "Job"))
        .is_some());

    // Every node registers NotReady: no CNI yet.
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["node1", "node2", "node3"] {
        within(
            "node registered",
            await_condition(nodes.clone(), name, |n: Option<&Node>| {
                n.and_then(node_ready) == Some(false)
            }),
        )
        .await
        .unwrap();
    }
    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    for n in &list.items {
        let labels = n.metadata.labels.as_ref().unwrap();
        assert!(labels.contains_key("node-role.kubernetes.io/control-plane"));
        let ready = n
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
        assert!(ready
            .message
            .as_deref()
            .unwrap()
            .contains("cni plugin not initialized"));
        let addrs = n.status.as_ref().unwrap().addresses.as_ref().unwrap();
        assert!(addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && kc.ips.contains(&a.address)));
    }

    // Server-side apply of the CNI; applying it again changes nothing (the
    // controllers may have written status in between, which does not bump generation).
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let pp = PatchParams::apply("endsys-bootstrap");
    let first = ds
        .patch("cilium", &pp, &Patch::Apply(cilium()))
        .await
        .unwrap();
    let again = ds
        .patch("cilium", &pp, &Patch::Apply(cilium()))
        .await
        .unwrap();
    assert_eq!(first.metadata.generation, Some(1));
    assert_eq!(again.metadata.generation, Some(1));
    let mf = again.metadata.managed_fields.unwrap();
    assert!(mf
        .iter()
        .any(|m| m.manager.as_deref() == Some("endsys-bootstrap")
            && m.operation.as_deref() == Some("Apply")));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": v}});
    let a = cms
        .patch(
            "settings",
            &PatchParams::apply("alpha"),
            &Patch::Apply(cm("a")),
        )
        .await
        .unwrap();
    let b = cms
        .patch(
            "settings",
            &PatchParams::apply("alpha"),
            &Patch::Apply(cm("a")),
        )
        .await
        .unwrap();
    assert_eq!(
        a.metadata.resource_version, b.metadata.resource_version,
        "SSA is idempotent"
    );

    for name in ["node1", "node2", "node3"] {
        within(
            "node ready",
            await_condition(nodes.clone(), name, |n: Option<&Node>| {
                n.and_then(node_ready) == Some(true)
            }),
        )
        .await
        .unwrap();
    }
    let rolled = within(
        "cni rolled out",
        await_condition(ds.clone(), "cilium", |d: Option<&DaemonSet>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.number_ready == 3 && s.desired_number_scheduled == 3)
        }),
    )
    .await
    .unwrap();
    assert!(rolled.is_some());

    // A second manager changing a field the first owns conflicts unless forced.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": v}});
    cms.patch(
        "settings",
        &PatchParams::apply("alpha"),
        &Patch::Apply(cm("a")),
    )
    .await
    .unwrap();
    let e = api_status(
        cms.patch(
            "settings",
            &PatchParams::apply("beta"),
            &Patch::Apply(cm("b")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(e.reason, "Conflict");
    assert!(
        e.message.contains("conflict with \"alpha\"") && e.message.contains(".data.mode"),
        "{}",
        e.message
    );
    let forced = cms
        .patch(
            "settings",
            &PatchParams::apply("beta").force(),
            &Patch::Apply(cm("b")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["mode"], "b");
    // Now alpha is the one that conflicts.
    let e = api_status(
        cms.patch(
            "settings",
            &PatchParams::apply("alpha"),
            &Patch::Apply(cm("a")),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 409);

    // Plain CRUD and its errors.
    let e = api_status(cms.get("missing").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    let mut c: ConfigMap = serde_json::from_value(cm("x")).unwrap();
    c.metadata.name = Some("created".into());
    cms.create(&PostParams::default(), &c).await.unwrap();
    let e = api_status(cms.create(&PostParams::default(), &c).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    let mut stale = cms.get("created").await.unwrap();
    cms.patch(
        "created",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"mode": "y"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("mode".to_string(), "z".to_string())].into());
    let e = api_status(
        cms.replace("created", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/mode", "value": "j"}]))
            .unwrap();
    let p = cms
        .patch(
            "created",
            &PatchParams::default(),
            &Patch::Json::<()>(json_patch),
        )
        .await
        .unwrap();
    assert_eq!(p.data.unwrap()["mode"], "j");
    let labelled = cms
        .list(&ListParams::default().fields("metadata.name=created"))
        .await
        .unwrap();
    assert_eq!(labelled.items.len(), 1);
    cms.delete("created", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cms.get_opt("created").await.unwrap().is_none());
    // Writes into a namespace that does not exist are refused.
    let nowhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let e = api_status(
        nowhere
            .patch("settings", &PatchParams::apply("m"), &Patch::Apply(cm("a")))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    assert!(kc.lab.kube().requests_served() > 10);
}

#[tokio::test]
async fn crds_become_established_and_their_kind_is_served() {
    let kc = up(152, "k152").await;
    let client = client(&kc.kubeconfig).await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}}],
        },
    });
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "widgets.example.com",
        &PatchParams::apply("endsys-bootstrap"),
        &Patch::Apply(crd),
    )
    .await
    .unwrap();
    within(
        "crd established",
        await_condition(
            crds.clone(),
            "widgets.example.com",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap();

    let d = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("Widget discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}, "status": {"ignored": true}});
    let created = widgets
        .patch(
            "w1",
            &PatchParams::apply("endsys-bootstrap"),
            &Patch::Apply(w),
        )
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["size"], 3);
    assert!(
        created.data.get("status").is_none(),
        "status is only written through /status"
    );
    assert_eq!(created.metadata.generation, Some(1));

    // Status subresource: only .status changes, generation stays.
    let st = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(st.data["status"]["ready"], true);
    assert_eq!(st.data["spec"]["size"], 3);
    assert_eq!(st.metadata.generation, Some(1));
    // A spec change bumps generation and keeps status.
    let sp = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 4}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(sp.metadata.generation, Some(2));
    assert_eq!(sp.data["status"]["ready"], true);
    let list = widgets.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(widgets.get_opt("w1").await.unwrap().is_none());
    let _ = ApiResource::erase::<Namespace>(&());
}

#[tokio::test]
async fn watches_bookmarks_and_expired_resource_versions() {
    let kc = up(153, "k153").await;
    kc.lab
        .kube()
        .set_bookmark_interval(Duration::from_millis(100));
    let client = client(&kc.kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let start = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let wp = WatchParams::default().timeout(5).labels("app=w");
    let stream = cms.watch(&wp, &start).await.unwrap();
    let mut stream = stream.boxed();
    let cm = |n: &str, v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "labels": {"app": "w"}}, "data": {"v": v}});
    cms.patch(
        "one",
        &PatchParams::apply("t"),
        &Patch::Apply(cm("one", "1")),
    )
    .await
    .unwrap();
    cms.patch(
        "one",
        &PatchParams::apply("t"),
        &Patch::Apply(cm("one", "2")),
    )
    .await
    .unwrap();
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    let mut bookmark = None;
    within("watch events", async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            match ev {
                WatchEvent::Added(o) => seen.push(("ADDED", o.metadata.name.unwrap())),
                WatchEvent::Modified(o) => seen.push(("MODIFIED", o.metadata.name.unwrap())),
                WatchEvent::Deleted(o) => seen.push(("DELETED", o.metadata.name.unwrap())),
                WatchEvent::Bookmark(b) => {
                    if seen.len() == 3 {
                        bookmark = Some(b.metadata.resource_version);
                        break;
                    }
                }
                WatchEvent::Error(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        seen,
        vec![
            ("ADDED", "one".to_string()),
            ("MODIFIED", "one".into()),
            ("DELETED", "one".into())
        ]
    );
    let bm: i64 = bookmark.unwrap().parse().unwrap();
    assert!(bm > start.parse::<i64>().unwrap());

    // After a compaction an old resourceVersion is gone: 410 Expired.
    kc.lab.kube().compact();
    let mut old = cms
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    match within("410", old.try_next()).await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    // The kube-rs watcher relists on 410 and carries on.
    let w = kube::runtime::watcher(
        cms.clone(),
        kube::runtime::watcher::Config::default().labels("app=w"),
    );
    let mut w = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(w));
    cms.patch(
        "two",
        &PatchParams::apply("t"),
        &Patch::Apply(cm("two", "1")),
    )
    .await
    .unwrap();
    let got = within("watcher", w.try_next()).await.unwrap().unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("two"));
}

#[tokio::test]
async fn client_certificates_are_checked() {
    let kc = up(154, "k154").await;
    // A kubeconfig whose client certificate comes from another CA fails the handshake.
    let other = common::TestCluster::new("other");
    let leaf = other
        .0
        .k8s_ca
        .issue(&endsys_bootstrap::pki::LeafSpec {
            common_name: "admin".into(),
            organizations: vec!["system:masters".into()],
            ip_sans: vec![],
            dns_sans: vec![],
            usage: endsys_bootstrap::pki::Usage::Client,
            validity: Duration::from_secs(3600),
        })
        .unwrap();
    let swap = |crt: &str, key: &str| {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&kc.kubeconfig).unwrap();
        let user = &mut y["users"][0]["user"];
        user["client-certificate-data"] = b64(crt).into();
        user["client-key-data"] = b64(key).into();
        serde_yaml_ng::to_string(&y).unwrap()
    };
    let foreign = client(&swap(&leaf.cert_pem, &leaf.key_pem().unwrap())).await;
    let e = Api::<Node>::all(foreign)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        !matches!(e, kube::Error::Api(_)),
        "rejected in the handshake: {e:?}"
    );

    // A certificate from the cluster CA without system:masters is authenticated but forbidden.
    let dev = kc
        .cluster
        .0
        .k8s_ca
        .issue(&endsys_bootstrap::pki::LeafSpec {
            common_name: "dev".into(),
            organizations: vec!["developers".into()],
            ip_sans: vec![],
            dns_sans: vec![],
            usage: endsys_bootstrap::pki::Usage::Client,
            validity: Duration::from_secs(3600),
        })
        .unwrap();
    let dev = client(&swap(&dev.cert_pem, &dev.key_pem().unwrap())).await;
    let e = api_status(
        Api::<Node>::all(dev.clone())
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert!(
        e.message
            .contains("User \"dev\" cannot list resource \"nodes\""),
        "{}",
        e.message
    );
    // Discovery is open to any authenticated user.
    dev.apiserver_version().await.unwrap();
}

#[tokio::test]
async fn workloads_get_status_and_faults_show() {
    let kc = up(155, "k155").await;
    let client = client(&kc.kubeconfig).await;
    let pp = PatchParams::apply("endsys-bootstrap");
    Api::<DaemonSet>::namespaced(client.clone(), "kube-system")
        .patch("cilium", &pp, &Patch::Apply(cilium()))
        .await
        .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep = |name: &str, image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}},
        })
    };
    deps.patch("good", &pp, &Patch::Apply(dep("good", "nginx:1")))
        .await
        .unwrap();
    deps.patch(
        "stuck",
        &pp,
        &Patch::Apply(dep("stuck", "registry.example/never-pull:1")),
    )
    .await
    .unwrap();
    within(
        "deployment completes",
        await_condition(deps.clone(), "good", conditions::is_deployment_completed()),
    )
    .await
    .unwrap();
    let stuck = within(
        "stuck deployment reports the pull",
        await_condition(deps.clone(), "stuck", |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()?.conditions.clone())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "Available"
                            && c.message
                                .as_deref()
                                .unwrap_or("")
                                .contains("ImagePullBackOff")
                    })
                })
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stuck.status.unwrap().available_replicas, None);

    kc.lab.kube().inject_crash("migrate");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |name: &str| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": format!("tools/{name}:1")}]}}}})
    };
    jobs.patch("seed", &pp, &Patch::Apply(job("seed")))
        .await
        .unwrap();
    jobs.patch("migrate", &pp, &Patch::Apply(job("migrate")))
        .await
        .unwrap();
    within(
        "job completes",
        await_condition(jobs.clone(), "seed", conditions::is_job_completed()),
    )
    .await
    .unwrap();
    let failed = within(
        "job fails",
        await_condition(jobs.clone(), "migrate", |j: Option<&Job>| {
            j.and_then(|j| j.status.as_ref()?.conditions.clone())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(failed.status.unwrap().failed, Some(2));
    assert!(kc
        .lab
        .kube()
        .get("Deployment", Some("default"), "good")
        .is_some());
}

#[tokio::test]
async fn objects_survive_an_etcd_snapshot_and_recovery() {
    use endsys_bootstrap::talos::client::ResetOptions;
    use endsys_lab::NodeState;
    let kc = up(156, "k156").await;
    let client = client(&kc.kubeconfig).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep-me"}, "data": {"k": "v"}});
    cms.patch("keep-me", &PatchParams::apply("t"), &Patch::Apply(cm))
        .await
        .unwrap();
    assert!(kc
        .lab
        .etcd()
        .get("/registry/core/configmaps/default/keep-me")
        .unwrap()
        .is_some());

    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("etcd.snapshot");
    kc.admin.etcd_snapshot(&snap).await.unwrap();
    let creds = kc.cluster.credentials(&["os:admin"]);
    for ip in &kc.ips {
        common::mtls(ip, creds.clone())
            .reset(&ResetOptions {
                graceful: false,
                reboot: true,
                wipe_labels: vec!["STATE".into(), "EPHEMERAL".into()],
            })
            .await
            .unwrap();
    }
    for node in kc.lab.nodes() {
        node.watch_state()
            .wait_for(|s| *s == NodeState::Maintenance)
            .await
            .unwrap();
    }
    kubelab::apply_all(&kc.cluster, &kc.lab, 3).await;
    kc.admin.etcd_recover(&snap, false).await.unwrap();
    kc.admin.bootstrap(true, false).await.unwrap();
    within("api back", kc.lab.kube().wait_up()).await;
    let back = cms.get("keep-me").await.unwrap();
    assert_eq!(back.data.unwrap()["k"], "v");
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 3);
}

#[tokio::test]
async fn delays_follow_the_time_scale() {
    use endsys_lab::{Lab, LabOptions};
    let lab = Lab::start(LabOptions {
        nodes: 3,
        controlplanes: 3,
        first_ip: std::net::Ipv4Addr::new(127, 0, 158, 11),
        time_scale: 0.05,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let kc = kubelab::up_lab(lab, "k158").await;
    let client = client(&kc.kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["node1", "node2", "node3"] {
        within(
            "node registered",
            await_condition(nodes.clone(), name, |n: Option<&Node>| {
                n.and_then(node_ready) == Some(false)
            }),
        )
        .await
        .unwrap();
    }
    let pp = PatchParams::apply("endsys-bootstrap");
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    ds.patch("cilium", &pp, &Patch::Apply(cilium()))
        .await
        .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}});
    deps.patch("web", &pp, &Patch::Apply(dep)).await.unwrap();
    // The CNI takes 8 s × 0.05 to roll out: nodes are not Ready yet.
    let now = nodes.list(&ListParams::default()).await.unwrap();
    assert!(now.items.iter().all(|n| node_ready(n) == Some(false)));
    let web = within(
        "progressing",
        await_condition(deps.clone(), "web", |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.observed_generation == Some(1))
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        web.status.unwrap().available_replicas,
        None,
        "pods wait for the network"
    );
    for name in ["node1", "node2", "node3"] {
        within(
            "node ready",
            await_condition(nodes.clone(), name, |n: Option<&Node>| {
                n.and_then(node_ready) == Some(true)
            }),
        )
        .await
        .unwrap();
    }
    within(
        "deployment available",
        await_condition(deps.clone(), "web", conditions::is_deployment_completed()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn workers_register_and_powered_off_nodes_go_unknown() {
    let kc = kubelab::up_lab(common::lab(159, 4, 3, "v1.13.9").await, "k159").await;
    let client = client(&kc.kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let worker = within(
        "worker registered",
        await_condition(nodes.clone(), "node4", |n: Option<&Node>| n.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    let labels = worker.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "node4");
    assert!(!labels.contains_key("node-role.kubernetes.io/control-plane"));

    kc.lab.nodes()[1].power_off().await;
    let status = |n: Option<&Node>| {
        n.and_then(|n| n.status.as_ref()?.conditions.clone())
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status)
    };
    within(
        "node2 unknown",
        await_condition(nodes.clone(), "node2", move |n: Option<&Node>| {
            status(n).as_deref() == Some("Unknown")
        }),
    )
    .await
    .unwrap();
    let lab = kc.lab.kube();
    assert_eq!(lab.list("Node", None).len(), 4);
    assert!(lab.get("nodes", None, "node1").is_some());
}

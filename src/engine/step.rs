//! Step names: one typed id for the steps of every flow (`up`, `node reimage`,
//! `node rejoin`, `recover`), and the five layers of a cluster.
//!
//! The serialized name ([`StepId::name`]) is part of the NDJSON contract and of
//! the journal files. `up`'s steps come first and in execution order: `--until`
//! and the demo's per-phase sums compare them with `<`.

use serde::Serialize;

/// The five layers of a cluster (only the first is driven by this tool directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Foundation,
    Gitops,
    DataServices,
    Security,
    Applications,
}

impl Layer {
    pub fn number(self) -> u8 {
        match self {
            Layer::Foundation => 1,
            Layer::Gitops => 2,
            Layer::DataServices => 3,
            Layer::Security => 4,
            Layer::Applications => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Layer::Foundation => "foundation",
            Layer::Gitops => "gitops",
            Layer::DataServices => "data services",
            Layer::Security => "security",
            Layer::Applications => "applications",
        }
    }
}

/// A step of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepId {
    /// The run as a whole (run_started / run_finished events, recover's notes).
    Run,
    // ---- up: the Talos half of layer 1 (src/flows/up/{preflight,talos,etcd}.rs)
    Preflight,
    Apply,
    WaitConfigured,
    Bootstrap,
    EtcdQuorum,
    Kubeconfig,
    Apiserver,
    // ---- up: the Kubernetes half of layer 1 (src/flows/up/{layer1,charts}.rs)
    KubeApi,
    NodesRegistered,
    Namespaces,
    Secrets,
    Crds,
    Cni,
    NodesReady,
    Charts,
    Layer1Done,
    // ---- up: layer 2 (src/flows/up/flux.rs)
    FluxSecrets,
    FluxInstall,
    FluxSync,
    /// Layers 3–5: the tracker over the live Flux objects.
    Gitops,
    /// Flux adopted the bootstrap releases.
    Adoption,
    // ---- node operations (src/flows/nodes): reimage and rejoin share `apply`.
    /// A node operation resumes an interrupted one (an info line, not a step).
    Resume,
    /// The Kubernetes steps of a node operation are skipped (a warning line).
    Kubernetes,
    Guard,
    Snapshot,
    Cordon,
    Drain,
    LeaveEtcd,
    Reset,
    /// Journal-only: the Reset call was accepted (the node is going down).
    ResetRequested,
    RemoveMember,
    DeleteNode,
    WaitJoin,
    NodeReady,
    Uncordon,
    Verify,
    // ---- gates and rollouts (src/flows/gates, src/flows/rollout, upgrade).
    /// Hand etcd leadership to another member first.
    ForfeitLeader,
    /// Every GitOps layer Ready before/after a node.
    Layers,
    /// The machine config's install image set to the target (NO_REBOOT).
    InstallImage,
    /// The installer image pulled on the node (ImageService.Pull).
    PullImage,
    /// The upgrade call (LifecycleService.Upgrade or MachineService.Upgrade).
    Upgrade,
    /// Journal-only: the upgrade reached the node (a re-run must not ask again).
    UpgradeRequested,
    /// The reboot into the new image.
    Reboot,
    /// Journal-only: the reboot was accepted.
    RebootRequested,
    /// Back with a new boot ID, running and ready.
    WaitBack,
    /// The running version equals the target (else: rolled back).
    VerifyVersion,
    /// The node's services running and healthy.
    Services,
    /// Kubernetes images pulled on every node before anything changes.
    Prepull,
    /// A control-plane static pod moved to the new image (one node at a time).
    StaticPod,
    /// A node's kubelet moved to the new version, Node Ready with it.
    Kubelet,
    // ---- recover (src/flows/recover): the phases of recover.json.
    CheckSnapshot,
    GateNodes,
    Restore,
    VerifyRestore,
    RebootCheck,
    Converge,
}

impl StepId {
    /// Steps of `up` in execution order: layer 1 (Talos half, Kubernetes
    /// half), layer 2 (Flux), then the watch over layers 3–5.
    pub const UP: [StepId; 21] = [
        StepId::Preflight,
        StepId::Apply,
        StepId::WaitConfigured,
        StepId::Bootstrap,
        StepId::EtcdQuorum,
        StepId::Kubeconfig,
        StepId::Apiserver,
        StepId::KubeApi,
        StepId::NodesRegistered,
        StepId::Namespaces,
        StepId::Secrets,
        StepId::Crds,
        StepId::Cni,
        StepId::NodesReady,
        StepId::Charts,
        StepId::Layer1Done,
        StepId::FluxSecrets,
        StepId::FluxInstall,
        StepId::FluxSync,
        StepId::Gitops,
        StepId::Adoption,
    ];

    /// The last step of `up`.
    pub const LAST: StepId = StepId::Adoption;

    pub fn name(self) -> &'static str {
        match self {
            StepId::Run => "run",
            StepId::Preflight => "preflight",
            StepId::Apply => "apply",
            StepId::WaitConfigured => "wait_configured",
            StepId::Bootstrap => "bootstrap",
            StepId::EtcdQuorum => "etcd_quorum",
            StepId::Kubeconfig => "kubeconfig",
            StepId::Apiserver => "apiserver",
            StepId::KubeApi => "kube_api",
            StepId::NodesRegistered => "nodes_registered",
            StepId::Namespaces => "namespaces",
            StepId::Secrets => "secrets",
            StepId::Crds => "crds",
            StepId::Cni => "cni",
            StepId::NodesReady => "nodes_ready",
            StepId::Charts => "charts",
            StepId::Layer1Done => "layer1_done",
            StepId::FluxSecrets => "flux_secrets",
            StepId::FluxInstall => "flux_install",
            StepId::FluxSync => "flux_sync",
            StepId::Gitops => "gitops",
            StepId::Adoption => "adoption",
            StepId::Resume => "resume",
            StepId::Kubernetes => "kubernetes",
            StepId::Guard => "guard",
            StepId::Snapshot => "snapshot",
            StepId::Cordon => "cordon",
            StepId::Drain => "drain",
            StepId::LeaveEtcd => "leave_etcd",
            StepId::Reset => "reset",
            StepId::ResetRequested => "reset_requested",
            StepId::RemoveMember => "remove_member",
            StepId::DeleteNode => "delete_node",
            StepId::WaitJoin => "wait_join",
            StepId::NodeReady => "node_ready",
            StepId::Uncordon => "uncordon",
            StepId::Verify => "verify",
            StepId::ForfeitLeader => "forfeit_leader",
            StepId::Layers => "layers",
            StepId::InstallImage => "install_image",
            StepId::PullImage => "pull_image",
            StepId::Upgrade => "upgrade",
            StepId::UpgradeRequested => "upgrade_requested",
            StepId::Reboot => "reboot",
            StepId::RebootRequested => "reboot_requested",
            StepId::WaitBack => "wait_back",
            StepId::VerifyVersion => "verify_version",
            StepId::Services => "services",
            StepId::Prepull => "prepull",
            StepId::StaticPod => "static_pod",
            StepId::Kubelet => "kubelet",
            StepId::CheckSnapshot => "check_snapshot",
            StepId::GateNodes => "gate_nodes",
            StepId::Restore => "restore",
            StepId::VerifyRestore => "verify_restore",
            StepId::RebootCheck => "reboot_check",
            StepId::Converge => "converge",
        }
    }

    /// The layer a step works on. The tracker (`gitops`) watches every layer
    /// but ends when the last one is Ready; `adoption` checks the layer-2
    /// handoff, after Flux has reconciled the bootstrap HelmReleases.
    pub fn layer(self) -> Layer {
        match self {
            StepId::FluxSecrets | StepId::FluxInstall | StepId::FluxSync | StepId::Adoption => {
                Layer::Gitops
            }
            StepId::Gitops => Layer::Applications,
            _ => Layer::Foundation,
        }
    }

    /// What the step does, for plans and the display.
    pub fn describe(self) -> &'static str {
        match self {
            StepId::Run => "the whole run",
            StepId::Preflight => "check definition, secrets, node reachability, modes, disks and links",
            StepId::Apply => "apply machine configs (insecure to maintenance nodes, mTLS auto to configured ones)",
            StepId::WaitConfigured => "wait for every node to run its config",
            StepId::Bootstrap => "bootstrap etcd exactly once",
            StepId::EtcdQuorum => "wait for etcd quorum with every control plane a member",
            StepId::Kubeconfig => "fetch the admin kubeconfig",
            StepId::Apiserver => "wait for kube-apiserver to serve TLS on 6443",
            StepId::KubeApi => "connect to the Kubernetes API with the fetched kubeconfig (version, discovery)",
            StepId::NodesRegistered => "wait until every node is registered (NotReady is expected before the CNI)",
            StepId::Namespaces => "one namespace per folder under kubernetes/apps/ (server-side apply)",
            StepId::Secrets => "decrypt the listed SOPS files in process and apply them into flux-system",
            StepId::Crds => "apply CRDs from manifest sources (URL or file), wait Established",
            StepId::Cni => "render and apply the Cilium release (Talos values lint first), wait rolled out",
            StepId::NodesReady => "wait until every node is Ready (the CNI is up)",
            StepId::Charts => "render, apply and wait for the other bootstrap releases in needs order",
            StepId::Layer1Done => "layer 1 done: nodes Ready, bootstrap charts healthy",
            StepId::FluxSecrets => "check sops-age and cluster-secrets in flux-system; the cluster's age key decrypts every SOPS file Flux will build",
            StepId::FluxInstall => "render, apply and wait for the flux-operator and flux-instance releases",
            StepId::FluxSync => "wait for the FluxInstance Ready, the flux-system source at the expected revision, flux-system and cluster-meta Ready",
            StepId::Gitops => "watch every Flux Kustomization and HelmRelease until layers 3-5 are Ready",
            StepId::Adoption => "confirm Flux adopted each bootstrap release (same name and namespace, no reinstall)",
            StepId::Resume => "resume an interrupted operation",
            StepId::Kubernetes => "the Kubernetes steps of a node operation",
            StepId::Guard => "the quorum guard: etcd healthy, every member matched, quorum kept",
            StepId::Snapshot => "an automatic etcd snapshot before a control-plane operation",
            StepId::Cordon => "mark the Node unschedulable",
            StepId::Drain => "evict the node's pods (Eviction API)",
            StepId::LeaveEtcd => "leave etcd, confirmed through another control plane",
            StepId::Reset => "reset the node into maintenance mode",
            StepId::ResetRequested => "the reset was accepted",
            StepId::RemoveMember => "remove the node's stale etcd members by ID",
            StepId::DeleteNode => "delete the old Node object",
            StepId::WaitJoin => "wait for the node to run with etcd joined",
            StepId::NodeReady => "wait for the Node registered (Ready if it was)",
            StepId::Uncordon => "mark the Node schedulable",
            StepId::Verify => "verify etcd: every member healthy, one leader",
            StepId::ForfeitLeader => "hand etcd leadership to another member (EtcdForfeitLeadership) and wait until all agree",
            StepId::Layers => "every GitOps layer Ready (before and after each node)",
            StepId::InstallImage => "set the machine config's install image to the target (dry run, then NO_REBOOT)",
            StepId::PullImage => "pull the installer image on the node (ImageService.Pull)",
            StepId::Upgrade => "upgrade the node (LifecycleService.Upgrade on Talos >= 1.13, MachineService.Upgrade on 1.12)",
            StepId::UpgradeRequested => "the upgrade was accepted",
            StepId::Reboot => "reboot into the new image",
            StepId::RebootRequested => "the reboot was accepted",
            StepId::WaitBack => "wait for a new boot ID, running and ready",
            StepId::VerifyVersion => "the node runs the target version (else it rolled back)",
            StepId::Services => "the node's services running and healthy",
            StepId::Prepull => "pull the new Kubernetes images on every node first (ImagePull)",
            StepId::StaticPod => "move one control plane's static pod to the new image and wait for its mirror pod Ready on it",
            StepId::Kubelet => "move a node's kubelet to the new version and wait for the Node Ready with it",
            StepId::CheckSnapshot => "check the snapshot before any node is touched",
            StepId::GateNodes => "every node in maintenance mode (configured ones reset with --reset-nodes)",
            StepId::Restore => "up through kube-apiserver, etcd restored from the snapshot",
            StepId::VerifyRestore => "the snapshot's objects are back in Kubernetes",
            StepId::RebootCheck => "reboot the restored control plane once; the data must survive",
            StepId::Converge => "the rest of up against the restored state",
        }
    }

    /// The `--until` value that stops after this step.
    pub fn until_flag(self) -> &'static str {
        match self {
            StepId::Apply => "apply",
            StepId::WaitConfigured => "configured",
            StepId::EtcdQuorum | StepId::Kubeconfig => "etcd",
            StepId::NodesReady => "cni",
            StepId::Layer1Done => "layer1",
            StepId::FluxSync => "flux",
            StepId::Adoption => "all",
            other => other.name(),
        }
    }

    /// A step of `up` by name.
    pub fn parse(s: &str) -> Option<StepId> {
        StepId::UP.into_iter().find(|st| st.name() == s)
    }
}

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serialized_form() {
        for s in StepId::UP.into_iter().chain([
            StepId::Run,
            StepId::LeaveEtcd,
            StepId::ResetRequested,
            StepId::WaitJoin,
            StepId::RebootCheck,
        ]) {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.name()),
                "{s:?}"
            );
        }
        assert!(StepId::UP.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(StepId::parse("etcd_quorum"), Some(StepId::EtcdQuorum));
        assert_eq!(StepId::parse("leave_etcd"), None);
    }
}

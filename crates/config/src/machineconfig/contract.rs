//! Talos version contracts: which Talos release a definition targets and what that
//! implies (the config documents rendered, the Kubernetes minors supported).

/// talhelper's `LatestTalosVersion` (v3.1.16), used when talosVersion is not set.
pub const DEFAULT_TALOS_VERSION: &str = "v1.13.8";

/// A Talos version contract (major.minor). 1.8 to 1.14 are rendered (1.8–1.11
/// produce the same base output; `stab/v1.8…v1.11` at v1.14.0-rc.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Contract {
    pub major: u32,
    pub minor: u32,
}

impl Contract {
    pub fn parse(version: &str) -> Result<Self, String> {
        // The version is the installer image's tag: only a strict release version
        // (no spaces, no shell, no `v1.13.banana`) may get there.
        let Some((major, minor, _)) = super::checks::release_version(version) else {
            return Err(format!(
                "talosVersion `{}` is not a release version like v1.13.9",
                version.escape_debug()
            ));
        };
        let c = Contract { major, minor };
        if major != 1 || !(FIRST_MINOR..=14).contains(&minor) {
            return Err(format!(
                "Talos {major}.{minor} is not supported: this tool renders configs for the 1.{FIRST_MINOR} to 1.14 contracts"
            ));
        }
        Ok(c)
    }

    /// Kubernetes minors this Talos release supports (compatibility/talos1NN).
    pub fn kubernetes_range(&self) -> (u32, u32) {
        // siderolabs/talos pkg/machinery/compatibility/talos1NN/talos1NN.go@v1.13.9.
        match self.minor {
            8 => (26, 31),
            9 => (27, 32),
            10 => (28, 33),
            11 => (29, 34),
            12 => (30, 35),
            13 => (31, 36),
            // compatibility/talos114@v1.14.0-rc.1: 1.32.0 – 1.37.99.
            _ => (32, 37),
        }
    }

    // Switches named as in `pkg/machinery/config/contract.go` (true when the contract
    // is above the version named in the comment). Issue 15 (contracts 1.8–1.11).

    /// > 1.11: network settings live in typed documents, not `machine.network`.
    pub fn multidoc_network_config_supported(&self) -> bool {
        self.minor > 11
    }
    /// > 1.12: no empty `machine.network: {}`.
    pub fn kubespan_multidoc_config(&self) -> bool {
        self.minor > 12
    }
    /// > 1.11: `features.rbac` / `apidCheckExtKeyUsage` are no longer written.
    pub fn hide_rbac_and_key_usage(&self) -> bool {
        self.minor > 11
    }
    /// > 1.11: `apiServer.disablePodSecurityPolicy` is no longer written.
    pub fn hide_disable_psp(&self) -> bool {
        self.minor > 11
    }
    /// > 1.11: `install.grubUseUKICmdline: true` is written.
    pub fn grub_use_uki_cmdline_default(&self) -> bool {
        self.minor > 11
    }
    /// <= 1.11: the endpoint's host is the first `apiServer.certSANs` entry.
    pub fn populate_cluster_sans_from_endpoint(&self) -> bool {
        self.minor <= 11
    }

    // Contract 1.14 switches (pkg/machinery/config/contract.go@v1.14.0-rc.1), each
    // true for contracts newer than 1.13.

    fn after_1_13(&self) -> bool {
        (self.major, self.minor) > (1, 13)
    }

    /// v1alpha1 Kubernetes fields become Kube* documents.
    pub fn multidoc_kubernetes(&self) -> bool {
        self.after_1_13()
    }

    /// UnattendedInstallConfig instead of `machine.install`.
    pub fn unattended_install(&self) -> bool {
        self.after_1_13()
    }

    /// `cluster.discovery` → DiscoveryServiceConfig, `cluster.id/secret` →
    /// DiscoveryIdentityConfig.
    pub fn discovery_multidoc(&self) -> bool {
        self.after_1_13()
    }

    /// `machine.features.hostDNS` → `ResolverConfig.hostDNS`.
    pub fn hostdns_multidoc(&self) -> bool {
        self.after_1_13()
    }

    /// VolumeConfig EPHEMERAL (secure mount) + FilesystemTrimConfig.
    pub fn fs_trim_default(&self) -> bool {
        self.after_1_13()
    }

    /// SecurityProfileConfig with workload isolation.
    pub fn workload_isolation_default(&self) -> bool {
        self.after_1_13()
    }

    /// `machine.sysctls` → SysctlConfig.
    pub fn multidoc_sysctl(&self) -> bool {
        self.after_1_13()
    }
}

/// The oldest contract rendered: talhelper accepts 1.2 and up, but the 40-repository
/// corpus has nothing older than 1.8 at its repositories' latest commits.
pub const FIRST_MINOR: u32 = 8;

/// `v1.35.3` → (1, 35, 3); None unless a strict release version (it becomes the
/// tag of the kubelet and control-plane images).
pub fn parse_k8s_version(v: &str) -> Option<(u32, u32, u32)> {
    super::checks::release_version(v)
}

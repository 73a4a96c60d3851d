//! Key order of the contract-1.14 documents, as Go marshals their structs (field
//! order of `pkg/machinery/config/types/{k8s,cluster,network,runtime}`@v1.14.0-rc.1;
//! Go maps — extraArgs, labels, free-form `config`/`configuration` — come out sorted).

use Order::*;

/// How the keys of a mapping at some path are ordered on output.
pub(crate) enum Order {
    /// A Go struct: known fields in declaration order, unknown ones after, as inserted.
    Struct(&'static [&'static str]),
    /// A Go map: keys sorted, and nested maps too (Unstructured values).
    SortedDeep,
    /// A Go map of structs: keys sorted, values ordered by their own path.
    Sorted,
}

macro_rules! doc {
    ($($f:literal),*) => { Struct(&["apiVersion", "kind", "name", $($f),*]) };
}

/// The order for `path` inside a document of `kind`, when this table knows it.
pub(crate) fn order(kind: &str, path: &str) -> Option<Order> {
    let o = match (kind, path) {
        ("DiscoveryServiceConfig", "") => doc!("endpoint"),
        ("DiscoveryIdentityConfig", "") => doc!("clusterID", "clusterSecret"),
        ("UnattendedInstallConfig", "") => doc!("reboot", "installer", "provisioning"),
        ("UnattendedInstallConfig", "provisioning") => Struct(&["diskSelector", "wipe"]),
        ("ResolverConfig", "") => doc!("nameservers", "searchDomains", "hostDNS"),
        ("ResolverConfig", "hostDNS") => {
            Struct(&["enabled", "forwardKubeDNSToHost", "resolveMemberNames"])
        }
        ("TimeSyncConfig", "") => doc!("enabled", "bootTimeout", "ntp", "ptp"),
        ("KubeClusterConfig", "") => doc!("clusterName", "endpoint"),
        ("KubeNodeConfig", "") => doc!(
            "skipNodeRegistration",
            "registerWithFQDN",
            "nodeIP",
            "labels",
            "annotations",
            "taints"
        ),
        ("KubeletConfig", "") => doc!(
            "image",
            "config",
            "extraArgs",
            "clusterDNS",
            "defaultRuntimeSeccompProfileEnabled"
        ),
        ("KubeNetworkConfig", "") => doc!("dnsDomain", "podSubnets", "serviceSubnets"),
        ("KubeAPIServerCAConfig" | "KubeAggregatorCAConfig", "") => {
            doc!("issuingCA", "acceptedCAs")
        }
        ("KubeAPIServerCAConfig" | "KubeAggregatorCAConfig", "issuingCA") => {
            Struct(&["cert", "key"])
        }
        ("KubeServiceAccountConfig", "") => doc!("issuer", "accepted"),
        ("KubeServiceAccountConfig", "issuer") => Struct(&["privateKey", "issuerURL"]),
        ("KubeAPIServerConfig", "") => doc!(
            "image",
            "extraArgs",
            "env",
            "resources",
            "apiPort",
            "certExtraSANs",
            "startupProbes"
        ),
        ("KubeControllerManagerConfig", "") => {
            doc!("enabled", "image", "extraArgs", "env", "resources")
        }
        ("KubeSchedulerConfig", "") => {
            doc!(
                "enabled",
                "image",
                "config",
                "extraArgs",
                "env",
                "resources"
            )
        }
        ("KubeProxyConfig", "") => {
            doc!(
                "enabled",
                "image",
                "mode",
                "config",
                "extraArgs",
                "resources"
            )
        }
        ("KubeCoreDNSConfig", "") => doc!("enabled", "image"),
        ("KubeAuthorizerConfig", "") => doc!("type", "webhook"),
        ("KubeFlannelCNIConfig", "") => doc!("backendType", "backendPort"),
        ("KubeExternalManifestConfig", "") => doc!("url"),
        (
            "KubeAPIServerConfig"
            | "KubeControllerManagerConfig"
            | "KubeSchedulerConfig"
            | "KubeProxyConfig"
            | "KubeletConfig",
            "extraArgs" | "env" | "config",
        )
        | ("KubeNodeConfig", "labels" | "annotations" | "taints")
        | ("SysctlConfig", "params")
        | (
            "KubeAdmissionControlConfig" | "KubeAuditPolicyConfig" | "KubeAuthenticationConfig",
            "configuration",
        )
        | ("KubeEtcdEncryptionConfig", "config") => SortedDeep,
        _ => return None,
    };
    Some(o)
}

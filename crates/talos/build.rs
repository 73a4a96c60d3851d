//! Compiles the Talos API declarations in `proto/` (at the workspace root) with protox (pure Rust, so no
//! `protoc` is needed on the build machine) and generates tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "common/common.proto",
        "machine/machine.proto",
        "machine/image.proto",
        "machine/lifecycle.proto",
        "cluster/cluster.proto",
        "storage/storage.proto",
        "security/security.proto",
        "v1alpha1/resource.proto",
        "v1alpha1/state.proto",
    ];
    let includes = ["../../proto", "../../proto/cosi"];
    let fds = protox::compile(files, includes)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}

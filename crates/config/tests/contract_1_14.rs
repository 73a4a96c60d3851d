//! Contract 1.14: rendering, the old-field + new-document refusal, schema.

mod common;
use common::*;
use endsys_config::machineconfig::*;

#[test]
fn endsys_1_14_unmigrated_is_refused() {
    let dir = endsys_copy("v1.14.0");
    let def = load(dir.path()).unwrap();
    let err = render_all(&def, &secrets()).unwrap_err().to_string();
    eprintln!("{err}");
    panic!();
}

#[test]
fn scratch_strategic_only() {
    let dir = endsys_copy("v1.14.0");
    let t = std::fs::read_to_string(dir.path().join("talconfig.yaml")).unwrap();
    let t = t.replace(
        "    - \"@./patches/controller/admission-controller-patch.yaml\"\n",
        "",
    );
    std::fs::write(dir.path().join("talconfig.yaml"), t).unwrap();
    let def = load(dir.path()).unwrap();
    let err = render_all(&def, &secrets()).unwrap_err().to_string();
    eprintln!("{err}");
    panic!();
}

#[test]
fn scratch_render_without_patches() {
    let dir = endsys_copy("v1.14.0");
    let t = std::fs::read_to_string(dir.path().join("talconfig.yaml")).unwrap();
    let t = t.split("\n# Applied last").next().unwrap().to_string();
    std::fs::write(dir.path().join("talconfig.yaml"), t).unwrap();
    let def = load(dir.path()).unwrap();
    let r = render_all(&def, &secrets()).unwrap();
    println!("{}", r[0].yaml);
    panic!();
}

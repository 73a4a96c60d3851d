//! The bad-input corpus, end to end through the binary. Every case under
//! tests/fixtures/bad-inputs/<case>/ is copied into a fresh folder and run there;
//! `case.txt` says how to build the input, what to run and what must come out.
//! A bug found in input handling becomes a new case here.
//!
//! `case.txt` lines (`#` starts a comment):
//! - `base: talconfig` copies the base definition to talos/talconfig.yaml
//!   (every case gets the base secrets bundle as talsecret.yaml);
//! - `copy: FROM => TO` copies a file;
//! - `replace: FILE: OLD => NEW` edits a file (`\n` in NEW is a line break);
//! - `set: FILE: a.b.c = VALUE` sets a YAML value; `= @x.y` copies another one;
//! - `gen: KIND FILE [N]` writes what cannot sit in git: `deep` (N nested `[`),
//!   `big` (a config of N bytes), `sans` (base definition with N certSANs),
//!   `loop` (a link to itself), `dir` (a folder), `binary`;
//! - `env: NAME=VALUE` for the process (`\n` is a line break);
//! - `run: ARGS` (split on spaces), `exit: CODE` (default 2);
//! - `stderr: TEXT` must appear in stderr, `not-stderr: TEXT` must not;
//! - `no-file: PATH` must not exist afterwards (relative to the case folder).
//!
//! The second test feeds every input file of the corpus, and the fuzz seeds, to
//! every fuzz target body (`endsys_bootstrap::fuzz_targets`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_yaml_ng::Value;

/// The binary under test; `BAD_INPUTS_BIN` runs the corpus against another
/// build (to see each case fail before its fix).
fn bin() -> String {
    std::env::var("BAD_INPUTS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_endsys-bootstrap").into())
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad-inputs")
}

/// `\n` is a line break, `\\` a backslash.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name();
        if name == "case.txt" {
            continue;
        }
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

fn yaml_path<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
    path.split('.').fold(v, |cur, k| &mut cur[k])
}

fn generate(dir: &Path, kind: &str, file: &str, n: usize) {
    let p = dir.join(file);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    match kind {
        "deep" => std::fs::write(
            &p,
            format!(
                "clusterName: lab\nextra: {}{}\n",
                "[".repeat(n),
                "]".repeat(n)
            ),
        )
        .unwrap(),
        "big" => std::fs::write(&p, format!("version: v1alpha1\n#{}\n", "x".repeat(n))).unwrap(),
        "sans" => {
            let mut t = std::fs::read_to_string(corpus().join("base/talconfig.yaml")).unwrap();
            t.push_str("    certSANs:\n");
            for i in 0..n {
                t.push_str(&format!("      - san{i}.example.com\n"));
            }
            std::fs::write(&p, t).unwrap();
        }
        "loop" => std::os::unix::fs::symlink(&p, &p).unwrap(),
        "dir" => std::fs::create_dir_all(p.join("inside")).unwrap(),
        "binary" => std::fs::write(&p, [0x7f, b'E', b'L', b'F', 0, 0xff, 0xfe, 1]).unwrap(),
        other => panic!("unknown generator {other}"),
    }
}

struct Case {
    args: Vec<String>,
    env: Vec<(String, String)>,
    exit: i32,
    stderr: Vec<String>,
    not_stderr: Vec<String>,
    no_file: Vec<String>,
}

/// Builds the case's folder under `work` and reads what to run and expect.
fn prepare(case: &Path, work: &Path) -> Case {
    copy_dir(case, work);
    std::fs::copy(
        corpus().join("../machineconfig/secrets.yaml"),
        work.join("talsecret.yaml"),
    )
    .unwrap();
    let spec = std::fs::read_to_string(case.join("case.txt")).unwrap();
    let mut c = Case {
        args: vec![],
        env: vec![],
        exit: 2,
        stderr: vec![],
        not_stderr: vec![],
        no_file: vec![],
    };
    for line in spec.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("{}: bad line {line:?}", case.display()));
        match key {
            "base" => {
                std::fs::create_dir_all(work.join("talos")).unwrap();
                std::fs::copy(
                    corpus().join("base").join(format!("{rest}.yaml")),
                    work.join("talos/talconfig.yaml"),
                )
                .unwrap();
            }
            "copy" => {
                let (from, to) = rest.split_once(" => ").unwrap();
                std::fs::create_dir_all(work.join(to).parent().unwrap()).unwrap();
                std::fs::copy(work.join(from), work.join(to)).unwrap();
            }
            "replace" => {
                let (file, edit) = rest.split_once(": ").unwrap();
                let (old, new) = edit.split_once(" => ").unwrap();
                let p = work.join(file);
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(
                    text.contains(old),
                    "{}: {old:?} not in {file}",
                    case.display()
                );
                std::fs::write(&p, text.replace(old, &unescape(new))).unwrap();
            }
            "set" => {
                let (file, edit) = rest.split_once(": ").unwrap();
                let (path, value) = edit.split_once(" = ").unwrap();
                let p = work.join(file);
                let mut doc: Value =
                    serde_yaml_ng::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                let value = match value.strip_prefix('@') {
                    Some(from) => yaml_path(&mut doc, from).clone(),
                    None => serde_yaml_ng::from_str(value).unwrap(),
                };
                *yaml_path(&mut doc, path) = value;
                std::fs::write(&p, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
            }
            "gen" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let n = parts.get(2).map(|n| n.parse().unwrap()).unwrap_or(0);
                generate(work, parts[0], parts[1], n);
            }
            "env" => {
                let (k, v) = rest.split_once('=').unwrap();
                c.env.push((k.into(), unescape(v)));
            }
            "run" => c.args = rest.split_whitespace().map(String::from).collect(),
            "exit" => c.exit = rest.parse().unwrap(),
            "stderr" => c.stderr.push(rest.into()),
            "not-stderr" => c.not_stderr.push(rest.into()),
            "no-file" => c.no_file.push(rest.into()),
            other => panic!("{}: unknown key {other}", case.display()),
        }
    }
    assert!(!c.args.is_empty(), "{}: no run line", case.display());
    c
}

/// Runs the binary in `dir`; (exit code, stderr). The deadline is a timed
/// receive on its exit while its output drains.
fn run(dir: &Path, c: &Case, deadline: Duration) -> (i32, String) {
    let mut cmd = Command::new(bin());
    cmd.args(&c.args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env_remove("TALOSCONFIG")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let out = rx.recv().unwrap().unwrap();
            return (
                -1,
                format!(
                    "[killed: no exit within {deadline:?}] {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cases() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.txt").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_bad_input_is_refused_naming_its_culprit() {
    let cases = cases();
    assert!(cases.len() >= 30, "corpus has only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let tmp = tempfile::tempdir().unwrap();
        // The case runs one level down, so that a file escaping its folder
        // (`no-file: ../x`) lands where the check can see it.
        let work = tmp.path().join("case");
        let c = prepare(case, &work);
        let started = std::time::Instant::now();
        let (code, stderr) = run(&work, &c, Duration::from_secs(20));
        let mut why = Vec::new();
        if code != c.exit {
            why.push(format!("exit code {code}, want {}", c.exit));
        }
        for s in &c.stderr {
            if !stderr.contains(s.as_str()) {
                why.push(format!("stderr lacks {s:?}"));
            }
        }
        for s in &c.not_stderr {
            if stderr.contains(s.as_str()) {
                why.push(format!("stderr has {s:?}"));
            }
        }
        for f in &c.no_file {
            if work.join(f).symlink_metadata().is_ok() {
                why.push(format!("{f} was written"));
            }
        }
        // Limits exist so that refusing is fast, whatever the input's size.
        if started.elapsed() > Duration::from_secs(10) {
            why.push(format!("took {:?}", started.elapsed()));
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {stderr}",
                case.file_name().unwrap().to_string_lossy(),
                why.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// The fuzz target bodies over their seeds (fuzz/seeds/<target>/) and every
/// file of both bad-input corpora: none may panic.
#[test]
fn fuzz_targets_survive_their_seeds_and_the_bad_input_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut shared = Vec::new();
    files_under(&corpus(), &mut shared);
    files_under(&root.join("tests/fixtures/machineconfig/bad"), &mut shared);
    files_under(&root.join("tests/fixtures/sops"), &mut shared);
    let mut ran = 0;
    for (name, target) in endsys_bootstrap::fuzz_targets::TARGETS {
        let mut files = Vec::new();
        files_under(&root.join("fuzz/seeds").join(name), &mut files);
        assert!(!files.is_empty(), "fuzz/seeds/{name} is empty");
        files.extend(shared.iter().cloned());
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("fuzz target {name} panicked on {}", f.display());
            }
            ran += 1;
        }
    }
    assert!(ran > 100, "only {ran} inputs ran");
}

fn case(args: &[&str], env: &[(&str, &str)]) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        exit: 0,
        stderr: vec![],
        not_stderr: vec![],
        no_file: vec![],
    }
}

/// Issue 12, item 14: `gen secrets` and every reader agree on one default. In a
/// talhelper repository (a `.sops.yaml` rule for talos/), the bundle is written
/// encrypted to talos/talsecret.sops.yaml and `validate` reads it from there;
/// without a rule it is written plain to talos/talsecret.yaml, said so, and
/// `validate` still finds it.
#[test]
fn gen_secrets_then_validate_agree_on_the_secrets_path() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let key = root.join("tests/fixtures/sops/key.txt");
    let public = std::fs::read_to_string(&key)
        .unwrap()
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .unwrap()
        .to_string();
    for with_rule in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("talos")).unwrap();
        std::fs::copy(
            corpus().join("base/talconfig.yaml"),
            dir.join("talos/talconfig.yaml"),
        )
        .unwrap();
        if with_rule {
            std::fs::write(
                dir.join(".sops.yaml"),
                format!(
                    "creation_rules:\n  - path_regex: talos/.*\\.sops\\.yaml$\n    age: {public}\n"
                ),
            )
            .unwrap();
        }
        let (code, stderr) = run(
            dir,
            &case(&["gen", "secrets"], &[]),
            Duration::from_secs(60),
        );
        assert_eq!(code, 0, "gen secrets: {stderr}");
        let sops = dir.join("talos/talsecret.sops.yaml");
        let plain = dir.join("talos/talsecret.yaml");
        if with_rule {
            let text = std::fs::read_to_string(&sops).unwrap();
            assert!(text.contains("ENC[AES256_GCM"), "not encrypted:\n{text}");
            assert!(!plain.exists());
        } else {
            assert!(!sops.exists());
            assert!(plain.is_file());
            assert!(
                stderr.contains("no .sops.yaml found") && stderr.contains("unencrypted"),
                "the plain write is not said: {stderr}"
            );
        }
        let key = key.to_string_lossy().into_owned();
        let (code, stderr) = run(
            dir,
            &case(&["validate"], &[("SOPS_AGE_KEY_FILE", &key)]),
            Duration::from_secs(60),
        );
        assert_eq!(
            code, 0,
            "validate after gen secrets (rule: {with_rule}): {stderr}"
        );
    }
}

//! Shell completions and man pages cover every verb and flag `--help` shows, and the
//! bash script really completes when bash runs it.

use std::path::Path;
use std::process::Command;

#[path = "common/verbs.rs"]
mod verbs;
use verbs::{long_flags, verb_tree, BIN};

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// What bash offers after typing `line` and pressing TAB, using the generated script.
fn bash_complete(script: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _endsys__bootstrap endsys-bootstrap '{}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completion_offers_verbs_subverbs_and_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("endsys-bootstrap.bash");
    std::fs::write(&script, run(&["completions", "bash"])).expect("write script");

    let verbs = bash_complete(&script, "endsys-bootstrap no");
    assert_eq!(verbs, vec!["node"], "after `no`");
    let mut node = bash_complete(&script, "endsys-bootstrap node re");
    node.sort();
    assert_eq!(node, vec!["reimage", "rejoin"], "after `node re`");
    let flags = bash_complete(&script, "endsys-bootstrap up --node-t");
    assert_eq!(flags, vec!["--node-timeout"], "after `up --node-t`");
}

#[test]
fn every_shell_script_names_every_verb() {
    let tree = verb_tree();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = run(&["completions", shell]);
        for (path, _) in &tree {
            if let Some(verb) = path.last() {
                assert!(
                    script.contains(verb.as_str()),
                    "{shell} completion lacks `{}`",
                    path.join(" ")
                );
            }
        }
    }
}

#[test]
fn man_pages_cover_every_verb_and_its_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("man1");
    run(&["man", "--out-dir", out.to_str().expect("UTF-8 path")]);

    let tree = verb_tree();
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .expect("man1 exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), tree.len(), "one page per verb: {pages:?}");
    for (path, help) in &tree {
        let mut name = vec!["endsys-bootstrap".to_string()];
        name.extend(path.iter().cloned());
        let name = name.join("-");
        let page = std::fs::read_to_string(out.join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("no page for `{}`: {e}", path.join(" ")));
        assert!(page.contains(&format!(".TH {name} 1")), "{name}: title");
        // roff escapes `-` as `\-`.
        for flag in long_flags(help)
            .iter()
            .filter(|f| *f != "--help" && *f != "--version")
        {
            let escaped = flag.replace('-', "\\-");
            assert!(page.contains(&escaped), "{name}.1 lacks {flag}");
        }
    }
}

#[test]
fn man_without_a_folder_prints_the_top_page() {
    let page = run(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH endsys-bootstrap 1"),
        "{page}"
    );
    assert!(page.contains(".TH endsys-bootstrap 1"));
    assert!(
        page.contains("endsys\\-bootstrap\\-up(1)"),
        "lists the verb pages"
    );
}

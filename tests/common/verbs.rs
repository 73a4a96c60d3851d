//! The verb tree of the binary as its `--help` shows it, for tests that must cover
//! every verb (golden help text, completions, man pages).
#![allow(dead_code)]

use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_endsys-bootstrap");

/// `endsys-bootstrap PATH… --help` at a fixed width.
pub fn help_of(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .env("COLUMNS", "100")
        .output()
        .expect("run the binary");
    assert!(out.status.success(), "{path:?} --help failed");
    String::from_utf8(out.stdout).expect("--help is UTF-8")
}

/// The subcommand names listed under `Commands:` (without `help`).
pub fn subcommands(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.trim_end() == "Commands:" {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() || !line.starts_with("  ") {
                break;
            }
            // Entries start at a 2-space indent; wrapped descriptions are deeper.
            if line.as_bytes().get(2).is_some_and(|b| *b != b' ') {
                let name = line.split_whitespace().next().unwrap_or_default();
                if name != "help" {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// Every verb path (`[]`, `["node"]`, `["node", "reimage"]`, …) with its help text,
/// depth first in the order `--help` lists them.
pub fn verb_tree() -> Vec<(Vec<String>, String)> {
    let mut tree = Vec::new();
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = queue.pop() {
        let help = help_of(&path);
        let mut subs = subcommands(&help);
        subs.reverse();
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            queue.push(p);
        }
        tree.push((path, help));
    }
    tree
}

/// The `--long` flags a help text lists.
pub fn long_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split([' ', ',', '=', '[', '<']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

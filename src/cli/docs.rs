//! Shell completions and man pages, both generated from the same clap definition as
//! `--help`, so they can never describe flags the binary does not have.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

use super::CliError;

/// The completion script for `shell`.
pub fn completions(mut cmd: Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name.clone(), &mut script);
    if shell == Shell::Bash {
        script = fix_bash_state_names(&script, &name);
    }
    script
}

/// clap_complete 4.6 names the bash states of a hyphenated binary two ways
/// (`endsys__bootstrap__subcmd__node` where it walks the words, and
/// `endsys__subcmd__bootstrap__subcmd__node` where it lists the options), so no verb
/// below the top completes. One spelling, the one the walk produces, fixes it; the test
/// `bash_completion_offers_verbs_subverbs_and_flags` runs bash to prove it.
fn fix_bash_state_names(script: &[u8], name: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let walked = name.replace('-', "__");
    let listed = name.replace('-', "__subcmd__");
    text.replace(&listed, &walked).into_bytes()
}

/// The top-level man page (section 1).
pub fn man_page(mut cmd: Command) -> Result<Vec<u8>, CliError> {
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    render(&cmd, &version)
}

/// Writes one page per verb into `dir` (`endsys-bootstrap.1`, `endsys-bootstrap-node.1`,
/// `endsys-bootstrap-node-reimage.1`, …), as git names its pages, so `man` finds them
/// when `dir` is a `man1/` folder. Returns the files written, parents first.
pub fn write_man_pages(mut cmd: Command, dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    fs::create_dir_all(dir).map_err(|e| {
        CliError::Failed(format!(
            "cannot create {}: {e}\n  next action: choose a writable --out-dir",
            dir.display()
        ))
    })?;
    // Building resolves the global `--output` flag and the `verb-sub` display names.
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let mut written = Vec::new();
    write_page_tree(&cmd, &version, dir, &mut written)?;
    Ok(written)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
pub fn print(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::Failed(format!(
            "cannot write to standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

fn write_page_tree(
    cmd: &Command,
    version: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    let path = dir.join(format!("{}.1", page_name(cmd)));
    fs::write(&path, render(cmd, version)?).map_err(|e| {
        CliError::Failed(format!(
            "cannot write {}: {e}\n  next action: check the folder's permissions and free space",
            path.display()
        ))
    })?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page_tree(sub, version, dir, written)?;
    }
    Ok(())
}

fn render(cmd: &Command, version: &str) -> Result<Vec<u8>, CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .source(format!("endsys-bootstrap {version}"))
        .manual("endsys-bootstrap manual")
        .render(&mut page)
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot render the man page {}: {e}",
                page_name(cmd)
            ))
        })?;
    Ok(page)
}

/// `endsys-bootstrap node reimage` is documented as `endsys-bootstrap-node-reimage`.
fn page_name(cmd: &Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

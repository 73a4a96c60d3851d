//! Line-level editing of an indentation-structured YAML mapping.

use crate::machineconfig::yaml;
use serde_yaml_ng::Value;

fn content(l: &str) -> bool {
    let t = l.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

fn key_of(l: &str) -> Option<&str> {
    let t = l.trim_start();
    let k = t.split(':').next()?;
    (t.len() > k.len() && !k.starts_with('-')).then(|| k.trim().trim_matches(['"', '\'']))
}

/// The line range [start, end) of key `path` (start includes the comments just
/// above the key line), or None.
fn find(lines: &[String], path: &[String]) -> Option<(usize, usize)> {
    let (mut lo, mut hi) = (0usize, lines.len());
    let mut parent_indent: isize = -1;
    let mut found = None;
    for seg in path {
        let mut hit = None;
        let mut child_indent = None;
        for (i, l) in lines.iter().enumerate().take(hi).skip(lo) {
            if !content(l) {
                continue;
            }
            let ind = indent(l) as isize;
            if ind <= parent_indent {
                break;
            }
            let ci = *child_indent.get_or_insert(ind);
            if ind == ci && key_of(l) == Some(seg.as_str()) {
                hit = Some((i, ind));
                break;
            }
        }
        let (i, ind) = hit?;
        let mut end = i + 1;
        let mut j = i + 1;
        while j < hi {
            let l = &lines[j];
            if content(l) {
                if (indent(l) as isize) <= ind {
                    break;
                }
                end = j + 1;
            }
            j += 1;
        }
        lo = i + 1;
        hi = end;
        parent_indent = ind;
        found = Some((i, end));
    }
    let (mut start, end) = found?;
    let ind = indent(&lines[start]);
    while start > 0 {
        let p = &lines[start - 1];
        if p.trim_start().starts_with('#') && indent(p) == ind {
            start -= 1;
        } else {
            break;
        }
    }
    Some((start, end))
}

/// Cuts the blocks at `paths`, then parents left without content. Returns the
/// remaining lines and the comment lines that were inside the cut blocks.
pub(super) fn cut_blocks(text: &str, paths: &[Vec<String>]) -> (Vec<String>, Vec<String>) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut comments = Vec::new();
    let mut paths = paths.to_vec();
    // Deepest first, so a parent's range is measured after its children go.
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &paths {
        if let Some((a, b)) = find(&lines, p) {
            for l in lines.drain(a..b) {
                if l.trim_start().starts_with('#') {
                    comments.push(l.trim_start().to_string());
                }
            }
        }
    }
    // Empty parents (`network:` with nothing left under it) go too.
    loop {
        let mut removed = false;
        for i in 0..lines.len() {
            if !content(&lines[i]) || !lines[i].trim_end().ends_with(':') {
                continue;
            }
            let ind = indent(&lines[i]);
            let next = lines[i + 1..].iter().find(|l| content(l));
            if next.map(|n| indent(n) <= ind).unwrap_or(true) {
                lines.remove(i);
                removed = true;
                break;
            }
        }
        if !removed {
            break;
        }
    }
    (lines, comments)
}

/// The kept text, then `---` and the new documents (the moved comments first).
pub(super) fn join(rest: &[String], comments: &[String], docs: &[Value]) -> String {
    let mut out = String::new();
    let has_content = rest.iter().any(|l| content(l));
    let mut kept: Vec<&String> = rest.iter().collect();
    while kept.last().map(|l| l.trim().is_empty()).unwrap_or(false) {
        kept.pop();
    }
    for l in kept {
        out.push_str(l);
        out.push('\n');
    }
    if has_content {
        out.push_str("---\n");
    }
    for c in comments {
        out.push_str(c);
        out.push('\n');
    }
    let mut docs = docs.to_vec();
    for d in docs.iter_mut() {
        yaml::canonicalize(d);
    }
    let emitted = yaml::emit_documents(&docs, 2);
    for l in emitted.lines() {
        // talhelper substitutes `$name` in patches; `$$` is a literal `$`.
        let body = l.trim_start();
        match body.strip_prefix("$patch:") {
            Some(rest) => {
                out.push_str(&l[..l.len() - body.len()]);
                out.push_str(&format!("$$patch:{rest}"));
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

//! Line-based unified diff (`---`/`+++` headers, `@@` hunks with three lines of
//! context), shared by the lab (ApplyConfiguration's dry-run text) and the tool
//! (`diff`). Common head and tail are cut first, so the longest-common-subsequence
//! table only covers the changed middle, which is small for config edits.

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit<'a> {
    Same(&'a str),
    Del(&'a str),
    Add(&'a str),
}

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// Above this many table cells the middle is shown as removed then added whole
/// (a diff of that size is unreadable anyway, and the table would cost memory).
const MAX_CELLS: usize = 16_000_000;

/// The edit script turning `old` into `new`, line by line.
pub fn edits<'a>(old: &'a str, new: &'a str) -> Vec<Edit<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut out: Vec<Edit> = a[..head].iter().map(|l| Edit::Same(l)).collect();
    if am.len().saturating_mul(bm.len()) > MAX_CELLS {
        out.extend(am.iter().map(|l| Edit::Del(l)));
        out.extend(bm.iter().map(|l| Edit::Add(l)));
    } else {
        out.extend(lcs_edits(am, bm));
    }
    out.extend(a[a.len() - tail..].iter().map(|l| Edit::Same(l)));
    out
}

fn lcs_edits<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Edit<'a>> {
    let (n, m) = (a.len(), b.len());
    // len[i][j]: LCS length of a[i..] and b[j..].
    let w = m + 1;
    let mut len = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            len[i * w + j] = if a[i] == b[j] {
                len[(i + 1) * w + j + 1] + 1
            } else {
                len[(i + 1) * w + j].max(len[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Edit::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || len[(i + 1) * w + j] >= len[i * w + j + 1]) {
            // Removals before additions, as unified diffs show them.
            out.push(Edit::Del(a[i]));
            i += 1;
        } else {
            out.push(Edit::Add(b[j]));
            j += 1;
        }
    }
    out
}

/// A unified diff of `old` and `new` with the given file labels; empty when
/// they have the same lines.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let script = edits(old, new);
    if script.iter().all(|e| matches!(e, Edit::Same(_))) {
        return String::new();
    }
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    // Indices of changed edits, grouped into hunks that share context.
    let changed: Vec<usize> = script
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e, Edit::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &c in &changed {
        let start = c.saturating_sub(CONTEXT);
        let end = (c + CONTEXT + 1).min(script.len());
        match groups.last_mut() {
            Some(g) if start <= g.1 => g.1 = end,
            _ => groups.push((start, end)),
        }
    }
    for (start, end) in groups {
        // Line numbers (1-based) of the hunk's first line on each side.
        let before = &script[..start];
        let old_start = before.iter().filter(|e| !matches!(e, Edit::Add(_))).count();
        let new_start = before.iter().filter(|e| !matches!(e, Edit::Del(_))).count();
        let hunk = &script[start..end];
        let old_len = hunk.iter().filter(|e| !matches!(e, Edit::Add(_))).count();
        let new_len = hunk.iter().filter(|e| !matches!(e, Edit::Del(_))).count();
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            old_start + usize::from(old_len > 0),
            old_len,
            new_start + usize::from(new_len > 0),
            new_len
        ));
        for e in hunk {
            let (sign, line) = match e {
                Edit::Same(l) => (' ', l),
                Edit::Del(l) => ('-', l),
                Edit::Add(l) => ('+', l),
            };
            out.push(sign);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_give_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), "");
    }

    #[test]
    fn one_changed_line_has_context_and_numbers() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n";
        let d = unified(old, new, "running", "rendered");
        assert_eq!(
            d,
            "--- running\n+++ rendered\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn far_apart_changes_make_two_hunks_and_additions_count() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("2\n", "2\nnew\n").replace("18\n", "");
        let d = unified(&old, &new, "a", "b");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("+new\n") && d.contains("-18\n"), "{d}");
        assert!(d.contains("@@ -1,5 +1,6 @@"), "{d}");
    }

    #[test]
    fn added_to_empty() {
        assert_eq!(
            unified("", "x\n", "a", "b"),
            "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n"
        );
    }
}

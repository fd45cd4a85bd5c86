//! Line diffs of configuration files, shown before they are changed: unified format
//! (`@@ -a,b +c,d @@`, then ` `, `-` and `+` lines), a little context around each change.

const CONTEXT: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Del,
    Add,
}

/// The changes from `before` to `after`; empty when they are equal.
pub fn unified(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let ops = script(&a, &b);
    if ops.iter().all(|(op, _, _)| *op == Op::Keep) {
        return String::new();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < ops.len() {
        if ops[i].0 == Op::Keep {
            i += 1;
            continue;
        }
        // A hunk: from CONTEXT lines before this change to CONTEXT lines after the last
        // change that is at most 2*CONTEXT unchanged lines further.
        let start = i.saturating_sub(CONTEXT);
        let mut end = i;
        let mut j = i;
        while j < ops.len() {
            if ops[j].0 != Op::Keep {
                end = j;
                j += 1;
                continue;
            }
            let run = ops[j..].iter().take_while(|o| o.0 == Op::Keep).count();
            if j + run < ops.len() && run <= 2 * CONTEXT {
                j += run;
            } else {
                break;
            }
        }
        let stop = (end + 1 + CONTEXT).min(ops.len());
        let hunk = &ops[start..stop];
        let a_start = hunk.iter().find(|o| o.0 != Op::Add).map(|o| o.1 + 1).unwrap_or(ops[start].1);
        let b_start = hunk.iter().find(|o| o.0 != Op::Del).map(|o| o.2 + 1).unwrap_or(ops[start].2);
        let a_len = hunk.iter().filter(|o| o.0 != Op::Add).count();
        let b_len = hunk.iter().filter(|o| o.0 != Op::Del).count();
        out.push_str(&format!("@@ -{a_start},{a_len} +{b_start},{b_len} @@\n"));
        for (op, ai, bi) in hunk {
            match op {
                Op::Keep => out.push_str(&format!(" {}\n", a[*ai])),
                Op::Del => out.push_str(&format!("-{}\n", a[*ai])),
                Op::Add => out.push_str(&format!("+{}\n", b[*bi])),
            }
        }
        i = stop;
    }
    out
}

/// The edit script as (op, index in a, index in b); for an addition the a index is where it
/// goes, for a deletion the b index likewise.
fn script(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize)> {
    // Longest common subsequence table; configuration files are small.
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((Op::Keep, i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions first, as diff(1) shows a replaced line.
            ops.push((Op::Del, i, j));
            i += 1;
        } else {
            ops.push((Op::Add, i, j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n"), "");
    }

    #[test]
    fn an_appended_block_shows_its_context() {
        let before = "1\n2\n3\n4\n5\n";
        let after = "1\n2\n3\n4\n5\n\nanchor \"almavmm\"\n";
        assert_eq!(unified(before, after), "@@ -4,2 +4,4 @@\n 4\n 5\n+\n+anchor \"almavmm\"\n");
    }

    #[test]
    fn a_replaced_line_in_the_middle() {
        let before = "a\nb\nnet.inet.ip.forwarding=0\nc\nd\ne\n";
        let after = "a\nb\nnet.inet.ip.forwarding=1\nc\nd\ne\n";
        assert_eq!(
            unified(before, after),
            "@@ -1,5 +1,5 @@\n a\n b\n-net.inet.ip.forwarding=0\n+net.inet.ip.forwarding=1\n c\n d\n"
        );
    }

    #[test]
    fn distant_changes_make_two_hunks_and_a_new_file_is_all_additions() {
        let before = "x\n1\n2\n3\n4\n5\n6\ny\n";
        let after = "X\n1\n2\n3\n4\n5\n6\nY\n";
        assert_eq!(unified(before, after), "@@ -1,3 +1,3 @@\n-x\n+X\n 1\n 2\n@@ -6,3 +6,3 @@\n 5\n 6\n-y\n+Y\n");
        assert_eq!(unified("", "a\nb\n"), "@@ -0,0 +1,2 @@\n+a\n+b\n");
    }
}

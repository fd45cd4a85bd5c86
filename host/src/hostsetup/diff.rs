//! Line diffs of configuration files, shown before they are changed: unified format
//! (`@@ -a,b +c,d @@`, then ` `, `-` and `+` lines), a little context around each change.
//! A range of one line is written without its length (`@@ -1 +1 @@`), as diff(1) does.

const CONTEXT: usize = 2;

/// The changes from `before` to `after`; empty when they are equal.
pub fn unified(before: &str, after: &str) -> String {
    // Lines without their endings: a file that gains or loses its final newline, or has
    // CRLF endings, shows only the lines that really changed.
    let (a, b): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    similar::TextDiff::from_slices(&a, &b).unified_diff().context_radius(CONTEXT).to_string()
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
    fn a_one_line_file_shows_its_ranges_as_diff_1_does() {
        assert_eq!(
            unified("net.inet.ip.forwarding=0\n", "net.inet.ip.forwarding=1\n"),
            "@@ -1 +1 @@\n-net.inet.ip.forwarding=0\n+net.inet.ip.forwarding=1\n"
        );
    }

    #[test]
    fn line_endings_alone_are_not_a_change() {
        assert_eq!(unified("a\r\nb\r\n", "a\nb\n"), "");
        assert_eq!(unified("a\nb", "a\nb\n"), "");
        assert_eq!(unified("a\nb", "a\nb\nc\n"), "@@ -1,2 +1,3 @@\n a\n b\n+c\n");
    }

    #[test]
    fn distant_changes_make_two_hunks_and_a_new_file_is_all_additions() {
        let before = "x\n1\n2\n3\n4\n5\n6\ny\n";
        let after = "X\n1\n2\n3\n4\n5\n6\nY\n";
        assert_eq!(unified(before, after), "@@ -1,3 +1,3 @@\n-x\n+X\n 1\n 2\n@@ -6,3 +6,3 @@\n 5\n 6\n-y\n+Y\n");
        assert_eq!(unified("", "a\nb\n"), "@@ -0,0 +1,2 @@\n+a\n+b\n");
    }
}

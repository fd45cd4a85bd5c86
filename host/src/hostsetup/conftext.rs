//! Reading pf.conf and vm.conf the way their lexers do, just enough to find and edit whole
//! statements while leaving every other byte of the file as it was.
//!
//! Both files use the OpenBSD parse.y lexer (sbin/pfctl/parse.y, usr.sbin/vmd/parse.y):
//! `#` starts a comment that runs to the end of the line, a backslash before the newline
//! joins the next line (also inside a comment: "the comment is effective until the end of the
//! entire block", vm.conf(5)), and `"…"` or `'…'` quote a string in which `\"` is a quote.

/// One statement: the physical lines it spans and its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Index of its first physical line.
    pub first: usize,
    /// Index of its last physical line (after backslash continuations).
    pub last: usize,
    pub words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// Without its quotes.
    pub text: String,
    pub quoted: bool,
}

impl Statement {
    /// The words' texts, for matching.
    pub fn texts(&self) -> Vec<&str> {
        self.words.iter().map(|w| w.text.as_str()).collect()
    }
}

/// The text's physical lines, each with its line terminator, so that joining them gives the
/// text back byte for byte.
pub fn physical_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// Every statement that has at least one word.
pub fn statements(text: &str) -> Vec<Statement> {
    let lines = physical_lines(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let first = i;
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quoted_word = false;
        let mut quote: Option<char> = None;
        let mut comment = false;
        let finish = |word: &mut String, quoted: &mut bool, words: &mut Vec<Word>| {
            if !word.is_empty() || *quoted {
                words.push(Word { text: std::mem::take(word), quoted: *quoted });
            }
            *quoted = false;
        };
        loop {
            let line = lines[i].strip_suffix('\n').unwrap_or(lines[i]);
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (body, continued) = match line.strip_suffix('\\') {
                Some(b) => (b, i + 1 < lines.len()),
                None => (line, false),
            };
            let mut chars = body.chars().peekable();
            while let Some(c) = chars.next() {
                if comment {
                    continue;
                }
                match quote {
                    Some(q) => {
                        if c == '\\' && chars.peek() == Some(&q) {
                            word.push(q);
                            chars.next();
                        } else if c == q {
                            quote = None;
                            finish(&mut word, &mut quoted_word, &mut words);
                        } else {
                            word.push(c);
                        }
                    }
                    None => match c {
                        '#' => {
                            finish(&mut word, &mut quoted_word, &mut words);
                            comment = true;
                        }
                        '"' | '\'' => {
                            finish(&mut word, &mut quoted_word, &mut words);
                            quote = Some(c);
                            quoted_word = true;
                        }
                        c if c.is_whitespace() => finish(&mut word, &mut quoted_word, &mut words),
                        c => word.push(c),
                    },
                }
            }
            if continued {
                // The lexer turns the escaped newline into nothing inside a string and
                // into a blank between words.
                if quote.is_none() {
                    finish(&mut word, &mut quoted_word, &mut words);
                }
                i += 1;
                continue;
            }
            finish(&mut word, &mut quoted_word, &mut words);
            break;
        }
        if !words.is_empty() {
            out.push(Statement { first, last: i, words });
        }
        i += 1;
    }
    out
}

/// The text with physical lines `first..=last` replaced by `with` (which carries its own
/// line terminators) and everything else unchanged.
pub fn replace_lines(text: &str, first: usize, last: usize, with: &str) -> String {
    let lines = physical_lines(text);
    let mut out = String::with_capacity(text.len() + with.len());
    for l in &lines[..first] {
        out.push_str(l);
    }
    out.push_str(with);
    for l in &lines[last + 1..] {
        out.push_str(l);
    }
    out
}

/// `text` followed by `addition`, with a newline between them if `text` lacks its last one.
pub fn append(text: &str, addition: &str) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(addition);
    out
}

/// Quote a string for pf.conf or vm.conf, refusing what their lexers cannot carry.
pub fn quote(s: &str) -> Option<String> {
    if s.contains(['"', '\\', '\n', '\r', '\0']) { None } else { Some(format!("\"{s}\"")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<Vec<String>> {
        statements(text).iter().map(|s| s.words.iter().map(|w| w.text.clone()).collect()).collect()
    }

    #[test]
    fn words_quotes_and_comments() {
        let t = "anchor \"almavmm\" # ours\n# anchor \"no\"\n\nload anchor almavmm from '/etc/a b.conf'\n";
        assert_eq!(texts(t), [vec!["anchor", "almavmm"], vec!["load", "anchor", "almavmm", "from", "/etc/a b.conf"]]);
        let s = statements(t);
        assert_eq!((s[0].first, s[0].last, s[1].first, s[1].last), (0, 0, 3, 3));
        assert!(s[0].words[1].quoted && !s[1].words[2].quoted);
    }

    #[test]
    fn backslash_joins_lines_even_in_comments() {
        let t = "pass in \\\n  proto tcp\n# off \\\nanchor \"hidden\"\nblock\n";
        let s = statements(t);
        assert_eq!(texts(t), [vec!["pass", "in", "proto", "tcp"], vec!["block"]]);
        assert_eq!((s[0].first, s[0].last, s[1].first), (0, 1, 4));
    }

    #[test]
    fn escaped_quotes_stay_in_the_word() {
        assert_eq!(texts(r#"include "/etc/a\"b""#), [vec!["include", "/etc/a\"b"]]);
    }

    #[test]
    fn edits_keep_other_bytes() {
        let t = "a\r\nb\nc";
        assert_eq!(physical_lines(t).concat(), t);
        assert_eq!(replace_lines(t, 1, 1, "B\n"), "a\r\nB\nc");
        assert_eq!(append("x", "y\n"), "x\ny\n");
        assert_eq!(append("x\n", "y\n"), "x\ny\n");
        assert_eq!(append("", "y\n"), "y\n");
        assert_eq!(quote("/a b"), Some("\"/a b\"".into()));
        assert_eq!(quote("/a\"b"), None);
    }
}

//! Plain help text (as clap holds it) turned into mdoc(7) source lines.
//!
//! The rules followed, from mdoc(7), roff(7) and mandoc's validator (mdoc_validate.c,
//! roff.c):
//! - a text line starting with `.` or `'` would be a control line: it gets `\&` first;
//!   a backslash is written `\e`; tabs in filled text are warned about, so they become
//!   spaces;
//! - a new sentence starts on a new line (mandoc warns when `. ` is followed by a capital
//!   letter within a line);
//! - blank lines are not paragraph breaks (`.Pp` is), and `.Pp` right before a display or
//!   list, or at the start or end of one, is dropped with a warning, so it is not written;
//! - on a macro line, a word that is a callable macro name or a lone delimiter character
//!   would be taken as such, so it gets `\&` first; `"` is written `\(dq`;
//! - `\-` is the minus-hyphen that options and commands need when copied from the page;
//!   a plain `-` may render as a typographic hyphen (groff), so every dash in code and each
//!   dash that starts an option-like word in prose is written `\-`;
//! - characters outside ASCII are written as `\[uXXXX]` (or a named escape).
//!
//! In the help text, a `code span` in backticks becomes a `.Ql` line and lines indented by
//! two or more spaces (examples, formats) become a literal display.

/// Macros mdoc parses when they appear as words on a macro line (mdoc(7), "MACRO SYNTAX").
const CALLABLE: &[&str] = &[
    "Ac", "Ad", "An", "Ao", "Ap", "Aq", "Ar", "At", "Bc", "Bo", "Bq", "Brc", "Bro", "Brq", "Bsx", "Bx", "Cd", "Cm",
    "Dc", "Do", "Dq", "Dv", "Dx", "Ec", "Em", "En", "Eo", "Er", "Es", "Ev", "Fa", "Fc", "Fl", "Fn", "Fo", "Fr", "Ft",
    "Fx", "Ic", "Li", "Lk", "Ms", "Mt", "Nm", "No", "Ns", "Nx", "Oc", "Oo", "Op", "Ox", "Pa", "Pc", "Pf", "Po", "Pq",
    "Qc", "Ql", "Qo", "Qq", "Sc", "So", "Sq", "St", "Sx", "Sy", "Ta", "Tn", "Ux", "Va", "Vt", "Xc", "Xo", "Xr",
];

/// Characters mdoc treats as delimiters when they stand alone on a macro line.
const DELIMITERS: &str = ".,:;()[]?!|";

/// Punctuation that closes a `.Ql` (written after it on the same macro line).
const CLOSING: &str = ".,:;)?!";

fn non_ascii(c: char) -> String {
    match c {
        '…' => "...".into(),
        '±' => "\\(+-".into(),
        '→' => "\\(->".into(),
        '–' => "\\(en".into(),
        '—' => "\\(em".into(),
        '‘' => "\\(oq".into(),
        '’' => "\\(cq".into(),
        '“' => "\\(lq".into(),
        '”' => "\\(rq".into(),
        '×' => "\\(mu".into(),
        c => format!("\\[u{:04X}]", c as u32),
    }
}

/// A dash that starts an option-like word (`-v`, `--all`) or continues one.
fn option_dash(chars: &[char], i: usize) -> bool {
    let prev = i.checked_sub(1).map(|j| chars[j]);
    let next = chars.get(i + 1).copied();
    let starts_word = matches!(prev, None | Some(' ' | '(' | '[' | '-' | '\'' | '"' | '='));
    starts_word && next.is_some_and(|n| n.is_ascii_alphanumeric() || n == '-')
}

fn escape_chars(s: &str, code: bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut o = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '\\' => o.push_str("\\e"),
            '-' if code || option_dash(&chars, i) => o.push_str("\\-"),
            '\t' => o.push(' '),
            c if !c.is_ascii() => o.push_str(&non_ascii(c)),
            c => o.push(c),
        }
    }
    o
}

/// One word of a macro line holding code (a command, a value name, a `Ql` span): every
/// dash is a minus.
pub fn code_arg(word: &str) -> String {
    macro_word(word, true)
}

/// One word of a macro line holding prose (`Nd`).
pub fn prose_arg(word: &str) -> String {
    macro_word(word, false)
}

fn macro_word(word: &str, code: bool) -> String {
    let o = escape_chars(word, code).replace('"', "\\(dq");
    let delimiter = word.len() == 1 && DELIMITERS.contains(word);
    if CALLABLE.contains(&word) || delimiter { format!("\\&{o}") } else { o }
}

/// Words of `s` as macro arguments.
pub fn code_args(s: &str) -> String {
    s.split_whitespace().map(code_arg).collect::<Vec<_>>().join(" ")
}

pub fn prose_args(s: &str) -> String {
    s.split_whitespace().map(prose_arg).collect::<Vec<_>>().join(" ")
}

/// `s` with a full stop at the end unless it already ends a sentence (clap drops the
/// trailing period of one-line doc comments) or ends with a literal block.
pub fn sentence(s: &str) -> String {
    let s = s.trim_end();
    let last_line_literal = s.lines().last().is_some_and(|l| l.starts_with("  ") || l.starts_with('\t'));
    if s.is_empty() || last_line_literal || s.ends_with(['.', '!', '?', ':']) { s.to_string() } else { format!("{s}.") }
}

/// Help text (paragraphs, indented literal lines, `code` spans) as mdoc lines.
pub fn text(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in s.split("\n\n").map(|p| p.trim_matches('\n')).filter(|p| !p.trim().is_empty()) {
        if !out.is_empty() {
            out.push(".Pp".to_string());
        }
        let (mut flow, mut lit) = (Vec::new(), Vec::new());
        for line in para.lines() {
            if line.starts_with("  ") || line.starts_with('\t') {
                if !flow.is_empty() {
                    out.extend(flowing(&flow.join(" ")));
                    flow.clear();
                }
                lit.push(line);
            } else {
                if !lit.is_empty() {
                    out.extend(literal(&lit));
                    lit.clear();
                }
                flow.push(line.trim());
            }
        }
        if !flow.is_empty() {
            out.extend(flowing(&flow.join(" ")));
        }
        if !lit.is_empty() {
            out.extend(literal(&lit));
        }
    }
    out
}

/// Indented lines as a literal display, dedented.
fn literal(lines: &[&str]) -> Vec<String> {
    let indent = lines.iter().map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    let mut out = vec![".Bd -literal -offset indent".to_string()];
    for l in lines {
        let body = escape_chars(l.get(indent..).unwrap_or("").trim_end(), true);
        out.push(if body.starts_with('.') || body.starts_with('\'') { format!("\\&{body}") } else { body });
    }
    out.push(".Ed".to_string());
    out
}

/// A piece of filled text: prose, or something that gets a macro line of its own.
#[derive(Debug, PartialEq)]
enum Piece {
    Prose(String),
    /// The macro line without its delimiters: `.Ql code`, `.Ox`, `.Xr vmd 8`.
    Macro(String),
}

/// Split prose at the words that have a macro: `OpenBSD` (`.Ox`, as mandoc suggests) and
/// manual references such as `vmd(8)` (`.Xr`).
fn macro_words(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut prose = String::new();
    for (i, word) in s.split(' ').enumerate() {
        if i > 0 {
            prose.push(' ');
        }
        let open = usize::from(word.starts_with('('));
        let trimmed = word[open..].trim_end_matches(|c| ".,:;!?".contains(c));
        let unparenthesised = trimmed.trim_end_matches(')');
        let (core, mac) = if let Some((name, sec)) = xr(trimmed.strip_suffix("'s").unwrap_or(trimmed)) {
            (format!("{name}({sec})"), Some(format!(".Xr {} {sec}", code_arg(name))))
        } else if unparenthesised.strip_suffix("'s").unwrap_or(unparenthesised) == "OpenBSD" {
            ("OpenBSD".to_string(), Some(".Ox".to_string()))
        } else {
            (String::new(), None)
        };
        match mac {
            Some(m) => {
                prose.push_str(&word[..open]);
                out.push(Piece::Prose(std::mem::take(&mut prose)));
                out.push(Piece::Macro(m));
                prose.push_str(&word[open + core.len()..]);
            }
            None => prose.push_str(word),
        }
    }
    out.push(Piece::Prose(prose));
    out
}

/// `name(N)`, a manual page reference.
fn xr(word: &str) -> Option<(&str, char)> {
    let (name, rest) = word.split_once('(')?;
    let mut sec = rest.chars();
    let (Some(n), Some(')'), None) = (sec.next(), sec.next(), sec.next()) else { return None };
    let name_ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    (name_ok && ('1'..='9').contains(&n)).then_some((name, n))
}

/// Filled text as mdoc lines: prose, one sentence per line (wrapped), and a macro line for
/// each `code` span (`.Ql`), OpenBSD (`.Ox`) and manual reference (`.Xr`), carrying the
/// punctuation around it.
fn flowing(s: &str) -> Vec<String> {
    let parts: Vec<&str> = s.split('`').collect();
    // An unpaired backtick: no code spans, the text as it is.
    let balanced = parts.len() % 2 == 1;
    let mut pieces = Vec::new();
    if !balanced {
        pieces = macro_words(s);
    } else {
        for (i, part) in parts.iter().enumerate() {
            if i % 2 == 0 {
                pieces.extend(macro_words(part));
            } else if part.trim().is_empty() {
                pieces.push(Piece::Prose(format!("`{part}`")));
            } else {
                pieces.push(Piece::Macro(format!(".Ql {}", code_args(part))));
            }
        }
    }
    let mut out = Vec::new();
    let mut carry = String::new();
    let mut iter = pieces.into_iter().peekable();
    while let Some(piece) = iter.next() {
        let mac = match piece {
            Piece::Prose(p) => {
                carry.push_str(&p);
                continue;
            }
            Piece::Macro(m) => m,
        };
        // Opening parenthesis right before it goes on its macro line, first.
        let open = carry.ends_with('(') && (carry.len() == 1 || carry[..carry.len() - 1].ends_with(' '));
        if open {
            carry.pop();
        }
        out.extend(prose(&carry));
        carry.clear();
        let mut line = match (open, mac.split_once(' ')) {
            (false, _) => mac,
            (true, Some((name, args))) => format!("{name} ( {args}"),
            (true, None) => format!("{mac} ("),
        };
        // A possessive, then closing punctuation right after it, when a space or the end
        // follows.
        if let Some(Piece::Prose(next)) = iter.peek_mut() {
            if let Some(rest) = next.strip_prefix("'s")
                && !rest.starts_with(|c: char| c.is_alphanumeric())
            {
                line.push_str(" Ns 's");
                *next = rest.to_string();
            }
            let close_len = next.chars().take_while(|c| CLOSING.contains(*c)).count();
            let after = &next[close_len..];
            if close_len > 0 && (after.is_empty() || after.starts_with(' ')) {
                for c in next[..close_len].chars() {
                    line.push(' ');
                    line.push(c);
                }
                *next = after.to_string();
            }
            *next = next.trim_start().to_string();
        }
        out.push(line);
    }
    out.extend(prose(&carry));
    out
}

/// Prose without code spans: one sentence per line, each wrapped to 78 columns (mandoc
/// notes text lines longer than 80 bytes).
fn prose(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sentence in split_sentences(s) {
        for chunk in wrap(&escape_chars(sentence.trim(), false), 78) {
            out.push(if chunk.starts_with('.') || chunk.starts_with('\'') { format!("\\&{chunk}") } else { chunk });
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Break at spaces so lines stay within `width` where words allow, never after a word
/// ending in a full stop (mandoc would take that for the end of a sentence).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width && !cur.ends_with('.') {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Break after `.`, `?` or `!` (and any closing quote or parenthesis) when a space and a
/// capital letter follow: mandoc's end-of-sentence rule.
fn split_sentences(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        cur.push(chars[i]);
        if matches!(chars[i], '.' | '?' | '!') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j], ')' | '"' | '\'') {
                cur.push(chars[j]);
                j += 1;
            }
            let mut k = j;
            while k < chars.len() && chars[k] == ' ' {
                k += 1;
            }
            if k > j && chars.get(k).is_some_and(|c| c.is_ascii_uppercase()) {
                lines.push(std::mem::take(&mut cur).trim().to_string());
                i = k;
                continue;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        lines.push(cur.trim().to_string());
    }
    lines
}

/// Drop `.Pp` where mandoc would skip it (and warn): at the start or end of a section,
/// item or display, before a list or display, or twice in a row.
pub fn tidy(lines: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        if l == ".Pp" {
            let next = lines.get(i + 1).map(String::as_str).unwrap_or(".Sh");
            let prev = out.last().map(String::as_str).unwrap_or(".Sh");
            let useless_after = [".Sh", ".Ss", ".Pp", ".It", ".Xc", ".Bl", ".Bd"].iter().any(|m| starts_macro(prev, m));
            let useless_before =
                [".Sh", ".Ss", ".Pp", ".It", ".El", ".Ed", ".Bl", ".Bd"].iter().any(|m| starts_macro(next, m));
            if useless_after || useless_before {
                continue;
            }
        }
        out.push(l.clone());
    }
    out
}

fn starts_macro(line: &str, m: &str) -> bool {
    line == m || line.strip_prefix(m).is_some_and(|r| r.starts_with(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_line(s: &str) -> String {
        let lines = text(s);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].clone()
    }

    #[test]
    fn control_characters_at_line_start_and_backslashes_are_escaped() {
        assert_eq!(text_line(".hidden"), "\\&.hidden");
        assert_eq!(text_line("'quoted'"), "\\&'quoted'");
        assert_eq!(text_line("a\\b"), "a\\eb");
        assert_eq!(text_line("±2 s, ~. to leave"), "\\(+-2 s, ~. to leave");
    }

    #[test]
    fn option_dashes_are_minus_signs_and_hyphens_stay() {
        assert_eq!(text_line("first-boot, -v and --all (-q)"), "first-boot, \\-v and \\-\\-all (\\-q)");
        assert_eq!(code_arg("almavmm-host"), "almavmm\\-host");
        assert_eq!(text_line("a - b"), "a - b");
    }

    #[test]
    fn macro_names_and_lone_delimiters_are_protected_on_macro_lines() {
        assert_eq!(code_args("No such | thing"), "\\&No such \\&| thing");
        assert_eq!(code_args("say \"hi\""), "say \\(dqhi\\(dq");
    }

    #[test]
    fn sentences_start_new_lines() {
        assert_eq!(
            text("One thing. Two things (e.g. 2G). Three? Yes."),
            ["One thing.", "Two things (e.g. 2G).", "Three?", "Yes."]
        );
    }

    #[test]
    fn code_spans_become_ql_lines_with_their_punctuation() {
        assert_eq!(
            text("Makes `ssh NAME.almavmm` work (see `--print`). Then `a`, `b`."),
            ["Makes", ".Ql ssh NAME.almavmm", "work (see", ".Ql \\-\\-print ) .", "Then", ".Ql a ,", ".Ql b ."]
        );
        assert_eq!(text("(`x`)"), [".Ql ( x )"]);
        assert_eq!(text("odd ` tick"), ["odd ` tick"]);
    }

    #[test]
    fn paragraphs_and_indented_lines() {
        assert_eq!(
            text("Intro:\n  a --b\n  .c\nafter.\n\nNext."),
            ["Intro:", ".Bd -literal -offset indent", "a \\-\\-b", "\\&.c", ".Ed", "after.", ".Pp", "Next."]
        );
    }

    #[test]
    fn sentence_adds_a_full_stop_only_when_missing() {
        assert_eq!(sentence("Print help"), "Print help.");
        assert_eq!(sentence("Done."), "Done.");
        assert_eq!(sentence("Example:\n  x"), "Example:\n  x");
    }

    #[test]
    fn useless_paragraph_breaks_are_dropped() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            tidy(l(&[".Sh A", ".Pp", "x", ".Pp", ".Bd -literal", "y", ".Ed", ".Pp", "z"])),
            l(&[".Sh A", "x", ".Bd -literal", "y", ".Ed", ".Pp", "z"])
        );
    }
}

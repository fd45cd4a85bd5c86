//! The manual pages, `almavmm-host.1` and `almavmm-agent.8`, in mdoc(7) (mandoc's own
//! language, what OpenBSD's man(1) reads), rendered from the clap definitions so they
//! never drift from `--help`: every command that is not hidden, every option and argument
//! with its help, possible values and default, and each command's after-help text. What
//! clap has no field for (environment, files, exit status, examples, see also) is written
//! by hand in [`hand`].

mod hand;
pub mod mdoc;

use clap::{Arg, ArgAction, Command, CommandFactory};

use self::mdoc::{code_arg, code_args, prose_args, sentence, text, tidy};

/// One manual page.
#[derive(Debug)]
pub struct Page {
    pub name: &'static str,
    pub section: u8,
    pub text: String,
}

impl Page {
    /// `almavmm-host.1`
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.section)
    }
}

pub fn host_command() -> Command {
    almavmm_host::cli::Cli::command()
}

pub fn agent_command() -> Command {
    almavmm_agent::cli::Cli::command()
}

/// Both pages, dated `date` (as `.Dd` wants it: "November 26, 2026").
pub fn pages(date: &str) -> [Page; 2] {
    [
        Page { name: "almavmm-host", section: 1, text: render(host_command(), &hand::HOST, date) },
        Page { name: "almavmm-agent", section: 8, text: render(agent_command(), &hand::AGENT, date) },
    ]
}

/// The date of the commit being built (so equal sources give equal pages), else today.
pub fn date() -> String {
    let ymd = crate::limited::limited("git", std::time::Duration::from_secs(60))
        .args(["log", "-1", "--format=%cs"])
        .run()
        .ok()
        .and_then(|o| parse_ymd(o.stdout.trim()))
        .unwrap_or_else(today);
    mdoc_date(ymd)
}

fn parse_ymd(s: &str) -> Option<(i64, u32, u32)> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

fn today() -> (i64, u32, u32) {
    let secs = almavmm_shared::clock::unix_now();
    civil((secs / 86_400) as i64)
}

fn civil(days: i64) -> (i64, u32, u32) {
    let (y, m, d) = almavmm_shared::calendar::civil_from_days(days);
    (y, m as u32, d as u32)
}

fn mdoc_date((y, m, d): (i64, u32, u32)) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format!("{} {d}, {y}", MONTHS[(m - 1) as usize])
}

/// The arguments a command documents itself: not hidden, not the generated `--help` and
/// `--version`, and (below the top) not the global ones, which the top documents.
fn own_args(cmd: &Command, top: bool) -> Vec<&Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter(|a| top || (!a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version")))
        .collect()
}

/// Subcommands that are documented: not hidden, not clap's generated `help`.
fn documented_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn value_name(a: &Arg) -> String {
    a.get_value_names()
        .and_then(|v| v.first())
        .map(|s| s.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
}

fn takes_value(a: &Arg) -> bool {
    a.get_action().takes_values()
}

/// `Fl v`, `Fl -memory Ar MEMORY` or `Ar NAME`, as the synopsis spells an argument.
fn synopsis_words(a: &Arg) -> String {
    if a.is_positional() {
        let many = a.get_num_args().is_some_and(|r| r.max_values() > 1);
        return format!("Ar {}{}", code_arg(&value_name(a)), if many { " ..." } else { "" });
    }
    let flag = match (a.get_short(), a.get_long()) {
        (Some(s), _) => format!("Fl {s}"),
        (None, Some(l)) => format!("Fl -{l}"),
        (None, None) => format!("Ar {}", code_arg(&value_name(a))),
    };
    if takes_value(a) { format!("{flag} Ar {}", code_arg(&value_name(a))) } else { flag }
}

/// The head of an argument's list item: every spelling, then the value.
fn item_head(a: &Arg) -> String {
    if a.is_positional() {
        return format!(".It Ar {}", code_arg(&value_name(a)));
    }
    let mut spellings = Vec::new();
    if let Some(s) = a.get_short() {
        spellings.push(format!("Fl {s}"));
    }
    if let Some(l) = a.get_long() {
        spellings.push(format!("Fl -{l}"));
    }
    let mut head = format!(".It {}", spellings.join(" , "));
    if takes_value(a) {
        head.push_str(&format!(" Ar {}", code_arg(&value_name(a))));
    }
    head
}

/// `[default: X]` written into a help text by hand becomes a sentence, like clap's own.
fn split_default(help: &str) -> (String, Option<String>) {
    if let Some(at) = help.rfind("[default: ")
        && help.trim_end().ends_with(']')
    {
        let value = help[at + "[default: ".len()..help.trim_end().len() - 1].to_string();
        return (help[..at].trim_end().to_string(), Some(value));
    }
    (help.to_string(), None)
}

fn arg_item(a: &Arg) -> Vec<String> {
    let mut o = vec![item_head(a)];
    let help = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
    let (help, written_default) = split_default(&help);
    o.extend(text(&sentence(&help)));
    let values: Vec<_> = if takes_value(a) {
        a.get_possible_values().into_iter().filter(|v| !v.is_hide_set()).collect()
    } else {
        vec![]
    };
    if values.iter().any(|v| v.get_help().is_some()) {
        o.push(".Bl -tag -width Ds".into());
        for v in &values {
            o.push(format!(".It Cm {}", code_arg(v.get_name())));
            o.extend(text(&sentence(&v.get_help().map(|h| h.to_string()).unwrap_or_default())));
        }
        o.push(".El".into());
    } else if !values.is_empty() {
        o.push("It is one of".into());
        let last = values.len() - 1;
        for (i, v) in values.iter().enumerate() {
            let punct = if i == last {
                " ."
            } else if i + 1 == last {
                " or"
            } else {
                " ,"
            };
            o.push(format!(".Cm {}{punct}", code_arg(v.get_name())));
        }
    }
    let defaults: Vec<String> = a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
    let default = if takes_value(a) && !a.is_hide_default_value_set() && !defaults.is_empty() {
        Some(defaults.join(" "))
    } else {
        written_default
    };
    if let Some(d) = default {
        o.extend(text(&format!("The default is {d}.")));
    }
    if matches!(a.get_action(), ArgAction::Count) {
        o.push("It may be given more than once.".into());
    }
    if let Some(env) = a.get_env()
        && !a.is_hide_env_set()
    {
        o.push("It can also be set with".into());
        o.push(format!(".Ev {} .", code_arg(&env.to_string_lossy())));
    }
    o
}

fn commands(cmd: &Command, prefix: &[&str], o: &mut Vec<String>) {
    for sub in documented_subcommands(cmd) {
        let mut path = prefix.to_vec();
        path.push(sub.get_name());
        o.push(".It Xo".into());
        o.push(format!(".Cm {}", code_args(&path.join(" "))));
        for a in own_args(sub, false) {
            let words = synopsis_words(a);
            o.push(if a.is_required_set() { format!(".{words}") } else { format!(".Op {words}") });
        }
        if documented_subcommands(sub).next().is_some() {
            o.push(".Ar command".into());
        }
        o.push(".Xc".into());
        let about = sub.get_long_about().or(sub.get_about()).map(|s| s.to_string()).unwrap_or_default();
        o.extend(text(&sentence(&about)));
        let args = own_args(sub, false);
        if !args.is_empty() {
            o.push(".Bl -tag -width Ds".into());
            for a in args {
                o.extend(arg_item(a));
            }
            o.push(".El".into());
        }
        if let Some(after) = sub.get_after_long_help().or(sub.get_after_help()) {
            o.push(".Pp".into());
            o.extend(text(&after.to_string()));
        }
        commands(sub, &path, o);
    }
}

/// `.Nd` wants a lower-case start (unless the first word is an acronym) and no full stop.
fn name_description(about: &str) -> String {
    let about = about.trim().trim_end_matches('.');
    let mut chars = about.chars();
    let lowered = match (chars.next(), about.chars().nth(1)) {
        (Some(first), Some(second)) if !second.is_uppercase() => first.to_lowercase().chain(chars).collect(),
        _ => about.to_string(),
    };
    prose_args(&lowered)
}

fn render(mut cmd: Command, hand: &hand::Hand, date: &str) -> String {
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut o: Vec<String> = vec![
        format!(".Dd {date}"),
        format!(".Dt {} {}", name.to_uppercase(), hand.section),
        ".Os".into(),
        ".Sh NAME".into(),
        format!(".Nm {name}"),
        format!(".Nd {}", name_description(&cmd.get_about().map(|s| s.to_string()).unwrap_or_default())),
        ".Sh SYNOPSIS".into(),
        ".Nm".into(),
    ];
    let top_args = own_args(&cmd, true);
    for a in top_args.iter().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
        o.push(format!(".Op {}", synopsis_words(a)));
    }
    o.push(".Ar command".into());
    o.push(".Op Ar argument ...".into());
    o.push(".Sh DESCRIPTION".into());
    let about = cmd.get_long_about().or(cmd.get_about()).map(|s| s.to_string()).unwrap_or_default();
    o.extend(text(&sentence(&about)));
    o.extend(hand.description.lines().map(str::to_string));
    o.push(".Pp".into());
    o.push("The options are as follows:".into());
    o.push(".Bl -tag -width Ds".into());
    for a in &top_args {
        o.extend(arg_item(a));
    }
    o.push(".El".into());
    o.push(".Pp".into());
    o.push("The commands are as follows:".into());
    o.push(".Bl -tag -width Ds".into());
    commands(&cmd, &[], &mut o);
    o.push(".El".into());
    for (title, body) in [
        ("ENVIRONMENT", hand.environment),
        ("FILES", hand.files),
        ("EXIT STATUS", hand.exit_status),
        ("EXAMPLES", hand.examples),
        ("SEE ALSO", hand.see_also),
    ] {
        o.push(format!(".Sh {title}"));
        o.extend(body.trim().lines().map(str::to_string));
    }
    let mut page = tidy(o).join("\n");
    page.push('\n');
    page
}

/// What of `cmd` a page does not show: commands (by their words) and arguments (as
/// `COMMAND --long`, `COMMAND -s` or `COMMAND ARG`, COMMAND empty for the top level), each
/// looked for as the list item the reader would find it under.
pub fn missing_from(mut cmd: Command, page: &str) -> Vec<String> {
    cmd.build();
    let unescape = |s: &str| s.replace("\\-", "-").replace("\\&", "");
    // The top level's items lie before the first command item; each command's after its own.
    let mut blocks: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    let mut lines = page.lines().peekable();
    while let Some(l) = lines.next() {
        if l == ".It Xo"
            && let Some(cm) = lines.peek().and_then(|n| n.strip_prefix(".Cm "))
        {
            blocks.push((unescape(cm), Vec::new()));
            continue;
        }
        if let Some(head) = l.strip_prefix(".It ") {
            blocks.last_mut().expect("a first block").1.push(unescape(head));
        }
    }
    let mut missing = Vec::new();
    let mut check = |path: &str, c: &Command, top: bool| {
        let Some((_, items)) = blocks.iter().find(|(p, _)| p == path) else {
            missing.push(path.to_string());
            return;
        };
        for a in own_args(c, top) {
            let spellings: Vec<(String, String)> = if a.is_positional() {
                vec![("Ar".into(), value_name(a))]
            } else {
                a.get_short()
                    .map(|s| ("Fl".to_string(), s.to_string()))
                    .into_iter()
                    .chain(a.get_long().map(|l| ("Fl".to_string(), format!("-{l}"))))
                    .collect()
            };
            for (mac, word) in spellings {
                let shown = items.iter().any(|head| {
                    head.split_whitespace().collect::<Vec<_>>().windows(2).any(|w| w == [mac.as_str(), word.as_str()])
                });
                if !shown {
                    let spelled = if mac == "Fl" { format!("-{word}") } else { word.clone() };
                    missing.push(format!("{path} {spelled}").trim_start().to_string());
                }
            }
        }
    };
    check("", &cmd, true);
    fn walk<'a>(c: &'a Command, prefix: &str, out: &mut Vec<(String, &'a Command)>) {
        for sub in documented_subcommands(c) {
            let path = format!("{prefix} {}", sub.get_name()).trim_start().to_string();
            out.push((path.clone(), sub));
            walk(sub, &path, out);
        }
    }
    let mut subs = Vec::new();
    walk(&cmd, "", &mut subs);
    for (path, sub) in subs {
        check(&path, sub, false);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "November 26, 2026";

    fn page(name: &str) -> String {
        pages(DATE).into_iter().find(|p| p.name == name).unwrap().text
    }

    #[test]
    fn every_command_option_and_argument_is_on_the_pages() {
        for (cmd, name) in [(host_command(), "almavmm-host"), (agent_command(), "almavmm-agent")] {
            assert_eq!(missing_from(cmd, &page(name)), Vec::<String>::new(), "{name}");
        }
    }

    /// Every documented argument has a help text for its list item (clap shows nothing
    /// else for an argument without one, and neither would the page).
    #[test]
    fn every_documented_argument_has_help() {
        fn walk(c: &Command, top: bool, path: &str, out: &mut Vec<String>) {
            for a in own_args(c, top) {
                if a.get_long_help().or(a.get_help()).is_none_or(|h| h.to_string().trim().is_empty()) {
                    out.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in documented_subcommands(c) {
                walk(s, false, &format!("{path} {}", s.get_name()), out);
            }
        }
        for mut cmd in [host_command(), agent_command()] {
            cmd.build();
            let mut undocumented = Vec::new();
            walk(&cmd, true, cmd.get_name(), &mut undocumented);
            assert_eq!(undocumented, Vec::<String>::new());
        }
    }

    #[test]
    fn a_page_missing_an_entry_is_caught() {
        let host = page("almavmm-host");
        let without = |needle: &str| {
            let lines: Vec<&str> = host.lines().collect();
            let at =
                lines.iter().position(|l| l.starts_with(needle)).unwrap_or_else(|| panic!("{needle} not on the page"));
            let mut v = lines.clone();
            v.remove(at);
            v.join("\n")
        };
        assert_eq!(missing_from(host_command(), &without(".It Fl -disk")), ["up --disk"]);
        assert_eq!(missing_from(host_command(), &without(".It Fl q")), ["-q", "--quiet"]);
        // A command's item gone: the command, and so its arguments, are missing.
        assert!(missing_from(host_command(), &without(".Cm image fetch")).contains(&"image fetch".to_string()));
        let agent = page("almavmm-agent");
        let no_tick = agent.replace(".It Fl -tick-secs", ".It Fl -tick");
        assert_eq!(missing_from(agent_command(), &no_tick), ["watch --tick-secs"]);
    }

    #[test]
    fn hidden_commands_and_arguments_stay_off_the_pages() {
        assert!(!page("almavmm-host").contains("proxy-reaper") && !page("almavmm-host").contains("proxy\\-reaper"));
        let agent = page("almavmm-agent");
        assert!(!agent.contains("Fl -root") && !agent.contains("ALMAVMM_AGENT_ROOT"), "{agent}");
    }

    #[test]
    fn help_texts_and_defaults_reach_the_page() {
        let host = page("almavmm-host");
        let lines: Vec<&str> = host.lines().collect();
        let at = lines.iter().position(|l| l.starts_with(".It Fl -memory")).unwrap();
        assert_eq!(lines[at + 1], "Guest memory (e.g. 2G, 1536M).");
        assert_eq!(lines[at + 2], "The default is 2G.");
        // A default written into the help text by hand reads the same.
        assert!(host.contains("Cloud image to boot.\nThe default is the AlmaLinux 9 GenericCloud image."), "{host}");
        // Possible values with their help.
        assert!(host.contains(".It Cm vmd\n.Ox Ns 's\n.Xr vmd 8 ,\ndriven with\n.Xr vmctl 8 ."), "{host}");
        let agent = page("almavmm-agent");
        assert!(
            agent.contains(".It Fl -tick-secs Ar TICK_SECS\nSeconds between stall and RTC checks.\nThe default is 10.")
        );
    }

    #[test]
    fn dates_are_written_as_mdoc_wants_them() {
        assert_eq!(mdoc_date(civil(0)), "January 1, 1970");
        assert_eq!(mdoc_date(civil(20_454)), "January 1, 2026");
        assert_eq!(mdoc_date(civil(11_016)), "February 29, 2000");
        assert_eq!(parse_ymd("2026-11-26").map(mdoc_date).as_deref(), Some("November 26, 2026"));
        assert_eq!(parse_ymd("garbage"), None);
    }

    /// mandoc's linter on both pages: nothing at warning level or above. (Style notes such
    /// as "referenced manual not found" depend on the pages installed here, not on ours.)
    #[test]
    fn mandoc_lint_finds_nothing_to_warn_about() {
        if !crate::dist::have("mandoc") {
            panic!("mandoc is not installed: `cargo xtask deps --install` (Debian package mandoc)");
        }
        let dir = tempfile::tempdir().unwrap();
        // The check itself catches what it is for: a warning (mandoc's "new sentence, new
        // line") and an error (a list never closed).
        let bad = dir.path().join("bad.1");
        std::fs::write(
            &bad,
            ".Dd November 26, 2026\n.Dt BAD 1\n.Os\n.Sh NAME\n.Nm bad\n.Nd bad\n.Sh DESCRIPTION\nOne. Two.\n.Bl -tag\n",
        )
        .unwrap();
        let findings = crate::dist::lint(&bad).unwrap().join("\n");
        assert!(findings.contains("WARNING: new sentence, new line") && findings.contains("ERROR"), "{findings}");
        for p in pages(DATE) {
            let path = dir.path().join(p.file_name());
            std::fs::write(&path, &p.text).unwrap();
            let findings = crate::dist::lint(&path).unwrap();
            assert!(findings.is_empty(), "{}:\n{}", p.file_name(), findings.join("\n"));
        }
    }
}

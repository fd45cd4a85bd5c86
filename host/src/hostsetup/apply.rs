//! Showing and carrying out a plan. Everything it will do is printed as it goes (with
//! `dry_run`, only printed): each file change as a diff, each command as a shell line.

use std::io::Write;
use std::path::Path;

use almavmm_shared::runner::{Cmd, shell_quote};

use super::{Action, HostSetupError, Shown, Step, TMP, diff};

/// A command that ran, and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub title: String,
    pub command: String,
    pub output: String,
}

/// Show the actions on `out` and, unless `dry_run`, carry them out in order, stopping at the
/// first failure. A failing check leaves the files it guards untouched.
pub fn apply(actions: &[Action], dry_run: bool, out: &mut dyn Write) -> Result<Vec<Applied>, HostSetupError> {
    if dry_run {
        let _ = write!(out, "{}", describe(actions));
        return Ok(Vec::new());
    }
    let staging = tempfile::Builder::new()
        .prefix("almavmm-setup.")
        .tempdir()
        .map_err(|source| HostSetupError::Stage { what: "the staging folder".into(), source })?;
    let tmp = staging.path();
    let mut applied = Vec::new();
    for action in actions {
        let _ = writeln!(out, "{}: {}", action.title, action.finding);
        for step in &action.steps {
            let _ = write!(out, "{}", describe_step(step, Some(tmp)));
            match step {
                Step::Stage { name, contents, expand_tmp, .. } => {
                    let contents =
                        if *expand_tmp { contents.replace(TMP, &tmp.display().to_string()) } else { contents.clone() };
                    almavmm_shared::atomic::write_file(&tmp.join(name), contents.as_bytes(), 0o600)
                        .map_err(|source| HostSetupError::Stage { what: name.clone(), source })?;
                }
                Step::Run { argv, check } => {
                    let argv = expand(argv, tmp);
                    let cmd = Cmd::new(&argv[0]).args(&argv[1..]).hint_if_missing(hint(&argv));
                    let shown = cmd.display();
                    let result = cmd.output();
                    let output = match result {
                        Ok(o) if o.status.success() => o,
                        Ok(o) => {
                            let source = cmd.failure(&o);
                            let title = action.title.clone();
                            return Err(if *check {
                                HostSetupError::Refused { title, cmd: shown, source }
                            } else {
                                HostSetupError::Failed { title, cmd: shown, source }
                            });
                        }
                        Err(source) => {
                            return Err(HostSetupError::Failed { title: action.title.clone(), cmd: shown, source });
                        }
                    };
                    let printed: Vec<&str> = output
                        .stdout
                        .lines()
                        .chain(output.stderr.lines())
                        .map(str::trim_end)
                        .filter(|l| !l.trim().is_empty())
                        .collect();
                    for l in &printed {
                        let _ = writeln!(out, "      {l}");
                    }
                    applied.push(Applied { title: action.title.clone(), command: shown, output: printed.join("\n") });
                }
            }
        }
    }
    Ok(applied)
}

/// What `--dry-run` prints.
pub fn describe(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "Nothing to change: this host is set up for vmd guests.\n".into();
    }
    let mut s = format!(
        "Dry run: nothing below is done. {TMP} is the private folder where new files are staged and checked.\n"
    );
    for a in actions {
        s.push_str(&format!("\n{}: {}\n", a.title, a.finding));
        for step in &a.steps {
            s.push_str(&describe_step(step, None));
        }
    }
    s
}

fn describe_step(step: &Step, tmp: Option<&Path>) -> String {
    match step {
        Step::Stage { shown: Shown::Change { path, before: Some(before), mode: _ }, contents, .. } => {
            let d = diff::unified(before, contents);
            format!("  change {}:\n{}", path.display(), indent(&d, "    "))
        }
        Step::Stage { shown: Shown::Change { path, before: None, mode }, contents, .. } => {
            let lines: String = contents.lines().map(|l| format!("+{l}\n")).collect();
            format!("  new file {} (mode {mode:04o}):\n{}", path.display(), indent(&lines, "    "))
        }
        Step::Stage { shown: Shown::Note(note), .. } => format!("  {}\n", expand_text(note, tmp)),
        Step::Run { argv, .. } => {
            let shown: Vec<String> = argv
                .iter()
                .map(|a| match tmp {
                    Some(t) => shell_quote(&expand_text(a, Some(t))),
                    // The placeholder is shown as it is, not quoted as a shell variable.
                    None if a.starts_with(TMP) => format!("{TMP}{}", shell_quote(&a[TMP.len()..])),
                    None => shell_quote(a),
                })
                .collect();
            format!("  $ {}\n", shown.join(" "))
        }
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

fn expand_text(s: &str, tmp: Option<&Path>) -> String {
    match tmp {
        Some(t) => s.replace(TMP, &t.display().to_string()),
        None => s.to_string(),
    }
}

fn expand(argv: &[String], tmp: &Path) -> Vec<String> {
    argv.iter().map(|a| expand_text(a, Some(tmp))).collect()
}

/// Where a missing program comes from.
fn hint(argv: &[String]) -> String {
    match argv[0].as_str() {
        "doas" => "doas(1) is part of OpenBSD; elsewhere run this command as root".into(),
        p => format!("{p} is part of OpenBSD's base system; host setup is for OpenBSD hosts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostsetup::plan::tests::{fresh, set_up};
    use crate::hostsetup::{Privilege, plan};

    /// The exact `almavmm-host host setup --dry-run` output for a freshly installed OpenBSD
    /// (default pf.conf, no sysctl.conf or vm.conf, vmd off, no firmware), run by alice.
    const FRESH_DRY_RUN: &str = include_str!("../../tests/fixtures/openbsd/host-setup-dry-run.txt");

    #[test]
    fn dry_run_of_a_fresh_host_prints_every_command_and_file_change() {
        let mut out = Vec::new();
        let applied = apply(&plan(&fresh(Privilege::Doas)), true, &mut out).unwrap();
        assert!(applied.is_empty());
        assert_eq!(String::from_utf8(out).unwrap(), FRESH_DRY_RUN);
    }

    #[test]
    fn dry_run_of_a_set_up_host_says_there_is_nothing_to_do() {
        let mut out = Vec::new();
        apply(&plan(&set_up(Privilege::Doas)), true, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Nothing to change: this host is set up for vmd guests.\n");
    }

    fn action(steps: Vec<Step>) -> Action {
        Action { title: "test".into(), finding: "testing".into(), steps }
    }

    fn run(argv: &[&str], check: bool) -> Step {
        Step::Run { argv: argv.iter().map(|s| s.to_string()).collect(), check }
    }

    #[test]
    fn staged_files_are_written_and_tmp_is_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("copy");
        let steps = vec![
            Step::Stage {
                name: "f".into(),
                contents: "$TMP stays\n".into(),
                shown: Shown::Change { path: target.clone(), before: None, mode: 0o644 },
                expand_tmp: false,
            },
            Step::Stage {
                name: "c".into(),
                contents: "$TMP/f\n".into(),
                shown: Shown::Note("n".into()),
                expand_tmp: true,
            },
            run(&["sh", "-c", "test \"$(cat $0)\" = \"$(dirname $0)/f\"", "$TMP/c"], true),
            run(&["cp", "$TMP/f", target.to_str().unwrap()], false),
        ];
        let mut out = Vec::new();
        let applied = apply(&[action(steps)], false, &mut out).unwrap();
        assert_eq!(applied.len(), 2);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "$TMP stays\n");
    }

    #[test]
    fn a_refused_check_stops_before_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("conf");
        std::fs::write(&target, "old\n").unwrap();
        let steps = vec![
            Step::Stage {
                name: "new".into(),
                contents: "new\n".into(),
                shown: Shown::Change { path: target.clone(), before: Some("old\n".into()), mode: 0o644 },
                expand_tmp: false,
            },
            run(&["sh", "-c", "echo 'conf:1: syntax error' >&2; exit 1"], true),
            run(&["cp", "$TMP/new", target.to_str().unwrap()], false),
        ];
        let mut out = Vec::new();
        let err = apply(&[action(steps)], false, &mut out).unwrap_err();
        assert!(matches!(err, HostSetupError::Refused { .. }), "{err}");
        let msg = err.full_message();
        assert!(
            msg.contains("refused the new configuration, so nothing was replaced") && msg.contains("syntax error"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("  change ") && shown.contains("-old\n") && shown.contains("+new\n"), "{shown}");
    }

    #[test]
    fn a_failed_step_names_itself_and_what_was_done() {
        let steps = vec![run(&["true"], false), run(&["false"], false), run(&["true"], false)];
        let mut out = Vec::new();
        let err = apply(&[action(steps)], false, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test: `false` failed; the steps listed before it were done, the ones after it were not"
        );
    }

    #[test]
    fn command_output_is_shown() {
        let steps = vec![run(&["sh", "-c", "echo 'net.inet.ip.forwarding: 0 -> 1'"], false)];
        let mut out = Vec::new();
        let applied = apply(&[action(steps)], false, &mut out).unwrap();
        assert_eq!(applied[0].output, "net.inet.ip.forwarding: 0 -> 1");
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.contains("      net.inet.ip.forwarding: 0 -> 1\n"), "{shown}");
    }
}

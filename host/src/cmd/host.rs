//! `almavmm-host host …`: prepare an OpenBSD host for vmd guests.

use clap::{Args, Subcommand};

use crate::hostsetup::{self, Access, CheckStatus};

#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Check and fix what vmd guests need: vmd, its firmware, forwarding, pf NAT and DNS, vm.conf.
    Setup(SetupArgs),
    /// Sync guest clocks after every resume of the host: one line in /etc/apm/resume.
    InstallResumeHook(ResumeHookArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
Each item is checked first and changed only when it is not right, so running this again does
nothing on a host that is set up. Commands that need root run through doas(1) unless you are
root (doas may ask for your password).

Files are never edited in place: the new version is written to a private staging folder,
the whole new configuration is checked (pfctl -nf, vmd -n, sh -n) before anything is
replaced, the old file is kept beside it as FILE.almavmm-YYYYMMDD-HHMMSS, and the new one is
renamed over it. If a check fails, nothing is replaced.

What almavmm writes lives in /etc/almavmm/ (pf.conf: the NAT and DNS rules of anchor
\"almavmm\"; vm-USER.conf: USER's guests). It adds two lines to /etc/pf.conf (the anchor and
where to load it from), one include per user to /etc/vm.conf and
net.inet.ip.forwarding=1 to /etc/sysctl.conf, keeping everything else as it was.

--dry-run prints every command and every file change (as a diff) without doing any of them.")]
pub struct SetupArgs {
    /// Show what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
apmd(8) runs /etc/apm/resume as root after the host resumes from suspend. This adds one line
to it that runs `almavmm-host sync --all` as you (the owner of the guests), in the
background, with its output in syslog (tag almavmm). The file is created (mode 0755) if it
does not exist; an existing one keeps every byte and gets the line once. The new script is
checked with sh -n before it replaces the old one, which is kept as
/etc/apm/resume.almavmm-YYYYMMDD-HHMMSS.

The hook only runs while apmd runs (rcctl enable apmd). `almavmm-host doctor` reports
whether it is installed.")]
pub struct ResumeHookArgs {
    /// Show the change, make none.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: HostArgs) -> anyhow::Result<u8> {
    match args.command {
        HostCommand::Setup(a) => setup(a),
        HostCommand::InstallResumeHook(a) => resume_hook(a),
    }
}

fn setup(args: SetupArgs) -> anyhow::Result<u8> {
    if !cfg!(target_os = "openbsd") {
        eprintln!(
            "Nothing to set up: this is not OpenBSD, so guests run under QEMU, which needs no host changes \
             (user-mode networking, no root). `host setup` prepares OpenBSD hosts for vmd."
        );
        return Ok(crate::exit::OK);
    }
    let facts = hostsetup::gather_with(Access::MayPrompt)?;
    let actions = hostsetup::plan(&facts);
    if args.dry_run {
        print!("{}", hostsetup::apply::describe(&actions));
    } else if actions.is_empty() {
        eprintln!("Nothing to change: this host is set up for vmd guests.");
    } else {
        hostsetup::apply(&actions, false, &mut std::io::stderr())?;
        eprintln!("Host set up ({} item{} fixed).", actions.len(), if actions.len() == 1 { "" } else { "s" });
    }
    // What setup cannot fix by itself (or could not see), said once at the end.
    let fixed: Vec<&str> = actions.iter().map(|a| a.title.as_str()).collect();
    for c in hostsetup::checks(&facts) {
        if c.status != CheckStatus::Ok && !fixed.contains(&c.name.as_str()) && c.name != hostsetup::checks::RESUME_HOOK
        {
            let fix = c.fix.map(|f| format!(" (fix: {f})")).unwrap_or_default();
            eprintln!("{}: {}{fix}", c.name, c.finding);
        }
    }
    Ok(crate::exit::OK)
}

fn resume_hook(args: ResumeHookArgs) -> anyhow::Result<u8> {
    if !cfg!(target_os = "openbsd") {
        eprintln!(
            "There is no resume hook to install here: it is a line in /etc/apm/resume, which OpenBSD's apmd(8) runs \
             after the host resumes. On Linux, run `almavmm-host sync --all` after a resume (for example from a \
             systemd-sleep hook)."
        );
        return Ok(crate::exit::OK);
    }
    let facts = hostsetup::resume::gather_resume(Access::MayPrompt)?;
    let actions = hostsetup::plan_resume_hook(&facts)?;
    if args.dry_run {
        print!("{}", hostsetup::apply::describe(&actions));
    } else if actions.is_empty() {
        eprintln!("{} already syncs guest clocks after a resume.", hostsetup::resume::APM_RESUME);
    } else {
        hostsetup::apply(&actions, false, &mut std::io::stderr())?;
        eprintln!("Installed: after each resume, apmd runs `almavmm-host sync --all` as {}.", facts.user);
    }
    if let Some(note) = hostsetup::resume::apmd_note(&facts) {
        eprintln!("{note}");
    }
    Ok(crate::exit::OK)
}

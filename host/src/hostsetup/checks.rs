//! The host's part of `doctor`: one finding per item, with the command that fixes it.

use serde::Serialize;

use super::plan::{
    self, FIRMWARE, FIRMWARE_FILE, FORWARDING, FORWARDING_AT_BOOT, PF, VM_CONF, VMD_ENABLED, VMD_RUNNING,
};
use super::{HostFacts, Probe, pf, resolv, resume, sysctl};
use crate::hostsetup::vmconf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCheck {
    pub name: String,
    pub status: CheckStatus,
    /// One line.
    pub finding: String,
    /// The exact command that fixes it, when not ok.
    pub fix: Option<String>,
}

const SETUP: &str = "almavmm-host host setup";
pub const VMCTL_ACCESS: &str = "vmctl access";
pub const PF_ENABLED: &str = "pf enabled";
pub const PF_LOADED: &str = "pf rules loaded";
pub const GUEST_DNS: &str = "guest DNS";
pub const RESUME_HOOK: &str = "resume hook";

fn check(name: &str, status: CheckStatus, finding: impl Into<String>, fix: Option<String>) -> HostCheck {
    HostCheck { name: name.into(), status, finding: finding.into(), fix }
}

fn unknown(name: &str, why: &str) -> HostCheck {
    check(name, CheckStatus::Warn, format!("cannot tell: {why}"), Some(SETUP.into()))
}

/// Every host item, in the order doctor shows them.
pub fn checks(f: &HostFacts) -> Vec<HostCheck> {
    use CheckStatus::*;
    let p = f.privilege;
    let mut out = Vec::new();
    out.push(match &f.vmd_enabled {
        Probe::Known(true) => check(VMD_ENABLED, Ok, "vmd starts at boot", None),
        Probe::Known(false) => check(VMD_ENABLED, Fail, "vmd does not start at boot", Some(p.show("rcctl enable vmd"))),
        Probe::Unknown(why) => unknown(VMD_ENABLED, why),
    });
    out.push(match &f.vmd_running {
        Probe::Known(true) => check(VMD_RUNNING, Ok, "vmd is running", None),
        Probe::Known(false) => check(VMD_RUNNING, Fail, "vmd is not running", Some(p.show("rcctl start vmd"))),
        Probe::Unknown(why) => unknown(VMD_RUNNING, why),
    });
    if let Probe::Known(access) = f.vmctl_access {
        out.push(if access {
            check(VMCTL_ACCESS, Ok, format!("{} can use vmctl", f.user), None)
        } else {
            check(
                VMCTL_ACCESS,
                Fail,
                format!(
                    "{} may not use vmd's socket /var/run/vmd.sock (root:wheel, mode 0660); log in again after the fix",
                    f.user
                ),
                Some(p.show(&format!("usermod -G wheel {}", f.user))),
            )
        });
    }
    out.push(if f.firmware {
        check(FIRMWARE, Ok, format!("{FIRMWARE_FILE} is installed"), None)
    } else {
        check(FIRMWARE, Fail, format!("{FIRMWARE_FILE} is missing"), Some(p.show("fw_update vmm")))
    });
    out.push(match &f.forwarding {
        Probe::Known(true) => check(FORWARDING, Ok, format!("{}=1", sysctl::FORWARDING), None),
        Probe::Known(false) => check(
            FORWARDING,
            Fail,
            format!("{}=0: guests cannot reach beyond the host", sysctl::FORWARDING),
            Some(p.show(&format!("sysctl {}=1", sysctl::FORWARDING))),
        ),
        Probe::Unknown(why) => unknown(FORWARDING, why),
    });
    out.push(match &f.sysctl_conf {
        Probe::Known(Some(c)) if sysctl::sets(&c.text, sysctl::FORWARDING, "1") => {
            check(FORWARDING_AT_BOOT, Ok, format!("{} sets {}=1", plan::SYSCTL_CONF, sysctl::FORWARDING), None)
        }
        Probe::Known(_) => check(
            FORWARDING_AT_BOOT,
            Warn,
            format!(
                "{} does not set {}=1 once: forwarding is off after a reboot",
                plan::SYSCTL_CONF,
                sysctl::FORWARDING
            ),
            Some(SETUP.into()),
        ),
        Probe::Unknown(why) => unknown(FORWARDING_AT_BOOT, why),
    });
    out.extend(pf_checks(f));
    out.push(dns_check(f));
    out.push(vm_conf_check(f));
    out.push(resume_check(f));
    out
}

fn pf_checks(f: &HostFacts) -> Vec<HostCheck> {
    use CheckStatus::*;
    let p = f.privilege;
    let mut out = Vec::new();
    match &f.pf_runtime {
        Probe::Known(r) if r.enabled => out.push(check(PF_ENABLED, Ok, "pf is enabled", None)),
        Probe::Known(_) => {
            out.push(check(PF_ENABLED, Fail, "pf is disabled: guests get no NAT", Some(p.show("pfctl -e"))))
        }
        Probe::Unknown(why) => out.push(unknown(PF_ENABLED, why)),
    }
    let files = match (&f.pf_conf, &f.pf_anchor, &plan::wanted_anchor(f)) {
        (Probe::Unknown(why), _, _) | (_, Probe::Unknown(why), _) | (_, _, Err(why)) => unknown(PF, why),
        (Probe::Known(main), Probe::Known(anchor), Result::Ok(want)) => {
            let hooked = main.as_ref().is_some_and(|m| pf::is_hooked(&m.text));
            match anchor {
                None => check(PF, Fail, format!("{} does not exist", pf::ANCHOR_FILE), Some(SETUP.into())),
                Some(a) if a.text != *want => check(
                    PF,
                    Fail,
                    format!("{} is out of date (local prefix or resolver changed)", pf::ANCHOR_FILE),
                    Some(SETUP.into()),
                ),
                Some(_) if !hooked => check(
                    PF,
                    Fail,
                    format!("{} does not load anchor \"{}\"", pf::PF_CONF, pf::ANCHOR),
                    Some(SETUP.into()),
                ),
                Some(_) => check(
                    PF,
                    Ok,
                    format!("{} loads anchor \"{}\" from {}", pf::PF_CONF, pf::ANCHOR, pf::ANCHOR_FILE),
                    None,
                ),
            }
        }
    };
    out.push(files);
    out.push(match &f.pf_runtime {
        Probe::Known(r) if r.hooked && r.anchor_loaded => {
            check(PF_LOADED, Ok, format!("the running ruleset has anchor \"{}\" and its rules", pf::ANCHOR), None)
        }
        Probe::Known(_) => check(
            PF_LOADED,
            Fail,
            format!("the running ruleset lacks anchor \"{}\" or its rules", pf::ANCHOR),
            Some(p.show(&format!("pfctl -f {}", pf::PF_CONF))),
        ),
        Probe::Unknown(why) => unknown(PF_LOADED, why),
    });
    out
}

fn dns_check(f: &HostFacts) -> HostCheck {
    use CheckStatus::*;
    let prefix = plan::local_prefix(f).map(|p| p.to_string()).unwrap_or_else(|_| vmconf::DEFAULT_PREFIX.to_string());
    match resolv::resolver(f.resolv_conf.as_deref().unwrap_or("")) {
        resolv::Resolver::Remote(a) => {
            check(GUEST_DNS, Ok, format!("guest DNS is redirected to {a}, the host's resolver"), None)
        }
        resolv::Resolver::Local(a) => check(
            GUEST_DNS,
            Warn,
            format!(
                "guest DNS is redirected to the host's own resolver on {a}: unwind answers it; unbound needs `access-control: {prefix} allow` in /var/unbound/etc/unbound.conf"
            ),
            None,
        ),
        resolv::Resolver::None => check(
            GUEST_DNS,
            Fail,
            "/etc/resolv.conf has no IPv4 nameserver, so guests have no DNS; add one, then run host setup",
            Some(SETUP.into()),
        ),
    }
}

fn vm_conf_check(f: &HostFacts) -> HostCheck {
    use CheckStatus::*;
    let ours = vmconf::our_file(&f.user);
    match (&f.vm_conf, &f.our_vm_conf, &f.our_vm_conf_wanted) {
        (Probe::Unknown(why), _, _) | (_, Probe::Unknown(why), _) | (_, _, Probe::Unknown(why)) => {
            unknown(VM_CONF, why)
        }
        (Probe::Known(main), Probe::Known(current), Probe::Known(wanted)) => {
            let included = main.as_ref().map(|m| vmconf::include_count(&m.text, &ours)).unwrap_or(0);
            if current.as_ref().map(|c| &c.text) != Some(wanted) {
                check(
                    VM_CONF,
                    Fail,
                    format!("{} does not match {}'s guests", ours.display(), f.user),
                    Some(SETUP.into()),
                )
            } else if included != 1 {
                check(
                    VM_CONF,
                    Fail,
                    format!("{} includes {} {included} times", vmconf::MAIN, ours.display()),
                    Some(SETUP.into()),
                )
            } else {
                check(
                    VM_CONF,
                    Ok,
                    format!("{} includes {}, which defines {}'s guests", vmconf::MAIN, ours.display(), f.user),
                    None,
                )
            }
        }
    }
}

fn resume_check(f: &HostFacts) -> HostCheck {
    use CheckStatus::*;
    let fix = Some("almavmm-host host install-resume-hook".to_string());
    match &f.apm_resume {
        Probe::Known(Some(r)) if resume::installed(&r.text) => {
            check(RESUME_HOOK, Ok, format!("{} syncs guest clocks after a resume", resume::APM_RESUME), None)
        }
        Probe::Known(_) => {
            check(RESUME_HOOK, Warn, "guest clocks are not synced after the host resumes from suspend", fix)
        }
        Probe::Unknown(why) => check(RESUME_HOOK, Warn, format!("cannot tell: {why}"), fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostsetup::plan::tests::{fresh, set_up};
    use crate::hostsetup::{FileState, PfRuntime, Privilege};

    fn by_name(c: &[HostCheck], name: &str) -> HostCheck {
        c.iter().find(|c| c.name == name).cloned().unwrap_or_else(|| panic!("no check {name}"))
    }

    #[test]
    fn a_set_up_host_is_ok_but_for_the_optional_resume_hook() {
        let c = checks(&set_up(Privilege::Doas));
        let not_ok: Vec<_> = c.iter().filter(|c| c.status != CheckStatus::Ok).map(|c| c.name.as_str()).collect();
        assert_eq!(not_ok, [RESUME_HOOK]);
        assert!(c.iter().all(|c| c.status != CheckStatus::Ok || c.fix.is_none()));
    }

    #[test]
    fn a_fresh_host_fails_with_the_exact_fixes() {
        let c = checks(&fresh(Privilege::Doas));
        let failing: Vec<(String, Option<String>)> =
            c.iter().filter(|c| c.status == CheckStatus::Fail).map(|c| (c.name.clone(), c.fix.clone())).collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            failing,
            [
                (VMD_ENABLED.into(), s("doas rcctl enable vmd")),
                (VMD_RUNNING.into(), s("doas rcctl start vmd")),
                (FIRMWARE.into(), s("doas fw_update vmm")),
                (FORWARDING.into(), s("doas sysctl net.inet.ip.forwarding=1")),
                (PF.into(), s("almavmm-host host setup")),
                (PF_LOADED.into(), s("doas pfctl -f /etc/pf.conf")),
                (VM_CONF.into(), s("almavmm-host host setup")),
            ]
        );
        assert_eq!(by_name(&c, FORWARDING_AT_BOOT).status, CheckStatus::Warn);
        assert_eq!(by_name(&c, PF).finding, "/etc/almavmm/pf.conf does not exist");
    }

    #[test]
    fn as_root_fixes_have_no_doas() {
        let c = checks(&fresh(Privilege::Root));
        assert_eq!(by_name(&c, FIRMWARE).fix.as_deref(), Some("fw_update vmm"));
    }

    #[test]
    fn unreadable_state_is_a_warning_not_a_failure() {
        let mut f = set_up(Privilege::Doas);
        f.pf_runtime = Probe::Unknown("needs root (doas: Authentication required)".into());
        f.pf_conf = Probe::Unknown("needs root".into());
        let c = checks(&f);
        for name in [PF_ENABLED, PF, PF_LOADED] {
            let x = by_name(&c, name);
            assert_eq!(x.status, CheckStatus::Warn, "{x:?}");
            assert!(x.finding.starts_with("cannot tell: needs root"), "{x:?}");
        }
    }

    #[test]
    fn vmctl_access_local_dns_and_resume_hook() {
        let mut f = set_up(Privilege::Doas);
        f.vmctl_access = Probe::Known(false);
        f.resolv_conf = Some("nameserver 127.0.0.1 # resolvd: unwind\n".into());
        f.apm_resume = Probe::Known(Some(FileState {
            text: resume::with_hook(None, "su -s /bin/sh alice -c 'almavmm-host sync --all' &"),
            mode: 0o755,
        }));
        let c = checks(&f);
        let access = by_name(&c, VMCTL_ACCESS);
        assert_eq!((access.status, access.fix.as_deref()), (CheckStatus::Fail, Some("doas usermod -G wheel alice")));
        let dns = by_name(&c, GUEST_DNS);
        assert_eq!(dns.status, CheckStatus::Warn);
        assert!(dns.finding.contains("access-control: 100.64.0.0/10 allow"), "{}", dns.finding);
        assert_eq!(by_name(&c, RESUME_HOOK).status, CheckStatus::Ok);
        // The DNS redirect in the anchor follows the local resolver, so pf is still fine.
        f.pf_anchor = Probe::Known(Some(FileState { text: plan::wanted_anchor(&f).unwrap(), mode: 0o644 }));
        assert_eq!(by_name(&checks(&f), PF).status, CheckStatus::Ok);
    }

    #[test]
    fn pf_disabled_and_flushed() {
        let mut f = set_up(Privilege::Root);
        f.pf_runtime = Probe::Known(PfRuntime { enabled: false, hooked: false, anchor_loaded: false });
        let c = checks(&f);
        assert_eq!(by_name(&c, PF_ENABLED).fix.as_deref(), Some("pfctl -e"));
        assert_eq!(by_name(&c, PF_LOADED).fix.as_deref(), Some("pfctl -f /etc/pf.conf"));
        assert_eq!(by_name(&c, PF).status, CheckStatus::Ok);
    }

    #[test]
    fn checks_serialize_for_json() {
        let c = check(PF, CheckStatus::Fail, "x", Some("y".into()));
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"name":"pf NAT and DNS","status":"fail","finding":"x","fix":"y"}"#
        );
    }
}

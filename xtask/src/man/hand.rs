//! The parts of the pages clap has no field for, in mdoc(7), written by hand. Paths come
//! from the code: host/src/state/ (home.rs, vm.rs), host/src/image/mod.rs (cache layout),
//! host/src/backend/, host/src/proxy/lease.rs, host/src/hostsetup/, host/src/agent/locate.rs,
//! host/src/cmd/ssh_config.rs; for the agent, shared/src/paths.rs and guest/src/.
//! Exit codes: host/src/exit.rs and the agent's main.rs.

/// A page's hand-written sections (mdoc source, one sentence per line).
#[derive(Debug)]
pub struct Hand {
    pub section: u8,
    /// Appended to DESCRIPTION after the program's own description.
    pub description: &'static str,
    pub environment: &'static str,
    pub files: &'static str,
    pub exit_status: &'static str,
    pub examples: &'static str,
    pub see_also: &'static str,
}

pub const HOST: Hand = Hand {
    section: 1,
    description: r#".Pp
Each guest has a folder of its own below the state folder
.Pq see Sx FILES ,
a disk that is a thin overlay on a shared, verified base image, and a
cloud-init seed that carries a host key generated on the host, whose public
half is pinned before the guest first boots.
On
.Ox
guests run under
.Xr vmd 8 ,
on Linux under QEMU.
The guest's
.Xr almavmm-agent 8
sets it up on first boot and keeps its clock right after the host suspends."#,
    environment: r#".Bl -tag -width Ds
.It Ev ALMAVMM_HOME
The state folder: guests, images and the agent.
When unset or empty,
.Pa $XDG_DATA_HOME/almavmm
is used, else
.Pa ~/.local/share/almavmm .
.It Ev ALMAVMM_AGENT
The
.Xr almavmm-agent 8
binary that
.Cm up
puts on a new guest's seed when
.Fl -agent
is not given.
It must be a static x86-64 Linux executable.
.It Ev ALMAVMM_LOG
A filter for what is logged on standard error, in the syntax of Rust's
tracing-subscriber
.Pq for example Ql debug No or Ql almavmm_host=trace ,
used instead of the level
.Fl v
and
.Fl q
choose.
.It Ev HOME
The user's home folder: where
.Pa ~/.ssh
and the default state folder are.
.It Ev NO_COLOR
When set and not empty, output has no colours.
Colours are also off when the output is not a terminal, and progress bars are
replaced by plain lines.
.It Ev PATH
Where
.Nm
looks itself up when it was run by name, to find the agent in
.Pa ../libexec/almavmm/
relative to itself, and the programs it runs:
.Xr vmctl 8 ,
.Xr ssh 1 ,
.Xr pfctl 8 ,
.Xr rcctl 8
and, on Linux, QEMU.
.It Ev XDG_DATA_HOME
When set and
.Ev ALMAVMM_HOME
is not, the state folder is
.Pa $XDG_DATA_HOME/almavmm .
.El"#,
    files: r#".Bl -tag -width Ds
.It Pa ~/.local/share/almavmm/
The default state folder
.Pq Ev ALMAVMM_HOME ,
mode 0700.
.It Pa $ALMAVMM_HOME/images/download/SHA256/
A verified image download, read-only; with
.Pa CHECKSUM
and its signature
.Pa CHECKSUM.asc ,
a
.Pa .partial
file while a download is under way (the next fetch resumes it) and a
.Pa .lock
file while one is being fetched.
.It Pa $ALMAVMM_HOME/images/base/SHA256.qcow2
A base image prepared for the hypervisor, read-only and never rewritten:
guest disks point at it.
.It Pa $ALMAVMM_HOME/vms/NAME/
The guest
.Ar NAME ,
mode 0700:
.Bl -tag -width Ds
.It Pa vm.yaml
what the guest is (image, memory, disk, user, keys, backend);
.It Pa state.json
what it is doing (address, who started it, last clock check);
.It Pa disk.qcow2
its disk, an overlay on the base image;
.It Pa seed.iso
its cloud-init seed;
.It Pa known_hosts
its pinned SSH host key;
.It Pa console.log
everything its serial console printed;
.It Pa events.log
what happened to it, one line per event;
.It Pa lock
held while a command changes the guest;
.It Pa qemu.pid , qmp.sock , console.sock
QEMU's process id, control socket and serial console (Linux);
.It Pa leases/ , leases-last-end
the
.Cm ssh-proxy
sessions alive and when the last one ended.
.El
.It Pa $ALMAVMM_HOME/almavmm-agent
The agent
.Cm up
uses when there is none next to
.Nm
or in
.Pa ../libexec/almavmm/ .
.It Pa $ALMAVMM_HOME/agent-src.tar.gz
The agent's source bundle, which a guest builds itself when no agent binary
is found (also looked for next to
.Nm
and in
.Pa ../libexec/almavmm/ ) .
.It Pa $ALMAVMM_HOME/kvm-probe
Whether KVM works, as last probed during this boot of the host (Linux).
.It Pa /usr/local/libexec/almavmm/almavmm-agent
The agent of a release installed in
.Pa /usr/local ;
in general
.Pa ../libexec/almavmm/almavmm-agent
relative to the
.Nm
binary, wherever the release is unpacked.
.It Pa ~/.ssh/config.d/almavmm
The
.Xr ssh_config 5
fragment
.Cm ssh-config
writes, included from
.Pa ~/.ssh/config .
.It Pa ~/.ssh/id_ed25519.pub
The default public key put in a new guest; the private key beside it is the
identity in the fragment.
.It Pa ~/.ssh/almavmm-%C
Control sockets of the connections the fragment shares.
.It Pa /etc/almavmm/
Files
.Cm host setup
writes: the pf anchor
.Pa pf.conf
and
.Pa vm-USER.conf ,
the
.Xr vm.conf 5
definitions of a user's guests.
.It Pa /etc/vm.conf
.Xr vmd 8 Ns 's
configuration: its
.Ic local prefix
is read, and one
.Ic include
line per user is added.
.It Pa /etc/pf.conf
Gains the two lines that load the anchor
.Pa /etc/almavmm/pf.conf .
.It Pa /etc/sysctl.conf
Gains
.Ql net.inet.ip.forwarding=1 .
.It Pa /etc/apm/resume
Gains the line that runs
.Ql almavmm-host sync --all
after the host resumes
.Pq Cm host install-resume-hook .
.It Pa /etc/firmware/vmm-bios
.Xr vmd 8 Ns 's
BIOS, installed with
.Ql fw_update vmm
when it is missing.
.It Pa /etc/resolv.conf
Read for the name server guests are sent to.
.It Pa /var/run/vmd.sock
.Xr vmd 8 Ns 's
control socket, which the user must be allowed to open.
.El
.Pp
Before
.Cm host setup
changes a file in
.Pa /etc ,
it copies it to
.Pa FILE.almavmm-YYYYMMDD-HHMMSS .
"#,
    exit_status: r#"The
.Nm
utility exits with one of these codes, whatever the command:
.Pp
.Bl -tag -width Ds -compact
.It 0
Success
.Po for
.Cm doctor :
no check failed, warnings allowed
.Pc .
.It 1
Failure; the message on standard error says why.
.Cm doctor
also exits 1 when a check failed, and
.Cm sync Fl -all
when a running guest could not be synced.
.It 2
The command line was wrong.
.It 3
The named guest does not exist.
.El"#,
    examples: r#"Create a guest called
.Ql alma
(AlmaLinux 9, 2G of memory, a 20G disk), then log in:
.Bd -literal -offset indent
$ almavmm-host up
$ ssh -o UserKnownHostsFile=~/.local/share/almavmm/vms/alma/known_hosts \e
    almalinux@alma
.Ed
.Pp
Set up an
.Ox
host once, then make
.Ql ssh alma.almavmm
start the guest on demand:
.Bd -literal -offset indent
$ doas almavmm-host host setup
$ almavmm-host host install-resume-hook
$ almavmm-host ssh-config
$ ssh alma.almavmm
.Ed
.Pp
A bigger guest, then a check of everything about it:
.Bd -literal -offset indent
$ almavmm-host up web --memory 4G --disk 40G
$ almavmm-host doctor web
.Ed
.Pp
Scripts read
.Fl -json
output:
.Bd -literal -offset indent
$ almavmm-host status --json | jq -r '.[] | select(.state == "running") | .name'
.Ed"#,
    see_also: r#".Xr ssh 1 ,
.Xr pf.conf 5 ,
.Xr ssh_config 5 ,
.Xr vm.conf 5 ,
.Xr almavmm-agent 8 ,
.Xr apmd 8 ,
.Xr vmctl 8 ,
.Xr vmd 8"#,
};

pub const AGENT: Hand = Hand {
    section: 8,
    description: r#".Pp
It is installed as
.Pa /usr/local/bin/almavmm-agent
by the guest's cloud-init seed, which runs
.Cm setup
once.
It is not meant to be run on the host."#,
    environment: r#".Bl -tag -width Ds
.It Ev ALMAVMM_LOG
A filter for what is logged on standard error, in the syntax of Rust's
tracing-subscriber
.Pq for example Ql debug ,
used instead of the level
.Fl v
chooses.
.It Ev JOURNAL_STREAM
Set by systemd when standard error already goes to the journal; otherwise
the lines
.Nm
announces are also sent to the journal's socket.
.It Ev PATH
Where the programs it runs are found:
.Xr modprobe 8 ,
.Xr depmod 8 ,
.Xr systemctl 1 ,
.Xr make 1 ,
.Xr dnf 8
or
.Xr apt-get 8 ,
.Xr chronyc 1 .
.El"#,
    files: r#".Bl -tag -width Ds
.It Pa /usr/local/bin/almavmm-agent
The agent.
.It Pa /var/lib/almavmm/
Its state:
.Bl -tag -width Ds
.It Pa setup.json
the steps of
.Cm setup
and their outcomes;
.It Pa boot-done
written last by
.Cm setup ,
with the cloud-init instance it was written for;
.It Pa bootstrap.log
the seed's bootstrap log;
.It Pa clock-events.jsonl
clock steps and stalls the watcher saw, one JSON object a line, size bounded;
.It Pa agent-origin
whether the agent came prebuilt or was built in the guest;
.It Pa kmod-build/KVER/
where the module is built for kernel
.Ar KVER ;
.It Pa kmod-last-load
the error of the last failed module load.
.El
.It Pa /var/lib/cloud/data/instance-id
cloud-init's instance, read by
.Cm setup .
.It Pa /usr/src/vmm_clock-VERSION/
The vmm_clock module's source, put there by the seed.
.It Pa /lib/modules/KVER/extra/
Where the module is installed; the kernel's headers are found through
.Pa /lib/modules/KVER/build .
.It Pa /etc/modules-load.d/vmm_clock.conf
Loads the module at boot.
.It Pa /etc/systemd/system/almavmm-agent.service
The watcher's service
.Pq Ql almavmm-agent watch .
.It Pa /etc/kernel/install.d/90-almavmm-vmm_clock.install
.It Pa /etc/kernel/postinst.d/almavmm-vmm-clock
.It Pa /etc/kernel/header_postinst.d/almavmm-vmm-clock
The kernel hook (dnf, then apt) that builds the module for each new kernel.
.It Pa /etc/NetworkManager/dispatcher.d/90-almavmm-clock-check
.It Pa /etc/networkd-dispatcher/routable.d/50-almavmm-clock-check
.It Pa /etc/network/if-up.d/almavmm-clock-check
The network hook, by network manager, that runs
.Ql almavmm-agent clock check --fix
when a link comes up.
.It Pa /etc/systemd/network/50-almavmm-virtio.network
Keeps DHCP on the virtio network interface under systemd-networkd.
.It Pa /etc/systemd/network/
Files here that carry a stray
.Ql vmm_clock
line (a wrong recipe for loading the module) lose that line.
.It Pa /dev/rtc0
The real-time clock the watcher and
.Cm clock check
compare with, and
.Cm clock set
writes;
.Pa /etc/adjtime
says whether it keeps local time.
.It Pa /sys/devices/system/clocksource/clocksource0/
The current and available clocksources.
.It Pa /etc/os-release
Which distribution this is.
.It Pa /etc/resolv.conf , /proc/net/route , /proc/vmstat
Read for the health report (the OOM kill count from the last); memory, swap, load,
CPUs, uptime and the mounted filesystems come from /proc and statvfs(3) through the
sysinfo crate, and the failed units from
.Ic systemctl list-units --state=failed .
.It Pa /run/chrony/chronyd.pid
Tells whether chrony runs, to ask it to step too.
.It Pa /dev/console
Where setup's progress lines also go.
.El"#,
    exit_status: r#"The
.Nm
utility exits 0 on success, 1 on failure and 2 when the command line is wrong.
.Cm clock check
exits 0 when the clock is within 2 s of the RTC, 1 when it is off (and was
not fixed) and 2 when it cannot compare.
.Cm setup
exits 1 when one of its steps failed."#,
    examples: r#"What the guest's clock and module look like, as the host reads them:
.Bd -literal -offset indent
# almavmm-agent health
# almavmm-agent kmod status
.Ed
.Pp
Compare the clock with the RTC, and step it when it is off:
.Bd -literal -offset indent
# almavmm-agent clock check --fix
.Ed
.Pp
Run the first-boot setup again, installing a newer kernel when the running
one's headers are gone:
.Bd -literal -offset indent
# almavmm-agent setup --update-kernel
.Ed"#,
    see_also: r#".Xr almavmm-host 1 ,
.Xr vmd 8"#,
};

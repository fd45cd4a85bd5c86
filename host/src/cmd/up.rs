//! `almavmm-host up [NAME]`: from nothing (or from wherever a previous run stopped) to a
//! running guest reachable over SSH with its pinned host key and its agent set up.
//!
//! Every stage checks whether its output already exists and is sound before doing work,
//! so `up` can be re-run at any point: after a failure it continues, on a healthy running
//! guest it does nothing and says so. A guest disk that exists is never overwritten.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use almavmm_shared::wait::{Deadline, wait_until};
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::agent::{self, remote};
use crate::backend::{self, AccelChoice, Backend, Endpoint, RunState};
use crate::image::{self, ImageSource, Trust};
use crate::lifecycle;
use crate::seed::{self, AgentPayload, Checksummed, SeedInputs};
use crate::ssh::client::{self, Target};
use crate::ssh::keys;
use crate::state::home::Home;
use crate::state::name::VmName;
use crate::state::size::ByteSize;
use crate::state::spec::{BackendKind, ImageSpec, ImageTrust, VmSpec};
use crate::state::vm::{StartedBy, Vm};
use crate::ui::progress::{Ended, FailsAs, Running, StageRecord, Stages};
use almavmm_shared::atomic::Durability;

const DEFAULT_MEMORY: ByteSize = ByteSize::gib(2);
const DEFAULT_DISK: ByteSize = ByteSize::gib(20);
const MIN_MEMORY: ByteSize = ByteSize::mib(512);

#[derive(Debug, Args)]
#[command(after_help = concat!(
    "Stages: host, image (fetch, verify, inspect, prepare), disk, seed, define, start, address, ssh, agent, ",
    "seed scrub, clock, health. Each is skipped when its result already exists, so `up` can be re-run at any time.\n\n",
    "The agent put on the seed is looked up in this order: ",
    "--agent PATH, $ALMAVMM_AGENT, almavmm-agent next to almavmm-host, ../libexec/almavmm/almavmm-agent relative to it, ",
    "$ALMAVMM_HOME/almavmm-agent, else the source bundle (agent-src.tar.gz in one of those folders, or made from ",
    "the source tree almavmm-host was built from), which the guest builds with its own Rust toolchain.\n\n",
    "Examples:\n",
    "  almavmm-host up                                  # guest `alma`, AlmaLinux 9, 2G RAM, 20G disk\n",
    "  almavmm-host up web --memory 4G --disk 40G\n",
    "  almavmm-host up web                              # again: resumes, or says it is already up"
))]
pub struct UpArgs {
    /// Guest name: letters, digits, '.', '-', '_' (not first), under 64 characters.
    #[arg(default_value = "alma")]
    pub name: VmName,

    /// Guest memory (e.g. 2G, 1536M) [default: 2G].
    #[arg(long)]
    pub memory: Option<ByteSize>,

    /// Virtual CPUs (QEMU only: vmd runs guests with one) [default: 1].
    #[arg(long)]
    pub cpus: Option<u32>,

    /// Guest disk size; the disk is a thin overlay, so this is a ceiling, not an allocation [default: 20G].
    #[arg(long)]
    pub disk: Option<ByteSize>,

    /// Cloud image to boot [default: the AlmaLinux 9 GenericCloud image].
    #[arg(long = "image-url", alias = "image", value_name = "URL")]
    pub image_url: Option<String>,

    /// How the image is verified (recorded in the guest's spec).
    #[command(flatten)]
    pub verify: crate::args::VerifyArgs,

    /// Your SSH public key [default: ~/.ssh/id_ed25519.pub].
    #[arg(long, value_name = "PATH")]
    pub ssh_key: Option<PathBuf>,

    /// Login user created in the guest, with passwordless sudo [default: almalinux].
    #[arg(long)]
    pub user: Option<String>,

    /// Guest hostname [default: the guest name, made hostname-safe].
    #[arg(long)]
    pub hostname: Option<String>,

    /// The almavmm-agent binary to install in the guest (see the lookup order below).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,

    /// Hypervisor backend [default: vmd on OpenBSD, qemu elsewhere].
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,

    /// How long to wait for the guest's sshd and then for its agent setup, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub timeout: u64,

    /// QEMU accelerator: auto uses KVM when a test guest runs under it, and restarts a guest
    /// that crashes under KVM before its sshd answered under TCG (remembered until the
    /// host reboots); kvm and tcg force one. vmd has vmm(4) only.
    #[arg(long, value_enum, env = "ALMAVMM_ACCEL", default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,

    /// Print a machine-readable result on stdout when done (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
}

/// The final result, for `--json`.
#[derive(Debug, Serialize)]
pub struct UpResult {
    pub name: String,
    pub state: &'static str,
    pub already_up: bool,
    pub ssh: SshInfo,
    pub stages: Vec<StageRecord>,
    pub health: Option<HealthSummary>,
}

#[derive(Debug, Serialize)]
pub struct SshInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub known_hosts: PathBuf,
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct HealthSummary {
    pub agent_version: String,
    pub distro: String,
    pub kernel: String,
    pub clocksource: Option<String>,
    pub clock_path: String,
    pub setup_ok: bool,
}

const STAGES: usize = 12;

pub fn run(args: UpArgs) -> anyhow::Result<u8> {
    let home = Home::from_env()?;
    home.ensure_dir(&home.vms_dir())?;
    let existed = home.vm_dir(&args.name).is_dir();
    let dir = home.ensure_dir(&home.vm_dir(&args.name))?;
    // The lock file lives in the guest's folder, which must exist first. Like start: right
    // after an idle stop, the proxy's reaper may still hold the guest.
    let lock = crate::state::vm::VmLock::acquire_waiting(&dir.join("lock"), args.name.as_str(), lifecycle::LOCK_WAIT)?;
    let vm = match load_or_create(&home, &args, &dir) {
        Ok(vm) => vm,
        Err(e) => {
            // Refused input leaves nothing behind: not even the folder made for the lock.
            if !existed {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e);
        }
    };
    let backend = backend::for_kind(vm.spec.backend, &home)?;
    let mut stages = Stages::new(STAGES, false);
    let result = bring_up(&home, &vm, backend.as_ref(), &args, &mut stages);
    drop(lock);
    // The guest exists now, whether or not it came up: `ssh NAME.almavmm` should know it.
    if let Some(exe) = agent::locate::own_exe() {
        crate::ssh::config::refresh(&home, &exe);
    }
    let result = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(crate::exit::OK)
}

fn default_ssh_key() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set; pass --ssh-key")?;
    let p = PathBuf::from(home).join(".ssh/id_ed25519.pub");
    if !p.is_file() {
        bail!(
            "no SSH key given and {} does not exist: create one with `ssh-keygen -t ed25519` or pass --ssh-key PATH",
            p.display()
        );
    }
    Ok(p)
}

fn load_or_create(home: &Home, args: &UpArgs, dir: &Path) -> anyhow::Result<Vm> {
    if dir.join("vm.yaml").is_file() {
        let vm = Vm::load(home, &args.name)?;
        warn_ignored_flags(&vm.spec, args);
        return Ok(vm);
    }
    let memory = args.memory.unwrap_or(DEFAULT_MEMORY);
    if memory < MIN_MEMORY {
        bail!("--memory {memory} is too little for a cloud image; give at least {MIN_MEMORY}");
    }
    let disk = args.disk.unwrap_or(DEFAULT_DISK);
    let backend = args.backend.unwrap_or_else(BackendKind::native);
    let cpus = args.cpus.unwrap_or(1);
    if cpus == 0 || cpus > 64 {
        bail!("--cpus {cpus} is not a number of CPUs a guest can have: give 1 to 64");
    }
    if cpus > 1 && backend == BackendKind::Vmd {
        bail!("--cpus {cpus}: vmd runs guests with a single virtual CPU");
    }
    let user = args.user.clone().unwrap_or_else(|| "almalinux".into());
    seed::check_user(&user)?;
    let hostname = args.hostname.clone().unwrap_or_else(|| seed::default_hostname(args.name.as_str()));
    seed::check_hostname(&hostname)?;
    let ssh_key = match &args.ssh_key {
        Some(p) => std::path::absolute(p)?,
        None => default_ssh_key()?,
    };
    keys::read_authorized_key(&ssh_key)?;
    let trust = match args.verify.trust() {
        Trust::InsecureSkipVerify => ImageTrust::InsecureSkipVerify,
        Trust::Key { key, fingerprint } => ImageTrust::Key { key: absolute_if_path(&key), fingerprint },
        Trust::AlmaLinux9 => ImageTrust::Almalinux9,
    };
    let spec = VmSpec {
        name: args.name.clone(),
        backend,
        memory,
        cpus,
        disk_size: disk,
        image: ImageSpec {
            url: args.image_url.clone().unwrap_or_else(|| image::DEFAULT_IMAGE_URL.into()),
            checksum_url: args.verify.checksum_url.clone(),
            trust,
            sha256: None,
        },
        user,
        hostname,
        ssh_key,
        instance_id: seed::new_instance_id(args.name.as_str()),
    };
    if spec.image.trust == ImageTrust::InsecureSkipVerify {
        eprintln!("(recorded in {}'s vm.yaml: its image was not verified)", spec.name);
    }
    let vm = Vm { name: args.name.clone(), dir: dir.to_owned(), spec };
    vm.save_spec()?;
    vm.log_event("created");
    Ok(vm)
}

/// A key given as a relative file path is stored absolute, so later runs from elsewhere work.
fn absolute_if_path(key: &str) -> String {
    if key.contains("://") {
        key.to_string()
    } else {
        std::path::absolute(key).map(|p| p.display().to_string()).unwrap_or_else(|_| key.to_string())
    }
}

fn warn_ignored_flags(spec: &VmSpec, args: &UpArgs) {
    let mut ignored = Vec::new();
    if args.memory.is_some_and(|m| m != spec.memory) {
        ignored.push(format!("--memory (it has {})", spec.memory));
    }
    if args.cpus.is_some_and(|c| c != spec.cpus) {
        ignored.push(format!("--cpus (it has {})", spec.cpus));
    }
    if args.disk.is_some_and(|d| d != spec.disk_size) {
        ignored.push(format!("--disk (it has {})", spec.disk_size));
    }
    if args.image_url.as_ref().is_some_and(|u| *u != spec.image.url) {
        ignored.push("--image-url".into());
    }
    if args.user.as_ref().is_some_and(|u| *u != spec.user) {
        ignored.push(format!("--user (it has {})", spec.user));
    }
    if args.backend.is_some_and(|b| b != spec.backend) {
        ignored.push(format!("--backend (it uses {})", spec.backend.as_str()));
    }
    if !ignored.is_empty() {
        eprintln!(
            "note: {} exists; ignoring {}. Edit its vm.yaml to change what can be changed, or destroy and re-create it.",
            spec.name,
            ignored.join(", ")
        );
    }
}

fn image_source(spec: &ImageSpec) -> ImageSource {
    ImageSource {
        url: spec.url.clone(),
        checksum_url: spec.checksum_url.clone(),
        trust: match &spec.trust {
            ImageTrust::Almalinux9 => Trust::AlmaLinux9,
            ImageTrust::Key { key, fingerprint } => Trust::Key { key: key.clone(), fingerprint: fingerprint.clone() },
            ImageTrust::InsecureSkipVerify => Trust::InsecureSkipVerify,
        },
    }
}

/// OpenBSD: vmd, firmware, forwarding, pf and vm.conf, each checked and fixed if needed.
/// Returns what was changed. Before anything asks vmd a question: it may not run yet.
fn host_setup(backend: &dyn Backend) -> anyhow::Result<String> {
    if backend.kind() != BackendKind::Vmd {
        return Ok("nothing to set up for QEMU".into());
    }
    let facts = crate::hostsetup::gather_auto()?;
    let actions = crate::hostsetup::plan(&facts);
    if actions.is_empty() {
        return Ok("vmd, firmware, forwarding and pf already set up".into());
    }
    let applied = crate::hostsetup::apply(&actions, false, &mut std::io::stderr())?;
    Ok(format!("{} change(s) applied", applied.len()))
}

/// What every stage of one `up` works on.
struct Up<'a> {
    home: &'a Home,
    vm: &'a Vm,
    backend: &'a dyn Backend,
    args: &'a UpArgs,
    /// How long to wait for sshd, then for the agent's first-boot setup.
    timeout: Duration,
    /// This instance has finished first boot: its seed no longer holds the private host key.
    provisioned: bool,
}

fn bring_up(home: &Home, vm: &Vm, backend: &dyn Backend, args: &UpArgs, st: &mut Stages) -> anyhow::Result<UpResult> {
    let state = vm.state();
    let provisioned = state.provisioned_instance.as_deref() == Some(vm.spec.instance_id.as_str());
    let up = Up { home, vm, backend, args, timeout: Duration::from_secs(args.timeout), provisioned };

    st.run("host", |_| up.check_host())?;
    let already_up = provisioned && backend.state(vm)? == RunState::Running;
    let base = st.run("image", |s| up.fetch_and_prepare_image(s))?;
    st.run("disk", |_| up.create_disk(base))?;
    st.run("seed", |_| up.write_seed())?;
    st.run("define", |_| up.define_guest())?;
    st.run("start", |_| up.start_guest())?;
    let endpoint = st.run("address", |_| up.wait_for_address())?;
    let target = Target::for_vm(vm, endpoint.clone());
    st.run("ssh", |s| up.check_pinned_ssh(s, &endpoint, &target))?;
    st.run("agent", |s| up.wait_for_agent_setup(s, &target))?;
    st.run("seed scrub", |_| up.scrub_seed())?;
    st.run("clock", |_| up.sync_clock(&target))?;
    let health = st.run("health", |_| up.health_summary(&target))?;

    let ssh = say_how_to_connect(vm, endpoint, already_up);
    Ok(UpResult { name: vm.name.to_string(), state: "running", already_up, ssh, stages: st.records().to_vec(), health })
}

impl Up<'_> {
    /// Host setup first: before anything asks vmd a question, as it may not run yet.
    fn check_host(&self) -> anyhow::Result<Ended> {
        let setup = host_setup(self.backend).fails_as("host setup failed")?;
        let desc = self.backend.check().fails_as("backend unavailable")?;
        Ok(Ended::done(format!("{desc}; {setup}")))
    }

    /// The prepared base image: only needed while the disk does not exist yet.
    fn fetch_and_prepare_image(&self, s: &Running) -> anyhow::Result<Ended<Option<PathBuf>>> {
        let vm = self.vm;
        if vm.disk().is_file() {
            return Ok(Ended::skipped("the guest's disk exists").with(None));
        }
        let src = image_source(&vm.spec.image);
        s.note("fetching and verifying");
        let fetched = image::fetch(self.home, &src)?;
        if let Some(known) = &vm.spec.image.sha256
            && *known != fetched.sha256
        {
            tracing::info!("image changed since {} was created: {known} -> {}", vm.name, fetched.sha256);
        }
        s.note("inspecting and preparing");
        let prepared = image::prepare(self.home, &fetched.path, &fetched.sha256)?;
        let mut spec = vm.spec.clone();
        spec.image.sha256 = Some(fetched.sha256.clone());
        Vm { spec: spec.clone(), ..vm.clone() }.save_spec()?;
        let how = format!(
            "{} {}, {}; {}",
            fetched.file_name,
            if fetched.downloaded { "downloaded" } else { "cached" },
            if fetched.signature_checked {
                "signature and SHA-256 verified"
            } else {
                "signature NOT checked (--insecure-skip-verify)"
            },
            if prepared.converted { "converted for vmd (no compressed clusters)" } else { "usable as is" }
        );
        Ok(Ended::done(how).with(Some(prepared.path)))
    }

    fn create_disk(&self, base: Option<PathBuf>) -> anyhow::Result<Ended> {
        let vm = self.vm;
        if vm.disk().is_file() {
            return Ok(Ended::skipped("exists; never overwritten"));
        }
        let base = base.expect("the image stage ran because the disk is missing");
        let tool = match vm.spec.backend {
            BackendKind::Vmd => image::OverlayTool::Vmctl,
            BackendKind::Qemu => image::OverlayTool::QemuImg,
        };
        image::create_overlay(&base, &vm.disk(), vm.spec.disk_size.as_u64(), tool)?;
        Ok(Ended::done(format!("{} overlay on {}", vm.spec.disk_size, base.display())))
    }

    fn write_seed(&self) -> anyhow::Result<Ended> {
        let vm = self.vm;
        if vm.seed().is_file() && vm.known_hosts().is_file() {
            return Ok(Ended::skipped("exists"));
        }
        if self.provisioned {
            bail!(
                "{}'s seed or known_hosts file is gone although the guest was provisioned; without its pinned key it \
                 cannot be trusted again: destroy and re-create it",
                vm.name
            );
        }
        Ok(Ended::done(write_first_seed(self.home, vm, self.args)?))
    }

    fn define_guest(&self) -> anyhow::Result<Ended> {
        self.backend.define(self.vm)?;
        Ok(Ended::done(format!("{} backend", self.backend.kind().as_str())))
    }

    fn start_guest(&self) -> anyhow::Result<Ended> {
        let vm = self.vm;
        match self.backend.state(vm)? {
            RunState::Running => {
                // `up` is a person asking for the guest: the ssh-proxy must not stop it later.
                vm.update_state(|x| x.started_by = StartedBy::Hand)?;
                Ok(Ended::skipped("already running"))
            }
            RunState::Paused => bail!("{} is paused; resume it with the hypervisor first", vm.name),
            _ => {
                self.backend.start(vm, self.args.accel)?;
                vm.update_state(|x| x.started_by = StartedBy::Hand)?;
                vm.log_event("started by up");
                Ok(Ended::done("booting"))
            }
        }
    }

    fn wait_for_address(&self) -> anyhow::Result<Ended<Endpoint>> {
        let endpoint = wait_endpoint(self.backend, self.vm, Duration::from_secs(120))?;
        Ok(Ended::done(endpoint.to_string()).with(endpoint))
    }

    /// sshd answers, and a command runs over SSH with the pinned host key.
    fn check_pinned_ssh(&self, s: &Running, endpoint: &Endpoint, target: &Target) -> anyhow::Result<Ended> {
        s.note("waiting for sshd");
        let started = Instant::now();
        lifecycle::wait_sshd(self.backend, self.vm, endpoint, self.timeout).fails_as("no SSH server")?;
        let remaining = self.timeout.saturating_sub(started.elapsed());
        let out = retry_ssh(target, remaining.max(Duration::from_secs(60)))?;
        Ok(Ended::done(format!("pinned host key verified ({})", out.trim())))
    }

    fn wait_for_agent_setup(&self, s: &Running, target: &Target) -> anyhow::Result<Ended> {
        if self.provisioned {
            return Ok(Ended::skipped("set up at first boot"));
        }
        s.note("waiting for first-boot setup");
        wait_agent(self.vm, target, self.timeout)?;
        Ok(Ended::done("setup finished for this instance"))
    }

    fn scrub_seed(&self) -> anyhow::Result<Ended> {
        let vm = self.vm;
        if self.provisioned {
            return Ok(Ended::skipped("no private key on the seed"));
        }
        rewrite_seed_without_private_key(self.home, vm, self.args)?;
        vm.update_state(|x| x.provisioned_instance = Some(vm.spec.instance_id.clone()))?;
        vm.log_event("provisioned; seed rewritten without the private host key");
        Ok(Ended::done("seed rewritten without the private host key"))
    }

    /// A fresh guest set its clock from the RTC, to the second at best. A clock that cannot
    /// be measured does not stop `up`.
    fn sync_clock(&self, target: &Target) -> anyhow::Result<Ended> {
        Ok(match crate::clock::sync_if_off(target) {
            Ok((m, None)) => Ended::done(format!(
                "offset {} (±{:.1} ms)",
                crate::clock::human_offset(m.offset_ns),
                m.error_bound_ns as f64 / 1e6
            )),
            Ok((b, Some(a))) => {
                self.vm.update_state(|x| x.last_clock_check = Some(almavmm_shared::clock::unix_now()))?;
                Ended::done(format!(
                    "was {}, synced to {}",
                    crate::clock::human_offset(b.offset_ns),
                    crate::clock::human_offset(a.offset_ns)
                ))
            }
            Err(e) => Ended::failed(e.to_string()),
        })
    }

    /// The agent's health report, summed up; a guest that does not answer does not stop `up`.
    fn health_summary(&self, target: &Target) -> anyhow::Result<Ended<Option<HealthSummary>>> {
        let h = match remote::health(target) {
            Ok(h) => h,
            Err(e) => return Ok(Ended::failed(format!("{e}")).with(None)),
        };
        let summary = HealthSummary {
            agent_version: h.agent.version.clone(),
            distro: h.distro.pretty_name.clone(),
            kernel: h.kernel.clone(),
            clocksource: h.clocksource.current.clone(),
            clock_path: h.clock_path.reason.clone(),
            setup_ok: h.setup.as_ref().is_some_and(|r| r.succeeded()),
        };
        let detail = format!(
            "{}, kernel {}, clocksource {}, agent {}",
            summary.distro,
            summary.kernel,
            summary.clocksource.as_deref().unwrap_or("?"),
            summary.agent_version
        );
        Ok(Ended::done(detail).with(Some(summary)))
    }
}

/// The closing lines: whether anything was done, and how to log in.
fn say_how_to_connect(vm: &Vm, endpoint: Endpoint, already_up: bool) -> SshInfo {
    let ssh_cmd = format!(
        "ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o HostKeyAlias={} -p {} {}@{}",
        vm.known_hosts().display(),
        vm.name,
        endpoint.port,
        vm.spec.user,
        endpoint.host
    );
    if already_up {
        eprintln!("{} was already up; nothing to do.", vm.name);
    } else {
        eprintln!("{} is up.", vm.name);
    }
    eprintln!("  connect: {ssh_cmd}");
    eprintln!("  or, after `almavmm-host ssh-config`: ssh {}.almavmm", vm.name);
    SshInfo {
        host: endpoint.host,
        port: endpoint.port,
        user: vm.spec.user.clone(),
        known_hosts: vm.known_hosts(),
        command: ssh_cmd,
    }
}

/// The agent to carry on the seed, and where it came from.
fn agent_payload(home: &Home, explicit: Option<&Path>) -> anyhow::Result<(AgentPayload, String)> {
    let found = agent::for_seed(home, explicit)?;
    let bytes = Checksummed::bytes(found.bytes);
    let payload = match found.form {
        agent::Form::Binary => AgentPayload::Binary(bytes),
        agent::Form::SourceBundle => AgentPayload::SourceBundle(bytes),
    };
    Ok((payload, found.desc))
}

fn seed_inputs<'a>(
    vm: &'a Vm,
    key: &'a keys::AuthorizedKey,
    host_key: Option<&'a keys::HostKeyPair>,
    agent: AgentPayload,
) -> SeedInputs<'a> {
    SeedInputs {
        hostname: &vm.spec.hostname,
        user: &vm.spec.user,
        authorized_key: key,
        instance_id: &vm.spec.instance_id,
        host_key,
        agent,
    }
}

/// First seed: a fresh host key pair; the public half pinned in known_hosts, the private
/// half only inside the ISO.
fn write_first_seed(home: &Home, vm: &Vm, args: &UpArgs) -> anyhow::Result<String> {
    let key = keys::read_authorized_key(&vm.spec.ssh_key)?;
    let (agent, agent_desc) = agent_payload(home, args.agent.as_deref())?;
    let host_key = keys::generate_host_key(vm.name.as_str())?;
    let line = keys::known_hosts_line(vm.name.as_str(), &host_key.public_openssh);
    // Pin first: a seed must never exist without its pin.
    almavmm_shared::atomic::write_file(&vm.known_hosts(), line.as_bytes(), 0o600)?;
    seed::write_seed(&vm.seed(), seed_inputs(vm, &key, Some(&host_key), agent), true, Durability::Synced)?;
    Ok(format!("host key pinned; {agent_desc}"))
}

fn rewrite_seed_without_private_key(home: &Home, vm: &Vm, args: &UpArgs) -> anyhow::Result<()> {
    let key = keys::read_authorized_key(&vm.spec.ssh_key)?;
    // The payload stays (the agent may be re-run by hand from it); only the key goes.
    let agent = agent_payload(home, args.agent.as_deref()).map(|(a, _)| a).unwrap_or(AgentPayload::Missing);
    seed::write_seed(&vm.seed(), seed_inputs(vm, &key, None, agent), true, Durability::Synced)?;
    Ok(())
}

fn wait_endpoint(backend: &dyn Backend, vm: &Vm, limit: Duration) -> anyhow::Result<Endpoint> {
    let known = || backend.ssh_endpoint(vm);
    match wait_until(Deadline::after(limit), Duration::from_millis(250), known)? {
        Some(ep) => Ok(ep),
        None => bail!("{} has no known address after {}s\n{}", vm.name, limit.as_secs(), lifecycle::boot_diagnosis(vm)),
    }
}

/// sshd may answer before cloud-init has installed the user's key: retry authentication
/// failures until the deadline, but never a host-key mismatch.
fn retry_ssh(t: &Target, limit: Duration) -> anyhow::Result<String> {
    let mut last = None;
    let attempt = || match t.run("uname -sr") {
        Ok(out) => Ok(Some(out.stdout)),
        Err(e @ client::SshError::HostKeyChanged { .. }) => Err(e),
        Err(e) => {
            tracing::debug!("ssh not ready yet: {e}");
            last = Some(e);
            Ok(None)
        }
    };
    match wait_until(Deadline::after(limit), Duration::from_secs(1), attempt)? {
        Some(uname) => Ok(uname),
        None => Err(last.expect("a wait that timed out saw a failure").into()),
    }
}

fn wait_agent(vm: &Vm, t: &Target, limit: Duration) -> anyhow::Result<()> {
    // The failure of the latest attempt, if it failed: what to report at the deadline.
    let mut last = None;
    let attempt = || -> anyhow::Result<Option<()>> {
        last = None;
        match remote::boot_done(t) {
            Ok(Some(id)) if id == vm.spec.instance_id => return Ok(Some(())),
            Ok(Some(id)) => {
                tracing::debug!("boot-done marker is for instance {id}, waiting for {}", vm.spec.instance_id)
            }
            Ok(None) => {}
            // Never retry a key problem; anything else (cloud-init restarts sshd during first
            // boot, resetting connections) is retried until the deadline.
            Err(e @ (client::SshError::HostKeyChanged { .. } | client::SshError::AuthRefused { .. })) => {
                return Err(e.into());
            }
            Err(e) => {
                tracing::debug!("asking for the boot-done marker: {e}");
                last = Some(e);
            }
        }
        let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        if let Some(failed) = console.lines().find(|l| l.contains("almavmm-bootstrap:") && l.contains("FAILED")) {
            bail!("the guest's first-boot bootstrap failed: {}\n{}", failed.trim(), vm.console_tail(25));
        }
        Ok(None)
    };
    if wait_until(Deadline::after(limit), Duration::from_secs(2), attempt)?.is_some() {
        return Ok(());
    }
    match last {
        Some(e) => Err(e.into()),
        None => {
            bail!("the agent did not finish first-boot setup within {}s\n{}", limit.as_secs(), vm.console_tail(25))
        }
    }
}

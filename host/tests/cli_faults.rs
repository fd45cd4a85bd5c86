//! Bad input and faults on the command line, each with the message a user needs and the exit
//! status scripts rely on (1 failure, 2 usage, 3 no such guest). None of these boots a guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_almavmm-host");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
        assert!(st.success());
        Env { dir }
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn key_pub(&self) -> String {
        self.dir.path().join("id_ed25519.pub").display().to_string()
    }
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_path(args, None)
    }
    fn run_with_path(&self, args: &[&str], path: Option<&Path>) -> Output {
        let mut c = Command::new(BIN);
        c.args(args).env("ALMAVMM_HOME", self.home()).env("NO_COLOR", "1").env_remove("ALMAVMM_AGENT");
        if let Some(p) = path {
            c.env("PATH", p);
        }
        c.output().unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn invalid_names_and_sizes_are_usage_errors_that_say_why() {
    let e = Env::new();
    let o = e.run(&["up", "-bad", "--ssh-key", &e.key_pub()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = e.run(&["up", "my/vm", "--ssh-key", &e.key_pub()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("contains '/'"), "{}", stderr(&o));
    // vmctl's parse_vmid (usr.sbin/vmctl/main.c) reads all-digit words as VM ids.
    for cmd in ["up", "seed"] {
        let o = e.run(&[cmd, "3", "--ssh-key", &e.key_pub()]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        assert!(stderr(&o).contains("made only of digits"), "{cmd}: {}", stderr(&o));
    }
    let o = e.run(&["up", "alma", "--memory", "lots", "--ssh-key", &e.key_pub()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"lots\" is not a size: write a whole number with a unit"), "{}", stderr(&o));
    let o = e.run(&["up", "alma", "--disk", "20", "--ssh-key", &e.key_pub()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("such as 512M, 2G or 20G"), "{}", stderr(&o));
    // Nothing was created for input that was refused.
    assert!(!e.home().join("vms/alma/vm.yaml").exists());
}

#[test]
fn too_little_memory_is_refused_before_anything_is_created() {
    let e = Env::new();
    let o = e.run(&["up", "alma", "--memory", "128M", "--ssh-key", &e.key_pub()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("give at least 512M"), "{}", stderr(&o));
    assert!(!e.home().join("vms/alma").exists(), "a refused up left the guest's folder behind");
}

#[test]
fn unknown_guests_exit_3_and_name_the_ones_that_exist() {
    let e = Env::new();
    for cmd in [
        &["start", "ghost"][..],
        &["stop", "ghost"],
        &["doctor", "ghost"],
        &["sync", "ghost"],
        &["destroy", "ghost", "--yes"],
    ] {
        let o = e.run(cmd);
        assert_eq!(o.status.code(), Some(3), "{cmd:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("no guest named \"ghost\"; there are no guests yet"), "{}", stderr(&o));
    }
    let o = e.run(&["ssh-proxy", "ghost.almavmm", "22"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(o.stdout.is_empty(), "the proxy must never write to ssh's transport on error");
}

#[test]
fn missing_qemu_is_explained_with_the_package_to_install() {
    let e = Env::new();
    // A PATH with none of the host's programs on it.
    let empty = e.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = e.run_with_path(&["up", "alma", "--ssh-key", &e.key_pub()], Some(&empty));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(
            "`qemu-system-x86_64` was not found on PATH; install it with `apt-get install qemu-system-x86 qemu-utils`"
        ),
        "{err}"
    );
}

#[test]
fn a_private_key_is_refused_for_up_too() {
    let e = Env::new();
    let private = e.dir.path().join("id_ed25519").display().to_string();
    let o = e.run(&["up", "alma", "--ssh-key", &private]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("holds a private key; pass the public half"), "{}", stderr(&o));
}

/// A stopped guest with a vm.yaml (no disk), for commands that only need to find it.
fn define_stopped_guest(e: &Env) -> std::path::PathBuf {
    use almavmm_host::state::size::ByteSize;
    use almavmm_host::state::spec::{BackendKind, ImageSpec, ImageTrust, VmSpec};

    let dir = e.home().join("vms/alma");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = VmSpec {
        name: "alma".parse().unwrap(),
        backend: BackendKind::Qemu,
        memory: ByteSize::gib(1),
        cpus: 1,
        disk_size: ByteSize::gib(10),
        image: ImageSpec {
            url: "http://127.0.0.1/a.qcow2".into(),
            checksum_url: None,
            trust: ImageTrust::InsecureSkipVerify,
            sha256: None,
        },
        user: "almalinux".into(),
        hostname: "alma".into(),
        ssh_key: e.key_pub().into(),
        instance_id: "iid-almavmm-alma-00".into(),
    };
    spec.save(&dir.join("vm.yaml")).unwrap();
    dir
}

/// Run `args` while another command holds the guest for a second, as an ssh-proxy's reaper
/// does while it finishes an idle stop: the command says so, waits for the holder to let go,
/// then does its work.
fn run_while_held(
    e: &Env,
    dir: &std::path::Path,
    args: &[&str],
    path: Option<&Path>,
) -> (std::process::Output, String) {
    let held = almavmm_host::state::vm::VmLock::acquire(&dir.join("lock"), "alma").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        drop(held);
    });
    let o = e.run_with_path(args, path);
    release.join().unwrap();
    let err = stderr(&o);
    let waiting =
        format!("another almavmm-host command (pid {}) is working on alma; waiting up to", std::process::id());
    assert!(err.contains(&waiting), "{err}");
    (o, err)
}

#[test]
fn stop_waits_for_a_command_that_holds_the_guest() {
    let e = Env::new();
    let dir = define_stopped_guest(&e);
    let (o, err) = run_while_held(&e, &dir, &["stop", "alma"], None);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("alma is not running"), "{err}");
}

/// `destroy` right after an idle stop: the e2e met the reaper still holding the guest.
#[test]
fn destroy_waits_for_a_command_that_holds_the_guest() {
    let e = Env::new();
    let dir = define_stopped_guest(&e);
    let (o, err) = run_while_held(&e, &dir, &["destroy", "alma", "--yes"], None);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("alma destroyed"), "{err}");
    assert!(!dir.exists(), "the guest's folder is still there");
}

/// `up` of an existing guest right after an idle stop waits too, instead of refusing. Then
/// it goes on to its first stage, which fails at once here: no QEMU on an empty PATH.
#[test]
fn up_waits_for_a_command_that_holds_the_guest() {
    let e = Env::new();
    let dir = define_stopped_guest(&e);
    let empty = tempfile::tempdir().unwrap();
    let (o, err) = run_while_held(&e, &dir, &["up", "alma"], Some(empty.path()));
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("wait for it to finish, or stop it"), "up refused instead of waiting: {err}");
    assert!(err.contains("was not found on PATH"), "up did not go on to its host stage: {err}");
}

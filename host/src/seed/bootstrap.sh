#!/bin/sh
# almavmm first-boot bootstrap. cloud-init runs it once per instance (runcmd, final stage).
#
# It installs what the seed carries (the agent, or the agent's source bundle, and the
# vmm_clock module source) and hands over to `almavmm-agent setup`. Every line it prints on
# the console starts with "almavmm-bootstrap:" so the host, and a person watching
# `vmctl console`, can follow each step; the full output of every command goes to
# @BOOTSTRAP_LOG@.
set -u

VERSION='@VERSION@'
STATE='@STATE_DIR@'
LOG='@BOOTSTRAP_LOG@'
PAYLOAD_DIR='@PAYLOAD_DIR@'
AGENT_FILE='@AGENT_FILE@'
BUNDLE_FILE='@BUNDLE_FILE@'
MANIFEST='@MANIFEST_FILE@'
KMOD_TARBALL='@KMOD_TARBALL@'
AGENT_BIN='@AGENT_BIN@'
MNT=/run/almavmm/seed
SELINUXFS=/sys/fs/selinux
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

mkdir -p "$STATE"
chmod 0755 "$STATE"

say() {
    echo "almavmm-bootstrap: $*" >>"$LOG"
    # /dev/console is the serial port on cloud images (the last console= argument).
    echo "almavmm-bootstrap: $*" >/dev/console 2>/dev/null || echo "almavmm-bootstrap: $*" >&2
}

unmount_seed() {
    if grep -q " $MNT " /proc/mounts 2>/dev/null; then umount "$MNT"; fi
}

# step NAME COMMAND [ARGS...]: run one step, report it, stop everything on failure.
step() {
    name=$1
    shift
    say "$name: started"
    started=$(date +%s)
    if "$@" >>"$LOG" 2>&1; then
        say "$name: ok ($(($(date +%s) - started))s)"
    else
        rc=$?
        say "$name: FAILED (exit $rc); full log in $LOG"
        tail -n 15 "$LOG" | sed 's/^/almavmm-bootstrap: | /' >/dev/console 2>/dev/null
        unmount_seed >>"$LOG" 2>&1
        exit 1
    fi
}

mount_seed() {
    mkdir -p "$MNT"
    unmount_seed
    mount -o ro LABEL=CIDATA "$MNT" || mount -o ro /dev/disk/by-label/CIDATA "$MNT"
}

verify_payload() {
    # In a subshell: a shell left inside the mount would keep it busy for umount.
    (cd "$MNT/$PAYLOAD_DIR" && sha256sum -c --strict "$MANIFEST")
}

install_agent_binary() {
    install -D -m 0755 "$MNT/$PAYLOAD_DIR/$AGENT_FILE" "$AGENT_BIN"
}

install_rust_toolchain() {
    if command -v cargo >/dev/null 2>&1; then
        echo "cargo already installed: $(cargo --version)"
    elif command -v dnf >/dev/null 2>&1; then
        dnf install -y cargo rust
    elif command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y cargo ||
            { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y cargo; }
    else
        echo "no dnf or apt-get: cannot install a Rust toolchain to build the agent" >&2
        return 1
    fi
}

build_agent_from_bundle() {
    src="$STATE/agent-src"
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$MNT/$PAYLOAD_DIR/$BUNDLE_FILE" -C "$src" &&
        (cd "$src" && ALMAVMM_GIT_COMMIT=$(cat .almavmm-commit 2>/dev/null || echo unknown) \
            CARGO_HOME="$STATE/cargo-home" cargo build --release --offline --locked -p almavmm-agent) &&
        install -D -m 0755 "$src/target/release/almavmm-agent" "$AGENT_BIN" &&
        echo "built-in-guest" >"$STATE/agent-origin"
}

install_kmod_source() {
    mkdir -p /usr/src &&
        rm -rf "/usr/src/vmm_clock-$VERSION" &&
        tar -xzf "$MNT/$PAYLOAD_DIR/$KMOD_TARBALL" -C /usr/src --no-same-owner &&
        test -f "/usr/src/vmm_clock-$VERSION/Makefile"
}

# AlmaLinux enforces SELinux. What was just unpacked or built may carry a label that does not
# fit where it now lies (files built under $STATE are var_lib_t, not bin_t), and the binary's
# label decides the domain systemd starts the watcher in; reset both to the policy's
# defaults before `setup` starts it (docs/selinux.md). Nothing to do without SELinux.
restore_selinux_labels() {
    if [ ! -e "$SELINUXFS/enforce" ]; then
        echo "SELinux is off: no labels to set"
    elif ! command -v restorecon >/dev/null 2>&1; then
        echo "SELinux is on but restorecon is missing (policycoreutils): labels left as created"
    else
        restorecon -R -v "$AGENT_BIN" "/usr/src/vmm_clock-$VERSION"
    fi
}

say "version $VERSION starting"
step "mount seed" mount_seed
step "verify payload" verify_payload
if [ -f "$MNT/$PAYLOAD_DIR/$AGENT_FILE" ]; then
    step "install agent" install_agent_binary
    echo "prebuilt" >"$STATE/agent-origin"
elif [ -f "$MNT/$PAYLOAD_DIR/$BUNDLE_FILE" ]; then
    step "install rust toolchain" install_rust_toolchain
    step "build agent from source bundle" build_agent_from_bundle
else
    say "no agent on the seed (neither $AGENT_FILE nor $BUNDLE_FILE): FAILED; rebuild the seed with --agent"
    unmount_seed
    exit 1
fi
step "install module source" install_kmod_source
step "selinux labels" restore_selinux_labels
step "unmount seed" unmount_seed
step "agent setup" "$AGENT_BIN" setup
say "done"

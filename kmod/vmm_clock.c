// SPDX-License-Identifier: GPL-2.0
/*
 * vmm_clock: a clocksource for Linux guests of OpenBSD vmm(4), reading the host's
 * paravirtual clock page (see README.md for what it reads and why).
 *
 * Written against the kernel API from 5.10 to 7.3, which `cargo xtask kmod` proves by
 * building it, W=1 and warning-free, in a root per kernel with that distribution's gcc
 * (Debian 11's 5.10, 12's 6.1, 13's 6.12 and trixie-backports' 7.3): its own CPUID scan with
 * cpuid() (header checked by version, below); wrmsr_safe(), whose (msr, low, high) form survived the
 * 6.16 MSR rework that renamed wrmsrl() to wrmsrq() and replaced native_write_msr();
 * rdtsc_ordered(), which moved from <asm/msr.h> to <asm/tsc.h> in 6.16 (both are included);
 * and only clocksource fields present in all of them.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/clocksource.h>
#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/err.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/nmi.h>
#include <linux/notifier.h>
#include <linux/percpu.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/version.h>
#include <asm/msr.h>
#include <asm/processor.h>
#include <asm/tsc.h>
/*
 * cpuid(), cpuid_eax(), cpuid_ecx(): declared in <asm/processor.h> up to 6.14; the 2025 CPUID
 * header rework (6.15) moved them to <asm/cpuid/api.h>, which <asm/processor.h> kept
 * including for a while but no longer does by 7.3 (it includes only <asm/cpuid/types.h>:
 * the kernel matrix's build against Debian's 7.3.4 failed with implicit declarations).
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
#include <asm/cpuid/api.h>
#endif

#ifndef CONFIG_X86
#error "vmm_clock reads x86 CPUID, MSRs and the TSC: it builds for x86 only"
#endif

static __always_inline u64 vmm_clock_rdtsc(void)
{
	return rdtsc_ordered();
}

static __always_inline void vmm_clock_relax(void)
{
	cpu_relax();
}

#include "vmm_clock_time.h"

static bool verbose;
module_param(verbose, bool, 0644);
MODULE_PARM_DESC(verbose, "Log each CPU's clock page as it is enabled and disabled");

/*
 * One zeroed page per CPU, allocated the first time the CPU comes online and kept until
 * unload. A whole page because it is page-aligned (vmm rejects a struct crossing a page and
 * ignores the low 4 address bits), never moves, shares no cache line with other data the
 * host would then keep dirtying, and lies in the kernel's linear map, so page_to_phys() is
 * its exact guest-physical address with no translation helper (per-CPU memory may be
 * vmalloc'ed, where __pa() would be wrong).
 */
static DEFINE_PER_CPU(struct page *, vmm_clock_pages);

/* This CPU's page while its MSR points at it, else NULL. Written only on that CPU. */
static DEFINE_PER_CPU(struct vmm_clock_page *, vmm_clock_live);

/* The last copy of its own page each CPU read: how a host suspend is noticed. */
static DEFINE_PER_CPU(struct vmm_clock_cpu_state, vmm_clock_state);

/*
 * The page read by a CPU whose own page is not enabled: a CPU being brought up reads the
 * clock before the hotplug callback that enables its page runs, and one going down after the
 * callback that disabled it. It points at a live page while any CPU is live, and the pages
 * outlive the clocksource, so it never dangles. Reads through it are always clamped.
 */
static struct vmm_clock_page *vmm_clock_fallback;
static unsigned int vmm_clock_fallback_cpu;

static vmm_clock_last_t vmm_clock_last = ATOMIC64_INIT(0);
static int vmm_clock_hp_state;

/* Set by the reboot notifier: from then on no CPU may switch its page (back) on. */
static bool vmm_clock_shutting_down;

/*
 * Not a guard against the host refusing the write: vmm answers a bad address with #GP
 * injected after it has advanced RIP past the WRMSR (vmm_machdep.c 1.64, vmx_handle_wrmsr:
 * vmm_init_pvclock injects, then RIP moves on), so the fault points after the instruction,
 * no exception-table entry matches, and the kernel oopses instead of wrmsr_safe() returning
 * an error. The module only ever writes addresses vmm accepts (a whole page of guest RAM);
 * wrmsr_safe() still catches a hypervisor that faults on the instruction itself.
 */
static int vmm_clock_msr_write(u64 val)
{
	return wrmsr_safe(VMM_CLOCK_MSR, (u32)val, (u32)(val >> 32));
}

/*
 * Switch this CPU's page off by writing its address with the enable bit clear, as OpenBSD's
 * own pvclock(4) does (sys/dev/pv/pvclock.c), not 0: vmm checks the address whatever the bit
 * (vmm_init_pvclock: vmm_gpa_is_valid), so writing 0 works only while guest-physical 0 is
 * memory vmm maps for the guest.
 */
static void vmm_clock_msr_off(struct page *page)
{
	vmm_clock_msr_write(page_to_phys(page) & ~(u64)VMM_CLOCK_MSR_ENABLE);
}

#ifdef CONFIG_RCU_STALL_COMMON
/*
 * kvmclock calls rcu_cpu_stall_reset() when the host says the guest was stopped
 * (pvclock_touch_watchdogs, arch/x86/kernel/pvclock.c), but that is not exported to modules;
 * rcu_cpu_stall_suppress is (EXPORT_SYMBOL_GPL in kernel/rcu/update.c or tree_stall.h, 5.10
 * to 6.18; declared only in the private kernel/rcu/rcu.h, hence here). Stall warnings are
 * suppressed for VMM_CLOCK_RCU_QUIET_NS of clock time after a stop, long enough for the grace
 * period the stop interrupted to end, then restored, unless someone else changed it meanwhile.
 */
extern int rcu_cpu_stall_suppress;
#define VMM_CLOCK_RCU_QUIET_NS (30ull * NSEC_PER_SEC)
static u64 vmm_clock_rcu_quiet_until;

static void vmm_clock_rcu_quiet(u64 now)
{
	if (READ_ONCE(rcu_cpu_stall_suppress) == 0 &&
	    cmpxchg(&vmm_clock_rcu_quiet_until, 0, now + VMM_CLOCK_RCU_QUIET_NS) == 0)
		WRITE_ONCE(rcu_cpu_stall_suppress, 1);
}

static void vmm_clock_rcu_unquiet(u64 now, bool force)
{
	u64 until = READ_ONCE(vmm_clock_rcu_quiet_until);

	if (likely(!until) || (now < until && !force))
		return;
	if (cmpxchg(&vmm_clock_rcu_quiet_until, until, 0) == until && READ_ONCE(rcu_cpu_stall_suppress) == 1)
		WRITE_ONCE(rcu_cpu_stall_suppress, 0);
}
#else
static inline void vmm_clock_rcu_quiet(u64 now) { }
static inline void vmm_clock_rcu_unquiet(u64 now, bool force) { }
#endif

/*
 * The host stopped this guest (vmm never says so with PVCLOCK_GUEST_STOPPED; the read saw
 * the host's time jump). What kvmclock does for that flag (pvclock_touch_watchdogs,
 * arch/x86/kernel/pvclock.c, 5.10 to 6.18), with what modules may call: the soft-lockup
 * watchdog of this CPU (each CPU notices the jump on its own page and touches its own), the
 * hard-lockup one, the hung-task detector (a no-op stub without CONFIG_DETECT_HUNG_TASK,
 * linux/nmi.h), and RCU's stall warnings as above. Not possible from a module:
 * clocksource_touch_watchdog() (the clocksource watchdog may then call tsc unstable, which is
 * harmless while vmm-clock is current).
 */
static void vmm_clock_touch_watchdogs(u64 now)
{
	touch_softlockup_watchdog();
	touch_nmi_watchdog();
	reset_hung_task_detector();
	vmm_clock_rcu_quiet(now);
}

static u64 notrace vmm_clock_cs_read(struct clocksource *cs)
{
	const struct vmm_clock_page *p;
	struct vmm_clock_cpu_state *st = NULL;
	u64 ns, stopped;

	preempt_disable_notrace();
	p = this_cpu_read(vmm_clock_live);
	if (likely(p))
		st = this_cpu_ptr(&vmm_clock_state);
	else
		p = READ_ONCE(vmm_clock_fallback);
	ns = vmm_clock_read(p, st, &vmm_clock_last, &stopped);
	if (unlikely(stopped > VMM_CLOCK_STOPPED_NS))
		vmm_clock_touch_watchdogs(ns);
	else
		vmm_clock_rcu_unquiet(ns, false);
	preempt_enable_notrace();
	return ns;
}

/*
 * After a suspend the host may have forgotten the address. Called with interrupts off on the
 * CPU that resumes timekeeping; the other CPUs went through the hotplug callbacks.
 */
static void vmm_clock_cs_resume(struct clocksource *cs)
{
	struct page *page = this_cpu_read(vmm_clock_pages);

	if (page && this_cpu_read(vmm_clock_live) && !READ_ONCE(vmm_clock_shutting_down))
		vmm_clock_msr_write(page_to_phys(page) | VMM_CLOCK_MSR_ENABLE);
}

static struct clocksource vmm_clock_cs = {
	.name = "vmm-clock",
	/* Above tsc (300) so the host's time wins after a host suspend; 400 like kvm-clock. */
	.rating = 400,
	.read = vmm_clock_cs_read,
	.mask = CLOCKSOURCE_MASK(64),
	.flags = CLOCK_SOURCE_IS_CONTINUOUS,
	.resume = vmm_clock_cs_resume,
	.owner = THIS_MODULE,
};

/* Hotplug "online" callback: runs on the CPU itself, for each online CPU and each new one. */
static int vmm_clock_cpu_online(unsigned int cpu)
{
	struct page *page = per_cpu(vmm_clock_pages, cpu);
	struct vmm_clock_page *p;
	phys_addr_t pa;
	int err;

	if (WARN_ON_ONCE(cpu != raw_smp_processor_id()))
		return -EINVAL;
	/* After the reboot notifier: the next kernel must not inherit a live address. */
	if (READ_ONCE(vmm_clock_shutting_down))
		return 0;
	if (!page) {
		page = alloc_pages_node(cpu_to_node(cpu), GFP_KERNEL | __GFP_ZERO, 0);
		if (!page)
			return -ENOMEM;
		per_cpu(vmm_clock_pages, cpu) = page;
	}
	p = page_address(page);
	pa = page_to_phys(page);

	err = vmm_clock_msr_write(pa | VMM_CLOCK_MSR_ENABLE);
	if (err) {
		pr_err("CPU %u: the host refused the clock page address %pa (MSR write failed: %d)\n",
		       cpu, &pa, err);
		return -EIO;
	}
	/* The host fills the page before the guest runs again; mul 0 would freeze time. */
	if (!vmm_clock_page_filled(p)) {
		vmm_clock_msr_off(page);
		pr_err("CPU %u: the host left the clock page empty (tsc_to_system_mul 0: host TSC frequency unknown?)\n",
		       cpu);
		return -EIO;
	}
	this_cpu_write(vmm_clock_live, p);
	if (!vmm_clock_fallback || !per_cpu(vmm_clock_live, vmm_clock_fallback_cpu)) {
		WRITE_ONCE(vmm_clock_fallback, p);
		vmm_clock_fallback_cpu = cpu;
	}
	if (verbose)
		pr_info("CPU %u: clock page at %pa enabled\n", cpu, &pa);
	return 0;
}

/*
 * Hotplug "offline" callback, also run for every CPU on unload: stop the host writing. The
 * page stays allocated: this CPU may still read the clock on its way down (through the
 * fallback), and it comes back if the CPU does.
 */
static int vmm_clock_cpu_offline(unsigned int cpu)
{
	struct vmm_clock_page *p = this_cpu_read(vmm_clock_live);
	unsigned int other;

	if (!p)
		return 0;
	this_cpu_write(vmm_clock_live, NULL);
	this_cpu_ptr(&vmm_clock_state)->have_prev = false;
	vmm_clock_msr_off(per_cpu(vmm_clock_pages, cpu));
	if (vmm_clock_fallback == p) {
		/* Hotplug callbacks are serialised, so the live pointers cannot move under us. */
		for_each_online_cpu(other) {
			if (other != cpu && per_cpu(vmm_clock_live, other)) {
				WRITE_ONCE(vmm_clock_fallback, per_cpu(vmm_clock_live, other));
				vmm_clock_fallback_cpu = other;
				break;
			}
		}
	}
	if (verbose)
		pr_info("CPU %u: clock page disabled\n", cpu);
	return 0;
}

static void vmm_clock_free_pages(void)
{
	unsigned int cpu;

	for_each_possible_cpu(cpu) {
		struct page *page = per_cpu(vmm_clock_pages, cpu);

		if (page)
			__free_page(page);
		per_cpu(vmm_clock_pages, cpu) = NULL;
	}
}

/*
 * On each CPU from the reboot notifier: stop the host writing into this CPU's page. vmm keeps
 * writing on every VM entry until the MSR is switched off, and the address survives a kexec
 * into a kernel that may use that page for something else. The page stays "live" for reads:
 * the clock keeps running from its last copy and the TSC until the machine goes down.
 */
static void vmm_clock_msr_off_here(void *unused)
{
	struct page *page = this_cpu_read(vmm_clock_pages);

	if (page && this_cpu_read(vmm_clock_live))
		vmm_clock_msr_off(page);
}

/*
 * As kvmclock does (arch/x86/kernel/kvm.c, kvm_pv_reboot_notify, 5.10 to 6.18, and the
 * crash/shutdown hooks of kvmclock.c). The chain runs for reboot, halt and power-off, and
 * for kexec too: kernel_kexec() calls kernel_restart_prepare() (kernel/kexec_core.c), which
 * calls it with SYS_RESTART. Not for a crash kexec (kdump), which runs no notifiers.
 */
static int vmm_clock_reboot(struct notifier_block *nb, unsigned long code, void *unused)
{
	WRITE_ONCE(vmm_clock_shutting_down, true);
	cpus_read_lock();
	on_each_cpu(vmm_clock_msr_off_here, NULL, 1);
	cpus_read_unlock();
	return NOTIFY_DONE;
}

static struct notifier_block vmm_clock_reboot_nb = {
	.notifier_call = vmm_clock_reboot,
};

/* Base of the hypervisor CPUID range answering with this 12-byte signature, or 0. */
static u32 vmm_clock_cpuid_base(const char sig[12])
{
	u32 base, eax, regs[3];

	for (base = VMM_CLOCK_CPUID_FIRST; base <= VMM_CLOCK_CPUID_LAST; base += VMM_CLOCK_CPUID_STEP) {
		cpuid(base, &eax, &regs[0], &regs[1], &regs[2]);
		if (!memcmp(regs, sig, sizeof(regs)))
			return base;
	}
	return 0;
}

#define VMM_CLOCK_SYSFS_LIST "/sys/devices/system/clocksource/clocksource0/available_clocksource"

/*
 * Whether the clocksource core lists kvm-clock: 1 yes, 0 no, negative errno if the list
 * could not be read. sysfs is the one view of registered clocksources that every kernel from
 * 5.14 on offers to a module (the list itself is private to kernel/time/clocksource.c, and
 * kvm_clock stopped being exported in 6.x).
 */
static int vmm_clock_kvmclock_listed(void)
{
	struct file *f;
	loff_t pos = 0;
	ssize_t n;
	char *buf;
	int ret;

	buf = kzalloc(PAGE_SIZE, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	f = filp_open(VMM_CLOCK_SYSFS_LIST, O_RDONLY, 0);
	if (IS_ERR(f)) {
		kfree(buf);
		return PTR_ERR(f);
	}
	n = kernel_read(f, buf, PAGE_SIZE - 1, &pos);
	filp_close(f, NULL);
	ret = n < 0 ? (int)n : vmm_clock_list_has(buf, "kvm-clock");
	kfree(buf);
	return ret;
}

/*
 * Whether kvm-clock already drives this guest's clock MSR. Newer vmm also answers as KVM; a
 * stock kernel then registers kvm-clock, which writes its own page address to the same MSR on
 * every CPU, and the host keeps one address per vCPU. kvm-clock needs the KVM signature with a
 * clock feature bit, so without them there is nothing to ask; with them it is still absent
 * under no-kvmclock or a kernel without KVM guest support, which only the clocksource list
 * tells.
 */
static bool vmm_clock_kvmclock_active(void)
{
	u32 base = vmm_clock_cpuid_base("KVMKVMKVM\0\0\0");
	int listed;

	if (!base || !(cpuid_eax(base + 1) & (VMM_CLOCK_FEAT_CLOCKSOURCE | VMM_CLOCK_FEAT_CLOCKSOURCE2)))
		return false;
	listed = vmm_clock_kvmclock_listed();
	if (listed < 0) {
		pr_info("kvm-clock already serves this guest, presumably: the host offers it at CPUID 0x%x and %s is unreadable (%d); not loading\n",
			base, VMM_CLOCK_SYSFS_LIST, listed);
		return true;
	}
	if (listed)
		pr_info("kvm-clock already serves this guest (the host also answers as KVM at CPUID 0x%x); not loading\n",
			base);
	return listed;
}

static int __init vmm_clock_init(void)
{
	u32 base, features;
	int ret;

	/* CPUID.1:ECX bit 31: set by every hypervisor, clear on bare metal. */
	base = (cpuid_ecx(1) & (1u << 31)) ? vmm_clock_cpuid_base("OpenBSDVMM58") : 0;
	if (!base) {
		pr_info("not under OpenBSD vmm (no OpenBSDVMM58 CPUID signature); not loading\n");
		return -ENODEV;
	}
	/*
	 * Every vmm with the clock MSR says so here: CLOCKSOURCE2 | STABLE_BIT since the pvclock
	 * came in (2019, vmm.c 1.253; vmm_machdep.c 1.64). Without the bit, writing the MSR may
	 * earn a #GP the kernel cannot recover from (see vmm_clock_msr_write), so not loading is
	 * the only safe answer. The stable bit is not used: see VMM_CLOCK_FLAG_TSC_STABLE.
	 */
	features = cpuid_eax(base + 1);
	if (!(features & VMM_CLOCK_FEAT_CLOCKSOURCE2)) {
		pr_info("OpenBSD vmm at CPUID 0x%x does not offer its paravirtual clock (features 0x%x); not loading\n",
			base, features);
		return -ENODEV;
	}

	if (vmm_clock_kvmclock_active())
		return -EBUSY;

	ret = cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "clocksource/vmm_clock:online", vmm_clock_cpu_online,
				vmm_clock_cpu_offline);
	if (ret < 0) {
		/* The core already ran the offline callback on the CPUs that succeeded. */
		vmm_clock_free_pages();
		return ret;
	}
	vmm_clock_hp_state = ret;

	/* Before the clocksource: from here on a reboot switches the pages off. */
	ret = register_reboot_notifier(&vmm_clock_reboot_nb);
	if (ret) {
		cpuhp_remove_state(vmm_clock_hp_state);
		vmm_clock_free_pages();
		return ret;
	}
	ret = clocksource_register_hz(&vmm_clock_cs, NSEC_PER_SEC);
	if (ret) {
		pr_err("registering the clocksource failed: %d\n", ret);
		unregister_reboot_notifier(&vmm_clock_reboot_nb);
		cpuhp_remove_state(vmm_clock_hp_state);
		vmm_clock_free_pages();
		return ret;
	}
	pr_info("vmm-clock registered on %u CPUs (OpenBSD vmm at CPUID 0x%x, features 0x%x; reads always clamped)\n",
		num_online_cpus(), base, features);
	return 0;
}

/*
 * The clocksource core holds a module reference while vmm-clock is the current clocksource,
 * so this runs only once another one has taken over. Order: stop the host writing on every
 * CPU, then unregister (reads until then use the last values, still a valid TSC
 * extrapolation), then free the pages nothing can read any more.
 */
static void __exit vmm_clock_exit(void)
{
	int ret;

	cpuhp_remove_state(vmm_clock_hp_state);
	unregister_reboot_notifier(&vmm_clock_reboot_nb);
	ret = clocksource_unregister(&vmm_clock_cs);
	vmm_clock_rcu_unquiet(0, true);
	if (ret) {
		/* Still registered: its pages must stay. The host no longer writes them. */
		pr_err("unregistering the clocksource failed (%d): leaking its clock pages\n", ret);
		return;
	}
	vmm_clock_free_pages();
}

module_init(vmm_clock_init);
module_exit(vmm_clock_exit);

MODULE_DESCRIPTION("Clocksource for Linux guests of OpenBSD vmm: the host's paravirtual clock");
MODULE_LICENSE("GPL");
MODULE_VERSION("0.1.0");

// SPDX-License-Identifier: GPL-2.0
/*
 * vmm_clock: a clocksource for Linux guests of OpenBSD vmm(4), reading the host's
 * paravirtual clock page (see README.md for what it reads and why).
 *
 * Written against the stable subset of the kernel API from 5.14 to 6.18 (checked against
 * arch/x86/include/asm/msr.h, asm/tsc.h, asm/cpuid/api.h and include/linux/clocksource.h):
 * its own CPUID scan with cpuid(); wrmsr_safe(), whose (msr, low, high) form survived the
 * 6.16 MSR rework that renamed wrmsrl() to wrmsrq() and replaced native_write_msr();
 * rdtsc_ordered(), which moved from <asm/msr.h> to <asm/tsc.h> in 6.16 (both are included);
 * and only clocksource fields present in all of them.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/clocksource.h>
#include <linux/cpuhotplug.h>
#include <linux/err.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <asm/msr.h>
#include <asm/processor.h>
#include <asm/tsc.h>

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

/*
 * The page read by a CPU whose own page is not enabled: a CPU being brought up reads the
 * clock before the hotplug callback that enables its page runs, and one going down after the
 * callback that disabled it. It points at a live page while any CPU is live, and the pages
 * outlive the clocksource, so it never dangles. Reads through it are always clamped.
 */
static struct vmm_clock_page *vmm_clock_fallback;
static unsigned int vmm_clock_fallback_cpu;

/* The host promised (CPUID stable bit) that the page's stable flag can be trusted. */
static bool vmm_clock_trust_stable;
static vmm_clock_last_t vmm_clock_last = ATOMIC64_INIT(0);
static int vmm_clock_hp_state;

static int vmm_clock_msr_write(u64 val)
{
	return wrmsr_safe(VMM_CLOCK_MSR, (u32)val, (u32)(val >> 32));
}

static u64 notrace vmm_clock_cs_read(struct clocksource *cs)
{
	const struct vmm_clock_page *p;
	bool clamp = !vmm_clock_trust_stable;
	u64 ns;
	u8 flags;

	preempt_disable_notrace();
	p = this_cpu_read(vmm_clock_live);
	if (unlikely(!p)) {
		p = READ_ONCE(vmm_clock_fallback);
		clamp = true;
	}
	ns = vmm_clock_read_page(p, &flags);
	if (clamp || !(flags & VMM_CLOCK_FLAG_TSC_STABLE))
		ns = vmm_clock_monotonic(&vmm_clock_last, ns);
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

	if (page && this_cpu_read(vmm_clock_live))
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
	if (READ_ONCE(p->tsc_to_system_mul) == 0) {
		vmm_clock_msr_write(0);
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
	vmm_clock_msr_write(0);
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
	features = cpuid_eax(base + 1);
	if (!features) {
		pr_info("OpenBSD vmm at CPUID 0x%x leaves its feature leaf zero (older vmm): using its clock MSR anyway, clamping reads across CPUs\n",
			base);
	} else if (!(features & VMM_CLOCK_FEAT_CLOCKSOURCE2)) {
		pr_info("OpenBSD vmm at CPUID 0x%x does not offer its paravirtual clock (features 0x%x); not loading\n",
			base, features);
		return -ENODEV;
	}
	vmm_clock_trust_stable = features & VMM_CLOCK_FEAT_STABLE;

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

	ret = clocksource_register_hz(&vmm_clock_cs, NSEC_PER_SEC);
	if (ret) {
		pr_err("registering the clocksource failed: %d\n", ret);
		cpuhp_remove_state(vmm_clock_hp_state);
		vmm_clock_free_pages();
		return ret;
	}
	pr_info("vmm-clock registered on %u CPUs (OpenBSD vmm at CPUID 0x%x, host stable flag %s)\n",
		num_online_cpus(), base, vmm_clock_trust_stable ? "trusted" : "not offered");
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
	ret = clocksource_unregister(&vmm_clock_cs);
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

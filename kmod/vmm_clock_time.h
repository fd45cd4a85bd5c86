/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The pure part of vmm_clock: the layout of the clock page the host writes, the arithmetic
 * that turns it and a TSC value into nanoseconds, the version/retry read, the cross-CPU
 * monotonic clamp, and the check of the clocksource list. It builds in the kernel and in
 * user space (kmod/test/), so the code the module runs is the code the tests run.
 *
 * The includer defines, before including this file:
 *   static inline u64 vmm_clock_rdtsc(void);   TSC read, ordered after earlier loads
 *   static inline void vmm_clock_relax(void);  pause while the host is mid-update
 * The module maps them to rdtsc_ordered() and cpu_relax(); the tests use them to play the
 * host writing concurrently.
 *
 * ABI: the KVM pvclock "vcpu time info" (Documentation/virt/kvm/x86/msr.rst,
 * MSR_KVM_SYSTEM_TIME_NEW) which OpenBSD vmm implements (sys/arch/amd64/amd64/vmm_machdep.c
 * 1.64, vmm_init_pvclock/vmm_update_pvclock): tsc_shift 12, tsc_to_system_mul =
 * (10^9 << 20) / TSC Hz, fixed when the MSR is written; system_time from the host's
 * nanouptime() (NTP-slewed) rewritten on every VM entry; flags = PVCLOCK_FLAG_TSC_STABLE,
 * always; PVCLOCK_GUEST_STOPPED never.
 */
#ifndef VMM_CLOCK_TIME_H
#define VMM_CLOCK_TIME_H

#ifdef __KERNEL__
#include <linux/atomic.h>
#include <linux/compiler.h>
#include <linux/stddef.h>
#include <linux/types.h>
#include <asm/barrier.h>

/* virt_rmb: the writer is the hypervisor, which may run on another physical CPU. */
#define VMM_CLOCK_RMB() virt_rmb()

typedef atomic64_t vmm_clock_last_t;

static inline u64 vmm_clock_last_load(vmm_clock_last_t *last)
{
	return (u64)atomic64_read(last);
}

static inline bool vmm_clock_last_cas(vmm_clock_last_t *last, u64 *seen, u64 now)
{
	s64 old = (s64)*seen;
	bool ok = atomic64_try_cmpxchg(last, &old, (s64)now);

	*seen = (u64)old;
	return ok;
}
#else /* user space: the tests */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t u64;
typedef uint32_t u32;
typedef uint8_t u8;
typedef int8_t s8;

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define VMM_CLOCK_RMB() __atomic_thread_fence(__ATOMIC_ACQUIRE)

typedef u64 vmm_clock_last_t;

static inline u64 vmm_clock_last_load(vmm_clock_last_t *last)
{
	return __atomic_load_n(last, __ATOMIC_RELAXED);
}

static inline bool vmm_clock_last_cas(vmm_clock_last_t *last, u64 *seen, u64 now)
{
	return __atomic_compare_exchange_n(last, seen, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
#endif

/* MSR_KVM_SYSTEM_TIME_NEW: guest-physical address of this CPU's page, bit 0 = enable. */
#define VMM_CLOCK_MSR 0x4b564d01u
#define VMM_CLOCK_MSR_ENABLE 1u

/* Host's CPUID answers (vmm_handle_cpuid in vmm_machdep.c; KVM's cpuid.rst). */
#define VMM_CLOCK_CPUID_FIRST 0x40000000u
#define VMM_CLOCK_CPUID_LAST 0x4000ff00u
#define VMM_CLOCK_CPUID_STEP 0x100u
#define VMM_CLOCK_FEAT_CLOCKSOURCE (1u << 0)	/* old MSR 0x12: still a kvm-clock */
#define VMM_CLOCK_FEAT_CLOCKSOURCE2 (1u << 3)	/* MSR 0x4b564d01 */
#define VMM_CLOCK_FEAT_STABLE (1u << 24)	/* the page's stable flag may be trusted */

/*
 * Page flag, by the ABI: all CPUs' pages agree, so a reader could skip the cross-CPU clamp
 * (kvmclock does, arch/x86/kernel/pvclock.c). vmm sets it unconditionally (vmm_machdep.c
 * 1.64, vmm_update_pvclock: flags = PVCLOCK_FLAG_TSC_STABLE) while the page is not even
 * monotonic on one CPU: system_time follows the host's slewed clock, the multiplier the raw
 * TSC rate. So vmm_clock_read() ignores it and always clamps. Should vmm one day set it only
 * when it holds, honouring it again is one condition in vmm_clock_read().
 */
#define VMM_CLOCK_FLAG_TSC_STABLE (1u << 0)
/* Page flag KVM sets after pausing the guest; vmm never does (see vmm_clock_unexplained). */
#define VMM_CLOCK_FLAG_GUEST_STOPPED (1u << 1)

/*
 * A forward jump of the host's time that the TSC does not account for, above which the guest
 * is taken to have been stopped (a host suspend) and the watchdogs are touched. The slew
 * between two page updates is far below it: 5000 ppm (adjtime's fastest) over 10 minutes of
 * tickless idle is 3 s.
 */
#define VMM_CLOCK_STOPPED_NS (5ull * 1000000000ull)

/*
 * One CPU's clock page, as the host writes it. Every field sits at its natural alignment,
 * so the struct has no padding without needing "packed" (which would drop its alignment to
 * 1: vmm ignores the low 4 address bits and rejects a struct that crosses a page).
 */
struct vmm_clock_page {
	u32 version;		/* odd while the host is writing */
	u32 pad0;
	u64 tsc_timestamp;	/* guest TSC when system_time was taken */
	u64 system_time;	/* host uptime in ns at tsc_timestamp */
	u32 tsc_to_system_mul;	/* ns per TSC tick as a 32.32 fixed-point fraction... */
	s8 tsc_shift;		/* ...applied after shifting the TSC delta by this */
	u8 flags;
	u8 pad[2];
};

_Static_assert(sizeof(struct vmm_clock_page) == 32, "pvclock vcpu_time_info is 32 bytes");
_Static_assert(offsetof(struct vmm_clock_page, tsc_timestamp) == 8, "pvclock ABI offset");
_Static_assert(offsetof(struct vmm_clock_page, system_time) == 16, "pvclock ABI offset");
_Static_assert(offsetof(struct vmm_clock_page, tsc_to_system_mul) == 24, "pvclock ABI offset");
_Static_assert(offsetof(struct vmm_clock_page, tsc_shift) == 28, "pvclock ABI offset");
_Static_assert(offsetof(struct vmm_clock_page, flags) == 29, "pvclock ABI offset");

/*
 * (delta * mul) >> shr for 0 <= shr <= 32, exact modulo 2^64, without a 128-bit type: split
 * delta into 32-bit halves. hi * mul * 2^32 is a multiple of 2^shr, so shifting the two
 * partial products separately loses nothing. A plain 64-bit delta * mul wraps as soon as the
 * product passes 2^64: with vmm's parameters, after about 4.3 s without a host update.
 */
static inline u64 vmm_clock_mul_shr(u64 delta, u32 mul, unsigned int shr)
{
	u64 lo = (u64)(u32)delta * mul;
	u64 hi = (delta >> 32) * mul;

	return (hi << (32 - shr)) + (lo >> shr);
}

/*
 * ns for a TSC delta: ((delta shifted by shift) * mul) >> 32. A positive shift is folded into
 * the final shift instead of shifting delta left first, so delta itself cannot overflow
 * either. Shifts above 32 appear in no host (vmm uses 12, KVM stays within +-32); they are
 * applied to delta directly and may wrap.
 */
static inline u64 vmm_clock_scale(u64 delta, u32 mul, s8 shift)
{
	if (shift < 0)
		return shift <= -64 ? 0 : vmm_clock_mul_shr(delta >> -shift, mul, 32);
	if (shift > 32)
		return vmm_clock_mul_shr(delta << ((shift - 32) & 63), mul, 0);
	return vmm_clock_mul_shr(delta, mul, 32 - (unsigned int)shift);
}

/*
 * ns at TSC value tsc. A TSC behind the page's timestamp (a page of another CPU, read during
 * CPU bring-up, with a slightly skewed TSC) counts as no time elapsed, not as 2^64 ticks.
 */
static inline u64 vmm_clock_ns(u64 tsc, u64 tsc_timestamp, u64 system_time, u32 mul, s8 shift)
{
	u64 delta = tsc > tsc_timestamp ? tsc - tsc_timestamp : 0;

	return system_time + vmm_clock_scale(delta, mul, shift);
}

/* One consistent copy of a page, and the time it gave. */
struct vmm_clock_sample {
	u64 ns;
	u64 tsc_timestamp;
	u64 system_time;
	u32 mul;
	s8 shift;
	u8 flags;
};

/*
 * Read the page: take the version (waiting out an update in progress, odd), copy the fields
 * and the TSC, and start again if the version moved meanwhile. *s gets the copy that was used.
 */
static inline u64 vmm_clock_read_page(const struct vmm_clock_page *p, struct vmm_clock_sample *s)
{
	u64 tsc;
	u32 version;

	for (;;) {
		version = READ_ONCE(p->version);
		if (version & 1) {
			vmm_clock_relax();
			continue;
		}
		VMM_CLOCK_RMB();
		s->tsc_timestamp = READ_ONCE(p->tsc_timestamp);
		s->system_time = READ_ONCE(p->system_time);
		s->mul = READ_ONCE(p->tsc_to_system_mul);
		s->shift = READ_ONCE(p->tsc_shift);
		s->flags = READ_ONCE(p->flags);
		tsc = vmm_clock_rdtsc();
		VMM_CLOCK_RMB();
		if (READ_ONCE(p->version) == version)
			break;
	}
	s->ns = vmm_clock_ns(tsc, s->tsc_timestamp, s->system_time, s->mul, s->shift);
	return s->ns;
}

/*
 * Whether the host has filled the page: vmm writes it during the WRMSR that registers it,
 * but leaves tsc_to_system_mul 0 when it does not know its TSC frequency (vmm_init_pvclock),
 * and a zero multiplier would freeze the guest's clock. A page never written at all has
 * version 0 as well.
 */
static inline bool vmm_clock_page_filled(const struct vmm_clock_page *p)
{
	return READ_ONCE(p->tsc_to_system_mul) != 0 && READ_ONCE(p->version) != 0;
}

/*
 * Never return less than any CPU returned before. Needed even on one CPU under vmm: the
 * multiplier is the raw TSC rate, system_time the host's NTP-slewed uptime, so just after an
 * update the page can say less than it did just before (by up to 5000 ppm of the time since
 * the previous update, when the host's clock slews back).
 */
static inline u64 vmm_clock_monotonic(vmm_clock_last_t *last, u64 now)
{
	u64 seen = vmm_clock_last_load(last);

	do {
		if (now <= seen)
			return seen;
	} while (!vmm_clock_last_cas(last, &seen, now));
	return now;
}

/*
 * How much further the host's time moved between two copies of one CPU's page than the TSC
 * did: about 0 while the guest runs (the slew), the length of the sleep after a host suspend.
 * vmm never sets PVCLOCK_GUEST_STOPPED, so this is how the guest learns it was stopped. The
 * TSC delta is scaled with the older copy's parameters; a TSC that went back (reset by the
 * host's suspend) counts as no time.
 */
static inline u64 vmm_clock_unexplained(const struct vmm_clock_sample *old, const struct vmm_clock_sample *now)
{
	u64 host, tsc_ns;

	if (now->system_time <= old->system_time)
		return 0;
	host = now->system_time - old->system_time;
	tsc_ns = now->tsc_timestamp > old->tsc_timestamp ?
		vmm_clock_scale(now->tsc_timestamp - old->tsc_timestamp, old->mul, old->shift) : 0;
	return host > tsc_ns ? host - tsc_ns : 0;
}

/*
 * Per CPU: the last copy of its own page, for vmm_clock_unexplained. Written only by its
 * CPU with preemption off; a read from an interrupt in between at worst sees the jump twice
 * or not at all, which only decides whether the watchdogs are touched once more.
 */
struct vmm_clock_cpu_state {
	struct vmm_clock_sample prev;
	bool have_prev;
};

/*
 * The clocksource read: the page's time, clamped so it never goes back, whatever the page's
 * stable flag says (see VMM_CLOCK_FLAG_TSC_STABLE). With st (this CPU's own page), *stopped
 * gets the unexplained forward jump since this CPU's previous read; a borrowed page (st NULL)
 * says nothing about this CPU.
 */
static inline u64 vmm_clock_read(const struct vmm_clock_page *p, struct vmm_clock_cpu_state *st,
				 vmm_clock_last_t *last, u64 *stopped)
{
	struct vmm_clock_sample s;

	vmm_clock_read_page(p, &s);
	*stopped = 0;
	if (st) {
		if (st->have_prev)
			*stopped = vmm_clock_unexplained(&st->prev, &s);
		st->prev = s;
		st->have_prev = true;
	}
	return vmm_clock_monotonic(last, s.ns);
}

/*
 * Whether name is one of the space-separated words of list: the format of sysfs
 * available_clocksource (kernel/time/clocksource.c, available_clocksource_show: each
 * name followed by a space, then a newline).
 */
static inline bool vmm_clock_list_has(const char *list, const char *name)
{
	const char *w = list;

	while (*w) {
		const char *n = name;
		const char *c = w;

		while (*n && *c == *n) {
			c++;
			n++;
		}
		if (!*n && (*c == '\0' || *c == ' ' || *c == '\n' || *c == '\t'))
			return true;
		while (*w && *w != ' ' && *w != '\n' && *w != '\t')
			w++;
		while (*w == ' ' || *w == '\n' || *w == '\t')
			w++;
	}
	return false;
}

#endif /* VMM_CLOCK_TIME_H */

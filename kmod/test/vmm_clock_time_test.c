// SPDX-License-Identifier: GPL-2.0
/*
 * User-space tests of kmod/vmm_clock_time.h, the arithmetic and read logic the module runs.
 * `cargo xtask kmod` builds and runs this; by hand, from kmod/:
 *   gcc -std=gnu11 -O2 -Wall -Wextra -Werror -pthread -I. test/vmm_clock_time_test.c -o /tmp/t && /tmp/t
 * Exits 1 on any mismatch, after listing every failed check.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The hooks the header calls: the tests play the host through them. */
static uint64_t (*tsc_source)(void);
static void (*relax_hook)(void);

static inline uint64_t vmm_clock_rdtsc(void)
{
	return tsc_source();
}

static inline void vmm_clock_relax(void)
{
	if (relax_hook)
		relax_hook();
	else
		__builtin_ia32_pause();
}

#include "vmm_clock_time.h"

typedef unsigned __int128 u128;

static unsigned int checks, failures;

#define CHECK(cond, ...)                                                                  \
	do {                                                                              \
		checks++;                                                                 \
		if (!(cond)) {                                                            \
			failures++;                                                       \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
			fprintf(stderr, __VA_ARGS__);                                     \
			fputc('\n', stderr);                                              \
		}                                                                         \
	} while (0)

/* vmm's parameters (vmm_init_pvclock / vmm_update_pvclock in vmm_machdep.c). */
#define VMM_SHIFT 12

static u32 vmm_mul(u64 tsc_hz)
{
	return (u32)((1000000000ull << 20) / tsc_hz);
}

/* The definition, in 128 bits: ((delta shifted by shift) * mul) >> 32, for shift <= 32. */
static u64 reference_scale(u64 delta, u32 mul, int shift)
{
	u128 d = delta;

	if (shift < 0)
		d = shift <= -64 ? 0 : d >> -shift;
	else
		d <<= shift;
	return (u64)((d * mul) >> 32);
}

/* What the community module computes: a 64-bit product, which wraps. */
static u64 naive_scale(u64 delta, u32 mul)
{
	return ((delta << VMM_SHIFT) * mul) >> 32;
}

/*
 * Known vectors. ns is ((delta << 12) * mul) >> 32 computed independently with Python's
 * unbounded integers; at 2.5 GHz mul is truncated (419430.4), hence the ~1 ppm shortfall.
 */
static const struct vector {
	const char *what;
	u64 hz, delta, ns;
	double seconds;
} vectors[] = {
	{ "1 GHz, 1 ms", 1000000000ull, 1000000ull, 1000000ull, 0.001 },
	{ "1 GHz, 4.3 s", 1000000000ull, 4300000000ull, 4300000000ull, 4.3 },
	{ "1 GHz, 60 s", 1000000000ull, 60000000000ull, 60000000000ull, 60 },
	{ "1 GHz, 1 h", 1000000000ull, 3600000000000ull, 3600000000000ull, 3600 },
	{ "2.5 GHz, 1 ms", 2500000000ull, 2500000ull, 999999ull, 0.001 },
	{ "2.5 GHz, 4.3 s", 2500000000ull, 10750000000ull, 4299995899ull, 4.3 },
	{ "2.5 GHz, 60 s", 2500000000ull, 150000000000ull, 59999942779ull, 60 },
	{ "2.5 GHz, 1 h", 2500000000ull, 9000000000000ull, 3599996566772ull, 3600 },
	{ "4 GHz, 1 ms", 4000000000ull, 4000000ull, 1000000ull, 0.001 },
	{ "4 GHz, 4.3 s", 4000000000ull, 17200000000ull, 4300000000ull, 4.3 },
	{ "4 GHz, 60 s", 4000000000ull, 240000000000ull, 60000000000ull, 60 },
	{ "4 GHz, 1 h", 4000000000ull, 14400000000000ull, 3600000000000ull, 3600 },
	/* Past ~4.9 h even delta * mul (without the << 12) passes 2^64: the split carries it. */
	{ "2.5 GHz, 1 day", 2500000000ull, 216000000000000ull, 86399917602539ull, 86400 },
	{ "4 GHz, 1 day", 4000000000ull, 345600000000000ull, 86400000000000ull, 86400 },
};

static void test_vectors(void)
{
	CHECK(vmm_mul(1000000000ull) == 1048576, "mul at 1 GHz");
	CHECK(vmm_mul(2500000000ull) == 419430, "mul at 2.5 GHz");
	CHECK(vmm_mul(4000000000ull) == 262144, "mul at 4 GHz");

	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		const struct vector *v = &vectors[i];
		u32 mul = vmm_mul(v->hz);
		u64 got = vmm_clock_scale(v->delta, mul, VMM_SHIFT);
		u64 ref = reference_scale(v->delta, mul, VMM_SHIFT);
		double truth = v->seconds * 1e9;
		double err = (double)v->ns - truth;

		CHECK(got == v->ns, "%s: got %llu, want %llu", v->what, (unsigned long long)got,
		      (unsigned long long)v->ns);
		CHECK(ref == v->ns, "%s: 128-bit reference %llu disagrees with the table %llu", v->what,
		      (unsigned long long)ref, (unsigned long long)v->ns);
		/* The table is in ns: within mul's truncation (< 1/mul relative) of the duration. */
		CHECK(err <= 0 && -err <= truth / mul + 1, "%s: %llu ns is %.0f ns off %.3f s", v->what,
		      (unsigned long long)v->ns, err, v->seconds);
		/* The naive product is right for short gaps and wraps from ~4.3 s on. */
		if (v->seconds < 4.3)
			CHECK(naive_scale(v->delta, mul) == v->ns, "%s: naive should still be right", v->what);
		else
			CHECK(naive_scale(v->delta, mul) != v->ns, "%s: naive 64-bit product should wrap (got %llu)",
			      v->what, (unsigned long long)naive_scale(v->delta, mul));

		/* The same through the whole formula, with the host's base values. */
		u64 ts = 987654321012345ull, sys = 55555555555ull;

		CHECK(vmm_clock_ns(ts + v->delta, ts, sys, mul, VMM_SHIFT) == sys + v->ns, "%s: full formula",
		      v->what);
	}
}

static u64 xorshift_state = 0x9e3779b97f4a7c15ull;

static u64 next_random(void)
{
	xorshift_state ^= xorshift_state << 13;
	xorshift_state ^= xorshift_state >> 7;
	xorshift_state ^= xorshift_state << 17;
	return xorshift_state;
}

/* Any delta, mul and shift a host could send, against the 128-bit definition. */
static void test_random_against_reference(void)
{
	unsigned int bad = 0;

	for (int i = 0; i < 1000000; i++) {
		u64 delta = next_random() >> (next_random() % 64);
		u32 mul = (u32)next_random();
		int shift = (int)(next_random() % 73) - 40; /* -40 ..= 32 */
		u64 got = vmm_clock_scale(delta, mul, (s8)shift);
		u64 want = reference_scale(delta, mul, shift);

		if (got != want && bad++ < 5)
			fprintf(stderr, "  delta %llu mul %u shift %d: got %llu want %llu\n", (unsigned long long)delta,
				mul, shift, (unsigned long long)got, (unsigned long long)want);
	}
	CHECK(bad == 0, "%u of 1000000 random cases differ from the 128-bit reference", bad);
}

static void test_tsc_behind_timestamp(void)
{
	/* A TSC slightly behind the page's stamp means no time passed, not 2^64 ticks. */
	CHECK(vmm_clock_ns(999, 1000, 5000, 1048576, VMM_SHIFT) == 5000, "TSC behind the stamp");
	CHECK(vmm_clock_ns(1000, 1000, 5000, 1048576, VMM_SHIFT) == 5000, "TSC at the stamp");
}

static void fill(struct vmm_clock_page *p, u32 version, u64 ts, u64 sys, u8 flags)
{
	p->version = version;
	p->tsc_timestamp = ts;
	p->system_time = sys;
	p->tsc_to_system_mul = 1048576; /* 1 GHz: one tick is one ns */
	p->tsc_shift = VMM_SHIFT;
	p->flags = flags;
}

static struct vmm_clock_page page;
static unsigned int tsc_reads, relaxes;

static u64 tsc_fixed(void)
{
	tsc_reads++;
	return 10000;
}

/* A host that is mid-update (odd version) and finishes after three pauses. */
static void finish_update_after_three(void)
{
	if (++relaxes == 3)
		fill(&page, 8, 9000, 700000, VMM_CLOCK_FLAG_TSC_STABLE);
}

static void test_retry_on_odd_version(void)
{
	struct vmm_clock_sample smp = { .flags = 0 };

	fill(&page, 7, 1, 1, 0); /* half-written garbage under an odd version */
	tsc_source = tsc_fixed;
	relax_hook = finish_update_after_three;
	tsc_reads = relaxes = 0;
	u64 ns = vmm_clock_read_page(&page, &smp);

	CHECK(relaxes == 3, "waited %u times for the odd version, want 3", relaxes);
	CHECK(tsc_reads == 1, "read the TSC %u times, want 1", tsc_reads);
	CHECK(ns == 700000 + 1000, "odd version: got %llu, want the finished update's 701000", (unsigned long long)ns);
	CHECK(smp.flags == VMM_CLOCK_FLAG_TSC_STABLE, "flags of the finished update");
	relax_hook = NULL;
}

/* A host that rewrites the page while the guest copies it (between the two version reads). */
static u64 tsc_and_host_update_once(void)
{
	if (tsc_reads++ == 0) {
		page.version = 3;
		fill(&page, 4, 9500, 800000, 0);
	}
	return 10000;
}

static void test_retry_on_changed_version(void)
{
	struct vmm_clock_sample smp = { .flags = 0xff };

	fill(&page, 2, 9000, 700000, VMM_CLOCK_FLAG_TSC_STABLE);
	tsc_source = tsc_and_host_update_once;
	tsc_reads = 0;
	u64 ns = vmm_clock_read_page(&page, &smp);

	CHECK(tsc_reads == 2, "read the TSC %u times, want 2 (one retry)", tsc_reads);
	CHECK(ns == 800000 + 500, "changed version: got %llu, want the new update's 800500", (unsigned long long)ns);
	CHECK(smp.flags == 0, "flags must come from the copy used, got %u", smp.flags);
}

static u64 tsc_now;

static u64 tsc_clock(void)
{
	return tsc_now;
}

/* Two CPUs whose pages disagree by 50 ns, read alternately as time advances. */
static void test_monotonic_clamp(void)
{
	struct vmm_clock_page cpu0, cpu1;
	vmm_clock_last_t last = 0;
	u64 prev_raw = 0, prev = 0;
	bool raw_went_back = false, clamped_went_back = false;
	struct vmm_clock_sample smp;

	fill(&cpu0, 2, 0, 1000000, 0);
	fill(&cpu1, 2, 0, 1000000 - 50, 0);
	tsc_source = tsc_clock;
	for (tsc_now = 0; tsc_now < 1000; tsc_now += 20) {
		const struct vmm_clock_page *p = (tsc_now / 20) % 2 ? &cpu1 : &cpu0;
		u64 raw = vmm_clock_read_page(p, &smp);
		u64 ns = vmm_clock_monotonic(&last, raw);

		raw_went_back |= raw < prev_raw;
		clamped_went_back |= ns < prev;
		CHECK(ns >= raw, "the clamp never lowers a reading");
		prev_raw = raw;
		prev = ns;
	}
	CHECK(raw_went_back, "the skewed pages must step back unclamped, or this test proves nothing");
	CHECK(!clamped_went_back, "clamped time stepped back");
	CHECK(vmm_clock_monotonic(&last, 5) == prev, "an old reading returns the latest value");
	CHECK(vmm_clock_monotonic(&last, prev + 1) == prev + 1, "a newer reading passes through");
}

#define CLAMP_THREADS 4
#define CLAMP_CALLS 5000000

static vmm_clock_last_t shared_last;
static u64 shared_tick;
static pthread_barrier_t clamp_start;

/*
 * CPUs reading at the same time: each reading is a global tick (so the threads' values
 * interleave tightly and keep overtaking each other) plus a per-thread jitter of a few ns,
 * like pages that disagree slightly.
 */
static void *clamp_worker(void *arg)
{
	u64 rng = 0x2545f4914f6cdd1dull * ((uintptr_t)arg + 1), prev = 0;
	uintptr_t bad = 0;

	pthread_barrier_wait(&clamp_start); /* all threads race from the same moment */
	for (int i = 0; i < CLAMP_CALLS; i++) {
		u64 now = __atomic_fetch_add(&shared_tick, 1, __ATOMIC_RELAXED) * 4 + (rng >> 61);
		u64 ns = vmm_clock_monotonic(&shared_last, now);

		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		/* last only ever grows: once a value is returned, last never drops below it. */
		bad += ns < prev || ns < now || vmm_clock_last_load(&shared_last) < ns;
		prev = ns;
	}
	return (void *)bad;
}

static void test_monotonic_clamp_threads(void)
{
	pthread_t t[CLAMP_THREADS];
	uintptr_t bad = 0;

	shared_last = 0;
	shared_tick = 0;
	pthread_barrier_init(&clamp_start, NULL, CLAMP_THREADS);
	for (uintptr_t i = 0; i < CLAMP_THREADS; i++)
		CHECK(pthread_create(&t[i], NULL, clamp_worker, (void *)i) == 0, "pthread_create");
	for (int i = 0; i < CLAMP_THREADS; i++) {
		void *r;

		pthread_join(t[i], &r);
		bad += (uintptr_t)r;
	}
	CHECK(bad == 0, "%lu concurrent readings stepped back, fell below their input or were undone by another thread",
	      (unsigned long)bad);
	pthread_barrier_destroy(&clamp_start);
	CHECK(shared_last >= (u64)(CLAMP_THREADS * CLAMP_CALLS - 1) * 4, "the latest value is at least the last tick");
}

/*
 * A real concurrent writer. Each update moves the stamp and system_time together (1 GHz: a
 * tick is a ns), so every consistent copy yields the same ns for a fixed TSC and any torn
 * copy (stamp of one update, time of another) yields another value.
 */
#define TORTURE_READS 2000000
#define TORTURE_UPDATES 200000
#define TORTURE_TSC 1000000000000ull
#define TORTURE_OFFSET 777ull

static struct vmm_clock_page torture_page;
static int torture_done;

static u64 tsc_torture(void)
{
	return TORTURE_TSC;
}

static void *torture_writer(void *arg)
{
	u32 version = torture_page.version;

	(void)arg;
	while (!__atomic_load_n(&torture_done, __ATOMIC_RELAXED)) {
		u64 ts = next_random() % TORTURE_TSC;

		__atomic_store_n(&torture_page.version, ++version, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_RELEASE);
		__atomic_store_n(&torture_page.tsc_timestamp, ts, __ATOMIC_RELAXED);
		__atomic_store_n(&torture_page.system_time, ts + TORTURE_OFFSET, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_RELEASE);
		__atomic_store_n(&torture_page.version, ++version, __ATOMIC_RELAXED);
	}
	return NULL;
}

static void test_concurrent_writer(void)
{
	pthread_t writer;
	unsigned int torn = 0, reads = 0, first;
	struct vmm_clock_sample smp;

	fill(&torture_page, 2, 0, TORTURE_OFFSET, 0);
	tsc_source = tsc_torture;
	torture_done = 0;
	CHECK(pthread_create(&writer, NULL, torture_writer, NULL) == 0, "pthread_create");
	/* Read only while the writer runs, and until it has updated often enough to matter. */
	while ((first = __atomic_load_n(&torture_page.version, __ATOMIC_RELAXED)) == 2)
		__builtin_ia32_pause();
	while (reads < TORTURE_READS ||
	       __atomic_load_n(&torture_page.version, __ATOMIC_RELAXED) - first < 2 * TORTURE_UPDATES) {
		torn += vmm_clock_read_page(&torture_page, &smp) != TORTURE_TSC + TORTURE_OFFSET;
		reads++;
	}
	__atomic_store_n(&torture_done, 1, __ATOMIC_RELAXED);
	pthread_join(writer, NULL);
	CHECK(torn == 0, "%u of %u reads under a concurrent writer were torn", torn, reads);
	printf("  concurrent writer: %u reads during %u updates\n", reads, (torture_page.version - first) / 2);
}

/*
 * A simulated vmm host (vmm_machdep.c 1.64, vmm_update_pvclock): the page's multiplier is
 * fixed from the raw TSC rate at MSR-write time, and on every VM entry system_time is
 * rewritten from the host's nanouptime(), which an NTP/adjtime slew may run slower than the
 * TSC, here by 5000 ppm (adjtime(2)'s fastest), and the stable flag is set regardless. The
 * host clock is kept exactly (in ns, as a u128 fraction of TSC ticks) so the page says what
 * vmm would.
 */
struct sim_host {
	struct vmm_clock_page page;
	u64 hz;
	u64 tsc;		/* the guest TSC now */
	u64 host_ns;		/* the host's nanouptime at tsc_at */
	u64 tsc_at;
	u64 slew_ppm_back;	/* the host clock runs this many ppm slower than the TSC */
};

static struct sim_host host;

static u64 tsc_host(void)
{
	return host.tsc;
}

/* The host's uptime at the current TSC, slewed. */
static u64 sim_host_now(void)
{
	u128 ticks = host.tsc - host.tsc_at;
	u128 ns = ticks * 1000000000u / host.hz;

	return host.host_ns + (u64)(ns - ns * host.slew_ppm_back / 1000000u);
}

/* A VM entry: vmm rewrites the page, odd version first. */
static void sim_host_update(void)
{
	u64 now = sim_host_now();

	host.page.version++;
	host.page.tsc_timestamp = host.tsc;
	host.page.system_time = now;
	host.page.tsc_to_system_mul = vmm_mul(host.hz);
	host.page.tsc_shift = VMM_SHIFT;
	host.page.flags = VMM_CLOCK_FLAG_TSC_STABLE;
	host.page.version++;
	host.host_ns = now;
	host.tsc_at = host.tsc;
}

static void sim_host_start(u64 hz, u64 slew_ppm_back)
{
	memset(&host, 0, sizeof(host));
	host.hz = hz;
	host.tsc = 1000000000000ull;
	host.tsc_at = host.tsc;
	host.host_ns = 50ull * 1000000000ull;
	host.slew_ppm_back = slew_ppm_back;
	tsc_source = tsc_host;
	sim_host_update();
}

/*
 * Fix 1: reads must never go back, although the (stable-flagged) page does just after each
 * update. One CPU, reads every 100 us, a VM entry every 1 to 7 ms.
 */
static void test_slewing_host_never_goes_back(void)
{
	struct vmm_clock_cpu_state st = { .have_prev = false };
	vmm_clock_last_t last = 0;
	u64 prev = 0, prev_raw = 0, stopped;
	unsigned int back = 0, raw_back = 0, i;

	sim_host_start(2500000000ull, 5000);
	for (i = 0; i < 200000; i++) {
		struct vmm_clock_sample smp;
		u64 raw, ns;

		host.tsc += 250000; /* 100 us at 2.5 GHz */
		if (next_random() % 40 == 0)
			sim_host_update();
		raw = vmm_clock_read_page(&host.page, &smp);
		ns = vmm_clock_read(&host.page, &st, &last, &stopped);
		raw_back += raw < prev_raw;
		back += ns < prev;
		CHECK(stopped < VMM_CLOCK_STOPPED_NS, "a slew is not a stop: %llu ns", (unsigned long long)stopped);
		prev = ns;
		prev_raw = raw;
	}
	CHECK(raw_back > 0, "the simulated host never made the page go back: the test proves nothing");
	CHECK(back == 0, "vmm_clock_read went back %u times under a host slewing back 5000 ppm (page alone: %u)",
	      back, raw_back);
	printf("  slewing host: the page went back %u times in 200000 reads, vmm_clock_read never\n", raw_back);
}

/*
 * Fix 4: a host suspend of 40 minutes. The guest TSC stands still while the host sleeps; on
 * resume vmm's first VM entry writes the host's uptime, 40 minutes on. The guest's time must
 * jump by exactly that, and the read must report it as a stop (so the watchdogs get
 * touched), on every TSC rate vmm may see.
 */
static void test_forty_minute_jump(void)
{
	static const u64 rates[] = { 1000000000ull, 2500000000ull, 3999999999ull };
	const u64 jump = 40ull * 60 * 1000000000ull;
	unsigned int r;

	for (r = 0; r < sizeof(rates) / sizeof(rates[0]); r++) {
		struct vmm_clock_cpu_state st = { .have_prev = false };
		vmm_clock_last_t last = 0;
		u64 before, host_before, after, stopped, stopped_before;

		sim_host_start(rates[r], 0);
		host.tsc += rates[r] / 1000; /* 1 ms after the update */
		before = vmm_clock_read(&host.page, &st, &last, &stopped_before);
		host_before = sim_host_now();
		/* The truncated multiplier (at 2.5 GHz) loses a ns per ms; nothing else may. */
		CHECK(before <= host_before && host_before - before < 10, "%llu Hz: %llu ns before the sleep, host %llu",
		      (unsigned long long)rates[r], (unsigned long long)before, (unsigned long long)host_before);
		/* Asleep: the host's clock runs on, the guest's TSC does not. */
		host.host_ns = host_before + jump;
		host.tsc_at = host.tsc;
		sim_host_update();
		after = vmm_clock_read(&host.page, &st, &last, &stopped);
		CHECK(after - host_before == jump, "%llu Hz: time moved %llu ns over a %llu ns sleep",
		      (unsigned long long)rates[r], (unsigned long long)(after - host_before), (unsigned long long)jump);
		CHECK(stopped_before == 0, "no stop before the sleep");
		CHECK(stopped > VMM_CLOCK_STOPPED_NS, "%llu Hz: the sleep was not seen as a stop (%llu ns)",
		      (unsigned long long)rates[r], (unsigned long long)stopped);
		/* Within the 1 ms the old copy had run on, and the truncated multiplier's ppm. */
		CHECK(stopped > jump - 2000000 && stopped <= jump + 1000000, "%llu Hz: stop of %llu ns, want about %llu",
		      (unsigned long long)rates[r], (unsigned long long)stopped, (unsigned long long)jump);
		/* The next read on the same page is no new stop. */
		host.tsc += rates[r] / 100;
		vmm_clock_read(&host.page, &st, &last, &stopped);
		CHECK(stopped == 0, "the stop is reported once, then %llu", (unsigned long long)stopped);
	}
}

/*
 * A host whose TSC restarted from near 0 over the suspend (the guest's TSC with it): the TSC
 * went back, the host's time forward; all of the host's advance is unexplained.
 */
static void test_stop_with_tsc_reset(void)
{
	struct vmm_clock_sample old = { .tsc_timestamp = 5000000000ull, .system_time = 100000000000ull,
					.mul = 1048576, .shift = VMM_SHIFT };
	struct vmm_clock_sample now = { .tsc_timestamp = 1000, .system_time = 160000000000ull,
					.mul = 1048576, .shift = VMM_SHIFT };

	CHECK(vmm_clock_unexplained(&old, &now) == 60000000000ull, "TSC reset: %llu",
	      (unsigned long long)vmm_clock_unexplained(&old, &now));
	CHECK(vmm_clock_unexplained(&now, &old) == 0, "the host's time going back is no stop");
}

/*
 * A page the host left empty (vmm_init_pvclock with tsc_freq 0: mul 0) or never wrote: the
 * module must refuse it, a zero multiplier would freeze time.
 */
static void test_empty_page(void)
{
	struct vmm_clock_page empty;

	memset(&empty, 0, sizeof(empty));
	CHECK(!vmm_clock_page_filled(&empty), "an all-zero page counts as filled");
	fill(&empty, 2, 1000, 5000, VMM_CLOCK_FLAG_TSC_STABLE);
	empty.tsc_to_system_mul = 0;
	CHECK(!vmm_clock_page_filled(&empty), "a page with multiplier 0 counts as filled");
	fill(&empty, 2, 1000, 5000, VMM_CLOCK_FLAG_TSC_STABLE);
	CHECK(vmm_clock_page_filled(&empty), "a written page counts as empty");
}

/* Real sample: available_clocksource captured on the build host (Linux 6.18, a KVM guest). */
static const char sample_kvm[] = "tsc kvm-clock \n";
/* Same format (kernel/time/clocksource.c: "%s " per name, then "\n"), a guest without it. */
static const char sample_plain[] = "tsc hpet acpi_pm \n";

static void test_clocksource_list(void)
{
	CHECK(vmm_clock_list_has(sample_kvm, "kvm-clock"), "kvm-clock listed");
	CHECK(vmm_clock_list_has(sample_kvm, "tsc"), "first word");
	CHECK(!vmm_clock_list_has(sample_kvm, "kvm"), "prefix of a word is not the word");
	CHECK(!vmm_clock_list_has(sample_kvm, "clock"), "suffix of a word is not the word");
	CHECK(!vmm_clock_list_has(sample_plain, "kvm-clock"), "absent");
	CHECK(vmm_clock_list_has(sample_plain, "acpi_pm"), "last word");
	CHECK(!vmm_clock_list_has("kvm-clock2 \n", "kvm-clock"), "longer name");
	CHECK(!vmm_clock_list_has("", "kvm-clock"), "empty list");
}

int main(void)
{
	test_vectors();
	test_random_against_reference();
	test_tsc_behind_timestamp();
	test_retry_on_odd_version();
	test_retry_on_changed_version();
	test_monotonic_clamp();
	test_monotonic_clamp_threads();
	test_concurrent_writer();
	test_clocksource_list();
	test_slewing_host_never_goes_back();
	test_forty_minute_jump();
	test_stop_with_tsc_reset();
	test_empty_page();

	if (failures) {
		fprintf(stderr, "vmm_clock_time: %u of %u checks FAILED\n", failures, checks);
		return 1;
	}
	printf("vmm_clock_time: all %u checks passed\n", checks);
	return 0;
}

/*
 * attack: the lithe guest as an attacker of its VMM's devices.
 *
 *   attack SEED COUNT [PROTECTED_ID...]
 *
 * Makes COUNT pseudo-random accesses (xorshift64 from SEED, so a run can be
 * replayed) to lithe's device registers from inside the guest:
 *   - the CPU hotplug controller (MMIO 0xfeb01000) and the GED (0xfeb00000),
 *     and the memory hotplug controller (0xfeb02000) when the VM has one,
 *     through /dev/mem: random offsets across both pages, widths 1/2/4/8,
 *     random values; ejects (EJECT, 0x600) of vCPU 0, absent and out-of-range
 *     ids; _OST storms (OST_SELECT/EVENT/STATUS) for any id;
 *   - the virtio-mmio devices (0xd0000000, one 4 KiB window each, four: the
 *     hostile-guest test's disk, rng, network card and virtio-fs share, whose
 *     rings lithe hands to a real virtiofsd or, when that has failed, serves
 *     itself): random reads and writes, and whole device setups with
 *     random features and queue sizes whose rings sit in a page of the
 *     attacker's own memory (its physical address from /proc/self/pagemap),
 *     filled with random descriptors: loops, overlaps, lengths past the end,
 *     addresses outside guest memory. Buffers a device could write stay in
 *     that page (or outside RAM), so the guest only ever hurts that page;
 *   - the ACPI power block (ports 0x600..0x603) and the i8042 (0x60, 0x64),
 *     through /dev/port (one byte per port): random bytes, except the two
 *     that really power off or reset (S5 with SLP_EN, the reset value), which
 *     a guest may legitimately write.
 * vCPU ids given as PROTECTED_ID are never ejected: the guest runs on them,
 * and ejecting a CPU the guest runs on is the guest hurting only itself.
 *
 * Prints "LITHE-GUEST attack seed=S ops=N mmio=M ports=P" on the console
 * when done. Register offsets are lithe's (devices/src/cpu_hotplug.rs,
 * ged.rs, power.rs).
 *
 * Why C without libc: as cpu-event.c, raw system calls only (no TLS), and one
 * process for all the accesses instead of a busybox devmem per access, each
 * of which costs an emulated fork and exec on this machine.
 * Built by build.sh like cpu-event.
 */

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_mmap 9
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_exit 60
#define O_RDWR 02
#define O_SYNC 04010000
#define PROT_RW 3
#define MAP_SHARED 1

#define GED_BASE 0xfeb00000UL
#define HOTPLUG_BASE 0xfeb01000UL
#define MEM_HOTPLUG_BASE 0xfeb02000UL /* the memory hotplug controller, when the VM has one */
#define WINDOW 0x2000UL /* the GED page and the controller's page */
#define REG_EJECT 0x600
#define REG_OST_SELECT 0x604
#define REG_OST_EVENT 0x608
#define REG_OST_STATUS 0x60c
#define REG_BLOCK 0x200 /* PRESENT, INSERT, REMOVE, then the control block */
#define VIRTIO_BASE 0xd0000000UL
#define VIRTIO_DEVICES 4UL /* the test's disk, rng, network card and virtio-fs */
#define VIRTIO_WINDOW (VIRTIO_DEVICES * 0x1000UL)
#define RING_USED 0x7f8 /* a used ring of up to 256 entries (2054 bytes) ends below 0x1000 */
#define SYS_lseek 8
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20
#define MAX_PROTECTED 64

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long r;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}

static unsigned long rng;

static unsigned long next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static unsigned long parse(const char *s)
{
	unsigned long v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (unsigned long)(*s++ - '0');
	return v;
}

static char *put(char *p, const char *s)
{
	while (*s)
		*p++ = *s++;
	return p;
}

static char *num(char *p, unsigned long v)
{
	char d[24];
	int i = 0;
	do {
		d[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i)
		*p++ = d[--i];
	return p;
}

static void say(const char *a, unsigned long seed, unsigned long ops, unsigned long mmio, unsigned long ports)
{
	char line[160], *p = line;
	p = put(p, "LITHE-GUEST attack ");
	p = put(p, a);
	p = put(p, " seed=");
	p = num(p, seed);
	p = put(p, " ops=");
	p = num(p, ops);
	p = put(p, " mmio=");
	p = num(p, mmio);
	p = put(p, " ports=");
	p = num(p, ports);
	*p++ = '\n';
	sys6(SYS_write, 1, (long)line, p - line, 0, 0, 0);
}

static unsigned long protected_ids[MAX_PROTECTED];
static unsigned long n_protected;

static int is_protected(unsigned long id)
{
	for (unsigned long i = 0; i < n_protected; i++)
		if (protected_ids[i] == id)
			return 1;
	return 0;
}

/* An id to eject: vCPU 0, a small absent one, or anything up to 2^32-1. */
static unsigned long eject_id(void)
{
	for (;;) {
		unsigned long id;
		switch (next() % 4) {
		case 0: id = 0; break;
		case 1: id = next() % 300; break;
		case 2: id = 256 + next() % 4096; break;
		default: id = next() & 0xffffffffUL; break;
		}
		if (id == 0 || !is_protected(id))
			return id;
	}
}

static void mmio_write(volatile unsigned char *base, unsigned long off, unsigned width, unsigned long v)
{
	volatile unsigned char *a = base + off;
	switch (width) {
	case 1: *a = (unsigned char)v; break;
	case 2: *(volatile unsigned short *)a = (unsigned short)v; break;
	case 4: *(volatile unsigned int *)a = (unsigned int)v; break;
	default: *(volatile unsigned long *)a = v; break;
	}
}

static void mmio_read(volatile unsigned char *base, unsigned long off, unsigned width)
{
	volatile unsigned char *a = base + off;
	switch (width) {
	case 1: (void)*a; break;
	case 2: (void)*(volatile unsigned short *)a; break;
	case 4: (void)*(volatile unsigned int *)a; break;
	default: (void)*(volatile unsigned long *)a; break;
	}
}

/* An access of `width` bytes at `off` in the controller's page that would
 * touch EJECT: never made at random, it could name a protected vCPU. */
static int hits_eject(unsigned long off, unsigned width)
{
	return off < REG_EJECT + 4 && off + width > REG_EJECT;
}

/* Writing this byte to this port really powers off or resets the guest. */
static int powers_off(unsigned long port, unsigned char v)
{
	if (port == 0x600 && (v & 0x20) && ((v >> 2) & 7) == 5)
		return 1;
	if (port == 0x602 && v == 1)
		return 1;
	return port == 0x64 && v == 0xfe;
}

static volatile unsigned char *ring; /* the attacker's own page */
static unsigned long ring_phys;      /* its guest-physical address, 0 if unknown */

/* One page of our own memory and its physical address (root reads PFNs). */
static void own_page(void)
{
	long p = sys6(SYS_mmap, 0, 4096, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long entry = 0;

	if (p < 0 && p > -4096)
		return;
	ring = (volatile unsigned char *)p;
	ring[0] = 1; /* fault it in */
	long fd = sys6(SYS_open, (long)"/proc/self/pagemap", 0, 0, 0, 0, 0);
	if (fd < 0)
		return;
	sys6(SYS_pread64, fd, (long)&entry, 8, (long)(p / 4096 * 8), 0, 0);
	if ((entry >> 63) & 1)
		ring_phys = (entry & ((1UL << 55) - 1)) * 4096;
}

/* A buffer address for a descriptor: inside our page (length clamped to
 * it), or far outside guest memory. */
static void random_desc(unsigned i)
{
	volatile unsigned long *d = (volatile unsigned long *)(ring + i * 16);
	unsigned long off = next() % 4096, addr, len;

	if (ring_phys && next() % 2) {
		addr = ring_phys + off;
		len = next() % (4096 - off + 1);
	} else {
		addr = next() | (1UL << 44);
		len = next() & 0xffffffffUL;
	}
	d[0] = addr;
	d[1] = (len & 0xffffffffUL) | ((next() % 8) << 32) | ((next() % 20) << 48); /* flags, next */
}

/* A whole device setup with hostile rings on device `dev`, then a notify. */
static void hostile_setup(volatile unsigned char *vio, unsigned dev)
{
	volatile unsigned char *b = vio + dev * 0x1000;
	unsigned long size = next() % 4 ? 1UL << (next() % 9) : next() & 0xffff;

	if (!ring)
		return;
	for (unsigned i = 0; i < 4096 / 16; i++)
		random_desc(i);
	/* the avail ring: a few entries (sometimes an index far ahead), random
	 * heads, some past the queue's size */
	volatile unsigned short *avail_ring = (volatile unsigned short *)(ring + 0x400);
	avail_ring[1] = (unsigned short)(next() % 8 ? 1 + next() % 4 : next());
	for (unsigned i = 0; i < 8; i++)
		avail_ring[2 + i] = (unsigned short)(next() % 4 ? next() % 16 : next());
	mmio_write(b, 0x70, 4, 0); /* reset */
	mmio_write(b, 0x70, 4, 1);
	mmio_write(b, 0x70, 4, 3);
	/* Mostly a subset of what the device offers, so setups get as far as
	 * DRIVER_OK and the device walks the hostile rings; sometimes anything. */
	mmio_write(b, 0x14, 4, 0);
	unsigned long offered = *(volatile unsigned int *)(b + 0x10);
	mmio_write(b, 0x24, 4, 0);
	mmio_write(b, 0x20, 4, next() % 4 ? offered & next() : next());
	mmio_write(b, 0x24, 4, 1);
	mmio_write(b, 0x20, 4, next() % 4 ? 1 : next());
	mmio_write(b, 0x70, 4, 11);
	/* One random queue, or the first two or three (a device with several
	 * queues activates only with all of them ready), sharing the rings. */
	unsigned nq = 1 + next() % 3;
	for (unsigned q = 0; q < nq; q++) {
		mmio_write(b, 0x30, 4, nq == 1 ? next() % 4 : q);
		mmio_write(b, 0x38, 4, size);
		unsigned long desc = ring_phys ? ring_phys : next(), avail = desc + 0x400, used = desc + RING_USED;
		if (next() % 8 == 0)
			used = next(); /* somewhere else entirely */
		mmio_write(b, 0x80, 4, desc);
		mmio_write(b, 0x84, 4, desc >> 32);
		mmio_write(b, 0x90, 4, avail);
		mmio_write(b, 0x94, 4, avail >> 32);
		mmio_write(b, 0xa0, 4, used);
		mmio_write(b, 0xa4, 4, used >> 32);
		mmio_write(b, 0x44, 4, 1);
	}
	mmio_write(b, 0x70, 4, next() % 8 ? 15 : next());
	mmio_write(b, 0x50, 4, next() % 4);
}

__attribute__((used, noreturn)) void attack(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	unsigned long seed, count, mmio = 0, ports = 0;
	static const unsigned long port_list[] = { 0x600, 0x601, 0x602, 0x603, 0x60, 0x64 };

	if (argc < 3) {
		say("usage: attack SEED COUNT [PROTECTED_ID...]", 0, 0, 0, 0);
		sys6(SYS_exit, 2, 0, 0, 0, 0, 0);
	}
	seed = parse(argv[1]);
	count = parse(argv[2]);
	for (long i = 3; i < argc && n_protected < MAX_PROTECTED; i++)
		protected_ids[n_protected++] = parse(argv[i]);
	rng = seed ? seed : 1;

	long mem = sys6(SYS_open, (long)"/dev/mem", O_RDWR | O_SYNC, 0, 0, 0, 0);
	long port = sys6(SYS_open, (long)"/dev/port", O_RDWR, 0, 0, 0, 0);
	if (mem < 0 || port < 0) {
		say("failed: cannot open /dev/mem or /dev/port", seed, 0, 0, 0);
		sys6(SYS_exit, 1, 0, 0, 0, 0, 0);
	}
	long map = sys6(SYS_mmap, 0, WINDOW, PROT_RW, MAP_SHARED, mem, GED_BASE);
	if (map < 0 && map > -4096) {
		say("failed: cannot map the device window", seed, 0, 0, 0);
		sys6(SYS_exit, 1, 0, 0, 0, 0, 0);
	}
	volatile unsigned char *ged = (volatile unsigned char *)map;
	volatile unsigned char *hp = ged + (HOTPLUG_BASE - GED_BASE);
	long vmap = sys6(SYS_mmap, 0, VIRTIO_WINDOW, PROT_RW, MAP_SHARED, mem, VIRTIO_BASE);
	volatile unsigned char *vio = vmap < 0 && vmap > -4096 ? 0 : (volatile unsigned char *)vmap;
	long mmap_mhp = sys6(SYS_mmap, 0, 0x1000, PROT_RW, MAP_SHARED, mem, MEM_HOTPLUG_BASE);
	volatile unsigned char *mhp = mmap_mhp < 0 && mmap_mhp > -4096 ? 0 : (volatile unsigned char *)mmap_mhp;
	own_page();

	for (unsigned long op = 0; op < count; op++) {
		unsigned long r = next();
		unsigned width = 1u << (next() % 4);
		if (mhp && r % 17 == 16) {
			/* the memory hotplug controller: selectors past the slots,
			 * _OST for anything, control bytes (ejects too), any width */
			unsigned long off = (next() % 0x20) & ~(unsigned long)(width - 1);
			if (next() % 2)
				mmio_write(mhp, off, width, next() % 2 ? next() % 20 : next());
			else
				mmio_read(mhp, off, width);
			mmio++;
			continue;
		}
		if (vio && r % 11 >= 8) {
			unsigned long off = (next() % VIRTIO_WINDOW) & ~(unsigned long)(width - 1);
			switch (r % 11) {
			case 8: mmio_write(vio, off, width, next()); mmio++; break;
			case 9: mmio_read(vio, off, width); mmio++; break;
			default: hostile_setup(vio, next() % VIRTIO_DEVICES); mmio += 20; break;
			}
			continue;
		}
		switch (r % 8) {
		case 0: /* an eject of vCPU 0, an absent or an out-of-range id */
			mmio_write(hp, REG_EJECT, 4, eject_id());
			mmio++;
			break;
		case 1: /* an _OST report about any id, with any event and status */
			mmio_write(hp, REG_OST_SELECT, 4, next() % 2 ? next() % 300 : next() & 0xffffffffUL);
			mmio_write(hp, REG_OST_EVENT, 4, next() % 2 ? next() % 4 : next() & 0xffffffffUL);
			mmio_write(hp, REG_OST_STATUS, 4, next() % 2 ? 0x80 + next() % 5 : next() & 0xffffffffUL);
			mmio += 3;
			break;
		case 2: { /* a random write in either page, off the eject register */
			unsigned long off = (next() % WINDOW) & ~(unsigned long)(width - 1);
			if (off >= HOTPLUG_BASE - GED_BASE && hits_eject(off - (HOTPLUG_BASE - GED_BASE), width))
				break;
			mmio_write(ged, off, width, next());
			mmio++;
			break;
		}
		case 3: /* a random read in either page */
			mmio_read(ged, (next() % WINDOW) & ~(unsigned long)(width - 1), width);
			mmio++;
			break;
		case 4: { /* the controller's registers, at their own offsets, any width:
			   the first words of a bitmap block, or the control block */
			unsigned long off = ((next() % 4) * REG_BLOCK + next() % 0x20) & ~3UL;
			if (hits_eject(off, width))
				break;
			mmio_write(hp, off, width, next());
			mmio++;
			break;
		}
		case 5: { /* a byte to the power block or the i8042 */
			unsigned long p = port_list[next() % 6];
			unsigned char v = (unsigned char)next();
			if (powers_off(p, v))
				break;
			sys6(SYS_pwrite64, port, (long)&v, 1, (long)p, 0, 0);
			ports++;
			break;
		}
		case 6: { /* a byte from one of them */
			unsigned char v;
			sys6(SYS_pread64, port, (long)&v, 1, (long)port_list[next() % 6], 0, 0);
			ports++;
			break;
		}
		default: /* the GED's event register, read (it clears) or written */
			if (next() % 2)
				mmio_read(ged, 0, width);
			else
				mmio_write(ged, 0, width, next());
			mmio++;
			break;
		}
	}
	/* The devices forget the rings in our page before it goes back to the
	 * kernel: a later notify (the guest's own driver) must not write there. */
	if (vio) {
		for (unsigned long d = 0; d < VIRTIO_DEVICES; d++)
			mmio_write(vio + d * 0x1000, 0x70, 4, 0);
	}
	say("done", seed, count, mmio, ports);
	sys6(SYS_exit, 0, 0, 0, 0, 0, 0);
	__builtin_unreachable();
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall attack\n");

/*
 * attack: the lithe guest as an attacker of its VMM's devices.
 *
 *   attack SEED COUNT [PROTECTED_ID...]
 *
 * Makes COUNT pseudo-random accesses (xorshift64 from SEED, so a run can be
 * replayed) to lithe's device registers from inside the guest:
 *   - the CPU hotplug controller (MMIO 0xfeb01000) and the GED (0xfeb00000),
 *     through /dev/mem: random offsets across both pages, widths 1/2/4/8,
 *     random values; ejects (EJECT, 0x600) of vCPU 0, absent and out-of-range
 *     ids; _OST storms (OST_SELECT/EVENT/STATUS) for any id;
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
#define WINDOW 0x2000UL /* the GED page and the controller's page */
#define REG_EJECT 0x600
#define REG_OST_SELECT 0x604
#define REG_OST_EVENT 0x608
#define REG_OST_STATUS 0x60c
#define REG_BLOCK 0x200 /* PRESENT, INSERT, REMOVE, then the control block */
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

	for (unsigned long op = 0; op < count; op++) {
		unsigned long r = next();
		unsigned width = 1u << (next() % 4);
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
	say("done", seed, count, mmio, ports);
	sys6(SYS_exit, 0, 0, 0, 0, 0, 0);
	__builtin_unreachable();
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall attack\n");

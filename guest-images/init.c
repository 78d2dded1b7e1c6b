/*
 * init: the lithe guest's PID 1.
 *
 * Mounts the basics, onlines hot-added CPUs, reports the CPU sets (and the
 * online CPUs' APIC ids) whenever they change, powers off on the ACPI power
 * button, and obeys the commands typed on the console (README.md lists them).
 * Its output lines ("LITHE-GUEST ...") are what the tests read.
 *
 * Event-driven, so an idle guest does nothing at all: the kernel runs
 * /bin/cpu-event on every uevent (CONFIG_UEVENT_HELPER, set once boot is
 * done); it forwards CPU events into a FIFO, and init sleeps in poll() on
 * the FIFO and the power button. A second process reads the console, so a
 * command never waits behind a CPU being onlined, nor the other way round.
 *
 * Why C on the kernel's nolibc (tools/include/nolibc, from linux-source-6.1)
 * rather than a busybox sh script: under this machine's KVM every byte of the
 * initramfs is unpacked by emulated kernel code and every system call costs a
 * page fault. busybox was 1.98 MB of a 2 MB initramfs (~5 s of boot to
 * unpack) and its shell forks and execs for each report; this init is a few
 * KB. nolibc keeps no thread-local state, so the PVM fault that kills
 * glibc's TLS access in freshly started processes (README.md) cannot hit it.
 *
 * Built by build.sh: gcc -Os -static -nostdlib -include nolibc.h.
 */
#include <asm/termbits.h>

#define CPU_DIR "/sys/devices/system/cpu"
#define EVENTS "/tmp/cpu-events"
#define LINE_MAX 4096

/* ---- small helpers -------------------------------------------------------- */

/* A line being built, written with one write(2): lines from init's two
 * processes never interleave on the console. */
struct line {
	char buf[LINE_MAX];
	unsigned int len;
};

static void put(struct line *l, const char *s)
{
	while (*s && l->len < sizeof(l->buf) - 1)
		l->buf[l->len++] = *s++;
}

static void put_num(struct line *l, long v)
{
	char t[24];

	itoa_r(v, t);
	put(l, t);
}

static void say(struct line *l)
{
	l->buf[l->len++] = '\n';
	write(1, l->buf, l->len);
	l->len = 0;
}

/* Prints "LITHE-GUEST <a><b>". */
static void say2(const char *a, const char *b)
{
	struct line l = { .len = 0 };

	put(&l, "LITHE-GUEST ");
	put(&l, a);
	put(&l, b);
	say(&l);
}

static int starts_with(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

/* nolibc 6.1 has neither strstr nor pipe. */
static int contains(const char *s, const char *p)
{
	for (; *s; s++)
		if (starts_with(s, p))
			return 1;
	return 0;
}

static int pipe(int fds[2])
{
	return my_syscall2(__NR_pipe2, fds, 0) < 0 ? -1 : 0;
}

/* Reads a small file into buf, without its trailing newline. -1 if it
 * cannot be read. */
static int read_file(const char *path, char *buf, int size)
{
	int fd = open(path, O_RDONLY, 0);
	int n = 0, r = 0;

	if (fd < 0)
		return -1;
	while (n < size - 1 && (r = read(fd, buf + n, size - 1 - n)) > 0)
		n += r;
	close(fd);
	if (r < 0)
		return -1;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		n--;
	buf[n] = 0;
	return n;
}

/* Writes s to a sysfs or proc file in one write. 0 on success. */
static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY, 0);
	int len = strlen(s), r;

	if (fd < 0)
		return -1;
	r = write(fd, s, len);
	close(fd);
	return r == len ? 0 : -1;
}

/* Creates an empty file (mode 0644). 0 on success. */
static int write_file_create(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* path = a + b + c, truncated to size. */
static void join(char *path, int size, const char *a, const char *b, const char *c)
{
	path[0] = 0;
	strlcat(path, a, size);
	strlcat(path, b, size);
	strlcat(path, c, size);
}

/* Calls fn on each line of a file, read in chunks (proc files change between
 * reads, so they are parsed as they come, never re-read line by line). */
static void each_line(const char *path, void (*fn)(const char *line, void *arg), void *arg)
{
	char chunk[1024], line[512];
	int fd = open(path, O_RDONLY, 0), n, len = 0;

	if (fd < 0)
		return;
	while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
		for (int i = 0; i < n; i++) {
			if (chunk[i] == '\n') {
				line[len] = 0;
				fn(line, arg);
				len = 0;
			} else if (len < (int)sizeof(line) - 1) {
				line[len++] = chunk[i];
			}
		}
	}
	if (len) {
		line[len] = 0;
		fn(line, arg);
	}
	close(fd);
}

/* Calls fn on each name in a directory that starts with prefix. */
static void each_entry(const char *dir, const char *prefix, void (*fn)(const char *name, void *arg), void *arg)
{
	char buf[2048];
	int fd = open(dir, O_RDONLY | O_DIRECTORY, 0), n;

	if (fd < 0)
		return;
	while ((n = getdents64(fd, (void *)buf, sizeof(buf))) > 0) {
		for (int off = 0; off < n;) {
			struct linux_dirent64 *d = (void *)(buf + off);

			if (starts_with(d->d_name, prefix))
				fn(d->d_name, arg);
			off += d->d_reclen;
		}
	}
	close(fd);
}

/* "cpu12" -> 12; -1 for anything else (cpufreq, cpuidle, ...). */
static int cpu_number(const char *name)
{
	const char *s = name + 3;
	int v = 0;

	if (!starts_with(name, "cpu") || *s < '0' || *s > '9')
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

/* Leading and trailing blanks off, in place, as the shell's `read` did. */
static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = 0;
	return s;
}

static void power_off(void)
{
	my_syscall0(__NR_sync);
	reboot(LINUX_REBOOT_CMD_POWER_OFF);
}

/* ---- the CPU report ------------------------------------------------------- */

static void add_apic(const char *line, void *arg)
{
	struct line *l = arg;
	const char *v;

	/* "apicid\t\t: 2" (not "initial apicid") */
	if (!starts_with(line, "apicid"))
		return;
	v = strchr(line, ':');
	if (!v)
		return;
	if (l->buf[l->len - 1] != '=')
		put(l, ",");
	put(l, trim((char *)v + 1));
}

static char last_report[LINE_MAX];

/* Prints the CPU sets if they changed since the last report. The APIC ids
 * are the online CPUs', in logical-CPU order: Linux numbers hot-added CPUs
 * by the first free logical id, so tests compare these, not counts. */
static void report(void)
{
	char online[1024], present[1024];
	struct line l = { .len = 0 };

	if (read_file(CPU_DIR "/online", online, sizeof(online)) < 0 ||
	    read_file(CPU_DIR "/present", present, sizeof(present)) < 0)
		return;
	put(&l, "LITHE-GUEST online=");
	put(&l, online);
	put(&l, " present=");
	put(&l, present);
	put(&l, " apic=");
	each_line("/proc/cpuinfo", add_apic, &l);
	l.buf[l.len] = 0;
	if (strcmp(l.buf, last_report) == 0)
		return;
	strlcpy(last_report, l.buf, sizeof(last_report));
	say(&l);
}

/* A CPU present but offline: online it (one hot-added while the kernel
 * booted sent its "add" event before anyone listened). An eject in flight
 * holds the kernel's device-hotplug lock from offlining to _EJ0, so such a
 * write waits for it and then finds the CPU gone. */
static void online_if_offline(const char *name, void *arg)
{
	char path[128], state[8];

	(void)arg;
	if (cpu_number(name) < 0)
		return;
	join(path, sizeof(path), CPU_DIR "/", name, "/online");
	if (read_file(path, state, sizeof(state)) > 0 && strcmp(state, "0") == 0)
		write_file(path, "1");
}

/* ---- console commands ----------------------------------------------------- */

/* Where Linux placed one online CPU. */
static void topology_of(const char *name, void *arg)
{
	char dir[128], path[192], pkg[32], die[32], core[32], threads[256];
	int cpu = cpu_number(name);
	struct line l = { .len = 0 };

	(void)arg;
	if (cpu < 0)
		return;
	join(dir, sizeof(dir), CPU_DIR "/", name, "/topology/");
	join(path, sizeof(path), dir, "core_id", "");
	if (read_file(path, core, sizeof(core)) < 0)
		return; /* offline CPUs have no topology directory */
	join(path, sizeof(path), dir, "physical_package_id", "");
	if (read_file(path, pkg, sizeof(pkg)) < 0)
		return;
	join(path, sizeof(path), dir, "die_id", "");
	if (read_file(path, die, sizeof(die)) < 0)
		return;
	join(path, sizeof(path), dir, "thread_siblings_list", "");
	/* Once seen empty under this KVM (CI, 1 CPU of 7): try again. */
	for (int t = 0; t < 3 && read_file(path, threads, sizeof(threads)) <= 0; t++)
		threads[0] = 0;
	put(&l, "LITHE-GUEST topology cpu=");
	put_num(&l, cpu);
	put(&l, " package=");
	put(&l, pkg);
	put(&l, " die=");
	put(&l, die);
	put(&l, " core=");
	put(&l, core);
	put(&l, " threads=");
	put(&l, threads);
	say(&l);
}

static void topology(void)
{
	char online[1024];

	if (read_file(CPU_DIR "/online", online, sizeof(online)) < 0)
		online[0] = 0;
	each_entry(CPU_DIR, "cpu", topology_of, 0);
	say2("topology end online=", online);
}

/* The console's line of /proc/interrupts, blanks trimmed. */
struct irq_find {
	const char *name;
	char *line;
};

static void find_irq(const char *line, void *arg)
{
	struct irq_find *f = arg;

	if (contains(line, f->name))
		strlcpy(f->line, trim((char *)line), LINE_MAX);
}

/* The /proc/interrupts line of the interrupt named `name` (ttyS0, virtio0)
 * into line (LINE_MAX), or "". */
static void irq_line(const char *name, char *line)
{
	struct irq_find f = { .name = name, .line = line };

	line[0] = 0;
	each_line("/proc/interrupts", find_irq, &f);
}

/* Steers the interrupt named `name` to one CPU (by logical number): lithe's
 * IOAPIC must then reach that CPU's APIC id. Says `label`IRQ cpu=N. */
static void steer_irq(const char *name, const char *cpu, const char *label)
{
	static char line[LINE_MAX];
	char path[64], value[32], *colon;

	irq_line(name, line);
	colon = strchr(line, ':');
	if (colon) {
		*colon = 0;
		join(path, sizeof(path), "/proc/irq/", line, "/smp_affinity_list");
		join(value, sizeof(value), cpu, "\n", "");
		if (write_file(path, value) == 0) {
			struct line l = { .len = 0 };

			put(&l, "LITHE-GUEST ");
			put(&l, label);
			put(&l, line);
			put(&l, " cpu=");
			put(&l, cpu);
			say(&l);
			return;
		}
	}
	say2("error: steering failed for ", name);
}

/* `irq-to NAME CPU`. */
static void irq_to(char *args)
{
	char *cpu = strchr(args, ' ');

	if (!cpu) {
		say2("error: usage: irq-to NAME CPU", "");
		return;
	}
	*cpu++ = 0;
	steer_irq(args, trim(cpu), "irq-to=");
}

/* The /proc/interrupts line of `name`: a count per online CPU. */
static void irq_count(const char *name, const char *label)
{
	static char line[LINE_MAX];

	irq_line(name, line);
	if (line[0])
		say2(label, line);
	else
		say2("error: no such line in /proc/interrupts: ", name);
}

struct eject {
	const char *uid;
	int done;
};

/* A guest-initiated eject, as an administrator would do it: the processor
 * device whose _UID is the vCPU id, asked to eject. */
static void eject_if_uid(const char *name, void *arg)
{
	struct eject *e = arg;
	char path[128], uid[32];

	join(path, sizeof(path), "/sys/bus/acpi/devices/", name, "/uid");
	if (read_file(path, uid, sizeof(uid)) < 0 || strcmp(uid, e->uid) != 0)
		return;
	join(path, sizeof(path), "/sys/bus/acpi/devices/", name, "/eject");
	if (write_file(path, "1") == 0)
		e->done = 1;
}

/* The guest as an attacker of lithe's registers: /bin/attack (attack.c),
 * with the command's words as its arguments. */
static void attack(char *args, char **envp)
{
	char *argv[16] = { "/bin/attack" };
	int argc = 1, status;
	pid_t pid;

	for (char *s = args; *s && argc < 15;) {
		while (*s == ' ')
			*s++ = 0;
		if (!*s)
			break;
		argv[argc++] = s;
		while (*s && *s != ' ')
			s++;
	}
	argv[argc] = 0;
	pid = fork();
	if (pid == 0) {
		execve(argv[0], argv, envp);
		say2("error: attack: cannot run ", argv[0]);
		exit(1);
	}
	if (pid < 0)
		say2("error: attack: ", "fork failed");
	else
		waitpid(pid, &status, 0);
}

/* The commands that write one value to one file, and what they answer. */
static const struct toggle {
	const char *cmd, *path, *value, *ok;
} toggles[] = {
	/* Linux then answers eject requests with a failure _OST. */
	{ "refuse-eject", "/sys/firmware/acpi/hotplug/processor/enabled", "0", "refuse-eject=on" },
	{ "allow-eject", "/sys/firmware/acpi/hotplug/processor/enabled", "1", "refuse-eject=off" },
	/* The same for memory: Linux refuses its eject requests (_OST 0x80). */
	{ "refuse-mem-eject", "/sys/firmware/acpi/hotplug/memory/enabled", "0", "refuse-mem-eject=on" },
	{ "allow-mem-eject", "/sys/firmware/acpi/hotplug/memory/enabled", "1", "refuse-mem-eject=off" },
	/* Unbinding the GED driver leaves its interrupt unhandled: hotplug
	 * requests go unanswered (lithe's timeouts roll them back). */
	{ "ignore-hotplug", "/sys/bus/platform/drivers/acpi-ged/unbind", "ACPI0013:00", "hotplug=ignored" },
	{ "allow-hotplug", "/sys/bus/platform/drivers/acpi-ged/bind", "ACPI0013:00", "hotplug=handled" },
};

/* Runs cmd if it is a toggle; says how it went. 0 if it is not one. */
/* ---- devices: the virtio disk and rng --------------------------------- */

/* The disk pattern: byte i of a write seeded with `seed`. The host side
 * (tests/src/lib.rs, disk_pattern) computes the same to check the image. */
static unsigned char pattern_byte(unsigned long seed, unsigned long i)
{
	return (unsigned char)((seed + i * 131 + (i >> 9) * 17) % 251);
}

static unsigned long number(const char **p)
{
	unsigned long v = 0;

	while (**p == ' ')
		(*p)++;
	while (**p >= '0' && **p <= '9')
		v = v * 10 + (unsigned long)(*(*p)++ - '0');
	return v;
}

/* disk-write SEED SECTORS / disk-read SEED SECTORS on /dev/vda, from its
 * start: a write is fsync'ed (the device sees a FLUSH) before it is
 * reported; a read compares every byte with the pattern. */
static void disk(const char *args, int write_it)
{
	static unsigned char buf[64 * 1024];
	unsigned long seed = number(&args), sectors = number(&args);
	unsigned long total = sectors * 512, done = 0, sum = 0;
	struct line l = { .len = 0 };
	int fd = open("/dev/vda", write_it ? O_RDWR : O_RDONLY, 0);

	if (fd < 0) {
		say2("error: cannot open /dev/vda", "");
		return;
	}
	while (done < total) {
		unsigned long n = total - done < sizeof(buf) ? total - done : sizeof(buf);

		if (write_it) {
			for (unsigned long i = 0; i < n; i++)
				buf[i] = pattern_byte(seed, done + i);
			if (write(fd, buf, n) != (long)n)
				break;
		} else {
			if (read(fd, buf, n) != (long)n)
				break;
			for (unsigned long i = 0; i < n; i++) {
				if (buf[i] != pattern_byte(seed, done + i)) {
					put(&l, "LITHE-GUEST disk-read mismatch at byte ");
					put_num(&l, (long)(done + i));
					say(&l);
					close(fd);
					return;
				}
			}
		}
		for (unsigned long i = 0; i < n; i++)
			sum += buf[i];
		done += n;
	}
	if (write_it && my_syscall1(__NR_fsync, fd) != 0)
		done = 0;
	close(fd);
	put(&l, write_it ? "LITHE-GUEST disk-write" : "LITHE-GUEST disk-read");
	put(&l, done == total ? " ok bytes=" : " failed bytes=");
	put_num(&l, (long)done);
	put(&l, " sum=");
	put_num(&l, (long)sum);
	say(&l);
}

/* disk-info: the disk's size in sectors and the serial the device gave. */
static void disk_info(void)
{
	char size[32], serial[64];
	struct line l = { .len = 0 };

	if (read_file("/sys/block/vda/size", size, sizeof(size)) < 0) {
		say2("error: no /sys/block/vda", "");
		return;
	}
	if (read_file("/sys/block/vda/serial", serial, sizeof(serial)) < 0)
		serial[0] = 0;
	put(&l, "LITHE-GUEST disk sectors=");
	put(&l, trim(size));
	put(&l, " serial=");
	put(&l, trim(serial));
	say(&l);
}

/* rng N: N bytes from the virtio-rng (/dev/hwrng); how many came and how
 * many distinct values among them. */
static void rng(const char *args)
{
	unsigned char buf[256], seen[256] = { 0 };
	unsigned long want = number(&args);
	long got = 0, distinct = 0;
	struct line l = { .len = 0 };
	int fd = open("/dev/hwrng", O_RDONLY, 0);

	if (want > sizeof(buf))
		want = sizeof(buf);
	if (fd < 0) {
		say2("error: cannot open /dev/hwrng", "");
		return;
	}
	while (got < (long)want) {
		long n = read(fd, buf + got, want - (unsigned long)got);

		if (n <= 0)
			break;
		got += n;
	}
	close(fd);
	for (long i = 0; i < got; i++) {
		distinct += !seen[buf[i]];
		seen[buf[i]] = 1;
	}
	put(&l, "LITHE-GUEST rng bytes=");
	put_num(&l, got);
	put(&l, " distinct=");
	put_num(&l, distinct);
	say(&l);
}

/* ---- memory: what hotplug gave the guest --------------------------------- */

static void count_online_block(const char *name, void *arg)
{
	char path[128], v[8];

	join(path, sizeof(path), "/sys/devices/system/memory/", name, "/online");
	if (read_file(path, v, sizeof(v)) > 0 && v[0] == '1')
		(*(long *)arg)++;
}

/* meminfo: MemTotal (kB) and how many memory blocks are online. */
static void meminfo(void)
{
	char buf[256];
	const char *p = buf;
	long blocks = 0;
	struct line l = { .len = 0 };

	if (read_file("/proc/meminfo", buf, sizeof(buf)) < 0) {
		say2("error: cannot read /proc/meminfo", "");
		return;
	}
	while (*p && (*p < '0' || *p > '9'))
		p++;
	each_entry("/sys/devices/system/memory", "memory", count_online_block, &blocks);
	put(&l, "LITHE-GUEST meminfo total_kb=");
	put_num(&l, (long)number(&p));
	put(&l, " blocks_online=");
	put_num(&l, blocks);
	say(&l);
}

/* mem-touch MB: maps MB MiB, writes a pattern into every page, reads every
 * page back. With hot-added memory online, the kernel backs much of it
 * there. */
static void mem_touch(const char *args)
{
	const char *p = args;
	unsigned long mb = number(&p), size = mb << 20, bad = 0;
	struct line l = { .len = 0 };
	long m = my_syscall6(__NR_mmap, 0, size, 3 /* PROT_READ|PROT_WRITE */, 0x8022 /* MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE: one fault-in loop in the kernel, not a page fault per page */, -1, 0);

	if (mb == 0 || (m < 0 && m > -4096)) {
		say2("error: mem-touch cannot map ", args);
		return;
	}
	for (unsigned long off = 0; off < size; off += 4096)
		*(volatile unsigned long *)(m + off) = off * 0x9e3779b97f4a7c15UL + mb;
	for (unsigned long off = 0; off < size; off += 4096)
		if (*(volatile unsigned long *)(m + off) != off * 0x9e3779b97f4a7c15UL + mb)
			bad++;
	my_syscall2(__NR_munmap, m, size);
	put(&l, "LITHE-GUEST mem-touch mb=");
	put_num(&l, (long)mb);
	put(&l, bad ? " bad_pages=" : " ok");
	if (bad)
		put_num(&l, (long)bad);
	say(&l);
}

/* mem-hold MB: a process of its own maps MB MiB and fills every page with a
 * pattern, then holds it; mem-check has it read every page back and report
 * (across a memory removal, the kernel must have migrated those pages). */
static void mem_hold(const char *args)
{
	const char *p = args;
	unsigned long mb = number(&p), size = mb << 20, bad = 0;
	struct line l = { .len = 0 };
	long m;

	if (mb == 0 || fork() != 0)
		return;
	m = my_syscall6(__NR_mmap, 0, size, 3, 0x8022 /* MAP_POPULATE too */, -1, 0);
	if (m < 0 && m > -4096) {
		say2("error: mem-hold cannot map ", args);
		exit(1);
	}
	for (unsigned long off = 0; off < size; off += 4096)
		*(volatile unsigned long *)(m + off) = off * 0x9e3779b97f4a7c15UL + mb;
	put(&l, "LITHE-GUEST mem-hold mb=");
	put_num(&l, (long)mb);
	put(&l, " holding");
	say(&l);
	/* mem-check creates /tmp/mem-check; the holder looks once a second. */
	while (my_syscall2(__NR_access, "/tmp/mem-check", 0) != 0)
		sleep(1);
	for (unsigned long off = 0; off < size; off += 4096)
		if (*(volatile unsigned long *)(m + off) != off * 0x9e3779b97f4a7c15UL + mb)
			bad++;
	put(&l, "LITHE-GUEST mem-hold mb=");
	put_num(&l, (long)mb);
	put(&l, bad ? " bad_pages=" : " ok");
	if (bad)
		put_num(&l, (long)bad);
	say(&l);
	my_syscall1(__NR_unlink, "/tmp/mem-check");
	exit(0);
}

/* ---- virtio-fs: the share Kata's agent mounts ----------------------------- */

/* Splits "A B" into a and b (each NUL-terminated, truncated). 0 if both are there. */
static int two_words(const char *s, char *a, int an, char *b, int bn)
{
	int i = 0;

	while (*s == ' ')
		s++;
	while (*s && *s != ' ' && i < an - 1)
		a[i++] = *s++;
	a[i] = 0;
	while (*s == ' ')
		s++;
	for (i = 0; *s && i < bn - 1;)
		b[i++] = *s++;
	b[i] = 0;
	return a[0] && b[0] ? 0 : -1;
}

/* fs-mount TAG DIR: mounts the virtio-fs share TAG on DIR (made, with its
 * parents, if missing), as Kata's agent mounts the pod's share. */
static void fs_mount(const char *args, struct line *l)
{
	char tag[64], dir[160];
	long r;

	if (two_words(args, tag, sizeof(tag), dir, sizeof(dir)) != 0) {
		put(l, "error: usage: fs-mount TAG DIR");
		return;
	}
	/* mkdir -p: each parent, then the directory itself. */
	for (char *p = dir + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			my_syscall2(__NR_mkdir, dir, 0755);
			*p = '/';
		}
	}
	my_syscall2(__NR_mkdir, dir, 0755);
	r = my_syscall5(__NR_mount, tag, dir, "virtiofs", 0, 0);
	put(l, "fs-mount ");
	put(l, tag);
	put(l, " ");
	put(l, dir);
	if (r == 0) {
		put(l, " ok");
	} else {
		put(l, " errno=");
		put_num(l, -r);
	}
}

/* fs-read PATH: the file's size, its FNV-1a hash (the test computes the
 * same on the host's copy) and its first line, up to 64 bytes. */
static void fs_read(const char *path, struct line *l)
{
	static unsigned char buf[64 * 1024];
	char first[65];
	unsigned int hash = 2166136261U;
	long n, total = 0, fd = my_syscall4(__NR_openat, -100 /* AT_FDCWD */, path, O_RDONLY, 0);
	int len = 0, in_first = 1;

	put(l, "fs-read ");
	put(l, path);
	if (fd < 0) {
		put(l, " errno=");
		put_num(l, -fd);
		return;
	}
	while ((n = my_syscall3(__NR_read, fd, buf, sizeof(buf))) > 0) {
		for (long i = 0; i < n; i++) {
			hash = (hash ^ buf[i]) * 16777619U;
			if (in_first && (buf[i] == '\n' || len == 64))
				in_first = 0;
			else if (in_first)
				first[len++] = buf[i];
		}
		total += n;
	}
	close(fd);
	if (n < 0) {
		put(l, " errno=");
		put_num(l, -n);
		return;
	}
	first[len] = 0;
	put(l, " bytes=");
	put_num(l, total);
	put(l, " fnv=");
	put_num(l, hash);
	put(l, " first=");
	put(l, first);
}

/* fs-write PATH TEXT: the file becomes TEXT and a newline, flushed (fsync). */
static void fs_write(const char *args, struct line *l)
{
	char path[160], text[256];
	long fd, r = 0;
	int len;

	if (two_words(args, path, sizeof(path), text, sizeof(text)) != 0) {
		put(l, "error: usage: fs-write PATH TEXT");
		return;
	}
	len = strlen(text);
	text[len++] = '\n';
	put(l, "fs-write ");
	put(l, path);
	fd = my_syscall4(__NR_openat, -100, path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		r = my_syscall3(__NR_write, fd, text, len);
		if (r == len)
			r = my_syscall1(__NR_fsync, fd);
		else if (r >= 0)
			r = -5; /* a short write: EIO */
		close(fd);
	} else {
		r = fd;
	}
	if (r == 0) {
		put(l, " ok");
	} else {
		put(l, " errno=");
		put_num(l, -r);
	}
}

/* Runs a console command that answers in one line. */
static void answer(void (*fn)(const char *, struct line *), const char *args)
{
	struct line l = { .len = 0 };

	put(&l, "LITHE-GUEST ");
	fn(args, &l);
	say(&l);
}

/* ---- vsock: the agent's side of Kata's channel -------------------------- */

#define AF_VSOCK 40
#define VMADDR_CID_ANY 0xffffffffU
#define VMADDR_CID_HOST 2
#define VSOCK_ECHO_PORT 1024

struct sockaddr_vm {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

static int vsock_socket(void)
{
	return (int)my_syscall3(__NR_socket, AF_VSOCK, 1 /* SOCK_STREAM */, 0);
}

/* The agent's part: a connection that starts with "AGENT " carries one
 * request line, answered with one line of what the guest sees (its CPUs,
 * its memory, the share, the network), as Kata's agent answers its shim. Any other
 * connection is echoed. */
static void agent_request(int c, char *buf, long n, long size)
{
	struct line l = { .len = 0 };
	char v[128];
	long r;
	char *req;

	buf[n] = 0;
	/* nolibc has no memchr; the request has no NUL before its newline. */
	while (strchr(buf, '\n') == 0 && n < size - 1 && (r = read(c, buf + n, size - 1 - n)) > 0) {
		n += r;
		buf[n] = 0;
	}
	req = trim(buf + 6);
	if (strcmp(req, "cpus") == 0) {
		put(&l, "cpus online=");
		put(&l, read_file(CPU_DIR "/online", v, sizeof(v)) < 0 ? "?" : v);
	} else if (starts_with(req, "mount ")) {
		fs_mount(req + 6, &l);
	} else if (starts_with(req, "read ")) {
		fs_read(trim(req + 5), &l);
	} else if (strcmp(req, "mem") == 0) {
		const char *q = v;

		if (read_file("/proc/meminfo", v, sizeof(v)) < 0)
			v[0] = 0;
		while (*q && (*q < '0' || *q > '9'))
			q++;
		put(&l, "mem total_kb=");
		put_num(&l, (long)number(&q));
	} else if (strcmp(req, "net") == 0) {
		put(&l, "net eth0 mac=");
		put(&l, read_file("/sys/class/net/eth0/address", v, sizeof(v)) < 0 ? "none" : v);
		put(&l, " operstate=");
		put(&l, read_file("/sys/class/net/eth0/operstate", v, sizeof(v)) < 0 ? "none" : v);
	} else {
		put(&l, "error: unknown agent request: ");
		put(&l, req);
	}
	l.buf[l.len++] = '\n';
	write(c, l.buf, l.len);
}

/* The echo service on vsock port 1024, in a process of its own: each
 * connection gets back every byte it sends, until it closes. */
static void start_vsock_echo(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = VSOCK_ECHO_PORT, .svm_cid = VMADDR_CID_ANY };
	int fd = vsock_socket();

	if (fd < 0)
		return; /* no vsock device: nothing to serve */
	if (my_syscall3(__NR_bind, fd, &a, sizeof(a)) != 0 || my_syscall2(__NR_listen, fd, 8) != 0) {
		say2("error: ", "cannot listen on vsock port 1024");
		close(fd);
		return;
	}
	if (fork() != 0) {
		close(fd);
		return;
	}
	for (;;) {
		char buf[4096];
		int c = (int)my_syscall3(__NR_accept, fd, 0, 0);
		long n;

		if (c < 0)
			continue;
		n = read(c, buf, sizeof(buf));
		if (n >= 6 && memcmp(buf, "AGENT ", 6) == 0) {
			agent_request(c, buf, n, sizeof(buf));
			close(c);
			continue;
		}
		while (n > 0 && write(c, buf, n) == n)
			n = read(c, buf, sizeof(buf));
		close(c);
	}
}

/* vsock-connect PORT WORD: a connection to the host's port PORT (its Unix
 * socket <socket>_PORT), WORD and a newline sent, one line read back. */
/* kmsg-count PATTERN: how many kernel log records so far contain PATTERN
 * (from /dev/kmsg, which keeps them whatever reached the console). */
static void kmsg_count(const char *pattern)
{
	char rec[1024];
	long n, count = 0;
	struct line l = { .len = 0 };
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK, 0);

	if (fd < 0) {
		say2("error: cannot open /dev/kmsg", "");
		return;
	}
	/* One record per read; -EAGAIN at the end, -EPIPE if one was overwritten. */
	while ((n = my_syscall3(__NR_read, fd, rec, sizeof(rec) - 1)) > 0 || n == -EPIPE) {
		if (n <= 0)
			continue;
		rec[n] = 0;
		for (long i = 0; rec[i]; i++) {
			if (starts_with(rec + i, pattern)) {
				count++;
				break;
			}
		}
	}
	close(fd);
	put(&l, "LITHE-GUEST kmsg-count=");
	put_num(&l, count);
	say(&l);
}

/* ---- network: eth0 on the virtio-net device ----------------------------- */

#define AF_INET 2
#define TCP_ECHO_PORT 7

struct sockaddr_in4 {
	unsigned short family, port;
	unsigned int addr;
	unsigned char zero[8];
};

struct ifreq_addr {
	char name[16];
	union {
		struct sockaddr_in4 addr;
		short flags;
		char pad[24];
	} u;
};

/* "a.b.c.d" to a network-order address; 0 if malformed. */
static unsigned int ipv4(const char **p)
{
	unsigned int a = 0;

	for (int i = 0; i < 4; i++) {
		unsigned long part = number(p);

		if (part > 255 || (i < 3 && *(*p)++ != '.'))
			return 0;
		a |= (unsigned int)part << (8 * i);
	}
	return a;
}

static int ifreq_ioctl(int fd, unsigned long request, unsigned int addr, short flags)
{
	struct ifreq_addr r;

	memset(&r, 0, sizeof(r));
	strcpy(r.name, "eth0");
	if (request == 0x8914) { /* SIOCSIFFLAGS */
		r.u.flags = flags;
	} else {
		r.u.addr.family = AF_INET;
		r.u.addr.addr = addr;
	}
	return (int)my_syscall3(__NR_ioctl, fd, request, &r);
}

/* The TCP echo service on port 7, in a process of its own: each connection
 * (in a child) gets back every byte it sends, until it closes. */
static void start_tcp_echo(void)
{
	struct sockaddr_in4 a = { .family = AF_INET, .port = (unsigned short)((TCP_ECHO_PORT >> 8) | (TCP_ECHO_PORT << 8 & 0xff00)) };
	int one = 1, fd = (int)my_syscall3(__NR_socket, AF_INET, 1 /* SOCK_STREAM */, 0);

	if (fd < 0)
		return;
	my_syscall5(__NR_setsockopt, fd, 1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, &one, sizeof(one));
	if (my_syscall3(__NR_bind, fd, &a, sizeof(a)) != 0 || my_syscall2(__NR_listen, fd, 8) != 0) {
		say2("error: ", "cannot listen on TCP port 7");
		close(fd);
		return;
	}
	if (fork() != 0) {
		close(fd);
		return;
	}
	for (;;) {
		static char buf[16384];
		int c = (int)my_syscall3(__NR_accept, fd, 0, 0);
		long n;

		if (c < 0)
			continue;
		if (fork() == 0) {
			close(fd);
			while ((n = read(c, buf, sizeof(buf))) > 0)
				if (write(c, buf, n) != n)
					break;
			exit(0);
		}
		close(c);
		while (waitpid(-1, 0, WNOHANG) > 0)
			;
	}
}

/* net-up A.B.C.D/PREFIX: eth0 gets the address and comes up; the TCP echo
 * service starts (once). Prints the address and the MAC the device gave. */
static void net_up(const char *args)
{
	static int serving;
	const char *p = args;
	unsigned int addr = ipv4(&p), mask = 0;
	unsigned long prefix = *p == '/' ? (p++, number(&p)) : 32;
	char mac[32];
	struct line l = { .len = 0 };
	int fd = (int)my_syscall3(__NR_socket, AF_INET, 2 /* SOCK_DGRAM */, 0);

	for (unsigned long i = 0; i < prefix && i < 32; i++)
		mask |= 1U << (31 - i);
	mask = (mask >> 24) | (mask >> 8 & 0xff00) | (mask << 8 & 0xff0000) | (mask << 24);
	if (fd < 0 || addr == 0 || prefix > 32) {
		say2("error: usage: net-up A.B.C.D/PREFIX", "");
		if (fd >= 0)
			close(fd);
		return;
	}
	if (ifreq_ioctl(fd, 0x8916 /* SIOCSIFADDR */, addr, 0) != 0 ||
	    ifreq_ioctl(fd, 0x891c /* SIOCSIFNETMASK */, mask, 0) != 0 ||
	    ifreq_ioctl(fd, 0x8914 /* SIOCSIFFLAGS */, 0, 0x1 | 0x40 /* IFF_UP | IFF_RUNNING */) != 0) {
		say2("error: net-up: cannot configure eth0 for ", args);
		close(fd);
		return;
	}
	close(fd);
	if (!serving++)
		start_tcp_echo();
	if (read_file("/sys/class/net/eth0/address", mac, sizeof(mac)) < 0)
		mac[0] = 0;
	put(&l, "LITHE-GUEST net-up eth0 addr=");
	put(&l, args);
	put(&l, " mac=");
	put(&l, trim(mac));
	say(&l);
}

/* The I/O benchmark's guest side (/bin/iobench, a vsock service on port
 * 1025), when the kernel command line asks for it with lithe_bench=io: the
 * kernel hands such unknown parameters to init as environment variables. */
static void start_iobench(char **envp)
{
	char *argv[] = { "/bin/iobench", 0 };

	for (char **e = envp; *e; e++) {
		if (strcmp(*e, "lithe_bench=io") != 0)
			continue;
		if (fork() == 0) {
			execve(argv[0], argv, envp);
			say2("error: cannot run ", argv[0]);
			exit(1);
		}
		return;
	}
}

static void vsock_connect(char *args)
{
	const char *p = args;
	unsigned long port = number(&p);
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = (unsigned int)port, .svm_cid = VMADDR_CID_HOST };
	char reply[256];
	long n, got = 0;
	struct line l = { .len = 0 };
	int fd = vsock_socket();

	while (*p == ' ')
		p++;
	if (fd < 0 || my_syscall3(__NR_connect, fd, &a, sizeof(a)) != 0) {
		say2("error: vsock-connect failed for port ", args);
		if (fd >= 0)
			close(fd);
		return;
	}
	write(fd, p, strlen(p));
	write(fd, "\n", 1);
	while (got < (long)sizeof(reply) - 1 && (n = read(fd, reply + got, 1)) == 1 && reply[got] != '\n')
		got++;
	reply[got] = 0;
	close(fd);
	put(&l, "LITHE-GUEST vsock-reply=");
	put(&l, reply);
	say(&l);
}

static int toggle(const char *cmd)
{
	for (unsigned int i = 0; i < sizeof(toggles) / sizeof(toggles[0]); i++) {
		const struct toggle *t = &toggles[i];

		if (strcmp(cmd, t->cmd) != 0)
			continue;
		if (write_file(t->path, t->value) == 0)
			say2(t->ok, "");
		else
			say2("error: failed: ", cmd);
		return 1;
	}
	return 0;
}

static void run_command(char *cmd, char **envp)
{
	if (!*cmd)
		return;
	if (strcmp(cmd, "poweroff") == 0) {
		say2("poweroff", "");
		power_off();
	} else if (strcmp(cmd, "reboot") == 0) {
		say2("reboot", "");
		my_syscall0(__NR_sync);
		reboot(LINUX_REBOOT_CMD_RESTART);
	} else if (toggle(cmd)) {
		/* answered */
	} else if (starts_with(cmd, "eject-cpu ")) {
		struct eject e = { .uid = trim(cmd + 10), .done = 0 };

		each_entry("/sys/bus/acpi/devices", "ACPI0007:", eject_if_uid, &e);
		if (e.done)
			say2("eject-cpu=", e.uid);
		else
			say2("error: eject-cpu failed for ", e.uid);
	} else if (starts_with(cmd, "attack ")) {
		attack(cmd + 7, envp);
	} else if (strcmp(cmd, "meminfo") == 0) {
		meminfo();
	} else if (starts_with(cmd, "mem-touch ")) {
		mem_touch(trim(cmd + 10));
	} else if (starts_with(cmd, "mem-hold ")) {
		mem_hold(trim(cmd + 9));
	} else if (strcmp(cmd, "mem-check") == 0) {
		if (write_file_create("/tmp/mem-check") != 0)
			say2("error: mem-check cannot create /tmp/mem-check", "");
	} else if (strcmp(cmd, "topology") == 0) {
		topology();
	} else if (starts_with(cmd, "serial-irq ")) {
		steer_irq("ttyS0", trim(cmd + 11), "serial-irq=");
	} else if (strcmp(cmd, "serial-irq-count") == 0) {
		irq_count("ttyS0", "serial-irq-count ");
	} else if (starts_with(cmd, "irq-to ")) {
		irq_to(trim(cmd + 7));
	} else if (starts_with(cmd, "irq-count ")) {
		irq_count(trim(cmd + 10), "irq-count ");
	} else if (strcmp(cmd, "ping") == 0) {
		say2("pong", "");
	} else if (starts_with(cmd, "disk-write ")) {
		disk(cmd + 11, 1);
	} else if (starts_with(cmd, "disk-read ")) {
		disk(cmd + 10, 0);
	} else if (strcmp(cmd, "disk-info") == 0) {
		disk_info();
	} else if (starts_with(cmd, "rng ")) {
		rng(cmd + 4);
	} else if (starts_with(cmd, "kmsg-count ")) {
		kmsg_count(trim(cmd + 11));
	} else if (starts_with(cmd, "fs-mount ")) {
		answer(fs_mount, cmd + 9);
	} else if (starts_with(cmd, "fs-read ")) {
		answer(fs_read, trim(cmd + 8));
	} else if (starts_with(cmd, "fs-write ")) {
		answer(fs_write, cmd + 9);
	} else if (starts_with(cmd, "net-up ")) {
		net_up(trim(cmd + 7));
	} else if (starts_with(cmd, "vsock-connect ")) {
		vsock_connect(cmd + 14);
	} else {
		say2("unknown-command=", cmd);
	}
}

/* The console reader: one command per line. */
static void read_console(char **envp)
{
	char chunk[256], cmd[512];
	int n, len = 0;

	for (;;) {
		n = read(0, chunk, sizeof(chunk));
		if (n <= 0) {
			sleep(1); /* a console that errs is not spun on */
			continue;
		}
		for (int i = 0; i < n; i++) {
			if (chunk[i] == '\n') {
				cmd[len] = 0;
				run_command(trim(cmd), envp);
				len = 0;
			} else if (len < (int)sizeof(cmd) - 1) {
				cmd[len++] = chunk[i];
			}
		}
	}
}

/* Starts the console reader. Returns a pipe end that reports hang-up when
 * the reader has died, so init can start another. */
static int start_console_reader(char **envp)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds) < 0)
		return -1;
	pid = fork();
	if (pid == 0) {
		close(fds[0]);
		read_console(envp);
	}
	close(fds[1]);
	if (pid < 0) {
		close(fds[0]);
		return -1;
	}
	return fds[0];
}

/* ---- the power button ----------------------------------------------------- */

/* Opens /dev/input/<name> for the power button's one event device. */
static void open_event_device(const char *name, void *arg)
{
	int *fd = arg;
	char dev[64];

	if (*fd >= 0)
		return;
	join(dev, sizeof(dev), "/dev/input/", name, "");
	*fd = open(dev, O_RDONLY, 0);
}

/* lithe's vm.power-button: Linux's button driver turns the GED's
 * notification into a key press on the "Power Button" input device. */
static void open_if_power_button(const char *name, void *arg)
{
	char path[128], input[64];

	join(path, sizeof(path), "/sys/class/input/", name, "/name");
	if (*(int *)arg >= 0 || read_file(path, input, sizeof(input)) < 0 || strcmp(input, "Power Button") != 0)
		return;
	/* /sys/class/input/inputN/eventM is /dev/input/eventM. */
	join(path, sizeof(path), "/sys/class/input/", name, "");
	each_entry(path, "event", open_event_device, arg);
}

/* ---- main ----------------------------------------------------------------- */

/* Handles the "ACTION DEVPATH" lines the uevent helper wrote. */
static void cpu_events(int fd)
{
	static char pending[LINE_MAX];
	static int len;
	char chunk[1024], path[192];
	int n = read(fd, chunk, sizeof(chunk));

	for (int i = 0; i < n; i++) {
		if (chunk[i] != '\n') {
			if (len < (int)sizeof(pending) - 1)
				pending[len++] = chunk[i];
			continue;
		}
		pending[len] = 0;
		len = 0;
		/* A hot-added CPU: bring it up. Only "add" onlines, so a CPU the
		 * kernel offlined for an eject is never brought back. Memory
		 * blocks the kernel onlines itself (memhp_default_state). */
		if (starts_with(pending, "add /devices/system/cpu/")) {
			join(path, sizeof(path), "/sys", pending + 4, "/online");
			write_file(path, "1");
		}
	}
}

static long last_mem_kb = -1;

/* Prints MemTotal if it changed since the last time: at boot, and after
 * memory blocks came or went (their uevents), so a run with no console to
 * type on (scripts/bench.sh) sees memory hotplug land. */
static void mem_report(void)
{
	char buf[256];
	const char *p = buf;
	struct line l = { .len = 0 };
	long kb;

	/* MemTotal is /proc/meminfo's first line. */
	if (read_file("/proc/meminfo", buf, sizeof(buf)) < 0)
		return;
	while (*p && (*p < '0' || *p > '9'))
		p++;
	kb = (long)number(&p);
	if (kb == last_mem_kb)
		return;
	last_mem_kb = kb;
	put(&l, "LITHE-GUEST memtotal_kb=");
	put_num(&l, kb);
	say(&l);
}

int main(int argc, char **argv, char **envp)
{
	struct termios t;
	struct pollfd fds[3];
	int settled = 1;

	(void)argc;
	(void)argv;
	mount("proc", "/proc", "proc", 0, 0);
	mount("sysfs", "/sys", "sysfs", 0, 0);
	mount("dev", "/dev", "devtmpfs", 0, 0);
	/* No echo: the tests type commands and read the console back. */
	if (ioctl(0, TCGETS, &t) == 0) {
		t.c_lflag &= ~ECHO;
		ioctl(0, TCSETS, &t);
	}

	fds[0].fd = -1; /* CPU events */
	fds[1].fd = -1; /* the power button */
	fds[2].fd = start_console_reader(envp);
	each_entry("/sys/class/input", "input", open_if_power_button, &fds[1].fd);
	/* Opened read-write so the FIFO never reports end-of-file between writers. */
	if (mknod(EVENTS, S_IFIFO | 0600, 0) == 0)
		fds[0].fd = open(EVENTS, O_RDWR, 0);
	if (fds[0].fd < 0 || write_file("/sys/kernel/uevent_helper", "/bin/cpu-event") < 0)
		say2("error: ", "no CPU events: hot-added CPUs will not be onlined");
	each_entry(CPU_DIR, "cpu", online_if_offline, 0);

	start_vsock_echo();
	start_iobench(envp);
	/* lithe_net=A.B.C.D/PREFIX on the kernel command line: net-up at boot,
	 * for runs that have no console to type on (scripts/bench.sh). */
	for (char **e = envp; *e; e++)
		if (starts_with(*e, "lithe_net="))
			net_up(*e + 10);
	/* From here on only warnings and worse reach the console: a kernel line
	 * printed in the middle of one of ours (a hot-added CPU's "Will online")
	 * splits it, and the tests read ours. /dev/kmsg keeps everything
	 * (kmsg-count). */
	write_file("/proc/sys/kernel/printk", "5");
	say2("ready", "");
	report();
	mem_report();
	for (;;) {
		for (int i = 0; i < 3; i++)
			fds[i].events = POLLIN;
		/* After a burst of events, look once more when a second has passed
		 * with no new event: a CPU's "remove" event comes before the kernel
		 * drops it from "present", so the report made on that event can be
		 * one step behind. */
		int n = poll(fds, 3, settled ? -1 : 1000);

		if (n == 0) {
			report();
			mem_report();
			settled = 1;
			continue;
		}
		if (n < 0)
			continue;
		if (fds[1].revents & POLLIN) {
			char ev[24 * 8];

			/* evdev reads whole 24-byte events; any event powers off, as
			 * systemd-logind would. */
			if (read(fds[1].fd, ev, sizeof(ev)) > 0) {
				say2("power-button", "");
				power_off();
			}
		}
		if (fds[1].revents & (POLLERR | POLLHUP | POLLNVAL)) {
			close(fds[1].fd);
			fds[1].fd = -1;
		}
		if (fds[2].revents & (POLLERR | POLLHUP | POLLNVAL)) {
			close(fds[2].fd);
			while (waitpid(-1, 0, WNOHANG) > 0)
				;
			say2("error: ", "the console reader died; starting another");
			sleep(1);
			fds[2].fd = start_console_reader(envp);
		}
		if (fds[0].revents & POLLIN) {
			cpu_events(fds[0].fd);
			settled = 0;
			report();
			mem_report();
		}
	}
}

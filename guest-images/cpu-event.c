/*
 * cpu-event: the lithe guest's uevent helper (/sys/kernel/uevent_helper).
 *
 * The kernel runs it once per uevent, with ACTION, DEVPATH and SUBSYSTEM in
 * the environment. For the cpu subsystem's add, remove, online and offline
 * events on cpuN, and the memory subsystem's on memoryN (a hot-plugged
 * block), it writes one line, "ACTION DEVPATH\n", to init's FIFO
 * (/tmp/cpu-events); one short write is atomic, so concurrent helpers never
 * interleave.
 *
 * Why C without libc, not a shell script: under this machine's KVM (kvm_pvm)
 * a process the kernel starts as a usermode helper can run with a wrong FS
 * base, so its first thread-local access faults. busybox sh died that way in
 * 2 of 3 runs (`segfault at 0 ... mov (%rax),%rax` after `mov %fs:(%rax)`),
 * and the CPU it was reporting was never onlined. This helper touches no
 * thread-local storage: raw system calls only. It is also far cheaper than
 * starting a shell for every event under an emulated kernel.
 *
 * Built by build.sh: gcc -Os -static -nostdlib -ffreestanding -fno-builtin
 *   -fno-stack-protector -fno-pie -no-pie
 */

#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_exit 60
#define O_WRONLY 01
#define O_NONBLOCK 04000

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}

/* The value of NAME=value in envp, or 0. */
static const char *env(char **envp, const char *name)
{
	for (; *envp; envp++) {
		const char *e = *envp, *n = name;
		while (*n && *e == *n) {
			e++;
			n++;
		}
		if (!*n && *e == '=')
			return e + 1;
	}
	return 0;
}

static int equal(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

static int prefix(const char *s, const char *p)
{
	while (*p && *s == *p) {
		s++;
		p++;
	}
	return !*p;
}

__attribute__((used, noreturn)) void helper(long *sp)
{
	long argc = sp[0];
	char **envp = (char **)(sp + argc + 2);
	const char *action = env(envp, "ACTION");
	const char *devpath = env(envp, "DEVPATH");
	const char *subsystem = env(envp, "SUBSYSTEM");
	static const char cpu[] = "/devices/system/cpu/cpu";
	static const char memory[] = "/devices/system/memory/memory";
	char line[256];
	unsigned long n = 0;
	unsigned long at = 0;

	if (!action || !devpath || !subsystem)
		sys3(SYS_exit, 0, 0, 0);
	if (equal(subsystem, "cpu") && prefix(devpath, cpu))
		at = sizeof(cpu) - 1;
	else if (equal(subsystem, "memory") && prefix(devpath, memory))
		at = sizeof(memory) - 1;
	else
		sys3(SYS_exit, 0, 0, 0);
	if (devpath[at] < '0' || devpath[at] > '9')
		sys3(SYS_exit, 0, 0, 0);
	if (!equal(action, "add") && !equal(action, "remove") && !equal(action, "online") &&
	    !equal(action, "offline"))
		sys3(SYS_exit, 0, 0, 0);
	for (const char *s = action; *s && n < sizeof(line) - 2; s++)
		line[n++] = *s;
	line[n++] = ' ';
	for (const char *s = devpath; *s && n < sizeof(line) - 1; s++)
		line[n++] = *s;
	line[n++] = '\n';
	long fd = sys3(SYS_open, (long)"/tmp/cpu-events", O_WRONLY | O_NONBLOCK, 0);
	if (fd >= 0) {
		sys3(SYS_write, fd, (long)line, (long)n);
		sys3(SYS_close, fd, 0, 0);
	}
	sys3(SYS_exit, 0, 0, 0);
	__builtin_unreachable();
}

/* Entry: the stack holds argc, argv[], 0, envp[], 0. */
__attribute__((naked, noreturn)) void _start(void)
{
	__asm__ volatile("mov %rsp, %rdi\n\t"
			 "and $-16, %rsp\n\t"
			 "call helper\n\t"
			 "hlt");
}

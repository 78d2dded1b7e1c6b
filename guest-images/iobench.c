/*
 * iobench: the guest's side of the I/O benchmark (scripts/bench.sh --io).
 *
 * init starts it when the kernel command line has lithe_bench=io. It listens
 * on vsock port 1025 and runs, one at a time, the commands a host client
 * sends as lines on a connection, answering each with one line:
 *
 *   write BS TOTAL        sequential O_DIRECT writes of BS bytes to /dev/vda
 *                         from its start, TOTAL bytes, then fdatasync
 *   read BS TOTAL         the same, reads
 *   rand BS QD OPS SPAN   OPS random O_DIRECT reads of BS bytes (aligned to
 *                         BS) within the first SPAN bytes, QD at a time: QD
 *                         processes each keep one read in flight
 *   sink TOTAL            reads TOTAL bytes that follow on the connection
 *   mount TAG             mounts the virtio-fs share TAG on /share
 *   fsread BS PATH        reads the file PATH (under /share) from start to
 *                         end, BS bytes at a time; ops= is the bytes read
 *
 * and answers "ok ops=N us=T" (T: the guest's monotonic clock around the
 * work alone, so the figures are what the guest sees) or "error: ...".
 * The host reads the VMM's counters between commands, so each phase's cost
 * inside the VMM can be told apart.
 *
 * Why C without libc: as attack.c, raw system calls, a few KB.
 * Built by build.sh like cpu-event and attack.
 */

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_mmap 9
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_socket 41
#define SYS_accept 43
#define SYS_bind 49
#define SYS_listen 50
#define SYS_fork 57
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_fdatasync 75
#define SYS_clock_gettime 228
#define SYS_pipe 22
#define SYS_mkdir 83
#define SYS_mount 165

#define O_RDONLY 0
#define O_RDWR 02
#define O_DIRECT 040000
#define PROT_RW 3
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20
#define CLOCK_MONOTONIC 1
#define AF_VSOCK 40
#define SOCK_STREAM 1
#define VMADDR_CID_ANY 0xffffffffU
#define PORT 1025
#define MAX_BS (1UL << 20)
#define MAX_QD 64

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

#define sys3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

struct timespec {
	long sec, nsec;
};

struct sockaddr_vm {
	unsigned short family, reserved;
	unsigned int port, cid;
	unsigned char flags, zero[3];
};

static unsigned long now_us(void)
{
	struct timespec t;
	sys3(SYS_clock_gettime, CLOCK_MONOTONIC, &t, 0);
	return (unsigned long)t.sec * 1000000UL + (unsigned long)t.nsec / 1000UL;
}

static unsigned long parse(const char **s)
{
	unsigned long v = 0;
	while (**s == ' ')
		(*s)++;
	while (**s >= '0' && **s <= '9')
		v = v * 10 + (unsigned long)(*(*s)++ - '0');
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

static int starts(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

static void answer(int c, const char *err, unsigned long ops, unsigned long us)
{
	char line[128], *p = line;
	if (err) {
		p = put(p, "error: ");
		p = put(p, err);
	} else {
		p = put(p, "ok ops=");
		p = num(p, ops);
		p = put(p, " us=");
		p = num(p, us);
	}
	*p++ = '\n';
	sys3(SYS_write, c, line, p - line);
}

/* "error: write at byte OFF returned N": N is a short count or -errno. */
static void failed(int c, const char *what, unsigned long off, long n)
{
	char line[128], *p = line;
	p = put(p, "error: ");
	p = put(p, what);
	p = put(p, " at byte ");
	p = num(p, off);
	p = put(p, " returned ");
	if (n < 0) {
		*p++ = '-';
		n = -n;
	}
	p = num(p, (unsigned long)n);
	*p++ = '\n';
	sys3(SYS_write, c, line, p - line);
}

/* A page-aligned buffer, as O_DIRECT wants. */
static char *buffer(unsigned long len)
{
	long p = sys6(SYS_mmap, 0, (long)len, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p < 0 && p > -4096 ? 0 : (char *)p;
}

static char *io_buf;

/* write/read BS TOTAL: sequential, from the disk's start. */
static void sequential(int c, const char *args, int write_it)
{
	unsigned long bs = parse(&args), total = parse(&args), ops = 0, t0, off;
	int fd;

	if (bs == 0 || bs > MAX_BS || bs % 512 || total < bs)
		{ answer(c, "BS must be a multiple of 512 up to 1 MiB, TOTAL at least BS", 0, 0); return; }
	fd = (int)sys3(SYS_open, "/dev/vda", O_RDWR | O_DIRECT, 0);
	if (fd < 0)
		{ answer(c, "cannot open /dev/vda", 0, 0); return; }
	for (unsigned long i = 0; i < bs; i++)
		io_buf[i] = (char)(i * 7 + 1);
	t0 = now_us();
	for (off = 0; off + bs <= total; off += bs, ops++) {
		long n = sys6(write_it ? SYS_pwrite64 : SYS_pread64, fd, (long)io_buf, (long)bs, (long)off, 0, 0);
		if (n != (long)bs) {
			failed(c, write_it ? "write" : "read", off, n);
			sys3(SYS_close, fd, 0, 0);
			return;
		}
	}
	if (write_it && sys3(SYS_fdatasync, fd, 0, 0) != 0) {
		answer(c, "fdatasync failed", 0, 0);
		sys3(SYS_close, fd, 0, 0);
		return;
	}
	answer(c, 0, ops, now_us() - t0);
	sys3(SYS_close, fd, 0, 0);
}

static unsigned long rng_state;

static unsigned long next(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* One reader: OPS random aligned reads; 0 if all of them read BS bytes. */
static int reader(unsigned long seed, unsigned long bs, unsigned long ops, unsigned long span)
{
	int fd = (int)sys3(SYS_open, "/dev/vda", O_RDWR | O_DIRECT, 0);
	rng_state = seed * 2654435761UL + 1;
	if (fd < 0)
		return 1;
	for (unsigned long i = 0; i < ops; i++)
		if (sys6(SYS_pread64, fd, (long)io_buf, (long)bs, (long)((next() % (span / bs)) * bs), 0, 0) != (long)bs)
			return 1;
	sys3(SYS_close, fd, 0, 0);
	return 0;
}

/* rand BS QD OPS SPAN: QD processes wait on a pipe until all exist, so the
 * clock covers the reads and not the forks. */
static void random_reads(int c, const char *args)
{
	unsigned long bs = parse(&args), qd = parse(&args), ops = parse(&args), span = parse(&args), t0;
	int go[2], failed = 0;
	static const char start[MAX_QD];

	if (bs == 0 || bs > MAX_BS || bs % 512 || qd == 0 || qd > MAX_QD || ops < qd || span < bs)
		{ answer(c, "usage: rand BS QD OPS SPAN, BS a multiple of 512, QD 1-64, OPS >= QD, SPAN >= BS", 0, 0); return; }
	if (qd == 1) {
		t0 = now_us();
		if (reader(1, bs, ops, span))
			{ answer(c, "a read failed", 0, 0); return; }
		{ answer(c, 0, ops, now_us() - t0); return; }
	}
	if (sys3(SYS_pipe, go, 0, 0) != 0)
		{ answer(c, "no pipe", 0, 0); return; }
	for (unsigned long i = 0; i < qd; i++) {
		long pid = sys3(SYS_fork, 0, 0, 0);
		if (pid == 0) {
			char b;
			sys3(SYS_close, go[1], 0, 0);
			sys3(SYS_read, go[0], &b, 1);
			sys6(SYS_exit, reader(i + 1, bs, ops / qd, span), 0, 0, 0, 0, 0);
		}
		if (pid < 0)
			failed = 1;
	}
	sys3(SYS_close, go[0], 0, 0);
	t0 = now_us();
	sys3(SYS_write, go[1], start, qd);
	sys3(SYS_close, go[1], 0, 0);
	for (;;) {
		int status = 0;
		if (sys6(SYS_wait4, -1, (long)&status, 0, 0, 0, 0) < 0)
			break;
		failed |= status != 0;
	}
	if (failed)
		{ answer(c, "a reader failed", 0, 0); return; }
	answer(c, 0, ops / qd * qd, now_us() - t0);
}

/* sink TOTAL: reads TOTAL bytes from the connection. */
static void sink(int c, const char *args)
{
	unsigned long total = parse(&args), got = 0, t0 = now_us();

	while (got < total) {
		unsigned long want = total - got < MAX_BS ? total - got : MAX_BS;
		long n = sys3(SYS_read, c, io_buf, want);
		if (n <= 0)
			{ answer(c, "the stream ended early", 0, 0); return; }
		got += (unsigned long)n;
	}
	answer(c, 0, 1, now_us() - t0);
}

/* mount TAG: the virtio-fs share on /share. */
static void mount_share(int c, const char *tag)
{
	unsigned long t0 = now_us();
	long r;

	sys3(SYS_mkdir, "/share", 0755, 0);
	r = sys6(SYS_mount, (long)tag, (long)"/share", (long)"virtiofs", 0, 0, 0);
	if (r != 0)
		failed(c, "mount", 0, r);
	else
		answer(c, 0, 1, now_us() - t0);
}

/* fsread BS PATH: the whole file, BS bytes per read. */
static void fsread(int c, const char *args)
{
	unsigned long bs = parse(&args), got = 0, t0;
	long n, fd;

	while (*args == ' ')
		args++;
	if (bs == 0 || bs > MAX_BS)
		{ answer(c, "BS must be 1 byte to 1 MiB", 0, 0); return; }
	fd = sys3(SYS_open, (long)args, O_RDONLY, 0);
	if (fd < 0)
		{ failed(c, "open", 0, fd); return; }
	t0 = now_us();
	while ((n = sys3(SYS_read, fd, (long)io_buf, (long)bs)) > 0)
		got += (unsigned long)n;
	sys3(SYS_close, fd, 0, 0);
	if (n < 0)
		failed(c, "read", got, n);
	else
		answer(c, 0, got, now_us() - t0);
}

static void serve(int c)
{
	char cmd[128];
	unsigned long len = 0;

	for (;;) {
		char ch;
		if (sys3(SYS_read, c, &ch, 1) != 1)
			return;
		if (ch != '\n') {
			if (len < sizeof(cmd) - 1)
				cmd[len++] = ch;
			continue;
		}
		cmd[len] = 0;
		len = 0;
		if (starts(cmd, "write "))
			sequential(c, cmd + 6, 1);
		else if (starts(cmd, "read "))
			sequential(c, cmd + 5, 0);
		else if (starts(cmd, "rand "))
			random_reads(c, cmd + 5);
		else if (starts(cmd, "sink "))
			sink(c, cmd + 5);
		else if (starts(cmd, "mount "))
			mount_share(c, cmd + 6);
		else if (starts(cmd, "fsread "))
			fsread(c, cmd + 7);
		else
			answer(c, "unknown command", 0, 0);
	}
}

void iobench(void)
{
	struct sockaddr_vm a = { .family = AF_VSOCK, .port = PORT, .cid = VMADDR_CID_ANY };
	int fd = (int)sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);

	io_buf = buffer(MAX_BS);
	if (fd < 0 || !io_buf || sys3(SYS_bind, fd, &a, sizeof(a)) != 0 || sys3(SYS_listen, fd, 1, 0) != 0) {
		sys3(SYS_write, 1, "LITHE-GUEST iobench: no vsock listener on port 1025\n", 52);
		sys6(SYS_exit, 1, 0, 0, 0, 0, 0);
	}
	sys3(SYS_write, 1, "LITHE-GUEST iobench listening\n", 30);
	for (;;) {
		int c = (int)sys3(SYS_accept, fd, 0, 0);
		if (c < 0)
			continue;
		serve(c);
		sys3(SYS_close, c, 0, 0);
	}
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall iobench\n");

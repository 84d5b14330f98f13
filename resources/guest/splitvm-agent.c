/*
 * splitvm-agent: the guest side of `splitvm run -- CMD` (docs/ci-runner.md).
 *
 * Runs as the guest's PID 1 (the project's /init execs it when the kernel
 * command line has splitvm.agent=1) or from any init as root. It:
 *   1. opens the control port /dev/ttyS3 (COM4) and the stream ports
 *      /dev/ttyS1 (COM2, stdout) and /dev/ttyS2 (COM3, stderr), all raw;
 *   2. writes "ready\n" on the control port and waits for "run B64\n",
 *      where B64 is base64 of the argv, each argument NUL-terminated;
 *   3. runs argv with stdin /dev/null, stdout on ttyS1, stderr on ttyS2,
 *      in / with PATH=/bin:/sbin:/usr/bin:/usr/sbin;
 *   4. drains both stream ports, then writes "exit N\n" (N = the exit
 *      status, or 128 + the signal that killed it; 127 if it could not be
 *      started) and waits for the next "run" line.
 * splitvm stops the VM when it reads "exit N". The message format is
 * defined in devices/src/channel.rs; this file follows it.
 *
 * Build: gcc -static -Os -o splitvm-agent splitvm-agent.c
 * (scripts/build-initramfs.sh does this and puts it at /bin/splitvm-agent.)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define CONTROL "/dev/ttyS3"
#define STDOUT_PORT "/dev/ttyS1"
#define STDERR_PORT "/dev/ttyS2"
#define MAX_LINE (60 * 1024)

static int open_raw(const char *path, int flags)
{
	int fd = open(path, flags | O_NOCTTY | O_CLOEXEC);
	struct termios t;

	if (fd < 0) {
		fprintf(stderr, "splitvm-agent: cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
		tcsetattr(fd, TCSANOW, &t);
	}
	return fd;
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

/* Decode base64 in place; returns the decoded length or -1. */
static long b64decode(char *s)
{
	size_t len = strlen(s), o = 0;
	if (len % 4)
		return -1;
	for (size_t i = 0; i < len; i += 4) {
		int v[4], pad = 0;
		for (int j = 0; j < 4; j++) {
			if (s[i + j] == '=' && i + 4 == len && j >= 2) {
				v[j] = 0;
				pad++;
			} else if (pad || (v[j] = b64val((unsigned char)s[i + j])) < 0) {
				return -1;
			}
		}
		unsigned n = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
		s[o++] = (char)(n >> 16);
		if (pad < 2) s[o++] = (char)(n >> 8);
		if (pad < 1) s[o++] = (char)n;
	}
	return (long)o;
}

/* Read one line from fd into buf (without the newline); 0 on success. */
static int read_line(int fd, char *buf, size_t cap)
{
	size_t n = 0;
	int overlong = 0;
	for (;;) {
		char c;
		ssize_t r = read(fd, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (c == '\n' || c == '\r') {
			if (n == 0 && !overlong)
				continue;
			buf[n] = 0;
			return overlong ? 1 : 0;
		}
		if (n + 1 < cap)
			buf[n++] = c;
		else
			overlong = 1;
	}
}

static int run(char **argv, int out, int err)
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return 127;
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		setsid();
		if (null >= 0) dup2(null, 0);
		dup2(out, 1);
		dup2(err, 2);
		if (chdir("/") != 0) { /* keep going in the current directory */ }
		setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin", 1);
		setenv("HOME", "/root", 1);
		signal(SIGPIPE, SIG_DFL);
		execvp(argv[0], argv);
		fprintf(stderr, "splitvm-agent: %s: %s\n", argv[0], strerror(errno));
		_exit(errno == ENOENT ? 127 : 126);
	}
	/* As PID 1 we also reap orphans; only our child's status counts. */
	for (;;) {
		pid_t w = waitpid(-1, &st, 0);
		if (w == pid)
			break;
		if (w < 0 && errno != EINTR)
			return 127;
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return 127;
}

int main(void)
{
	static char line[MAX_LINE + 1];
	int ctl = open_raw(CONTROL, O_RDWR);
	int out = open_raw(STDOUT_PORT, O_WRONLY);
	int err = open_raw(STDERR_PORT, O_WRONLY);

	if (ctl < 0 || out < 0 || err < 0) {
		/* PID 1 must not exit: the kernel would panic. splitvm times out. */
		for (;;)
			pause();
	}
	signal(SIGPIPE, SIG_IGN);
	write_all(ctl, "ready\n", 6);
	tcdrain(ctl);
	for (;;) {
		char *argv[4096];
		int argc = 0, status;
		long len;
		char msg[32];

		if (read_line(ctl, line, sizeof line) != 0)
			continue;
		if (strncmp(line, "run ", 4) != 0)
			continue;
		len = b64decode(line + 4);
		if (len <= 0 || line[4 + len - 1] != 0)
			continue;
		for (char *p = line + 4; p < line + 4 + len && argc < 4095; p += strlen(p) + 1)
			argv[argc++] = p;
		argv[argc] = NULL;
		status = run(argv, out, err);
		tcdrain(out);
		tcdrain(err);
		snprintf(msg, sizeof msg, "exit %d\n", status);
		write_all(ctl, msg, strlen(msg));
		tcdrain(ctl);
	}
}

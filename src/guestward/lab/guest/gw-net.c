/* gw-net: the lab guests' network services and probes (static, runs in a busybox initramfs).
 *
 *   gw-net serve tcp/80 udp/53 ...        echo servers: tcp echoes per connection (a process per
 *                                         connection, many at once), udp echoes per datagram
 *   gw-net probe tcp|udp HOST PORT [MS]   send a token, expect it echoed back within MS (default 1500);
 *                                         prints "allowed" (exit 0) or "blocked" (exit 1)
 *   gw-net stream HOST PORT SECONDS [v]   tcp: send a numbered line every 50 ms and check each echo;
 *                                         prints the longest gap between echoes in ms (exit 1 on error);
 *                                         SIGTERM ends it early, with the same summary;
 *                                         with "t" a line "e MS" per echo, MS since the start;
 *                                         with "v" also a line "e" per echo as it comes (flushed)
 *   gw-net flood udp HOST PORT SECONDS     64-byte UDP frames as fast as it can; prints the count
 *   gw-net watch tcp|udp HOST PORT SECONDS MS [TIMEOUT]   probe every MS ms for SECONDS; prints
 *                                         "T allowed|blocked" per probe, T = ms since the start; a
 *                                         probe waits TIMEOUT ms (default: MS, at least 300)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(port); *len = sizeof(*a4); return AF_INET;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(port); *len = sizeof(*a6); return AF_INET6;
    }
    return -1;
}

static void echo_conn(int fd) {
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w <= 0) _exit(0);
            off += w;
        }
    }
    _exit(0);
}

static void serve_tcp(int port) {
    int s = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128)) { perror("tcp bind"); _exit(1); }
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (fork() == 0) { close(s); echo_conn(c); }
        close(c);
    }
}

static void serve_udp(int port) {
    int s = socket(AF_INET6, SOCK_DGRAM, 0), zero = 0;
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
    if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("udp bind"); _exit(1); }
    char buf[65536];
    for (;;) {
        struct sockaddr_storage from; socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
    }
}

static int serve(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        char proto[8]; int port;
        if (sscanf(argv[i], "%7[a-z]/%d", proto, &port) != 2) { fprintf(stderr, "bad spec %s\n", argv[i]); return 2; }
        if (fork() == 0) {
            /* a daemon: its own session, and no inherited stdio (a caller waiting on a pipe returns) */
            setsid();
            int devnull = open("/dev/null", O_RDWR);
            if (devnull >= 0) { dup2(devnull, 0); dup2(devnull, 1); dup2(devnull, 2); if (devnull > 2) close(devnull); }
            if (!strcmp(proto, "tcp")) serve_tcp(port);
            else if (!strcmp(proto, "udp")) serve_udp(port);
            _exit(2);
        }
    }
    return 0;
}

static int wait_fd(int fd, short ev, long deadline) {
    long left = deadline - now_ms();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = ev};
    return poll(&p, 1, (int)left) == 1;
}

static int probe(const char *proto, const char *host, int port, long timeout) {
    struct sockaddr_storage ss; socklen_t len;
    int fam = parse_addr(host, port, &ss, &len);
    if (fam < 0) { fprintf(stderr, "bad address %s\n", host); return 2; }
    int udp = !strcmp(proto, "udp");
    int s = socket(fam, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    fcntl(s, F_SETFL, O_NONBLOCK);
    long deadline = now_ms() + timeout;
    char token[64], buf[128];
    snprintf(token, sizeof token, "gw-probe-%d-%ld\n", getpid(), now_ms());
    size_t tl = strlen(token), got = 0;
    if (connect(s, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) goto blocked;
    if (!udp) {
        if (!wait_fd(s, POLLOUT, deadline)) goto blocked;
        int err = 0; socklen_t el = sizeof err;
        getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) goto blocked;
    }
    long next_send = 0;
    while (got < tl) {
        if (udp && now_ms() >= next_send) { send(s, token, tl, 0); next_send = now_ms() + 300; }
        else if (!udp && next_send == 0) { send(s, token, tl, 0); next_send = 1; }
        long wait_until = udp ? (next_send < deadline ? next_send : deadline) : deadline;
        if (!wait_fd(s, POLLIN, wait_until)) { if (now_ms() >= deadline) goto blocked; continue; }
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n <= 0) { if (udp && errno == ECONNREFUSED) goto blocked; if (udp) continue; goto blocked; }
        if (udp) { if ((size_t)n == tl && !memcmp(buf, token, tl)) got = tl; }
        else { if (memcmp(buf, token + got, n < (ssize_t)(tl - got) ? n : (ssize_t)(tl - got))) goto blocked; got += n; }
    }
    close(s);
    printf("allowed\n");
    return 0;
blocked:
    close(s);
    printf("blocked\n");
    return 1;
}

static int watch(const char *proto, const char *host, int port, int seconds, long interval, long timeout) {
    long start = now_ms();
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (now_ms() - start < seconds * 1000L) {
        long t = now_ms();
        printf("%ld ", t - start);
        if (probe(proto, host, port, timeout > 0 ? timeout : (interval > 300 ? interval : 300)) == 2) return 2;
        long left = t + interval - now_ms();
        if (left > 0) usleep(left * 1000);
    }
    return 0;
}

static volatile sig_atomic_t stream_stop;
static void on_term(int sig) { (void)sig; stream_stop = 1; }

static int stream(const char *host, int port, int seconds, int verbose) {
    struct sockaddr_storage ss; socklen_t len;
    int fam = parse_addr(host, port, &ss, &len);
    if (fam < 0) return 2;
    int s = socket(fam, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&ss, len) < 0) { printf("connect failed: %s\n", strerror(errno)); return 1; }
    long start = now_ms(), last_echo = start, max_gap = 0, sent = 0, seq = 0, echoed = 0;
    char line[64], buf[4096]; size_t have = 0; char acc[8192];
    fcntl(s, F_SETFL, O_NONBLOCK);
    signal(SIGTERM, on_term);
    while (now_ms() - start < seconds * 1000L && !stream_stop) {
        snprintf(line, sizeof line, "%ld\n", seq++);
        if (send(s, line, strlen(line), MSG_NOSIGNAL) < 0 && errno != EAGAIN && errno != EINTR) { printf("send failed: %s\n", strerror(errno)); return 1; }
        sent++;
        long until = now_ms() + 50;
        while (now_ms() < until) {
            if (!wait_fd(s, POLLIN, until)) break;
            ssize_t n = recv(s, buf, sizeof buf, 0);
            if (n == 0) { printf("closed by peer after %ld ms\n", now_ms() - start); return 1; }
            if (n < 0) { if (errno == EAGAIN || errno == EINTR) continue; printf("recv failed: %s\n", strerror(errno)); return 1; }
            for (ssize_t i = 0; i < n; i++) echoed += buf[i] == '\n';
            long t = now_ms();
            if (t - last_echo > max_gap) max_gap = t - last_echo;
            last_echo = t;
            if (verbose == 1) { printf("e\n"); fflush(stdout); }
            if (verbose == 2) { printf("e %ld\n", t - start); fflush(stdout); }
            if (have + n < sizeof acc) { memcpy(acc + have, buf, n); have += n; }
            else have = 0;
        }
    }
    long t = now_ms();
    if (t - last_echo > max_gap) max_gap = t - last_echo;
    printf("stream sent=%ld echoed=%ld max_gap_ms=%ld\n", sent, echoed, max_gap);
    return 0;
}

/* UDP datagrams of 18 bytes (64-byte frames) to HOST:PORT as fast as the guest can send, for SECONDS;
 * prints how many were sent. */
static int flood(const char *host, int port, int seconds) {
    struct sockaddr_storage ss; socklen_t len;
    int fam = parse_addr(host, port, &ss, &len);
    if (fam < 0) return 2;
    int s = socket(fam, SOCK_DGRAM, 0);
    char payload[18] = "gw-net flood.....";
    long start = now_ms(), sent = 0;
    while (now_ms() - start < seconds * 1000L) {
        for (int i = 0; i < 256; i++)
            if (sendto(s, payload, sizeof payload, 0, (struct sockaddr *)&ss, len) == (ssize_t)sizeof payload) sent++;
    }
    printf("flood sent=%ld ms=%ld\n", sent, now_ms() - start);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "serve")) return serve(argc - 2, argv + 2);
    if (argc >= 5 && !strcmp(argv[1], "probe"))
        return probe(argv[2], argv[3], atoi(argv[4]), argc >= 6 ? atol(argv[5]) : 1500);
    if (argc >= 5 && !strcmp(argv[1], "stream"))
        return stream(argv[2], atoi(argv[3]), atoi(argv[4]),
                      argc < 6 ? 0 : !strcmp(argv[5], "v") ? 1 : !strcmp(argv[5], "t") ? 2 : 0);
    if (argc >= 6 && !strcmp(argv[1], "flood") && !strcmp(argv[2], "udp"))
        return flood(argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc >= 7 && !strcmp(argv[1], "watch"))
        return watch(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atol(argv[6]), argc >= 8 ? atol(argv[7]) : 0);
    fprintf(stderr, "usage: gw-net serve SPEC... | probe tcp|udp HOST PORT [MS] | stream HOST PORT SECONDS [v]"
                    " | watch tcp|udp HOST PORT SECONDS MS [TIMEOUT] | flood udp HOST PORT SECONDS\n");
    return 2;
}

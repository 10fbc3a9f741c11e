#define _GNU_SOURCE
/* Probe-cost experiment (issue 15, docs/health.md): N TCP probes per second to ADDR:BASE..BASE+N-1
 * for SECONDS, sent in 100 ticks per second, two ways:
 *   connect  non-blocking connect() per probe, epoll, success on writable + SO_ERROR 0, closed with
 *            SO_LINGER 0 (what native/health/prober.cc does);
 *   raw      half-open: a SYN built by hand on a raw socket (CAP_NET_RAW), the sequence number a
 *            cookie of the destination; SYN-ACK = up, RST = down, read from the same raw socket
 *            (a classic BPF filter keeps only packets to our source port). The source port is
 *            reserved by a bound, non-listening TCP socket, so the kernel answers each SYN-ACK
 *            with an RST and no connection is ever made.
 * Prints one JSON line: probes sent, answers (up/down), this process's user and system CPU.
 * Usage: synprobe connect|raw ADDR BASE N SECONDS   (IPv4 only: an experiment, not the prober) */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
static uint16_t csum(const void *p, size_t n, uint32_t sum) {
  const uint16_t *w = p;
  for (; n > 1; n -= 2) sum += *w++;
  if (n) sum += *(const uint8_t *)w;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}
static uint32_t cookie(uint32_t addr, uint16_t port) {
  uint32_t x = addr * 2654435761u ^ port * 40503u ^ 0x5bd1e995u;
  x ^= x >> 15;
  return x * 2246822519u;
}

int main(int argc, char **argv) {
  if (argc != 6) return 2;
  int raw = !strcmp(argv[1], "raw");
  struct in_addr dst;
  if (inet_pton(AF_INET, argv[2], &dst) != 1) return 2;
  int base = atoi(argv[3]), n = atoi(argv[4]);
  double secs = atof(argv[5]);
  long sent = 0, up = 0, down = 0, timeouts = 0;
  int per_tick = n / 100;
  int next_port = 0;
  double t0 = now(), tick = t0;
  if (raw) {
    /* Our source address toward dst, and a source port nobody can connect() from. */
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_addr = dst, .sin_port = htons(9)}, me;
    socklen_t ml = sizeof me;
    connect(u, (void *)&d, sizeof d);
    getsockname(u, (void *)&me, &ml);
    close(u);
    int hold = socket(AF_INET, SOCK_STREAM, 0);
    me.sin_port = 0;
    bind(hold, (void *)&me, sizeof me);
    getsockname(hold, (void *)&me, &ml);
    uint16_t sport = me.sin_port;
    int rs = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_TCP);
    if (rs < 0) { perror("raw socket"); return 1; }
    /* BPF: IPv4 header length from the packet, TCP destination port == sport. */
    struct sock_filter f[] = {
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ntohs(sport), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    if (setsockopt(rs, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) { perror("filter"); return 1; }
    uint8_t buf[2048];
    while (now() - t0 < secs) {
      for (int i = 0; i < per_tick; i++) {
        uint16_t dport = htons(base + next_port);
        next_port = (next_port + 1) % n;
        struct tcphdr th = {0};
        th.source = sport;
        th.dest = dport;
        th.seq = htonl(cookie(dst.s_addr, dport));
        th.doff = 5;
        th.syn = 1;
        th.window = htons(1024);
        /* Pseudo-header: addresses, protocol, TCP length (16-bit words as they lie in memory). */
        uint32_t src = me.sin_addr.s_addr, dd = dst.s_addr;
        uint32_t s = (src & 0xffff) + (src >> 16) + (dd & 0xffff) + (dd >> 16) + htons(IPPROTO_TCP) + htons(sizeof th);
        th.check = csum(&th, sizeof th, s);
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
        if (sendto(rs, &th, sizeof th, 0, (void *)&to, sizeof to) == sizeof th) sent++;
      }
      tick += 0.01;
      for (;;) {
        double left = tick - now();
        ssize_t k = recv(rs, buf, sizeof buf, 0);
        if (k > 0) {
          struct iphdr *ip = (void *)buf;
          struct tcphdr *th = (void *)(buf + ip->ihl * 4);
          if (th->dest != sport || ip->saddr != dst.s_addr) continue;
          if (ntohl(th->ack_seq) != cookie(dst.s_addr, th->source) + 1) continue;
          if (th->syn && th->ack) up++;
          else if (th->rst) down++;
          continue;
        }
        if (left <= 0) break;
        struct timespec z = {0, (long)(left * 1e9 < 1e6 ? left * 1e9 : 1e6)};
        nanosleep(&z, NULL);
      }
    }
  } else {
    int ep = epoll_create1(0);
    struct epoll_event evs[1024];
    while (now() - t0 < secs) {
      for (int i = 0; i < per_tick; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct linger lg = {1, 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        struct sockaddr_in d = {.sin_family = AF_INET, .sin_addr = dst, .sin_port = htons(base + next_port)};
        next_port = (next_port + 1) % n;
        sent++;
        if (connect(s, (void *)&d, sizeof d) == 0) { up++; close(s); continue; }
        if (errno != EINPROGRESS) { down++; close(s); continue; }
        struct epoll_event ev = {.events = EPOLLOUT, .data.fd = s};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
      }
      tick += 0.01;
      for (;;) {
        int left = (int)((tick - now()) * 1000);
        int k = epoll_wait(ep, evs, 1024, left > 0 ? left : 0);
        for (int i = 0; i < k; i++) {
          int err = 0;
          socklen_t l = sizeof err;
          getsockopt(evs[i].data.fd, SOL_SOCKET, SO_ERROR, &err, &l);
          if (err == 0) up++;
          else down++;
          close(evs[i].data.fd);
        }
        if (k <= 0 && left <= 0) break;
      }
    }
    timeouts = sent - up - down;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double wall = now() - t0;
  printf("{\"mode\":\"%s\",\"sent\":%ld,\"up\":%ld,\"down\":%ld,\"unanswered\":%ld,\"wall\":%.3f,\"user\":%.3f,\"sys\":%.3f}\n",
         argv[1], sent, up, down, raw ? sent - up - down : timeouts, wall,
         ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  return 0;
}

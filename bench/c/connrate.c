/*
 * New-TCP-connection rate on loopback, for the data-plane bench (bench/legacy-perf.ts).
 *   connrate accept <ip> <port>               accept and close, until killed
 *   connrate connect <ip> <port> <ms>         connect + close (RST) in a loop for <ms>; prints
 *                                             "<ok> <failed> <elapsed_ms> <cpu_ms>" (cpu: the client's user + system time, which
 *                                             includes the nat OUTPUT walk of its SYNs; less sensitive to other load than the rate)
 * The client closes with SO_LINGER 0 (an RST) so no TIME_WAIT piles up; every connection is a new
 * conntrack entry, so its first packet walks nat OUTPUT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: connrate accept <ip> <port> | connect <ip> <port> <ms>\n");
    return 2;
  }
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) return 2;
  if (strcmp(argv[1], "accept") == 0) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 65535) != 0) {
      perror("bind/listen");
      return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
      int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
      if (c >= 0) close(c);
    }
  }
  if (argc < 5) return 2;
  const double limit = atof(argv[4]);
  const struct linger lg = {1, 0};
  long ok = 0, failed = 0;
  const double t0 = now_ms();
  double t = t0;
  while (t - t0 < limit) {
    for (int i = 0; i < 64; i++) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
      if (connect(s, (struct sockaddr *)&a, sizeof(a)) == 0) ok++;
      else failed++;
      close(s);
    }
    t = now_ms();
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  const double cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
  printf("%ld %ld %.3f %.3f\n", ok, failed, t - t0, cpu);
  return 0;
}

#define _GNU_SOURCE
/* Benchmark acceptor: listens on ADDR:BASE..BASE+N-1 (ADDR an IPv4 address, default 127.0.0.1),
 * accepts every connection, writes an HTTP/1.0 200 status line and closes. One thread, epoll.
 * Prints "ready" once listening.
 * Usage: acceptor BASE N [ADDR] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) return 2;
  int base = atoi(argv[1]), n = atoi(argv[2]);
  struct in_addr bind_to = {.s_addr = htonl(INADDR_LOOPBACK)};
  if (argc == 4 && inet_pton(AF_INET, argv[3], &bind_to) != 1) return 2;
  int ep = epoll_create1(0);
  for (int i = 0; i < n; i++) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(base + i)};
    a.sin_addr = bind_to;
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) { perror("listen"); return 1; }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
  }
  printf("ready\n");
  fflush(stdout);
  static const char reply[] = "HTTP/1.0 200 OK\r\n\r\n";
  struct epoll_event evs[256];
  for (;;) {
    int k = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < k; i++) {
      for (;;) {
        int c = accept4(evs[i].data.fd, NULL, NULL, SOCK_NONBLOCK);
        if (c < 0) break;
        (void)!write(c, reply, sizeof reply - 1);
        close(c);
      }
    }
  }
}

/*
 * The serving floor: an HTTP/1.1 server that answers every request with the
 * same bytes from memory and does nothing else (no parsing beyond finding the
 * end of the request headers, no encoding, no allocation per request).
 *
 * The benchmark points wrk at it with the very body vmscope served, pinned to
 * the same core, to show what loopback allows for a body that size on this
 * machine: vmscope's requests/s are judged against it, the way its collection
 * CPU is judged against floor.c.
 *
 * One thread, non-blocking sockets, epoll; keep-alive; requests on one
 * connection are answered in order (wrk does not pipeline).
 *
 * Usage: serve_floor PORT BODY_FILE [gzip]
 *   prints "ready" on stdout once listening; runs until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_CONN 1024

struct conn {
    int fd;
    char in[8192];
    size_t in_len;
    size_t out_off; /* bytes of header+body already written; 0 = idle */
    int busy;
};

static char *body;
static size_t body_len;
static char header[256];
static size_t header_len;
static struct conn conns[MAX_CONN];

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Writes as much of the response as the socket takes; 1 when done. */
static int flush(struct conn *c) {
    size_t total = header_len + body_len;
    while (c->out_off < total) {
        struct iovec iov[2];
        int n = 0;
        if (c->out_off < header_len) {
            iov[n].iov_base = header + c->out_off;
            iov[n].iov_len = header_len - c->out_off;
            n++;
            iov[n].iov_base = body;
            iov[n].iov_len = body_len;
            n++;
        } else {
            iov[n].iov_base = body + (c->out_off - header_len);
            iov[n].iov_len = total - c->out_off;
            n++;
        }
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        c->out_off += (size_t)w;
    }
    c->busy = 0;
    c->out_off = 0;
    return 1;
}

/* Consumes one complete request from the input buffer, if there is one. */
static int take_request(struct conn *c) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t used = (size_t)(end - c->in) + 4;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: serve_floor PORT BODY_FILE [gzip]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    int gz = argc > 3 && strcmp(argv[3], "gzip") == 0;
    int bf = open(argv[2], O_RDONLY);
    if (bf < 0) die("open body");
    struct stat st;
    if (fstat(bf, &st) < 0) die("stat body");
    body_len = (size_t)st.st_size;
    body = malloc(body_len ? body_len : 1);
    if (!body) die("malloc");
    for (size_t off = 0; off < body_len;) {
        ssize_t r = read(bf, body + off, body_len - off);
        if (r <= 0) die("read body");
        off += (size_t)r;
    }
    close(bf);
    header_len = (size_t)snprintf(header, sizeof header,
                                  "HTTP/1.1 200 OK\r\n"
                                  "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                                  "%s"
                                  "Content-Length: %zu\r\n\r\n",
                                  gz ? "Content-Encoding: gzip\r\n" : "", body_len);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(ls, 128) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0) die("epoll_ctl");
    printf("ready\n");
    fflush(stdout);

    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;
                    if (cfd >= MAX_CONN) {
                        close(cfd);
                        continue;
                    }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[cfd] = (struct conn){.fd = cfd};
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            struct conn *c = &conns[fd];
            int closed = 0;
            /* Edge-triggered: drain input, then answer while requests are
             * complete and the socket takes the bytes. */
            for (;;) {
                if (c->in_len == sizeof c->in) break;
                ssize_t r = read(fd, c->in + c->in_len, sizeof c->in - c->in_len);
                if (r > 0) {
                    c->in_len += (size_t)r;
                    continue;
                }
                if (r == 0) closed = 1;
                else if (errno != EAGAIN && errno != EWOULDBLOCK) closed = 1;
                break;
            }
            while (!closed) {
                if (!c->busy) {
                    if (!take_request(c)) break;
                    c->busy = 1;
                }
                int f = flush(c);
                if (f < 0) closed = 1;
                if (f <= 0) break;
            }
            if (closed) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                c->fd = -1;
                c->busy = 0;
                c->in_len = 0;
            }
        }
    }
}

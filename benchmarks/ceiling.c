/* ceiling: the fastest answer this machine gives to an InfraKit Validate, as a yardstick.
 *
 * One thread, one epoll set, non-blocking sockets (unix, or TCP). Each connection's bytes are parsed
 * as HTTP/1.1 requests: a request ends after its blank line and Content-Length bytes of body, whatever
 * the reads cut it into. Every request is answered keep-alive with the same Validate result,
 *     {"jsonrpc":"2.0","result":{"Type":"","OK":true},"id":<the request's id text>}
 * the id copied verbatim from the last `"id":` of the body. All answers to the requests one read
 * completed leave in one write. It is not a plugin: it checks nothing and keeps no state; it measures
 * what the kernel, the socket and a minimal HTTP parse cost, so a plugin can be put beside it.
 *
 * Usage: ceiling unix:///path/to/socket | tcp://host:port
 * SIGINT or SIGTERM removes the socket file and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define READ_SIZE 65536
#define MAX_HEAD 65536
#define MAX_BODY (64 << 20)
#define MAX_ID 256

struct conn {
    int fd;
    char *in;           /* bytes read and not yet consumed */
    size_t in_len, in_cap;
    size_t scan;        /* where the search for the head's end resumes */
    size_t head, need;  /* once the head is complete: its length, and the request's */
    int closing;        /* a bad request: close once the answers before it are written */
    char *out;          /* answers not yet written */
    size_t out_len, out_off, out_cap;
};

static volatile sig_atomic_t stop;
static const char *unix_path;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    char *p = realloc(*buf, n);
    if (!p) return -1;
    *buf = p;
    *cap = n;
    return 0;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* The id's text after the last `"id":` of the body: a number, null, or a string (escapes kept). */
static size_t find_id(const char *body, size_t n, const char **id) {
    const char *p = NULL;
    for (size_t left = n; left >= 5;) {
        const char *colon = memrchr(body, ':', left);
        if (!colon) return 0;
        left = (size_t)(colon - body);
        if (left >= 4 && memcmp(colon - 4, "\"id\"", 4) == 0) {
            p = colon + 1;
            break;
        }
    }
    if (!p) return 0;
    const char *end = body + n;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    const char *q = p;
    if (q < end && *q == '"') {
        for (q++; q < end && *q != '"'; q++)
            if (*q == '\\') q++;
        if (q >= end) return 0;
        q++;
    } else {
        while (q < end && *q != ',' && *q != '}' && *q != ' ' && *q != '\r' && *q != '\n' && *q != '\t') q++;
    }
    if (q == p || (size_t)(q - p) > MAX_ID) return 0;
    *id = p;
    return (size_t)(q - p);
}

/* Content-Length of the head [0, head_len), or -1 if absent, -2 if unusable (chunked, bad number). */
static long content_length(const char *h, size_t head_len) {
    long len = -1;
    const char *end = h + head_len;
    const char *line = memchr(h, '\n', head_len);
    while (line && ++line < end) {
        size_t left = (size_t)(end - line);
        char first = (char)(*line | 0x20);
        if (first == 'c' && left > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            const char *v = line + 15;
            while (v < end && (*v == ' ' || *v == '\t')) v++;
            if (v >= end || *v < '0' || *v > '9') return -2;
            len = 0;
            for (; v < end && *v >= '0' && *v <= '9'; v++) {
                len = len * 10 + (*v - '0');
                if (len > MAX_BODY) return -2;
            }
        } else if (first == 't' && left > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            return -2;
        }
        line = memchr(line, '\n', (size_t)(end - line));
    }
    return len;
}

static int answer(struct conn *c, const char *id, size_t id_len) {
    static const char pre[] = "{\"jsonrpc\":\"2.0\",\"result\":{\"Type\":\"\",\"OK\":true},\"id\":";
    static const char status[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ";
    char head[128], digits[24];
    size_t body_len = sizeof pre - 1 + id_len + 1, nd = 0;
    for (size_t v = body_len; v || !nd; v /= 10) digits[sizeof digits - 1 - nd++] = (char)('0' + v % 10);
    memcpy(head, status, sizeof status - 1);
    memcpy(head + sizeof status - 1, digits + sizeof digits - nd, nd);
    memcpy(head + sizeof status - 1 + nd, "\r\n\r\n", 4);
    size_t hl = sizeof status - 1 + nd + 4;
    if (grow(&c->out, &c->out_cap, c->out_len + hl + body_len)) return -1;
    char *o = c->out + c->out_len;
    memcpy(o, head, hl);
    o += hl;
    memcpy(o, pre, sizeof pre - 1);
    o += sizeof pre - 1;
    memcpy(o, id, id_len);
    o[id_len] = '}';
    c->out_len += hl + body_len;
    return 0;
}

/* The "\r\n\r\n" ending a head, searched in [from, n): the start of it, or NULL. */
static char *head_end(char *buf, size_t from, size_t n) {
    while (from + 4 <= n) {
        char *lf = memchr(buf + from + 3, '\n', n - from - 3);
        if (!lf) return NULL;
        if (lf[-1] == '\r' && lf[-2] == '\n' && lf[-3] == '\r') return lf - 3;
        from = (size_t)(lf - buf) - 2;
    }
    return NULL;
}

/* Answer every complete request in c->in; -1 when the connection must close. */
static int parse(struct conn *c) {
    size_t pos = 0;
    for (;;) {
        char *buf = c->in + pos;
        size_t avail = c->in_len - pos;
        if (!c->head) {
            size_t from = c->scan > 3 ? c->scan - 3 : 0;
            char *hend = head_end(buf, from, avail);
            if (!hend) {
                c->scan = avail;
                if (avail > MAX_HEAD) return -1;
                break;
            }
            c->head = (size_t)(hend - buf) + 4;
            long cl = content_length(buf, c->head);
            if (cl == -2) return -1;
            c->need = c->head + (size_t)(cl < 0 ? 0 : cl);
        }
        if (avail < c->need) break; /* the body is still coming */
        const char *id = "null";
        size_t id_len = find_id(buf + c->head, c->need - c->head, &id);
        if (!id_len) {
            id = "null";
            id_len = 4;
        }
        if (answer(c, id, id_len)) return -1;
        pos += c->need;
        c->head = c->need = c->scan = 0;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

/* Write what is pending; 1 if some is left (wait for EPOLLOUT), 0 if all went, -1 on error. */
static int flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static int listen_on(const char *spec) {
    int fd;
    if (strncmp(spec, "unix://", 7) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        unix_path = spec + 7;
        if (strlen(unix_path) >= sizeof sa.sun_path) {
            fprintf(stderr, "ceiling: socket path too long: %s\n", unix_path);
            return -1;
        }
        strcpy(sa.sun_path, unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        unlink(unix_path);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("ceiling: bind");
            return -1;
        }
    } else if (strncmp(spec, "tcp://", 6) == 0) {
        char host[256];
        const char *colon = strrchr(spec + 6, ':');
        size_t hl = colon ? (size_t)(colon - (spec + 6)) : 0;
        if (!colon || hl == 0 || hl >= sizeof host) {
            fprintf(stderr, "ceiling: want tcp://host:port, got %s\n", spec);
            return -1;
        }
        memcpy(host, spec + 6, hl);
        host[hl] = 0;
        if (host[0] == '[' && host[hl - 1] == ']') {
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = 0;
        }
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
        int rc = getaddrinfo(host, colon + 1, &hints, &ai);
        if (rc) {
            fprintf(stderr, "ceiling: %s: %s\n", spec, gai_strerror(rc));
            return -1;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            perror("ceiling: bind");
            freeaddrinfo(ai);
            return -1;
        }
        freeaddrinfo(ai);
    } else {
        fprintf(stderr, "ceiling: want unix:///path or tcp://host:port, got %s\n", spec);
        return -1;
    }
    if (listen(fd, 1024) < 0) {
        perror("ceiling: listen");
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s unix:///path | tcp://host:port\n", argv[0]);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};  /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_on(argv[1]);
    if (lfd < 0) return 1;
    int tcp = strncmp(argv[1], "tcp://", 6) == 0;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "ceiling: listening on %s\n", argv[1]);
    static char rbuf[READ_SIZE];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("ceiling: epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    if (tcp) {
                        int one = 1;
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    }
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                int left = flush(c);
                if (left < 0) {
                    drop(ep, c);
                    continue;
                }
                if (left == 0 && c->closing) {
                    drop(ep, c);
                    continue;
                }
                if (left == 0) { /* all written: read again */
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
                continue;
            }
            ssize_t got = recv(c->fd, rbuf, sizeof rbuf, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) { /* EOF or error: answers to complete requests were already written */
                drop(ep, c);
                continue;
            }
            if (grow(&c->in, &c->in_cap, c->in_len + (size_t)got)) {
                drop(ep, c);
                continue;
            }
            memcpy(c->in + c->in_len, rbuf, (size_t)got);
            c->in_len += (size_t)got;
            int bad = parse(c);
            int left = flush(c); /* every answer this read completed, in one write */
            if (left < 0 || (bad && left == 0)) {
                drop(ep, c);
                continue;
            }
            c->closing = bad;
            if (left == 1) { /* the peer reads slowly: stop reading until it has taken our answers */
                struct epoll_event cev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
    if (unix_path) unlink(unix_path);
    return 0;
}

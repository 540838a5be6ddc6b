/*
 * script_server - a tiny scripted HTTP/1.1 server for unit tests (header
 * only; included by test_http.c and test_crm_dataverse.c).
 *
 * It listens on 127.0.0.1:0 in its own thread, keeps connections alive,
 * answers each complete request with the next scripted response (in order
 * of arrival, whatever the connection) and records every request (method,
 * target, headers, body, monotonic arrival and reply time, connection
 * number) and every accept(), so tests can assert what the client really
 * sent and when. Several connections are served at once: ss_start_delayed
 * holds chosen responses back on their connection while the others go on,
 * so tests can see overlapping requests.
 *
 * Ownership: ss_start() fills a caller-owned struct; ss_stop() joins the
 * thread and frees the recorded requests. Script strings are borrowed and
 * must outlive the server. Thread-safety: the recorded state is guarded by
 * ss->mu; read it via the ss_* helpers or after ss_stop().
 */
#ifndef CRMSYNC_TEST_SCRIPT_SERVER_H
#define CRMSYNC_TEST_SCRIPT_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SS_MAX_SCRIPT 32
#define SS_MAX_REQS   64
#define SS_MAX_CONNS  16

struct ss_response {
    int status;
    const char *headers; /* extra header lines, each ending "\r\n"; or NULL */
    const char *body;    /* or NULL */
};

struct ss_request {
    char method[16];
    char target[1024];
    char *headers; /* owned: raw header block */
    char *body;    /* owned, NUL-terminated */
    size_t body_len;
    long long at_ms;      /* CLOCK_MONOTONIC ms when complete */
    long long replied_ms; /* CLOCK_MONOTONIC ms when the reply was sent */
    int conn;             /* accept number (1-based) */
};

struct ss_conn {
    int fd;
    int id;
    char *buf;
    size_t len;
    size_t cap;
    bool held;             /* a delayed reply is pending on this conn */
    struct ss_response rs; /* the held reply */
    size_t rq;             /* index of its request (SS_MAX_REQS = none) */
    long long due_ms;      /* when to send it */
};

struct script_server {
    int listen_fd;
    int port;
    int wake[2];
    pthread_t thread;
    pthread_mutex_t mu;
    struct ss_response script[SS_MAX_SCRIPT];
    int delay_ms[SS_MAX_SCRIPT]; /* hold script[i]'s reply this long */
    size_t nscript;
    size_t next;
    struct ss_request reqs[SS_MAX_REQS];
    size_t nreqs;
    int accepts;
    struct ss_conn conns[SS_MAX_CONNS];
};

static long long ss_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Case-insensitive strstr (strcasestr is a GNU extension). */
static const char *ss_strcasestr(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return hay;
    return NULL;
}

static const char *ss_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 412:
        return "Precondition Failed";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

static void ss_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Sends a reply on c and stamps request @p rq (if recorded) as replied. */
static void ss_reply(struct script_server *ss, struct ss_conn *c,
                     const struct ss_response *rs, size_t rq)
{
    char head[2048];
    size_t blen = rs->body ? strlen(rs->body) : 0;
    int n =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n%s\r\n", rs->status,
                 ss_reason(rs->status), blen, rs->headers ? rs->headers : "");

    pthread_mutex_lock(&ss->mu);
    if (rq < ss->nreqs)
        ss->reqs[rq].replied_ms = ss_now_ms();
    pthread_mutex_unlock(&ss->mu);
    ss_send_all(c->fd, head, (size_t)n);
    if (blen)
        ss_send_all(c->fd, rs->body, blen);
}

/* Handles every complete request in c->buf (none while a reply is held).
 * Returns false to close. */
static bool ss_serve_buffer(struct script_server *ss, struct ss_conn *c)
{
    while (!c->held) {
        char *hend = NULL;
        size_t hlen;
        size_t clen = 0;
        struct ss_request rq;
        struct ss_response rs = {500, NULL, "script exhausted"};
        int delay = 0;
        size_t idx = SS_MAX_REQS;
        const char *cl;

        for (size_t i = 0; i + 3 < c->len; i++)
            if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
                hend = c->buf + i;
                break;
            }
        if (!hend)
            return true;
        hlen = (size_t)(hend - c->buf) + 4;
        memset(&rq, 0, sizeof(rq));
        rq.headers = strndup(c->buf, hlen);
        cl = ss_strcasestr(rq.headers, "\r\nContent-Length:");
        if (cl)
            clen = (size_t)strtoul(cl + 17, NULL, 10);
        if (c->len < hlen + clen) {
            free(rq.headers);
            return true;
        }
        sscanf(rq.headers, "%15s %1023s", rq.method, rq.target);
        rq.body = strndup(c->buf + hlen, clen);
        rq.body_len = clen;
        rq.at_ms = ss_now_ms();
        rq.conn = c->id;
        memmove(c->buf, c->buf + hlen + clen, c->len - hlen - clen);
        c->len -= hlen + clen;
        pthread_mutex_lock(&ss->mu);
        if (ss->nreqs < SS_MAX_REQS) {
            idx = ss->nreqs;
            ss->reqs[ss->nreqs++] = rq;
        } else {
            free(rq.headers);
            free(rq.body);
        }
        if (ss->next < ss->nscript) {
            delay = ss->delay_ms[ss->next];
            rs = ss->script[ss->next++];
        }
        pthread_mutex_unlock(&ss->mu);
        if (delay > 0) {
            c->held = true;
            c->rs = rs;
            c->rq = idx;
            c->due_ms = ss_now_ms() + delay;
        } else {
            ss_reply(ss, c, &rs, idx);
        }
    }
    return true;
}

/* Sends every held reply that is due and serves what queued up behind it.
 * Returns the poll timeout until the next held reply (ms, -1 = none). */
static int ss_flush_held(struct script_server *ss)
{
    int timeout = -1;

    for (int i = 0; i < SS_MAX_CONNS; i++) {
        struct ss_conn *c = &ss->conns[i];
        long long left;

        if (c->fd < 0 || !c->held)
            continue;
        left = c->due_ms - ss_now_ms();
        if (left <= 0) {
            c->held = false;
            ss_reply(ss, c, &c->rs, c->rq);
            ss_serve_buffer(ss, c);
            if (!c->held)
                continue;
            left = c->due_ms - ss_now_ms();
        }
        if (left < 0)
            left = 0;
        if (timeout < 0 || left < timeout)
            timeout = (int)left;
    }
    return timeout;
}

static void *ss_main(void *arg)
{
    struct script_server *ss = arg;

    for (;;) {
        struct pollfd pfd[SS_MAX_CONNS + 2];
        int map[SS_MAX_CONNS + 2];
        nfds_t np = 0;
        int timeout = ss_flush_held(ss);

        pfd[np] = (struct pollfd){ss->wake[0], POLLIN, 0};
        map[np++] = -1;
        pfd[np] = (struct pollfd){ss->listen_fd, POLLIN, 0};
        map[np++] = -2;
        for (int i = 0; i < SS_MAX_CONNS; i++)
            if (ss->conns[i].fd >= 0) {
                pfd[np] = (struct pollfd){ss->conns[i].fd, POLLIN, 0};
                map[np++] = i;
            }
        if (poll(pfd, np, timeout < 0 || timeout > 1000 ? 1000 : timeout) < 0)
            continue;
        if (pfd[0].revents)
            break;
        if (pfd[1].revents & POLLIN) {
            int fd = accept(ss->listen_fd, NULL, NULL);
            if (fd >= 0) {
                int slot = -1;
                for (int i = 0; i < SS_MAX_CONNS; i++)
                    if (ss->conns[i].fd < 0) {
                        slot = i;
                        break;
                    }
                pthread_mutex_lock(&ss->mu);
                ss->accepts++;
                pthread_mutex_unlock(&ss->mu);
                if (slot < 0) {
                    close(fd);
                } else {
                    ss->conns[slot].fd = fd;
                    ss->conns[slot].id = ss->accepts;
                    ss->conns[slot].len = 0;
                    ss->conns[slot].held = false;
                }
            }
        }
        for (nfds_t k = 2; k < np; k++) {
            struct ss_conn *c = &ss->conns[map[k]];
            char tmp[16384];
            ssize_t r;

            if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            r = recv(c->fd, tmp, sizeof(tmp), 0);
            if (r <= 0) {
                close(c->fd);
                c->fd = -1;
                continue;
            }
            if (c->len + (size_t)r > c->cap) {
                size_t cap = c->cap ? c->cap : 65536;
                while (cap < c->len + (size_t)r)
                    cap *= 2;
                c->buf = realloc(c->buf, cap);
                c->cap = cap;
            }
            memcpy(c->buf + c->len, tmp, (size_t)r);
            c->len += (size_t)r;
            if (!ss_serve_buffer(ss, c)) {
                close(c->fd);
                c->fd = -1;
            }
        }
    }
    return NULL;
}

/* Starts the server with a script of @p n responses, reply i held back
 * delays[i] ms (delays may be NULL). Returns 0 on success. */
static int ss_start_delayed(struct script_server *ss,
                            const struct ss_response *script, size_t n,
                            const int *delays)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int one = 1;

    memset(ss, 0, sizeof(*ss));
    for (int i = 0; i < SS_MAX_CONNS; i++)
        ss->conns[i].fd = -1;
    for (size_t i = 0; i < n && i < SS_MAX_SCRIPT; i++)
        ss->script[i] = script[i];
    for (size_t i = 0; delays && i < n && i < SS_MAX_SCRIPT; i++)
        ss->delay_ms[i] = delays[i];
    ss->nscript = n;
    pthread_mutex_init(&ss->mu, NULL);
    if (pipe(ss->wake) != 0)
        return -1;
    ss->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ss->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (bind(ss->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(ss->listen_fd, 16) != 0 ||
        getsockname(ss->listen_fd, (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    ss->port = ntohs(sa.sin_port);
    return pthread_create(&ss->thread, NULL, ss_main, ss);
}

/* Starts the server with a script of @p n responses. Returns 0 on success. */
static inline int ss_start(struct script_server *ss,
                           const struct ss_response *script, size_t n)
{
    return ss_start_delayed(ss, script, n, NULL);
}

static void ss_stop(struct script_server *ss)
{
    ssize_t w = write(ss->wake[1], "x", 1);

    (void)w;
    pthread_join(ss->thread, NULL);
    close(ss->listen_fd);
    close(ss->wake[0]);
    close(ss->wake[1]);
    for (int i = 0; i < SS_MAX_CONNS; i++) {
        if (ss->conns[i].fd >= 0)
            close(ss->conns[i].fd);
        free(ss->conns[i].buf);
    }
    for (size_t i = 0; i < ss->nreqs; i++) {
        free(ss->reqs[i].headers);
        free(ss->reqs[i].body);
    }
    pthread_mutex_destroy(&ss->mu);
}

static inline size_t ss_nreqs(struct script_server *ss)
{
    size_t n;

    pthread_mutex_lock(&ss->mu);
    n = ss->nreqs;
    pthread_mutex_unlock(&ss->mu);
    return n;
}

static inline int ss_accepts(struct script_server *ss)
{
    int n;

    pthread_mutex_lock(&ss->mu);
    n = ss->accepts;
    pthread_mutex_unlock(&ss->mu);
    return n;
}

/* Copies header @p name of request @p i into out; false when absent. */
static inline bool ss_req_header(struct script_server *ss, size_t i,
                                 const char *name, char *out, size_t out_size)
{
    char pat[128];
    const char *p;
    bool found = false;

    snprintf(pat, sizeof(pat), "\r\n%s:", name);
    pthread_mutex_lock(&ss->mu);
    if (i < ss->nreqs) {
        p = ss_strcasestr(ss->reqs[i].headers, pat);
        if (p) {
            const char *v = p + strlen(pat);
            const char *e = strstr(v, "\r\n");
            size_t len;
            while (*v == ' ')
                v++;
            len = e ? (size_t)(e - v) : strlen(v);
            if (len >= out_size)
                len = out_size - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            found = true;
        }
    }
    pthread_mutex_unlock(&ss->mu);
    return found;
}

#endif

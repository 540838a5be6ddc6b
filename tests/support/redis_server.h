/*
 * redis_server - start, reach and stop a throwaway redis-server (header
 * only; for tests and benchmarks, never linked into a worker). Included by
 * tests/unit/test_idem.c and bench/idem_mem.c.
 *
 * rs_init_local() picks a free 127.0.0.1 port (bind to port 0);
 * rs_start() fork/execs `redis-server --port P --bind 127.0.0.1 --save ""
 * --appendonly no [--requirepass PW]` and waits until it answers PING;
 * rs_connect() opens an admin connection (AUTH [user] password, SELECT db);
 * rs_stop() signals the child and reaps it. The child gets
 * PR_SET_PDEATHSIG(SIGTERM), so it dies with the caller even when the
 * caller crashes before teardown. A struct filled by hand (host, port,
 * user, password, db) with pid 0 describes an external server that
 * rs_connect() can reach and rs_stop() leaves alone.
 *
 * Ownership: struct redis_server is caller-owned and holds copies of every
 * string; the child process belongs to it until rs_stop(). The password is
 * never printed. Thread-safety: none; one thread per struct.
 */
#ifndef CRMSYNC_TEST_REDIS_SERVER_H
#define CRMSYNC_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

/* How long rs_start() waits for PING: RS_START_TRIES * RS_START_STEP_MS. */
#define RS_START_TRIES   200
#define RS_START_STEP_MS 25

struct redis_server {
    char host[256];
    int port;
    char user[128];     /* empty = plain "AUTH password" */
    char password[256]; /* empty = none; rs_start adds --requirepass */
    int db;             /* SELECTed by rs_connect when > 0 */
    int timeout_ms;     /* connect timeout of rs_connect */
    pid_t pid;          /* our redis-server child, 0 when not running */
};

/* A free 127.0.0.1 TCP port (bound to port 0, then closed), or -1. */
static inline int rs_free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static inline void rs_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Describes a not-yet-started local server on a free port. password is
 * copied (NULL = none). Returns false when no port could be found. */
static inline bool rs_init_local(struct redis_server *rs, const char *password,
                                 int timeout_ms)
{
    memset(rs, 0, sizeof(*rs));
    snprintf(rs->host, sizeof(rs->host), "127.0.0.1");
    if (password)
        snprintf(rs->password, sizeof(rs->password), "%s", password);
    rs->timeout_ms = timeout_ms;
    rs->port = rs_free_port();
    return rs->port > 0;
}

/* Admin connection: AUTH when a password is set, SELECT when db > 0.
 * Caller frees with redisFree. NULL when unreachable or refused. */
static inline redisContext *rs_connect(const struct redis_server *rs)
{
    struct timeval tv = {rs->timeout_ms / 1000, (rs->timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(rs->host, rs->port, tv);
    redisReply *r = NULL;

    if (!c || c->err)
        goto out_free_ctx;
    if (rs->password[0]) {
        if (rs->user[0])
            r = redisCommand(c, "AUTH %s %s", rs->user, rs->password);
        else
            r = redisCommand(c, "AUTH %s", rs->password);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto out_free_reply;
        freeReplyObject(r);
        r = NULL;
    }
    if (rs->db > 0) {
        r = redisCommand(c, "SELECT %d", rs->db);
        if (!r || r->type == REDIS_REPLY_ERROR)
            goto out_free_reply;
        freeReplyObject(r);
    }
    return c;

out_free_reply:
    if (r)
        freeReplyObject(r);
out_free_ctx:
    if (c)
        redisFree(c);
    return NULL;
}

/* True when the server accepts an admin connection and answers PING. */
static inline bool rs_answers(const struct redis_server *rs)
{
    redisContext *c = rs_connect(rs);
    redisReply *r;
    bool ok;

    if (!c)
        return false;
    r = redisCommand(c, "PING");
    ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return ok;
}

/* Sends sig to our child and reaps it; no-op when none runs (pid 0), so
 * an external server is never touched. */
static inline void rs_stop(struct redis_server *rs, int sig)
{
    if (rs->pid <= 0)
        return;
    kill(rs->pid, sig);
    waitpid(rs->pid, NULL, 0);
    rs->pid = 0;
}

/* Starts redis-server on rs->port (again, after rs_stop, on the same
 * port) and waits until it answers PING. On failure the child is killed
 * and reaped, rs->pid is 0 and false is returned. */
static inline bool rs_start(struct redis_server *rs)
{
    char port[16];
    pid_t pid;

    snprintf(port, sizeof(port), "%d", rs->port);
    pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);

        /* Die with the caller even if it crashes before teardown. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (devnull >= 0) {
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        if (rs->password[0])
            execlp("redis-server", "redis-server", "--port", port, "--bind",
                   "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--requirepass", rs->password, (char *)NULL);
        else
            execlp("redis-server", "redis-server", "--port", port, "--bind",
                   "127.0.0.1", "--save", "", "--appendonly", "no",
                   (char *)NULL);
        _exit(127);
    }
    rs->pid = pid;
    for (int i = 0; i < RS_START_TRIES; i++) {
        if (rs_answers(rs))
            return true;
        rs_sleep_ms(RS_START_STEP_MS);
    }
    rs_stop(rs, SIGKILL);
    return false;
}

#endif /* CRMSYNC_TEST_REDIS_SERVER_H */

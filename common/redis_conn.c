/* redis_conn - see redis_conn.h. */
#include "common/redis_conn.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "common/log.h"
#include "common/odata.h"

#define RC_DEFAULT_PORT 6379
#define RC_NUM_MAX      24  /* decimal int64 + NUL */
#define RC_STACK_ARGS   16  /* eval argv up to this size lives on the stack */
#define RC_ERR_TEXT_MAX 200 /* bytes of a server error copied to errstr */

struct redis_conn {
    redisContext *rc;   /* NULL while disconnected */
    bool rc_fresh;      /* rc was opened during the current attempt */
    char *host;         /* owned */
    int port;           /* TCP port */
    char *user;         /* owned, NULL = AUTH without user */
    char *password;     /* owned, NULL = no AUTH; never printed */
    int db;             /* SELECT db when > 0 */
    struct timeval tv;  /* connect + command timeout */
    char (*cached)[41]; /* owned: SHAs this connection has run (EVALSHA ok) */
    size_t ncached;     /* used entries of cached */
    size_t cap;         /* allocated entries of cached */
    unsigned long long round_trips; /* exchanges with Redis so far */
};

/* ------------------------------------------------------------------------
 * Option parsing
 * ---------------------------------------------------------------------- */

/* Returns a malloc'ed %-decoded copy of s[0..len) or NULL (bad escape, %00
 * or out of memory). The caller frees it (cleansing it first if secret). */
static char *dup_decoded(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t j = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            out[j++] = s[i];
            continue;
        }
        int hi = i + 2 < len ? odata_hex_value(s[i + 1]) : -1;
        int lo = i + 2 < len ? odata_hex_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            OPENSSL_cleanse(out, len + 1);
            free(out);
            return NULL;
        }
        out[j++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[j] = '\0';
    return out;
}

/* Parses s[0..len) as a decimal integer in [min, max]. */
static bool parse_int(const char *s, size_t len, long min, long max, long *out)
{
    char buf[RC_NUM_MAX];
    char *end = NULL;
    long v;

    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    for (size_t i = 0; i < len; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return false;
    }
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/*
 * Fills host, port, user, password and db from
 * redis://[[user]:password@]host[:port][/db]. Error texts never quote the
 * URL (it may hold the password).
 */
static bool parse_url(struct redis_conn *c, const char *url, char *errstr,
                      size_t errstr_size)
{
    static const char scheme[] = "redis://";
    const char *rest;
    const char *at;
    const char *hp;
    const char *slash;
    const char *host_end;
    const char *port_str = NULL;
    size_t hp_len;
    long v;

    if (strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
        snprintf(errstr, errstr_size, "redis url must start with redis://");
        return false;
    }
    rest = url + sizeof(scheme) - 1;
    at = strrchr(rest, '@');
    hp = rest;
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        if (!colon) {
            snprintf(errstr, errstr_size,
                     "redis url: credentials must be ':password@' or "
                     "'user:password@'");
            return false;
        }
        if (colon > rest) {
            c->user = dup_decoded(rest, (size_t)(colon - rest));
            if (!c->user)
                goto out_bad_escape;
        }
        if (at > colon + 1) {
            c->password = dup_decoded(colon + 1, (size_t)(at - (colon + 1)));
            if (!c->password)
                goto out_bad_escape;
        }
        hp = at + 1;
    }

    slash = strchr(hp, '/');
    hp_len = slash ? (size_t)(slash - hp) : strlen(hp);
    if (hp[0] == '[') {
        const char *close = memchr(hp, ']', hp_len);
        if (!close || close == hp + 1) {
            snprintf(errstr, errstr_size, "redis url: bad IPv6 host");
            return false;
        }
        c->host = strndup(hp + 1, (size_t)(close - hp - 1));
        host_end = close + 1;
        if (host_end < hp + hp_len) {
            if (*host_end != ':') {
                snprintf(errstr, errstr_size, "redis url: bad host");
                return false;
            }
            port_str = host_end + 1;
        }
    } else {
        const char *colon = memchr(hp, ':', hp_len);
        host_end = colon ? colon : hp + hp_len;
        if (host_end == hp) {
            snprintf(errstr, errstr_size, "redis url: missing host");
            return false;
        }
        c->host = strndup(hp, (size_t)(host_end - hp));
        if (colon)
            port_str = colon + 1;
    }
    if (!c->host) {
        snprintf(errstr, errstr_size, "out of memory");
        return false;
    }

    c->port = RC_DEFAULT_PORT;
    if (port_str) {
        if (!parse_int(port_str, (size_t)(hp + hp_len - port_str), 1, 65535,
                       &v)) {
            snprintf(errstr, errstr_size, "redis url: bad port");
            return false;
        }
        c->port = (int)v;
    }

    c->db = 0;
    if (slash && slash[1] != '\0') {
        if (!parse_int(slash + 1, strlen(slash + 1), 0, INT_MAX, &v)) {
            snprintf(errstr, errstr_size,
                     "redis url: database must be a number");
            return false;
        }
        c->db = (int)v;
    }
    return true;

out_bad_escape:
    snprintf(errstr, errstr_size,
             "redis url: bad %%-escape in credentials (or out of memory)");
    return false;
}

void redis_script_init(struct redis_script *s, const char *body)
{
    unsigned char md[SHA_DIGEST_LENGTH];

    s->body = body;
    SHA1((const unsigned char *)body, strlen(body), md);
    for (size_t i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
}

struct redis_conn *redis_conn_new(const struct redis_conn_opts *opts,
                                  char *errstr, size_t errstr_size)
{
    struct redis_conn *c;

    if (!opts || !opts->url) {
        snprintf(errstr, errstr_size, "redis url is required");
        return NULL;
    }
    if (opts->timeout_ms <= 0) {
        snprintf(errstr, errstr_size, "redis timeout_ms must be > 0");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    if (!parse_url(c, opts->url, errstr, errstr_size))
        goto out_free_conn;
    c->tv.tv_sec = opts->timeout_ms / 1000;
    c->tv.tv_usec = (opts->timeout_ms % 1000) * 1000;

    /* Best effort: a Redis that is down now is not a configuration error. */
    (void)redis_conn_ping(c);
    return c;

out_free_conn:
    redis_conn_free(c);
    return NULL;
}

static void drop_connection(struct redis_conn *c)
{
    if (c->rc) {
        redisFree(c->rc);
        c->rc = NULL;
    }
}

void redis_conn_free(struct redis_conn *c)
{
    if (!c)
        return;
    drop_connection(c);
    free(c->host);
    free(c->user);
    if (c->password) {
        OPENSSL_cleanse(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->cached);
    free(c);
}

/* ------------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------- */

/*
 * hiredis writes with write(2); a write to a socket the server has reset
 * raises SIGPIPE, whose default action kills the process. Block it in this
 * thread around each exchange and swallow one we caused, so the library
 * never depends on a process-wide signal disposition.
 */
struct sigpipe_guard {
    sigset_t old_mask; /* mask to restore */
    bool was_pending;  /* a SIGPIPE was pending before: not ours */
};

static void sigpipe_block(struct sigpipe_guard *g)
{
    sigset_t set;
    sigset_t pending;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &g->old_mask);
    sigemptyset(&pending);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE) == 1;
}

static void sigpipe_restore(const struct sigpipe_guard *g)
{
    sigset_t pending;

    sigemptyset(&pending);
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE) == 1) {
        sigset_t set;
        struct timespec zero = {0, 0};
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        (void)sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old_mask, NULL);
}

/* One request/response exchange, counted. Returns the reply (caller frees
 * with freeReplyObject) or NULL with rc->err set; *saved_errno gets errno
 * right after the failure. */
static redisReply *command_argv(struct redis_conn *c, int argc,
                                const char **argv, const size_t *argvlen,
                                int *saved_errno)
{
    struct sigpipe_guard g;
    redisReply *r;

    sigpipe_block(&g);
    c->round_trips++;
    errno = 0;
    r = redisCommandArgv(c->rc, argc, argv, argvlen);
    *saved_errno = errno;
    sigpipe_restore(&g);
    return r;
}

/* Copies the first word of a Redis error (e.g. "WRONGPASS") only: enough to
 * diagnose, and nothing the server might echo back. */
static void error_code(const redisReply *r, char *buf, size_t size)
{
    size_t len = 0;

    while (len < r->len && len + 1 < size && r->str[len] != ' ')
        len++;
    memcpy(buf, r->str, len);
    buf[len] = '\0';
}

/* AUTH and SELECT pipelined in one round trip. */
static enum cs_err handshake(struct redis_conn *c, char *errstr,
                             size_t errstr_size)
{
    const char *argv[3];
    size_t argvlen[3];
    char db_str[RC_NUM_MAX];
    int sent = 0;
    enum cs_err err = CS_ERR_OK;
    struct sigpipe_guard g;

    if (c->password) {
        int argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = 4;
        if (c->user) {
            argv[argc] = c->user;
            argvlen[argc++] = strlen(c->user);
        }
        argv[argc] = c->password;
        argvlen[argc++] = strlen(c->password);
        if (redisAppendCommandArgv(c->rc, argc, argv, argvlen) != REDIS_OK)
            goto out_oom;
        sent++;
    }
    if (c->db > 0) {
        snprintf(db_str, sizeof(db_str), "%d", c->db);
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = db_str;
        argvlen[1] = strlen(db_str);
        if (redisAppendCommandArgv(c->rc, 2, argv, argvlen) != REDIS_OK)
            goto out_oom;
        sent++;
    }
    if (sent == 0)
        return CS_ERR_OK;

    sigpipe_block(&g);
    c->round_trips++;
    for (int i = 0; i < sent; i++) {
        void *p = NULL;
        redisReply *r;
        bool is_auth = c->password && i == 0;
        char code[32];

        if (redisGetReply(c->rc, &p) != REDIS_OK) {
            snprintf(errstr, errstr_size, "redis %s:%d: %s", c->host, c->port,
                     c->rc->errstr);
            err = CS_ERR_REDIS_UNAVAILABLE;
            break;
        }
        r = p;
        if (r->type == REDIS_REPLY_ERROR && err == CS_ERR_OK) {
            error_code(r, code, sizeof(code));
            snprintf(errstr, errstr_size, "redis %s:%d: %s rejected (%s)",
                     c->host, c->port, is_auth ? "AUTH" : "SELECT", code);
            err = CS_ERR_REDIS_UNAVAILABLE;
        }
        freeReplyObject(r);
    }
    sigpipe_restore(&g);
    return err;

out_oom:
    snprintf(errstr, errstr_size, "redis: out of memory");
    return CS_ERR_REDIS_UNAVAILABLE;
}

static enum cs_err ensure_connected(struct redis_conn *c, char *errstr,
                                    size_t errstr_size)
{
    enum cs_err err;

    if (c->rc)
        return CS_ERR_OK;
    c->rc = redisConnectWithTimeout(c->host, c->port, c->tv);
    if (!c->rc) {
        snprintf(errstr, errstr_size, "redis: out of memory");
        return CS_ERR_REDIS_UNAVAILABLE;
    }
    if (c->rc->err) {
        snprintf(errstr, errstr_size, "redis connect %s:%d: %s", c->host,
                 c->port, c->rc->errstr);
        drop_connection(c);
        return CS_ERR_REDIS_UNAVAILABLE;
    }
    if (redisSetTimeout(c->rc, c->tv) != REDIS_OK) {
        snprintf(errstr, errstr_size, "redis %s:%d: cannot set timeout",
                 c->host, c->port);
        drop_connection(c);
        return CS_ERR_REDIS_UNAVAILABLE;
    }
    (void)redisEnableKeepAlive(c->rc);
    c->rc_fresh = true;
    c->ncached = 0; /* a new server session has run none of our scripts */
    err = handshake(c, errstr, errstr_size);
    if (err != CS_ERR_OK)
        drop_connection(c);
    return err;
}

/* Did the server close or reset a connection that was idle between calls?
 * (Then one retry on a fresh connection is worth it; a timeout is not.) */
static bool connection_was_closed(const redisContext *rc, int saved_errno)
{
    if (rc->err == REDIS_ERR_EOF)
        return true;
    return rc->err == REDIS_ERR_IO &&
           (saved_errno == ECONNRESET || saved_errno == EPIPE);
}

/* ------------------------------------------------------------------------
 * Script cache bookkeeping: which SHAs the current connection has run.
 * ---------------------------------------------------------------------- */

static bool cache_has(const struct redis_conn *c, const char *sha)
{
    for (size_t i = 0; i < c->ncached; i++) {
        if (memcmp(c->cached[i], sha, sizeof(c->cached[i])) == 0)
            return true;
    }
    return false;
}

/* Out of memory only costs EVAL instead of EVALSHA next time. */
static void cache_add(struct redis_conn *c, const char *sha)
{
    if (cache_has(c, sha))
        return;
    if (c->ncached == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        char(*p)[41] = realloc(c->cached, cap * sizeof(*p));
        if (!p)
            return;
        c->cached = p;
        c->cap = cap;
    }
    memcpy(c->cached[c->ncached++], sha, sizeof(c->cached[0]));
}

/* Fills argv[0..1] with EVALSHA sha or EVAL body, as the connection's cache
 * allows; returns whether EVALSHA was chosen. */
static bool eval_head(const struct redis_conn *c, const struct redis_script *s,
                      const char **argv, size_t *argvlen)
{
    bool by_sha = cache_has(c, s->sha);

    argv[0] = by_sha ? "EVALSHA" : "EVAL";
    argvlen[0] = strlen(argv[0]);
    argv[1] = by_sha ? s->sha : s->body;
    argvlen[1] = strlen(argv[1]);
    return by_sha;
}

/*
 * Sends one command, connecting first if needed; retries once on a fresh
 * connection when a reused one turns out closed. With a script, argv[0..1]
 * are (re)filled per attempt (EVAL on a fresh connection) and *by_sha says
 * what the last attempt sent. On success *out is the reply (caller frees
 * with freeReplyObject; it may be an error reply).
 */
static enum cs_err exec_argv(struct redis_conn *c, const struct redis_script *s,
                             bool *by_sha, int argc, const char **argv,
                             size_t *argvlen, redisReply **out, char *errstr,
                             size_t errstr_size)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        enum cs_err err;
        bool reused;
        int saved_errno = 0;
        redisReply *r;

        c->rc_fresh = false;
        err = ensure_connected(c, errstr, errstr_size);
        if (err != CS_ERR_OK)
            return err;
        reused = !c->rc_fresh;
        if (s)
            *by_sha = eval_head(c, s, argv, argvlen);
        r = command_argv(c, argc, argv, argvlen, &saved_errno);
        if (r) {
            *out = r;
            return CS_ERR_OK;
        }
        snprintf(errstr, errstr_size, "redis %s:%d: %s", c->host, c->port,
                 c->rc->errstr);
        if (!(reused && connection_was_closed(c->rc, saved_errno))) {
            drop_connection(c);
            break;
        }
        drop_connection(c);
        LOG_DEBUG("redis connection was closed, reconnecting host=%s port=%d",
                  c->host, c->port);
    }
    return CS_ERR_REDIS_UNAVAILABLE;
}

static bool has_prefix(const redisReply *r, const char *p)
{
    size_t len = strlen(p);
    return r->len >= len && memcmp(r->str, p, len) == 0;
}

/* Maps an error reply: states a retry can outlive become UNAVAILABLE. */
static enum cs_err error_reply(struct redis_conn *c, const redisReply *r,
                               char *errstr, size_t errstr_size)
{
    static const char *const transient[] = {
        "LOADING", "BUSY",     "READONLY",    "MASTERDOWN", "NOAUTH",
        "OOM",     "TRYAGAIN", "CLUSTERDOWN", "WRONGPASS",  "NOPERM",
    };
    char code[32];

    error_code(r, code, sizeof(code));
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++) {
        if (has_prefix(r, transient[i])) {
            snprintf(errstr, errstr_size, "redis %s:%d: %s", c->host, c->port,
                     code);
            /* NOAUTH: the server gained a password; re-AUTH on reconnect. */
            drop_connection(c);
            return CS_ERR_REDIS_UNAVAILABLE;
        }
    }
    snprintf(errstr, errstr_size, "redis %s:%d: %.*s", c->host, c->port,
             (int)(r->len > RC_ERR_TEXT_MAX ? RC_ERR_TEXT_MAX : r->len),
             r->str);
    return CS_ERR_REDIS_PROTOCOL;
}

/* EVAL(SHA) with a NOSCRIPT fallback; argv[0..1] are filled here, argv[2]
 * onwards is the numkeys/KEYS/ARGV part prepared by the caller. */
static enum cs_err run_script(struct redis_conn *c,
                              const struct redis_script *s, int argc,
                              const char **argv, size_t *argvlen,
                              redisReply **out, char *errstr,
                              size_t errstr_size)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        bool by_sha = false;
        redisReply *r = NULL;
        enum cs_err err;

        err = exec_argv(c, s, &by_sha, argc, argv, argvlen, &r, errstr,
                        errstr_size);
        if (err != CS_ERR_OK)
            return err;
        if (r->type == REDIS_REPLY_ERROR && has_prefix(r, "NOSCRIPT") &&
            by_sha) {
            /* Script cache flushed (SCRIPT FLUSH, restart, failover): it
             * took every script, not just this one. */
            freeReplyObject(r);
            c->ncached = 0;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            err = error_reply(c, r, errstr, errstr_size);
            freeReplyObject(r);
            return err;
        }
        /* The script now sits in the cache of the server this connection
         * talks to (exec_argv may have reconnected; the cache follows). */
        if (c->rc)
            cache_add(c, s->sha);
        *out = r;
        return CS_ERR_OK;
    }
    snprintf(errstr, errstr_size, "redis %s:%d: NOSCRIPT after EVAL", c->host,
             c->port);
    return CS_ERR_REDIS_PROTOCOL;
}

enum cs_err redis_conn_eval(struct redis_conn *c, const struct redis_script *s,
                            int numkeys, int argc, const char **argv,
                            const size_t *argvlen, struct redisReply **reply,
                            char *errstr, size_t errstr_size)
{
    const char *stack_argv[RC_STACK_ARGS];
    size_t stack_len[RC_STACK_ARGS];
    const char **av = stack_argv;
    size_t *avlen = stack_len;
    char numkeys_str[RC_NUM_MAX];
    enum cs_err err;
    int total;

    if (reply)
        *reply = NULL;
    if (!c || !s || !s->body || !reply || argc < 0 || argc > INT_MAX - 3 ||
        numkeys < 0 || numkeys > argc || (argc > 0 && !argv)) {
        snprintf(errstr, errstr_size, "redis eval: invalid arguments");
        return CS_ERR_INVALID_ARG;
    }
    for (int i = 0; i < argc; i++) {
        if (!argv[i]) {
            snprintf(errstr, errstr_size, "redis eval: argument %d is NULL", i);
            return CS_ERR_INVALID_ARG;
        }
    }
    total = argc + 3;
    if (total > RC_STACK_ARGS) {
        av = malloc((size_t)total * sizeof(*av));
        avlen = malloc((size_t)total * sizeof(*avlen));
        if (!av || !avlen) {
            snprintf(errstr, errstr_size, "out of memory");
            err = CS_ERR_NOMEM;
            goto out_free_args;
        }
    }
    snprintf(numkeys_str, sizeof(numkeys_str), "%d", numkeys);
    av[2] = numkeys_str;
    avlen[2] = strlen(numkeys_str);
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        avlen[3 + i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    err = run_script(c, s, total, av, avlen, reply, errstr, errstr_size);

out_free_args:
    if (av != stack_argv) {
        free(av);
        free(avlen);
    }
    return err;
}

bool redis_conn_ping(struct redis_conn *c)
{
    const char *argv[1] = {"PING"};
    size_t argvlen[1] = {4};
    redisReply *r = NULL;
    char errstr[256];
    bool ok;

    if (exec_argv(c, NULL, NULL, 1, argv, argvlen, &r, errstr,
                  sizeof(errstr)) != CS_ERR_OK)
        return false;
    ok = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    freeReplyObject(r);
    return ok;
}

unsigned long long redis_conn_round_trips(const struct redis_conn *c)
{
    return c->round_trips;
}

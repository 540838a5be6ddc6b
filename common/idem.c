/* idem - see idem.h. */
#include "common/idem.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "common/log.h"
#include "common/odata.h"

#define IDEM_DEFAULT_PORT 6379
#define IDEM_FIELD_LEN    8   /* raw bytes of the per-id hash field */
#define IDEM_KEY_MAX      128 /* "cs:idem:" + ns + ":" + day + ":" + bucket */
#define IDEM_NUM_MAX      24  /* decimal int64 + NUL */
#define MS_PER_DAY        86400000LL
#define S_PER_DAY         86400LL

/* ------------------------------------------------------------------------
 * Lua scripts. Each runs atomically on the server. KEYS[i] is the bucket
 * key of the i-th id; its hash field is an ARGV entry. Lua strings are
 * binary safe, so the 8 raw field bytes pass through unchanged.
 * ---------------------------------------------------------------------- */

/*
 * The one script every call runs (EVALSHA), so a batch costs one round trip
 * however many of its three steps it needs, in this order:
 *  1. done:    KEYS[1..nd]      field + expire-at (unix s: end of the
 *              event's day + ttl_days, never below now + lease) each;
 *  2. release: KEYS[nd+1..nd+nr] field each; deleted only while it is still
 *              our own processing claim;
 *  3. claim:   the remaining KEYS, field each.
 * ARGV[1] owner, ARGV[2] lease_ms, ARGV[3] nd, ARGV[4] nr, then the
 * per-key arguments in KEYS order. Returns one character per claim key:
 * '0' claimed, '1' duplicate, '2' in flight (a single bulk string keeps the
 * reply small for 10k ids); "" when nothing was claimed.
 */
static const char idem_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local owner = ARGV[1]\n"
    "local lease = tonumber(ARGV[2])\n"
    "local nd = tonumber(ARGV[3])\n"
    "local nr = tonumber(ARGV[4])\n"
    "local min_at = tonumber(t[1]) + math.ceil(lease / 1000)\n"
    "local a = 5\n"
    "local expiring = {}\n"
    "for i = 1, nd do\n"
    "  local k = KEYS[i]\n"
    "  redis.call('HSET', k, ARGV[a], 'd')\n"
    "  if not expiring[k] then\n"
    "    expiring[k] = true\n"
    "    local at = tonumber(ARGV[a + 1])\n"
    "    if at < min_at then at = min_at end\n"
    "    redis.call('EXPIREAT', k, at)\n"
    "  end\n"
    "  a = a + 2\n"
    "end\n"
    "for i = nd + 1, nd + nr do\n"
    "  local k = KEYS[i]\n"
    "  local v = redis.call('HGET', k, ARGV[a])\n"
    "  if v and v ~= 'd' and string.match(v, '^p(.*):%d+$') == owner then\n"
    "    redis.call('HDEL', k, ARGV[a])\n"
    "  end\n"
    "  a = a + 1\n"
    "end\n"
    "local mine = 'p' .. owner .. ':' .. string.format('%d', now + lease)\n"
    "local out = {}\n"
    "local seen = {}\n"
    "local touched = {}\n"
    "for i = nd + nr + 1, #KEYS do\n"
    "  local k = KEYS[i]\n"
    "  local f = ARGV[a]\n"
    "  local sk = k .. '\\0' .. f\n"
    "  local st = '1'\n"
    "  a = a + 1\n"
    "  if not seen[sk] then\n"
    "    seen[sk] = true\n"
    "    local v = redis.call('HGET', k, f)\n"
    "    if not v then\n"
    "      st = '0'\n"
    "    elseif v ~= 'd' then\n"
    "      local o, e = string.match(v, '^p(.*):(%d+)$')\n"
    "      if o == owner or not e or tonumber(e) <= now then\n"
    "        st = '0'\n"
    "      else\n"
    "        st = '2'\n"
    "      end\n"
    "    end\n"
    "    if st == '0' then\n"
    "      redis.call('HSET', k, f, mine)\n"
    "      if not touched[k] then\n"
    "        touched[k] = true\n"
    "        if redis.call('PTTL', k) < lease then\n"
    "          redis.call('PEXPIRE', k, lease)\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = st\n"
    "end\n"
    "return table.concat(out)\n";

struct idem {
    redisContext *rc;               /* NULL while disconnected */
    bool rc_fresh;                  /* rc was opened during the current call */
    bool cached;                    /* the script is in this server's cache */
    char *host;                     /* owned */
    int port;                       /* TCP port */
    char *user;                     /* owned, NULL = AUTH without user */
    char *password;                 /* owned, NULL = no AUTH; never printed */
    int db;                         /* SELECT db when > 0 */
    struct timeval tv;              /* connect + command timeout */
    char prefix[IDEM_NS_MAX + 16];  /* "cs:idem:<ns>" */
    char owner[IDEM_OWNER_MAX + 1]; /* lease owner token */
    char lease_str[IDEM_NUM_MAX];   /* lease_ms in decimal */
    int ttl_days; /* done markers live until day end + ttl_days */
    int buckets;  /* buckets_per_day */
    int lease_ms; /* processing lease */
    char sha[41]; /* hex SHA-1 of the script body */
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
    char buf[IDEM_NUM_MAX];
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
static bool parse_url(struct idem *idem, const char *url, char *errstr,
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
        snprintf(errstr, errstr_size, "redis_url must start with redis://");
        return false;
    }
    rest = url + sizeof(scheme) - 1;
    at = strrchr(rest, '@');
    hp = rest;
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        if (!colon) {
            snprintf(errstr, errstr_size,
                     "redis_url: credentials must be ':password@' or "
                     "'user:password@'");
            return false;
        }
        if (colon > rest) {
            idem->user = dup_decoded(rest, (size_t)(colon - rest));
            if (!idem->user)
                goto out_bad_escape;
        }
        if (at > colon + 1) {
            idem->password = dup_decoded(colon + 1, (size_t)(at - (colon + 1)));
            if (!idem->password)
                goto out_bad_escape;
        }
        hp = at + 1;
    }

    slash = strchr(hp, '/');
    hp_len = slash ? (size_t)(slash - hp) : strlen(hp);
    if (hp[0] == '[') {
        const char *close = memchr(hp, ']', hp_len);
        if (!close || close == hp + 1) {
            snprintf(errstr, errstr_size, "redis_url: bad IPv6 host");
            return false;
        }
        idem->host = strndup(hp + 1, (size_t)(close - hp - 1));
        host_end = close + 1;
        if (host_end < hp + hp_len) {
            if (*host_end != ':') {
                snprintf(errstr, errstr_size, "redis_url: bad host");
                return false;
            }
            port_str = host_end + 1;
        }
    } else {
        const char *colon = memchr(hp, ':', hp_len);
        host_end = colon ? colon : hp + hp_len;
        if (host_end == hp) {
            snprintf(errstr, errstr_size, "redis_url: missing host");
            return false;
        }
        idem->host = strndup(hp, (size_t)(host_end - hp));
        if (colon)
            port_str = colon + 1;
    }
    if (!idem->host) {
        snprintf(errstr, errstr_size, "out of memory");
        return false;
    }

    idem->port = IDEM_DEFAULT_PORT;
    if (port_str) {
        if (!parse_int(port_str, (size_t)(hp + hp_len - port_str), 1, 65535,
                       &v)) {
            snprintf(errstr, errstr_size, "redis_url: bad port");
            return false;
        }
        idem->port = (int)v;
    }

    idem->db = 0;
    if (slash && slash[1] != '\0') {
        if (!parse_int(slash + 1, strlen(slash + 1), 0, INT_MAX, &v)) {
            snprintf(errstr, errstr_size,
                     "redis_url: database must be a number");
            return false;
        }
        idem->db = (int)v;
    }
    return true;

out_bad_escape:
    snprintf(errstr, errstr_size,
             "redis_url: bad %%-escape in credentials (or out of memory)");
    return false;
}

static bool ns_valid(const char *ns)
{
    size_t len = strlen(ns);

    if (len == 0 || len > IDEM_NS_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = ns[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

/* "<hostname, at most 16 chars>:<pid>:<8 random hex>", at most 40 bytes. */
static bool owner_generate(char *buf, size_t size)
{
    char host[256];
    unsigned char rnd[4];

    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "host");
    host[sizeof(host) - 1] = '\0';
    host[20] = '\0';
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return false;
    snprintf(buf, size, "%.16s:%d:%02x%02x%02x%02x", host, (int)getpid(),
             rnd[0], rnd[1], rnd[2], rnd[3]);
    return true;
}

static void script_sha(const char *body, char hex[41])
{
    unsigned char md[SHA_DIGEST_LENGTH];

    SHA1((const unsigned char *)body, strlen(body), md);
    for (size_t i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

struct idem *idem_new(const struct idem_opts *opts, char *errstr,
                      size_t errstr_size)
{
    struct idem *idem;

    if (!opts || !opts->redis_url || !opts->ns) {
        snprintf(errstr, errstr_size, "redis_url and ns are required");
        return NULL;
    }
    if (opts->timeout_ms <= 0 || opts->lease_ms <= 0 || opts->ttl_days < 0 ||
        opts->ttl_days > 3650 || opts->buckets_per_day < 1 ||
        opts->buckets_per_day > (1 << 24)) {
        snprintf(errstr, errstr_size,
                 "need timeout_ms > 0, lease_ms > 0, ttl_days 0..3650, "
                 "buckets_per_day 1..16777216");
        return NULL;
    }
    if (!ns_valid(opts->ns)) {
        snprintf(errstr, errstr_size,
                 "ns must be 1..%d chars of [A-Za-z0-9_.-]", IDEM_NS_MAX);
        return NULL;
    }
    if (opts->owner &&
        (opts->owner[0] == '\0' || strlen(opts->owner) > IDEM_OWNER_MAX)) {
        snprintf(errstr, errstr_size, "owner must be 1..%d bytes",
                 IDEM_OWNER_MAX);
        return NULL;
    }

    idem = calloc(1, sizeof(*idem));
    if (!idem) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    if (!parse_url(idem, opts->redis_url, errstr, errstr_size))
        goto out_free_idem;
    if (opts->owner) {
        snprintf(idem->owner, sizeof(idem->owner), "%s", opts->owner);
    } else if (!owner_generate(idem->owner, sizeof(idem->owner))) {
        snprintf(errstr, errstr_size, "cannot generate an owner token");
        goto out_free_idem;
    }
    snprintf(idem->prefix, sizeof(idem->prefix), "cs:idem:%s", opts->ns);
    snprintf(idem->lease_str, sizeof(idem->lease_str), "%d", opts->lease_ms);
    idem->tv.tv_sec = opts->timeout_ms / 1000;
    idem->tv.tv_usec = (opts->timeout_ms % 1000) * 1000;
    idem->ttl_days = opts->ttl_days;
    idem->buckets = opts->buckets_per_day;
    idem->lease_ms = opts->lease_ms;
    script_sha(idem_lua, idem->sha);

    /* Best effort: a Redis that is down now is not a configuration error. */
    (void)idem_ping(idem);
    return idem;

out_free_idem:
    idem_free(idem);
    return NULL;
}

static void drop_connection(struct idem *idem)
{
    if (idem->rc) {
        redisFree(idem->rc);
        idem->rc = NULL;
    }
}

void idem_free(struct idem *idem)
{
    if (!idem)
        return;
    drop_connection(idem);
    free(idem->host);
    free(idem->user);
    if (idem->password) {
        OPENSSL_cleanse(idem->password, strlen(idem->password));
        free(idem->password);
    }
    free(idem);
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

/* One request/response exchange (or a pipeline of them), counted. Returns
 * the reply (caller frees with freeReplyObject) or NULL with rc->err set;
 * *saved_errno gets errno right after the failure. */
static redisReply *command_argv(struct idem *idem, int argc, const char **argv,
                                const size_t *argvlen, int *saved_errno)
{
    struct sigpipe_guard g;
    redisReply *r;

    sigpipe_block(&g);
    idem->round_trips++;
    errno = 0;
    r = redisCommandArgv(idem->rc, argc, argv, argvlen);
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
static enum cs_err handshake(struct idem *idem, char *errstr,
                             size_t errstr_size)
{
    const char *argv[3];
    size_t argvlen[3];
    char db_str[IDEM_NUM_MAX];
    int sent = 0;
    enum cs_err err = CS_ERR_OK;
    struct sigpipe_guard g;

    if (idem->password) {
        int argc = 0;
        argv[argc] = "AUTH";
        argvlen[argc++] = 4;
        if (idem->user) {
            argv[argc] = idem->user;
            argvlen[argc++] = strlen(idem->user);
        }
        argv[argc] = idem->password;
        argvlen[argc++] = strlen(idem->password);
        if (redisAppendCommandArgv(idem->rc, argc, argv, argvlen) != REDIS_OK)
            goto out_oom;
        sent++;
    }
    if (idem->db > 0) {
        snprintf(db_str, sizeof(db_str), "%d", idem->db);
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = db_str;
        argvlen[1] = strlen(db_str);
        if (redisAppendCommandArgv(idem->rc, 2, argv, argvlen) != REDIS_OK)
            goto out_oom;
        sent++;
    }
    if (sent == 0)
        return CS_ERR_OK;

    sigpipe_block(&g);
    idem->round_trips++;
    for (int i = 0; i < sent; i++) {
        void *p = NULL;
        redisReply *r;
        bool is_auth = idem->password && i == 0;
        char code[32];

        if (redisGetReply(idem->rc, &p) != REDIS_OK) {
            snprintf(errstr, errstr_size, "redis %s:%d: %s", idem->host,
                     idem->port, idem->rc->errstr);
            err = CS_ERR_REDIS_UNAVAILABLE;
            break;
        }
        r = p;
        if (r->type == REDIS_REPLY_ERROR && err == CS_ERR_OK) {
            error_code(r, code, sizeof(code));
            snprintf(errstr, errstr_size, "redis %s:%d: %s rejected (%s)",
                     idem->host, idem->port, is_auth ? "AUTH" : "SELECT", code);
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

static enum cs_err ensure_connected(struct idem *idem, char *errstr,
                                    size_t errstr_size)
{
    enum cs_err err;

    if (idem->rc)
        return CS_ERR_OK;
    idem->rc = redisConnectWithTimeout(idem->host, idem->port, idem->tv);
    if (!idem->rc) {
        snprintf(errstr, errstr_size, "redis: out of memory");
        return CS_ERR_REDIS_UNAVAILABLE;
    }
    if (idem->rc->err) {
        snprintf(errstr, errstr_size, "redis connect %s:%d: %s", idem->host,
                 idem->port, idem->rc->errstr);
        drop_connection(idem);
        return CS_ERR_REDIS_UNAVAILABLE;
    }
    if (redisSetTimeout(idem->rc, idem->tv) != REDIS_OK) {
        snprintf(errstr, errstr_size, "redis %s:%d: cannot set timeout",
                 idem->host, idem->port);
        drop_connection(idem);
        return CS_ERR_REDIS_UNAVAILABLE;
    }
    (void)redisEnableKeepAlive(idem->rc);
    idem->rc_fresh = true;
    idem->cached = false;
    err = handshake(idem, errstr, errstr_size);
    if (err != CS_ERR_OK)
        drop_connection(idem);
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

/*
 * Sends one command, connecting first if needed; retries once on a fresh
 * connection when a reused one turns out closed. On success *out is the
 * reply (caller frees with freeReplyObject; it may be an error reply).
 */
static enum cs_err exec_argv(struct idem *idem, int argc, const char **argv,
                             const size_t *argvlen, redisReply **out,
                             char *errstr, size_t errstr_size)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        enum cs_err err;
        bool reused;
        int saved_errno = 0;
        redisReply *r;

        idem->rc_fresh = false;
        err = ensure_connected(idem, errstr, errstr_size);
        if (err != CS_ERR_OK)
            return err;
        reused = !idem->rc_fresh;
        r = command_argv(idem, argc, argv, argvlen, &saved_errno);
        if (r) {
            *out = r;
            return CS_ERR_OK;
        }
        snprintf(errstr, errstr_size, "redis %s:%d: %s", idem->host, idem->port,
                 idem->rc->errstr);
        if (!(reused && connection_was_closed(idem->rc, saved_errno))) {
            drop_connection(idem);
            break;
        }
        drop_connection(idem);
        LOG_DEBUG("redis connection was closed, reconnecting host=%s port=%d",
                  idem->host, idem->port);
    }
    return CS_ERR_REDIS_UNAVAILABLE;
}

static bool has_prefix(const redisReply *r, const char *p)
{
    size_t len = strlen(p);
    return r->len >= len && memcmp(r->str, p, len) == 0;
}

/* Maps an error reply: states a retry can outlive become UNAVAILABLE. */
static enum cs_err error_reply(struct idem *idem, const redisReply *r,
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
            snprintf(errstr, errstr_size, "redis %s:%d: %s", idem->host,
                     idem->port, code);
            /* NOAUTH: the server gained a password; re-AUTH on reconnect. */
            drop_connection(idem);
            return CS_ERR_REDIS_UNAVAILABLE;
        }
    }
    snprintf(errstr, errstr_size, "redis %s:%d: %.*s", idem->host, idem->port,
             (int)(r->len > 200 ? 200 : r->len), r->str);
    return CS_ERR_REDIS_PROTOCOL;
}

bool idem_ping(struct idem *idem)
{
    const char *argv[1] = {"PING"};
    size_t argvlen[1] = {4};
    redisReply *r = NULL;
    char errstr[256];
    bool ok;

    if (exec_argv(idem, 1, argv, argvlen, &r, errstr, sizeof(errstr)) !=
        CS_ERR_OK)
        return false;
    ok = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    freeReplyObject(r);
    return ok;
}

unsigned long long idem_round_trips(const struct idem *idem)
{
    return idem->round_trips;
}

const char *idem_owner(const struct idem *idem)
{
    return idem->owner;
}

/* ------------------------------------------------------------------------
 * Batches
 * ---------------------------------------------------------------------- */

/* Arguments of one script call: argv[0..2] = EVAL(SHA), script, numkeys;
 * then the keys; then owner, lease, nd, nr; then per-key arguments. */
struct batch {
    int argc;
    const char **argv;     /* owned */
    size_t *argvlen;       /* owned */
    char *keys;            /* owned, n * IDEM_KEY_MAX */
    unsigned char *fields; /* owned, n * IDEM_FIELD_LEN */
    char *nums;            /* owned, nd * IDEM_NUM_MAX (expire-at seconds) */
    char numkeys[IDEM_NUM_MAX];
    char nd[IDEM_NUM_MAX];
    char nr[IDEM_NUM_MAX];
};

/* The three steps of one call (see idem_lua). */
struct steps {
    const struct idem_key *done;
    size_t nd;
    const struct idem_key *release;
    size_t nr;
    const struct idem_key *claim;
    size_t nc;
};

static void batch_free(struct batch *b)
{
    free(b->argv);
    free(b->argvlen);
    free(b->keys);
    free(b->fields);
    free(b->nums);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Writes the bucket key of k into key (IDEM_KEY_MAX bytes) and its field
 * into field; returns the key length and the event's day. */
static size_t key_encode(const struct idem *idem, const struct idem_key *k,
                         char *key, unsigned char *field, int64_t *day)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    uint64_t sel = 0;
    int len;

    SHA256((const unsigned char *)k->id, strlen(k->id), md);
    for (int i = 0; i < 8; i++)
        sel = (sel << 8) | md[i];
    memcpy(field, md + 8, IDEM_FIELD_LEN);
    *day = floor_div(k->event_ms, MS_PER_DAY);
    len = snprintf(key, IDEM_KEY_MAX, "%s:%lld:%llu", idem->prefix,
                   (long long)*day,
                   (unsigned long long)(sel % (uint64_t)idem->buckets));
    return (size_t)len;
}

/* Key i of the call, in KEYS order: done, then release, then claim. */
static const struct idem_key *step_key(const struct steps *st, size_t i)
{
    if (i < st->nd)
        return &st->done[i];
    i -= st->nd;
    if (i < st->nr)
        return &st->release[i];
    return &st->claim[i - st->nr];
}

static enum cs_err batch_build(const struct idem *idem, const struct steps *st,
                               struct batch *b, char *errstr,
                               size_t errstr_size)
{
    size_t n = st->nd + st->nr + st->nc;
    size_t argc = 3 + n + 4 + n + st->nd;
    size_t a;

    memset(b, 0, sizeof(*b));
    if (n > IDEM_BATCH_MAX) {
        snprintf(errstr, errstr_size, "batch of %zu ids exceeds %d", n,
                 IDEM_BATCH_MAX);
        return CS_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        if (!step_key(st, i)->id) {
            snprintf(errstr, errstr_size, "key %zu has no id", i);
            return CS_ERR_INVALID_ARG;
        }
    }
    b->argv = malloc(argc * sizeof(*b->argv));
    b->argvlen = malloc(argc * sizeof(*b->argvlen));
    b->keys = malloc(n * IDEM_KEY_MAX);
    b->fields = malloc(n * IDEM_FIELD_LEN);
    b->nums = malloc((st->nd ? st->nd : 1) * IDEM_NUM_MAX);
    if (!b->argv || !b->argvlen || !b->keys || !b->fields || !b->nums) {
        batch_free(b);
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    b->argc = (int)argc;

    snprintf(b->numkeys, sizeof(b->numkeys), "%zu", n);
    snprintf(b->nd, sizeof(b->nd), "%zu", st->nd);
    snprintf(b->nr, sizeof(b->nr), "%zu", st->nr);
    b->argv[2] = b->numkeys;
    b->argvlen[2] = strlen(b->numkeys);
    a = 3 + n;
    b->argv[a] = idem->owner;
    b->argvlen[a++] = strlen(idem->owner);
    b->argv[a] = idem->lease_str;
    b->argvlen[a++] = strlen(idem->lease_str);
    b->argv[a] = b->nd;
    b->argvlen[a++] = strlen(b->nd);
    b->argv[a] = b->nr;
    b->argvlen[a++] = strlen(b->nr);
    for (size_t i = 0; i < n; i++) {
        char *key = b->keys + i * IDEM_KEY_MAX;
        unsigned char *field = b->fields + i * IDEM_FIELD_LEN;
        int64_t day;

        b->argv[3 + i] = key;
        b->argvlen[3 + i] = key_encode(idem, step_key(st, i), key, field, &day);
        b->argv[a] = (const char *)field;
        b->argvlen[a++] = IDEM_FIELD_LEN;
        if (i < st->nd) {
            char *num = b->nums + i * IDEM_NUM_MAX;
            long long at = ((long long)day + 1 + idem->ttl_days) * S_PER_DAY;
            b->argv[a] = num;
            b->argvlen[a++] = (size_t)snprintf(num, IDEM_NUM_MAX, "%lld", at);
        }
    }
    return CS_ERR_OK;
}

/* Runs the script with the batch's arguments: EVALSHA once this connection
 * has seen the script, EVAL before and on NOSCRIPT. On success *out is a
 * non-error reply the caller frees with freeReplyObject. */
static enum cs_err run_script(struct idem *idem, struct batch *b,
                              redisReply **out, char *errstr,
                              size_t errstr_size)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        bool by_sha = idem->rc && idem->cached;
        redisReply *r = NULL;
        enum cs_err err;

        b->argv[0] = by_sha ? "EVALSHA" : "EVAL";
        b->argvlen[0] = strlen(b->argv[0]);
        b->argv[1] = by_sha ? idem->sha : idem_lua;
        b->argvlen[1] = strlen(b->argv[1]);
        err = exec_argv(idem, b->argc, b->argv, b->argvlen, &r, errstr,
                        errstr_size);
        if (err != CS_ERR_OK)
            return err;
        if (r->type == REDIS_REPLY_ERROR && has_prefix(r, "NOSCRIPT") &&
            by_sha) {
            /* Script cache flushed (SCRIPT FLUSH, restart, failover). */
            freeReplyObject(r);
            if (idem->rc)
                idem->cached = false;
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            err = error_reply(idem, r, errstr, errstr_size);
            freeReplyObject(r);
            return err;
        }
        /* exec_argv may have reconnected; either way the script now sits
         * in the cache of the server this connection talks to. */
        if (idem->rc)
            idem->cached = true;
        *out = r;
        return CS_ERR_OK;
    }
    snprintf(errstr, errstr_size, "redis %s:%d: NOSCRIPT after EVAL",
             idem->host, idem->port);
    return CS_ERR_REDIS_PROTOCOL;
}

enum cs_err idem_settle_claim(struct idem *idem, const struct idem_key *done,
                              size_t nd, const struct idem_key *release,
                              size_t nr, const struct idem_key *claim,
                              size_t nc, enum idem_state *out, char *errstr,
                              size_t errstr_size)
{
    struct steps st = {done, nd, release, nr, claim, nc};
    struct batch b;
    redisReply *r = NULL;
    enum cs_err err;

    if (nd + nr + nc == 0)
        return CS_ERR_OK;
    err = batch_build(idem, &st, &b, errstr, errstr_size);
    if (err != CS_ERR_OK)
        return err;
    err = run_script(idem, &b, &r, errstr, errstr_size);
    batch_free(&b);
    if (err != CS_ERR_OK)
        return err;

    if (r->type != REDIS_REPLY_STRING || r->len != nc) {
        snprintf(errstr, errstr_size,
                 "redis: script returned type %d len %zu for %zu claims",
                 r->type, r->len, nc);
        err = CS_ERR_REDIS_PROTOCOL;
        goto out_free_reply;
    }
    for (size_t i = 0; i < nc; i++) {
        if (r->str[i] < '0' || r->str[i] > '2') {
            snprintf(errstr, errstr_size,
                     "redis: script returned bad state at %zu", i);
            err = CS_ERR_REDIS_PROTOCOL;
            goto out_free_reply;
        }
    }
    for (size_t i = 0; i < nc; i++)
        out[i] = (enum idem_state)(r->str[i] - '0');

out_free_reply:
    freeReplyObject(r);
    return err;
}

enum cs_err idem_claim(struct idem *idem, const struct idem_key *keys, size_t n,
                       enum idem_state *out, char *errstr, size_t errstr_size)
{
    return idem_settle_claim(idem, NULL, 0, NULL, 0, keys, n, out, errstr,
                             errstr_size);
}

enum cs_err idem_mark_done(struct idem *idem, const struct idem_key *keys,
                           size_t n, char *errstr, size_t errstr_size)
{
    return idem_settle_claim(idem, keys, n, NULL, 0, NULL, 0, NULL, errstr,
                             errstr_size);
}

enum cs_err idem_release(struct idem *idem, const struct idem_key *keys,
                         size_t n, char *errstr, size_t errstr_size)
{
    return idem_settle_claim(idem, NULL, 0, keys, n, NULL, 0, NULL, errstr,
                             errstr_size);
}

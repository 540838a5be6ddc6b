/* log - see log.h. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Write-once settings (see DESIGN in log.h). */
static const char *log_worker = "crmsync";
static enum log_level log_min = LOG_LEVEL_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *worker, enum log_level min_level)
{
    log_worker = worker;
    log_min = min_level;
}

bool log_enabled(enum log_level level)
{
    return level >= log_min;
}

bool log_level_parse(const char *name, enum log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return true;
        }
    }
    return false;
}

/* Appends @p s JSON-escaped to buf[*len..cap). Truncates silently. */
static void append_json(char *buf, size_t cap, size_t *len, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s && *len + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*len)++] = '\\';
            buf[(*len)++] = (char)c;
        } else if (c < 0x20) {
            buf[(*len)++] = '\\';
            buf[(*len)++] = 'u';
            buf[(*len)++] = '0';
            buf[(*len)++] = '0';
            buf[(*len)++] = hex[c >> 4];
            buf[(*len)++] = hex[c & 15];
        } else {
            buf[(*len)++] = (char)c;
        }
    }
}

static void append_raw(char *buf, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (*len + n >= cap)
        n = cap - *len - 1;
    memcpy(buf + *len, s, n);
    *len += n;
}

void log_timestamp(char *buf, size_t size)
{
    struct timespec now;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(now.tv_nsec / 1000000L));
}

void log_write(enum log_level level, const char *event_id, const char *fmt, ...)
{
    char msg[2048];
    char line[4096];
    char ts[64];
    size_t len = 0;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    log_timestamp(ts, sizeof(ts));

    append_raw(line, sizeof(line), &len, "{\"ts\":\"");
    append_raw(line, sizeof(line), &len, ts);
    append_raw(line, sizeof(line), &len, "\",\"level\":\"");
    append_raw(line, sizeof(line), &len, level_names[level]);
    append_raw(line, sizeof(line), &len, "\",\"worker\":\"");
    append_json(line, sizeof(line), &len, log_worker);
    if (event_id) {
        append_raw(line, sizeof(line), &len, "\",\"event_id\":\"");
        append_json(line, sizeof(line), &len, event_id);
    }
    append_raw(line, sizeof(line), &len, "\",\"msg\":\"");
    append_json(line, sizeof(line), &len, msg);
    append_raw(line, sizeof(line), &len, "\"}\n");

    flockfile(stdout);
    fwrite(line, 1, len, stdout);
    fflush(stdout);
    funlockfile(stdout);
}

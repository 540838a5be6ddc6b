/*
 * err - the one project error enum.
 *
 * Every fallible action in crmsync returns an `enum cs_err`. The table below
 * is the single source of truth (an X-macro, as libuv's UV_ERRNO_MAP): each
 * row names the code, whether retrying the same work later can succeed, and
 * a short message. The consumer loop uses the retryable bit to choose between
 * "pause and retry" (Redis down, CRM throttling, network) and "dead-letter"
 * (bad input that no retry can fix). Detail text travels separately in a
 * caller-provided `char *errstr, size_t errstr_size` buffer.
 *
 * Thread-safety: all functions are pure and thread-safe.
 */
#ifndef CRMSYNC_ERR_H
#define CRMSYNC_ERR_H

#include <stdbool.h>

/* XX(code, retryable, message) */
#define CS_ERR_MAP(XX)                                                         \
    XX(OK, false, "success")                                                   \
    XX(NOMEM, true, "out of memory")                                           \
    XX(INVALID_ARG, false, "invalid argument")                                 \
    XX(CONFIG, false, "invalid configuration")                                 \
    XX(IO, true, "I/O error")                                                  \
    XX(BAD_FRAME, false, "not Confluent wire format (magic byte or length)")   \
    XX(UNKNOWN_SCHEMA, false, "unknown writer schema id")                      \
    XX(SCHEMA_INCOMPATIBLE, false, "writer schema cannot be resolved")         \
    XX(DECODE, false, "invalid Avro data")                                     \
    XX(INVALID_EVENT, false, "event fails validation")                         \
    XX(REGISTRY_UNAVAILABLE, true, "schema registry unavailable")              \
    XX(REDIS_UNAVAILABLE, true, "redis unavailable")                           \
    XX(REDIS_PROTOCOL, true, "unexpected redis reply")                         \
    XX(IN_FLIGHT, true, "effect is being processed by another worker")         \
    XX(HTTP_NETWORK, true, "network error talking to HTTP peer")               \
    XX(HTTP_TIMEOUT, true, "HTTP request timed out")                           \
    XX(HTTP_THROTTLED, true, "throttled by peer (429), waiting Retry-After")   \
    XX(HTTP_SERVER, true, "peer returned a server error (5xx/408)")            \
    XX(HTTP_CLIENT, false, "peer rejected the request (4xx)")                  \
    XX(AUTH, true, "authentication with the peer failed")                      \
    XX(CRM_REJECTED, false, "CRM rejected the operation")                      \
    XX(CRM_PROTOCOL, true, "unparseable CRM response")                         \
    XX(ESP_UNAVAILABLE, true, "ESP unavailable (network, timeout, 5xx)")       \
    XX(ESP_FAULT, false, "ESP answered a SOAP fault")                          \
    XX(ESP_BATCH_TOO_LARGE, false, "ESP batch too large: split and resend")    \
    XX(KAFKA, true, "kafka error")                                             \
    XX(KAFKA_FATAL, false, "fatal kafka error")                                \
    XX(DLQ_PRODUCE, true, "could not produce to the dead-letter topic")        \
    XX(BARRIER_TIMEOUT, false, "consumer group barrier not reached in time")   \
    XX(JOB_FAILED, false, "job failed (see its status)")                       \
    XX(SHUTDOWN, true, "shutting down")

enum cs_err {
#define CS_ERR_ENUM(code, retry, msg) CS_ERR_##code,
    CS_ERR_MAP(CS_ERR_ENUM)
#undef CS_ERR_ENUM
        CS_ERR__COUNT /* never returned */
};

/** @returns a static message for @p err ("unknown error" if out of range). */
const char *cs_err_str(enum cs_err err);

/** @returns the symbolic name, e.g. "REDIS_UNAVAILABLE" (static string). */
const char *cs_err_name(enum cs_err err);

/** @returns true when the same work may succeed if retried later. */
bool cs_err_retryable(enum cs_err err);

#endif

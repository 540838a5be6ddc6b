/*
 * http_multi - concurrent requests of one http_client. See http_multi.h.
 *
 * Each slot is one easy handle and at most one request. A slot's request is
 * either on the wire (active) or waiting to (re)start at due_ms; once final
 * it is handed back by http_multi_wait. The per-attempt steps are the ones
 * http_request uses (http_internal.h), so the rules are identical.
 */
#include "common/http_multi.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/http_internal.h"
#include "common/log.h"

#define HM_MAX_SLOTS 64

struct hm_slot {
    CURL *easy;                 /* owned; keeps this slot's connection */
    struct http_multi_req *req; /* borrowed; NULL = free slot */
    struct curl_slist *hdrs;    /* owned while req is set */
    struct http_attempt at;     /* current attempt when active */
    int attempt;                /* 0-based attempt number */
    long long due_ms;           /* not (re)started before this (backoff) */
    bool active;                /* transfer added to the multi handle */
    bool final;                 /* req's out fields are set: hand it back */
};

struct http_multi {
    struct http_client *c; /* borrowed */
    CURLM *cm;             /* owned */
    struct hm_slot *slots; /* owned, nslots */
    size_t nslots;
    size_t active;      /* transfers on the wire */
    size_t outstanding; /* slots with a request */
};

struct http_multi *http_multi_new(struct http_client *c, int slots,
                                  char *errstr, size_t errstr_size)
{
    struct http_multi *hm;

    if (slots < 1 || slots > HM_MAX_SLOTS) {
        snprintf(errstr, errstr_size, "http_multi: slots must be 1..%d",
                 HM_MAX_SLOTS);
        return NULL;
    }
    hm = calloc(1, sizeof(*hm));
    if (!hm)
        goto out_nomem;
    hm->c = c;
    hm->nslots = (size_t)slots;
    hm->slots = calloc(hm->nslots, sizeof(*hm->slots));
    hm->cm = curl_multi_init();
    if (!hm->slots || !hm->cm)
        goto out_nomem;
    /* Keep one idle connection per slot (plus one) between calls. */
    curl_multi_setopt(hm->cm, CURLMOPT_MAXCONNECTS, (long)slots + 1);
    for (size_t i = 0; i < hm->nslots; i++) {
        hm->slots[i].easy = curl_easy_init();
        if (!hm->slots[i].easy)
            goto out_nomem;
    }
    return hm;
out_nomem:
    snprintf(errstr, errstr_size, "out of memory");
    http_multi_free(hm);
    return NULL;
}

/* Takes the slot's transfer off the wire. */
static void slot_detach(struct http_multi *hm, struct hm_slot *s)
{
    if (!s->active)
        return;
    curl_multi_remove_handle(hm->cm, s->easy);
    s->active = false;
    hm->active--;
}

/* Frees what the slot holds for its request and makes it free. */
static void slot_release(struct http_multi *hm, struct hm_slot *s)
{
    slot_detach(hm, s);
    free(s->at.body.data);
    free(s->at.hc.content_type);
    memset(&s->at, 0, sizeof(s->at));
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    s->req = NULL;
    s->final = false;
    hm->outstanding--;
}

void http_multi_free(struct http_multi *hm)
{
    if (!hm)
        return;
    for (size_t i = 0; hm->slots && i < hm->nslots; i++) {
        if (hm->slots[i].req)
            slot_release(hm, &hm->slots[i]);
        if (hm->slots[i].easy)
            curl_easy_cleanup(hm->slots[i].easy);
    }
    if (hm->cm)
        curl_multi_cleanup(hm->cm);
    free(hm->slots);
    free(hm);
}

size_t http_multi_capacity(const struct http_multi *hm)
{
    long hint = http_dop_hint(hm->c);

    if (hint > 0 && (size_t)hint < hm->nslots)
        return (size_t)hint;
    return hm->nslots;
}

size_t http_multi_outstanding(const struct http_multi *hm)
{
    return hm->outstanding;
}

enum cs_err http_multi_add(struct http_multi *hm, struct http_multi_req *req,
                           char *errstr, size_t errstr_size)
{
    struct hm_slot *s = NULL;

    for (size_t i = 0; i < hm->nslots && !s; i++)
        if (!hm->slots[i].req)
            s = &hm->slots[i];
    if (!s) {
        snprintf(errstr, errstr_size, "http_multi: all %zu slots busy",
                 hm->nslots);
        return CS_ERR_INVALID_ARG;
    }
    s->hdrs = http_build_headers(req->headers, req->nheaders);
    if (!s->hdrs) {
        snprintf(errstr, errstr_size, "out of memory");
        return CS_ERR_NOMEM;
    }
    memset(&req->resp, 0, sizeof(req->resp));
    req->rc = CS_ERR_OK;
    req->errstr[0] = '\0';
    s->req = req;
    s->attempt = 0;
    s->due_ms = 0;
    s->final = false;
    hm->outstanding++;
    return CS_ERR_OK;
}

static const char *req_kind(const struct http_multi_req *req)
{
    return req->metric_kind ? req->metric_kind : "other";
}

/* Starts every waiting request whose backoff is over, while the gate is
 * open and capacity allows; a request the gate would hold beyond
 * max_inline_wait_ms becomes final (THROTTLED, not sent). Returns the
 * earliest monotonic time at which a waiting request may start. */
static long long start_ready(struct http_multi *hm)
{
    long long next = LLONG_MAX;
    size_t cap = http_multi_capacity(hm);

    for (size_t i = 0; i < hm->nslots; i++) {
        struct hm_slot *s = &hm->slots[i];
        struct http_multi_req *req = s->req;
        long long now = http_now_ms();
        long long gate_wait;
        enum cs_err rc;

        if (!req || s->active || s->final)
            continue;
        if (s->due_ms > now) {
            next = s->due_ms < next ? s->due_ms : next;
            continue;
        }
        /* The 429 gate: nothing of this client is sent before it opens. */
        rc = http_gate_check(hm->c, req->method, req_kind(req), &gate_wait,
                             &req->resp, req->errstr, sizeof(req->errstr));
        if (rc != CS_ERR_OK) {
            req->rc = rc;
            s->final = true;
            continue;
        }
        if (gate_wait > 0) {
            next = now + gate_wait < next ? now + gate_wait : next;
            continue;
        }
        if (hm->active >= cap)
            continue; /* a finishing transfer wakes us */
        http_attempt_start(hm->c, s->easy, &s->at, req->method, req->url,
                           s->hdrs, req->body, req->body_len);
        curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
        if (curl_multi_add_handle(hm->cm, s->easy) != CURLM_OK) {
            snprintf(req->errstr, sizeof(req->errstr),
                     "curl_multi_add_handle failed");
            req->rc = CS_ERR_NOMEM;
            s->final = true;
            continue;
        }
        s->active = true;
        hm->active++;
    }
    return next;
}

/* Accounts every transfer curl reports done: retry later or final.
 * Returns whether any was. */
static bool collect_done(struct http_multi *hm)
{
    bool any = false;
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(hm->cm, &left)) != NULL) {
        struct hm_slot *s = NULL;
        struct http_multi_req *req;
        long status = 0;
        long long wait = 0;
        CURLcode cc;

        if (msg->msg != CURLMSG_DONE)
            continue;
        cc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        if (!s || !s->req)
            continue;
        req = s->req;
        if (cc == CURLE_OK)
            curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
        slot_detach(hm, s);
        any = true;
        if (http_attempt_end(hm->c, &s->at, cc, status, req->method,
                             req_kind(req), s->attempt, &req->resp, &req->rc,
                             &wait, req->errstr, sizeof(req->errstr))) {
            s->attempt++;
            s->due_ms = http_now_ms() + wait;
        } else {
            s->final = true;
        }
    }
    return any;
}

/* Hands back one final request (its slot freed), or NULL. */
static struct http_multi_req *take_final(struct http_multi *hm)
{
    for (size_t i = 0; i < hm->nslots; i++) {
        struct hm_slot *s = &hm->slots[i];
        if (s->req && s->final) {
            struct http_multi_req *req = s->req;
            slot_release(hm, s);
            return req;
        }
    }
    return NULL;
}

struct http_multi_req *http_multi_wait(struct http_multi *hm)
{
    for (;;) {
        struct http_multi_req *done = take_final(hm);
        long long next;
        long timeout = 1000;
        int running = 0;

        if (done || hm->outstanding == 0)
            return done;
        next = start_ready(hm);
        if (hm->active > 0) {
            if (curl_multi_perform(hm->cm, &running) != CURLM_OK)
                LOG_WARN("curl_multi_perform failed");
            /* Something ended: hand it back, or schedule its retry and
               start what waited for the freed capacity. */
            if (collect_done(hm))
                continue;
        }
        /* Sleep until a socket is ready, curl's timer fires, or the next
           waiting request may start (backoff over or gate open). */
        if (next != LLONG_MAX) {
            long long left = next - http_now_ms();
            timeout = left < 0 ? 0 : left > 1000 ? 1000 : (long)left;
        }
        if (hm->active > 0) {
            long ct = -1;
            curl_multi_timeout(hm->cm, &ct);
            if (ct >= 0 && ct < timeout)
                timeout = ct;
        }
        if (timeout > 0)
            curl_multi_poll(hm->cm, NULL, 0, (int)timeout, NULL);
    }
}

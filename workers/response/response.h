/*
 * response worker - ESP reactions (open, click, reply, autoresponder,
 * unsubscribe) become campaign responses on the CRM campaign of the mailing.
 *
 * mapping.c turns one decoded ResponseEvent into a campaignresponse record
 * and decides what is skipped; handler.c runs a batch through Redis
 * idempotency and the CRM connector; main.c wires the runtime and the loop.
 */
#ifndef CRMSYNC_RESPONSE_H
#define CRMSYNC_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <avro.h>

#include "common/config.h"
#include "common/err.h"

#define RESPONSE_TOPIC_DEFAULT "crmsync.response.events"
#define RESPONSE_READER_SCHEMA "crmsync.response.ResponseEvent"

/* Worker-specific settings (the "response." config section). */
struct response_config {
    char *mode;                 /* "all" | "unique": default for tenants */
    char *tenant_modes;         /* "tenantA=unique,tenantB=all" overrides */
    bool filter_machine_opens;  /* drop opens that look automated */
    int machine_open_window_s;  /* opens this soon after sending are bots */
    bool filter_scanner_clicks; /* drop clicks that look like scanners */
    int scanner_click_window_s; /* clicks this soon after sending: scanner */
};

extern const struct config_field response_config_fields[];
extern const size_t response_config_fields_cnt;

/* One event, fields borrowed from the decoded Avro value. */
struct response_event {
    const char *event_id;
    const char *tenant;
    const char *source_system;
    int64_t occurred_at;     /* ms since epoch */
    const char *entity_type; /* contact | lead | account, or NULL */
    const char *entity_id;   /* CRM GUID, or NULL */
    const char *email;       /* or NULL */
    const char *type;        /* OPEN | CLICK | REPLY | AUTORESPONDER | ... */
    const char *mailing_id;
    const char *mailing_name; /* or NULL */
    const char *campaign_id;  /* CRM campaign GUID, or NULL */
    bool from_copied_list;
    const char *url;        /* or NULL */
    const char *link_name;  /* or NULL */
    const char *subject;    /* or NULL */
    const char *user_agent; /* or NULL */
    bool has_sent_at;
    int64_t sent_at; /* ms since epoch, when has_sent_at */
};

/**
 * @brief Reads and validates a ResponseEvent record.
 * @returns CS_ERR_OK, or CS_ERR_INVALID_EVENT with errstr saying why.
 */
enum cs_err response_event_read(avro_value_t *rec, struct response_event *ev,
                                char *errstr, size_t errstr_size);

/**
 * @brief Should this event produce no campaign response?
 * @returns NULL to process it, else a static metrics label: "no_campaign",
 *          "copied_list", "machine_open" or "scanner_click".
 */
const char *response_skip_reason(const struct response_config *rc,
                                 const struct response_event *ev);

/**
 * @brief The idempotency key of the event's effect: the event id in mode
 *        "all"; mailing + recipient + type in mode "unique", so only the
 *        first reaction of each type per recipient and mailing counts.
 */
void response_effect_key(const struct response_event *ev, bool unique,
                         char *buf, size_t size);

/**
 * @brief The campaignresponse JSON body for a create-only PATCH.
 * @returns malloc'd JSON text (caller frees), or NULL on out of memory.
 */
char *response_build_body(const struct response_event *ev);

struct runtime;
struct response_handler;

/** @returns a handler (free with response_handler_free) or NULL + errstr. */
struct response_handler *response_handler_new(const struct response_config *rc,
                                              struct runtime *rt, char *errstr,
                                              size_t errstr_size);
void response_handler_free(struct response_handler *h);

struct kl_item;
/** @brief kl_handler.process for the response worker. */
void response_handler_process(void *ctx, struct kl_item **items, size_t n);
/** @brief kl_handler.idle: writes carried idempotency markers. */
void response_handler_idle(void *ctx);
/** @brief kl_handler.abandon: releases our leases of unfinished items. */
void response_handler_abandon(void *ctx, struct kl_item **items, size_t n);
/** @brief kl_handler.healthy: Redis and the CRM answer. */
bool response_handler_healthy(void *ctx);

#endif

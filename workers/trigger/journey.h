/*
 * journey - journey definitions of the trigger worker: parsed from YAML,
 * validated with clear errors at start, compiled into a flat program.
 *
 * A journey file looks like this (docs/trigger.md has the full reference):
 *
 *   journeys:
 *     - id: abandoned-cart
 *       tenants: [acme]                    # optional, default: every tenant
 *       start:
 *         trigger: cart.abandoned
 *         kind: CUSTOM                     # optional
 * BEHAVIOURAL|BUSINESS|CUSTOM conditions:                      # all must hold
 *           - {attribute: cart_value, op: gte, value: "50"}
 *           - {attribute: country, op: in, values: [DE, AT]}
 *       reentry: once                      # once | always | {once_per: 30d}
 *       exit_on: [account.closed]
 *       steps:
 *         - reminder:
 *             action: {type: esp_mail, mailing: "1001", list: "2001"}
 *             first_after: 1h
 *             every: 24h
 *             max: 3
 *             until: [checkout.completed]
 *             deadline: 7d
 *         - branch:
 *             on: opened                   # opened | clicked
 *             within: 2d
 *             then: [ ...steps... ]
 *             else: [ ...steps... ]
 *
 * Compilation: steps (with the nested then/else lists of branches) become
 * one flat array. A BRANCH at pc p has then_pc = p + 1; when the branch
 * has an else list, the then-steps (possibly none) are followed by a JUMP
 * past the else-steps and else_pc is the first else-step; without an else
 * list there is no JUMP and else_pc is the step after the then-steps.
 * Running past the last step ends the journey. pc fits in a byte
 * (JOURNEY_MAX_STEPS; the JUMPs count).
 *
 * A branch needs a mail before it on its path: an esp_mail action or
 * reminder earlier in its list or in an enclosing list (mails inside an
 * earlier branch's then/else lists do not count), or a start trigger
 * email.delivered / email.sent with the condition mailing_id eq <id>.
 *
 * Templates: action strings may contain {{attr.NAME}}, {{profile.id}},
 * {{profile.type}}, {{profile.email}}, {{journey.id}}, {{tenant}},
 * {{iteration}}; anything else is a load error. Attribute names used by
 * templates or by wait.until_attribute are collected in journey.attrs: the
 * engine stores exactly those with each journey instance.
 *
 * Ownership: a journey_set owns every string and array in it;
 * journey_set_free releases them. Thread-safety: immutable after load,
 * shared read-only by the consumer and timer threads.
 */
#ifndef CRMSYNC_TRIGGER_JOURNEY_H
#define CRMSYNC_TRIGGER_JOURNEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define JOURNEY_MAX_STEPS 250 /* compiled steps per journey */
#define JOURNEY_MAX_DEPTH 8   /* nesting of branches */
#define JOURNEY_ID_MAX    40  /* [a-z0-9._-]{1,40} */

/* Canonical behavioural trigger names the engine reacts to itself. */
#define JOURNEY_TRIGGER_OPENED      "email.opened"
#define JOURNEY_TRIGGER_CLICKED     "email.clicked"
#define JOURNEY_TRIGGER_NOT_OPENED  "email.not_opened"
#define JOURNEY_TRIGGER_NOT_CLICKED "email.not_clicked"

enum jr_kind_filter { /* start.kind; values match the Avro TriggerKind */
                      JR_KIND_ANY = -1,
                      JR_KIND_BEHAVIOURAL = 0,
                      JR_KIND_BUSINESS = 1,
                      JR_KIND_CUSTOM = 2,
};

enum jr_op {
    JR_OP_EQ,      /* value */
    JR_OP_NE,      /* value (true when the attribute is missing) */
    JR_OP_IN,      /* values */
    JR_OP_EXISTS,  /* no value */
    JR_OP_MISSING, /* no value */
    JR_OP_GT,      /* numeric compare (both sides parse as numbers; else
                      the condition is false) */
    JR_OP_GTE,
    JR_OP_LT,
    JR_OP_LTE,
    JR_OP_PREFIX, /* value */
};

struct jr_condition {
    char *attr; /* attribute name */
    enum jr_op op;
    char **values; /* 1 for eq/ne/gt../prefix, >= 1 for in, 0 otherwise */
    size_t nvalues;
};

enum jr_reentry {
    JR_REENTRY_ONCE,   /* a profile enters at most once (while remembered) */
    JR_REENTRY_ALWAYS, /* every start trigger starts an instance, except
                          while one is active */
    JR_REENTRY_WINDOW, /* once per reentry_window_ms (from the last start) */
};

enum jr_action_type {
    JR_ACT_CRM_TRIGGER, /* Customer Insights - Journeys custom trigger */
    JR_ACT_ESP_MAIL,    /* transactional/event mail through the ESP */
    JR_ACT_CRM_TASK,    /* a task activity in the CRM */
    JR_ACT_PRODUCE,     /* a TriggerEvent to a Kafka topic */
};

struct jr_kv {
    char *name; /* parameter / attribute name */
    char *tmpl; /* template text */
};

struct jr_action {
    enum jr_action_type type;
    /* crm_trigger: the Dataverse action name, ^msdynmkt_[a-z0-9_]+$;
       produce: the trigger_name of the produced event */
    char *name;
    char *mailing;     /* esp_mail: decimal mailing id */
    char *list;        /* esp_mail: decimal recipient list id */
    char *topic;       /* produce: topic */
    char *subject;     /* crm_task: template (required) */
    char *description; /* crm_task: template or NULL */
    char *owner;       /* crm_task: template of a systemuser GUID or NULL */
    int64_t due_in_ms; /* crm_task: scheduledend = fire time + this; 0 none */
    struct jr_kv *params; /* crm_trigger parameters / produce attributes */
    size_t nparams;
};

enum jr_step_kind {
    JR_STEP_ACTION,
    JR_STEP_WAIT,
    JR_STEP_REMINDER,
    JR_STEP_BRANCH,
    JR_STEP_JUMP, /* compiled: end of a then-list */
};

struct jr_step {
    enum jr_step_kind kind;
    int line;                /* 1-based YAML line of the step (messages) */
    struct jr_action action; /* ACTION, REMINDER */
    /* WAIT: exactly one of for / until / until_attribute */
    int64_t wait_ms;   /* wait.for */
    int64_t until_ms;  /* wait.until: absolute UTC ms (ISO 8601 in YAML) */
    char *until_attr;  /* wait.until_attribute: ISO 8601 or epoch-ms value */
    int64_t offset_ms; /* wait.offset (may be negative), with until_attr */
    /* REMINDER */
    int64_t first_after_ms; /* default 0: the first one at once */
    int64_t every_ms;       /* > 0 */
    int max;                /* 1..100 */
    int64_t deadline_ms;    /* from the journey's start; 0 = none */
    char **until;           /* qualifying trigger names (>= 0) */
    size_t nuntil;
    /* BRANCH */
    bool on_click;     /* false: opened */
    int64_t within_ms; /* > 0 */
    char *mailing;     /* mailing id of the nearest esp_mail before it
                          (borrowed from that action, or from the start
                          condition mailing_id eq <id>); never NULL after
                          a successful load */
    int then_pc;
    int else_pc;
    /* JUMP */
    int target;
};

struct journey {
    char *id;
    char **tenants; /* empty: every tenant */
    size_t ntenants;
    char *start_trigger;
    enum jr_kind_filter start_kind;
    struct jr_condition *conds;
    size_t nconds;
    enum jr_reentry reentry;
    int64_t reentry_window_ms; /* JR_REENTRY_WINDOW */
    char **exit_on;
    size_t nexit;
    struct jr_step *steps;
    size_t nsteps;
    char **attrs; /* attribute names the instance must keep, sorted, unique */
    size_t nattrs;
};

struct journey_set {
    struct journey *j; /* owned array */
    size_t n;
};

/* Attributes of one event (borrowed arrays, n entries, names unique). */
struct jr_attrs {
    const char *const *names;
    const char *const *values;
    size_t n;
};

/* Values a template can use (all borrowed; NULL renders as ""). */
struct jr_vars {
    const struct jr_attrs *attrs;
    const char *profile_type; /* "contact" | "lead" | "account" | NULL */
    const char *profile_id;
    const char *profile_email;
    const char *journey_id;
    const char *tenant;
    int iteration;
};

/**
 * @brief Parses and validates a journey file.
 * @param path file to read (borrowed).
 * @param out filled on CS_ERR_OK (caller frees with journey_set_free);
 *        untouched otherwise.
 * @returns CS_ERR_OK; CS_ERR_CONFIG with "<path>:<line>:<col>: <what is
 *          wrong>" in errstr for anything invalid (unknown key, bad type,
 *          bad duration, duplicate id, missing field, unknown template
 *          variable, branch without a mail before it, ...); CS_ERR_NOMEM.
 */
enum cs_err journey_set_load(const char *path, struct journey_set *out,
                             char *errstr, size_t errstr_size);

/** @brief As journey_set_load for text in memory; @p name labels errors. */
enum cs_err journey_set_parse(const char *text, size_t len, const char *name,
                              struct journey_set *out, char *errstr,
                              size_t errstr_size);

/** @brief Frees everything in @p s and zeroes it. NULL is fine. */
void journey_set_free(struct journey_set *s);

/**
 * @brief Does a trigger start @p j? Checks the start trigger name, kind
 *        (JR_KIND_* of the event), tenant list and every condition.
 */
bool journey_starts(const struct journey *j, const char *tenant, int kind,
                    const char *trigger, const struct jr_attrs *a);

/** @returns true when @p trigger is in j->exit_on. */
bool journey_exits_on(const struct journey *j, const char *trigger);

/** @returns true when @p tenant may run @p j (empty list: every tenant). */
bool journey_for_tenant(const struct journey *j, const char *tenant);

/** @returns the value of attribute @p name in @p a, or NULL. */
const char *jr_attrs_get(const struct jr_attrs *a, const char *name);

/**
 * @brief Expands a template.
 * @returns a new string (caller frees with free()) or NULL when out of
 *          memory. Unknown placeholders cannot occur (rejected at load).
 */
char *journey_render(const char *tmpl, const struct jr_vars *v);

/**
 * @brief Parses a duration: "90s", "15m", "1h", "7d", "2w", "500ms" or a
 *        plain integer of milliseconds.
 * @returns true and *ms on success.
 */
bool journey_parse_duration(const char *s, int64_t *ms);

#endif

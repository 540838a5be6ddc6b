/*
 * test_trigger_journey - the trigger worker's journey definitions: parsing,
 * validation errors (text and line), compilation into the flat program,
 * start conditions, templates, durations and the example file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workers/trigger/journey.h"

#define ERRBUF 1024

/* Parses @p yaml or fails the test with the error text. */
static void parse_ok(const char *yaml, struct journey_set *s)
{
    char err[ERRBUF] = "";
    enum cs_err rc =
        journey_set_parse(yaml, strlen(yaml), "t.yaml", s, err, sizeof(err));

    if (rc != CS_ERR_OK)
        fail_msg("parse failed (%d): %s\n--- yaml:\n%s", (int)rc, err, yaml);
}

/* Parsing @p yaml fails with "t.yaml:<line>:..." containing @p what, and
 * leaves the output untouched. */
static void expect_error(const char *yaml, int line, const char *what)
{
    char err[ERRBUF] = "";
    char prefix[64];
    struct journey_set s = {.j = NULL, .n = 4242};
    enum cs_err rc =
        journey_set_parse(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));

    if (rc != CS_ERR_CONFIG) {
        if (rc == CS_ERR_OK)
            journey_set_free(&s);
        fail_msg("expected CS_ERR_CONFIG, got %d (%s)\n--- yaml:\n%s", (int)rc,
                 err, yaml);
    }
    assert_null(s.j);
    assert_int_equal(s.n, 4242);
    snprintf(prefix, sizeof(prefix), "t.yaml:%d:", line);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, what) == NULL)
        fail_msg("error \"%s\"\nwanted prefix \"%s\" and \"%s\"\n--- yaml:\n%s",
                 err, prefix, what, yaml);
}

/* ------------------------------------------------------------------ */
/* a full valid file                                                   */

static const char FULL[] =
    "journeys:\n"                                                 /* 1 */
    "  - id: abandoned-cart\n"                                    /* 2 */
    "    tenants: [acme]\n"                                       /* 3 */
    "    start:\n"                                                /* 4 */
    "      trigger: cart.abandoned\n"                             /* 5 */
    "      kind: CUSTOM\n"                                        /* 6 */
    "      conditions:\n"                                         /* 7 */
    "        - {attribute: cart_value, op: gte, value: \"50\"}\n" /* 8 */
    "        - {attribute: country, op: in, values: [DE, AT]}\n"  /* 9 */
    "    reentry: once\n"                                         /* 10 */
    "    exit_on: [account.closed]\n"                             /* 11 */
    "    steps:\n"                                                /* 12 */
    "      - reminder:\n"                                         /* 13 */
    "          action: {type: esp_mail, mailing: \"1001\", list: \"2001\"}\n"
    "          first_after: 1h\n"                                   /* 15 */
    "          every: 24h\n"                                        /* 16 */
    "          max: 3\n"                                            /* 17 */
    "          until: [checkout.completed]\n"                       /* 18 */
    "          deadline: 7d\n"                                      /* 19 */
    "      - branch:\n"                                             /* 20 */
    "          on: opened\n"                                        /* 21 */
    "          within: 2d\n"                                        /* 22 */
    "          then:\n"                                             /* 23 */
    "            - action: {type: crm_task, subject: \"Opened\"}\n" /* 24 */
    "          else:\n"                                             /* 25 */
    "            - action: {type: esp_mail, mailing: \"1002\", list: "
    "\"2001\"}\n"
    "  - id: all.actions_1\n"            /* 27 */
    "    start: {trigger: web.signup}\n" /* 28 */
    "    reentry: always\n"              /* 29 */
    "    steps:\n"                       /* 30 */
    "      - action:\n"                  /* 31 */
    "          type: crm_trigger\n"
    "          name: msdynmkt_cartreminder\n"
    "          parameters:\n"
    "            msdynmkt_textvariable1: \"{{attr.cart_id}}\"\n"
    "            msdynmkt_tenant: \"{{ tenant }}\"\n"
    "      - action: {type: esp_mail, mailing: 1001, list: 2001}\n"  /* 37 */
    "      - wait: {for: 90m}\n"                                     /* 38 */
    "      - wait: {until: 2026-12-24T09:00:00Z}\n"                  /* 39 */
    "      - wait: {until_attribute: appointment_at, offset: -1d}\n" /* 40 */
    "      - branch:\n"                                              /* 41 */
    "          on: clicked\n"
    "          within: 3d\n"
    "          then:\n"
    "            - action:\n" /* 45 */
    "                type: crm_task\n"
    "                subject: \"Call {{profile.email}}\"\n"
    "                description: \"Journey {{journey.id}} #{{ iteration }}\"\n"
    "                owner: \"{{attr.owner_id}}\"\n"
    "                due_in: 1d\n"
    "            - reminder:\n" /* 51 */
    "                action: {type: esp_mail, mailing: \"1005\", list: "
    "\"2001\"}\n"
    "                every: 1d\n"
    "                max: 2\n"
    "            - branch:\n" /* 55 */
    "                on: opened\n"
    "                within: 1h\n"
    "                then:\n"
    "                  - action:\n" /* 59 */
    "                      type: produce\n"
    "                      topic: crm.triggers\n"
    "                      trigger: journey.hot\n"
    "                      attributes: {profile: \"{{profile.id}}\", kind: "
    "\"{{profile.type}}\"}\n"
    "                else:\n"
    "                  - action: {type: esp_mail, mailing: \"1002\", list: "
    "\"2001\"}\n" /* 65 */
    "          else: []\n"
    "      - branch:\n" /* 67 */
    "          on: opened\n"
    "          within: 1d\n"
    "          else:\n"
    "            - action: {type: esp_mail, mailing: \"1003\", list: "
    "\"2001\"}\n"
    "      - wait: {for: 1h}\n"; /* 72 */

static void test_full_abandoned_cart(void **state)
{
    struct journey_set s;
    const struct journey *j;
    const struct jr_step *st;

    (void)state;
    parse_ok(FULL, &s);
    assert_int_equal(s.n, 2);
    j = &s.j[0];
    assert_string_equal(j->id, "abandoned-cart");
    assert_int_equal(j->ntenants, 1);
    assert_string_equal(j->tenants[0], "acme");
    assert_string_equal(j->start_trigger, "cart.abandoned");
    assert_int_equal(j->start_kind, JR_KIND_CUSTOM);
    assert_int_equal(j->nconds, 2);
    assert_string_equal(j->conds[0].attr, "cart_value");
    assert_int_equal(j->conds[0].op, JR_OP_GTE);
    assert_int_equal(j->conds[0].nvalues, 1);
    assert_string_equal(j->conds[0].values[0], "50");
    assert_string_equal(j->conds[1].attr, "country");
    assert_int_equal(j->conds[1].op, JR_OP_IN);
    assert_int_equal(j->conds[1].nvalues, 2);
    assert_string_equal(j->conds[1].values[0], "DE");
    assert_string_equal(j->conds[1].values[1], "AT");
    assert_int_equal(j->reentry, JR_REENTRY_ONCE);
    assert_int_equal(j->nexit, 1);
    assert_string_equal(j->exit_on[0], "account.closed");
    assert_int_equal(j->nattrs, 0);
    /* 0 reminder, 1 branch, 2 then: task, 3 JUMP, 4 else: mail */
    assert_int_equal(j->nsteps, 5);
    st = &j->steps[0];
    assert_int_equal(st->kind, JR_STEP_REMINDER);
    assert_int_equal(st->line, 13);
    assert_int_equal(st->action.type, JR_ACT_ESP_MAIL);
    assert_string_equal(st->action.mailing, "1001");
    assert_string_equal(st->action.list, "2001");
    assert_int_equal(st->first_after_ms, 3600000);
    assert_int_equal(st->every_ms, 24 * 3600000LL);
    assert_int_equal(st->max, 3);
    assert_int_equal(st->nuntil, 1);
    assert_string_equal(st->until[0], "checkout.completed");
    assert_int_equal(st->deadline_ms, 7 * 86400000LL);
    st = &j->steps[1];
    assert_int_equal(st->kind, JR_STEP_BRANCH);
    assert_int_equal(st->line, 20);
    assert_false(st->on_click);
    assert_int_equal(st->within_ms, 2 * 86400000LL);
    assert_ptr_equal(st->mailing, j->steps[0].action.mailing);
    assert_int_equal(st->then_pc, 2);
    assert_int_equal(st->else_pc, 4);
    assert_int_equal(j->steps[2].kind, JR_STEP_ACTION);
    assert_int_equal(j->steps[2].action.type, JR_ACT_CRM_TASK);
    assert_string_equal(j->steps[2].action.subject, "Opened");
    assert_null(j->steps[2].action.owner);
    assert_null(j->steps[2].action.description);
    assert_int_equal(j->steps[2].action.due_in_ms, 0);
    assert_int_equal(j->steps[3].kind, JR_STEP_JUMP);
    assert_int_equal(j->steps[3].target, 5);
    assert_int_equal(j->steps[4].kind, JR_STEP_ACTION);
    assert_string_equal(j->steps[4].action.mailing, "1002");
    journey_set_free(&s);
    assert_null(s.j);
    assert_int_equal(s.n, 0);
}

static void test_full_all_steps(void **state)
{
    struct journey_set s;
    const struct journey *j;
    const struct jr_step *st;
    const struct jr_action *a;

    (void)state;
    parse_ok(FULL, &s);
    j = &s.j[1];
    assert_string_equal(j->id, "all.actions_1");
    assert_int_equal(j->ntenants, 0);
    assert_int_equal(j->start_kind, JR_KIND_ANY);
    assert_int_equal(j->nconds, 0);
    assert_int_equal(j->reentry, JR_REENTRY_ALWAYS);
    assert_int_equal(j->nexit, 0);
    assert_int_equal(j->nsteps, 16);

    a = &j->steps[0].action;
    assert_int_equal(j->steps[0].kind, JR_STEP_ACTION);
    assert_int_equal(j->steps[0].line, 31);
    assert_int_equal(a->type, JR_ACT_CRM_TRIGGER);
    assert_string_equal(a->name, "msdynmkt_cartreminder");
    assert_int_equal(a->nparams, 2);
    assert_string_equal(a->params[0].name, "msdynmkt_textvariable1");
    assert_string_equal(a->params[0].tmpl, "{{attr.cart_id}}");
    assert_string_equal(a->params[1].name, "msdynmkt_tenant");
    assert_string_equal(a->params[1].tmpl, "{{ tenant }}");

    a = &j->steps[1].action;
    assert_int_equal(a->type, JR_ACT_ESP_MAIL);
    assert_string_equal(a->mailing, "1001"); /* unquoted ints are fine */
    assert_string_equal(a->list, "2001");

    st = &j->steps[2];
    assert_int_equal(st->kind, JR_STEP_WAIT);
    assert_int_equal(st->wait_ms, 90 * 60000LL);
    assert_int_equal(st->until_ms, 0);
    assert_null(st->until_attr);
    st = &j->steps[3];
    assert_int_equal(st->kind, JR_STEP_WAIT);
    assert_int_equal(st->wait_ms, 0);
    assert_int_equal(st->until_ms, 1798102800000LL); /* 2026-12-24 09:00Z */
    st = &j->steps[4];
    assert_int_equal(st->kind, JR_STEP_WAIT);
    assert_string_equal(st->until_attr, "appointment_at");
    assert_int_equal(st->offset_ms, -86400000LL);

    /* 5 outer branch (clicked): then 6..10, no else list */
    st = &j->steps[5];
    assert_int_equal(st->kind, JR_STEP_BRANCH);
    assert_int_equal(st->line, 41);
    assert_true(st->on_click);
    assert_int_equal(st->within_ms, 3 * 86400000LL);
    assert_ptr_equal(st->mailing, j->steps[1].action.mailing);
    assert_int_equal(st->then_pc, 6);
    assert_int_equal(st->else_pc, 12);

    a = &j->steps[6].action;
    assert_int_equal(a->type, JR_ACT_CRM_TASK);
    assert_string_equal(a->subject, "Call {{profile.email}}");
    assert_string_equal(a->description,
                        "Journey {{journey.id}} #{{ iteration }}");
    assert_string_equal(a->owner, "{{attr.owner_id}}");
    assert_int_equal(a->due_in_ms, 86400000LL);

    st = &j->steps[7];
    assert_int_equal(st->kind, JR_STEP_REMINDER);
    assert_string_equal(st->action.mailing, "1005");
    assert_int_equal(st->first_after_ms, 0);
    assert_int_equal(st->every_ms, 86400000LL);
    assert_int_equal(st->max, 2);
    assert_int_equal(st->nuntil, 0);
    assert_int_equal(st->deadline_ms, 0);

    /* 8 inner branch: nearest mail is the reminder's */
    st = &j->steps[8];
    assert_int_equal(st->kind, JR_STEP_BRANCH);
    assert_false(st->on_click);
    assert_int_equal(st->within_ms, 3600000);
    assert_ptr_equal(st->mailing, j->steps[7].action.mailing);
    assert_int_equal(st->then_pc, 9);
    assert_int_equal(st->else_pc, 11);
    a = &j->steps[9].action;
    assert_int_equal(a->type, JR_ACT_PRODUCE);
    assert_string_equal(a->topic, "crm.triggers");
    assert_string_equal(a->name, "journey.hot");
    assert_int_equal(a->nparams, 2);
    assert_string_equal(a->params[0].name, "profile");
    assert_string_equal(a->params[0].tmpl, "{{profile.id}}");
    assert_string_equal(a->params[1].name, "kind");
    assert_string_equal(a->params[1].tmpl, "{{profile.type}}");
    assert_int_equal(j->steps[10].kind, JR_STEP_JUMP);
    assert_int_equal(j->steps[10].target, 12);
    assert_string_equal(j->steps[11].action.mailing, "1002");

    /* 12 branch with only an else list: JUMP at then_pc */
    st = &j->steps[12];
    assert_int_equal(st->kind, JR_STEP_BRANCH);
    assert_int_equal(st->line, 67);
    assert_ptr_equal(st->mailing, j->steps[1].action.mailing);
    assert_int_equal(st->then_pc, 13);
    assert_int_equal(st->else_pc, 14);
    assert_int_equal(j->steps[13].kind, JR_STEP_JUMP);
    assert_int_equal(j->steps[13].target, 15);
    assert_string_equal(j->steps[14].action.mailing, "1003");
    assert_int_equal(j->steps[15].kind, JR_STEP_WAIT);
    assert_int_equal(j->steps[15].wait_ms, 3600000);
    assert_int_equal(j->steps[15].line, 72);

    assert_int_equal(j->nattrs, 3);
    assert_string_equal(j->attrs[0], "appointment_at");
    assert_string_equal(j->attrs[1], "cart_id");
    assert_string_equal(j->attrs[2], "owner_id");
    journey_set_free(&s);
    journey_set_free(&s); /* zeroed: a second free is harmless */
    journey_set_free(NULL);
}

/* reentry once_per, attrs deduplicated and sorted, nested empty-else. */
static void test_reentry_window_and_attrs(void **state)
{
    static const char yaml[] =
        "journeys:\n"
        "  - id: w\n"
        "    start: {trigger: a.b}\n"
        "    reentry: {once_per: 30d}\n"
        "    steps:\n"
        "      - action: {type: produce, topic: t, trigger: x.y, attributes: "
        "{a: \"{{attr.zeta}}{{attr.alpha}}\", b: \"{{ attr.zeta }}\"}}\n"
        "      - wait: {until_attribute: alpha}\n";
    struct journey_set s;

    (void)state;
    parse_ok(yaml, &s);
    assert_int_equal(s.j[0].reentry, JR_REENTRY_WINDOW);
    assert_int_equal(s.j[0].reentry_window_ms, 30 * 86400000LL);
    assert_int_equal(s.j[0].nattrs, 2);
    assert_string_equal(s.j[0].attrs[0], "alpha");
    assert_string_equal(s.j[0].attrs[1], "zeta");
    assert_int_equal(s.j[0].steps[1].offset_ms, 0);
    journey_set_free(&s);
}

/* The start trigger stands for the mailing of its mailing_id condition. */
static void test_branch_mail_from_start_trigger(void **state)
{
    static const char yaml[] =
        "journeys:\n"
        "  - id: resend\n"
        "    start:\n"
        "      trigger: email.delivered\n"
        "      conditions: [{attribute: mailing_id, op: eq, value: \"3001\"}]\n"
        "    steps:\n"
        "      - branch:\n"
        "          on: opened\n"
        "          within: 2d\n"
        "          else: [{action: {type: esp_mail, mailing: \"3002\", "
        "list: \"2001\"}}]\n"
        "  - id: resend2\n"
        "    start:\n"
        "      trigger: email.sent\n"
        "      conditions: [{attribute: mailing_id, op: eq, value: \"77\"}]\n"
        "    steps:\n"
        "      - action: {type: esp_mail, mailing: \"78\", list: \"1\"}\n"
        "      - branch: {on: clicked, within: 1h, then: [{wait: {for: "
        "1s}}]}\n";
    struct journey_set s;

    (void)state;
    parse_ok(yaml, &s);
    assert_int_equal(s.j[0].nsteps, 3);
    assert_ptr_equal(s.j[0].steps[0].mailing, s.j[0].conds[0].values[0]);
    assert_string_equal(s.j[0].steps[0].mailing, "3001");
    assert_int_equal(s.j[0].steps[0].then_pc, 1);
    assert_int_equal(s.j[0].steps[0].else_pc, 2);
    assert_int_equal(s.j[0].steps[1].kind, JR_STEP_JUMP);
    assert_int_equal(s.j[0].steps[1].target, 3);
    /* a mail step after the start is nearer than the start's mailing */
    assert_string_equal(s.j[1].steps[1].mailing, "78");
    assert_int_equal(s.j[1].steps[1].then_pc, 2);
    assert_int_equal(s.j[1].steps[1].else_pc, 3);
    journey_set_free(&s);
}

/* ------------------------------------------------------------------ */
/* invalid documents                                                   */

#define HEAD                                                                   \
    "journeys:\n"                                                              \
    "  - id: a\n"                                                              \
    "    start: {trigger: t.x}\n"                                              \
    "    steps:\n"
#define MAIL     "{type: esp_mail, mailing: \"1\", list: \"2\"}"
#define STEPS_OK "    steps: [{wait: {for: 1h}}]\n"

struct bad_case {
    const char *yaml;
    int line;
    const char *what;
};

static const struct bad_case BAD[] = {
    /* 0 unknown key */
    {HEAD "      - reminder:\n"
          "          action: " MAIL "\n"
          "          evry: 24h\n"
          "          max: 3\n",
     7,
     "journeys[0].steps[0].reminder: unknown key 'evry' (expected action, "
     "first_after, every, max, until, deadline)"},
    /* 1 duplicate key */
    {"journeys:\n  - id: a\n    id: b\n    start: {trigger: t.x}\n" STEPS_OK, 3,
     "journeys[0]: duplicate key 'id' (first at line 2)"},
    /* 2 top level not a mapping */
    {"- a\n- b\n", 1,
     "the top level must be a mapping with the key 'journeys', got a "
     "sequence"},
    /* 3 top level wrong key */
    {"journey:\n  - id: a\n", 1, "unknown key 'journey' (expected journeys)"},
    /* 4 empty journeys */
    {"journeys: []\n", 1, "journeys: no journeys defined"},
    /* 5 missing id */
    {"journeys:\n  - start: {trigger: t.x}\n" STEPS_OK, 2,
     "journeys[0]: missing required key 'id'"},
    /* 6 bad id */
    {"journeys:\n  - id: Abandoned Cart\n    start: {trigger: t.x}\n" STEPS_OK,
     2,
     "journeys[0].id: 'Abandoned Cart' is not a valid id ([a-z0-9._-], 1 "
     "to 40 characters)"},
    /* 7 duplicate id */
    {"journeys:\n  - id: a\n    start: {trigger: t.x}\n" STEPS_OK
     "  - id: a\n    start: {trigger: t.y}\n" STEPS_OK,
     5, "journeys[1].id: duplicate journey id 'a' (also journeys[0])"},
    /* 8 empty tenant */
    {"journeys:\n  - id: a\n    tenants: [acme, \"\"]\n    start: {trigger: "
     "t.x}\n" STEPS_OK,
     3, "journeys[0].tenants[1]: must not be empty"},
    /* 9 missing start.trigger */
    {"journeys:\n  - id: a\n    start: {kind: CUSTOM}\n" STEPS_OK, 3,
     "journeys[0].start: missing required key 'trigger'"},
    /* 10 empty steps */
    {"journeys:\n  - id: a\n    start: {trigger: t.x}\n    steps: []\n", 4,
     "journeys[0].steps: a journey needs at least one step"},
    /* 11 bad duration */
    {HEAD "      - reminder: {action: " MAIL ", every: 24hours, max: 3}\n", 5,
     "journeys[0].steps[0].reminder.every: '24hours' is not a duration"},
    /* 12 zero duration */
    {HEAD "      - reminder: {action: " MAIL ", every: 0, max: 3}\n", 5,
     "journeys[0].steps[0].reminder.every: duration must be greater than 0"},
    /* 13 max out of range */
    {HEAD "      - reminder:\n          action: " MAIL "\n"
          "          every: 1h\n          max: 101\n",
     8, "reminder.max: '101' is not a whole number from 1 to 100"},
    /* 14 reminder without action */
    {HEAD "      - reminder: {every: 1h, max: 2}\n", 5,
     "journeys[0].steps[0].reminder: missing required key 'action'"},
    /* 15 crm_trigger name */
    {HEAD "      - action: {type: crm_trigger, name: opportunitywon}\n", 5,
     "journeys[0].steps[0].action.name: 'opportunitywon' is not a custom "
     "trigger action name (msdynmkt_[a-z0-9_]+)"},
    /* 16 esp_mail mailing not decimal */
    {HEAD "      - action: {type: esp_mail, mailing: abc, list: \"2\"}\n", 5,
     "journeys[0].steps[0].action.mailing: 'abc' is not a decimal id"},
    /* 17 esp_mail without list */
    {HEAD "      - action:\n          type: esp_mail\n          mailing: 1\n",
     6, "journeys[0].steps[0].action: missing required key 'list'"},
    /* 18 crm_task without subject */
    {HEAD "      - action: {type: crm_task, owner: x}\n", 5,
     "journeys[0].steps[0].action: missing required key 'subject'"},
    /* 19 produce without topic */
    {HEAD "      - action: {type: produce, trigger: a.b}\n", 5,
     "journeys[0].steps[0].action: missing required key 'topic'"},
    /* 20 produce without trigger */
    {HEAD "      - action: {type: produce, topic: a.b}\n", 5,
     "action: missing required key 'trigger'"},
    /* 21 wait with for and until */
    {HEAD "      - wait: {for: 1h, until: 2026-12-24T09:00:00Z}\n", 5,
     "journeys[0].steps[0].wait: a wait needs exactly one of for, until, "
     "until_attribute"},
    /* 22 wait until not a date */
    {HEAD "      - wait:\n          until: 2026-02-30T00:00:00Z\n", 6,
     "journeys[0].steps[0].wait.until: '2026-02-30T00:00:00Z' is not an ISO "
     "8601 UTC time like 2026-12-24T09:00:00Z"},
    /* 23 offset without until_attribute */
    {HEAD "      - wait: {for: 1h, offset: 1h}\n", 5,
     "offset is only allowed with until_attribute"},
    /* 24 branch without a mail before it */
    {HEAD
     "      - action: {type: crm_task, subject: x}\n"
     "      - branch: {on: opened, within: 2d, else: [{wait: {for: 1h}}]}\n",
     6, "journeys[0].steps[1].branch: branch needs an esp_mail step before it"},
    /* 25 branch on */
    {HEAD "      - action: " MAIL "\n"
          "      - branch: {on: bounced, within: 2d, then: [{wait: {for: "
          "1h}}]}\n",
     6, "journeys[0].steps[1].branch.on: 'bounced' is not opened or clicked"},
    /* 26 branch without lists */
    {HEAD "      - action: " MAIL "\n"
          "      - branch: {on: opened, within: 2d, then: []}\n",
     6, "branch: a branch needs a non-empty then or else list"},
    /* 27 branch without within */
    {HEAD "      - action: " MAIL "\n"
          "      - branch: {on: opened, then: [{wait: {for: 1h}}]}\n",
     6, "journeys[0].steps[1].branch: missing required key 'within'"},
    /* 28 unknown op */
    {"journeys:\n  - id: a\n    start:\n      trigger: t.x\n      conditions:\n"
     "        - {attribute: x, op: like, value: y}\n" STEPS_OK,
     6,
     "journeys[0].start.conditions[0].op: unknown op 'like' (expected eq, "
     "ne, in, exists, missing, gt, gte, lt, lte, prefix)"},
    /* 29 in with value */
    {"journeys:\n  - id: a\n    start:\n      trigger: t.x\n      conditions:\n"
     "        - attribute: x\n          op: in\n          value: y\n" STEPS_OK,
     8,
     "journeys[0].start.conditions[0]: op in takes no 'value' (use values: "
     "[...])"},
    /* 30 gt not a number */
    {"journeys:\n  - id: a\n    start:\n      trigger: t.x\n      conditions:\n"
     "        - {attribute: x, op: gt, value: abc}\n" STEPS_OK,
     6, "conditions[0].value: 'abc' is not a number (op gt)"},
    /* 31 eq without value */
    {"journeys:\n  - id: a\n    start:\n      trigger: t.x\n      conditions:\n"
     "        - {attribute: x, op: eq}\n" STEPS_OK,
     6, "journeys[0].start.conditions[0]: missing required key 'value'"},
    /* 32 exists with value */
    {"journeys:\n  - id: a\n    start:\n      trigger: t.x\n      conditions:\n"
     "        - {attribute: x, op: exists, values: [a]}\n" STEPS_OK,
     6, "op exists takes no 'values'"},
    /* 33 reentry */
    {"journeys:\n  - id: a\n    start: {trigger: t.x}\n    reentry: "
     "twice\n" STEPS_OK,
     4,
     "journeys[0].reentry: expected once, always or {once_per: "
     "<duration>}"},
    /* 34 kind */
    {"journeys:\n  - id: a\n    start: {trigger: t.x, kind: custom}\n" STEPS_OK,
     3,
     "journeys[0].start.kind: unknown kind 'custom' (expected BEHAVIOURAL, "
     "BUSINESS, CUSTOM)"},
    /* 35 unknown template variable */
    {HEAD "      - action: {type: crm_task, subject: \"Hi {{contact.id}}\"}\n",
     5,
     "journeys[0].steps[0].action.subject: unknown template variable "
     "'contact.id' in \"Hi {{contact.id}}\""},
    /* 36 unterminated template */
    {HEAD "      - action:\n          type: crm_trigger\n"
          "          name: msdynmkt_x\n          parameters:\n"
          "            p1: \"Hi {{attr.name\"\n",
     9,
     "journeys[0].steps[0].action.parameters.p1: unterminated '{{' in "
     "template \"Hi {{attr.name\""},
    /* 37 steps not a sequence */
    {"journeys:\n  - id: a\n    start: {trigger: t.x}\n"
     "    steps: {wait: {for: 1h}}\n",
     4, "journeys[0].steps: expected a sequence, got a mapping"},
    /* 38 two kinds in one step */
    {HEAD "      - {wait: {for: 1h}, action: {type: crm_task, subject: x}}\n",
     5,
     "journeys[0].steps[0]: a step has exactly one of action, wait, "
     "reminder, branch; found both 'wait' and 'action'"},
    /* 39 YAML syntax */
    {"journeys:\n  - id: a\n    start: {trigger: t.x\n    steps: []\n", 4,
     "YAML error"},
    /* 40 unknown action type */
    {HEAD "      - action: {type: sms, text: hi}\n", 5,
     "journeys[0].steps[0].action.type: unknown action type 'sms' (expected "
     "crm_trigger, esp_mail, crm_task, produce)"},
    /* 41 reserved crm_trigger parameter */
    {HEAD "      - action: {type: crm_trigger, name: msdynmkt_x, parameters: "
          "{msdynmkt_profileid: \"{{profile.id}}\"}}\n",
     5, "'msdynmkt_profileid' is set by the worker"},
    /* 42 a second document */
    {HEAD "      - wait: {for: 1h}\n---\nfoo: 1\n", 7,
     "only one YAML document is allowed"},
    /* 43 start mailing needs op eq */
    {"journeys:\n  - id: a\n    start:\n      trigger: email.delivered\n"
     "      conditions: [{attribute: mailing_id, op: ne, value: \"1\"}]\n"
     "    steps:\n      - branch: {on: opened, within: 1d, then: [{wait: "
     "{for: 1h}}]}\n",
     7, "branch needs an esp_mail step before it"},
    /* 44 negative duration */
    {HEAD "      - wait: {for: -1h}\n", 5,
     "journeys[0].steps[0].wait.for: duration '-1h' must not be negative"},
    /* 45 overflowing duration */
    {HEAD "      - wait: {for: 99999999999999999w}\n", 5,
     "'99999999999999999w' is not a duration"},
    /* 46 wrong node type for a scalar */
    {HEAD "      - wait: {for: {a: 1}}\n", 5,
     "journeys[0].steps[0].wait.for: expected a scalar, got a mapping"},
    /* 47 exit_on not a list */
    {"journeys:\n  - id: a\n    start: {trigger: t.x}\n"
     "    exit_on: contact.deleted\n" STEPS_OK,
     4, "journeys[0].exit_on: expected a sequence, got a scalar"},
    /* 48 deadline before the first reminder */
    {HEAD "      - reminder: {action: " MAIL
          ", first_after: 2d, every: 1d, max: 2, deadline: 1d}\n",
     5, "reminder.deadline: deadline must be later than first_after"},
    /* 49 unknown journey key */
    {"journeys:\n  - id: a\n    name: A\n    start: {trigger: t.x}\n" STEPS_OK,
     3,
     "journeys[0]: unknown key 'name' (expected id, tenants, start, "
     "reentry, exit_on, steps)"},
    /* 50 a mail only in an earlier branch's else list does not count */
    {"journeys:\n  - id: a\n    start:\n      trigger: email.sent\n"
     "      conditions: [{attribute: mailing_id, op: eq, value: \"1\"}]\n"
     "    steps:\n"
     "      - branch: {on: opened, within: 1d, else: [{action: " MAIL "}]}\n"
     "      - branch: {on: opened, within: 1d, then: [{branch: {on: clicked, "
     "within: 1h, then: [{wait: {for: 1m}}]}}]}\n",
     -1, NULL}, /* valid: both rely on the start mailing (checked below) */
    /* 51 empty step */
    {HEAD "      - {}\n", 5,
     "journeys[0].steps[0]: empty step (expected one of action, wait, "
     "reminder, branch)"},
    /* 52 start not a mapping */
    {"journeys:\n  - id: a\n    start: cart.abandoned\n" STEPS_OK, 3,
     "journeys[0].start: expected a mapping, got a scalar"},
    /* 53 empty file */
    {"", 1, "empty file (expected a mapping with the key 'journeys')"},
    /* 54 template variable with bad attribute name */
    {HEAD
     "      - action: {type: crm_task, subject: \"{{attr.}} {{attr.a b}}\"}\n",
     5, "unknown template variable 'attr.'"},
    /* 55 produce topic with a space */
    {HEAD "      - action: {type: produce, topic: \"a b\", trigger: x}\n", 5,
     "action.topic: 'a b' is not a topic name"},
};

static void test_invalid_documents(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
        if (BAD[i].what == NULL) {
            struct journey_set s;
            parse_ok(BAD[i].yaml, &s);
            assert_string_equal(s.j[0].steps[0].mailing, "1");
            assert_ptr_equal(s.j[0].steps[3].mailing,
                             s.j[0].conds[0].values[0]);
            journey_set_free(&s);
            continue;
        }
        expect_error(BAD[i].yaml, BAD[i].line, BAD[i].what);
    }
}

/* Builds a journey whose first step is a mail followed by @p depth nested
 * branches (one line). Caller frees. */
static char *nested_branches(int depth)
{
    size_t size = 256 + (size_t)depth * 80;
    char *y = malloc(size);
    size_t used;
    int i;

    assert_non_null(y);
    used =
        (size_t)snprintf(y, size, "%s      - action: %s\n      - ", HEAD, MAIL);
    for (i = 0; i < depth; i++)
        used += (size_t)snprintf(y + used, size - used,
                                 "{branch: {on: opened, within: 1h, then: [");
    used += (size_t)snprintf(y + used, size - used, "{wait: {for: 1h}}");
    for (i = 0; i < depth; i++)
        used += (size_t)snprintf(y + used, size - used, "]}}");
    snprintf(y + used, size - used, "\n");
    return y;
}

static void test_branch_depth(void **state)
{
    char *y = nested_branches(JOURNEY_MAX_DEPTH);
    struct journey_set s;

    (void)state;
    parse_ok(y, &s);
    assert_int_equal(s.j[0].nsteps, 2 + JOURNEY_MAX_DEPTH);
    assert_int_equal(s.j[0].steps[JOURNEY_MAX_DEPTH].kind, JR_STEP_BRANCH);
    assert_int_equal(s.j[0].steps[JOURNEY_MAX_DEPTH].else_pc,
                     JOURNEY_MAX_DEPTH + 2);
    assert_string_equal(s.j[0].steps[JOURNEY_MAX_DEPTH].mailing, "1");
    journey_set_free(&s);
    free(y);
    y = nested_branches(JOURNEY_MAX_DEPTH + 1);
    expect_error(y, 6, "branches nested deeper than 8");
    free(y);
}

/* @p n steps "wait" (then/else branches with @p branches). Caller frees. */
static char *many_steps(int waits, int branches)
{
    size_t size = 256 + (size_t)(waits + branches) * 128;
    char *y = malloc(size);
    size_t used;
    int i;

    assert_non_null(y);
    used = (size_t)snprintf(y, size, "%s      - action: %s\n", HEAD, MAIL);
    for (i = 0; i < waits; i++)
        used += (size_t)snprintf(y + used, size - used,
                                 "      - wait: {for: %ds}\n", i + 1);
    for (i = 0; i < branches; i++)
        used += (size_t)snprintf(
            y + used, size - used,
            "      - branch: {on: opened, within: 1h, then: [{wait: {for: "
            "1h}}], else: [{wait: {for: 2h}}]}\n");
    return y;
}

static void test_max_steps(void **state)
{
    struct journey_set s;
    char *y;

    (void)state;
    y = many_steps(JOURNEY_MAX_STEPS - 1, 0); /* + the mail = 250 */
    parse_ok(y, &s);
    assert_int_equal(s.j[0].nsteps, JOURNEY_MAX_STEPS);
    assert_int_equal(s.j[0].steps[JOURNEY_MAX_STEPS - 1].wait_ms,
                     (JOURNEY_MAX_STEPS - 1) * 1000LL);
    journey_set_free(&s);
    free(y);
    y = many_steps(JOURNEY_MAX_STEPS, 0);
    expect_error(y, 5 + JOURNEY_MAX_STEPS,
                 "journeys[0].steps[250].wait: journey has too many steps");
    free(y);
    /* 62 branches x 4 compiled steps + mail = 249: fine; 63 overflow in
       the JUMP / else of the last branch */
    y = many_steps(0, 62);
    parse_ok(y, &s);
    assert_int_equal(s.j[0].nsteps, 249);
    assert_int_equal(s.j[0].steps[245].kind, JR_STEP_BRANCH);
    assert_int_equal(s.j[0].steps[245].else_pc, 248);
    assert_int_equal(s.j[0].steps[247].target, 249);
    journey_set_free(&s);
    free(y);
    y = many_steps(0, 63);
    expect_error(y, 5 + 63, "journey has too many steps");
    free(y);
}

/* Error messages are cut to errstr_size, never overflow. */
static void test_small_errstr(void **state)
{
    static const char yaml[] = "journeys: []\n";
    char err[8];
    struct journey_set s;

    (void)state;
    memset(err, 'x', sizeof(err));
    assert_int_equal(
        journey_set_parse(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err)),
        CS_ERR_CONFIG);
    assert_string_equal(err, "t.yaml:");
    assert_int_equal(
        journey_set_parse(yaml, strlen(yaml), "t.yaml", &s, NULL, 0),
        CS_ERR_CONFIG);
}

/* ------------------------------------------------------------------ */
/* durations                                                           */

static void test_durations(void **state)
{
    static const struct {
        const char *in;
        bool ok;
        int64_t ms;
    } cases[] = {
        {"500ms", true, 500},
        {"90s", true, 90000},
        {"15m", true, 900000},
        {"1h", true, 3600000},
        {"7d", true, 604800000},
        {"2w", true, 1209600000},
        {"1500", true, 1500},
        {"0", true, 0},
        {"0s", true, 0},
        {"9223372036854775807", true, INT64_MAX},
        {"9223372036854775807ms", true, INT64_MAX},
        {"9223372036854775808", false, 0},
        {"15250284452w", true, 15250284452LL * 604800000LL},
        {"15250284453w", false, 0},
        {"99999999999999999999999", false, 0},
        {"", false, 0},
        {"h", false, 0},
        {"-1h", false, 0},
        {"+1h", false, 0},
        {" 1h", false, 0},
        {"1h ", false, 0},
        {"1.5h", false, 0},
        {"1H", false, 0},
        {"1hr", false, 0},
        {"1h30m", false, 0},
        {"10y", false, 0},
        {"0x10", false, 0},
    };
    size_t i;
    int64_t ms;

    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms = -42;
        if (journey_parse_duration(cases[i].in, &ms) != cases[i].ok)
            fail_msg("duration \"%s\": expected %s", cases[i].in,
                     cases[i].ok ? "ok" : "rejection");
        if (cases[i].ok && ms != cases[i].ms)
            fail_msg("duration \"%s\": got %lld, want %lld", cases[i].in,
                     (long long)ms, (long long)cases[i].ms);
    }
    assert_false(journey_parse_duration(NULL, &ms));
}

/* ------------------------------------------------------------------ */
/* journey_starts                                                      */

static const char STARTS[] =
    "journeys:\n"
    "  - id: s\n"
    "    tenants: [acme, globex]\n"
    "    start:\n"
    "      trigger: cart.abandoned\n"
    "      kind: CUSTOM\n"
    "      conditions:\n"
    "        - {attribute: country, op: in, values: [DE, AT]}\n"
    "        - {attribute: cart_value, op: gte, value: \"50\"}\n"
    "        - {attribute: sku, op: prefix, value: \"SHOE-\"}\n"
    "        - {attribute: test, op: missing}\n"
    "        - {attribute: channel, op: eq, value: web}\n"
    "        - {attribute: segment, op: ne, value: vip}\n"
    "        - {attribute: email, op: exists}\n"
    "        - {attribute: items, op: lt, value: \"10\"}\n"
    "    exit_on: [account.closed, contact.deleted]\n"
    "    steps: [{wait: {for: 1h}}]\n"
    "  - id: any\n"
    "    start: {trigger: x.y}\n"
    "    steps: [{wait: {for: 1h}}]\n"
    "  - id: num\n"
    "    start:\n"
    "      trigger: n\n"
    "      conditions:\n"
    "        - {attribute: a, op: gt, value: \"1.5\"}\n"
    "        - {attribute: b, op: lte, value: \"-2\"}\n"
    "    steps: [{wait: {for: 1h}}]\n";

/* Attributes matching every condition of journey "s". */
static const char *const GOOD_NAMES[] = {"country", "cart_value", "sku",
                                         "channel", "email",      "items"};
static const char *const GOOD_VALUES[] = {"AT",  "50.0",          "SHOE-42",
                                          "web", "a@example.com", "9"};

/* journey "s" with GOOD attrs, attribute @p name set to @p value (NULL:
 * removed; unknown name: added). */
static bool starts_with(const struct journey *j, const char *name,
                        const char *value)
{
    const char *names[8], *values[8];
    struct jr_attrs a = {.names = names, .values = values, .n = 0};
    bool found = false;
    size_t i;

    for (i = 0; i < 6; i++) {
        if (name != NULL && strcmp(GOOD_NAMES[i], name) == 0) {
            found = true;
            if (value == NULL)
                continue;
            names[a.n] = name;
            values[a.n++] = value;
            continue;
        }
        names[a.n] = GOOD_NAMES[i];
        values[a.n++] = GOOD_VALUES[i];
    }
    if (name != NULL && !found && value != NULL) {
        names[a.n] = name;
        values[a.n++] = value;
    }
    return journey_starts(j, "acme", JR_KIND_CUSTOM, "cart.abandoned", &a);
}

static void test_starts(void **state)
{
    struct journey_set s;
    const struct journey *j;
    struct jr_attrs good = {.names = GOOD_NAMES, .values = GOOD_VALUES, .n = 6};
    struct jr_attrs none = {0};

    (void)state;
    parse_ok(STARTS, &s);
    j = &s.j[0];
    assert_true(starts_with(j, NULL, NULL));
    /* trigger, kind, tenant */
    assert_false(
        journey_starts(j, "acme", JR_KIND_CUSTOM, "cart.Abandoned", &good));
    assert_false(
        journey_starts(j, "acme", JR_KIND_BUSINESS, "cart.abandoned", &good));
    assert_true(
        journey_starts(j, "globex", JR_KIND_CUSTOM, "cart.abandoned", &good));
    assert_false(
        journey_starts(j, "initech", JR_KIND_CUSTOM, "cart.abandoned", &good));
    assert_false(
        journey_starts(j, NULL, JR_KIND_CUSTOM, "cart.abandoned", &good));
    assert_false(journey_starts(j, "acme", JR_KIND_CUSTOM, NULL, &good));
    assert_false(
        journey_starts(j, "acme", JR_KIND_CUSTOM, "cart.abandoned", &none));
    assert_false(
        journey_starts(j, "acme", JR_KIND_CUSTOM, "cart.abandoned", NULL));
    /* in */
    assert_true(starts_with(j, "country", "DE"));
    assert_false(starts_with(j, "country", "CH"));
    assert_false(starts_with(j, "country", "de"));
    assert_false(starts_with(j, "country", NULL));
    /* gte numeric */
    assert_true(starts_with(j, "cart_value", "50"));
    assert_true(starts_with(j, "cart_value", "1e3"));
    assert_true(starts_with(j, "cart_value", "100.5"));
    assert_false(starts_with(j, "cart_value", "49.99"));
    assert_false(starts_with(j, "cart_value", "9")); /* not a string compare */
    assert_false(starts_with(j, "cart_value", "50 EUR"));
    assert_false(starts_with(j, "cart_value", " 50"));
    assert_false(starts_with(j, "cart_value", ""));
    assert_false(starts_with(j, "cart_value", "nan"));
    assert_false(starts_with(j, "cart_value", NULL));
    /* prefix */
    assert_true(starts_with(j, "sku", "SHOE-"));
    assert_false(starts_with(j, "sku", "SHOE"));
    assert_false(starts_with(j, "sku", "BOOT-1"));
    /* missing */
    assert_false(starts_with(j, "test", "1"));
    assert_false(starts_with(j, "test", ""));
    /* eq */
    assert_false(starts_with(j, "channel", "app"));
    assert_false(starts_with(j, "channel", NULL));
    /* ne: true when missing */
    assert_true(starts_with(j, "segment", "regular"));
    assert_false(starts_with(j, "segment", "vip"));
    /* exists */
    assert_true(starts_with(j, "email", ""));
    assert_false(starts_with(j, "email", NULL));
    /* lt */
    assert_false(starts_with(j, "items", "10"));
    assert_true(starts_with(j, "items", "-3"));

    /* a journey without kind, tenants or conditions */
    j = &s.j[1];
    assert_true(journey_starts(j, "anyone", JR_KIND_BEHAVIOURAL, "x.y", NULL));
    assert_true(journey_starts(j, NULL, JR_KIND_BUSINESS, "x.y", &none));
    assert_false(journey_starts(j, "anyone", JR_KIND_CUSTOM, "x.z", NULL));
    assert_true(journey_for_tenant(j, "whoever"));

    /* gt / lte with decimals and negatives */
    j = &s.j[2];
    {
        const char *n[] = {"a", "b"};
        const char *v1[] = {"1.51", "-2"};
        const char *v2[] = {"1.5", "-2"};
        const char *v3[] = {"2", "-1.99"};
        const char *v4[] = {"0x2", "-3"};
        struct jr_attrs a = {.names = n, .values = v1, .n = 2};

        assert_true(journey_starts(j, "t", 0, "n", &a));
        a.values = v2;
        assert_false(journey_starts(j, "t", 0, "n", &a));
        a.values = v3;
        assert_false(journey_starts(j, "t", 0, "n", &a));
        a.values = v4; /* strtod reads hex: 2 > 1.5 */
        assert_true(journey_starts(j, "t", 0, "n", &a));
    }

    /* exit_on, tenants, jr_attrs_get */
    j = &s.j[0];
    assert_true(journey_exits_on(j, "contact.deleted"));
    assert_true(journey_exits_on(j, "account.closed"));
    assert_false(journey_exits_on(j, "checkout.completed"));
    assert_false(journey_exits_on(j, NULL));
    assert_false(journey_exits_on(&s.j[1], "account.closed"));
    assert_true(journey_for_tenant(j, "globex"));
    assert_false(journey_for_tenant(j, "acme2"));
    assert_string_equal(jr_attrs_get(&good, "sku"), "SHOE-42");
    assert_null(jr_attrs_get(&good, "sk"));
    assert_null(jr_attrs_get(&none, "sku"));
    assert_null(jr_attrs_get(NULL, "sku"));
    journey_set_free(&s);
}

/* ------------------------------------------------------------------ */
/* journey_render                                                      */

static void render_is(const char *tmpl, const struct jr_vars *v,
                      const char *want)
{
    char *got = journey_render(tmpl, v);
    const char *shown = tmpl ? tmpl : "(null)"; /* render_is(NULL, ...) */

    assert_non_null(got);
    if (strcmp(got, want) != 0)
        fail_msg("render \"%s\": got \"%s\", want \"%s\"", shown, got, want);
    free(got);
}

static void test_render(void **state)
{
    const char *names[] = {"cart_id", "name", "empty"};
    const char *values[] = {"C-17", "Ann {{tenant}}", ""};
    struct jr_attrs a = {.names = names, .values = values, .n = 3};
    struct jr_vars v = {.attrs = &a,
                        .profile_type = "contact",
                        .profile_id = "0d6c7a4e-1111-2222-3333-444455556666",
                        .profile_email = "ann@example.com",
                        .journey_id = "abandoned-cart",
                        .tenant = "acme",
                        .iteration = 3};
    struct jr_vars nulls = {0};

    (void)state;
    render_is("", &v, "");
    render_is("plain text { } }} {x}", &v, "plain text { } }} {x}");
    render_is("Cart {{attr.cart_id}} of {{ attr.name }}!", &v,
              "Cart C-17 of Ann {{tenant}}!"); /* values are not expanded */
    render_is("{{profile.type}}/{{profile.id}}/{{profile.email}}", &v,
              "contact/0d6c7a4e-1111-2222-3333-444455556666/ann@example.com");
    render_is("{{journey.id}}@{{tenant}}#{{iteration}}", &v,
              "abandoned-cart@acme#3");
    render_is("{{\tattr.cart_id  }}{{attr.cart_id}}", &v, "C-17C-17");
    render_is("[{{attr.empty}}][{{attr.nope}}][{{attr.cart}}]", &v, "[][][]");
    render_is("{{profile.id}}{{tenant}}{{attr.cart_id}}-{{iteration}}", &nulls,
              "-0");
    render_is("x{{attr.cart_id}}y", NULL, "xy");
    render_is(NULL, &v, "");
    /* never produced by a loaded journey: kept verbatim */
    render_is("a {{bogus}} b {{attr.cart_id", &v,
              "a {{bogus}} b {{attr.cart_id");
    v.iteration = -12;
    render_is("{{iteration}}", &v, "-12");
}

/* ------------------------------------------------------------------ */
/* files                                                               */

static void test_load_file(void **state)
{
    char path[] = "/tmp/journey-test-XXXXXX";
    char err[ERRBUF] = "";
    struct journey_set s;
    int fd;
    FILE *fp;

    (void)state;
    fd = mkstemp(path);
    assert_true(fd >= 0);
    fp = fdopen(fd, "w");
    assert_non_null(fp);
    fputs(FULL, fp);
    fclose(fp);
    assert_int_equal(journey_set_load(path, &s, err, sizeof(err)), CS_ERR_OK);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.j[1].steps[14].action.mailing, "1003");
    journey_set_free(&s);

    /* errors name the path */
    fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("journeys:\n  - id: a\n    start: {trigger: t}\n    steps: []\n", fp);
    fclose(fp);
    assert_int_equal(journey_set_load(path, &s, err, sizeof(err)),
                     CS_ERR_CONFIG);
    {
        char want[128];
        snprintf(want, sizeof(want), "%s:4:12: journeys[0].steps:", path);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("got \"%s\", want prefix \"%s\"", err, want);
    }
    unlink(path);

    err[0] = '\0';
    assert_int_equal(journey_set_load(path, &s, err, sizeof(err)),
                     CS_ERR_CONFIG);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "No such file or directory"));
}

static void test_example_file(void **state)
{
    const char *path =
        CRMSYNC_SOURCE_DIR "/workers/trigger/journeys.example.yaml";
    char err[ERRBUF] = "";
    struct journey_set s;
    const struct journey *j;

    (void)state;
    if (journey_set_load(path, &s, err, sizeof(err)) != CS_ERR_OK)
        fail_msg("%s", err);
    assert_int_equal(s.n, 3);

    j = &s.j[0];
    assert_string_equal(j->id, "abandoned-cart");
    assert_string_equal(j->start_trigger, "cart.abandoned");
    assert_int_equal(j->nexit, 1);
    assert_string_equal(j->exit_on[0], "contact.deleted");
    assert_int_equal(j->nsteps, 1);
    assert_int_equal(j->steps[0].kind, JR_STEP_REMINDER);
    assert_string_equal(j->steps[0].action.mailing, "1001");
    assert_string_equal(j->steps[0].action.list, "2001");
    assert_int_equal(j->steps[0].first_after_ms, 3600000);
    assert_int_equal(j->steps[0].every_ms, 86400000);
    assert_int_equal(j->steps[0].max, 3);
    assert_int_equal(j->steps[0].nuntil, 1);
    assert_string_equal(j->steps[0].until[0], "checkout.completed");
    assert_int_equal(j->steps[0].deadline_ms, 7 * 86400000LL);

    j = &s.j[1];
    assert_string_equal(j->start_trigger, "email.delivered");
    assert_int_equal(j->nsteps, 3);
    assert_int_equal(j->steps[0].kind, JR_STEP_BRANCH);
    assert_string_equal(j->steps[0].mailing, "3001");
    assert_false(j->steps[0].on_click);
    assert_int_equal(j->steps[0].within_ms, 2 * 86400000LL);
    assert_int_equal(j->steps[0].then_pc, 1);
    assert_int_equal(j->steps[0].else_pc, 2);
    assert_int_equal(j->steps[1].kind, JR_STEP_JUMP);
    assert_int_equal(j->steps[1].target, 3);
    assert_string_equal(j->steps[2].action.mailing, "3002");

    j = &s.j[2];
    assert_string_equal(j->start_trigger, "opportunity.won");
    assert_int_equal(j->start_kind, JR_KIND_BUSINESS);
    assert_int_equal(j->nsteps, 2);
    assert_int_equal(j->steps[0].action.type, JR_ACT_CRM_TASK);
    assert_string_equal(j->steps[0].action.subject,
                        "Follow up {{attr.opportunity_name}}");
    assert_string_equal(j->steps[0].action.owner, "{{attr.owner_id}}");
    assert_int_equal(j->steps[0].action.due_in_ms, 2 * 86400000LL);
    assert_int_equal(j->steps[1].action.type, JR_ACT_CRM_TRIGGER);
    assert_string_equal(j->steps[1].action.name, "msdynmkt_opportunitywon");
    assert_int_equal(j->steps[1].action.nparams, 1);
    assert_string_equal(j->steps[1].action.params[0].name,
                        "msdynmkt_textvariable1");
    assert_int_equal(j->nattrs, 2);
    assert_string_equal(j->attrs[0], "opportunity_name");
    assert_string_equal(j->attrs[1], "owner_id");
    journey_set_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_abandoned_cart),
        cmocka_unit_test(test_full_all_steps),
        cmocka_unit_test(test_reentry_window_and_attrs),
        cmocka_unit_test(test_branch_mail_from_start_trigger),
        cmocka_unit_test(test_invalid_documents),
        cmocka_unit_test(test_branch_depth),
        cmocka_unit_test(test_max_steps),
        cmocka_unit_test(test_small_errstr),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_starts),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_example_file),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

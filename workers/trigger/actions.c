/*
 * actions - CRM custom triggers, CRM tasks, ESP mails and Kafka events of
 * fired timers (see actions.h).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/avro_codec.h"
#include "common/config.h"
#include "common/crm.h"
#include "common/email.h"
#include "common/esp.h"
#include "common/isotime.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/producer.h"
#include "common/runtime.h"
#include "workers/trigger/actions.h"
#include "workers/trigger/store.h"

#define FLUSH_MS 10000

struct actions {
    const struct trigger_config *tc; /* borrowed */
    struct metrics *m;               /* borrowed */
    struct crm *crm;                 /* owned */
    struct esp *esp;                 /* owned, NULL without esp_mail */
    struct producer *producer;       /* owned */
    struct avro_codec *codec;        /* owned (not shared across threads) */
};

static bool uses_mail(const struct journey_set *js)
{
    for (size_t i = 0; i < js->n; i++)
        for (size_t s = 0; s < js->j[i].nsteps; s++) {
            const struct jr_step *st = &js->j[i].steps[s];
            if ((st->kind == JR_STEP_ACTION || st->kind == JR_STEP_REMINDER) &&
                st->action.type == JR_ACT_ESP_MAIL)
                return true;
        }
    return false;
}

/* Fetches the metadata of every topic the journeys produce to, so the first
 * fire does not wait for it; a missing topic is only a warning (it may be
 * created later; sends fail and retry until it exists). */
static void warm_topics(struct actions *a, const struct journey_set *js)
{
    char err[256];
    const char *fixed[] = {a->tc->derived_topic, a->tc->actions_dlq};

    for (size_t i = 0; i < 2; i++)
        if (fixed[i][0] && producer_warm(a->producer, fixed[i], 2000, err,
                                         sizeof(err)) != CS_ERR_OK)
            LOG_WARN("producer: %s", err);
    for (size_t i = 0; i < js->n; i++)
        for (size_t s = 0; s < js->j[i].nsteps; s++) {
            const struct jr_step *st = &js->j[i].steps[s];
            if ((st->kind == JR_STEP_ACTION || st->kind == JR_STEP_REMINDER) &&
                st->action.type == JR_ACT_PRODUCE &&
                producer_warm(a->producer, st->action.topic, 2000, err,
                              sizeof(err)) != CS_ERR_OK)
                LOG_WARN("journey %s: producer: %s", js->j[i].id, err);
        }
}

struct actions *actions_new(const struct config *cfg,
                            const struct trigger_config *tc,
                            const struct journey_set *js, struct metrics *m,
                            char *errstr, size_t errstr_size)
{
    struct actions *a = calloc(1, sizeof(*a));

    if (!a) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    a->tc = tc;
    a->m = m;
    a->crm = runtime_crm_new(cfg, m, errstr, errstr_size);
    if (!a->crm)
        goto out_fail;
    a->producer = producer_new(cfg, errstr, errstr_size);
    if (!a->producer)
        goto out_fail;
    warm_topics(a, js);
    a->codec = avro_codec_new(cfg->schema_registry_url, cfg->schemas_dir,
                              errstr, errstr_size);
    if (!a->codec)
        goto out_fail;
    if (uses_mail(js)) {
        struct esp_options eo = {
            .kind = tc->esp_kind,
            .base_url = tc->esp_base_url,
            .mandator_id = tc->esp_mandator,
            .user = tc->esp_user,
            .password = tc->esp_password,
            .http = {.connect_timeout_ms = 5000,
                     .timeout_ms = tc->esp_timeout_ms,
                     .max_retries = 2,
                     .backoff_base_ms = 200,
                     .backoff_max_ms = 2000,
                     .max_inline_wait_ms = 2000,
                     .tls_verify = true,
                     .user_agent = "crmsync/0.1"},
        };
        if (!tc->esp_mandator[0] || !tc->esp_user[0]) {
            snprintf(errstr, errstr_size,
                     "a journey sends esp_mail: esp.mandator_id, esp.user "
                     "and esp.password are required");
            goto out_fail;
        }
        a->esp = esp_new(&eo, m, errstr, errstr_size);
        if (!a->esp)
            goto out_fail;
    }
    return a;
out_fail:
    actions_free(a);
    return NULL;
}

void actions_free(struct actions *a)
{
    if (!a)
        return;
    if (a->esp)
        a->esp->ops->logout(a->esp->self);
    esp_free(a->esp);
    producer_free(a->producer);
    avro_codec_free(a->codec);
    crm_free(a->crm);
    free(a);
}

bool actions_healthy(struct actions *a)
{
    return a->crm->ops->ping(a->crm->self);
}

/* Sets a job's result with the reason "<prefix><detail>". */
static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set(struct action_job *j, enum action_result r, const char *prefix,
                const char *detail)
{
    j->result = r;
    snprintf(j->reason, sizeof(j->reason), "%s%.200s", prefix,
             detail ? detail : "");
}

static struct jr_vars vars_of(const struct action_job *jb,
                              struct jr_attrs *attrs)
{
    attrs->names = (const char *const *)jb->j->attrs;
    attrs->values = (const char *const *)jb->in->attrs;
    attrs->n = jb->in->nattrs < jb->j->nattrs ? jb->in->nattrs : jb->j->nattrs;
    return (struct jr_vars){
        .attrs = attrs,
        .profile_type = jb->in->ptype[0] ? jb->in->ptype : NULL,
        .profile_id = jb->in->pid[0] ? jb->in->pid : NULL,
        .profile_email = jb->in->email[0] ? jb->in->email : NULL,
        .journey_id = jb->j->id,
        .tenant = jb->in->tenant,
        .iteration = (int)jb->ea->iter,
    };
}

/* Renders a template into a JSON string value (steals nothing). */
static void put_rendered(json_t *o, const char *key, const char *tmpl,
                         const struct jr_vars *v)
{
    char *s = journey_render(tmpl, v);
    if (s) {
        json_object_set_new(o, key, json_string(s));
        free(s);
    }
}

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* The CRM ops of one job: returns how many were added (0: none needed). */
static size_t crm_ops_of(struct actions *a, struct action_job *jb,
                         struct crm_op *ops, int changeset, int64_t now_ms)
{
    const struct jr_action *act = jb->ea->a;
    const struct instance *in = jb->in;
    struct jr_attrs attrs;
    struct jr_vars v = vars_of(jb, &attrs);
    char ts[40], when[40], path[256], name[160], profile[64];
    json_t *o;

    isotime_format(jb->ea->at_ms, ts, sizeof(ts));
    isotime_format(now_ms, when, sizeof(when));
    if (act->type == JR_ACT_CRM_TASK) {
        o = json_object();
        put_rendered(o, "subject", act->subject, &v);
        if (act->description)
            put_rendered(o, "description", act->description, &v);
        if (act->due_in_ms > 0) {
            char due[40];
            isotime_format(now_ms + act->due_in_ms, due, sizeof(due));
            json_object_set_new(o, "scheduledend", json_string(due));
        }
        if (in->pid[0] && (strcmp(in->ptype, "contact") == 0 ||
                           strcmp(in->ptype, "lead") == 0 ||
                           strcmp(in->ptype, "account") == 0)) {
            char key[64], bind[96];
            snprintf(key, sizeof(key), "regardingobjectid_%s_task@odata.bind",
                     in->ptype);
            snprintf(bind, sizeof(bind), "/%ss(%s)", in->ptype, in->pid);
            json_object_set_new(o, key, json_string(bind));
        }
        if (act->owner) {
            char *owner = journey_render(act->owner, &v);
            if (owner && owner[0]) {
                char bind[96];
                snprintf(bind, sizeof(bind), "/systemusers(%.40s)", owner);
                json_object_set_new(o, "ownerid@odata.bind", json_string(bind));
            }
            free(owner);
        }
        snprintf(path, sizeof(path), "tasks(%s)", jb->ea->id);
        ops[0] = (struct crm_op){.method = "PATCH",
                                 .path = strdup(path),
                                 .body = dump(o),
                                 .flags = CRM_OP_CREATE_ONLY};
        return 1;
    }
    /* custom trigger: ledger row + the action, one change set */
    if (!in->pid[0] ||
        (strcmp(in->ptype, "contact") != 0 && strcmp(in->ptype, "lead") != 0)) {
        set(jb, ACT_FAILED,
            "profile-without-id: a custom trigger needs a contact or lead id",
            NULL);
        return 0;
    }
    snprintf(profile, sizeof(profile), "%s:%s", in->ptype, in->pid);
    snprintf(name, sizeof(name), "%s/%u/%u", jb->j->id, jb->ea->pc,
             jb->ea->iter);
    o = json_object();
    json_object_set_new(o, "crmsync_name", json_string(name));
    json_object_set_new(o, "crmsync_action", json_string(act->name));
    json_object_set_new(o, "crmsync_profile", json_string(profile));
    json_object_set_new(o, "crmsync_firedon", json_string(when));
    snprintf(path, sizeof(path), "%s(%s)", a->tc->ledger_set, jb->ea->id);
    ops[0] = (struct crm_op){.method = "PATCH",
                             .path = strdup(path),
                             .body = dump(o),
                             .flags = CRM_OP_CREATE_ONLY,
                             .changeset = changeset};
    o = json_object();
    json_object_set_new(o, "msdynmkt_signaltimestamp", json_string(ts));
    json_object_set_new(o, "msdynmkt_signalingestiontimestamp",
                        json_string(when));
    json_object_set_new(o, "msdynmkt_signaluserauthid", json_string(in->pid));
    json_object_set_new(o, "msdynmkt_profileid", json_string(in->pid));
    for (size_t i = 0; i < act->nparams; i++)
        put_rendered(o, act->params[i].name, act->params[i].tmpl, &v);
    ops[1] = (struct crm_op){.method = "POST",
                             .path = strdup(act->name),
                             .body = dump(o),
                             .changeset = changeset};
    return 2;
}

static void run_crm(struct actions *a, struct action_job *jobs, size_t n,
                    int64_t now_ms)
{
    struct crm_op *ops = calloc(2 * n + 1, sizeof(*ops));
    size_t *first = calloc(n + 1, sizeof(*first));
    size_t nops = 0;
    char errstr[256];
    enum cs_err err;

    if (!ops || !first) {
        for (size_t i = 0; i < n; i++)
            if (jobs[i].result == ACT_PENDING)
                set(&jobs[i], ACT_RETRY, "out of memory", NULL);
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        const struct jr_action *act = jobs[i].ea->a;
        first[i] = SIZE_MAX;
        if (jobs[i].result != ACT_PENDING || !act ||
            (act->type != JR_ACT_CRM_TRIGGER && act->type != JR_ACT_CRM_TASK))
            continue;
        first[i] = nops;
        nops += crm_ops_of(a, &jobs[i], &ops[nops], (int)i + 1, now_ms);
        if (first[i] == nops)
            first[i] = SIZE_MAX;
    }
    if (nops == 0)
        goto out_free;
    err = a->crm->ops->execute(a->crm->self, ops, nops, errstr, sizeof(errstr));
    for (size_t i = 0; i < n; i++) {
        const struct crm_op *op;
        if (first[i] == SIZE_MAX)
            continue;
        op = &ops[first[i]];
        if (err != CS_ERR_OK && op->result == CRM_OP_PENDING) {
            set(&jobs[i], ACT_RETRY, "crm: ", errstr);
            continue;
        }
        switch (op->result) {
        case CRM_OP_OK:
            jobs[i].result = ACT_DONE;
            break;
        case CRM_OP_EXISTS:
            jobs[i].result = ACT_DUPLICATE;
            break;
        case CRM_OP_FAILED:
        case CRM_OP_NOT_FOUND:
            set(&jobs[i], ACT_FAILED, "crm-rejected: ", op->error);
            break;
        default:
            set(&jobs[i], ACT_RETRY, "crm: ", op->error);
            jobs[i].retry_after_ms = op->retry_after_ms;
            break;
        }
    }
out_free:
    for (size_t i = 0; ops && i < nops; i++) {
        free(ops[i].path);
        free(ops[i].body);
        if (ops[i].response)
            json_decref(ops[i].response);
    }
    free(ops);
    free(first);
}

static const char *const send_codes[] = {
    "sent",         "blacklisted",  "unsubscribed", "recipient-not-found",
    "invalid-list", "target-group", "bounced",      "other"};

/* Fills jb->email of mail jobs: the stored address, else the profile's
 * current emailaddress1 read from the CRM (one $batch of GETs). */
static void lookup_emails(struct actions *a, struct action_job *jobs, size_t n)
{
    struct crm_op *ops = calloc(n + 1, sizeof(*ops));
    size_t *idx = calloc(n + 1, sizeof(*idx));
    size_t k = 0;
    char errstr[256];
    enum cs_err err;

    if (!ops || !idx)
        goto out_free;
    for (size_t i = 0; i < n; i++) {
        const struct jr_action *act = jobs[i].ea->a;
        char path[160];
        if (jobs[i].result != ACT_PENDING || !act ||
            act->type != JR_ACT_ESP_MAIL)
            continue;
        snprintf(jobs[i].email, sizeof(jobs[i].email), "%s", jobs[i].in->email);
        if (jobs[i].email[0] || !jobs[i].in->pid[0])
            continue;
        snprintf(path, sizeof(path), "%ss(%s)?$select=emailaddress1",
                 jobs[i].in->ptype, jobs[i].in->pid);
        ops[k] = (struct crm_op){.method = "GET", .path = strdup(path)};
        idx[k++] = i;
    }
    if (k == 0)
        goto out_free;
    err = a->crm->ops->execute(a->crm->self, ops, k, errstr, sizeof(errstr));
    for (size_t x = 0; x < k; x++) {
        struct action_job *jb = &jobs[idx[x]];
        const char *e = NULL;
        if (ops[x].result == CRM_OP_OK && ops[x].response)
            e = json_string_value(
                json_object_get(ops[x].response, "emailaddress1"));
        if (e && email_normalize(e, jb->email, sizeof(jb->email)))
            continue;
        jb->email[0] = '\0';
        if (ops[x].result == CRM_OP_OK || ops[x].result == CRM_OP_NOT_FOUND)
            continue; /* no (valid) address: refused below */
        if (ops[x].result == CRM_OP_FAILED)
            set(jb, ACT_FAILED, "crm-rejected: ", ops[x].error);
        else
            set(jb, ACT_RETRY,
                "crm: ", err != CS_ERR_OK ? errstr : ops[x].error);
    }
out_free:
    for (size_t x = 0; ops && x < k; x++) {
        free(ops[x].path);
        if (ops[x].response)
            json_decref(ops[x].response);
    }
    free(ops);
    free(idx);
}

static void run_mail(struct actions *a, struct store *st,
                     struct action_job *jobs, size_t n, int64_t now_ms)
{
    const char **ids = calloc(n + 1, sizeof(*ids));
    const char **unsent = calloc(n + 1, sizeof(*unsent));
    size_t *idx = calloc(n + 1, sizeof(*idx));
    char *prev = calloc(n + 1, 1);
    size_t k = 0, nsent = 0, nunsent = 0, deferred = 0;
    char errstr[256];
    bool down = false;

    if (!ids || !unsent || !idx || !prev)
        goto out_free;
    if (a->esp)
        lookup_emails(a, jobs, n);
    for (size_t i = 0; i < n; i++) {
        const struct jr_action *act = jobs[i].ea->a;
        if (jobs[i].result != ACT_PENDING || !act ||
            act->type != JR_ACT_ESP_MAIL)
            continue;
        if (!a->esp || !jobs[i].email[0]) {
            set(&jobs[i], ACT_FAILED,
                a->esp ? "profile-without-email: an esp_mail needs the "
                         "profile's email"
                       : "esp not configured",
                NULL);
            continue;
        }
        idx[k] = i;
        ids[k++] = jobs[i].ea->id;
    }
    if (k == 0)
        goto out_free;
    if (store_mark_sending(st, ids, k, now_ms, prev, errstr, sizeof(errstr)) !=
        CS_ERR_OK) {
        for (size_t x = 0; x < k; x++)
            set(&jobs[idx[x]], ACT_RETRY, "redis: ", errstr);
        goto out_free;
    }
    for (size_t x = 0; x < k; x++) {
        struct action_job *jb = &jobs[idx[x]];
        const struct jr_action *act = jb->ea->a;
        int code = 7;
        enum cs_err err;

        if (prev[x] == 'd') {
            jb->result = ACT_DUPLICATE;
            continue;
        }
        if (prev[x] == 's') {
            metrics_counter_add(a->m, "crmsync_trigger_actions_total",
                                "type=\"esp_mail\",outcome=\"uncertain\"", 1);
            LOG_WARN("mail action %s: an earlier sender died while sending; "
                     "%s it (trigger.esp_on_uncertain)",
                     jb->ea->id,
                     strcmp(a->tc->esp_uncertain, "skip") == 0 ? "skipping"
                                                               : "resending");
            if (strcmp(a->tc->esp_uncertain, "skip") == 0) {
                set(jb, ACT_SUPPRESSED, "uncertain-skipped", NULL);
                ids[nsent++] = jb->ea->id;
                continue;
            }
        }
        if (down || wall_ms() - now_ms > a->tc->lease_ms / 2) {
            /* never handed to the ESP: the re-fire is not uncertain. The
               time budget keeps a round (and so every mail of it) within
               its lease, so no other replica re-claims a mail in flight */
            if (down) {
                set(jb, ACT_RETRY, "esp: ", errstr);
            } else {
                set(jb, ACT_RETRY, "round out of time (half the lease)", NULL);
                deferred++;
            }
            unsent[nunsent++] = jb->ea->id;
            continue;
        }
        err = a->esp->ops->send_mail(a->esp->self, act->mailing, act->list,
                                     jb->email, jb->email, &code, errstr,
                                     sizeof(errstr));
        if (err != CS_ERR_OK && cs_err_retryable(err)) {
            down = true; /* the rest waits: the ESP is down */
            set(jb, ACT_RETRY, "esp: ", errstr);
            continue;
        }
        ids[nsent++] = jb->ea->id;
        if (err != CS_ERR_OK) {
            set(jb, ACT_FAILED, "esp-rejected: ", errstr);
        } else if (code == 0) {
            jb->result = ACT_DONE;
        } else {
            const char *what = send_codes[code >= 0 && code < 8 ? code : 7];
            set(jb,
                code == 3 || code == 4 || code == 7 ? ACT_FAILED
                                                    : ACT_SUPPRESSED,
                "esp-refused: ", what);
        }
    }
    if (nsent > 0 && store_mark_sent(st, ids, nsent, now_ms, errstr,
                                     sizeof(errstr)) != CS_ERR_OK)
        LOG_WARN("mail markers not recorded (%s): a re-fire counts them as "
                 "uncertain",
                 errstr);
    if (deferred > 0)
        LOG_WARN("esp: %zu mail(s) deferred to the next round: the round "
                 "used half its lease (trigger.lease_ms %d); the ESP is slow",
                 deferred, a->tc->lease_ms);
    if (nunsent > 0 && store_mark_unsent(st, unsent, nunsent, now_ms, errstr,
                                         sizeof(errstr)) != CS_ERR_OK)
        LOG_WARN("mail markers not taken back (%s): a re-fire counts them "
                 "as uncertain",
                 errstr);
out_free:
    free(unsent);
    free(ids);
    free(idx);
    free(prev);
}

/* A TriggerEvent for a produce action or a branch timeout. */
static void run_produce(struct actions *a, struct action_job *jb, bool *queued)
{
    const struct jr_action *act = jb->ea->a;
    const struct instance *in = jb->in;
    struct jr_attrs attrs;
    struct jr_vars v = vars_of(jb, &attrs);
    const char *topic = act ? act->topic : a->tc->derived_topic;
    json_t *o = json_object(), *rcp = json_object(), *at = json_object();
    avro_value_t val;
    void *buf = NULL;
    size_t len = 0;
    char errstr[256], key[300];
    enum cs_err err;

    json_object_set_new(o, "event_id", json_string(jb->ea->id));
    json_object_set_new(o, "tenant", json_string(in->tenant));
    json_object_set_new(o, "occurred_at", json_integer(jb->ea->at_ms));
    json_object_set_new(o, "source_system", json_string("crmsync-trigger"));
    json_object_set_new(rcp, "entity_type",
                        in->pid[0] ? json_string(in->ptype) : json_null());
    json_object_set_new(rcp, "entity_id",
                        in->pid[0] ? json_string(in->pid) : json_null());
    json_object_set_new(rcp, "email",
                        in->email[0] ? json_string(in->email) : json_null());
    json_object_set_new(o, "recipient", rcp);
    json_object_set_new(o, "journey_id", json_string(jb->j->id));
    if (act) {
        json_object_set_new(o, "trigger_kind", json_string("CUSTOM"));
        json_object_set_new(o, "trigger_name", json_string(act->name));
        for (size_t i = 0; i < act->nparams; i++)
            put_rendered(at, act->params[i].name, act->params[i].tmpl, &v);
    } else {
        const struct jr_step *s = jb->ea->step;
        char within[32];
        json_object_set_new(o, "trigger_kind", json_string("BEHAVIOURAL"));
        json_object_set_new(o, "trigger_name",
                            json_string(s->on_click
                                            ? JOURNEY_TRIGGER_NOT_CLICKED
                                            : JOURNEY_TRIGGER_NOT_OPENED));
        snprintf(within, sizeof(within), "%lld",
                 (long long)(s->within_ms / 1000));
        json_object_set_new(at, "within_s", json_string(within));
        if (s->mailing)
            json_object_set_new(at, "mailing_id", json_string(s->mailing));
    }
    json_object_set_new(o, "attributes", at);
    if (in->pid[0])
        snprintf(key, sizeof(key), "%s:%s", in->ptype, in->pid);
    else
        snprintf(key, sizeof(key), "%s", in->email);

    err = avro_codec_from_json(a->codec, a->tc->event_schema_id, o, &val,
                               errstr, sizeof(errstr));
    if (err == CS_ERR_OK) {
        err = avro_codec_encode(a->codec, a->tc->event_schema_id, &val, &buf,
                                &len, errstr, sizeof(errstr));
        avro_value_decref(&val);
    }
    if (err == CS_ERR_OK) {
        err = producer_send(a->producer, topic, key, strlen(key), buf, len);
        if (err == CS_ERR_OK)
            *queued = true;
        else
            snprintf(errstr, sizeof(errstr), "kafka: cannot queue");
    }
    json_decref(o);
    free(buf);
    if (err == CS_ERR_OK)
        jb->result = ACT_DONE;
    else
        set(jb, cs_err_retryable(err) ? ACT_RETRY : ACT_FAILED,
            "produce: ", errstr);
}

/* Records a refused action on the actions DLQ (JSON). */
static void dead_letter(struct actions *a, const struct action_job *jb,
                        bool *queued)
{
    json_t *o = json_object();
    char *s;
    static const char *const types[] = {"crm_trigger", "esp_mail", "crm_task",
                                        "produce"};

    json_object_set_new(o, "action_id", json_string(jb->ea->id));
    json_object_set_new(o, "tenant", json_string(jb->in->tenant));
    json_object_set_new(o, "journey", json_string(jb->j->id));
    json_object_set_new(o, "step", json_integer(jb->ea->pc));
    json_object_set_new(o, "iteration", json_integer(jb->ea->iter));
    json_object_set_new(
        o, "type", json_string(jb->ea->a ? types[jb->ea->a->type] : "derived"));
    json_object_set_new(o, "profile_type", json_string(jb->in->ptype));
    json_object_set_new(o, "profile_id", json_string(jb->in->pid));
    json_object_set_new(o, "reason", json_string(jb->reason));
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s && producer_send(a->producer, a->tc->actions_dlq, jb->ea->id,
                           strlen(jb->ea->id), s, strlen(s)) == CS_ERR_OK)
        *queued = true;
    free(s);
}

void actions_run(struct actions *a, struct store *st, struct action_job *jobs,
                 size_t n, int64_t now_ms)
{
    bool queued = false;
    char errstr[256];

    run_crm(a, jobs, n, now_ms);
    run_mail(a, st, jobs, n, now_ms);
    for (size_t i = 0; i < n; i++) {
        const struct jr_action *act = jobs[i].ea->a;
        if (jobs[i].result != ACT_PENDING)
            continue;
        if (!act && !a->tc->derived_topic[0]) {
            jobs[i].result = ACT_DONE; /* derived triggers switched off */
            continue;
        }
        if (!act || act->type == JR_ACT_PRODUCE)
            run_produce(a, &jobs[i], &queued);
    }
    for (size_t i = 0; i < n; i++)
        if (jobs[i].result == ACT_FAILED)
            dead_letter(a, &jobs[i], &queued);
    if (queued && producer_flush(a->producer, FLUSH_MS, errstr,
                                 sizeof(errstr)) != CS_ERR_OK) {
        for (size_t i = 0; i < n; i++) {
            const struct jr_action *act = jobs[i].ea->a;
            if (jobs[i].result == ACT_FAILED ||
                ((!act || act->type == JR_ACT_PRODUCE) &&
                 jobs[i].result == ACT_DONE))
                set(&jobs[i], ACT_RETRY, "kafka: ", errstr);
        }
    }
}
